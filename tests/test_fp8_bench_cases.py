"""The FP8 benchmark cases run on the CPU interpreter at their quick shapes, every system agreeing with
its reference (what `triton-ops bench fp8_gemm` does with no GPU), so a broken case is found before a GPU
run is spent on it."""

from __future__ import annotations

from triton_ops.benchmark.cases_fp8 import WALL_CALLS, cases
from triton_ops.benchmark.suite import STATUS_OK, BenchmarkSuite

from .conftest import DEVICE


def test_fp8_gemm_and_linear_cases_run_and_agree():
    all_cases = cases(quick=True, device=DEVICE)
    ops = {c.op for c in all_cases}
    # both layouts of b and of a, the README's fp16 call, FP8Linear with Parameter weights, host-inclusive twins
    assert {"fp8_gemm_prequant", "fp8_gemm_auto", "fp8_linear", "fp8_gemm_auto_wall", "fp8_linear_wall"} <= ops
    systems = {s for c in all_cases for s in c.systems}
    assert {"triton_ops_b_kn", "triton_ops_b_kn_fresh", "triton_ops_a_col", "triton_ops_b_t", "triton_ops_param",
            "triton_ops_fresh_b"} <= systems
    wall = [c for c in all_cases if c.op.endswith("_wall")]
    assert all(f"x{WALL_CALLS} calls" in c.shape for c in wall)
    picked = [c for c in all_cases if c.op in ("fp8_gemm_prequant", "fp8_gemm_auto", "fp8_linear")
              and "tensor" not in c.shape]
    suite = BenchmarkSuite(device=DEVICE, cpu_reps=1)
    rows = [r for c in picked for r in suite.run_case(c)]
    bad = [(r["op"], r["shape"], r["system"], r.get("error")) for r in rows if r["status"] != STATUS_OK
           and r["status"] != "skipped"]
    assert not bad, bad
    ran = {r["system"] for r in rows if r["status"] == STATUS_OK}
    assert {"triton_ops", "triton_ops_b_kn", "triton_ops_a_col"} <= ran
