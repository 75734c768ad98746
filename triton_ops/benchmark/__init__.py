"""Benchmark suite: correctness-verified timing of the ops against their baselines, and reports."""

from .case import BenchCase, relative_error, sqnr_db
from .correctness import CorrectnessVerifier, check_output
from .report import load_results, plot_op, to_csv, to_markdown, write_reports
from .suite import OP_FAMILIES, BenchmarkReport, BenchmarkSuite, collect_env

__all__ = [
    "BenchCase",
    "BenchmarkSuite",
    "BenchmarkReport",
    "CorrectnessVerifier",
    "check_output",
    "relative_error",
    "sqnr_db",
    "write_reports",
    "to_markdown",
    "to_csv",
    "plot_op",
    "load_results",
    "collect_env",
    "OP_FAMILIES",
]
