"""RMSNorm reference (NumPy, float64).

``y = x / sqrt(mean(x^2) + eps) * (weight_offset + weight)``

* full-row norm: ``weight`` has ``hidden`` entries and the mean runs over the whole last dim;
* per-head norm (QK-norm as in Qwen3/Gemma3): ``weight`` has ``head_dim`` entries and each head of
  ``head_dim`` channels inside the row is normalised on its own;
* residual: the norm is taken of ``x + residual``, and that sum is returned too (pre-norm blocks carry it
  to the next layer).
"""

from __future__ import annotations

import numpy as np


def rmsnorm(x, weight, eps: float = 1e-6, *, weight_offset: float = 0.0, head_dim: int | None = None):
    """Normalise over the last dim (or over each ``head_dim`` group of it). Returns float64."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    hidden = x.shape[-1]
    group = hidden if head_dim is None else int(head_dim)
    if hidden % group:
        raise ValueError(f"hidden={hidden} is not a multiple of head_dim={group}")
    if w.shape != (group,):
        raise ValueError(f"weight has shape {w.shape}, expected ({group},)")
    xg = x.reshape(*x.shape[:-1], hidden // group, group)
    rstd = 1.0 / np.sqrt(np.mean(xg * xg, axis=-1, keepdims=True) + eps)
    y = xg * rstd * (weight_offset + w)
    return y.reshape(x.shape)


def add_rmsnorm(x, residual, weight, eps: float = 1e-6, *, weight_offset: float = 0.0,
                head_dim: int | None = None):
    """``(rmsnorm(x + residual), x + residual)``."""
    s = np.asarray(x, dtype=np.float64) + np.asarray(residual, dtype=np.float64)
    return rmsnorm(s, weight, eps, weight_offset=weight_offset, head_dim=head_dim), s
