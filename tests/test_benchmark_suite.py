"""Benchmark suite on synthetic torch-only cases: verification before timing, FAILED rows not timed,
skips, ratios, input rotation, missing op families; and the correctness checks themselves."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from triton_ops.benchmark import suite as suite_mod
from triton_ops.benchmark.case import BenchCase
from triton_ops.benchmark.correctness import CorrectnessVerifier, check_output
from triton_ops.benchmark.suite import BenchmarkSuite, family_of
from triton_ops.exceptions import CorrectnessError

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _case(n: int = 257, **overrides) -> BenchCase:
    """y = silu(x) * 2: a correct system, a wrong one, a raising one, a copy ceiling and a GPU-only one."""

    def make():
        return {"x": torch.randn(n, device=DEVICE)}

    fields = dict(
        op="synth_silu", shape=f"n={n}", dtype="float32", make_inputs=make,
        systems={
            "triton_ops": lambda d: torch.nn.functional.silu(d["x"]) * 2,
            "torch_eager": lambda d: d["x"] * torch.sigmoid(d["x"]) * 2,
            "wrong": lambda d: torch.nn.functional.silu(d["x"]) * 2.01,
            "raises": lambda d: (_ for _ in ()).throw(RuntimeError("kernel exploded")),
            "copy": lambda d: d["x"].clone(),
            "gpu_thing": lambda d: torch.nn.functional.silu(d["x"]) * 2,
        },
        reference=lambda d: torch.nn.functional.silu(d["x"].double()) * 2,
        # fp32 silu against float64 is within ~1e-7 relative; 1e-5 passes it and fails "wrong" (0.5% off)
        bytes_moved=8.0 * n, flops=5.0 * n, ceiling="copy", unchecked=("copy",), rtol=1e-5,
        gpu_only=("gpu_thing",), size=n,
    )
    fields.update(overrides)
    return BenchCase(**fields)


def _rows(report):
    return {r["system"]: r for r in report.rows}


def test_suite_verifies_then_times():
    s = BenchmarkSuite(ops=["synth_silu"], device=DEVICE, warmup_ms=1, rep_ms=5)
    s.add_case(_case())
    report = s.run()
    rows = _rows(report)
    ok = rows["triton_ops"]
    assert ok["status"] == "ok" and ok["correct"] is True and ok["ms"] > 0
    assert ok["rel_error"] < 1e-6 and "sqnr_db" not in ok
    assert ok["gbps"] == pytest.approx(8.0 * 257 / (ok["ms"] * 1e-3) / 1e9)
    assert ok["tflops"] == pytest.approx(5.0 * 257 / (ok["ms"] * 1e-3) / 1e12)
    # ratios against every baseline and the ceiling, measured in the same run
    assert ok["ratio_vs_torch_eager"] == pytest.approx(rows["torch_eager"]["ms"] / ok["ms"])
    assert ok["pct_of_ceiling"] == pytest.approx(100 * rows["copy"]["ms"] / ok["ms"])
    assert "ratio_vs_triton_ops" not in rows["torch_eager"]  # ours is not a baseline
    # a wrong kernel is reported and never timed
    assert rows["wrong"]["status"] == "FAILED" and rows["wrong"]["correct"] is False
    assert rows["wrong"]["ms"] is None and "relative error" in rows["wrong"]["error"]
    assert rows["raises"]["status"] == "FAILED" and "kernel exploded" in rows["raises"]["error"]
    assert rows["raises"]["ms"] is None
    assert rows["copy"]["correct"] is None and rows["copy"]["ms"] > 0  # unchecked ceiling
    if DEVICE == "cpu":
        assert rows["gpu_thing"]["status"] == "skipped" and rows["gpu_thing"]["ms"] is None
    assert [r["system"] for r in report.rows] == list(_case().systems)
    assert {r["system"] for r in report.failed} == {"wrong", "raises"}
    assert report.cpu_only == (DEVICE == "cpu")
    assert set(report.env) == {"gpu", "torch", "triton", "cuda", "commit"}


def test_skip_systems_and_cpu_skip():
    s = BenchmarkSuite(device=DEVICE, skip_systems=["wrong", "raises"], warmup_ms=1, rep_ms=5)
    case = _case(systems={"triton_ops": lambda d: torch.nn.functional.silu(d["x"]) * 2,
                          "torch_compile": lambda d: torch.nn.functional.silu(d["x"]) * 2,
                          "wrong": lambda d: d["x"]})
    rows = _rows(s.run([case]))
    assert rows["wrong"]["status"] == "skipped"
    if DEVICE == "cpu":  # torch.compile is skipped by default with no GPU
        assert rows["torch_compile"]["status"] == "skipped"


def test_extra_output_callable_is_what_gets_checked():
    # the timed callable returns nothing useful; extra[] produces the output to verify
    case = _case(systems={"triton_ops": lambda d: None}, ceiling=None, unchecked=(),
                 extra={"triton_ops": lambda d: torch.nn.functional.silu(d["x"]) * 2})
    rows = _rows(BenchmarkSuite(device=DEVICE, warmup_ms=1, rep_ms=5).run([case]))
    assert rows["triton_ops"]["status"] == "ok" and rows["triton_ops"]["ms"] > 0


def test_rotating_inputs_are_all_used():
    made, seen = [], set()

    def make():
        made.append(1)
        return {"x": torch.randn(64, device=DEVICE) + len(made), "id": len(made)}

    def system(d):
        seen.add(d["id"])
        return d["x"] * 2

    case = BenchCase(op="rot", shape="64", dtype="float32", make_inputs=make, systems={"triton_ops": system},
                     reference=lambda d: d["x"].double() * 2, rotate_inputs=3)
    s = BenchmarkSuite(device=DEVICE, warmup_ms=1, rep_ms=5, cpu_reps=4)
    rows = s.run([case]).rows
    assert rows[0]["status"] == "ok"
    assert len(made) == 3 and seen == {1, 2, 3}


def test_sqnr_checked_cases():
    def make():
        return {"x": torch.randn(4096, device=DEVICE)}

    def noisy(db):
        def f(d):
            g = torch.Generator(device=DEVICE).manual_seed(0)
            noise = torch.randn(d["x"].shape, device=DEVICE, generator=g)
            return d["x"] + noise * (10 ** (-db / 20))

        return f

    case = BenchCase(op="q", shape="4096", dtype="e4m3", make_inputs=make,
                     systems={"good": noisy(40.0), "bad": noisy(15.0)}, reference=lambda d: d["x"],
                     min_sqnr_db=25.0)
    rows = _rows(BenchmarkSuite(device=DEVICE, warmup_ms=1, rep_ms=5).run([case]))
    assert rows["good"]["status"] == "ok" and 37 < rows["good"]["sqnr_db"] < 43
    assert rows["bad"]["status"] == "FAILED" and "SQNR" in rows["bad"]["error"]


def test_broken_inputs_fail_every_system():
    case = _case(make_inputs=lambda: (_ for _ in ()).throw(MemoryError("no memory")))
    rows = BenchmarkSuite(device=DEVICE).run([case]).rows
    assert len(rows) == len(case.systems)
    assert all(r["status"] == "FAILED" and "no memory" in r["error"] for r in rows)


def test_missing_and_broken_families_are_not_available(monkeypatch):
    broken = types.ModuleType("triton_ops_test_broken_cases")
    broken.cases = lambda quick=False, shapes=None, device="cuda": 1 / 0
    nocases = types.ModuleType("triton_ops_test_nocases")
    monkeypatch.setitem(sys.modules, broken.__name__, broken)
    monkeypatch.setitem(sys.modules, nocases.__name__, nocases)
    good = types.ModuleType("triton_ops_test_good_cases")
    good.cases = lambda quick=False, shapes=None, device="cuda": [_case(n=33)] if quick else []
    monkeypatch.setitem(sys.modules, good.__name__, good)
    monkeypatch.setattr(suite_mod, "OP_FAMILIES", {
        "missing": "triton_ops.benchmark.cases_not_written_yet", "broken": broken.__name__,
        "nocases": nocases.__name__, "synth": good.__name__})
    s = BenchmarkSuite(device=DEVICE, quick=True, skip_systems=["wrong", "raises"], warmup_ms=1, rep_ms=5)
    cases = s.load_cases()
    assert [c.op for c in cases] == ["synth_silu"]
    assert "no benchmark cases module" in s.unavailable["missing"]
    assert "ZeroDivisionError" in s.unavailable["broken"]
    assert "defines no cases()" in s.unavailable["nocases"]
    report = s.run()
    assert set(report.unavailable) == {"missing", "broken", "nocases"}
    assert not report.failed


def test_op_filter_and_families():
    assert family_of("fp8_gemm") == "fp8" and family_of("fp8_quantize") == "fp8"
    assert family_of("rmsnorm_rope") == "rmsnorm_rope" and family_of("conv") is None
    s = BenchmarkSuite(ops=["fp8_gemm"])
    assert s._wanted_families() == ["fp8"]
    s = BenchmarkSuite(ops=["no_such_op"])
    assert s._wanted_families() == [] and "unknown op" in s.unavailable["no_such_op"]


def test_defaults_follow_the_device():
    s = BenchmarkSuite(device="cpu")
    assert s.quick is True and not s.on_gpu


# ---------------------------------------------------------------------------------------------- correctness


def test_check_output_relative_error():
    ref = torch.randn(100, dtype=torch.float64)
    # the tolerances are what is under test: an fp32 rounding (~6e-8) passes 1e-6, a 1% error fails 1e-3
    ok = check_output(ref.float(), ref, rtol=1e-6)
    assert ok.passed and ok.rel_error < 1e-7
    bad = check_output(ref * 1.01, ref, rtol=1e-3)
    assert not bad.passed and bad.rel_error == pytest.approx(0.01) and "relative error" in bad.message
    # default tolerance comes from the output dtype (fp16: 5e-3)
    assert check_output(ref.half(), ref).passed
    assert not check_output((ref * 1.02).half(), ref).passed


def test_check_output_shapes_nans_tuples_and_empty():
    ref = torch.randn(4, 5)
    assert "shape" in check_output(ref.t(), ref).message
    poisoned = ref.clone()
    poisoned[1, 2] = float("nan")
    res = check_output(poisoned, ref)
    assert not res.passed and "NaN" in res.message
    # NaN in the reference must be reproduced, and is then excluded from the error
    ref_nan = ref.clone()
    ref_nan[0, 0] = float("nan")
    assert check_output(ref_nan.clone(), ref_nan).passed
    assert not check_output(ref.clone(), ref_nan).passed
    assert check_output((ref.clone(), torch.ones(1)), ref).passed  # first item of a tuple
    assert check_output(torch.empty(0, 3), torch.empty(0, 3)).passed
    assert not check_output("not a tensor", ref).passed


def test_check_output_sqnr():
    ref = torch.randn(10000, dtype=torch.float64)
    noisy = ref + torch.randn(10000, dtype=torch.float64) * 0.01  # ~40 dB
    res = check_output(noisy, ref, min_sqnr_db=30)
    assert res.passed and 38 < res.sqnr_db < 42
    assert not check_output(noisy, ref, min_sqnr_db=45).passed
    assert math.isinf(check_output(ref, ref, min_sqnr_db=30).sqnr_db)


def test_verifier():
    v = CorrectnessVerifier(rtol=1e-3)  # any bound works here: the verifier's pass/raise is under test
    x = torch.randn(10)
    assert v.verify(x, x)
    with pytest.raises(CorrectnessError, match="out: relative error"):
        v.assert_close(x + 1, x, "out")


@pytest.mark.gpu
def test_suite_on_gpu_with_graphs_rotation_and_ceiling():
    from triton_ops.benchmark.timing import copy_ceiling

    n = 1 << 24  # 64 MiB fp32 in and out
    ceil = copy_ceiling(8 * n, "cuda")
    case = _case(n=n, systems={"triton_ops": lambda d: torch.nn.functional.silu(d["x"]) * 2,
                               "torch_eager": lambda d: d["x"] * torch.sigmoid(d["x"]) * 2,
                               "copy": lambda d: ceil()},
                 make_inputs=lambda: {"x": torch.randn(n, device="cuda")}, gpu_only=(), rotate_inputs=2)
    small = _case(n=4096, systems={"triton_ops": lambda d: torch.nn.functional.silu(d["x"]) * 2},
                  make_inputs=lambda: {"x": torch.randn(4096, device="cuda")}, ceiling=None, unchecked=(),
                  gpu_only=(), cuda_graph=True, rotate_inputs=4)
    report = BenchmarkSuite(device="cuda").run([case, small])
    assert not report.failed and not report.cpu_only
    rows = [r for r in report.rows if r["shape"] == f"n={n}"]
    by = {r["system"]: r for r in rows}
    for r in rows:
        assert r["status"] == "ok" and 0.005 < r["ms"] < 50
        assert 50 < r["gbps"] < 6000  # below any GPU's memory bandwidth
    assert 0 < by["triton_ops"]["pct_of_ceiling"] < 150
    graph_row = [r for r in report.rows if r["shape"] == "n=4096"][0]
    assert graph_row["status"] == "ok" and graph_row["ms"] < 1.0
    assert "NVIDIA" in report.env["gpu"] and report.env["cuda"]
