"""Fused gated MLP kernel: interpreter tests against the NumPy reference, configs, errors, custom ops,
the module, FP8, and GPU tests at real shapes (``-m gpu``)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from triton_ops.compute import gated_mlp as ref
from triton_ops.exceptions import (
    DeviceError,
    DTypeError,
    InvalidArgumentError,
    LayoutError,
    ShapeError,
    TritonOpsError,
)
from triton_ops.kernels import gated_mlp as G
from triton_ops.kernels.gated_mlp import FusedGatedMLP, fused_gated_mlp, fused_gated_mlp_fp8
from triton_ops.utils import device_arch, num_sms

from .conftest import DEVICE, HAS_CUDA

ACTS = ("silu", "gelu", "gelu_tanh")

# Tolerances: |out - ref| <= atol + rtol * |ref| against the float64 reference of the same (rounded)
# inputs, with weights scaled by 1/sqrt(hidden) so both projections are ~N(0, 1) and outputs are O(1).
# fp32: exact fp32 dots, errors ~K * 2^-24 ~ 1e-6 at these sizes. fp16: the output rounding (2^-11 =
# 4.9e-4 relative) dominates the fp32 accumulation. bf16: output rounding 2^-8 = 3.9e-3 relative.
TOL = {
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def _inputs(M, H, Inter, dtype, device=DEVICE, bias=False, lead=()):
    x = torch.randn(*lead, M, H, device=device).to(dtype)
    wg = (torch.randn(Inter, H, device=device) / math.sqrt(max(H, 1))).to(dtype)
    wu = (torch.randn(Inter, H, device=device) / math.sqrt(max(H, 1))).to(dtype)
    bg = torch.randn(Inter, device=device).to(dtype) if bias else None
    bu = torch.randn(Inter, device=device).to(dtype) if bias else None
    return x, wg, wu, bg, bu


def _ref(x, wg, wu, act="silu", bg=None, bu=None):
    f = lambda t: None if t is None else t.detach().double().cpu().numpy()
    return ref.gated_mlp(f(x), f(wg), f(wu), act, f(bg), f(bu))


def _check(out, expect, dtype):
    np.testing.assert_allclose(out.detach().double().cpu().numpy(), expect, **TOL[dtype])


# ----------------------------------------------------------------------------------------------------
# Correctness in the interpreter (bf16 too: under the interpreter the kernel multiplies bf16 as fp32 and
# rounds bf16 stores to nearest even, since the interpreter's own bf16 dot and casts are wrong)
# ----------------------------------------------------------------------------------------------------

# (M, H, Inter): decode / mid / large heuristics, odd sizes that force the masked pointer path, size 1.
SHAPES = [(1, 16, 16), (5, 64, 48), (3, 7, 199), (70, 96, 130), (300, 64, 72), (1, 1, 1)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, act, dtype):
    M, H, Inter = shape
    x, wg, wu, _, _ = _inputs(M, H, Inter, dtype)
    out = fused_gated_mlp(x, wg, wu, act)
    assert out.shape == (M, Inter) and out.dtype == dtype
    _check(out, _ref(x, wg, wu, act), dtype)


def _all_configs():
    seen = {}
    for arch in (80, 89, 90):
        for dtype in (torch.float16, torch.float32):
            for cfg in G.candidate_configs(arch, dtype) + [G._unaligned_config("fp16")]:
                seen.setdefault(cfg, cfg)
    return list(seen)


@pytest.mark.parametrize("cfg", _all_configs(), ids=lambda c: c.label())
@pytest.mark.parametrize("aligned", [True, False])
def test_every_config(cfg, aligned):
    """Every config the heuristics can pick, on aligned sizes (TMA where the config asks for it) and on
    an odd intermediate size (pointer path); persistent configs loop over several tiles per program."""
    M, H, Inter = (37, 96, 80) if aligned else (37, 96, 77)
    x, wg, wu, bg, bu = _inputs(M, H, Inter, torch.float16, bias=True)
    out = torch.full((M, Inter), float("nan"), dtype=torch.float16, device=DEVICE)
    G._run(x, wg, wu, out, "gelu_tanh", bg, bu, config=cfg)
    _check(out, _ref(x, wg, wu, "gelu_tanh", bg, bu), torch.float16)


def test_persistent_grid_covers_many_tiles():
    # 4 nominal SMs in the interpreter: 3 x 3 = 9 tiles of 128 x 128 on 4 programs.
    cfg = G.GatedMLPConfig(128, 128, 64, persistent=True, use_tma=True, flatten=True)
    x, wg, wu, _, _ = _inputs(300, 64, 300, torch.float16)
    out = torch.full((300, 300), float("nan"), dtype=torch.float16, device=DEVICE)
    G._run(x, wg, wu, out, "silu", None, None, config=cfg)
    _check(out, _ref(x, wg, wu), torch.float16)


@pytest.mark.parametrize("act", ACTS)
def test_bias(act):
    x, wg, wu, bg, bu = _inputs(9, 32, 40, torch.float16, bias=True)
    out = fused_gated_mlp(x, wg, wu, act, gate_bias=bg, up_bias=bu)
    _check(out, _ref(x, wg, wu, act, bg, bu), torch.float16)


def test_leading_dims_and_strided_rows():
    # rows of x strided (a column slice of a wider buffer), and a 3-D input
    big = torch.randn(2, 7, 80, device=DEVICE).half()
    x = big[..., :64]
    _, wg, wu, _, _ = _inputs(1, 64, 24, torch.float16)
    out = fused_gated_mlp(x, wg, wu)
    assert out.shape == (2, 7, 24)
    _check(out, _ref(x, wg, wu), torch.float16)
    # a transposed view whose leading dims do not collapse (copied by rows_view)
    xt = torch.randn(7, 2, 64, device=DEVICE).half().transpose(0, 1)
    _check(fused_gated_mlp(xt, wg, wu), _ref(xt, wg, wu), torch.float16)


def test_strided_weight_rows():
    wcat = (torch.randn(24, 72, device=DEVICE) / 8).half()
    wg, wu = wcat[:12, :64], wcat[12:, :64]  # row stride 72, not 64
    x = torch.randn(5, 64, device=DEVICE).half()
    _check(fused_gated_mlp(x, wg, wu), _ref(x, wg, wu), torch.float16)


def test_out_buffer_is_written():
    x, wg, wu, _, _ = _inputs(6, 32, 40, torch.float16)
    out = torch.full((6, 40), float("nan"), dtype=torch.float16, device=DEVICE)
    res = fused_gated_mlp(x, wg, wu, "gelu", out=out)
    assert res is out
    _check(out, _ref(x, wg, wu, "gelu"), torch.float16)
    # a strided out (every other column of a wider buffer is not allowed: last dim must be contiguous),
    # rows strided is fine
    wide = torch.full((6, 48), float("nan"), dtype=torch.float16, device=DEVICE)
    fused_gated_mlp(x, wg, wu, "gelu", out=wide[:, :40])
    _check(wide[:, :40], _ref(x, wg, wu, "gelu"), torch.float16)
    assert torch.isnan(wide[:, 40:]).all()


def test_out_buffer_errors():
    x, wg, wu, _, _ = _inputs(6, 32, 40, torch.float16)
    with pytest.raises(ShapeError, match="expected"):
        fused_gated_mlp(x, wg, wu, out=torch.empty(6, 41, dtype=torch.float16, device=DEVICE))
    with pytest.raises(DTypeError):
        fused_gated_mlp(x, wg, wu, out=torch.empty(6, 40, device=DEVICE))


def test_empty_and_degenerate_sizes():
    _, wg, wu, bg, bu = _inputs(1, 32, 40, torch.float16, bias=True)
    out = fused_gated_mlp(torch.randn(0, 32, device=DEVICE).half(), wg, wu)
    assert out.shape == (0, 40)
    out = fused_gated_mlp(torch.randn(3, 0, 32, device=DEVICE).half(), wg, wu)
    assert out.shape == (3, 0, 40)
    x = torch.randn(4, 32, device=DEVICE).half()
    assert fused_gated_mlp(x, wg[:0], wu[:0]).shape == (4, 0)
    # hidden == 0: the projections are the biases (or zero)
    x0 = torch.randn(4, 0, device=DEVICE).half()
    w0 = torch.empty(40, 0, device=DEVICE).half()
    z = fused_gated_mlp(x0, w0, w0)
    assert torch.equal(z, torch.zeros(4, 40, dtype=torch.float16, device=DEVICE))
    zb = fused_gated_mlp(x0, w0, w0, gate_bias=bg, up_bias=bu)
    expect = ref.gated_mlp(np.zeros((4, 0)), np.zeros((40, 0)), np.zeros((40, 0)), "silu",
                           bg.double().cpu().numpy(), bu.double().cpu().numpy())
    _check(zb, expect, torch.float16)


def test_nan_propagates():
    x, wg, wu, _, _ = _inputs(4, 32, 16, torch.float32)
    x[2, 5] = float("nan")
    out = fused_gated_mlp(x, wg, wu)
    assert torch.isnan(out[2]).all()
    assert torch.isfinite(out[[0, 1, 3]]).all()


@given(M=st.integers(1, 40), H=st.integers(1, 70), Inter=st.integers(1, 70), act=st.sampled_from(ACTS),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
def test_property_random_shapes(M, H, Inter, act, dtype):
    x, wg, wu, _, _ = _inputs(M, H, Inter, dtype)
    _check(fused_gated_mlp(x, wg, wu, act), _ref(x, wg, wu, act), dtype)


# ----------------------------------------------------------------------------------------------------
# Config heuristic (pure function)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [80, 86, 89, 90, None])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float8_e4m3fn])
@pytest.mark.parametrize("M", [1, 16, 33, 64, 65, 128, 256, 257, 16384])
def test_pick_config_is_a_candidate(arch, dtype, M):
    cfg = G.pick_config(M, 14336, 4096, dtype, arch, 132)
    assert cfg in G.candidate_configs(arch, dtype)
    assert cfg == G.pick_config(M, 14336, 4096, dtype, arch, 132)  # deterministic
    if dtype != torch.float32:
        assert cfg.block_m >= min(max(16, M), 64) or M > 256


def test_pick_config_regimes():
    sms = 132
    # decode: 14336 / 64 = 224 tiles >= 132 SMs, one tile per program
    d = G.pick_config(16, 14336, 4096, torch.bfloat16, 90, sms)
    assert (d.block_m, d.block_n, d.persistent, d.use_tma) == (16, 64, False, True)
    # few columns: narrower tiles to occupy the SMs
    assert G.pick_config(16, 4096, 4096, torch.bfloat16, 90, sms).block_n == 32
    assert G.pick_config(40, 14336, 4096, torch.float16, 90, sms).block_m == 64
    # M = 128: weight-bound; 128 x (2 x 128) tiles when they are >= 0.8 x #SMs (14336 / 128 = 112 >= 105.6)
    m = G.pick_config(128, 14336, 4096, torch.bfloat16, 90, sms)
    assert (m.block_m, m.block_n, m.num_warps, m.num_stages, m.persistent) == (128, 128, 8, 4, False)
    # ... else (11008 / 128 = 86 tiles), above M = 128, and for FP8: 128 x (2 x 64) tiles
    for M, Inter, dt in ((128, 11008, torch.bfloat16), (200, 14336, torch.float16),
                         (128, 14336, torch.float8_e4m3fn)):
        m = G.pick_config(M, Inter, 4096, dt, 90, sms)
        assert (m.block_m, m.block_n, m.persistent) == (128, 64, False), (M, Inter, dt)
    assert G.pick_config(128, 14336, 4096, torch.bfloat16, 80, 108).block_n == 64
    # prefill: persistent 128 x (2 x 128), TMA on Hopper, GROUP_M 16 (fp16/bf16 and FP8)
    big = G.pick_config(16384, 14336, 4096, torch.bfloat16, 90, sms)
    assert (big.block_m, big.block_n, big.num_warps, big.persistent, big.use_tma) == (128, 128, 8, True, True)
    assert big.group_m == 16
    assert G.pick_config(16384, 14336, 4096, torch.float8_e4m3fn, 90, sms).group_m == 16
    assert not G.pick_config(16384, 14336, 4096, torch.bfloat16, 80, 108).use_tma
    assert G.pick_config(16384, 14336, 4096, torch.float8_e4m3fn, 90, sms).block_k == 128
    assert G.pick_config(5, 7, 9, torch.float16, 90, sms, aligned=False) == G._unaligned_config("fp16")
    assert G.pick_config(5, 7, 9, torch.float32, 90, sms) == G._FP32_CONFIG


def test_configs_fit_shared_memory():
    # stages x (BLOCK_M + 2 BLOCK_N) x BLOCK_K x bytes must fit 227 KB (sm_90) / 163 KB (sm_80) /
    # 99 KB (sm_89) per block (ptxas reports the real figure in the compile check).
    limits = {90: 227 * 1024, 80: 163 * 1024, 89: 99 * 1024}
    for arch, limit in limits.items():
        for dtype, es in ((torch.float16, 2), (torch.float8_e4m3fn, 1), (torch.float32, 4)):
            for c in G.candidate_configs(arch, dtype):
                smem = c.num_stages * (c.block_m + 2 * c.block_n) * c.block_k * es
                assert smem <= limit, (arch, c)


def test_config_labels_round_trip():
    for arch in (80, 89, 90, None):
        for dtype in (torch.float16, torch.float32, torch.float8_e4m3fn):
            for c in G.candidate_configs(arch, dtype) + G.sweep_configs(arch, dtype):
                assert G.GatedMLPConfig.from_label(c.label()) == c
    for bad in ("128x128x64", "96x64x64_g8_w4_s3_G_tma", "128x64x64_g8_w64_s3_G_tma", 42):
        with pytest.raises(InvalidArgumentError):
            G.GatedMLPConfig.from_label(bad)


def test_tuning_entry_and_tuned_config(tmp_path, monkeypatch):
    from triton_ops.autotuner import runtime
    from triton_ops.autotuner.cache import ConfigCache
    from triton_ops.autotuner.configs import generate_configs

    entry = G.tuning_entry()
    assert entry.kernel_type == "gated_mlp" and (16384, 4096, 11264) in entry.default_shapes
    labels = entry.config_space["config"]
    shape = entry.cpu_shapes[0]
    default = entry.default_config(shape)
    assert default["config"] in labels
    valid = entry.valid_configs(shape, generate_configs(entry.config_space))
    assert valid and all(G.GatedMLPConfig.from_label(c["config"]).block_m <= 128 for c in valid)
    assert not any(c["config"].startswith("16x") for c in entry.valid_configs((4096, 64, 64), valid))
    args, kwargs = entry.make_args(shape, DEVICE, torch.float16)
    x, wg, wu = args
    _check(entry.run(*args, **kwargs, **default), _ref(x, wg, wu), torch.float16)

    # a stored config is used only when tuned configs are switched on, and a bad entry is ignored
    monkeypatch.setenv("TRITON_OPS_CACHE_DIR", str(tmp_path))
    getattr(runtime, "forget_lookups", lambda: None)()  # look-ups remembered from other tests' caches
    M, H, Inter = shape
    tuned = G.GatedMLPConfig(32, 32, 32, num_stages=2)
    ConfigCache(tmp_path).set("gated_mlp", (M, H, Inter), runtime.device_key(DEVICE), {"config": tuned.label()})
    heur = G.pick_config(M, Inter, H, torch.float16, device_arch(x.device), num_sms(x.device))
    with runtime.use_tuned_configs(False):
        assert G._tuned_config(heur, M, Inter, H, x.device) == heur
    with runtime.use_tuned_configs(True):
        assert G._tuned_config(heur, M, Inter, H, x.device) == tuned
        _check(fused_gated_mlp(x, wg, wu), _ref(x, wg, wu), torch.float16)  # runs the tuned config
    ConfigCache(tmp_path).set("gated_mlp", (M + 1, H, Inter), runtime.device_key(DEVICE), {"config": "junk"})
    with runtime.use_tuned_configs(True):
        assert G._tuned_config(heur, M + 1, Inter, H, x.device) == heur


def test_direct_and_dispatched_paths_agree():
    x, wg, wu, bg, bu = _inputs(9, 32, 40, torch.float16, bias=True)
    direct = fused_gated_mlp(x, wg, wu, "gelu", gate_bias=bg, up_bias=bu)
    dispatched = torch.ops.triton_ops.fused_gated_mlp(x, wg, wu, "gelu", bg, bu)
    assert torch.equal(direct, dispatched)
    # with an autograd graph wanted the call goes through the custom op (its backward is registered there)
    out = fused_gated_mlp(x.float().requires_grad_(), wg.float(), wu.float())
    assert out.grad_fn is not None


# ----------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------


def test_errors():
    x, wg, wu, _, _ = _inputs(4, 32, 16, torch.float16)
    with pytest.raises(ShapeError, match="hidden size 31"):
        fused_gated_mlp(x[:, :31], wg, wu)
    with pytest.raises(ShapeError, match="up_weight"):
        fused_gated_mlp(x, wg, wu[:15])
    with pytest.raises(ShapeError, match="2 dims"):
        fused_gated_mlp(x, wg[0], wu[0])
    with pytest.raises(InvalidArgumentError, match="relu"):
        fused_gated_mlp(x, wg, wu, "relu")
    with pytest.raises(InvalidArgumentError):
        fused_gated_mlp(x, wg, wu, None)
    with pytest.raises(DTypeError, match="float32"):
        fused_gated_mlp(x, wg.float(), wu)
    with pytest.raises(DTypeError, match="int"):
        fused_gated_mlp(x.to(torch.int32), wg.to(torch.int32), wu.to(torch.int32))
    with pytest.raises(InvalidArgumentError, match="Tensor"):
        fused_gated_mlp(x.cpu().numpy(), wg, wu)
    with pytest.raises(LayoutError, match="K-major"):  # neither K-major nor MN-major
        fused_gated_mlp(x, torch.randn(32, 64, device=DEVICE).half()[::2, ::2], wu)
    with pytest.raises(LayoutError):
        fused_gated_mlp(torch.randn(32, 4, device=DEVICE).half().t(), wg, wu)
    with pytest.raises(DeviceError, match="meta"):
        fused_gated_mlp(x, wg.to("meta"), wu)
    with pytest.raises(ShapeError, match="gate_bias"):
        fused_gated_mlp(x, wg, wu, gate_bias=torch.zeros(3, device=DEVICE).half(),
                        up_bias=torch.zeros(16, device=DEVICE).half())
    with pytest.raises(InvalidArgumentError, match="both"):
        fused_gated_mlp(x, wg, wu, gate_bias=torch.zeros(16, device=DEVICE).half())
    # every error is also the builtin a user would catch
    with pytest.raises(ValueError):
        fused_gated_mlp(x, wg, wu, "relu")
    with pytest.raises(TypeError):
        fused_gated_mlp(x, wg.float(), wu)


def test_cpu_without_interpreter_raises(monkeypatch):
    if HAS_CUDA:
        pytest.skip("CPU tensors are rejected only when the interpreter is off")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, wg, wu, _, _ = _inputs(4, 32, 16, torch.float16)
    with pytest.raises(DeviceError, match="TRITON_INTERPRET"):
        fused_gated_mlp(x, wg, wu)


# ----------------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------------


def test_opcheck():
    x, wg, wu, bg, bu = _inputs(5, 32, 24, torch.float16, bias=True)
    torch.library.opcheck(torch.ops.triton_ops.fused_gated_mlp.default, (x, wg, wu, "silu", None, None))
    torch.library.opcheck(torch.ops.triton_ops.fused_gated_mlp.default, (x, wg, wu, "gelu", bg, bu))
    out = torch.empty(5, 24, dtype=torch.float16, device=DEVICE)
    torch.library.opcheck(torch.ops.triton_ops.fused_gated_mlp_out.default, (x, wg, wu, "silu", None, None, out))
    xq, xs = G.quantize_rows_fp8(x.float())
    gq, gs = G.quantize_rows_fp8(wg.float())
    uq, us = G.quantize_rows_fp8(wu.float())
    # test_schema clones and compares inputs with arithmetic the CPU lacks for float8 ("mul_cpu_reduced_
    # float not implemented for Float8_e4m3fn"), so the FP8 op skips that one utility.
    torch.library.opcheck(torch.ops.triton_ops.fused_gated_mlp_fp8.default,
                          (xq, xs.reshape(-1), gq, gs.reshape(-1), uq, us.reshape(-1), "silu", torch.bfloat16),
                          test_utils=("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("act", ACTS)
def test_backward_matches_torch(act):
    x, wg, wu, bg, bu = _inputs(7, 24, 20, torch.float32, bias=True, lead=(2,))
    leaves = [t.clone().requires_grad_() for t in (x, wg, wu, bg, bu)]
    out = fused_gated_mlp(leaves[0], leaves[1], leaves[2], act, gate_bias=leaves[3], up_bias=leaves[4])
    grad = torch.randn_like(out)
    out.backward(grad)
    refs = [t.clone().double().requires_grad_() for t in (x, wg, wu, bg, bu)]
    G.gated_mlp_reference_torch(*refs[:3], act, refs[3], refs[4]).backward(grad.double())
    for got, want in zip(leaves, refs):
        # fp32 backward (reductions over 7-24 terms) against float64: ~1e-6 relative; 1e-4 leaves headroom
        # for the activation derivatives' fp32 exp/erf
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-4)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    mod = FusedGatedMLP(32, 24, "gelu", dtype=torch.float16, device=DEVICE)
    x = torch.randn(2, 5, 32, device=DEVICE).half()

    @torch.compile(fullgraph=True)
    def f(x):
        return mod(x) * 2 + fused_gated_mlp(x, mod.weight[:24], mod.weight[24:], "silu")

    got = f(x)
    g, u = mod.gate_up_weights()
    expect = 2 * _ref(x, g, u, "gelu") + _ref(x, g, u, "silu")
    np.testing.assert_allclose(got.detach().double().cpu().numpy(), expect, rtol=4e-3, atol=4e-3)


# ----------------------------------------------------------------------------------------------------
# Module
# ----------------------------------------------------------------------------------------------------


def test_module_from_linear_and_state_dict_round_trip():
    gate = torch.nn.Linear(32, 24, bias=False, device=DEVICE).half()
    up = torch.nn.Linear(32, 24, bias=False, device=DEVICE).half()
    mod = FusedGatedMLP.from_linear(gate, up, "silu")
    assert mod.weight.shape == (48, 32) and mod.weight.is_contiguous()
    x = torch.randn(3, 32, device=DEVICE).half()
    _check(mod(x), _ref(x, gate.weight, up.weight), torch.float16)
    g, u = mod.gate_up_weights()
    assert torch.equal(g, gate.weight) and torch.equal(u, up.weight)
    sd = {"model.layers.0.mlp.gate_proj.weight": gate.weight.detach(),
          "model.layers.0.mlp.up_proj.weight": up.weight.detach(),
          "model.layers.0.mlp.down_proj.weight": torch.randn(32, 24, device=DEVICE).half()}
    mod2 = FusedGatedMLP.from_hf_state_dict(sd, prefix="model.layers.0.mlp.")
    assert torch.equal(mod2.weight, mod.weight)
    back = mod2.to_hf_state_dict(prefix="mlp.")
    assert torch.equal(back["mlp.gate_proj.weight"], gate.weight)
    assert torch.equal(back["mlp.up_proj.weight"], up.weight)
    with pytest.raises(InvalidArgumentError, match="gate_proj"):
        FusedGatedMLP.from_hf_state_dict({"up_proj.weight": up.weight})


def test_module_with_bias_and_repr():
    gate = torch.nn.Linear(16, 8, device=DEVICE).half()
    up = torch.nn.Linear(16, 8, device=DEVICE).half()
    mod = FusedGatedMLP.from_linear(gate, up, "gelu_tanh")
    x = torch.randn(2, 3, 16, device=DEVICE).half()
    _check(mod(x), _ref(x, gate.weight, up.weight, "gelu_tanh", gate.bias, up.bias), torch.float16)
    assert "bias=True" in repr(mod)
    sd = mod.to_hf_state_dict()
    assert torch.equal(sd["gate_proj.bias"], gate.bias) and torch.equal(sd["up_proj.bias"], up.bias)


def test_module_init_and_errors():
    mod = FusedGatedMLP(64, 40, device=DEVICE)
    g, u = mod.gate_up_weights()
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)) on fan_in 64 gives U(-1/8, 1/8)
    assert g.abs().max() <= bound and u.abs().max() <= bound and not torch.equal(g, u)
    with pytest.raises(InvalidArgumentError):
        FusedGatedMLP(0, 4)
    with pytest.raises(InvalidArgumentError):
        FusedGatedMLP(4, 4, activation="tanh")
    with pytest.raises(ShapeError):
        FusedGatedMLP.from_weights(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(TritonOpsError):
        mod(torch.randn(3, 65, device=DEVICE))


# ----------------------------------------------------------------------------------------------------
# FP8
# ----------------------------------------------------------------------------------------------------


def _dequant_ref(xq, xs, gq, gs, uq, us, act):
    d = lambda q, s: q.double() * s.double().reshape(-1, 1)
    return ref.gated_mlp(d(xq, xs).cpu().numpy(), d(gq, gs).cpu().numpy(), d(uq, us).cpu().numpy(), act)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [(5, 64, 48), (70, 96, 130), (300, 64, 72), (3, 40, 17)],
                         ids=lambda s: "x".join(map(str, s)))
def test_fp8_matches_dequantized_reference(shape, act):
    M, H, Inter = shape
    x, wg, wu, _, _ = _inputs(M, H, Inter, torch.float32)
    xq, xs = G.quantize_rows_fp8(x)
    gq, gs = G.quantize_rows_fp8(wg)
    uq, us = G.quantize_rows_fp8(wu)
    out = fused_gated_mlp_fp8(xq, xs, gq, gs, uq, us, act, out_dtype=torch.float16)
    assert out.dtype == torch.float16 and out.shape == (M, Inter)
    # Same fp8 operands in float64: only fp32 accumulation and the fp16 output rounding differ.
    _check(out, _dequant_ref(xq, xs, gq, gs, uq, us, act), torch.float16)


def test_fp8_module_accuracy_and_conversion():
    torch.manual_seed(0)
    H, Inter = 256, 96
    dense = FusedGatedMLP(H, Inter, "silu", dtype=torch.float16, device=DEVICE)
    g, u = dense.gate_up_weights()
    fp8 = FusedGatedMLP.from_weights(g, u, "silu", fp8=True)
    assert fp8.weight_fp8.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (2 * Inter,)
    assert not hasattr(fp8, "weight") or "weight" not in dict(fp8.named_parameters())
    x = torch.randn(64, H, device=DEVICE).half()
    out = fp8(x)
    assert out.dtype == torch.float16
    expect = torch.from_numpy(_ref(x, g, u)).to(out.device)
    cos = torch.nn.functional.cosine_similarity(out.double().flatten(), expect.flatten(), dim=0).item()
    # e4m3 keeps 3 mantissa bits (~2.4% RMS relative rounding per operand). On Gaussian data, emulated in
    # float64 (M=512, H=1024, I=512): x alone quantized gives cos 0.99928, weights alone 0.99928, both
    # 0.99857: the gated product sums the errors of both projections. That is the quantization itself,
    # not the kernel; this module measures 0.9986 here.
    assert cos >= 0.998, cos
    g8, u8 = fp8.gate_up_weights()
    assert torch.allclose(g8, g.float(), rtol=0.07, atol=1e-3)  # e4m3 spacing: 2^-3 relative
    # to_fp8 in place is idempotent
    assert dense.to_fp8() is dense and dense.to_fp8().is_fp8


def test_fp8_module_plan_same_bits_as_the_checked_path():
    # the FP8 module's planned float forward (quantize per token, then the gated plan on cached weight
    # views) against its unplanned path (grad mode on an x that requires grad: full checks, public ops)
    torch.manual_seed(1)
    H, Inter = 128, 80
    dense = FusedGatedMLP(H, Inter, "gelu", dtype=torch.bfloat16, device=DEVICE)
    fp8 = FusedGatedMLP.from_weights(*dense.gate_up_weights(), "gelu", fp8=True)
    for shape in ((5, H), (2, 3, H)):
        x = torch.randn(shape, device=DEVICE, dtype=torch.bfloat16)
        plans = len(G._module_fp8_plans._plans)
        with torch.no_grad():
            first, second = fp8(x), fp8(x)
        assert len(G._module_fp8_plans._plans) == plans + 1  # planned once, reused
        checked = fp8(x.clone().requires_grad_(True)).detach()
        assert first.shape == x.shape[:-1] + (Inter,) and torch.equal(first, second) and torch.equal(first, checked)
    # the cached weight views follow a buffer replacement (e.g. load_state_dict(assign=True))
    fp8.weight_fp8 = fp8.weight_fp8.clone()
    fp8.weight_fp8.view(torch.uint8)[:Inter].zero_()  # gate codes 0: silu/gelu(0) * up = 0
    with torch.no_grad():
        assert torch.equal(fp8(x), torch.zeros_like(first))


def test_fp8_errors():
    x = torch.randn(4, 32, device=DEVICE)
    xq, xs = G.quantize_rows_fp8(x)
    w = torch.randn(8, 32, device=DEVICE)
    wq, ws = G.quantize_rows_fp8(w)
    with pytest.raises(DTypeError):
        fused_gated_mlp_fp8(x.half(), xs, wq, ws, wq, ws)
    with pytest.raises(ShapeError, match="x_scale"):
        fused_gated_mlp_fp8(xq, xs[:3], wq, ws, wq, ws)
    with pytest.raises(ShapeError, match="gate_scale"):
        fused_gated_mlp_fp8(xq, xs, wq, ws[:4], wq, ws)
    with pytest.raises(DTypeError):
        fused_gated_mlp_fp8(xq, xs.half(), wq, ws, wq, ws)


# ----------------------------------------------------------------------------------------------------
# Compile check (sm_90 wgmma, no spills), as a subprocess: it must run with the interpreter off
# ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compile_check_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "triton_ops.compile_check", "--module",
                           "triton_ops.kernels.gated_mlp", "--arch", "90"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " 0 failed" in proc.stdout


# ----------------------------------------------------------------------------------------------------
# GPU (real shapes; bf16 dots; speed-relevant paths)
# ----------------------------------------------------------------------------------------------------

GPU_SHAPES = [(4096, 11008), (5120, 13824), (4096, 14336), (3584, 18944), (4096, 11264)]


def _torch_ref_fp32(x, wg, wu, act="silu"):
    return G.gated_mlp_reference_torch(x.float(), wg.float(), wu.float(), act)


def _rel_err(out, expect):
    return (torch.linalg.vector_norm(out.float() - expect) / torch.linalg.vector_norm(expect)).item()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("HI", GPU_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("M", [1, 16, 100, 128, 1000, 4096])
def test_gpu_real_shapes(M, HI, dtype):
    H, Inter = HI
    x, wg, wu, _, _ = _inputs(M, H, Inter, dtype, device="cuda")
    out = fused_gated_mlp(x, wg, wu, "silu")
    expect = _torch_ref_fp32(x, wg, wu)
    # relative L2 error: fp32 accumulation + one output rounding (bf16 2^-8, fp16 2^-11)
    assert _rel_err(out, expect) < (8e-3 if dtype == torch.bfloat16 else 1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_activations_bias_odd(act, dtype):
    for M, H, Inter in [(1, 3584, 18944), (77, 5120 + 8, 13824 + 3), (333, 4099, 1001), (3, 7, 5)]:
        x, wg, wu, bg, bu = _inputs(M, H, Inter, dtype, device="cuda", bias=True)
        out = fused_gated_mlp(x, wg, wu, act, gate_bias=bg, up_bias=bu)
        expect = G.gated_mlp_reference_torch(x.double(), wg.double(), wu.double(), act, bg.double(), bu.double())
        tol = {torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float32: 1e-5}[dtype]
        assert _rel_err(out, expect) < tol, (M, H, Inter)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_every_config(dtype):
    cap = torch.cuda.get_device_capability()
    arch = cap[0] * 10 + cap[1]
    x, wg, wu, _, _ = _inputs(1000, 4096, 1536, dtype, device="cuda")
    expect = _torch_ref_fp32(x, wg, wu)
    for cfg in G.candidate_configs(arch, dtype) + G.sweep_configs(arch, dtype) + [G._unaligned_config("fp16")]:
        out = torch.full((1000, 1536), float("nan"), dtype=dtype, device="cuda")
        G._run(x, wg, wu, out, "silu", None, None, config=cfg)
        assert _rel_err(out, expect) < 8e-3, cfg.label()


@pytest.mark.gpu
def test_gpu_strided_and_module_compile():
    x_big = torch.randn(256, 4096 + 64, device="cuda", dtype=torch.bfloat16)
    x = x_big[:, :4096]
    mod = FusedGatedMLP(4096, 11008, device="cuda", dtype=torch.bfloat16)
    g, u = mod.gate_up_weights()
    expect = _torch_ref_fp32(x, g, u)
    assert _rel_err(mod(x), expect) < 8e-3
    cmod = torch.compile(mod, fullgraph=True)
    assert _rel_err(cmod(x), expect) < 8e-3


@pytest.mark.gpu
def test_gpu_fp8_accuracy():
    if not G.device_capability() or G.device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need sm_89+")
    torch.manual_seed(0)
    for M, H, Inter in [(16384, 4096, 14336), (16, 4096, 14336), (77, 4096 + 16, 1000)]:
        mod = FusedGatedMLP(H, Inter, device="cuda", dtype=torch.bfloat16)
        g, u = mod.gate_up_weights()
        x = torch.randn(M, H, device="cuda", dtype=torch.bfloat16)
        expect = _torch_ref_fp32(x, g, u)
        out = mod.to_fp8()(x)
        cos = torch.nn.functional.cosine_similarity(out.float().flatten(), expect.flatten(), dim=0).item()
        assert out.dtype == torch.bfloat16
        # see test_fp8_module_accuracy_and_conversion: Gaussian data quantized to e4m3 on both operands
        # reaches ~0.9986 in exact arithmetic
        assert cos >= 0.998, (M, H, Inter, cos)


@pytest.mark.gpu
def test_gpu_fp8_every_config():
    if not G.device_capability() or G.device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need sm_89+")
    cap = torch.cuda.get_device_capability()
    arch = cap[0] * 10 + cap[1]
    x, wg, wu, _, _ = _inputs(1000, 4096, 1536, torch.bfloat16, device="cuda")
    xq, xs = G.quantize_rows_fp8(x)
    gq, gs = G.quantize_rows_fp8(wg)
    uq, us = G.quantize_rows_fp8(wu)
    deq = lambda q, sc: q.float() * sc.reshape(-1, 1)
    expect = _torch_ref_fp32(deq(xq, xs), deq(gq, gs), deq(uq, us))
    for cfg in G.candidate_configs(arch, torch.float8_e4m3fn) + G.sweep_configs(arch, torch.float8_e4m3fn):
        out = torch.full((1000, 1536), float("nan"), dtype=torch.bfloat16, device="cuda")
        G._run(xq, gq, uq, out, "silu", None, None, xs.reshape(-1), gs.reshape(-1), us.reshape(-1), config=cfg)
        # same fp8 operands: fp32 accumulation order and the bf16 output rounding only
        assert _rel_err(out, expect) < 8e-3, cfg.label()
