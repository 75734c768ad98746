"""FP8 (e4m3fn) outputs of fused_add_rmsnorm, fused_rmsnorm_rope and the gated MLP, in Triton's interpreter.

The fused ops quantize their fp32 result in the kernel that computes it. The strongest check available on
the CPU is an exact one: each op run again with an fp32 output (for the norms, on fp32 copies of the same
inputs, which the kernels read exactly as they read fp16/bf16 ones; for the gated MLP, the same kernel
config writing fp32) and then ``quantize_fp8`` -- whose kernels match the NumPy reference code for code,
see test_fp8_quantize -- must give the same codes and the same scales, bit for bit. Independent references
(float64 math, NumPy quantization) then bound the error of the whole computation.

Under the interpreter the e4m3 casts round in fp32 first (fp8_quantize.SOFT_ROUND), as the existing FP8
tests rely on, so codes compare exactly; the integer encoding of sm_80 (fp8_out.FORCE_BYTES) is checked
against the same results.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import triton_ops
from triton_ops import fp8_gemm, quantize_fp8
from triton_ops.compute import fp8 as ref
from triton_ops.exceptions import (
    DeviceError,
    DTypeError,
    InvalidArgumentError,
    NumericalError,
    ShapeError,
    TritonOpsError,
    UnsupportedError,
)
from triton_ops.kernels import fp8_out as F8
from triton_ops.kernels import gated_mlp as G
from triton_ops.kernels.rmsnorm import FusedAddRMSNorm, add_rmsnorm_reference, fused_add_rmsnorm, pick_config
from triton_ops.kernels.rmsnorm_rope import FusedRMSNormRoPE, fused_rmsnorm_rope, rmsnorm_rope_reference
from triton_ops.launch import clear_plans, plan_counts
from triton_ops.utils import interpreter_enabled

from ._rope_helpers import tables
from .conftest import DEVICE

E4M3 = torch.float8_e4m3fn
INTERPRETED = interpreter_enabled()
GRAN = {"token": ("row", None), "block": ("block", (1, 128)), "static": ("tensor", None)}
OPCHECKS = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")


def _bits(q):
    return q.view(torch.uint8)


def _dev(value, **kw):
    """A small tensor on the test device (a scale on another device is a DeviceError, not the error tested)."""
    return torch.tensor(value, device=DEVICE, **kw)


def _static_scale():
    return torch.tensor(0.0123, device=DEVICE)


def _expect(y32, scaling, scale=None):
    """quantize_fp8 of the fp32 result: what the fused output must equal exactly."""
    gran, bs = GRAN[scaling]
    return quantize_fp8(y32, granularity=gran, block_size=bs, scale=scale)


def _within_one_step(got, want) -> bool:
    """e4m3 values ``got`` at most one step from ``want`` (same scale): a step is 1/8 of the value at the
    bottom of a binade (3 mantissa bits) and 2^-9 among the subnormals."""
    got, want = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64)
    close = (got - want).abs() <= torch.maximum(0.126 * want.abs(), torch.tensor(2.0 ** -9))
    return bool((close | (got.isnan() & want.isnan())).all())


def _assert_same(got, want, scaling, given=None):
    """Codes and scales equal bit for bit in the interpreter (one fp32 evaluation order for every kernel
    config). Compiled, the FP8-output kernel and the fp32-output kernel it is compared with run with
    different tile configs (4-8 warps for an FP8 row, fewer for fp32), so the row's sum of squares is
    reduced in another order and rstd, hence the amax and the scale, can differ by a few fp32 ulp
    (measured on an H200: scales 1-2 ulp apart, codes all equal). There: scales within 4 ulp (2^-21
    relative) and codes at most one e4m3 step apart on at most 0.1% of elements (a value within a few
    ulp of a rounding boundary)."""
    q, s = got
    rq, rs = want
    assert q.dtype == E4M3 and q.shape == rq.shape
    diff = _bits(q) != _bits(rq)
    if INTERPRETED:
        assert not diff.any(), f"{int(diff.sum())} of {q.numel()} codes differ"
    else:
        assert diff.float().mean() <= 1e-3 and _within_one_step(q.float().cpu(), rq.float().cpu()), \
            f"{int(diff.sum())} of {q.numel()} codes differ"
    if scaling == "static":
        assert s is given  # the caller's own scale comes back
    elif INTERPRETED:
        assert s.dtype == torch.float32 and s.shape == rs.shape and torch.equal(s, rs)
    else:
        assert s.dtype == torch.float32 and s.shape == rs.shape
        torch.testing.assert_close(s, rs, rtol=2.0 ** -21, atol=0)  # 4 fp32 ulp: see the docstring


@pytest.fixture
def byte_encoding(request):
    """Run with the integer e4m3 encoding of sm_80 (FORCE_BYTES) when the parameter is True."""
    F8.FORCE_BYTES = bool(request.param)
    clear_plans()
    yield request.param
    F8.FORCE_BYTES = False
    clear_plans()


# ----------------------------------------------------------------------------------------------------
# fused_add_rmsnorm
# ----------------------------------------------------------------------------------------------------
# the integer e4m3 encoding of sm_80 ("bytes") on a register tile and a chunked row, for every scaling
NORM_CASES = [(h, dt, False) for h in (64, 199, 1000, 5120, 9000)
              for dt in (torch.float16, torch.bfloat16, torch.float32)] + \
    [(199, torch.bfloat16, True), (9000, torch.float16, True)]


@pytest.mark.parametrize("scaling", ["token", "block", "static"])
# 64: packed narrow rows; 199, 1000: partial last block; 5120: one 8192 tile; 9000: chunked (two passes)
@pytest.mark.parametrize("hidden,dtype,byte_encoding", NORM_CASES, indirect=["byte_encoding"],
                         ids=lambda v: str(v).replace("torch.", "") if not isinstance(v, bool) else
                         ("bytes" if v else "cvt"))
def test_norm_matches_quantized_fp32_norm(byte_encoding, scaling, dtype, hidden):
    torch.manual_seed(hidden)
    x = (torch.randn(3, hidden) * 3).to(dtype).to(DEVICE)
    r = torch.randn(3, hidden).to(dtype).to(DEVICE)
    w = (1 + 0.3 * torch.randn(hidden)).to(dtype).to(DEVICE)
    sc = _static_scale() if scaling == "static" else None
    q, s, res = fused_add_rmsnorm(x, w, 1e-5, residual=r, out_dtype=E4M3, out_scaling=scaling, out_scale=sc)
    assert res.dtype == dtype and torch.equal(res, x + r)  # the residual stream, as without FP8
    y32 = fused_add_rmsnorm((x + r).float(), w.float(), 1e-5)
    _assert_same((q, s), _expect(y32, scaling, sc), scaling, sc)


def test_norm_packed_rows_and_plain_and_offsets():
    # many narrow rows (several rows per program), no residual, Gemma offset, fp32 weight with bf16 x
    x = torch.randn(300, 96, dtype=torch.bfloat16, device=DEVICE)
    w = torch.randn(96, device=DEVICE) * 0.1
    assert pick_config(300, 96, 2, False, 4, True).ROWS > 1
    for scaling in ("token", "block"):
        got = fused_add_rmsnorm(x, w, weight_offset=1.0, out_dtype=E4M3, out_scaling=scaling)
        y32 = fused_add_rmsnorm(x.float(), w, weight_offset=1.0)
        _assert_same(got, _expect(y32, scaling), scaling)


def test_norm_against_independent_reference():
    """float64 norm, quantized by the NumPy reference: scales within fp32 rounding of the fp64 amax and
    codes equal except where the fp32 value sits on a rounding boundary (then one e4m3 step)."""
    torch.manual_seed(1)
    x = torch.randn(16, 640, dtype=torch.float16, device=DEVICE) * 2
    w = (1 + 0.2 * torch.randn(640)).half().to(DEVICE)
    for scaling in ("token", "block"):
        q, s = fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scaling=scaling)
        xd, wd = x.double().cpu().numpy(), w.double().cpu().numpy()
        y = xd / np.sqrt((xd ** 2).mean(-1, keepdims=True) + 1e-6) * wd
        gran, bs = GRAN[scaling]
        rq, rs = ref.quantize(y.astype(np.float32), "e4m3fn", gran, bs)
        # scale = amax / 448 in fp32: the fp32 kernel and the fp64-then-fp32 reference differ by the norm's
        # fp32 rounding, a few ulp (2^-24 ~ 6e-8 each): 3e-7 is ~5 ulp. Compiled kernels take rsqrt from
        # the GPU's approximate instruction (up to 2 ulp more) and reduce in a tree: 3.05e-7 measured on
        # an H200, so 6e-7 (~10 ulp) there.
        np.testing.assert_allclose(s.cpu().numpy(), rs, rtol=3e-7 if INTERPRETED else 6e-7)
        got = q.float().cpu().numpy()
        assert (got != rq).mean() < 0.01 and _within_one_step(got, rq)
        # dequantized against the fp64 norm: e4m3 on Gaussian data is ~31 dB (test_fp8_quantize)
        deq = got * (s.cpu().numpy() if scaling == "token" else np.repeat(s.cpu().numpy(), 128, 1)[:, :640])
        assert ref.sqnr_db(deq, y) > 29.0
    # the torch reference the benchmarks compile agrees in scale layout and to within one step
    q, s = fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scaling="block")
    rq, rs = add_rmsnorm_reference(x, w, out_dtype=E4M3, out_scaling="block")
    assert rs.shape == s.shape and torch.allclose(rs, s, rtol=3e-7)  # ~5 fp32 ulp: reduction order only
    assert _within_one_step(q.float().cpu(), rq.float().cpu())


def test_norm_round_before_weight_and_strided_rows():
    base = torch.randn(6, 2, 300, dtype=torch.float16, device=DEVICE)
    x = base[:, 1, :]  # row-strided view, read in place
    w = torch.randn(300, dtype=torch.float16, device=DEVICE)
    q, s = fused_add_rmsnorm(x, w, round_before_weight=True, out_dtype=E4M3, out_scaling="block")
    # Llama's order: normalised value rounded to fp16, times the weight, in fp32 -- then quantized
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).half().float() * w.float()
    rq, rs = quantize_fp8(y, granularity="block", block_size=(1, 128))
    # ~5 fp32 ulp on the scales (reduction order); codes at most one e4m3 step apart where a value sits
    # on a rounding boundary
    assert torch.allclose(s, rs, rtol=3e-7) and _within_one_step(q.float().cpu(), rq.float().cpu())
    # 3-D input whose leading dims do not collapse (copied), and 1-D input
    x3 = torch.randn(4, 3, 256, device=DEVICE).transpose(0, 1)
    q3, s3 = fused_add_rmsnorm(x3, w[:256].float(), out_dtype=E4M3)
    assert q3.shape == x3.shape and s3.shape == (3, 4, 1)
    _assert_same((q3, s3), _expect(fused_add_rmsnorm(x3, w[:256].float()), "token"), "token")
    q1, s1 = fused_add_rmsnorm(x3[0, 0], w[:256].float(), out_dtype=E4M3)
    assert q1.shape == (256,) and s1.shape == (1,)


def test_norm_residual_in_place_poisoned_and_module():
    x = torch.randn(5, 384, device=DEVICE)
    r = torch.randn(5, 384, device=DEVICE)
    w = torch.randn(384, device=DEVICE)
    want_sum = x + r
    poisoned = torch.full_like(x, float("nan"))
    q, s, ro = fused_add_rmsnorm(x, w, residual=r, residual_out=poisoned, out_dtype=E4M3)
    assert ro is poisoned and torch.equal(ro, want_sum)
    q2, s2, ro2 = fused_add_rmsnorm(x, w, residual=r, residual_out=r, out_dtype=E4M3)  # vLLM: in place
    assert ro2 is r and torch.equal(r, want_sum) and torch.equal(_bits(q2), _bits(q)) and torch.equal(s2, s)
    mod = FusedAddRMSNorm(384, device=DEVICE)
    with torch.no_grad():
        mod.weight.copy_(w)
        mq, ms = mod(x, out_dtype=E4M3, out_scaling="block")  # nn.Parameter weight: the same fast path
    _assert_same((mq, ms), _expect(fused_add_rmsnorm(x, w), "block"), "block")


def test_norm_special_values():
    x = torch.randn(5, 300, device=DEVICE)
    x[0, 7] = float("nan")  # a NaN makes its row's sum of squares NaN: the whole row is NaN, scale 1
    x[1, 3] = float("inf")  # an inf makes rstd 0: inf * 0 is NaN there, the rest 0, scale 1
    x[2] = 0.0  # zero row: y = 0, safe scale 1
    x[3, 5] = 1e30  # a huge finite value dominates its row
    w = torch.ones(300, device=DEVICE)
    for scaling in ("token", "block"):
        q, s = fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scaling=scaling)
        qf = q.float()
        assert torch.isnan(qf[0]).all() and (s[0] == 1).all()
        assert torch.isnan(qf[1, 3]) and (qf[1].nan_to_num(0) == 0).all() and (s[1] == 1).all()
        assert (qf[2] == 0).all() and (s[2] == 1).all()
        assert not torch.isnan(qf[3:]).any()
        _assert_same((q, s), _expect(fused_add_rmsnorm(x, w), scaling), scaling)
    # a static scale far too small saturates to +-448; NaN stays NaN
    q, _ = fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scale=torch.tensor(1e-6, device=DEVICE))
    assert torch.isnan(q.float()[0]).all() and q.float()[3:].abs().max() == 448


def test_norm_empty_and_plans():
    w = torch.randn(130, device=DEVICE)
    q, s = fused_add_rmsnorm(torch.empty(0, 130, device=DEVICE), w, out_dtype=E4M3, out_scaling="block")
    assert q.shape == (0, 130) and q.dtype == E4M3 and s.shape == (0, 2)
    q, s = fused_add_rmsnorm(torch.empty(2, 0, 0, device=DEVICE), torch.empty(0, device=DEVICE), out_dtype=E4M3)
    assert q.shape == (2, 0, 0) and s.shape == (2, 0, 1)
    x = torch.randn(4, 130, device=DEVICE)
    sc = _static_scale()
    fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scale=sc)
    n = plan_counts()["add_rmsnorm"]
    for _ in range(3):
        q, s = fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scale=sc)
        assert s is sc
    assert plan_counts()["add_rmsnorm"] == n  # reused: one plan per signature
    fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scaling="block")
    assert plan_counts()["add_rmsnorm"] == n + 1  # another scaling is another plan


def test_norm_compile_opcheck_and_autograd():
    x = torch.randn(4, 256, device=DEVICE)
    r = torch.randn(4, 256, device=DEVICE)
    w = torch.randn(256, device=DEVICE)
    torch.library.opcheck(torch.ops.triton_ops.rmsnorm_fp8.default, (x, w, None, 1e-6, 0.0, False, 3),
                          test_utils=OPCHECKS)
    torch.library.opcheck(torch.ops.triton_ops.add_rmsnorm_fp8.default,
                          (x, r, w, torch.empty_like(x), torch.tensor(0.1, device=DEVICE), 1e-6, 0.0, False, 1),
                          test_utils=OPCHECKS)

    @torch.compile(fullgraph=True)
    def f(x, r, w):
        q, s, res = fused_add_rmsnorm(x, w, residual=r, out_dtype=E4M3, out_scaling="block")
        return q, s, res

    q, s, res = f(x, r, w)
    _assert_same((q, s), fused_add_rmsnorm(x, w, residual=r, out_dtype=E4M3, out_scaling="block")[:2], "block")
    # inputs that require grad take the custom op (the outputs carry no gradient)
    q2, s2 = fused_add_rmsnorm(x.requires_grad_(), w, out_dtype=E4M3)
    assert torch.equal(_bits(q2), _bits(fused_add_rmsnorm(x.detach(), w, out_dtype=E4M3)[0]))


@pytest.mark.parametrize("call,exc", [
    (lambda x, w: fused_add_rmsnorm(x, w, out_dtype=torch.float16), DTypeError),
    (lambda x, w: fused_add_rmsnorm(x, w, out_dtype=torch.float8_e5m2), UnsupportedError),
    (lambda x, w: fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scaling="row"), InvalidArgumentError),
    (lambda x, w: fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scaling="static"), InvalidArgumentError),
    (lambda x, w: fused_add_rmsnorm(x, w, out_scaling="token"), InvalidArgumentError),
    (lambda x, w: fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scale=_dev(1.0, dtype=torch.float64)),
     DTypeError),
    (lambda x, w: fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scale=_dev([1.0, 1.0])), ShapeError),
    (lambda x, w: fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scale=_dev(0.0)), NumericalError),
    (lambda x, w: fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scale=_dev(float("nan"))), NumericalError),
    (lambda x, w: fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scaling="token", out_scale=_dev(1.0)),
     InvalidArgumentError),
    (lambda x, w: fused_add_rmsnorm(x, w, out_dtype=E4M3, out_scale=1.0), InvalidArgumentError),
    (lambda x, w: fused_add_rmsnorm(x, w, out=torch.empty_like(x), out_dtype=E4M3), InvalidArgumentError),
])
def test_norm_errors(call, exc):
    x = torch.randn(3, 64, device=DEVICE)
    with pytest.raises(exc) as info:
        call(x, torch.ones(64, device=DEVICE))
    assert isinstance(info.value, TritonOpsError)


def test_static_scale_on_another_device_is_refused():
    x = torch.randn(3, 64, device="meta")
    with pytest.raises(DeviceError):
        F8.resolve_fp8_output(E4M3, None, torch.tensor(1.0), torch.float32, x.device, "token", "op")


# ----------------------------------------------------------------------------------------------------
# fused_rmsnorm_rope
# ----------------------------------------------------------------------------------------------------
ROPE_CASES = [  # (head_dim, rotary_dim, heads): 64 x 3 has a partial last block; 128/64 rotates half
    (64, 64, 3), (128, 128, 2), (128, 64, 2), (256, 256, 2), (80, 80, 3),
]


@pytest.mark.parametrize("scaling", ["token", "block", "static"])
@pytest.mark.parametrize("case,layout,byte_encoding",
                         [(c, lay, False) for c in ROPE_CASES for lay in ("neox", "gptj")]
                         + [(ROPE_CASES[0], "gptj", True), (ROPE_CASES[2], "neox", True)], indirect=["byte_encoding"],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else
                         (("bytes" if v else "cvt") if isinstance(v, bool) else v))
def test_rope_matches_quantized_fp32_rope(byte_encoding, scaling, layout, case):
    hd, rot, nh = case
    if scaling == "block" and hd == 80:
        pytest.skip("blocks that straddle heads unevenly are refused (test_rope_compile_opcheck_and_errors)")
    torch.manual_seed(hd + nh)
    x = torch.randn(2, 5, hd * nh, dtype=torch.float16, device=DEVICE) * 2
    r = torch.randn(2, 5, hd * nh, dtype=torch.float16, device=DEVICE)
    w = (1 + 0.2 * torch.randn(hd * nh)).half().to(DEVICE)
    cos, sin = tables(5, rot, layout, device=DEVICE)
    sc = _static_scale() if scaling == "static" else None
    kw = dict(head_dim=hd, rotary_dim=rot, rotary_layout=layout)
    q, s, res = fused_rmsnorm_rope(x, w, cos, sin, residual=r, out_dtype=E4M3, out_scaling=scaling, out_scale=sc,
                                   **kw)
    assert torch.equal(res, x + r)
    y32 = fused_rmsnorm_rope((x + r).float(), w.float(), cos, sin, **kw)
    _assert_same((q, s), _expect(y32, scaling, sc), scaling, sc)


def test_rope_per_head_positions_and_module():
    hd, nh = 128, 3
    x = torch.randn(4, hd * nh, device=DEVICE)
    w = torch.randn(hd, device=DEVICE)  # per-head norm (QK-norm)
    cos, sin = tables(16, hd, device=DEVICE)
    pos = torch.tensor([3, 0, 15, 99], device=DEVICE)  # 99 lies outside the table: that token is NaN
    for scaling in ("token", "block"):
        q, s = fused_rmsnorm_rope(x, w, cos, sin, position_ids=pos, out_dtype=E4M3, out_scaling=scaling)
        y32 = fused_rmsnorm_rope(x, w, cos, sin, position_ids=pos)
        _assert_same((q, s), _expect(y32, scaling), scaling)
        assert torch.isnan(q[3].float()).all() and (s[3] == 1).all()
        assert s.shape == ((4, 1) if scaling == "token" else (4, 3))  # head_dim 128: one scale per head
    mod = FusedRMSNormRoPE(256, 64).to(DEVICE)
    c, sn = tables(6, 64, device=DEVICE)
    xm = torch.randn(6, 256, device=DEVICE)
    with torch.no_grad():
        mq, ms = mod(xm, c, sn, out_dtype=E4M3, out_scaling="block")
    _assert_same((mq, ms), _expect(mod(xm, c, sn).detach(), "block"), "block")


def test_rope_chunked_rows_and_reference():
    # 112 heads of 64: more than one register tile, so the row is processed in chunks of heads (and the
    # per-token scale takes one more pass over the row)
    hd, nh = 64, 112
    x = torch.randn(2, hd * nh, device=DEVICE)
    w = torch.randn(hd * nh, device=DEVICE)
    cos, sin = tables(2, hd, device=DEVICE)
    for scaling in ("token", "block"):
        q, s = fused_rmsnorm_rope(x, w, cos, sin, out_dtype=E4M3, out_scaling=scaling)
        _assert_same((q, s), _expect(fused_rmsnorm_rope(x, w, cos, sin), scaling), scaling)
        rq, rs = rmsnorm_rope_reference(x, w, cos, sin, out_dtype=E4M3, out_scaling=scaling)
        # the torch reference rotates in a different operation order (cos/sin products, then the norm's
        # scale): ~50 fp32 ulp on the per-block amax
        assert rs.shape == s.shape and torch.allclose(rs, s, rtol=3e-6)


def test_rope_compile_opcheck_and_errors():
    x = torch.randn(2, 3, 256, device=DEVICE)
    w = torch.randn(256, device=DEVICE)
    cos, sin = tables(3, 64, device=DEVICE)
    op = torch.ops.triton_ops.rmsnorm_rope_fp8.default
    torch.library.opcheck(op, (x, w, cos, sin, None, None, None, None, 1e-6, 64, False, 0.0, False, 3),
                          test_utils=OPCHECKS)
    torch.library.opcheck(op, (x, w, cos, sin, None, torch.randn_like(x), torch.empty_like(x),
                               torch.tensor(0.1, device=DEVICE), 1e-6, 64, True, 0.0, False, 1), test_utils=OPCHECKS)

    @torch.compile(fullgraph=True)
    def f(x, w, cos, sin):
        return fused_rmsnorm_rope(x, w, cos, sin, head_dim=64, out_dtype=E4M3, out_scaling="block")

    _assert_same(f(x, w, cos, sin), fused_rmsnorm_rope(x, w, cos, sin, head_dim=64, out_dtype=E4M3,
                                                       out_scaling="block"), "block")
    n = plan_counts()["rmsnorm_rope/fp8"]
    for _ in range(2):
        fused_rmsnorm_rope(x, w, cos, sin, head_dim=64, out_dtype=E4M3)
    assert plan_counts()["rmsnorm_rope/fp8"] == n + 1
    c80, s80 = tables(3, 80, device=DEVICE)
    with pytest.raises(UnsupportedError):
        fused_rmsnorm_rope(torch.randn(3, 240, device=DEVICE), torch.ones(240, device=DEVICE), c80, s80,
                           out_dtype=E4M3, out_scaling="block")
    with pytest.raises(InvalidArgumentError):
        fused_rmsnorm_rope(x, w, cos, sin, head_dim=64, out=torch.empty_like(x), out_dtype=E4M3)
    with pytest.raises(DTypeError):
        fused_rmsnorm_rope(x, w, cos, sin, head_dim=64, out_dtype=torch.int8)


# ----------------------------------------------------------------------------------------------------
# Gated MLP
# ----------------------------------------------------------------------------------------------------
_MODE = {"static": F8.QUANT_STATIC, "block": F8.QUANT_BLOCK, "token": G._OUT_RAW_BLOCKS}


def _mlp_inputs(M, H, Inter, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, H, generator=g).to(dtype).to(DEVICE)
    wg = (torch.randn(Inter, H, generator=g) / math.sqrt(H)).to(dtype).to(DEVICE)
    wu = (torch.randn(Inter, H, generator=g) / math.sqrt(H)).to(dtype).to(DEVICE)
    return x, wg, wu


def _fp32_product(x, wg, wu, scaling, act="silu", bg=None, bu=None, scales=None):
    """act(gate) * up in fp32 from the same kernel config the FP8 output runs (same accumulation order)."""
    x2, wg2, wu2 = x.reshape(-1, x.shape[-1]), wg, wu
    fp8 = scales is not None
    kplan = G._make_plan(x2, wg2, wu2, None, (x2.shape[0], wg.shape[0]), E4M3, G.ACTIVATIONS[act], bg is not None,
                         fp8, out_quant=_MODE[scaling])
    c, o = kplan.launch.constexprs, kplan.launch.options
    cfg = G.GatedMLPConfig(c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], c["GROUP_M"], o["num_warps"], o["num_stages"])
    h = torch.empty(x2.shape[0], wg.shape[0], device=DEVICE)
    G._run(x2, wg2, wu2, h, act, bg, bu, *(scales or (None, None, None)), config=cfg)
    return h.reshape(*x.shape[:-1], wg.shape[0])


@pytest.mark.parametrize("byte_encoding", [False, True], indirect=True, ids=["cvt", "bytes"])
@pytest.mark.parametrize("scaling", ["block", "static"])
# decode, a partial last block (200), an unaligned hidden/intermediate (40 x 17), a prefill tile
@pytest.mark.parametrize("shape", [(1, 64, 256), (5, 64, 200), (3, 40, 17), (70, 96, 130)],
                         ids=lambda s: "x".join(map(str, s)))
def test_mlp_matches_quantized_fp32_product(byte_encoding, scaling, shape):
    M, H, Inter = shape
    x, wg, wu = _mlp_inputs(M, H, Inter)
    sc = _static_scale() if scaling == "static" else None
    got = G.fused_gated_mlp(x, wg, wu, out_dtype=E4M3, out_scaling=scaling, out_scale=sc)
    _assert_same(got, _expect(_fp32_product(x, wg, wu, scaling), scaling, sc), scaling, sc)


@pytest.mark.parametrize("byte_encoding", [False, True], indirect=True, ids=["cvt", "bytes"])
@pytest.mark.parametrize("shape", [(5, 64, 200), (8, 64, 1024), (3, 40, 17)], ids=lambda s: "x".join(map(str, s)))
def test_mlp_per_token(byte_encoding, shape):
    """Per-token scales are exact (the row's largest block amax / 448); a code whose block is not the
    row's largest is rounded twice (block grid, then row grid), so it may sit one e4m3 step from the
    single rounding of quantize_fp8."""
    M, H, Inter = shape
    x, wg, wu = _mlp_inputs(M, H, Inter)
    q, s = G.fused_gated_mlp(x, wg, wu, out_dtype=E4M3, out_scaling="token")
    h = _fp32_product(x, wg, wu, "token")
    rq, rs = _expect(h, "token")
    assert s.shape == (M, 1) and torch.equal(s, rs)
    assert _within_one_step(q.float().cpu(), rq.float().cpu())
    # what double rounding costs: Gaussian data, float64 product; measured here 29.1-29.7 dB against
    # 31.6-31.9 dB for quantize_fp8 of the fp32 product (block scales: 32.9 dB)
    hd = G.gated_mlp_reference_torch(x.double(), wg.double(), wu.double()).cpu().numpy()
    assert ref.sqnr_db((q.double() * s.double()).cpu().numpy(), hd) > 27.5
    assert (_bits(q) == _bits(rq))[:, : min(Inter, 128)].any()


def test_mlp_fp8_operands_bias_activations_and_module():
    M, H, Inter = 6, 64, 200
    x, wg, wu = _mlp_inputs(M, H, Inter, torch.float32, seed=3)
    xq, xs = G.quantize_rows_fp8(x)
    gq, gs = G.quantize_rows_fp8(wg)
    uq, us = G.quantize_rows_fp8(wu)
    scales = (xs.reshape(-1), gs.reshape(-1), us.reshape(-1))
    for scaling in ("block", "token", "static"):
        sc = _static_scale() if scaling == "static" else None
        q, s = G.fused_gated_mlp_fp8(xq, xs, gq, gs, uq, us, "gelu_tanh", out_dtype=E4M3, out_scaling=scaling,
                                     out_scale=sc)
        h = _fp32_product(xq, gq, uq, scaling, "gelu_tanh", scales=scales)
        if scaling != "token":
            _assert_same((q, s), _expect(h, scaling, sc), scaling, sc)
        else:
            assert torch.equal(s, _expect(h, "token")[1])
    # biases (fp16, gelu)
    x16, wg16, wu16 = _mlp_inputs(M, H, Inter, seed=4)
    bg, bu = torch.randn(Inter, device=DEVICE).half(), torch.randn(Inter, device=DEVICE).half()
    got = G.fused_gated_mlp(x16, wg16, wu16, "gelu", gate_bias=bg, up_bias=bu, out_dtype=E4M3)
    _assert_same(got, _expect(_fp32_product(x16, wg16, wu16, "block", "gelu", bg, bu), "block"), "block")
    # the FP8 module: float input (quantized per row by the module) or e4m3 input with its scales
    mod = FusedGatedMLP_from(wg, wu)
    q1, s1 = mod(xq, xs, out_dtype=E4M3)
    w, ws = mod.weight_fp8, mod.weight_scale
    q2, s2 = G.fused_gated_mlp_fp8(xq, xs, w[:Inter], ws[:Inter], w[Inter:], ws[Inter:], out_dtype=E4M3)
    assert torch.equal(_bits(q1), _bits(q2)) and torch.equal(s1, s2)
    q3, s3 = mod(x, out_dtype=E4M3, out_scaling="token")
    assert q3.shape == (M, Inter) and s3.shape == (M, 1)
    assert mod(x).dtype == torch.float32  # unchanged without the FP8 arguments
    dense = triton_ops.FusedGatedMLP(H, Inter, device=DEVICE, dtype=torch.float16)
    qd, sd = dense(x16, out_dtype=E4M3)
    assert qd.dtype == E4M3 and sd.shape == (M, 2)
    with pytest.raises(InvalidArgumentError):
        mod(xq, out_dtype=E4M3)  # e4m3 x without its scales
    with pytest.raises(DTypeError):
        mod(xq)  # an e4m3 x takes its scales along
    with pytest.raises(InvalidArgumentError):
        dense(x16, xs)  # scales for a module that is not FP8


def FusedGatedMLP_from(wg, wu):  # noqa: N802 - reads as the constructor it wraps
    return triton_ops.FusedGatedMLP.from_weights(wg, wu, fp8=True)


def test_mlp_special_values_layouts_and_plans():
    M, H, Inter = 6, 64, 256
    x, wg, wu = _mlp_inputs(M, H, Inter)
    x[1, 5] = float("nan")  # NaN in a row of x: that row's products are NaN, its scales 1
    x[2] = 0.0  # zero row: silu(0) * 0 = 0, safe scale 1
    for scaling in ("block", "token"):
        q, s = G.fused_gated_mlp(x, wg, wu, out_dtype=E4M3, out_scaling=scaling)
        assert torch.isnan(q[1].float()).all() and (s[1] == 1).all()
        assert (q[2].float() == 0).all() and (s[2] == 1).all()
        assert not torch.isnan(q[[0, 3, 4, 5]].float()).any()
    # leading dims and row-strided x (read in place); the plan is reused per signature
    base = torch.randn(2, 3, 2, H, device=DEVICE).half()
    xs = base[:, :, 0, :]
    q, s = G.fused_gated_mlp(xs, wg, wu, out_dtype=E4M3)
    assert q.shape == (2, 3, Inter) and s.shape == (6, 2)
    _assert_same((q, s), _expect(_fp32_product(xs, wg, wu, "block"), "block"), "block")
    n = plan_counts()["gated_mlp/fp8_out"]
    G.fused_gated_mlp(xs, wg, wu, out_dtype=E4M3)
    assert plan_counts()["gated_mlp/fp8_out"] == n
    # empty rows, zero hidden size (the biases alone)
    q, s = G.fused_gated_mlp(x[:0], wg, wu, out_dtype=E4M3)
    assert q.shape == (0, Inter) and s.shape == (0, 2)
    z = torch.empty(3, 0, device=DEVICE).half()
    bg = torch.randn(Inter, device=DEVICE).half()
    q, s = G.fused_gated_mlp(z, wg[:, :0], wu[:, :0], gate_bias=bg, up_bias=bg, out_dtype=E4M3, out_scaling="token")
    h = (torch.nn.functional.silu(bg.float()) * bg.float()).expand(3, Inter)
    _assert_same((q, s), _expect(h.contiguous(), "token"), "token")


def test_mlp_compile_opcheck_and_errors():
    x, wg, wu = _mlp_inputs(4, 64, 130)
    op = torch.ops.triton_ops.fused_gated_mlp_fp8_out.default
    torch.library.opcheck(op, (x, wg, wu, "silu", None, None, None, None, None, None, 3), test_utils=OPCHECKS)
    torch.library.opcheck(op, (x, wg, wu, "silu", None, None, None, None, None, torch.tensor(0.05, device=DEVICE),
                               1), test_utils=OPCHECKS)

    @torch.compile(fullgraph=True)
    def f(x, wg, wu):
        return G.fused_gated_mlp(x, wg, wu, out_dtype=E4M3, out_scaling="token")

    q, s = f(x, wg, wu)
    q0, s0 = G.fused_gated_mlp(x, wg, wu, out_dtype=E4M3, out_scaling="token")
    assert torch.equal(_bits(q), _bits(q0)) and torch.equal(s, s0)
    with pytest.raises(InvalidArgumentError):
        G.fused_gated_mlp(x, wg, wu, out=torch.empty(4, 130, device=DEVICE).half(), out_dtype=E4M3)
    with pytest.raises(InvalidArgumentError):
        G.fused_gated_mlp(x, wg, wu, out_scaling="block")
    with pytest.raises(UnsupportedError):
        G.fused_gated_mlp(x, wg, wu, out_dtype=torch.float8_e5m2)
    with pytest.raises(ShapeError):
        G.fused_gated_mlp(x, wg, wu, out_dtype=E4M3, out_scale=_dev([1.0, 1.0]))
    xq, xs = G.quantize_rows_fp8(x.float())
    gq, gs = G.quantize_rows_fp8(wg.float())
    with pytest.raises(ShapeError):
        G.fused_gated_mlp_fp8(xq, xs[:2], gq, gs, gq, gs, out_dtype=E4M3)
    with pytest.raises(InvalidArgumentError):
        G.fused_gated_mlp_fp8(xq, xs, gq, gs, gq, gs, out_dtype=torch.bfloat16, out_scaling="token")
    with pytest.raises(InvalidArgumentError):
        G._make_plan(x, wg, wu, None, (4, 130), E4M3, 0, False, False,
                     G.GatedMLPConfig(16, 64, 32), out_quant=F8.QUANT_BLOCK)


def test_block_out_configs_are_128_wide_and_fit():
    # stages x (BLOCK_M + 2 BLOCK_N) x BLOCK_K x bytes per block: 227 KB (sm_90) / 163 KB (sm_80) / 99 KB
    # (sm_89) -- the compile check builds them and reports ptxas's figure
    limits = {90: 227 * 1024, 80: 163 * 1024, 89: 99 * 1024}
    for arch, limit in limits.items():
        for dtype, es in ((torch.float16, 2), (torch.float8_e4m3fn, 1), (torch.float32, 4)):
            for c in G.candidate_configs(arch, dtype):
                for aligned in (True, False):
                    b = G.block_out_config(c, arch, dtype, aligned)
                    assert b.block_n == 128 and b == G.block_out_config(c, arch, dtype, aligned)
                    assert b.num_stages * (b.block_m + 2 * b.block_n) * b.block_k * es <= limit, (arch, b)


# ----------------------------------------------------------------------------------------------------
# The chain: norm -> FP8 -> gated MLP (FP8 out) -> FP8 down projection
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scaling", ["block", "token"])
def test_fp8_chain_end_to_end(scaling):
    torch.manual_seed(7)
    M, H, Inter = 24, 256, 384
    x = torch.randn(M, H, device=DEVICE)
    resid = torch.randn(M, H, device=DEVICE)
    w_norm = 1 + 0.1 * torch.randn(H, device=DEVICE)
    wg = torch.randn(Inter, H, device=DEVICE) / math.sqrt(H)
    wu = torch.randn(Inter, H, device=DEVICE) / math.sqrt(H)
    wd = torch.randn(H, Inter, device=DEVICE) / math.sqrt(Inter)
    gq, gs = G.quantize_rows_fp8(wg)
    uq, us = G.quantize_rows_fp8(wu)
    dq, ds = quantize_fp8(wd, granularity="row")

    xq, xs, _ = fused_add_rmsnorm(x, w_norm, residual=resid, out_dtype=E4M3)
    aq, a_s = G.fused_gated_mlp_fp8(xq, xs, gq, gs, uq, us, out_dtype=E4M3, out_scaling=scaling)
    y = fp8_gemm(aq, dq.t(), a_scale=a_s, b_scale=ds.reshape(1, -1), out_dtype=torch.float32)

    # fp32/float64 reference of the unquantized chain
    s = (x + resid).double()
    n = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-6) * w_norm.double()
    want = G.gated_mlp_reference_torch(n, wg.double(), wu.double()) @ wd.double().t()
    got, want = y.double().cpu().numpy(), want.cpu().numpy()
    # Where the bound comes from: the same chain emulated in float64 with the NumPy FP8 reference (the
    # norm's output and the weights per row, the gated product per (1, 128) block, each rounded to e4m3
    # once) reaches 23.9 dB / cosine 0.998 on these inputs -- four e4m3 roundings of ~31 dB each, the two
    # on the projections compounding through the product. The kernels must be within 1 dB of it (per-token
    # output: 2 dB, its codes being rounded twice, see test_mlp_per_token).
    emulated = _emulated_chain(x, resid, w_norm, wg, wu, wd)
    floor = ref.sqnr_db(emulated, want) - (1.0 if scaling == "block" else 2.0)
    assert ref.sqnr_db(got, want) > floor
    cos = float((got * want).sum() / np.sqrt((got * got).sum() * (want * want).sum()))
    assert cos > 0.995


def _emulated_chain(x, resid, w_norm, wg, wu, wd):
    f64 = lambda t: t.double().cpu().numpy()  # noqa: E731
    s = f64(x + resid)
    n = s / np.sqrt((s ** 2).mean(-1, keepdims=True) + 1e-6) * f64(w_norm)

    def qdq(a, gran, block=None):
        q, sc = ref.quantize(a.astype(np.float32), "e4m3fn", gran, block)
        return ref.dequantize(q, sc, gran, block)

    nq = qdq(n, "row")
    g, u = nq @ qdq(f64(wg), "row").T, nq @ qdq(f64(wu), "row").T
    h = g / (1 + np.exp(-g)) * u
    return qdq(h, "block", (1, 128)) @ qdq(f64(wd), "row").T


# ----------------------------------------------------------------------------------------------------
# GPU (pytest -m gpu): real shapes. The fp32-output run may reduce in another order than the FP8 run (other
# warps), so codes are compared to within one e4m3 step and scales to fp32 rounding.
# ----------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("scaling", ["token", "block"])
@pytest.mark.parametrize("rows,hidden", [(16384, 4096), (1, 4096), (199, 5120), (3, 14336)])
def test_gpu_norm_and_rope_real_shapes(scaling, rows, hidden):
    x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(x)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    q, s, _ = fused_add_rmsnorm(x, w, residual=r, out_dtype=E4M3, out_scaling=scaling)
    rq, rs = _expect(fused_add_rmsnorm((x + r).float(), w.float()), scaling)
    # GPU rsqrt (~2 ulp) and a different reduction tree over up to 14336 terms: ~16 fp32 ulp on the scales
    assert torch.allclose(s, rs, rtol=1e-6) and _within_one_step(q.float().cpu(), rq.float().cpu())
    cos, sin = tables(rows, 128, device="cuda")
    q, s = fused_rmsnorm_rope(x, w, cos, sin, head_dim=128, out_dtype=E4M3, out_scaling=scaling)
    rq, rs = _expect(fused_rmsnorm_rope(x.float(), w.float(), cos, sin, head_dim=128), scaling)
    assert torch.allclose(s, rs, rtol=1e-6) and _within_one_step(q.float().cpu(), rq.float().cpu())


@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 16, 128, 2048])
def test_gpu_fp8_chain_real_shapes(M):
    H, Inter = 4096, 14336
    x = torch.randn(M, H, device="cuda", dtype=torch.bfloat16)
    w_norm = torch.ones(H, device="cuda", dtype=torch.bfloat16)
    wg = torch.randn(Inter, H, device="cuda") / math.sqrt(H)
    wu = torch.randn(Inter, H, device="cuda") / math.sqrt(H)
    wd = torch.randn(H, Inter, device="cuda") / math.sqrt(Inter)
    gq, gs = G.quantize_rows_fp8(wg)
    uq, us = G.quantize_rows_fp8(wu)
    dq, ds = quantize_fp8(wd, granularity="row")
    xq, xs = fused_add_rmsnorm(x, w_norm, out_dtype=E4M3)
    aq, a_s = G.fused_gated_mlp_fp8(xq, xs, gq, gs, uq, us, out_dtype=E4M3)
    y = fp8_gemm(aq, dq.t(), a_scale=a_s, b_scale=ds.reshape(1, -1), out_dtype=torch.float32)
    xf = x.float()
    n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
    want = G.gated_mlp_reference_torch(n, wg, wu) @ wd.t()
    # four e4m3 roundings (see test_fp8_chain_end_to_end): ~24 dB on Gaussian data
    assert ref.sqnr_db(y.double().cpu().numpy(), want.double().cpu().numpy()) > 22.0
