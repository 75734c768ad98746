"""fp8_gemm / fp8_weight_only_gemm / FP8Linear with every operand layout, the operand cache, scale checks
and launch plans (Triton's interpreter on CPU; a GPU when there is one).

Layouts: the canonical layouts are ``a`` row-major ``[M, K]`` and ``b = w.t()`` (K-major); every other
layout (a contiguous ``[K, N]`` ``b``, a column-major ``a``, strided slices) must give the *same bits*:
the native FP8 path copies such an operand K-major first and runs the same kernel on the same values,
and the 16-bit dot paths (weight-only, decoded operands) reduce the same tiles in the same order. The
canonical result itself is checked against the float64 reference (``compute/fp8.scaled_gemm``).

Every output buffer the library allocates during these tests starts as NaN (``poisoned`` fixture), so an
element a kernel fails to write cannot pass.
"""

from __future__ import annotations

import contextlib
import gc

import pytest
import torch
from torch import nn

from triton_ops.compute import fp8 as ref
from triton_ops.exceptions import NumericalError
from triton_ops.kernels import fp8_cache
from triton_ops.kernels import fp8_gemm as fg
from triton_ops.kernels.fp8_gemm import fp8_gemm, fp8_weight_only_gemm
from triton_ops.kernels.fp8_linear import FP8Linear
from triton_ops.kernels.fp8_quantize import quantize_fp8
from triton_ops.launch import plan_counts

from .conftest import DEVICE

E4M3 = torch.float8_e4m3fn

#: Relative error of identical FP8 operands against the float64 reference: fp32 accumulation of exact
#: fp8 x fp8 products differs by summation order only (~1e-7; the interpreter and the 16-bit dot paths),
#: the FP8 tensor cores add with ~14 mantissa bits (~1.2e-4 to 2.3e-4 measured on an H200, see
#: tests/test_fp8_gemm.py PREQUANT_RTOL); a wrong scale or a wrong element is off by percent.
RTOL_EXACT = 1e-5 if DEVICE == "cpu" else 1e-3


def _np(t):
    return t.detach().double().cpu().numpy()


@pytest.fixture
def poisoned(monkeypatch):
    """torch.empty hands out NaN-filled floating / FP8 tensors for the duration of the test."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", empty)
    yield


@pytest.fixture
def fresh_cache():
    fp8_cache.clear()
    yield fp8_cache.operand_cache
    fp8_cache.clear()


def _layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The same [R, C] values in another memory layout."""
    if kind == "row":
        return x.contiguous()
    if kind == "col":  # column-major: the transpose of a contiguous [C, R]
        return x.t().contiguous().t()
    if kind == "strided":  # every other column of a wider buffer: neither dimension contiguous
        big = torch.zeros(x.shape[0], 2 * x.shape[1], dtype=x.dtype, device=x.device)
        big[:, ::2] = x
        return big[:, ::2]
    raise ValueError(kind)


def _fp8_operands(M, N, K):
    a = torch.randn(M, K, device=DEVICE)
    w = torch.randn(N, K, device=DEVICE) * 0.5
    qa, sa = quantize_fp8(a, granularity="row")
    qw, sw = quantize_fp8(w, granularity="row")
    return qa, sa, qw.t(), sw.t(), torch.randn(N, device=DEVICE)  # b = w.t(): K-major [K, N]


@pytest.mark.parametrize("path", ["native", "decode"])
@pytest.mark.parametrize("M", [20, 80])  # a small-M config / the 128-row tiles
def test_prequantized_every_layout_same_bits(path, M, poisoned, fresh_cache):
    N, K = 72, 160  # N, K not multiples of the tiles: masked edges along every dimension
    qa, sa, qb, sb, bias = _fp8_operands(M, N, K)
    base = fp8_gemm(qa, qb, a_scale=sa, b_scale=sb, bias=bias, out_dtype=torch.float32, _path=path)
    want = ref.scaled_gemm(_np(qa), _np(qb), _np(sa), _np(sb), a_granularity="row", b_granularity="column",
                           bias=_np(bias))
    assert ref.relative_error(_np(base), want) < RTOL_EXACT
    for a_kind in ("row", "col", "strided"):
        for b_kind in ("row", "col", "strided"):  # b "row" = contiguous [K, N]; "col" = w.t()
            a2, b2 = _layout(qa, a_kind), _layout(qb, b_kind)
            assert torch.equal(a2.float(), qa.float()) and torch.equal(b2.float(), qb.float())
            out = fp8_gemm(a2, b2, a_scale=sa, b_scale=sb, bias=bias, out_dtype=torch.float32, _path=path)
            assert torch.equal(out, base), (a_kind, b_kind)


@pytest.mark.parametrize("policy", ["inkernel", "clamp"])
def test_native_mn_policies_measured_by_the_sweep_are_right(policy, poisoned, fresh_cache, monkeypatch):
    # benchmarks/scripts/sweep_fp8.py times the MN-major operands read in the kernel (masked, or clamped as
    # before the fix) against the K-major copy; all three must compute the same bits
    M, N, K = 80, 72, 160
    qa, sa, qb, sb, _ = _fp8_operands(M, N, K)
    base = fp8_gemm(qa, qb, a_scale=sa, b_scale=sb, out_dtype=torch.float32)
    monkeypatch.setattr(fg, "NATIVE_MN_POLICY", policy)
    fg._gemm_plans.clear()
    out = fp8_gemm(_layout(qa, "col"), _layout(qb, "row"), a_scale=sa, b_scale=sb, out_dtype=torch.float32)
    fg._gemm_plans.clear()
    assert torch.equal(out, base) and len(fresh_cache) == 0  # nothing copied


def test_tma_variant_same_bits(poisoned, monkeypatch):
    # NATIVE_TMA (sweep variant, sm_90): the same tiles read through TMA descriptors; K = 160 is a multiple of
    # 16 but not of BLOCK_K, and M, N are ragged, so the zero-filled out-of-bounds boxes are exercised
    M, N, K = 80, 72, 160
    qa, sa, qb, sb, bias = _fp8_operands(M, N, K)
    base = fp8_gemm(qa, qb, a_scale=sa, b_scale=sb, bias=bias, out_dtype=torch.float32)
    monkeypatch.setattr(fg, "NATIVE_TMA", True)
    fg._gemm_plans.clear()
    try:
        assert torch.equal(fp8_gemm(qa, qb, a_scale=sa, b_scale=sb, bias=bias, out_dtype=torch.float32), base)
    finally:
        fg._gemm_plans.clear()


def test_kmajor_copy_and_its_reuse(poisoned, fresh_cache):
    M, N, K = 80, 72, 160
    qa, sa, qb, sb, _ = _fp8_operands(M, N, K)
    kn = qb.contiguous()  # [K, N] row-major: the layout that used to run 50-290x slower
    copy = fg.kmajor_copy(kn)
    assert copy.shape == (K, N) and copy.stride() == (1, K) and torch.equal(copy.float(), kn.float())
    first = fp8_gemm(qa, kn, a_scale=sa, b_scale=sb)
    assert len(fresh_cache) == 1  # the K-major copy is kept for the next call
    hits = fresh_cache.hits
    assert torch.equal(fp8_gemm(qa, kn, a_scale=sa, b_scale=sb), first) and fresh_cache.hits == hits + 1
    # an in-place write through a view bumps the shared version counter: the copy is made again
    kn[:, 0].view(torch.uint8).fill_(0x38)  # e4m3 1.0 in column 0
    out = fp8_gemm(qa, kn, a_scale=sa, b_scale=sb)
    want = ref.scaled_gemm(_np(qa), _np(kn), _np(sa), _np(sb), a_granularity="row", b_granularity="column")
    assert ref.relative_error(_np(out), want) < 1e-2  # bf16 output rounding
    assert not torch.equal(out[:, 0], first[:, 0]) and torch.equal(out[:, 1:], first[:, 1:])


@pytest.mark.parametrize("M", [5, 80])  # weight-only kernel (a not quantized) / a quantized per row
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float_inputs_every_layout_same_bits(M, dtype, poisoned, fresh_cache):
    N, K = 72, 160
    a = torch.randn(M, K, device=DEVICE, dtype=dtype)
    b = torch.randn(K, N, device=DEVICE, dtype=dtype)
    base = fp8_gemm(a, b)
    exact = _np(a) @ _np(b)
    # per-column e4m3 b alone (M <= 64): 30.5-32.2 dB over 12 seeds at 5x72x160; both operands quantized:
    # 28.6-28.9 dB at 80x72x160 (fp16); bf16 output rounding adds ~2^-9. 29 / 27 dB keep the margin.
    assert ref.sqnr_db(_np(base), exact) >= (29.0 if M <= fg.SMALL_M else 27.0)
    for a_kind in ("row", "col", "strided"):
        for b_kind in ("row", "col", "strided"):
            out = fp8_gemm(_layout(a, a_kind), _layout(b, b_kind))
            assert torch.equal(out, base), (a_kind, b_kind)


def test_weight_only_layouts_and_kmajor_policy(poisoned, fresh_cache, monkeypatch):
    M, N, K = 5, 72, 160
    x = torch.randn(2, M, K, device=DEVICE, dtype=torch.float16)
    w = torch.randn(N, K, device=DEVICE)
    qw, sw = quantize_fp8(w, granularity="row")
    base = fp8_weight_only_gemm(x, qw.t(), sw.t())
    want = _np(x).reshape(-1, K) @ (_np(qw) * _np(sw)).T
    assert ref.relative_error(_np(base).reshape(-1, N), want) < 2e-3  # fp16 output rounding (2^-11)
    kn = qw.t().contiguous()
    for policy in (False, True):  # in-kernel N-major B, or one K-major copy kept in the operand cache
        monkeypatch.setattr(fg, "WEIGHT_ONLY_KMAJOR_COPY", policy)
        fg._weight_only_plans.clear()
        assert torch.equal(fp8_weight_only_gemm(x, kn, sw.t()), base)
        assert torch.equal(fp8_weight_only_gemm(_layout(x[0], "col"), kn, sw.t()), base[0])
    assert len(fresh_cache) == 1  # only the copying policy stored something


def test_float_b_is_quantized_once_per_version(poisoned, fresh_cache):
    a = torch.randn(80, 96, device=DEVICE, dtype=torch.float16)
    w = nn.Parameter(torch.randn(48, 96, device=DEVICE, dtype=torch.float16), requires_grad=False)
    first = fp8_gemm(a, w.t())
    misses = fresh_cache.misses
    for _ in range(2):  # a fresh w.t() view each call: same anchor (the Parameter), same version -> hit
        assert torch.equal(fp8_gemm(a, w.t()), first)
    assert fresh_cache.misses == misses and fresh_cache.hits >= 2
    with torch.no_grad():
        w.mul_(2.0)  # in place: version bump, the FP8 copy is rebuilt
    twice = fp8_gemm(a, w.t())
    assert fresh_cache.misses == misses + 1
    torch.testing.assert_close(twice, first * 2, rtol=2e-3, atol=0)  # power of two: only rounding differs
    # the cached copy dies with its tensor
    n = len(fresh_cache)
    del w
    gc.collect()
    assert len(fresh_cache) == n - 1


def test_cache_limit_and_inference_tensors(poisoned, fresh_cache):
    a = torch.randn(80, 64, device=DEVICE, dtype=torch.float16)
    b = torch.randn(64, 32, device=DEVICE, dtype=torch.float16)
    ref_out = fp8_gemm(a, b)
    fp8_cache.set_operand_cache_limit(0)
    try:
        fp8_cache.clear()
        assert torch.equal(fp8_gemm(a, b), ref_out) and len(fresh_cache) == 0
    finally:
        fp8_cache.set_operand_cache_limit(fp8_cache.DEFAULT_MAX_BYTES)
    with torch.inference_mode():
        bi = b.clone()  # an inference tensor has no version counter: never cached, always correct
        assert torch.equal(fp8_gemm(a, bi), ref_out)
    assert len(fresh_cache) == 0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_scale_makes_nan_in_kernel(bad, poisoned):
    M, N, K = 40, 48, 96
    qa, sa, qb, sb, _ = _fp8_operands(M, N, K)
    sa, sb = sa.clone(), sb.clone()
    sa[3, 0] = bad
    sb[0, 5] = bad
    out = fp8_gemm(qa, qb, a_scale=sa, b_scale=sb, out_dtype=torch.float32, check_scales=False)
    bad_rows = torch.zeros(M, N, dtype=torch.bool, device=DEVICE)
    bad_rows[3, :] = True
    bad_rows[:, 5] = True
    assert torch.isnan(out[bad_rows]).all() and torch.isfinite(out[~bad_rows]).all()
    with pytest.raises(NumericalError):
        fp8_gemm(qa, qb, a_scale=sa, b_scale=sb)
    w_s = sb.clone()
    x = torch.randn(3, K, device=DEVICE, dtype=torch.float16)
    out = fp8_weight_only_gemm(x, qb, w_s)
    assert torch.isnan(out[:, 5]).all() and torch.isfinite(out[:, :5]).all()


def test_scale_checks_are_remembered(monkeypatch):
    M, N, K = 20, 32, 64
    qa, sa, qb, sb, _ = _fp8_operands(M, N, K)
    syncs = []
    real = torch.Tensor.any

    def counting_any(self, *args, **kwargs):
        syncs.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "any", counting_any)
    fp8_gemm(qa, qb, a_scale=sa, b_scale=sb)
    assert not syncs  # quantize_fp8's own (dynamic) scales are known valid
    user = torch.full((M, 1), 0.01, device=DEVICE)
    for _ in range(3):
        fp8_gemm(qa, qb, a_scale=user, b_scale=sb)
    assert len(syncs) == 1  # a user scale: checked once, remembered while unchanged
    user[0, 0] = -1.0  # in place: checked again, and now refused
    with pytest.raises(NumericalError):
        fp8_gemm(qa, qb, a_scale=user, b_scale=sb)
    assert len(syncs) == 2


def _tensors_in(obj, seen=None, depth=0):
    """Tensors reachable from a plan through closures, KernelLaunch slots, containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 12:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    found = []
    if callable(obj) and getattr(obj, "__closure__", None):
        for cell in obj.__closure__:
            with contextlib.suppress(ValueError):  # an empty cell
                found += _tensors_in(cell.cell_contents, seen, depth + 1)
    if isinstance(obj, (tuple, list)):
        for v in obj:
            found += _tensors_in(v, seen, depth + 1)
    if isinstance(obj, dict):
        for v in obj.values():
            found += _tensors_in(v, seen, depth + 1)
    for slot in getattr(type(obj), "__slots__", ()):
        found += _tensors_in(getattr(obj, slot, None), seen, depth + 1)
    return found


def test_plans_are_reused_and_hold_no_tensors():
    counts0 = plan_counts()
    x = torch.randn(80, 64, device=DEVICE, dtype=torch.float16)
    lin = FP8Linear(64, 48, dtype=torch.float16).to(DEVICE)
    assert "bias" in dict(lin.named_buffers()) and not lin.bias.requires_grad  # inference only: a buffer
    outs = [lin(x) for _ in range(3)]
    assert all(torch.equal(o, outs[0]) for o in outs)
    counts = plan_counts()
    assert counts["fp8_linear"] == counts0.get("fp8_linear", 0) + 1  # one plan for three calls
    qx, sx = quantize_fp8(x, granularity="row")
    fp8_gemm(qx, lin.weight.t(), a_scale=sx, b_scale=lin.weight_scale.t())
    fp8_gemm(x, torch.randn(64, 40, device=DEVICE, dtype=torch.float16))
    fp8_weight_only_gemm(x[:4], lin.weight.t(), lin.weight_scale.t())
    for cache in (fg._gemm_plans, fg._weight_only_plans, fp8_cache_plans()):
        for plan in list(cache._plans.values()):
            assert not _tensors_in(plan), plan


def fp8_cache_plans():
    from triton_ops.kernels import fp8_linear, fp8_quantize

    class _Both:
        _plans = {**fp8_quantize._quant_plans._plans, **fp8_quantize._dequant_plans._plans,
                  **fp8_linear._linear_plans._plans}
    return _Both


def test_fp8_linear_bf16_decode_and_1d(poisoned):
    # bf16 activations on the weight-only path: the interpreter's bf16 dot is wrong, the kernel routes it
    # through an fp32 dot there (fp16/bf16 dot on a GPU)
    lin = FP8Linear(96, 48, dtype=torch.bfloat16).to(DEVICE)
    x = torch.randn(3, 96, device=DEVICE, dtype=torch.bfloat16)
    y = lin(x)
    want = _np(x) @ _np(lin.dequantized_weight()).T + _np(lin.bias)
    assert y.dtype == torch.bfloat16 and ref.relative_error(_np(y), want) < 1e-2  # bf16 output rounding
    assert torch.equal(lin(x[0]), y[0])  # a 1-D token


# ---- GPU ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("M,N,K", [(1024, 4096, 4096), (199, 5120, 3584), (16, 14336, 4096)])
def test_gpu_layouts_same_bits(M, N, K, fresh_cache):
    qa, sa, qb, sb, bias = _fp8_operands(M, N, K)
    base = fp8_gemm(qa, qb, a_scale=sa, b_scale=sb, bias=bias)
    want = ref.scaled_gemm(_np(qa), _np(qb), _np(sa), _np(sb), a_granularity="row", b_granularity="column",
                           bias=_np(bias))
    assert ref.relative_error(_np(base), want) < 5e-3  # bf16 output rounding (2^-9) and the FP8 MMA's sum
    for a_kind, b_kind in (("row", "row"), ("col", "col"), ("col", "row"), ("strided", "strided")):
        out = fp8_gemm(_layout(qa, a_kind), _layout(qb, b_kind), a_scale=sa, b_scale=sb, bias=bias)
        assert torch.equal(out, base), (a_kind, b_kind)
    a16 = torch.randn(M, K, device="cuda", dtype=torch.float16)
    b16 = torch.randn(K, N, device="cuda", dtype=torch.float16)
    out16 = fp8_gemm(a16, b16)
    assert torch.equal(fp8_gemm(a16, _layout(b16, "col")), out16)
    assert torch.equal(fp8_gemm(_layout(a16, "col"), b16), out16)
    assert ref.sqnr_db(_np(out16), _np(a16) @ _np(b16)) >= 27.0  # see test_float_inputs_every_layout_same_bits


@pytest.mark.gpu
def test_gpu_graph_capture_sees_in_place_updates_of_b(fresh_cache):
    a = torch.randn(256, 512, device="cuda", dtype=torch.float16)
    b = torch.randn(512, 384, device="cuda", dtype=torch.float16)
    fp8_gemm(a, b)  # plan, compile, cache b's FP8 copy
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(g):
        out = fp8_gemm(a, b)
    torch.cuda.current_stream().wait_stream(stream)
    b.copy_(torch.randn_like(b))  # a static input updated between replays
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, fp8_gemm(a, b))  # the replay quantized the new b (a cached copy would be stale)
