"""Fused gated MLP (SwiGLU / GeGLU): benchmark against torch eager, torch.compile and the ceiling.

    python -m tests.benchmarks.bench_gated_mlp [--quick] [--shapes ...] [--out DIR]

Runs the benchmark suite for this op only (every system verified against the reference before it is
timed), prints the table and writes <gpu>-<date>.json/.md/.csv and plots into --out (merged with other
ops' rows of the same day). Same as `triton-ops bench gated_mlp`.
"""

from __future__ import annotations

import argparse
import sys

OPS = ["gated_mlp"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_gated_mlp",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="report directory (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller problems")
    parser.add_argument("--shapes", nargs="+", help="only these shape labels")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    cli_argv = ["bench", *OPS, "--out", args.out]
    if args.quick:
        cli_argv.append("--quick")
    if args.shapes:
        cli_argv += ["--shapes", *args.shapes]
    if args.no_plots:
        cli_argv.append("--no-plots")
    from triton_ops.cli import main as cli_main

    return cli_main(cli_argv)


if __name__ == "__main__":
    sys.exit(main())
