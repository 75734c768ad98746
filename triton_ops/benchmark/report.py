"""Benchmark reports: JSON (the ``benchmarks/results`` format), Markdown, CSV and PNG plots.

Files are named ``<gpu-slug>-<yyyy-mm-dd>.<ext>`` (e.g. ``h200-2026-11-21.json``); a run with no GPU is
named ``cpu-<date>`` so interpreter timings can never pass for GPU results. Writing into a directory
that already has today's JSON for the same GPU merges the rows (a re-measured row replaces the old one),
so the per-op bench scripts can fill one results file between them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..performance import _PEAKS
from .suite import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, BenchmarkReport

BASE_COLUMNS = ["op", "shape", "dtype", "system", "ms", "gbps", "tflops", "correct", "rel_error", "sqnr_db",
                "status", "error"]
CPU_BANNER = ("Timings from the CPU through the Triton interpreter: they check that every op runs and agrees "
              "with its reference, and are NOT GPU performance figures.")
#: Flops per byte above which an op is plotted in TFLOPS rather than GB/s (an H100 balances ~990 TFLOPS of
#: fp16 against ~3.35 TB/s: ~300 flops/byte; anything above ~20 is far from memory-bound territory).
COMPUTE_BOUND_FLOPS_PER_BYTE = 20.0


def gpu_slug(gpu: str | None) -> str:
    """Short file-name form of a device name: "NVIDIA H200" -> "h200", "cpu (Triton interpreter)" -> "cpu"."""
    name = (gpu or "unknown").strip()
    if name.lower().startswith("cpu"):
        return "cpu"
    for p in _PEAKS:
        if re.search(rf"\b{re.escape(p.name)}\b", name):
            return p.name.lower()
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = re.sub(r"^nvidia-", "", slug)
    return slug or "unknown"


def results_stem(env: dict[str, Any], date: str) -> str:
    return f"{gpu_slug(env.get('gpu'))}-{date}"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/Inf become None; tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _row_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r.get("op"), r.get("shape"), r.get("dtype"), r.get("system"))


def load_results(path: str | Path) -> dict[str, Any]:
    """Parse a results JSON and check its layout: ``{"env": {...}, "rows": [{op, shape, dtype, system,
    ms ...}]}``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    ok = isinstance(data, dict) and isinstance(data.get("env"), dict) and isinstance(data.get("rows"), list)
    if not ok:
        raise ValueError(f"{path} is not a benchmark results file (expected keys 'env' and 'rows')")
    for r in data["rows"]:
        missing = [k for k in ("op", "shape", "dtype", "system", "ms") if k not in r]
        if missing:
            raise ValueError(f"{path}: row {r} lacks {missing}")
    return data


def merge_rows(old: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` rows not re-measured in ``new``, followed by ``new`` (order kept)."""
    new = list(new)
    fresh = {_row_key(r) for r in new}
    return [r for r in old if _row_key(r) not in fresh] + new


# ---------------------------------------------------------------------------------------------- text


def _fmt(x: Any, kind: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if kind == "ms":
        return f"{x:.4g}"
    if kind == "ratio":
        return f"{x:.2f}x"
    if kind == "pct":
        return f"{x:.0f}%"
    # throughput: 1 decimal for GPU-scale figures, 3 significant digits for the interpreter's tiny ones
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def _check_cell(r: dict[str, Any]) -> str:
    status = r.get("status")
    if status == STATUS_SKIPPED:
        return "skipped"
    if status == STATUS_FAILED:
        return "**FAILED**"
    if r.get("correct") is None:
        return "n/a"
    if r.get("sqnr_db") is not None:
        return f"ok ({r['sqnr_db']:.1f} dB)"
    if r.get("rel_error") is not None:
        return f"ok (rel {r['rel_error']:.1e})"
    return "ok"


def _ratio_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k.startswith("ratio_vs_") and k not in cols:
                cols.append(k)
    return cols


def to_markdown(rows: Sequence[dict[str, Any]], env: dict[str, Any] | None = None, *, cpu_only: bool = False,
                unavailable: dict[str, str] | None = None, command: str | None = None) -> str:
    """A Markdown report: environment, then one table per op."""
    lines: list[str] = []
    env = env or {}
    lines.append(f"# Benchmark results: {env.get('gpu', 'unknown device')}")
    lines.append("")
    if cpu_only:
        lines += [f"> **{CPU_BANNER}**", ""]
    lines.append("torch {torch}, triton {triton}, CUDA {cuda}, commit {commit}".format(
        **{k: env.get(k) or "n/a" for k in ("torch", "triton", "cuda", "commit")}))
    if command:
        lines += ["", f"Command: `{command}`"]
    lines += ["", "`vs X` = time of X / time of this row (above 1.00x: this row is faster). "
              "`% ceiling` = share of the ceiling system's speed (copy of the same bytes, or cuBLAS).", ""]
    ops: list[str] = []
    for r in rows:
        if r["op"] not in ops:
            ops.append(r["op"])
    for op in ops:
        op_rows = [r for r in rows if r["op"] == op]
        ratio_cols = _ratio_columns(op_rows)
        has_gbps = any(r.get("gbps") is not None for r in op_rows)
        has_tflops = any(r.get("tflops") is not None for r in op_rows)
        has_ceiling = any(r.get("pct_of_ceiling") is not None for r in op_rows)
        has_peak = any(r.get("peak_mb") is not None for r in op_rows)
        header = ["shape", "dtype", "system", "ms"]
        header += ["GB/s"] if has_gbps else []
        header += ["TFLOPS"] if has_tflops else []
        header += ["peak MB"] if has_peak else []
        header += [f"vs {c[len('ratio_vs_'):]}" for c in ratio_cols]
        header += ["% ceiling"] if has_ceiling else []
        header += ["check", "note"]
        lines += [f"## {op}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in op_rows:
            system = f"**{r['system']}**" if r["system"].startswith("triton_ops") else str(r["system"])
            cells = [str(r["shape"]), str(r["dtype"]), system, _fmt(r.get("ms"), "ms")]
            cells += [_fmt(r.get("gbps"), "num")] if has_gbps else []
            cells += [_fmt(r.get("tflops"), "num")] if has_tflops else []
            cells += [_fmt(r.get("peak_mb"), "num")] if has_peak else []
            cells += [_fmt(r.get(c), "ratio") for c in ratio_cols]
            cells += [_fmt(r.get("pct_of_ceiling"), "pct")] if has_ceiling else []
            note = str(r.get("error") or "").replace("|", "/").replace("\n", " ")[:160]
            cells += [_check_cell(r), note]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if unavailable:
        lines += ["## Not available", ""]
        lines += [f"- `{name}`: {why}" for name, why in unavailable.items()]
        lines.append("")
    return "\n".join(lines)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    extra: list[str] = []
    for r in rows:
        for k in r:
            if k not in BASE_COLUMNS and k not in extra:
                extra.append(k)
    cols = BASE_COLUMNS + sorted(extra)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- plots


def _plot_metric(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    intensities = [r["tflops"] * 1e3 / r["gbps"] for r in rows
                   if r.get("tflops") and r.get("gbps")]
    if any(r.get("tflops") for r in rows) and (
            not any(r.get("gbps") for r in rows)
            or (intensities and max(intensities) > COMPUTE_BOUND_FLOPS_PER_BYTE)):
        return "tflops", "TFLOPS"
    if any(r.get("gbps") for r in rows):
        return "gbps", "GB/s"
    return "inv_ms", "runs per second"


def plot_op(rows: Sequence[dict[str, Any]], op: str, path: str | Path, *, title: str | None = None,
            cpu_only: bool = False) -> Path | None:
    """Throughput vs problem size for ``op``, one line per system and one panel per dtype.

    Returns the PNG path, or None when matplotlib is not installed or nothing was timed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        warnings.warn("matplotlib is not installed: no plots (pip install matplotlib)", RuntimeWarning,
                      stacklevel=2)
        return None
    op_rows = [r for r in rows if r["op"] == op and r.get("status") == STATUS_OK and r.get("ms")]
    if not op_rows:
        return None
    metric, label = _plot_metric(op_rows)
    dtypes = list(dict.fromkeys(r["dtype"] for r in op_rows))
    try:
        fig = Figure(figsize=(7.5, 4.2 * len(dtypes)), layout="constrained")
    except TypeError:  # matplotlib < 3.6
        fig = Figure(figsize=(7.5, 4.2 * len(dtypes)), constrained_layout=True)
    FigureCanvasAgg(fig)
    for i, dt in enumerate(dtypes):
        ax = fig.add_subplot(len(dtypes), 1, i + 1)
        dt_rows = [r for r in op_rows if r["dtype"] == dt]
        shapes = list(dict.fromkeys(r["shape"] for r in dt_rows))
        numeric = all(r.get("size") is not None for r in dt_rows)
        systems = list(dict.fromkeys(r["system"] for r in dt_rows))
        for sys_name in systems:
            pts = []
            for r in dt_rows:
                if r["system"] != sys_name:
                    continue
                y = 1e3 / r["ms"] if metric == "inv_ms" else r.get(metric)
                if y is None:
                    continue
                x = float(r["size"]) if numeric else shapes.index(r["shape"])
                pts.append((x, y))
            if not pts:
                continue
            pts.sort()
            ours = sys_name.startswith("triton_ops")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=sys_name,
                    linewidth=2.5 if ours else 1.3, linestyle="-" if ours else "--")
        if numeric:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("problem size")
        else:
            ax.set_xticks(range(len(shapes)))
            ax.set_xticklabels(shapes, rotation=20, ha="right", fontsize=8)
            ax.set_xlabel("problem")
        ax.set_ylabel(label)
        ax.set_title(f"{title or op} ({dt})", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if cpu_only:
        fig.suptitle("CPU / Triton interpreter timings: not GPU figures", fontsize=9, color="firebrick")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# ---------------------------------------------------------------------------------------------- files


def write_reports(report: BenchmarkReport, out_dir: str | Path, *, plots: bool = True, merge: bool = True,
                  command: str | None = None) -> dict[str, list[Path]]:
    """Write ``<stem>.json``, ``.md``, ``.csv`` and one ``<stem>-<op>.png`` per op into ``out_dir``.

    Returns ``{"json": [...], "md": [...], "csv": [...], "png": [...]}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = results_stem(report.env, report.date)
    json_path = out / f"{stem}.json"
    rows = [_clean(r) for r in report.rows]
    if merge and json_path.exists():
        try:
            old = load_results(json_path)
            if old["env"].get("gpu") == report.env.get("gpu"):
                rows = merge_rows(old["rows"], rows)
        except (OSError, ValueError) as exc:
            warnings.warn(f"{json_path} could not be read ({exc}); it is replaced", RuntimeWarning,
                          stacklevel=2)
    data = {"env": _clean(dict(report.env)), "rows": rows}
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(json_path)
    written: dict[str, list[Path]] = {"json": [json_path], "md": [], "csv": [], "png": []}
    md_path = out / f"{stem}.md"
    md_path.write_text(to_markdown(rows, report.env, cpu_only=report.cpu_only, unavailable=report.unavailable,
                                   command=command), encoding="utf-8")
    written["md"].append(md_path)
    csv_path = out / f"{stem}.csv"
    csv_path.write_text(to_csv(rows), encoding="utf-8")
    written["csv"].append(csv_path)
    if plots:
        gpu = report.env.get("gpu") or ""
        for op in dict.fromkeys(r["op"] for r in rows):
            p = plot_op(rows, op, out / f"{stem}-{op}.png", title=f"{op} on {gpu}", cpu_only=report.cpu_only)
            if p is not None:
                written["png"].append(p)
    return written


__all__ = ["to_markdown", "to_csv", "plot_op", "write_reports", "load_results", "merge_rows", "gpu_slug",
           "results_stem", "CPU_BANNER"]
