"""``python -m triton_ops``: the ``triton-ops`` command (info, bench, tune, cache)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
