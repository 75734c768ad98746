"""FP8 GEMM (and FP8 quantization): benchmark against torch eager, torch.compile and the ceiling.

    python -m tests.benchmarks.bench_fp8_gemm [--quick] [--shapes ...] [--out DIR]

Runs the benchmark suite for this op only (every system verified against the reference before it is
timed), prints the table and writes <gpu>-<date>.json/.md/.csv and plots into --out (merged with other
ops' rows of the same day). Same as `triton-ops bench fp8`.
"""

from __future__ import annotations

import sys

from tests.benchmarks._runner import run

OPS = ["fp8"]


def main(argv: list[str] | None = None) -> int:
    return run(OPS, "python -m tests.benchmarks.bench_fp8_gemm", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
