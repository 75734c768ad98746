"""FP8 reference (NumPy only): encode/decode, scales, quantize/dequantize, a float64 scaled GEMM.

Formats (OCP FP8, the ones PyTorch calls ``float8_e4m3fn`` and ``float8_e5m2``):

* e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, only ``S.1111.111`` is NaN;
  largest finite 448, smallest normal 2^-6, smallest subnormal 2^-9.
* e5m2: 1 sign, 5 exponent (bias 15), 2 mantissa bits (IEEE-like, has inf); largest finite 57344,
  smallest normal 2^-14, smallest subnormal 2^-16.

Semantics this library implements and tests (the Triton kernels follow this reference):

* **Scale convention.** Scales are fp32 *dequantization multipliers*: ``x ~= q.float() * scale``, the
  convention of ``torch._scaled_mm`` and vLLM. Dynamic scaling maps the amax of the group (tensor, row,
  column or block) to the format's largest finite value: ``scale = amax / fmax``.
* **Safe scales.** An all-zero group (or one holding only NaN/inf) gets ``scale = 1``; a scale is never
  smaller than ``MIN_SCALE`` = 2^-126 (so ``1 / scale`` <= 2^126 stays finite in fp32): no division by
  zero and no overflow of the reciprocal. (vLLM floors every per-token scale at ``1 / (fmax * 512)``
  instead, so its all-zero row gets that floor; the codes are 0 either way and dequantize to 0. Here a
  group of tiny values -- 1e-30, or subnormals -- keeps ``scale = amax / fmax`` down to 2^-126, so it
  dequantizes close to itself rather than to 0.)
* **Groups.** ``block_size=(bm, bk)`` over the ``[M, K]`` view: one scale per ``bm x bk`` block, scale
  shape ``[ceil(M/bm), ceil(K/bk)]``; ``-1`` stands for the full extent of that dim (one group along it:
  ``(-1, 128)`` is one scale per 128 columns over all rows, ``[1, ceil(K/128)]``; ``(1, -1)`` is per row).
  Ragged last groups hold fewer values (no padding takes part in the amax).
* **scale_ub** (dynamic scales only, vLLM's ``scaled_fp8_quant(..., scale_ub=)``): an upper bound on the
  group's *amax*, not on the scale: ``amax = min(amax, fp32(scale_ub))``, then ``scale = amax / fmax``
  as usual, so values above ``scale_ub`` saturate to +-fmax.
* **amax ignores non-finite values.** NaN and +-inf do not take part in the amax (one stray inf must not
  zero a whole row); NaN then stays NaN in the output and +-inf saturates to +-fmax.
* **Quantization** computes ``v = fp32(x) * fp32(1 / scale)`` in fp32 (one reciprocal per group, then a
  multiply per element, like the kernels) and rounds ``v`` to the nearest FP8 value, ties to even
  (identical to ``torch.Tensor.to(float8)`` for in-range values), saturating to +-fmax: values beyond
  the range never become NaN or inf.
"""

from __future__ import annotations

import math

import numpy as np

#: format name -> (exponent bits, mantissa bits, bias, largest finite value)
FORMATS = {
    "e4m3fn": (4, 3, 7, 448.0),
    "e5m2": (5, 2, 15, 57344.0),
}
#: Scales are clamped from below so that ``1 / scale`` is finite in fp32 (1 / 2^-126 = 2^126 < 3.4e38).
MIN_SCALE = 2.0**-126

_ALIASES = {"float8_e4m3fn": "e4m3fn", "e4m3": "e4m3fn", "float8_e5m2": "e5m2"}


def _fmt(fmt: str) -> str:
    name = _ALIASES.get(str(fmt).replace("torch.", ""), str(fmt).replace("torch.", ""))
    if name not in FORMATS:
        raise ValueError(f"unknown FP8 format {fmt!r}; expected one of {tuple(FORMATS)}")
    return name


def fp8_max(fmt: str = "e4m3fn") -> float:
    """Largest finite value of the format."""
    return FORMATS[_fmt(fmt)][3]


def round_to_fp8(x, fmt: str = "e4m3fn") -> np.ndarray:
    """Round to the nearest representable FP8 value (ties to even), saturating to +-fmax; NaN stays NaN.

    Returns float64 values that are exactly representable in the format.
    """
    ebits, mbits, bias, fmax = FORMATS[_fmt(fmt)]
    x = np.asarray(x, dtype=np.float64)
    ax = np.abs(x)
    min_exp = 1 - bias  # exponent of the smallest normal
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.floor(np.log2(np.where((ax > 0) & np.isfinite(ax), ax, 1.0)))
    e = np.maximum(e, min_exp)  # subnormals share the smallest normal's quantum
    quantum = np.exp2(e - mbits)
    # x / quantum is exact in float64 (power-of-two division); np.round rounds half to even.
    r = np.round(np.where(np.isfinite(ax), ax, 0.0) / quantum) * quantum
    r = np.minimum(np.where(np.isinf(ax), fmax, r), fmax)
    out = np.copysign(r, x)
    return np.where(np.isnan(x), np.nan, out)


def _all_values(fmt: str) -> np.ndarray:
    """Decoded value of each of the 256 codes (index = code)."""
    ebits, mbits, bias, _ = FORMATS[_fmt(fmt)]
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    e = (codes >> mbits) & ((1 << ebits) - 1)
    m = codes & ((1 << mbits) - 1)
    mag = np.where(e == 0, m / 2.0**mbits * 2.0 ** (1 - bias), (1 + m / 2.0**mbits) * np.exp2(e - bias))
    if _fmt(fmt) == "e4m3fn":
        mag = np.where((e == 15) & (m == 7), np.nan, mag)
    else:  # e5m2: exponent 31 is inf (m == 0) or NaN
        mag = np.where(e == 31, np.where(m == 0, np.inf, np.nan), mag)
    return sign * mag


def decode(codes, fmt: str = "e4m3fn") -> np.ndarray:
    """uint8 bit patterns -> float64 values."""
    return _all_values(fmt)[np.asarray(codes, dtype=np.uint8).astype(np.int64)]


def encode(x, fmt: str = "e4m3fn") -> np.ndarray:
    """Values -> uint8 bit patterns (rounded to nearest even, saturating; NaN -> the canonical NaN code)."""
    name = _fmt(fmt)
    r = round_to_fp8(x, name)
    table = _all_values(name)
    pos = table[:128]
    finite = np.isfinite(pos)
    vals, idx = pos[finite], np.arange(128)[finite]
    order = np.argsort(vals)
    vals, idx = vals[order], idx[order]
    mag = np.abs(np.where(np.isnan(r), 0.0, r))
    code = idx[np.searchsorted(vals, mag)]
    code = np.where(np.signbit(r), code | 0x80, code)
    nan_code = 0x7F if name == "e4m3fn" else 0x7E
    return np.where(np.isnan(r), nan_code, code).astype(np.uint8)


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def scale_from_amax(amax, fmt: str = "e4m3fn") -> np.ndarray:
    """fp32 dequantization scale for a group with this (finite, non-negative) amax."""
    amax = _f32(amax)
    fmax = np.float32(fp8_max(fmt))
    s = np.where(amax > 0, amax / fmax, np.float32(1.0)).astype(np.float32)
    return np.maximum(s, np.float32(MIN_SCALE)).astype(np.float32)


def finite_abs(x) -> np.ndarray:
    """|x| with NaN and inf replaced by 0 (what takes part in the amax)."""
    ax = np.abs(_f32(x))
    return np.where(np.isfinite(ax), ax, np.float32(0.0))


def block_dims(shape, block_size) -> tuple[int, int]:
    """``(bm, bk)`` of ``block_size`` for a 2-D ``shape`` with ``-1`` (full extent) resolved: ``-1`` along a
    dim of size n is one group of n (at least 1) values."""
    m, k = shape
    bm, bk = block_size
    for v in (bm, bk):
        if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or (v < 1 and v != -1):
            raise ValueError(f"block_size entries must be ints >= 1 or -1, got {block_size!r}")
    return (max(m, 1) if bm == -1 else int(bm)), (max(k, 1) if bk == -1 else int(bk))


def block_grid(shape, block_size) -> tuple[int, int]:
    """Shape of the block scales of a 2-D ``shape``: ``[ceil(M/bm), ceil(K/bk)]``, 1 along a ``-1`` dim (one
    group, even an empty one)."""
    (m, k), (bm, bk) = shape, block_dims(shape, block_size)
    return (1 if block_size[0] == -1 else -(-m // bm)), (1 if block_size[1] == -1 else -(-k // bk))


def _block_view(x: np.ndarray, block_size) -> tuple[np.ndarray, int, int]:
    m, k = x.shape
    bm, bk = block_dims(x.shape, block_size)
    gm, gk = block_grid(x.shape, block_size)
    pad = np.zeros((gm * bm, gk * bk), dtype=x.dtype)
    pad[:m, :k] = x
    return pad.reshape(gm, bm, gk, bk), gm, gk


def _check_ub(scale_ub) -> np.float32:
    ub = np.float32(scale_ub)
    if not (np.isfinite(ub) and ub > 0):
        raise ValueError(f"scale_ub must be finite and > 0 (in fp32), got {scale_ub!r}")
    return ub


def compute_scale(x, granularity: str = "tensor", fmt: str = "e4m3fn", block_size=None,
                  scale_ub=None) -> np.ndarray:
    """Dynamic scale of ``x`` (2-D for row/column/block). Shapes: tensor ``()``, row ``[M, 1]``,
    column ``[1, N]``, block ``[ceil(M/bm), ceil(K/bk)]`` (the ragged edge blocks hold fewer values;
    ``-1`` in ``block_size`` is the full extent). ``scale_ub`` bounds each group's amax from above
    (``min(amax, fp32(scale_ub))``) before the scale is taken."""
    ax = finite_abs(x)
    ub = None if scale_ub is None else _check_ub(scale_ub)

    def scale(amax):
        amax = _f32(amax)
        return scale_from_amax(amax if ub is None else np.minimum(amax, ub), fmt)

    if granularity == "tensor":
        return scale(ax.max() if ax.size else 0.0).reshape(())
    if ax.ndim != 2:
        raise ValueError(f"granularity {granularity!r} needs a 2-D array, got shape {ax.shape}")
    if granularity == "row":
        return scale(ax.max(axis=1, keepdims=True, initial=0.0))
    if granularity == "column":
        return scale(ax.max(axis=0, keepdims=True, initial=0.0))
    if granularity == "block":
        blocks, _, _ = _block_view(ax, block_size)
        return scale(blocks.max(axis=(1, 3), initial=0.0))
    raise ValueError(f"unknown granularity {granularity!r}")


def expand_scale(scale, shape, granularity: str, block_size=None) -> np.ndarray:
    """Broadcast a scale of the given granularity to ``shape`` (float32)."""
    s = _f32(scale)
    if granularity in ("tensor", "row", "column"):
        return np.broadcast_to(s.reshape(()) if granularity == "tensor" else s, shape).astype(np.float32)
    bm, bk = block_dims(shape, block_size)
    m, k = shape
    return np.repeat(np.repeat(s, bm, axis=0), bk, axis=1)[:m, :k].astype(np.float32)


def quantize(x, fmt: str = "e4m3fn", granularity: str = "tensor", block_size=None, scale=None, scale_ub=None):
    """``(q, scale)``: ``q`` float64 values on the FP8 grid, ``scale`` fp32 (dynamic when None).

    ``q = round_to_fp8(fp32(x) * fp32(1 / scale))`` with saturation, as in the module docstring.
    ``scale_ub`` (dynamic scales only) clamps each group's amax from above before its scale is taken.
    """
    x32 = _f32(x)
    if scale is None:
        scale = compute_scale(x32, granularity, fmt, block_size, scale_ub)
    elif scale_ub is not None:
        raise ValueError("scale_ub only applies to dynamic scales (scale=None)")
    scale = _f32(scale)
    full = expand_scale(scale, x32.shape, granularity, block_size)
    inv = (np.float32(1.0) / full).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        v = (x32 * inv).astype(np.float32)
    return round_to_fp8(v, fmt), scale


def dequantize(q, scale, granularity: str = "tensor", block_size=None) -> np.ndarray:
    """``q * scale`` in float64 (scale broadcast per granularity)."""
    q = np.asarray(q, dtype=np.float64)
    return q * expand_scale(scale, q.shape, granularity, block_size).astype(np.float64)


def scaled_gemm(a_q, b_q, a_scale, b_scale, *, a_granularity: str = "tensor", b_granularity: str = "tensor",
                a_block=None, b_block=None, bias=None) -> np.ndarray:
    """float64 ``dequant(a) @ dequant(b) + bias`` for ``a [M, K]``, ``b [K, N]``.

    ``a_granularity``: tensor / row / block (``a_block`` e.g. (1, 128));
    ``b_granularity``: tensor / column / block (``b_block`` e.g. (128, 128), over ``b [K, N]``).
    """
    a = dequantize(a_q, a_scale, a_granularity, a_block)
    b = dequantize(b_q, b_scale, b_granularity, b_block)
    out = a @ b
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)
    return out


def sqnr_db(out, ref) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum ref^2 / sum (out - ref)^2)``."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    noise = float(np.sum((out - ref) ** 2))
    sig = float(np.sum(ref * ref))
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(sig / noise) if sig > 0 else -math.inf


def relative_error(out, ref) -> float:
    """``||out - ref|| / ||ref||`` (L2, float64)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    den = float(np.linalg.norm(ref))
    num = float(np.linalg.norm(out - ref))
    return num / den if den > 0 else num
