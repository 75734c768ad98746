"""The NumPy gated-MLP reference against closed forms and float64 torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from triton_ops.compute import gated_mlp as ref

# float64 against float64: only the order of operations differs, ~1e-15 relative.
TOL64 = dict(rtol=1e-12, atol=1e-12)


def test_closed_forms():
    # silu(0) = 0, silu(x) -> x for large x, -> 0 for very negative x.
    np.testing.assert_allclose(ref.silu([0.0, 50.0, -50.0]), [0.0, 50.0, -50.0 * math.exp(-50.0)], **TOL64)
    # Phi(1) = 0.8413447460685429 (normal CDF), so gelu(1) = Phi(1), gelu(-1) = -(1 - Phi(1)).
    np.testing.assert_allclose(ref.gelu([0.0, 1.0, -1.0]), [0.0, 0.8413447460685429, -0.15865525393145707],
                               **TOL64)
    # tanh form at 1: 0.5 * (1 + tanh(sqrt(2/pi) * 1.044715)).
    expect = 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * 1.044715))
    np.testing.assert_allclose(ref.gelu_tanh([1.0]), [expect], **TOL64)


def test_sigmoid_does_not_overflow():
    with np.errstate(over="raise"):
        s = ref.sigmoid([-1000.0, 1000.0, 0.0])
    np.testing.assert_allclose(s, [0.0, 1.0, 0.5], **TOL64)


@pytest.mark.parametrize("name,fn", [
    ("silu", F.silu),
    ("gelu", F.gelu),
    ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh")),
])
def test_activations_match_torch(name, fn):
    x = torch.randn(257, dtype=torch.float64) * 4
    np.testing.assert_allclose(ref.activation(x.numpy(), name), fn(x).numpy(), **TOL64)


def test_erf_matches_math_and_handles_empty():
    x = np.linspace(-4, 4, 33)
    np.testing.assert_allclose(ref.erf(x), [math.erf(v) for v in x], **TOL64)
    assert ref.erf(np.zeros((0, 3))).shape == (0, 3)


@pytest.mark.parametrize("act", ref.ACTIVATIONS)
@pytest.mark.parametrize("bias", [False, True])
def test_gated_mlp_matches_torch(act, bias):
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    wg = torch.randn(17, 24, dtype=torch.float64)
    wu = torch.randn(17, 24, dtype=torch.float64)
    bg = torch.randn(17, dtype=torch.float64) if bias else None
    bu = torch.randn(17, dtype=torch.float64) if bias else None
    g = F.linear(x, wg, bg)
    u = F.linear(x, wu, bu)
    acts = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}
    expect = (acts[act](g) * u).numpy()
    got = ref.gated_mlp(x.numpy(), wg.numpy(), wu.numpy(), act,
                        None if bg is None else bg.numpy(), None if bu is None else bu.numpy())
    assert got.shape == (2, 5, 17)
    np.testing.assert_allclose(got, expect, **TOL64)


def test_gated_mlp_rejects_bad_input():
    x, w = np.ones((3, 4)), np.ones((5, 4))
    with pytest.raises(ValueError, match="activation"):
        ref.gated_mlp(x, w, w, "relu")
    with pytest.raises(ValueError, match="hidden"):
        ref.gated_mlp(np.ones((3, 6)), w, w)
    with pytest.raises(ValueError, match="equal"):
        ref.gated_mlp(x, w, np.ones((6, 4)))


def test_quantize_rows_scale():
    w = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    q, s = ref.quantize_rows_fp8_e4m3(w)
    np.testing.assert_allclose(s[:, 0], [2.0 / 448.0, 1.0])
    np.testing.assert_allclose(np.abs(q).max(axis=1), [448.0, 0.0])
    np.testing.assert_allclose(q * s, w, **TOL64)
