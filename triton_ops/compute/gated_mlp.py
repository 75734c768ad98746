"""NumPy reference of the gated MLP: ``act(x @ Wg^T + bg) * (x @ Wu^T + bu)`` in float64.

Activations:

* ``silu``: ``x * sigmoid(x)`` (SwiGLU when gated),
* ``gelu``: the exact GELU ``0.5 * x * (1 + erf(x / sqrt(2)))`` (GeGLU),
* ``gelu_tanh``: the tanh approximation ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``.

Only NumPy and the standard library are used (``math.erf`` for the exact GELU), so this module imports
with no GPU, no Triton and no SciPy.
"""

from __future__ import annotations

import math

import numpy as np

#: Names accepted by :func:`activation` and :func:`gated_mlp`.
ACTIVATIONS = ("silu", "gelu", "gelu_tanh")

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def sigmoid(x) -> np.ndarray:
    """Logistic function, written so neither branch overflows (exp of a non-positive number only)."""
    x = _f64(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def silu(x) -> np.ndarray:
    x = _f64(x)
    return x * sigmoid(x)


def erf(x) -> np.ndarray:
    """Element-wise error function through ``math.erf`` (exact to double precision)."""
    x = _f64(x)
    return _erf(x) if x.size else x.copy()


def gelu(x) -> np.ndarray:
    """Exact (erf) GELU."""
    x = _f64(x)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_tanh(x) -> np.ndarray:
    """tanh-approximated GELU (PyTorch's ``approximate='tanh'``)."""
    x = _f64(x)
    return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def activation(x, name: str) -> np.ndarray:
    """Apply the activation called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name == "silu":
        return silu(x)
    if name == "gelu":
        return gelu(x)
    if name == "gelu_tanh":
        return gelu_tanh(x)
    raise ValueError(f"activation={name!r} is not supported; expected one of {ACTIVATIONS}")


def gated_mlp(x, gate_weight, up_weight, activation_name: str = "silu", gate_bias=None,
              up_bias=None) -> np.ndarray:
    """``act(x @ gate_weight.T + gate_bias) * (x @ up_weight.T + up_bias)`` in float64.

    ``x`` is ``[..., hidden]``; both weights are ``[intermediate, hidden]`` (the ``nn.Linear`` layout);
    biases, when given, are ``[intermediate]``. Returns ``[..., intermediate]``.
    """
    x, wg, wu = _f64(x), _f64(gate_weight), _f64(up_weight)
    if wg.ndim != 2 or wg.shape != wu.shape:
        raise ValueError(f"gate_weight {wg.shape} and up_weight {wu.shape} must be equal 2-D shapes")
    if x.shape[-1] != wg.shape[1]:
        raise ValueError(f"x has hidden size {x.shape[-1]} but the weights expect {wg.shape[1]}")
    g = x @ wg.T
    u = x @ wu.T
    if gate_bias is not None:
        g = g + _f64(gate_bias)
    if up_bias is not None:
        u = u + _f64(up_bias)
    return activation(g, activation_name) * u


def quantize_rows_fp8_e4m3(w) -> tuple[np.ndarray, np.ndarray]:
    """Per-row absmax scaling to the e4m3 range, returning ``(w / scale, scale)`` before rounding.

    The rounding to e4m3 itself needs a float8 type that NumPy lacks; tests round through torch.
    ``scale = amax(|row|) / 448`` (448 is e4m3's largest finite value); all-zero rows get scale 1.
    """
    w = _f64(w)
    amax = np.max(np.abs(w), axis=-1, keepdims=True) if w.shape[-1] else np.zeros(w.shape[:-1] + (1,))
    scale = np.where(amax > 0, amax / 448.0, 1.0)
    return w / scale, scale


__all__ = ["ACTIVATIONS", "sigmoid", "silu", "erf", "gelu", "gelu_tanh", "activation", "gated_mlp",
           "quantize_rows_fp8_e4m3"]
