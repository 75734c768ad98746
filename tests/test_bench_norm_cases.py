"""The ``norm`` benchmark family at its quick shapes on the CPU interpreter: ``bench norm`` finds every op,
every system that runs without a GPU agrees with its reference, and a wrong system is reported FAILED (the
checks can fail), so a broken case is found before a GPU run is spent on it."""

from __future__ import annotations

import dataclasses

import pytest

from triton_ops.benchmark import cases_norm as CN
from triton_ops.benchmark.suite import OP_FAMILIES, STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, BenchmarkSuite

from .conftest import DEVICE, HAS_CUDA

OPS = {"norm_add_rmsnorm", "norm_apply_rope", "norm_fp8", "norm_fp8_mlp_block"}


def _quick(op: str, scaling: str | None = None):
    for c in CN.cases(quick=True, device=DEVICE):
        if c.op == op and (scaling is None or scaling in c.shape):
            return c
    raise AssertionError(f"no quick case for {op}")


def test_family_is_registered_and_every_op_is_selected():
    assert OP_FAMILIES["norm"] == "triton_ops.benchmark.cases_norm"
    suite = BenchmarkSuite(["norm"], quick=True, device=DEVICE)
    cases = suite.load_cases()
    assert not suite.unavailable and {c.op for c in cases} == OPS
    systems = {c.op: set(c.systems) for c in cases}
    assert {"triton_ops", "torch_eager", "torch_compile", "torch_compile_max", "copy"} <= systems["norm_add_rmsnorm"]
    assert {"triton_ops", "triton_ops_inplace", "torch_eager", "torch_compile", "copy"} <= systems["norm_apply_rope"]
    assert {"triton_ops", "unfused", "torch_compile", "torch_compile_max", "copy"} <= systems["norm_fp8"]
    assert {"triton_ops", "triton_ops_patched", "hf_bf16_eager", "unfused_fp8_compile"} <= \
        systems["norm_fp8_mlp_block"]
    for c in cases:
        assert c.bytes_moved or c.flops
        assert c.ceiling is None or c.ceiling in c.systems
        assert {"torch_compile", "torch_compile_max", "copy", "unfused_fp8_compile"} & set(c.systems) <= \
            set(c.gpu_only)
    decode = [c for c in cases if c.op == "norm_apply_rope" and "decode" in c.shape]
    assert decode and all(c.cuda_graph for c in decode)
    # the full table: the shapes the targets are stated at
    full = {(c.op, c.shape) for c in CN.cases(quick=False, device="cpu")}
    assert ("norm_add_rmsnorm", "32768x8192") in full and ("norm_fp8", "16384x4096 block") in full
    assert ("norm_apply_rope", "decode b=64 q32 k8 hd128") in full
    assert ("norm_fp8_mlp_block", "M=16384 4096x14336") in full


@pytest.mark.skipif(HAS_CUDA, reason="the interpreter run; the GPU run is `triton-ops bench norm`")
def test_every_cpu_system_runs_and_agrees():
    suite = BenchmarkSuite(["norm"], quick=True, device=DEVICE, cpu_reps=1)
    rows = suite.run().rows
    bad = [(r["op"], r["shape"], r["system"], r.get("error")) for r in rows
           if r["status"] not in (STATUS_OK, STATUS_SKIPPED)]
    assert not bad, bad
    skipped = {r["system"] for r in rows if r["status"] == STATUS_SKIPPED}
    assert skipped <= {"torch_compile", "torch_compile_max", "copy", "unfused_fp8_compile"}
    ran = {(r["op"], r["system"]) for r in rows if r["status"] == STATUS_OK and r["ms"]}
    for op, system in [("norm_add_rmsnorm", "triton_ops"), ("norm_apply_rope", "triton_ops_inplace"),
                       ("norm_fp8", "unfused"), ("norm_fp8_mlp_block", "triton_ops"),
                       ("norm_fp8_mlp_block", "triton_ops_patched"), ("norm_fp8_mlp_block", "unfused_fp8_eager")]:
        assert (op, system) in ran, (op, system)
    fp8 = [r for r in rows if r["op"] in ("norm_fp8", "norm_fp8_mlp_block") and r["status"] == STATUS_OK]
    assert fp8 and all(r.get("sqnr_db") for r in fp8)


def _run_wrong(case, fn, checked):
    case = dataclasses.replace(case, systems={"wrong": fn}, extra={"wrong": checked(fn)}, unchecked=())
    (row,) = BenchmarkSuite(device=DEVICE, cpu_reps=1).run_case(case)
    return row


def test_wrong_systems_fail_their_checks():
    case = _quick("norm_add_rmsnorm")
    # the norm off by 5% (5x the tolerance) and a new residual that is x alone
    row = _run_wrong(case, lambda i: (CN.torch_add_rmsnorm(i["x"], i["r"], i["w"])[0] * 1.05, i["x"] + i["r"]),
                     CN.checked_add_norm)
    assert row["status"] == STATUS_FAILED and "relative error" in row["error"] and row["ms"] is None
    row = _run_wrong(case, lambda i: (CN.torch_add_rmsnorm(i["x"], i["r"], i["w"])[0], i["x"]), CN.checked_add_norm)
    assert row["status"] == STATUS_FAILED and "new residual" in row["error"]

    case = _quick("norm_fp8", "block")

    def doubled_scales(i):
        q, s, r = CN.torch_add_rmsnorm_fp8(i["x"], i["r"], i["w"], CN.QBLOCK)
        return q, 2 * s, r

    row = _run_wrong(case, doubled_scales, CN.checked_norm_fp8)
    assert row["status"] == STATUS_FAILED and "SQNR" in row["error"]

    case = _quick("norm_apply_rope")
    # RoPE with the tables swapped (cos <-> sin): a rotation by the wrong angle
    from triton_ops import apply_rope

    def swapped(i):
        return apply_rope(i["q"], i["k"], i["sin"], i["cos"], position_ids=i["pos"], qk_layout="bshd")

    row = _run_wrong(case, swapped, lambda fn: lambda i: CN._bshd_flat(*fn(i)))
    assert row["status"] == STATUS_FAILED and "relative error" in row["error"]

    case = _quick("norm_fp8_mlp_block")
    # the norm's weight negated: silu(-g) * -u instead of silu(g) * u (SQNR far below 20 dB)
    row = _run_wrong(case, lambda i: i["hf"](CN.torch_rmsnorm(i["x"], -i["w_norm"])), lambda fn: fn)
    assert row["status"] == STATUS_FAILED and "SQNR" in row["error"]
