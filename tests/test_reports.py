"""Reports: JSON in the benchmarks/results format, Markdown, CSV and PNG plots, written and parsed back."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from triton_ops.benchmark.report import (
    CPU_BANNER,
    gpu_slug,
    load_results,
    merge_rows,
    plot_op,
    to_csv,
    to_markdown,
    write_reports,
)
from triton_ops.benchmark.suite import BenchmarkReport

ENV = {"gpu": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0", "cuda": "12.8", "commit": "abc123"}


def _rows():
    rows = []
    for tokens in (2048, 16384):
        shape = f"{tokens // 2048}x2048x4096"
        ms_ours, ms_eager, ms_copy = 0.01 * tokens / 2048, 0.2 * tokens / 2048, 0.008 * tokens / 2048
        nbytes = tokens * 4096 * 2 * 2
        for sysname, ms in (("triton_ops", ms_ours), ("torch_eager", ms_eager), ("copy", ms_copy)):
            r = {"op": "rmsnorm_rope", "shape": shape, "dtype": "float16", "system": sysname, "ms": ms,
                 "gbps": nbytes / (ms * 1e-3) / 1e9, "correct": True if sysname != "copy" else None,
                 "rel_error": 3e-4, "status": "ok", "size": tokens,
                 "ratio_vs_copy": ms_copy / ms, "pct_of_ceiling": 100 * ms_copy / ms}
            if sysname != "torch_eager":
                r["ratio_vs_torch_eager"] = ms_eager / ms
            rows.append(r)
        rows.append({"op": "rmsnorm_rope", "shape": shape, "dtype": "float16", "system": "torch_compile",
                     "ms": None, "correct": False, "status": "FAILED", "error": "relative error 0.5 | big"})
    for n in (1024, 4096):
        for sysname, ms in (("triton_ops", 0.1 * n / 1024), ("cublas_scaled_mm", 0.09 * n / 1024)):
            flops = 2.0 * n**3
            rows.append({"op": "fp8_gemm", "shape": f"{n}^3", "dtype": "e4m3->bf16", "system": sysname, "ms": ms,
                         "tflops": flops / (ms * 1e-3) / 1e12, "gbps": 3 * n * n / (ms * 1e-3) / 1e9,
                         "correct": True, "sqnr_db": 31.5, "rel_error": 0.03, "status": "ok"})
    return rows


def _report(rows=None, env=None, cpu=False, date="2026-11-21"):
    return BenchmarkReport(env=dict(env or ENV), rows=rows if rows is not None else _rows(),
                           unavailable={"gated_mlp": "not available (no benchmark cases module yet)"},
                           cpu_only=cpu, date=date)


@pytest.mark.parametrize("name,slug", [("NVIDIA H200", "h200"), ("NVIDIA H100 80GB HBM3", "h100"),
                                       ("NVIDIA H20", "h20"), ("NVIDIA A100-SXM4-80GB", "a100"),
                                       ("cpu (Triton interpreter)", "cpu"),
                                       ("NVIDIA GeForce RTX 5090", "geforce-rtx-5090"), (None, "unknown")])
def test_gpu_slug(name, slug):
    assert gpu_slug(name) == slug


def test_write_reports_all_formats(tmp_path):
    written = write_reports(_report(), tmp_path, command="triton-ops bench")
    [j] = written["json"]
    assert j.name == "h200-2026-11-21.json"
    data = load_results(j)
    assert set(data) == {"env", "rows"}
    assert set(data["env"]) == {"gpu", "torch", "triton", "cuda", "commit"}
    assert len(data["rows"]) == len(_rows())
    for r in data["rows"]:
        assert {"op", "shape", "dtype", "system", "ms", "correct"} <= set(r)
    failed = [r for r in data["rows"] if r["status"] == "FAILED"]
    assert failed and all(r["ms"] is None and r["correct"] is False for r in failed)
    json.loads(j.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    [md] = written["md"]
    text = md.read_text()
    assert "## rmsnorm_rope" in text and "## fp8_gemm" in text and "**FAILED**" in text
    assert "vs torch_eager" in text and "% ceiling" in text and "Command: `triton-ops bench`" in text
    assert "gated_mlp" in text and "Not available" in text
    assert "relative error 0.5 / big" in text  # a '|' in a message must not break the table

    [c] = written["csv"]
    parsed = list(csv.DictReader(io.StringIO(c.read_text())))
    assert len(parsed) == len(_rows())
    assert parsed[0]["op"] == "rmsnorm_rope" and float(parsed[0]["ms"]) > 0

    pngs = sorted(p.name for p in written["png"])
    assert pngs == ["h200-2026-11-21-fp8_gemm.png", "h200-2026-11-21-rmsnorm_rope.png"]
    import matplotlib.image as mpimg

    for p in written["png"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 400


def test_cpu_reports_are_named_and_marked(tmp_path):
    env = dict(ENV, gpu="cpu (Triton interpreter)", cuda=None)
    written = write_reports(_report(env=env, cpu=True), tmp_path, plots=False)
    assert written["json"][0].name == "cpu-2026-11-21.json" and written["png"] == []
    assert CPU_BANNER in written["md"][0].read_text()


def test_merge_replaces_remeasured_rows(tmp_path):
    write_reports(_report(), tmp_path, plots=False)
    newer = [dict(r) for r in _rows() if r["op"] == "fp8_gemm"]
    for r in newer:
        r["ms"] = 123.0
    extra = {"op": "gated_mlp", "shape": "M=128", "dtype": "bfloat16", "system": "triton_ops", "ms": 0.08,
             "status": "ok", "correct": True}
    write_reports(_report(rows=newer + [extra]), tmp_path, plots=False)
    rows = load_results(tmp_path / "h200-2026-11-21.json")["rows"]
    assert len(rows) == len(_rows()) + 1
    assert all(r["ms"] == 123.0 for r in rows if r["op"] == "fp8_gemm")
    assert any(r["op"] == "rmsnorm_rope" and r["ms"] for r in rows)
    # without merging, the file holds this run only
    write_reports(_report(rows=[extra]), tmp_path, plots=False, merge=False)
    assert len(load_results(tmp_path / "h200-2026-11-21.json")["rows"]) == 1


def test_merge_ignores_a_corrupt_old_file(tmp_path):
    (tmp_path / "h200-2026-11-21.json").write_text("{broken")
    with pytest.warns(RuntimeWarning, match="replaced"):
        write_reports(_report(), tmp_path, plots=False)
    assert len(load_results(tmp_path / "h200-2026-11-21.json")["rows"]) == len(_rows())


def test_non_finite_values_become_null(tmp_path):
    rows = [{"op": "x", "shape": "1", "dtype": "float32", "system": "triton_ops", "ms": 1.0, "sqnr_db": math.inf,
             "rel_error": math.nan, "status": "ok", "correct": True}]
    write_reports(_report(rows=rows), tmp_path, plots=False)
    r = load_results(tmp_path / "h200-2026-11-21.json")["rows"][0]
    assert r["sqnr_db"] is None and r["rel_error"] is None


def test_load_results_rejects_other_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a benchmark results file"):
        load_results(p)
    p.write_text(json.dumps({"env": {}, "rows": [{"op": "a"}]}))
    with pytest.raises(ValueError, match="lacks"):
        load_results(p)


def test_markdown_and_csv_of_empty_and_mixed_rows():
    assert "# Benchmark results" in to_markdown([], ENV)
    assert to_csv([]).startswith("op,shape,dtype,system,ms")
    md = to_markdown(_rows(), ENV)
    assert "31.5 dB" in md  # FP8 rows are judged by SQNR
    assert "TFLOPS" in md


def test_merge_rows_order():
    a = [{"op": "o", "shape": "1", "dtype": "d", "system": "s", "ms": 1},
         {"op": "o", "shape": "2", "dtype": "d", "system": "s", "ms": 2}]
    b = [{"op": "o", "shape": "1", "dtype": "d", "system": "s", "ms": 9}]
    assert [r["ms"] for r in merge_rows(a, b)] == [2, 9]


def test_plot_categorical_and_nothing_timed(tmp_path):
    rows = [r for r in _rows() if r["op"] == "fp8_gemm"]  # no numeric size: categorical axis
    assert plot_op(rows, "fp8_gemm", tmp_path / "p.png").exists()
    failed_only = [r for r in _rows() if r["status"] == "FAILED"]
    assert plot_op(failed_only, "rmsnorm_rope", tmp_path / "q.png") is None
