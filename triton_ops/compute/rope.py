"""Rotary position embedding references (NumPy, float64), and RMSNorm followed by RoPE.

Two layouts, each with cos/sin tables built the way Hugging Face builds them:

* ``"neox"`` (rotate-half, Llama/NeoX): frequencies ``f`` of length ``rot/2`` are stored as
  ``cat(f, f)``; channel ``d < rot/2`` pairs with ``d + rot/2``:
  ``out[d] = x[d]*cos[d] - x[d+rot/2]*sin[d]`` and ``out[d+rot/2] = x[d+rot/2]*cos + x[d]*sin``.
* ``"gptj"`` (interleaved pairs): ``f`` is stored as ``repeat_interleave(f, 2)``; channel ``2i`` pairs with
  ``2i+1``: ``out[2i] = x[2i]*cos - x[2i+1]*sin`` and ``out[2i+1] = x[2i+1]*cos + x[2i]*sin``.

Partial rotary: tables narrower than ``head_dim`` (``rot < head_dim``) rotate the first ``rot`` channels of
each head and pass the rest through (GPT-NeoX, Phi, GLM).
"""

from __future__ import annotations

import numpy as np

from .rmsnorm import rmsnorm

LAYOUTS = ("neox", "gptj")


def rope_frequencies(rotary_dim: int, base: float = 10000.0) -> np.ndarray:
    """Inverse frequencies ``base^(-2i/rot)`` for ``i < rot/2``."""
    if rotary_dim % 2:
        raise ValueError(f"rotary_dim must be even, got {rotary_dim}")
    return base ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)


def rope_cos_sin(positions, rotary_dim: int, base: float = 10000.0, layout: str = "neox"):
    """``(cos, sin)`` tables of shape ``[len(positions), rotary_dim]`` in the layout's convention."""
    pos = np.asarray(positions, dtype=np.float64).reshape(-1)
    ang = np.outer(pos, rope_frequencies(rotary_dim, base))  # [P, rot/2]
    if layout == "neox":
        ang = np.concatenate([ang, ang], axis=-1)
    elif layout == "gptj":
        ang = np.repeat(ang, 2, axis=-1)
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return np.cos(ang), np.sin(ang)


def _partner(x: np.ndarray, layout: str) -> np.ndarray:
    """The rotation partner of every channel, with the sign folded in (``rotate_half`` / ``rotate_every_two``)."""
    if layout == "neox":
        half = x.shape[-1] // 2
        return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = np.empty_like(x)
    out[..., 0::2] = -x[..., 1::2]
    out[..., 1::2] = x[..., 0::2]
    return out


def apply_rope(x, cos, sin, *, head_dim: int | None = None, layout: str = "neox", position_ids=None):
    """Rotate every head of ``x [..., seq, hidden]``.

    ``cos``/``sin`` are ``[rows, rot]`` tables; token ``(b, s)`` uses row ``position_ids[b, s]`` (or
    ``position_ids[s]``, or ``s`` when None). ``head_dim`` defaults to ``rot``.
    """
    x = np.asarray(x, dtype=np.float64)
    cos = np.asarray(cos, dtype=np.float64)
    sin = np.asarray(sin, dtype=np.float64)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    rot = cos.shape[-1]
    head_dim = rot if head_dim is None else int(head_dim)
    if rot % 2 or rot > head_dim or x.shape[-1] % head_dim:
        raise ValueError(f"bad sizes: hidden={x.shape[-1]}, head_dim={head_dim}, rotary_dim={rot}")
    seq = x.shape[-2] if x.ndim >= 2 else 1
    if position_ids is None:
        pos = np.broadcast_to(np.arange(seq), x.shape[:-1])
    else:
        pos = np.broadcast_to(np.asarray(position_ids), x.shape[:-1])
    c = cos[pos][..., None, :]  # [..., seq, 1, rot]
    s = sin[pos][..., None, :]
    heads = x.reshape(*x.shape[:-1], x.shape[-1] // head_dim, head_dim)
    xr, xp = heads[..., :rot], heads[..., rot:]
    rotated = xr * c + _partner(xr, layout) * s
    return np.concatenate([rotated, xp], axis=-1).reshape(x.shape)


def rmsnorm_rope(x, weight, cos, sin, eps: float = 1e-6, *, head_dim: int | None = None, position_ids=None,
                 residual=None, layout: str = "neox", weight_offset: float = 0.0):
    """RMSNorm (over the row, or per head when ``weight`` has ``head_dim`` entries) then RoPE per head.

    Returns ``y`` or, with ``residual``, ``(y, x + residual)``; float64.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weight)
    rot = np.asarray(cos).shape[-1]
    head_dim = rot if head_dim is None else int(head_dim)
    s = x if residual is None else x + np.asarray(residual, dtype=np.float64)
    per_head = w.shape == (head_dim,) and head_dim != x.shape[-1]
    y = rmsnorm(s, w, eps, weight_offset=weight_offset, head_dim=head_dim if per_head else None)
    y = apply_rope(y, cos, sin, head_dim=head_dim, layout=layout, position_ids=position_ids)
    return y if residual is None else (y, s)
