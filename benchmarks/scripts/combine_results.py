"""Combine the results JSON files of several `triton-ops bench` runs of one GPU (e.g. one op per command,
to fit a time limit) into one results file with its Markdown, CSV and plots.

    python benchmarks/scripts/combine_results.py OUT_DIR --commit SHA --command "..." IN.json [IN.json ...]

Later files win for the same (op, shape, dtype, system) row.
"""

from __future__ import annotations

import argparse

from triton_ops.benchmark.report import load_results, merge_rows, write_reports
from triton_ops.benchmark.suite import BenchmarkReport


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--commit", default=None, help="commit the runs were made from (recorded in env)")
    ap.add_argument("--command", default=None, help="command that produced the results (recorded in the .md)")
    ap.add_argument("--date", default=None)
    args = ap.parse_args()
    env, rows = None, []
    for path in args.inputs:
        data = load_results(path)
        if env is not None and data["env"].get("gpu") != env.get("gpu"):
            raise SystemExit(f"{path} is from {data['env'].get('gpu')}, not {env.get('gpu')}")
        env = env or dict(data["env"])
        rows = merge_rows(rows, data["rows"])
    if args.commit:
        env["commit"] = args.commit
    report = BenchmarkReport(env=env, rows=rows)
    if args.date:
        report.date = args.date
    written = write_reports(report, args.out_dir, merge=False, command=args.command)
    for kind, paths in written.items():
        for p in paths:
            print(f"wrote {kind}: {p}")


if __name__ == "__main__":
    main()
