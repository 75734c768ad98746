"""compute/ references for RMSNorm and RoPE: closed-form cases and float64 torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from triton_ops.compute.rmsnorm import add_rmsnorm, rmsnorm
from triton_ops.compute.rope import apply_rope, rmsnorm_rope, rope_cos_sin


def test_rmsnorm_constant_row_is_weight():
    # A constant row c has mean square c^2, so with eps=0 the norm is sign(c) * weight exactly.
    x = np.full((2, 8), -3.0)
    w = np.arange(1.0, 9.0)
    np.testing.assert_allclose(rmsnorm(x, w, eps=0.0), -np.broadcast_to(w, (2, 8)), rtol=1e-15)


def test_rmsnorm_matches_torch_float64():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 96))
    w = rng.standard_normal(96)
    xt = torch.tensor(x)
    ref = xt * torch.rsqrt(xt.pow(2).mean(-1, keepdim=True) + 1e-5) * (1.0 + torch.tensor(w))
    np.testing.assert_allclose(rmsnorm(x, w, 1e-5, weight_offset=1.0), ref.numpy(), rtol=1e-12)


def test_per_head_rmsnorm_normalises_each_head():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3 * 16)) * np.repeat([1.0, 10.0, 100.0], 16)
    y = rmsnorm(x, np.ones(16), eps=0.0, head_dim=16).reshape(4, 3, 16)
    np.testing.assert_allclose(np.mean(y * y, axis=-1), 1.0, rtol=1e-12)


def test_add_rmsnorm_returns_sum():
    rng = np.random.default_rng(2)
    x, r, w = rng.standard_normal((2, 32)), rng.standard_normal((2, 32)), rng.standard_normal(32)
    y, s = add_rmsnorm(x, r, w)
    np.testing.assert_allclose(s, x + r)
    np.testing.assert_allclose(y, rmsnorm(x + r, w))


@pytest.mark.parametrize("layout", ["neox", "gptj"])
def test_rope_position_zero_is_identity(layout):
    cos, sin = rope_cos_sin([0], 64, layout=layout)
    x = np.random.default_rng(3).standard_normal((1, 128))
    np.testing.assert_allclose(apply_rope(x, cos, sin, layout=layout), x, rtol=1e-15)


@pytest.mark.parametrize("layout", ["neox", "gptj"])
def test_rope_is_a_rotation(layout):
    # Rotations keep each pair's norm: the whole head's norm is unchanged.
    rng = np.random.default_rng(4)
    cos, sin = rope_cos_sin(np.arange(9), 32, layout=layout)
    x = rng.standard_normal((9, 4 * 32))
    y = apply_rope(x, cos, sin, layout=layout)
    np.testing.assert_allclose(np.linalg.norm(y.reshape(9, 4, 32), axis=-1),
                               np.linalg.norm(x.reshape(9, 4, 32), axis=-1), rtol=1e-12)


def test_rope_quarter_turn_closed_form():
    # neox, rot=2: frequency 1; position pi/2 rotates (a, b) to (-b, a).
    cos, sin = rope_cos_sin([np.pi / 2], 2, layout="neox")
    y = apply_rope(np.array([[3.0, 5.0]]), cos, sin)
    np.testing.assert_allclose(y, [[-5.0, 3.0]], atol=1e-12)


def test_rope_matches_hf_style_torch():
    rng = np.random.default_rng(5)
    b, s, nh, d = 2, 7, 3, 16
    x = rng.standard_normal((b, s, nh * d))
    pos = rng.integers(0, 50, size=(b, s))
    cos, sin = rope_cos_sin(np.arange(50), d)
    xt = torch.tensor(x).view(b, s, nh, d)
    c = torch.tensor(cos)[torch.tensor(pos)].unsqueeze(2)
    sn = torch.tensor(sin)[torch.tensor(pos)].unsqueeze(2)
    rot_half = torch.cat([-xt[..., d // 2:], xt[..., : d // 2]], dim=-1)
    ref = (xt * c + rot_half * sn).reshape(b, s, nh * d)
    np.testing.assert_allclose(apply_rope(x, cos, sin, position_ids=pos), ref.numpy(), rtol=1e-12)


def test_partial_rotary_passes_tail_through():
    rng = np.random.default_rng(6)
    cos, sin = rope_cos_sin(np.arange(4), 8)
    x = rng.standard_normal((4, 2 * 32))
    y = apply_rope(x, cos, sin, head_dim=32)
    np.testing.assert_array_equal(y.reshape(4, 2, 32)[..., 8:], x.reshape(4, 2, 32)[..., 8:])
    assert not np.allclose(y.reshape(4, 2, 32)[1:, :, :8], x.reshape(4, 2, 32)[1:, :, :8])


def test_gptj_equals_neox_on_permuted_channels():
    # Interleaved pairs (2i, 2i+1) are the neox pairs (i, i + d/2) after a channel permutation.
    rng = np.random.default_rng(7)
    d = 16
    perm = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])
    x = rng.standard_normal((5, d))
    cn, sn = rope_cos_sin(np.arange(5), d, layout="neox")
    cg, sg = rope_cos_sin(np.arange(5), d, layout="gptj")
    y_g = apply_rope(x, cg, sg, layout="gptj")
    y_n = apply_rope(x[:, perm], cn, sn, layout="neox")
    np.testing.assert_allclose(y_g[:, perm], y_n, rtol=1e-12)


def test_rmsnorm_rope_composes():
    rng = np.random.default_rng(8)
    x, r, w = rng.standard_normal((2, 3, 64)), rng.standard_normal((2, 3, 64)), rng.standard_normal(64)
    cos, sin = rope_cos_sin(np.arange(3), 32)
    y, s = rmsnorm_rope(x, w, cos, sin, head_dim=32, residual=r)
    np.testing.assert_allclose(y, apply_rope(rmsnorm(x + r, w), cos, sin, head_dim=32))
    np.testing.assert_allclose(s, x + r)
