"""Shared entry point of the per-op bench scripts: a thin front end to `triton-ops bench <op>`."""

from __future__ import annotations

import argparse


def run(ops: list[str], prog: str, description: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--out", default="benchmarks/results", help="report directory (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller problems")
    parser.add_argument("--shapes", nargs="+", help="only these shape labels")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    cli_argv = ["bench", *ops, "--out", args.out]
    if args.quick:
        cli_argv.append("--quick")
    if args.shapes:
        cli_argv += ["--shapes", *args.shapes]
    if args.no_plots:
        cli_argv.append("--no-plots")
    from triton_ops.cli import main as cli_main

    return cli_main(cli_argv)
