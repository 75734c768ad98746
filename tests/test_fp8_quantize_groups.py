"""FP8 group shapes beyond (1, 128) / (128, 128), the ``scale_ub`` amax bound, and all-zero / tiny groups.

Every kernel result is compared EXACTLY, code for code and scale for scale, with the NumPy reference
(``triton_ops.compute.fp8``), as in test_fp8_quantize.py: under Triton's interpreter the kernels round to
the FP8 grid in fp32 (ties to even) before the cast, and on a GPU ``cvt.rn.satfinite`` does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from triton_ops.compute import fp8 as ref
from triton_ops.exceptions import DTypeError, InvalidArgumentError, NumericalError, ShapeError
from triton_ops.kernels.fp8_quantize import (
    MAX_ROW_GROUP,
    MIN_SCALE,
    FP8Quantizer,
    block_config,
    dequantize_fp8,
    quantize_fp8,
    row_config,
    rows_sliced,
    scale_shape,
    uses_row_kernel,
)
from triton_ops.launch import plan_counts
from triton_ops.utils import num_sms

from .conftest import DEVICE, HAS_CUDA

FMT = {torch.float8_e4m3fn: "e4m3fn", torch.float8_e5m2: "e5m2"}
FLOATS = (torch.float16, torch.bfloat16, torch.float32)
#: Every group shape the issue lists, plus ragged and full-extent (-1) ones.
GROUPS = [(1, 16), (1, 32), (1, 64), (1, 128), (1, 100), (1, 7), (1, 300), (1, 512), (4, 256), (128, 128),
          (3, 100), (16, 64), (-1, 128), (-1, 7), (1, -1), (2, -1), (-1, -1)]


def _ub_value(ub):
    return None if ub is None else float(ub) if not isinstance(ub, torch.Tensor) else float(ub.item())


def _check(x, bs, dt=torch.float8_e4m3fn, scale=None, scale_ub=None, gran="block"):
    """Quantize with the kernels and the reference; both must agree exactly. Returns (q, s)."""
    q, s = quantize_fp8(x, dtype=dt, granularity=gran, block_size=bs, scale=scale, scale_ub=scale_ub)
    assert q.dtype == dt and tuple(q.shape) == tuple(x.shape) and q.is_contiguous()
    assert s.dtype == torch.float32 and tuple(s.shape) == scale_shape(tuple(x.shape), gran, bs)
    x2 = x.float().cpu().numpy().reshape(-1, x.shape[-1] if x.dim() else 1)
    given_s = None if scale is None else scale.float().cpu().numpy()
    if given_s is not None and gran == "row":
        given_s = given_s.reshape(-1, 1)
    rq, rs = ref.quantize(x2, FMT[dt], gran, bs, given_s, scale_ub=_ub_value(scale_ub))
    np.testing.assert_array_equal(s.cpu().numpy().reshape(np.shape(rs)), rs)
    got = q.float().cpu().numpy().reshape(rq.shape)
    same = (got == rq) | (np.isnan(got) & np.isnan(rq))
    assert same.all(), f"{(~same).sum()} codes differ, e.g. got {got[~same][:5]} want {rq[~same][:5]}"
    return q, s


# ---- every group shape, bit-exact ---------------------------------------------------------------


@pytest.mark.parametrize("bs", GROUPS, ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_group_shapes_match_reference(bs, dtype):
    # 37 rows, 300 columns: no shape here divides both (ragged last groups along M and K)
    x = (torch.randn(37, 300) * 3).to(dtype).to(DEVICE)
    q, s = _check(x, bs)
    gm = 1 if bs[0] == -1 else -(-37 // bs[0])
    gk = 1 if bs[1] == -1 else -(-300 // bs[1])
    assert tuple(s.shape) == (gm, gk)


@pytest.mark.parametrize("bs", [(1, 16), (1, 100), (4, 256), (-1, 128), (-1, -1)], ids=str)
def test_e5m2_groups(bs):
    _check((torch.randn(21, 130) * 1000).to(DEVICE), bs, dt=torch.float8_e5m2)


def test_vllm_group_shape_scale_shapes():
    """vLLM's GroupShape(row, col) with -1 the full extent: the scale shapes over [M, K] = [64, 512]."""
    shapes = {(1, 128): (64, 4), (128, 128): (1, 4), (-1, 128): (1, 4), (1, -1): (64, 1), (-1, -1): (1, 1),
              (1, 16): (64, 32), (4, 256): (16, 2)}
    x = torch.randn(64, 512, device=DEVICE)
    for bs, want in shapes.items():
        assert scale_shape((64, 512), "block", bs) == want
        assert tuple(quantize_fp8(x, granularity="block", block_size=bs)[1].shape) == want
    # (1, -1) is per row and (-1, -1) per tensor, value for value
    q, s = quantize_fp8(x, granularity="block", block_size=(1, -1))
    qr, sr = quantize_fp8(x, granularity="row")
    assert torch.equal(s, sr) and torch.equal(q.view(torch.uint8), qr.view(torch.uint8))
    q, s = quantize_fp8(x, granularity="block", block_size=(-1, -1))
    qt, st_ = quantize_fp8(x, granularity="tensor")
    assert torch.equal(s.reshape(()), st_) and torch.equal(q.view(torch.uint8), qt.view(torch.uint8))


# ---- every kernel path: long rows, big and tall blocks ------------------------------------------------


@pytest.mark.parametrize("shape,bs,path", [
    ((5, 256), (1, 100), "rows"),  # 3 groups of 100 (one ragged) padded to 128 lanes each: a 512-lane tile
    ((5, 8000), (1, 100), "rows sliced"),  # 80 padded groups do not fit 8192 lanes
    ((3, 20000), (1, 100), "rows sliced"),  # rows longer than the largest tile: launched per slice
    ((3, 20000), (1, 5000), "rows sliced"),
    ((2, 20000), (1, 10000), "block phase 0"),  # a group longer than the row kernel takes
    ((300, 300), (-1, 128), "block phase 2"),  # few tall blocks: rows split over programs
    ((300, 300), (-1, -1), "block phase 2"),
    ((300, 300), (256, 128), "block phase 2"),
    ((150, 650), (70, 300), "block phase 1"),  # large blocks, enough of them: one looping program each
    ((70, 40), (-1, 16), "block phase 0"),
], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_kernel_paths(shape, bs, path, dtype):
    M, K = shape
    if not HAS_CUDA:  # the interpreter's nominal 4 SMs pick these paths; a GPU may pick others
        if path.startswith("rows"):
            assert uses_row_kernel(*bs) and rows_sliced(K, bs[1]) == path.endswith("sliced")
        else:
            assert not uses_row_kernel(*bs)
            assert block_config(M, K, *bs, num_sms(DEVICE))["PHASE"] == int(path[-1])
    x = (torch.randn(*shape) * 2).to(dtype).to(DEVICE)
    x[0, :] = 0.0  # an all-zero row inside a group
    _check(x, bs)
    _check(x, bs, scale_ub=0.75)


@pytest.mark.parametrize("g", [7, 100, 129], ids=str)
def test_row_groups_at_tile_boundaries(g):
    for K in (1, g - 1, g, g + 1, 2 * g, 255, 256, 257, 511, 1025):
        _check(torch.randn(2, K, device=DEVICE), (1, g))


@pytest.mark.parametrize("M,bs", [(128, (128, 128)), (129, (128, 128)), (129, (129, 128)), (128, (-1, 128)),
                                  (129, (-1, 128)), (520, (-1, 32)), (9, (3, -1))], ids=str)
def test_blocks_at_tile_boundaries(M, bs):
    # 128 x 128 (16384 lanes) is the largest one-tile block; one more row makes it loop
    _check(torch.randn(M, 200, device=DEVICE), bs)


def test_block_config_is_pure_and_covers_phases():
    for args in [(4096, 4096, 128, 128), (4096, 4096, 4, 256), (4096, 4096, 3, 100), (8192, 4096, -1, 128),
                 (64, 4096, -1, 128), (8192, 8192, 300, 300), (4, 20000, 1, 10000), (1, 1, -1, -1)]:
        cfg = block_config(*args, 132)
        assert cfg == block_config(*args, 132)
        tm, tk = cfg["TILE_M"], cfg["TILE_K"]
        assert tm & (tm - 1) == 0 and tk & (tk - 1) == 0 and tm * tk <= 16384
        if cfg["PHASE"] == 2:
            assert cfg["n_split"] > 1 and cfg["rows_per_split"] % tm == 0
    assert block_config(4096, 4096, 128, 128, 132)["PHASE"] == 0
    assert block_config(8192, 4096, -1, 128, 132)["PHASE"] == 2
    assert block_config(8192, 8192, 300, 300, 132)["PHASE"] == 1
    for g in (16, 100, 128, 1000, 5000, MAX_ROW_GROUP):
        for K in (1, 99, 100, 200, 201, 256, 300, 1000, 4096, 8192, 8193, 30000):
            cfg = row_config(K, g)
            assert cfg == row_config(K, g) and cfg["SINGLE"]
            assert cfg["GP"] >= g and cfg["GP"] & (cfg["GP"] - 1) == 0 and cfg["BLOCK_K"] % cfg["GP"] == 0
            # a tile holds every group of the row, or the row is launched in slices of whole groups
            per_tile = cfg["BLOCK_K"] // cfg["GP"] * g
            sliced = per_tile < K
            assert rows_sliced(K, g) == sliced
    assert uses_row_kernel(1, MAX_ROW_GROUP) and not uses_row_kernel(1, MAX_ROW_GROUP + 1)
    assert uses_row_kernel(1, -1) and not uses_row_kernel(2, 16) and not uses_row_kernel(-1, 128)


# ---- layouts: leading dims, strided and transposed views ---------------------------------------------


@pytest.mark.parametrize("bs", [(1, 16), (1, 24), (4, 32), (-1, 16), (5, -1)], ids=str)
def test_leading_dims_and_strided_inputs(bs):
    _check(torch.randn(4, 6, 40, dtype=torch.float16, device=DEVICE), bs)  # [24, 40] view
    base = torch.randn(40, 2, 70, dtype=torch.bfloat16, device=DEVICE)
    _check(base[:, 1, :], bs)  # row-strided view, read in place
    _check(base[:, 0, ::2], bs)  # non-unit last stride: copied
    _check(base.transpose(0, 2)[:, 0, :], bs)  # transposed view [70, 40]
    _check(torch.randn(70, device=DEVICE), bs)  # 1-D: one row


def test_empty_inputs():
    x = torch.empty(0, 16, device=DEVICE)
    for bs, want in [((-1, 128), (1, 1)), ((1, -1), (0, 1)), ((4, 256), (0, 1)), ((1, 100), (0, 1)),
                     ((-1, -1), (1, 1))]:
        q, s = quantize_fp8(x, granularity="block", block_size=bs)
        assert q.shape == (0, 16) and tuple(s.shape) == want and (s == 1).all()
        assert ref.compute_scale(np.zeros((0, 16), np.float32), "block", block_size=bs).shape == want


# ---- static scales and dequantization ---------------------------------------------------------------


@pytest.mark.parametrize("bs", [(1, 100), (4, 256), (-1, 128), (1, -1), (-1, -1), (3, 7)], ids=str)
def test_static_block_scales(bs):
    x = torch.randn(37, 300, dtype=torch.float16, device=DEVICE)
    shape = scale_shape((37, 300), "block", bs)
    _check(x, bs, scale=torch.rand(*shape, device=DEVICE) + 0.002)


@pytest.mark.parametrize("bs", GROUPS, ids=str)
def test_dequantize_roundtrip(bs):
    x = torch.randn(33, 260, device=DEVICE)
    q, s = quantize_fp8(x, granularity="block", block_size=bs)
    want = ref.dequantize(q.float().cpu().numpy(), s.cpu().numpy(), "block", bs)
    for od in FLOATS:
        y = dequantize_fp8(q, s, out_dtype=od, granularity="block", block_size=bs)
        assert y.dtype == od and y.shape == x.shape and not torch.isnan(y).any()
        # output rounding: fp32 2^-24 relative; fp16 2^-11 (and half its subnormal step, 2^-25, absolute);
        # bf16 2^-8
        rtol, atol = {torch.float32: (1e-6, 0.0), torch.float16: (1e-3, 3e-8), torch.bfloat16: (8e-3, 0.0)}[od]
        np.testing.assert_allclose(y.float().cpu().numpy(), want, rtol=rtol, atol=atol)
    # e4m3 keeps ~31 dB on Gaussian data with any grouping (the bar is 25 dB)
    assert ref.sqnr_db(want, x.cpu().numpy()) >= 25.0


def test_dequantize_leading_dims():
    x = torch.randn(3, 5, 48, device=DEVICE)
    for bs in [(1, 16), (-1, 32), (4, 20)]:
        q, s = quantize_fp8(x, granularity="block", block_size=bs)
        y = dequantize_fp8(q, s, granularity="block", block_size=bs)
        want = ref.dequantize(q.float().cpu().numpy().reshape(15, 48), s.cpu().numpy(), "block", bs)
        # one fp32 product (code x scale) each side, rounded once: 2^-24 relative; 1e-6 is ~16 ulp
        np.testing.assert_allclose(y.cpu().numpy().reshape(15, 48), want, rtol=1e-6)


# ---- scale_ub ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gran,bs", [("row", None), ("block", (1, 128)), ("block", (1, 100)),
                                     ("block", (4, 256)), ("block", (-1, 128)), ("block", (1, -1))], ids=str)
def test_scale_ub_matches_reference(gran, bs):
    x = (torch.randn(37, 300) * 3).to(torch.bfloat16).to(DEVICE)
    x[1, :] = 0.0
    x[2, :] *= 1e-3  # under the bound: unaffected
    for ub in (2.5, torch.tensor(2.5, device=DEVICE), torch.tensor([0.01], device=DEVICE)):
        q, s = _check(x, bs, scale_ub=ub, gran=gran)
        bound = _ub_value(ub)
        assert (s[s != 1.0] <= np.float32(bound) / 448 * (1 + 2**-23)).all()  # amax clamped before the scale
        if gran == "row":
            assert s[1, 0] == 1.0 and (q[1].float() == 0).all()  # all-zero row: still scale 1
    # vLLM's exact formula for the per-token case: scale = min(amax, ub) / 448
    q, s = quantize_fp8(x, granularity="row", scale_ub=2.5)
    # in NumPy float32 (IEEE division; torch on a GPU divides by a Python number through its reciprocal)
    amax = x.float().abs().amax(dim=-1, keepdim=True).cpu().numpy()
    want = np.where(amax > 0, np.minimum(amax, np.float32(2.5)) / np.float32(448), np.float32(1))
    assert np.array_equal(s.cpu().numpy(), np.maximum(want, np.float32(MIN_SCALE)))


def test_scale_ub_saturates_above_the_bound():
    x = torch.tensor([[0.5, -1.0, 4.0, -8.0]], device=DEVICE)
    q, s = quantize_fp8(x, granularity="row", scale_ub=1.0)
    assert s.item() == np.float32(1.0) / np.float32(448.0)
    assert q.float().tolist() == [[224.0, -448.0, 448.0, -448.0]]  # |x| > 1 saturates to +-448
    q2, s2 = quantize_fp8(x, granularity="row", scale_ub=100.0)  # bound above the amax: no effect
    q3, s3 = quantize_fp8(x, granularity="row")
    assert torch.equal(s2, s3) and torch.equal(q2.view(torch.uint8), q3.view(torch.uint8))


def test_scale_ub_values_and_plans():
    """A float bound is part of the plan's key (another value, another result); a tensor bound is read on
    every call (changed in place, the result follows)."""
    x = torch.randn(8, 64, device=DEVICE) * 10
    s1 = quantize_fp8(x, granularity="row", scale_ub=1.0)[1]
    s2 = quantize_fp8(x, granularity="row", scale_ub=2.0)[1]
    assert torch.equal(s1, torch.full_like(s1, np.float32(1.0) / np.float32(448.0)))
    assert torch.equal(s2, torch.full_like(s2, np.float32(2.0) / np.float32(448.0)))
    assert torch.equal(quantize_fp8(x, granularity="row", scale_ub=2)[1], s2)  # an int bound
    ub = torch.tensor(1.0, device=DEVICE)
    assert torch.equal(quantize_fp8(x, granularity="block", block_size=(1, 32), scale_ub=ub)[1],
                       torch.full((8, 2), np.float32(1.0) / np.float32(448.0), device=DEVICE))
    ub.fill_(2.0)
    assert torch.equal(quantize_fp8(x, granularity="block", block_size=(1, 32), scale_ub=ub)[1],
                       torch.full((8, 2), np.float32(2.0) / np.float32(448.0), device=DEVICE))
    ub.fill_(float("nan"))  # a new version of the tensor: checked again
    with pytest.raises(NumericalError, match="scale_ub"):
        quantize_fp8(x, granularity="block", block_size=(1, 32), scale_ub=ub)
    q, s = FP8Quantizer(granularity="block", block_size=(1, 32), scale_ub=1.0)(x)
    assert torch.equal(s, torch.full((8, 2), np.float32(1.0) / np.float32(448.0), device=DEVICE))


def test_scale_ub_errors():
    x = torch.randn(8, 64, device=DEVICE)
    with pytest.raises(InvalidArgumentError, match="scale_ub"):
        quantize_fp8(x, granularity="row", scale=torch.ones(8, 1, device=DEVICE), scale_ub=1.0)
    for gran in ("tensor", "column"):
        with pytest.raises(InvalidArgumentError, match="scale_ub"):
            quantize_fp8(x, granularity=gran, scale_ub=1.0)
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e-50, 1e39, True, "1.0", [1.0]):
        with pytest.raises(InvalidArgumentError, match="scale_ub"):
            quantize_fp8(x, granularity="row", scale_ub=bad)
    with pytest.raises(DTypeError):
        quantize_fp8(x, granularity="row", scale_ub=torch.tensor(1.0, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ShapeError, match="scale_ub"):
        quantize_fp8(x, granularity="row", scale_ub=torch.ones(2, device=DEVICE))
    for bad in (0.0, -2.0, float("inf")):
        with pytest.raises(NumericalError, match="scale_ub"):
            quantize_fp8(x, granularity="row", scale_ub=torch.tensor(bad, device=DEVICE))
    with pytest.raises(InvalidArgumentError, match="scale_ub"):
        FP8Quantizer(granularity="column", scale_ub=1.0)
    with pytest.raises(InvalidArgumentError, match="scale_ub"):
        FP8Quantizer(granularity="row", scale_ub=torch.tensor(1.0))
    with pytest.raises(ValueError, match="scale_ub"):
        ref.quantize(np.ones((2, 2)), granularity="row", scale=np.ones((2, 1)), scale_ub=1.0)


# ---- all-zero, tiny and subnormal groups -------------------------------------------------------------


@pytest.mark.parametrize("gran,bs", [("row", None), ("block", (1, 16)), ("block", (1, 100)), ("block", (4, 256)),
                                     ("block", (-1, 128)), ("tensor", None), ("column", None)], ids=str)
def test_all_zero_groups_get_scale_one(gran, bs):
    x = torch.zeros(8, 300, device=DEVICE)
    q, s = _check(x, bs, gran=gran)
    assert (s == 1.0).all() and (q.float() == 0).all()
    # zero rows next to non-zero ones: only their own groups get 1
    x[4:, :] = torch.randn(4, 300, device=DEVICE)
    q, s = _check(x, bs, gran=gran)
    assert (q[:4].float() == 0).all()
    if gran == "row" or (gran == "block" and bs[0] == 1):
        assert (s[:4] == 1.0).all() and (s[4:] < 1.0).all()


@pytest.mark.parametrize("bs", [None, (1, 16), (1, 100), (4, 256), (-1, 128)], ids=str)
def test_tiny_rows_keep_a_finite_scale(bs):
    gran = "row" if bs is None else "block"
    x = torch.randn(8, 300, device=DEVICE) * 1e-30
    q, s = _check(x, bs, gran=gran)
    assert torch.isfinite(s).all() and (s > 0).all() and (s < 1e-30).all()  # amax / 448, not floored at 1
    qf = q.float()
    assert torch.isfinite(qf).all() and qf.abs().max() == 448
    y = dequantize_fp8(q, s, granularity=gran if bs is None else "block", block_size=bs)
    assert torch.isfinite(y).all()
    # within e4m3's relative step (2^-4) plus the subnormal step of the group's scale
    step = (s.max() * 2**-9).item()
    assert ((y - x).abs() <= 2**-4 * x.abs() + step).all()


@pytest.mark.parametrize("dtype,value", [(torch.float32, 1e-40), (torch.float32, 1e-44), (torch.bfloat16, 1e-39),
                                         (torch.float16, 1e-7), (torch.float16, 6e-8)], ids=str)
@pytest.mark.parametrize("bs", [None, (1, 32), (-1, 64)], ids=str)
def test_subnormal_inputs(dtype, value, bs):
    gran = "row" if bs is None else "block"
    x = (torch.linspace(-1, 1, 5 * 96).reshape(5, 96) * value).to(dtype).to(DEVICE)
    q, s = _check(x, bs, gran=gran)
    assert torch.isfinite(s).all() and (s >= MIN_SCALE).all()
    y = dequantize_fp8(q, s, granularity=gran if bs is None else "block", block_size=bs)
    assert torch.isfinite(y).all() and not torch.isnan(q.float()).any()
    # fp32/bf16 subnormals: the scale is floored at 2^-126, the error at most half e4m3's smallest step of it
    err = (y.double() - x.double()).abs().max().item()
    assert err <= max(2**-4 * x.double().abs().max().item(), s.double().max().item() * 2**-10)
    if dtype != torch.float16:  # 1: a group of zeros (the ramp's middle, or values that round to 0)
        assert ((s == MIN_SCALE) | (s == 1.0)).all()


# ---- the PyTorch path of sm_80 (no FP8 conversion instructions for Triton) ---------------------------------


@pytest.mark.parametrize("bs", [(1, 16), (1, 100), (4, 256), (-1, 128), (1, -1), (-1, -1), (3, 7)], ids=str)
def test_sm80_torch_path_matches_reference(bs, monkeypatch):
    import triton_ops.kernels.fp8_quantize as F
    from triton_ops.launch import clear_plans

    monkeypatch.setattr(F, "_on_sm80", lambda device: True)
    clear_plans()  # plans made with the kernels must not answer these calls
    try:
        x = (torch.randn(37, 300) * 3).to(torch.bfloat16).to(DEVICE)
        x[3, :] = 0.0
        _check(x, bs)
        _check(x, bs, scale_ub=0.5)
        _check(x, bs, scale_ub=torch.tensor(0.5, device=DEVICE))
        q, s = _check(x, bs, scale=torch.rand(*scale_shape((37, 300), "block", bs), device=DEVICE) + 0.01)
        y = dequantize_fp8(q, s, granularity="block", block_size=bs)
        # one fp32 product (code x scale) each side, rounded once: 2^-24 relative; 1e-6 is ~16 ulp
        np.testing.assert_allclose(y.cpu().numpy(), ref.dequantize(q.float().cpu().numpy(), s.cpu().numpy(),
                                                                   "block", bs), rtol=1e-6)
    finally:
        clear_plans()


# ---- validation ------------------------------------------------------------------------------------------


def test_bad_block_sizes():
    x = torch.randn(8, 64, device=DEVICE)
    for bad in ((0, 128), (1, 0), (-2, 128), (128, -3), (True, 128), (1, False), (1.5, 128), (1, 128.0),
                ("1", 128), (1,), (1, 2, 3), 128, "ab", None):
        with pytest.raises(InvalidArgumentError, match="block_size"):
            quantize_fp8(x, granularity="block", block_size=bad)
        with pytest.raises(InvalidArgumentError, match="block_size"):
            FP8Quantizer(granularity="block", block_size=bad)
    with pytest.raises(InvalidArgumentError, match="block_size"):
        dequantize_fp8(quantize_fp8(x)[0], torch.ones(1, 1, device=DEVICE), granularity="block", block_size=(0, 1))
    with pytest.raises(ShapeError):  # (-1, 16) expects [1, 4]
        quantize_fp8(x, granularity="block", block_size=(-1, 16), scale=torch.ones(8, 4, device=DEVICE))
    q, s = quantize_fp8(x, granularity="block", block_size=(-1, 16))
    with pytest.raises(ShapeError):
        dequantize_fp8(q, s, granularity="block", block_size=(1, 16))
    with pytest.raises(ValueError):
        ref.compute_scale(np.ones((2, 2), np.float32), "block", block_size=(0, 1))


def test_plans_are_keyed_on_the_block_shape():
    x = torch.randn(16, 96, device=DEVICE)
    quantize_fp8(x, granularity="block", block_size=(1, 32))
    n = plan_counts()["quantize_fp8"]
    quantize_fp8(x, granularity="block", block_size=(1, 32))  # a plan hit
    assert plan_counts()["quantize_fp8"] == n
    for bs in [(1, 48), (-1, 32), (4, 32)]:
        _check(x, bs)
    assert plan_counts()["quantize_fp8"] == n + 3
    # numpy ints normalise to the plain-int plan, floats never reach one
    m = FP8Quantizer(granularity="block", block_size=(np.int64(-1), np.int32(32)))
    assert m.block_size == (-1, 32) and type(m.block_size[0]) is int
    _, s = m(x)
    assert tuple(s.shape) == (1, 3)


def test_opcheck_and_compile():
    x = torch.randn(8, 64, device=DEVICE)
    op = torch.ops.triton_ops.fp8_quantize.default
    ub = torch.tensor(0.5, device=DEVICE)
    torch.library.opcheck(op, (x, "e4m3fn", "block", -1, 24, None, None))
    torch.library.opcheck(op, (x, "e4m3fn", "block", 3, 20, None, ub))
    torch.library.opcheck(op, (x, "e4m3fn", "row", 1, 1, None, ub))

    @torch.compile(fullgraph=True)
    def f(x):
        q, s = quantize_fp8(x, granularity="block", block_size=(1, 24), scale_ub=0.5)
        return dequantize_fp8(q, s, granularity="block", block_size=(1, 24))

    q, s = quantize_fp8(x, granularity="block", block_size=(1, 24), scale_ub=0.5)
    want = dequantize_fp8(q, s, granularity="block", block_size=(1, 24))
    np.testing.assert_array_equal(f(x).cpu().numpy(), want.cpu().numpy())


@settings(max_examples=10)
@given(m=st.integers(1, 40), k=st.integers(1, 600), bm=st.sampled_from([1, 2, 3, 4, 16, -1]),
       bk=st.sampled_from([1, 5, 16, 33, 64, 100, 128, 256, -1]), scale=st.floats(1e-3, 1e3),
       ub=st.sampled_from([None, 0.01, 1.0]))
def test_property_random_groups(m, k, bm, bk, scale, ub):
    _check((torch.randn(m, k) * scale).to(DEVICE), (bm, bk), scale_ub=ub)


# ---- GPU -----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("bs", [(1, 16), (1, 64), (1, 100), (4, 256), (-1, 128), (256, 128), (1, 10000)], ids=str)
def test_gpu_groups_match_reference(bs):
    x = torch.randn(2048, 20000, device="cuda", dtype=torch.bfloat16)
    _check(x, bs)
    _check(x, bs, scale_ub=2.0)
