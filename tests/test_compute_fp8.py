"""The NumPy FP8 reference against PyTorch's float8 casts and closed-form cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from triton_ops.compute import fp8

FORMATS = [("e4m3fn", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)]


@pytest.mark.parametrize("fmt,dt", FORMATS)
def test_decode_matches_torch_for_all_codes(fmt, dt):
    codes = np.arange(256, dtype=np.uint8)
    want = torch.from_numpy(codes).view(dt).double().numpy()
    got = fp8.decode(codes, fmt)
    assert np.array_equal(np.isnan(want), np.isnan(got))
    assert np.array_equal(want[~np.isnan(want)], got[~np.isnan(got)])


@pytest.mark.parametrize("fmt,dt", FORMATS)
def test_round_and_encode_match_torch_in_range(fmt, dt):
    rng = np.random.default_rng()
    x = (rng.standard_normal(200_000) * rng.choice([1e-5, 1e-3, 1, 30, 300], 200_000)).astype(np.float32)
    x = x[np.abs(x) < fp8.fp8_max(fmt)]
    t = torch.from_numpy(x).to(dt)
    assert np.array_equal(fp8.round_to_fp8(x, fmt), t.double().numpy())
    assert np.array_equal(fp8.encode(x, fmt), t.view(torch.uint8).numpy())


@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2"])
def test_saturation_nan_and_signed_zero(fmt):
    m = fp8.fp8_max(fmt)
    r = fp8.round_to_fp8([1e30, -1e30, np.inf, -np.inf, np.nan, -0.0, m * 1.03], fmt)
    assert list(r[:4]) == [m, -m, m, -m] and np.isnan(r[4]) and r[5] == 0 and np.signbit(r[5]) and r[6] == m


def test_ties_round_to_even():
    # e4m3 around 1: step 1/8. 1 + 1/16 is a tie between 1 (even mantissa 000) and 1.125 (001).
    assert fp8.round_to_fp8([1 + 1 / 16, 1 + 3 / 16, 2 ** -9 * 1.5], "e4m3fn").tolist() == [1.0, 1.25, 2 ** -8]


def test_scales_are_safe_and_shaped():
    x = np.zeros((5, 7), np.float32)
    x[1, 2] = 448.0 * 3
    x[2, :] = np.nan
    s = fp8.compute_scale(x, "row")
    assert s.shape == (5, 1) and s[0, 0] == 1.0 and s[1, 0] == 3.0 and s[2, 0] == 1.0
    assert fp8.compute_scale(x, "column").shape == (1, 7)
    assert fp8.compute_scale(x, "tensor").shape == ()
    assert fp8.compute_scale(x, "block", block_size=(2, 4)).shape == (3, 2)
    assert fp8.scale_from_amax(np.float32(1e-45)) == np.float32(fp8.MIN_SCALE)


@pytest.mark.parametrize("gran,bs", [("tensor", None), ("row", None), ("column", None), ("block", (1, 128)),
                                     ("block", (128, 128))])
def test_quantize_roundtrip_sqnr(gran, bs):
    x = np.random.default_rng().standard_normal((130, 300)).astype(np.float32)
    q, s = fp8.quantize(x, "e4m3fn", gran, bs)
    assert np.all(np.abs(q) <= 448)
    # e4m3 keeps 3 mantissa bits: a uniform relative error of up to 2^-4 gives ~31 dB on Gaussian data;
    # the issue asks for >= 25 dB.
    assert fp8.sqnr_db(fp8.dequantize(q, s, gran, bs), x) >= 25.0


def test_scaled_gemm_matches_manual():
    rng = np.random.default_rng()
    a, b = rng.standard_normal((9, 260)), rng.standard_normal((260, 11))
    qa, sa = fp8.quantize(a, granularity="row")
    qb, sb = fp8.quantize(b, granularity="column")
    bias = rng.standard_normal(11)
    want = (qa * sa) @ (qb * sb) + bias
    np.testing.assert_allclose(fp8.scaled_gemm(qa, qb, sa, sb, a_granularity="row", b_granularity="column",
                                               bias=bias), want, rtol=1e-12)
    assert fp8.relative_error(want, want) == 0 and math.isinf(fp8.sqnr_db(want, want))


@given(st.lists(st.floats(min_value=-440, max_value=440, width=32), min_size=1, max_size=64))
def test_property_round_matches_torch(vals):
    x = np.asarray(vals, np.float32)
    assert np.array_equal(fp8.round_to_fp8(x), torch.from_numpy(x).to(torch.float8_e4m3fn).double().numpy())
