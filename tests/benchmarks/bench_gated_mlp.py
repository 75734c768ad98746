"""Fused gated MLP (SwiGLU / GeGLU): benchmark against torch eager, torch.compile and the ceiling.

    python -m tests.benchmarks.bench_gated_mlp [--quick] [--shapes ...] [--out DIR]

Runs the benchmark suite for this op only (every system verified against the reference before it is
timed), prints the table and writes <gpu>-<date>.json/.md/.csv and plots into --out (merged with other
ops' rows of the same day). Same as `triton-ops bench gated_mlp`.
"""

from __future__ import annotations

import sys

from tests.benchmarks._runner import run

OPS = ["gated_mlp"]


def main(argv: list[str] | None = None) -> int:
    return run(OPS, "python -m tests.benchmarks.bench_gated_mlp", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
