"""Per-op reliability contracts found by an adversarial pass over the public entry points: bf16 in the CPU
interpreter, ``out=`` buffers (overlap, autograd), explicit partial rotary, non-tensor and non-integer
arguments, module constructors, transposed weights, fake-tensor tracing, and tuned-config validation."""

from __future__ import annotations

import math

import pytest
import torch

from tests._rope_helpers import tables
from triton_ops.exceptions import InvalidArgumentError, ShapeError
from triton_ops.kernels.gated_mlp import fused_gated_mlp, gated_mlp_reference_torch
from triton_ops.kernels.rmsnorm_rope import FusedRMSNormRoPE, fused_rmsnorm_rope, rmsnorm_rope_reference

from .conftest import DEVICE


# ----------------------------------------------------------------------------------------------------
# bf16: the interpreter's bf16 adds, dots and fp32 -> bf16 casts are wrong; the kernels route around them
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["neox", "gptj"])
@pytest.mark.parametrize("per_head", [False, True])
def test_rmsnorm_rope_bf16_residual_is_the_unfused_add(layout, per_head):
    torch.manual_seed(3)
    x = torch.randn(2, 5, 192, device=DEVICE).bfloat16() * 4
    r = torch.randn_like(x)
    w = torch.randn(64 if per_head else 192, device=DEVICE).bfloat16()
    cos, sin = tables(9, 64, layout, device=DEVICE)
    y, s = fused_rmsnorm_rope(x, w, cos, sin, head_dim=64, residual=r, rotary_layout=layout)
    # the sum is bit-exact torch's bf16 add (an fp32 add rounded to nearest even)
    assert torch.equal(s, x + r)
    # the output is the fp32 reference rounded to nearest even (not truncated): on the GPU the same
    # fp32 math ends in cvt.rn; allow a rare 1-ulp difference from fp32 summation order
    ref = rmsnorm_rope_reference((x + r).float(), w.float(), cos, sin, head_dim=64, rotary_layout=layout)
    ulp = (y.float() - ref.to(torch.bfloat16).float()).abs() / ref.abs().clamp_min(1e-30)
    assert (ulp > 2 ** -7).sum() == 0
    assert (y != ref.to(torch.bfloat16)).float().mean() < 0.02


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_gated_mlp_bf16_is_the_fp32_result_rounded(act):
    """bf16 on the CPU: the fp32 accumulation of exact bf16 products, rounded to nearest even once."""
    torch.manual_seed(4)
    x = torch.randn(37, 48, device=DEVICE).bfloat16()
    wg = (torch.randn(40, 48, device=DEVICE) / 7).bfloat16()
    wu = (torch.randn(40, 48, device=DEVICE) / 7).bfloat16()
    y = fused_gated_mlp(x, wg, wu, act)
    ref = gated_mlp_reference_torch(x.double(), wg.double(), wu.double(), act)
    # fp32 sums of 48 exact products differ from float64 by ~1e-7 relative: far below bf16's ulp, so all
    # but values within that of a rounding boundary round the same way
    assert (y.double() - ref).abs().max() <= 2 ** -8 * ref.abs().max()
    assert (y != ref.to(torch.bfloat16)).float().mean() < 0.01


# ----------------------------------------------------------------------------------------------------
# fused_gated_mlp takes weights in either layout: K-major [I, H] (nn.Linear) or a transposed view of [H, I]
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(5, 64, 48), (3, 7, 19), (70, 96, 130), (1, 16, 1)])
def test_gated_mlp_weight_layouts(dtype, shape):
    M, H, Inter = shape
    torch.manual_seed(M + H)
    x = torch.randn(M, H, device=DEVICE).to(dtype)
    g = (torch.randn(H, Inter, device=DEVICE) / math.sqrt(H)).to(dtype)  # [hidden, intermediate] storage
    u = (torch.randn(H, Inter, device=DEVICE) / math.sqrt(H)).to(dtype)
    ref = gated_mlp_reference_torch(x.double(), g.t().double(), u.t().double())
    tol = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    got = {}
    for name, (wg, wu) in {"mn": (g.t(), u.t()), "k": (g.t().contiguous(), u.t().contiguous()),
                           "mixed": (g.t(), u.t().contiguous())}.items():
        for _ in range(2):  # planned, then a plan hit
            y = fused_gated_mlp(x, wg, wu)
            torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)
        got[name] = y
    # the same products in the same order whatever the layout, up to the config (the MN-major layout takes
    # the unaligned-operand tile): within one output rounding of each other
    torch.testing.assert_close(got["mn"].double(), got["k"].double(), rtol=tol, atol=tol)
    torch.testing.assert_close(got["mixed"], got["mn"], rtol=0, atol=0)


def test_gated_mlp_transposed_weights_backward():
    """Gradients reach a [hidden, intermediate] parameter used through its transposed view."""
    torch.manual_seed(5)
    g = torch.randn(24, 20, device=DEVICE).requires_grad_()
    u = torch.randn(24, 20, device=DEVICE)
    x = torch.randn(3, 24, device=DEVICE, requires_grad=True)
    fused_gated_mlp(x, g.t(), u.t(), "gelu").sum().backward()
    xr, gr = x.detach().double().requires_grad_(), g.detach().double().requires_grad_()
    gated_mlp_reference_torch(xr, gr.t(), u.t().double(), "gelu").sum().backward()
    # fp32 backward against float64 (sums of 20-24 terms): ~1e-6 relative
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g.grad.double(), gr.grad, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# The library's own requirements make every op work on the CPU
# ----------------------------------------------------------------------------------------------------
def test_main_dependencies_exclude_numpy_the_interpreter_cannot_run_with():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    numpy_req = next(Requirement(d) for d in deps if Requirement(d).name == "numpy")
    # numpy 2.3 made int() of a one-element array an error; Triton 3.6's interpreter relies on it
    assert "2.3.0" not in numpy_req.specifier and "2.2.6" in numpy_req.specifier


# ----------------------------------------------------------------------------------------------------
# out= buffers: overlap refused as torch's out= ops refuse it, in place only where the kernel is safe
# ----------------------------------------------------------------------------------------------------
def _rr_inputs(dtype=torch.float32, batch=2):
    torch.manual_seed(6)
    x = torch.randn(batch, 3, 128, device=DEVICE, dtype=dtype)
    w = torch.randn(128, device=DEVICE, dtype=dtype)
    cos, sin = tables(8, 64, device=DEVICE)
    return x, w, cos, sin


@pytest.mark.parametrize("residual", [False, True])
def test_rmsnorm_rope_in_place(residual):
    x, w, cos, sin = _rr_inputs()
    r = torch.randn_like(x) if residual else None
    for target in ("x", "residual") if residual else ("x",):
        for _ in range(2):  # planned, then a plan hit of the in-place signature
            xi, ri = x.clone(), (r.clone() if residual else None)
            buf = xi if target == "x" else ri
            got = fused_rmsnorm_rope(xi, w, cos, sin, residual=ri, out=buf)
            ref = rmsnorm_rope_reference(x, w, cos, sin, residual=r)
            y, s = (got, None) if not residual else got
            assert y is buf
            torch.testing.assert_close(y, ref if not residual else ref[0], rtol=1e-5, atol=1e-5)
            if residual:
                torch.testing.assert_close(s, x + r, rtol=0, atol=0)


def test_rmsnorm_rope_out_overlap_refused():
    x, w, cos, sin = _rr_inputs()
    with pytest.raises(InvalidArgumentError, match="share memory"):
        fused_rmsnorm_rope(x, w, cos, sin, out=torch.empty(1, 3, 128, device=DEVICE).expand(2, 3, 128))
    big = torch.randn(3, 3, 128, device=DEVICE)
    with pytest.raises(InvalidArgumentError, match="partially overlaps x"):
        fused_rmsnorm_rope(big[:2], w, cos, sin, out=big[1:])
    with pytest.raises(InvalidArgumentError, match="cos"):
        tab = torch.randn(6, 128, device=DEVICE)  # out's memory holds the tables too
        fused_rmsnorm_rope(x, w, tab[:, :64], tab[:, 64:], out=tab.view(2, 3, 128))
    # a plan made for a separate out does not carry over to an overlapping one of the same signature
    x2 = big[:1]
    ok = fused_rmsnorm_rope(x2, w, cos, sin, out=big[2:])
    torch.testing.assert_close(ok, rmsnorm_rope_reference(x2, w, cos, sin))
    with pytest.raises(InvalidArgumentError, match="overlaps"):
        fused_rmsnorm_rope(big[1:2], w, cos, sin, out=big[2:].as_strided((1, 3, 128), big.stride(),
                                                                           big[1:2].storage_offset() + 64))


def test_gated_mlp_out_overlap_refused():
    torch.manual_seed(7)
    x = torch.randn(4, 32, device=DEVICE)
    wg, wu = torch.randn(32, 32, device=DEVICE) / 6, torch.randn(32, 32, device=DEVICE) / 6
    with pytest.raises(InvalidArgumentError, match="same memory as x"):
        fused_gated_mlp(x, wg, wu, out=x)
    with pytest.raises(InvalidArgumentError, match="share memory"):
        fused_gated_mlp(x, wg, wu, out=torch.empty(1, 32, device=DEVICE).expand(4, 32))
    with pytest.raises(InvalidArgumentError, match="gate_weight"):
        fused_gated_mlp(x, wg, wu, out=wg[:4])
    # two halves of one buffer share no element: x and out side by side is fine, planned and hit
    buf = torch.randn(4, 64, device=DEVICE)
    for _ in range(2):
        out = fused_gated_mlp(buf[:, :32], wg, wu, out=buf[:, 32:])
        torch.testing.assert_close(out, gated_mlp_reference_torch(buf[:, :32], wg, wu), rtol=1e-5, atol=1e-5)
        buf[:, 32:] = float("nan")
    # the same signature with an overlapping out after a hit: re-checked, refused
    with pytest.raises(InvalidArgumentError, match="overlaps"):
        fused_gated_mlp(buf[:, :32], wg, wu, out=buf[:, 16:48])


@pytest.mark.parametrize("op", ["gated_mlp", "rmsnorm_rope"])
def test_out_with_an_input_that_requires_grad_raises(op):
    if op == "gated_mlp":
        x = torch.randn(3, 16, device=DEVICE)
        wg, wu = torch.randn(8, 16, device=DEVICE), torch.randn(8, 16, device=DEVICE)
        out = torch.empty(3, 8, device=DEVICE)
        call = lambda *t: fused_gated_mlp(*t, out=out)  # noqa: E731
        args = [x, wg, wu]
    else:
        x, w, cos, sin = _rr_inputs()
        out = torch.empty_like(x)
        call = lambda x, w: fused_rmsnorm_rope(x, w, cos, sin, out=out)  # noqa: E731
        args = [x, w]
    for i in range(len(args)):
        grad_args = [a.clone().requires_grad_(j == i) for j, a in enumerate(args)]
        with pytest.raises(InvalidArgumentError, match="autograd"):
            call(*grad_args)
        with torch.no_grad():  # nothing to record: out= is fine
            assert call(*grad_args) is out


# ----------------------------------------------------------------------------------------------------
# fused_rmsnorm_rope: partial rotary and half-width tables are asked for, never guessed
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["neox", "gptj"])
def test_rmsnorm_rope_partial_rotary_and_half_width_tables(layout):
    torch.manual_seed(8)
    x = torch.randn(2, 3, 256, device=DEVICE)
    w = torch.randn(256, device=DEVICE)
    full_cos, full_sin = tables(8, 32, layout, device=DEVICE)  # rotary_dim 32 of head_dim 64
    with pytest.raises(ShapeError, match="rotary_dim=32"):
        fused_rmsnorm_rope(x, w, full_cos, full_sin, head_dim=64, rotary_layout=layout)
    part = fused_rmsnorm_rope(x, w, full_cos, full_sin, head_dim=64, rotary_dim=32, rotary_layout=layout)
    ref = rmsnorm_rope_reference(x, w, full_cos, full_sin, head_dim=64, rotary_layout=layout)
    torch.testing.assert_close(part, ref, rtol=1e-5, atol=1e-5)
    # one value per pair: the first of each pair of the full tables
    half = (slice(None), slice(0, 16)) if layout == "neox" else (slice(None), slice(0, None, 2))
    hc, hs = full_cos[half].contiguous(), full_sin[half].contiguous()
    with pytest.raises(ShapeError, match="half_width_tables=True"):
        fused_rmsnorm_rope(x, w, hc, hs, head_dim=64, rotary_dim=32, rotary_layout=layout)
    got = fused_rmsnorm_rope(x, w, hc, hs, head_dim=64, rotary_dim=32, half_width_tables=True,
                             rotary_layout=layout)
    torch.testing.assert_close(got, part, rtol=0, atol=0)
    # full rotary from half-width tables; head_dim defaults to twice the table width
    hc2, hs2 = (t[:, :32].contiguous() if layout == "neox" else t[:, ::2].contiguous()
                for t in tables(8, 64, layout, device=DEVICE))
    got = fused_rmsnorm_rope(x, w, hc2, hs2, half_width_tables=True, rotary_layout=layout)
    torch.testing.assert_close(got, rmsnorm_rope_reference(x, w, *tables(8, 64, layout, device=DEVICE),
                                                           rotary_layout=layout), rtol=1e-5, atol=1e-5)
    for bad in (31, 66, "32", 32.0):
        with pytest.raises((ShapeError, InvalidArgumentError)):
            fused_rmsnorm_rope(x, w, full_cos, full_sin, head_dim=64, rotary_dim=bad)


def test_rmsnorm_rope_module_partial_rotary():
    m = FusedRMSNormRoPE(256, 64, rotary_dim=32, device=DEVICE)
    x = torch.randn(2, 3, 256, device=DEVICE)
    cos, sin = tables(8, 32, device=DEVICE)
    torch.testing.assert_close(m(x, cos, sin), rmsnorm_rope_reference(x, m.weight, cos, sin, head_dim=64),
                               rtol=1e-5, atol=1e-5)
    assert "rotary_dim=32" in repr(m)


# ----------------------------------------------------------------------------------------------------
# RMSNorm+RoPE backward of an out-of-range position: the forward's contract (NaN), not an IndexError
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("residual", [False, True])
def test_rmsnorm_rope_backward_out_of_range_position_is_nan(residual):
    x, w, cos, sin = _rr_inputs()
    x = x.requires_grad_()
    w = w.clone().requires_grad_()
    r = torch.randn_like(x).requires_grad_() if residual else None
    pos = torch.tensor([[0, 1, 8], [2, -1, 3]], device=DEVICE)  # table has 8 rows: (0, 2) and (1, 1) are out
    got = fused_rmsnorm_rope(x, w, cos, sin, position_ids=pos, residual=r)
    y = got[0] if residual else got
    bad = torch.tensor([[False, False, True], [False, True, False]], device=DEVICE)
    assert torch.isnan(y[bad]).all() and torch.isfinite(y[~bad]).all()
    y.backward(torch.randn_like(y))
    for g in (x.grad,) + ((r.grad,) if residual else ()):
        assert torch.isnan(g[bad]).all() and torch.isfinite(g[~bad]).all()
    assert torch.isnan(w.grad).all()  # summed over every token, the NaN ones included
    # the reference follows the same contract
    yr = rmsnorm_rope_reference(x.detach(), w.detach(), cos, sin, position_ids=pos)
    assert torch.isnan(yr[bad]).all() and torch.isfinite(yr[~bad]).all()


# ----------------------------------------------------------------------------------------------------
# Non-tensor arguments: "is a tensor" is checked first, in every op (never AttributeError, never a
# DeviceError that contradicts itself because numpy arrays have a .device too)
# ----------------------------------------------------------------------------------------------------
def _calls():
    """(name, fn(**overrides)) for every public op, with valid defaults for all tensor arguments."""
    import triton_ops as T

    torch.manual_seed(9)
    x = torch.randn(2, 3, 128, device=DEVICE)
    w = torch.randn(128, device=DEVICE)
    cos, sin = tables(8, 64, device=DEVICE)
    q, k = torch.randn(1, 2, 3, 64, device=DEVICE), torch.randn(1, 1, 3, 64, device=DEVICE)
    xm = torch.randn(4, 32, device=DEVICE)
    wg, wu = torch.randn(16, 32, device=DEVICE), torch.randn(16, 32, device=DEVICE)
    qx, sx = T.quantize_fp8(xm, granularity="row")
    qw, sw = T.quantize_fp8(wg, granularity="row")

    def call(fn, **defaults):
        return lambda **over: fn(**{**defaults, **over})

    return {
        "fused_rmsnorm_rope": call(T.fused_rmsnorm_rope, x=x, weight=w, cos=cos, sin=sin),
        "fused_add_rmsnorm": call(T.fused_add_rmsnorm, x=x, weight=w),
        "apply_rope": call(T.apply_rope, q=q, k=k, cos=cos, sin=sin),
        "fused_gated_mlp": call(T.fused_gated_mlp, x=xm, gate_weight=wg, up_weight=wu),
        "fused_gated_mlp_fp8": call(T.fused_gated_mlp_fp8, x_q=qx, x_scale=sx, gate_q=qw, gate_scale=sw, up_q=qw,
                                    up_scale=sw),
        "quantize_fp8": call(T.quantize_fp8, x=xm),
        "dequantize_fp8": call(T.dequantize_fp8, q=qx, scale=sx),
        "fp8_gemm": call(T.fp8_gemm, a=xm, b=wg.t()),
        "fp8_weight_only_gemm": call(T.fp8_weight_only_gemm, x=xm, w_t=qw.t(), w_scale=sw.reshape(1, -1)),
    }


_TENSOR_ARGS = {
    "fused_rmsnorm_rope": ["x", "weight", "cos", "sin", "position_ids", "residual", "out"],
    "fused_add_rmsnorm": ["x", "weight", "residual", "out"],
    "apply_rope": ["q", "k", "cos", "sin", "position_ids"],
    "fused_gated_mlp": ["x", "gate_weight", "up_weight", "gate_bias", "out"],
    "fused_gated_mlp_fp8": ["x_q", "x_scale", "gate_q", "gate_scale", "up_q", "up_scale"],
    "quantize_fp8": ["x", "scale"],
    "dequantize_fp8": ["q", "scale"],
    "fp8_gemm": ["a", "b", "a_scale", "b_scale", "bias"],
    "fp8_weight_only_gemm": ["x", "w_t", "w_scale", "bias"],
}


@pytest.mark.parametrize("op,arg", [(op, a) for op, args in _TENSOR_ARGS.items() for a in args])
def test_non_tensor_arguments_are_refused_first(op, arg):
    fn = _calls()[op]
    np_value = __import__("numpy").zeros((4, 32), dtype="float32")
    for bad in ([0, 1, 2], np_value, 1.5):
        with pytest.raises(InvalidArgumentError, match=f"{arg} must be a torch.Tensor"):
            fn(**{arg: bad})


# ----------------------------------------------------------------------------------------------------
# Sizes are ints (numpy/torch integers too), never truncated; module configs are checked when built
# ----------------------------------------------------------------------------------------------------
_BAD_SIZES = ["64", 64.0, None, 3.7, True]


def _modules():
    import triton_ops as T

    return {
        "FusedRMSNormRoPE": (lambda n, **kw: T.FusedRMSNormRoPE(n, 64, **kw), 128),
        "FusedRMSNormRoPE.head_dim": (lambda n, **kw: T.FusedRMSNormRoPE(128, n, **kw), 64),
        "FusedAddRMSNorm": (lambda n, **kw: T.FusedAddRMSNorm(n, **kw), 64),
        "FusedGatedMLP": (lambda n, **kw: T.FusedGatedMLP(n, 16, **kw), 32),
        "FusedGatedMLP.intermediate": (lambda n, **kw: T.FusedGatedMLP(32, n, **kw), 16),
        "FusedMLP": (lambda n, **kw: T.FusedMLP(n, 16, **kw), 32),
        "FP8Linear": (lambda n, **kw: T.FP8Linear(n, 16, **kw), 32),
    }


@pytest.mark.parametrize("name", list(_modules()))
def test_module_sizes_are_ints_and_checked_when_built(name):
    build, good = _modules()[name]
    import numpy as np

    assert build(np.int64(good)) is not None  # integer scalars of other types are ints
    for bad in _BAD_SIZES:
        with pytest.raises(InvalidArgumentError, match="must be an int"):
            build(bad)
    with pytest.raises((ShapeError, InvalidArgumentError)):
        build(-good)


def test_module_configs_that_cannot_run_are_refused_when_built():
    import triton_ops as T
    from triton_ops.exceptions import DTypeError, NumericalError

    with pytest.raises(ShapeError, match="even"):
        T.FusedRMSNormRoPE(63 * 2, 63)
    with pytest.raises(ShapeError, match="multiple"):
        T.FusedRMSNormRoPE(100, 64)
    with pytest.raises(ShapeError, match="rotary_dim"):
        T.FusedRMSNormRoPE(128, 64, rotary_dim=80)
    for mk in (lambda **kw: T.FusedRMSNormRoPE(128, 64, **kw), lambda **kw: T.FusedAddRMSNorm(64, **kw)):
        with pytest.raises(NumericalError):
            mk(eps=-1)
        with pytest.raises(NumericalError):
            mk(weight_offset=float("nan"))
        with pytest.raises(DTypeError):
            mk(dtype=torch.int32)
    with pytest.raises(InvalidArgumentError, match="bool"):
        T.FusedGatedMLP(32, 16, bias="yes")
    # meta stays allowed: shapes first, weights later (deferred initialisation)
    assert T.FusedGatedMLP(32, 16, device="meta").weight.is_meta


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("name", list(_modules()))
def test_module_on_cuda_without_a_gpu_is_a_device_error(name):
    from triton_ops.exceptions import DeviceError

    build, good = _modules()[name]
    for dev in ("cuda", "cuda:1", torch.device("cuda"), 0):
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            build(good, device=dev)


def test_op_sizes_are_ints():
    import numpy as np

    import triton_ops as T

    x, w, cos, sin = _rr_inputs()
    ref = T.fused_rmsnorm_rope(x, w, cos, sin, head_dim=64)
    torch.testing.assert_close(T.fused_rmsnorm_rope(x, w, cos, sin, head_dim=np.int32(64)), ref, rtol=0, atol=0)
    for bad in ("abc", 64.0, 4.5, True):  # 64.0 after a planned call of 64 too: no plan is shared with it
        with pytest.raises(InvalidArgumentError, match="head_dim must be an int"):
            T.fused_rmsnorm_rope(x, w, cos, sin, head_dim=bad)
    xm = torch.randn(4, 128, device=DEVICE)
    T.quantize_fp8(xm, granularity="block", block_size=(1, 128))
    for bad in ((1.5, 128), (1.0, 128), ("1", 128), (1, 128, 1), 128):
        with pytest.raises(InvalidArgumentError, match="block_size"):
            T.quantize_fp8(xm, granularity="block", block_size=bad)
        with pytest.raises(InvalidArgumentError, match="block_size"):
            T.FP8Quantizer(granularity="block", block_size=bad)
    q = torch.randn(1, 2, 3, 64, device=DEVICE)
    T.apply_rope(q, None, cos, sin, rotary_dim=64)
    with pytest.raises(InvalidArgumentError, match="rotary_dim must be an int"):
        T.apply_rope(q, None, cos, sin, rotary_dim=64.0)


# ----------------------------------------------------------------------------------------------------
# Every public op under FakeTensorMode and make_fx(tracing_mode="fake"); opcheck of the custom ops that
# the per-op test files do not already check
# ----------------------------------------------------------------------------------------------------
def _fake_cases():
    import triton_ops as T

    torch.manual_seed(10)
    x = torch.randn(2, 3, 128, device=DEVICE)
    w = torch.randn(128, device=DEVICE)
    cos, sin = tables(8, 64, device=DEVICE)
    xm = torch.randn(4, 32, device=DEVICE)
    wg, wu = torch.randn(16, 32, device=DEVICE), torch.randn(16, 32, device=DEVICE)
    qx, sx = T.quantize_fp8(xm, granularity="row")
    qw, sw = T.quantize_fp8(wg, granularity="row")
    return {
        "fused_rmsnorm_rope": (lambda x, w, c, s: T.fused_rmsnorm_rope(x, w, c, s, residual=x), (x, w, cos, sin)),
        "fused_rmsnorm_rope_out": (lambda x, w, c, s, o: T.fused_rmsnorm_rope(x, w, c, s, out=o),
                                   (x, w, cos, sin, torch.empty_like(x))),
        "fused_add_rmsnorm": (lambda x, w: T.fused_add_rmsnorm(x, w, residual=x), (x, w)),
        "apply_rope": (lambda q, k, c, s: T.apply_rope(q, k, c, s),
                       (torch.randn(1, 2, 3, 64, device=DEVICE), torch.randn(1, 1, 3, 64, device=DEVICE), cos, sin)),
        "fused_gated_mlp": (lambda x, a, b: T.fused_gated_mlp(x, a, b), (xm, wg, wu)),
        "fused_gated_mlp_transposed": (lambda x, a, b: T.fused_gated_mlp(x, a.t(), b.t()),
                                       (xm, wg.t().contiguous(), wu.t().contiguous())),
        "fused_gated_mlp_out": (lambda x, a, b, o: T.fused_gated_mlp(x, a, b, out=o),
                                (xm, wg, wu, torch.empty(4, 16, device=DEVICE))),
        "fused_gated_mlp_fp8": (lambda *t: T.fused_gated_mlp_fp8(*t), (qx, sx, qw, sw, qw, sw)),
        "quantize_fp8": (lambda x: T.quantize_fp8(x, granularity="row"), (xm,)),
        "dequantize_fp8": (lambda q, s: T.dequantize_fp8(q, s), (qx, sx)),
        "fp8_gemm": (lambda a, b: T.fp8_gemm(a, b), (torch.randn(80, 32, device=DEVICE), wg.t())),
        "fp8_weight_only_gemm": (lambda x, w, s: T.fp8_weight_only_gemm(x, w.t(), s), (xm, qw, sw.reshape(1, -1))),
    }


def _module_cases():
    import triton_ops as T

    xm = torch.randn(4, 32, device=DEVICE)
    x = torch.randn(2, 3, 128, device=DEVICE)
    cos, sin = tables(8, 64, device=DEVICE)
    return {
        "FusedGatedMLP": (lambda: T.FusedGatedMLP(32, 16, device=DEVICE), (xm,)),
        "FusedGatedMLP_fp8": (lambda: T.FusedGatedMLP(32, 16, fp8=True, device=DEVICE), (xm,)),
        "FusedMLP": (lambda: T.FusedMLP(32, 16, device=DEVICE), (xm,)),
        "FusedMLP_fp8": (lambda: T.FusedMLP(32, 16, device=DEVICE).to_fp8(), (xm,)),
        "FP8Linear": (lambda: T.FP8Linear(32, 16, device=DEVICE), (xm,)),
        "FusedRMSNormRoPE": (lambda: T.FusedRMSNormRoPE(128, 64, device=DEVICE), (x, cos, sin)),
        "FusedAddRMSNorm": (lambda: T.FusedAddRMSNorm(128, device=DEVICE), (x, x)),
    }


def _shapes(out):
    return [(tuple(t.shape), t.dtype) for t in (out if isinstance(out, (tuple, list)) else (out,))
            if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", list(_fake_cases()))
def test_public_op_under_fake_tensors_and_make_fx(name):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    fn, args = _fake_cases()[name]
    real = _shapes(fn(*[a.clone() for a in args]))
    with FakeTensorMode() as mode:
        fake = _shapes(fn(*[mode.from_tensor(a) for a in args]))
    assert fake == real
    graph = make_fx(fn, tracing_mode="fake")(*args)
    assert any(n.op == "call_function" and "triton_ops" in str(n.target) for n in graph.graph.nodes)


@pytest.mark.parametrize("name", list(_module_cases()))
def test_module_under_fake_tensors_and_make_fx(name):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    build, args = _module_cases()[name]
    mod = build()
    with torch.no_grad():
        real = _shapes(mod(*args))
    with FakeTensorMode() as mode, torch.no_grad():
        fake_mod = build()  # built under the mode: its weights are fake too
        assert _shapes(fake_mod(*[mode.from_tensor(a) for a in args])) == real
    state = {**dict(mod.named_parameters()), **dict(mod.named_buffers())}
    graph = make_fx(lambda s, *a: torch.func.functional_call(mod, s, a), tracing_mode="fake")(state, *args)
    assert any(n.op == "call_function" and "triton_ops" in str(n.target) for n in graph.graph.nodes)


def test_opcheck_of_ops_the_per_op_files_do_not_check():
    from triton_ops.kernels.fp8_quantize import quantize_fp8

    x = torch.randn(2, 3, 128, device=DEVICE)
    w = torch.randn(128, device=DEVICE)
    cos, sin = tables(8, 64, device=DEVICE)
    torch.library.opcheck(torch.ops.triton_ops.rmsnorm_rope_out.default,
                          (x, w, cos, sin, None, x.clone(), torch.empty_like(x), torch.empty_like(x), 1e-6, 64,
                           False, 0.0, False))
    xm = torch.randn(4, 32, device=DEVICE)
    g, u = torch.randn(32, 16, device=DEVICE), torch.randn(32, 16, device=DEVICE)
    torch.library.opcheck(torch.ops.triton_ops.fused_gated_mlp.default, (xm, g.t(), u.t(), "silu", None, None))
    qw, sw = quantize_fp8(torch.randn(16, 32, device=DEVICE), granularity="row")
    # test_schema multiplies inputs to detect mutation, which the CPU cannot do for fp8 tensors
    torch.library.opcheck(torch.ops.triton_ops.fp8_weight_only_gemm.default,
                          (xm, qw.t(), sw.reshape(1, -1), None, torch.float32),
                          test_utils=("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_out_buffers_under_torch_compile_fullgraph():
    """The out= checks trace: under torch.compile only out's strides are checked (no addresses exist)."""
    torch._dynamo.reset()
    x, w, cos, sin = _rr_inputs()
    xm = torch.randn(4, 32, device=DEVICE)
    wg, wu = torch.randn(16, 32, device=DEVICE) / 6, torch.randn(16, 32, device=DEVICE) / 6

    @torch.compile(fullgraph=True)
    def f(x, w, cos, sin, o, xm, wg, wu, o2):
        return fused_rmsnorm_rope(x, w, cos, sin, out=o) * 2, fused_gated_mlp(xm, wg, wu, out=o2) * 2

    a, b = f(x, w, cos, sin, torch.empty_like(x), xm, wg, wu, torch.empty(4, 16, device=DEVICE))
    torch.testing.assert_close(a, 2 * rmsnorm_rope_reference(x, w, cos, sin), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b, 2 * gated_mlp_reference_torch(xm, wg, wu), rtol=1e-5, atol=1e-5)
    # raised while tracing; with fullgraph=True dynamo reports it as Unsupported, carrying our message
    with pytest.raises(Exception, match="share memory"):
        f(x, w, cos, sin, torch.empty(1, 3, 128, device=DEVICE).expand(2, 3, 128), xm, wg, wu,
          torch.empty(4, 16, device=DEVICE))


# ----------------------------------------------------------------------------------------------------
# Tuned configs from a hand-edited cache: the launcher's allowed= rules reject the entry (one warning per
# entry), and the heuristic config runs, bit for bit
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def tuned_cache(tmp_path, monkeypatch):
    from triton_ops.autotuner import runtime as rt

    monkeypatch.setenv("TRITON_OPS_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_OPS_USE_TUNED", raising=False)
    monkeypatch.setattr(rt, "_warned", set())
    rt.use_tuned_configs(None)
    yield tmp_path
    rt.use_tuned_configs(None)


def _damaged_entry_runs_the_heuristic(cache_dir, kernel_type, size, entry, call, match):
    import warnings

    from triton_ops.autotuner import runtime as rt
    from triton_ops.autotuner.cache import ConfigCache

    ref = call()
    ConfigCache(cache_dir).set(kernel_type, size, rt.device_key(DEVICE), entry)
    with rt.use_tuned_configs():
        with pytest.warns(RuntimeWarning, match=match):
            out = call()
        rt.forget_lookups()  # the next call asks the cache again (and plans again): no second warning
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            again = call()
    for got in (out, again):
        for a, b in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("entry", [{"ROWS_PER_PROG": 3, "num_warps": 2}, {"ROWS_PER_PROG": 2, "num_warps": 2.0},
                                   {"num_warps": 32}, {"ROWS_PER_PROG": True}])
def test_rmsnorm_rope_damaged_tuned_entry(tuned_cache, entry):
    x, w, cos, sin = _rr_inputs()
    # the launcher's key: rows x hidden x head_dim x rot x itemsize x residual
    _damaged_entry_runs_the_heuristic(tuned_cache, "rmsnorm_rope", (6, 128, 64, 64, 4, 0), entry,
                                      lambda: fused_rmsnorm_rope(x, w, cos, sin, head_dim=64),
                                      "ignoring the tuned config of rmsnorm_rope")


@pytest.mark.parametrize("label", ["junk", "96x64x64_g8_w4_s3_G_tma", "64x64x64_g8_w32_s3_G_ptr", 7])
def test_gated_mlp_damaged_tuned_entry(tuned_cache, label):
    torch.manual_seed(11)
    x = torch.randn(5, 64, device=DEVICE).half()
    wg, wu = (torch.randn(48, 64, device=DEVICE) / 8).half(), (torch.randn(48, 64, device=DEVICE) / 8).half()
    # the launcher's key: (M, hidden, intermediate)
    _damaged_entry_runs_the_heuristic(tuned_cache, "gated_mlp", (5, 64, 48), {"config": label},
                                      lambda: fused_gated_mlp(x, wg, wu), "ignoring the tuned config of gated_mlp")


@pytest.mark.parametrize("entry", [{"name": "h_256", "GROUP_M": 8, "SPLIT_K": 1},  # not a weight-only config
                                   {"name": "small_16", "GROUP_M": 65, "SPLIT_K": 1},
                                   {"name": "small_16", "GROUP_M": 8, "SPLIT_K": 9},
                                   {"name": "small_16", "GROUP_M": 8, "SPLIT_K": 2.0}])
def test_fp8_gemm_damaged_tuned_entry(tuned_cache, entry):
    from triton_ops import fp8_gemm
    from triton_ops.kernels import fp8_gemm as fg

    torch.manual_seed(12)
    M, N, K = 16, 64, 128  # small M from float a: the weight-only kernel
    a, b = torch.randn(M, K, device=DEVICE), torch.randn(K, N, device=DEVICE)
    _damaged_entry_runs_the_heuristic(tuned_cache, fg.KERNEL_TYPE, (M, N, K), entry, lambda: fp8_gemm(a, b),
                                      "ignoring the tuned config of fp8_gemm")


def test_string_and_bool_scalars_are_refused_every_time():
    """float("1e-6") parses: a string eps used to pass validation, and the plan keyed on it then handed
    the string itself to the kernel on the next identical call."""
    import triton_ops as T

    x, w, cos, sin = _rr_inputs()
    for _ in range(2):
        for eps in ("1e-6", True, b"1"):
            with pytest.raises(InvalidArgumentError, match="eps must be a number"):
                T.fused_add_rmsnorm(x, w, eps)
            with pytest.raises(InvalidArgumentError, match="eps must be a number"):
                T.fused_rmsnorm_rope(x, w, cos, sin, eps)
        with pytest.raises(InvalidArgumentError, match="weight_offset must be a number"):
            T.fused_add_rmsnorm(x, w, weight_offset="1")
    import numpy as np

    torch.testing.assert_close(T.fused_add_rmsnorm(x, w, np.float32(1e-5)), T.fused_add_rmsnorm(x, w, 1e-5))


def test_int_flags_do_not_share_the_plan_of_a_bool():
    """True == 1 as a dict key: an int flag after a call with the bool found its plan and skipped the check."""
    import triton_ops as T

    x, w, cos, sin = _rr_inputs()
    q = torch.randn(1, 2, 3, 64, device=DEVICE)
    T.fused_add_rmsnorm(x, w, round_before_weight=True)
    T.fused_rmsnorm_rope(x, w, cos[:, :32].contiguous(), sin[:, :32].contiguous(), half_width_tables=True)
    T.apply_rope(q, None, cos, sin, inplace=False)
    for _ in range(2):
        with pytest.raises(InvalidArgumentError, match="round_before_weight must be a bool"):
            T.fused_add_rmsnorm(x, w, round_before_weight=1)
        with pytest.raises(InvalidArgumentError, match="half_width_tables must be a bool"):
            T.fused_rmsnorm_rope(x, w, cos[:, :32].contiguous(), sin[:, :32].contiguous(), half_width_tables=1)
        with pytest.raises(InvalidArgumentError, match="inplace must be a bool"):
            T.apply_rope(q, None, cos, sin, inplace=0)


def test_meta_tensors_never_find_the_plan_of_cpu_ones():
    """get_device() is -1 for CPU and meta alike: a meta weight after a CPU call of one signature found
    its plan and reached the kernel (torch's 'Cannot copy out of meta tensor')."""
    import triton_ops as T
    from triton_ops.exceptions import DeviceError

    x, w, cos, sin = _rr_inputs()
    xm = torch.randn(4, 32, device=DEVICE)
    wg = torch.randn(16, 32, device=DEVICE)
    lin = T.FP8Linear(32, 16, device=DEVICE)
    T.fused_rmsnorm_rope(x, w, cos, sin)
    T.fused_gated_mlp(xm, wg, wg)
    lin(xm)
    bias = lin.bias
    for _ in range(2):
        with pytest.raises(DeviceError, match="meta"):
            T.fused_rmsnorm_rope(x, w.to("meta"), cos, sin)
        with pytest.raises(DeviceError, match="meta"):
            T.fused_gated_mlp(xm, wg.to("meta"), wg)
        lin.bias = bias.detach().to("meta")
        with pytest.raises(DeviceError, match="meta"):
            lin(xm)
        lin.bias = bias
