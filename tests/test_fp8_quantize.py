"""FP8 quantize/dequantize kernels against the NumPy reference (interpreter on CPU, real GPU when marked).

Under Triton's interpreter the kernels round to the FP8 grid in fp32 before the cast (the interpreter's
own fp32->fp8 cast rounds ties away from zero and can lose the exponent carry), so results are compared
EXACTLY, code for code, with the reference; on a GPU the hardware cvt.rn.satfinite is compared exactly
with ``torch.Tensor.to(float8)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from triton_ops.compute import fp8 as ref
from triton_ops.exceptions import (
    DeviceError,
    DTypeError,
    InvalidArgumentError,
    NumericalError,
    ShapeError,
    TritonOpsError,
)
from triton_ops.kernels.fp8_quantize import (
    ROW_BLOCKS,
    dequantize_fp8,
    quantize_fp8,
    row_config,
    scale_shape,
)

from .conftest import DEVICE

FP8_INPUT_OPCHECKS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
FMT = {torch.float8_e4m3fn: "e4m3fn", torch.float8_e5m2: "e5m2"}


def _check(x, gran, bs=None, dt=torch.float8_e4m3fn, scale=None):
    q, s = quantize_fp8(x, dtype=dt, granularity=gran, block_size=bs, scale=scale)
    assert q.dtype == dt and tuple(q.shape) == tuple(x.shape) and q.is_contiguous()
    assert s.dtype == torch.float32 and tuple(s.shape) == scale_shape(tuple(x.shape), gran, bs)
    x2 = x.float().cpu().numpy()
    if gran != "tensor":
        x2 = x2.reshape(-1, x.shape[-1])
    given_s = None if scale is None else scale.float().cpu().numpy().reshape(
        ref.compute_scale(x2, gran, FMT[dt], bs).shape)
    rq, rs = ref.quantize(x2, FMT[dt], gran, bs, given_s)
    np.testing.assert_array_equal(s.cpu().numpy().reshape(np.shape(rs)), rs)
    got = q.float().cpu().numpy().reshape(rq.shape)
    same = (got == rq) | (np.isnan(got) & np.isnan(rq))
    assert same.all(), f"{(~same).sum()} codes differ, e.g. got {got[~same][:5]} want {rq[~same][:5]}"
    return q, s


@pytest.mark.parametrize("gran,bs", [("tensor", None), ("row", None), ("column", None), ("block", (1, 128)),
                                     ("block", (128, 128)), ("block", (16, 64))])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_granularities_match_reference(gran, bs, dtype):
    x = (torch.randn(37, 300) * 3).to(dtype).to(DEVICE)
    _check(x, gran, bs)


def test_special_values_saturate_and_keep_nan():
    x = torch.randn(6, 200) * 2
    x[0, 0], x[1, 1], x[1, 2] = float("nan"), float("inf"), -float("inf")
    x[2, :] = 0.0
    x[3, 5] = 1e30  # a huge finite value dominates its row's scale
    q, s = _check(x.to(DEVICE), "row")
    qf = q.float().cpu()
    assert torch.isnan(qf[0, 0]) and torch.isnan(qf).sum() == 1
    assert qf[1, 1] == 448 and qf[1, 2] == -448  # inf saturates, does not take part in the amax
    assert s[2, 0] == 1.0 and (qf[2] == 0).all()  # all-zero row: safe scale
    _check(x.to(DEVICE), "tensor")
    # static scale far too small: everything saturates to +-448, nothing becomes inf/NaN
    q2, _ = quantize_fp8(x.to(DEVICE), scale=torch.tensor(1e-6, device=DEVICE))
    assert torch.isnan(q2.float()).sum() == 1 and q2.float().nan_to_num(0).abs().max() == 448


@pytest.mark.parametrize("dt", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_formats_and_long_rows(dt):
    _check((torch.randn(3, 9000) * 100).to(DEVICE), "row", dt=dt)  # longer than the largest tile: 2 passes
    _check(torch.randn(3, 9000, dtype=torch.bfloat16).to(DEVICE), "block", (1, 128), dt=dt)


def test_non_contiguous_and_nd_inputs():
    base = torch.randn(40, 2, 70, dtype=torch.float16, device=DEVICE)
    _check(base[:, 1, :], "row")  # row-strided view
    _check(base[:, 0, ::2], "row")  # non-unit last stride: copied
    _check(base.transpose(0, 2)[:, 0, :], "column")  # transposed view, read in place
    _check(torch.randn(4, 6, 40, dtype=torch.float16, device=DEVICE), "row")


def test_static_scales():
    x = torch.randn(37, 300, dtype=torch.float16, device=DEVICE)
    _check(x, "row", scale=torch.rand(37, 1, device=DEVICE) + 0.01)
    _check(x, "column", scale=torch.rand(1, 300, device=DEVICE) + 0.01)
    _check(x, "tensor", scale=torch.tensor([0.02], device=DEVICE))
    _check(x, "block", (16, 128), scale=torch.rand(3, 3, device=DEVICE) + 0.01)


@pytest.mark.parametrize("gran,bs", [("tensor", None), ("row", None), ("column", None), ("block", (1, 128))])
def test_dequantize_roundtrip(gran, bs):
    x = torch.randn(33, 260, device=DEVICE)
    q, s = quantize_fp8(x, granularity=gran, block_size=bs)
    for od in (torch.float32, torch.float16):
        y = torch.full_like(x, float("nan")).to(od)
        y = dequantize_fp8(q, s, out_dtype=od, granularity="block" if bs else None, block_size=bs)
        assert y.dtype == od and not torch.isnan(y).any()
        want = ref.dequantize(q.float().cpu().numpy(), s.cpu().numpy(), gran, bs)
        # output rounding: 2^-11 relative for fp16 normals, half of fp16's subnormal step (2^-25 ~ 3e-8)
        # absolute below 2^-14 (tiny Gaussian values land there), 2^-24 for fp32
        fp16 = od == torch.float16
        np.testing.assert_allclose(y.float().cpu().numpy(), want, rtol=1e-3 if fp16 else 1e-6,
                                   atol=3e-8 if fp16 else 0.0)
    # e4m3 on Gaussian data: ~31 dB (3 mantissa bits); the bar is 25 dB
    assert ref.sqnr_db(y.float().cpu().numpy(), x.cpu().numpy()) >= 25.0


def test_empty_inputs():
    for gran in ("tensor", "row", "column"):
        q, s = quantize_fp8(torch.empty(0, 16, device=DEVICE), granularity=gran)
        assert q.shape == (0, 16) and s.shape == scale_shape((0, 16), gran, None)
    assert dequantize_fp8(torch.empty(0, 4, dtype=torch.float8_e4m3fn, device=DEVICE),
                          torch.ones((), device=DEVICE)).shape == (0, 4)


def test_bad_inputs():
    x = torch.randn(8, 32, device=DEVICE)
    with pytest.raises(DTypeError):
        quantize_fp8(x.to(torch.int32))
    with pytest.raises(InvalidArgumentError):
        quantize_fp8(x, dtype=torch.float16)
    with pytest.raises(InvalidArgumentError):
        quantize_fp8(x, granularity="channelwise")
    with pytest.raises(InvalidArgumentError):
        quantize_fp8(x, granularity="block", block_size=(1, 0))
    with pytest.raises(InvalidArgumentError):
        quantize_fp8(x, granularity="block")
    with pytest.raises(ShapeError):
        quantize_fp8(x, granularity="row", scale=torch.ones(7, 1, device=DEVICE))
    with pytest.raises(ShapeError):
        quantize_fp8(x, granularity="block", block_size=(1, 16), scale=torch.ones(8, 3, device=DEVICE))
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(NumericalError):
            quantize_fp8(x, scale=torch.tensor(bad, device=DEVICE))
    with pytest.raises(ShapeError):
        dequantize_fp8(quantize_fp8(x)[0], torch.ones(3, 3, device=DEVICE))
    with pytest.raises(TritonOpsError):
        quantize_fp8("not a tensor")


def test_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(DeviceError):
        quantize_fp8(torch.randn(4, 4))


def test_row_config_is_pure_and_covers_sizes():
    for K in (1, 3, 199, 256, 257, 4096, 5120, 8192, 14336, 100_000):
        cfg = row_config(K)
        assert cfg == row_config(K) and cfg["BLOCK_K"] in ROW_BLOCKS
        assert cfg["SINGLE"] == (cfg["BLOCK_K"] >= K)
        assert row_config(K, 128)["BLOCK_K"] % 128 == 0


def test_opcheck_and_compile():
    x = torch.randn(8, 64, device=DEVICE)
    op = torch.ops.triton_ops.fp8_quantize.default
    torch.library.opcheck(op, (x, "e4m3fn", "row", 1, 1, None))
    torch.library.opcheck(op, (x, "e4m3fn", "block", 1, 32, None))
    q, s = quantize_fp8(x, granularity="row")
    # test_schema multiplies the inputs to detect mutation, which torch's CPU kernels cannot do for fp8
    # tensors ("mul_cpu_reduced_float" not implemented for Float8_e4m3fn): the other checks run.
    torch.library.opcheck(torch.ops.triton_ops.fp8_dequantize.default, (q, s, "row", 1, 1, torch.float32),
                          test_utils=FP8_INPUT_OPCHECKS)

    @torch.compile(fullgraph=True)
    def f(x):
        q, s = quantize_fp8(x, granularity="row")
        return dequantize_fp8(q, s, out_dtype=torch.float32)

    np.testing.assert_array_equal(f(x).cpu().numpy(), (q.float() * s).cpu().numpy())


@settings(max_examples=8)
@given(m=st.integers(1, 20), k=st.integers(1, 300), gran=st.sampled_from(["tensor", "row", "column"]),
       scale=st.floats(1e-3, 1e3))
def test_property_random_shapes(m, k, gran, scale):
    _check((torch.randn(m, k) * scale).to(DEVICE), gran)


# ---- GPU ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(16384, 4096), (1, 14336), (3, 5120), (199, 3584)])
@pytest.mark.parametrize("gran", ["row", "tensor", "column"])
def test_gpu_matches_torch_cast(shape, gran):
    x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * 5
    q, s = quantize_fp8(x, granularity=gran)
    want = (x.float() * (1.0 / s)).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(q.view(torch.uint8), want.view(torch.uint8))


@pytest.mark.gpu
def test_gpu_block_and_reference():
    x = torch.randn(1000, 4096, device="cuda", dtype=torch.bfloat16)
    for bs in ((1, 128), (128, 128)):
        _check(x, "block", bs)
