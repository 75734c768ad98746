"""FP8 quantization and dequantization kernels.

Semantics (the NumPy reference ``triton_ops.compute.fp8`` is the specification):

* scales are fp32 *dequantization multipliers*, ``x ~= q.float() * scale`` (``torch._scaled_mm`` / vLLM
  convention); dynamic scaling maps the group's amax to the format's largest finite value (448 for
  e4m3fn, 57344 for e5m2);
* the amax ignores NaN and +-inf; NaN stays NaN, +-inf and out-of-range values saturate to +-fmax;
* an all-zero group gets scale 1 and scales are clamped to >= 2^-126, so nothing divides by zero (vLLM
  floors per-token scales at ``1 / (fmax * 512)`` instead: its all-zero row gets that floor; the codes
  are 0 either way). A group of tiny values (1e-30, subnormals) keeps ``amax / fmax`` down to 2^-126, so
  it dequantizes close to itself;
* ``scale_ub`` (dynamic row / block scales, vLLM's ``scaled_fp8_quant(..., scale_ub=)``) bounds each
  group's amax: ``scale = scale_from_amax(min(amax, fp32(scale_ub)))``;
* ``q = round_nearest_even(fp32(x) * fp32(1 / scale))``, identical to ``Tensor.to(float8)`` in range.

Scale shapes: per tensor ``[]``; per row (token) ``[*lead, 1]``; per column (channel) ``[1, K]`` (the
last dim); per block ``[ceil(M/bm), ceil(K/bk)]`` over the ``[M, K]`` view, any ``bm, bk >= 1`` and -1
for the full extent of a dim (vLLM's GroupShape: ``(-1, 128)`` gives ``[1, ceil(K/128)]``); ragged edge
blocks hold fewer values, no padding is written.

Kernels and bytes (B = input element size; the output is 1 byte per element):

* per row and (1, g) groups (g up to 8192, any g: a power of two reshapes the tile, others mask the
  lanes of a ``[rows, groups, next_pow2(g)]`` tile): ONE pass, ``_quant_rows_kernel`` holds up to 8192
  elements of a row in registers, takes the amax and writes q and the scale (B + 1 bytes per element).
  Longer rows are read twice (per row) or launched per slice of whole groups ((1, g)).
* (bm, bk) blocks (``_quant_block_kernel``, power-of-two tiles masked to the block): ONE pass, one
  program per block, up to 16384 (padded) elements; larger blocks loop over the block twice (the second
  read mostly from L2); few tall blocks (``(-1, 128)`` over a weight) split their rows over programs: an
  amax launch merging with an atomic max, then a quantize launch (2B + 1 bytes per element).
* per tensor, dynamic: two launches and no host sync. ``_amax_rows_kernel`` writes one partial amax per
  program (at most 1024), then ``_scale_tile_kernel`` reduces the partials in each program (4 KB from L2)
  and quantizes. The second pass walks the tiles in reverse order, so its first tiles are the ones the
  amax pass read last and are still in L2 (up to 50 MB on H100/H200 saved out of 2B+1 bytes/element).
* per column, dynamic: column amax partials (``_amax_cols_kernel``, ~256 rows per program), then
  ``_quant_cols_kernel`` reduces the partials of its columns once per program and quantizes 512 rows of
  them, writing q with any strides (K-major for fp8_gemm's b). ``quantize_operands_for_gemm`` fuses a's
  per-row pass and b's column amax into one launch (``_gemm_prep_kernel``).
* static scales: one pass of ``_scale_tile_kernel``.

On sm_80 (no FP8 conversion instructions, Triton rejects the fp8e4nv type) quantization runs through
PyTorch ops with the same semantics; the FP8 weights then feed the weight-only GEMM of fp8_gemm.py.

Host cost: ``quantize_fp8`` / ``dequantize_fp8`` eager calls go through launch plans (``triton_ops.launch``):
validation, the 2-D view, config and grid once per input signature; a repeated call allocates q and the
scale and launches (``KernelLaunch``). The launchers here are step factories that fp8_gemm's plans reuse.
Dynamic scales are marked valid on the returned tensor (``_mark_valid``), so fp8_gemm's ``check_scales``
needs no device sync for them.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from ..exceptions import InvalidArgumentError, NumericalError, ShapeError
from ..launch import KernelLaunch, PlanCache, plan_key
from ..utils import cdiv, device_capability, interpreter_enabled, next_power_of_2, num_sms
from ..validation import (
    FLOAT_DTYPES,
    FP8_DTYPES,
    check_dtype,
    check_int,
    check_out_dtype,
    check_runnable_device,
    check_same_device,
    check_tensor,
    rows_view,
)
from .fp8_cache import valid_scales

#: Largest finite value per format.
FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
#: Scales never go below this, so ``1/scale`` (<= 2^126) is finite in fp32.
MIN_SCALE = 2.0**-126
GRANULARITIES = ("tensor", "row", "column", "block")
#: Granularities whose dynamic scales take a ``scale_ub`` (amax upper bound).
UB_GRANULARITIES = ("row", "block")
_FMT_NAME = {torch.float8_e4m3fn: "e4m3fn", torch.float8_e5m2: "e5m2"}
_FMT_DTYPE = {v: k for k, v in _FMT_NAME.items()}
#: Round in fp32 before the fp8 cast (interpreter only, see _round_to_fp8_grid).
SOFT_ROUND = tl.constexpr(interpreter_enabled())

# ---------------------------------------------------------------------------------------------------
# Layer 1: kernels
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _to_f32(x):
    """``x.to(fp32)``. Under the interpreter a bf16 input is widened by its bits: Triton 3.6's interpreter
    decodes bf16 subnormals wrongly (1e-39 reads as 4.4e-39, 1.8e-40 as 0); compiled kernels cast."""
    if SOFT_ROUND:
        if x.dtype == tl.bfloat16:
            return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return x.to(tl.float32)


@triton.jit
def e4m3_nan(x):
    """True where an FP8 tile holds a NaN code (e4m3: 0x7F / 0xFF; e5m2: exponent 31, mantissa != 0)."""
    bits = x.to(tl.uint8, bitcast=True)
    if x.dtype == tl.float8e4nv:
        return (bits & 0x7F) == 0x7F
    return (bits & 0x7F) > 0x7C


@triton.jit
def fp8_to(x, TY: tl.constexpr):
    """``x.to(TY)`` for an FP8 tile, NaN codes kept NaN: the GPU's ``cvt`` does it; Triton 3.6's interpreter
    decodes e4m3 0x7F as 480, so there the codes are masked back to NaN."""
    y = x.to(TY)
    if SOFT_ROUND:
        y = tl.where(e4m3_nan(x), float("nan"), y)
    return y


@triton.jit
def fp8_dot_nan(acc, a, b):
    """``acc`` with NaN in the rows whose FP8 ``a`` tile holds a NaN code and in the columns whose FP8 ``b``
    tile does -- under the interpreter only: the GPU's FP8 MMA propagates NaN by itself, the interpreter's
    dot reads the e4m3 NaN code as 480. Makes the CPU tests see what the GPU computes."""
    if SOFT_ROUND:
        if a.dtype.is_fp8():
            acc = tl.where((tl.max(e4m3_nan(a).to(tl.int32), axis=1) > 0)[:, None], float("nan"), acc)
        if b.dtype.is_fp8():
            acc = tl.where((tl.max(e4m3_nan(b).to(tl.int32), axis=0) > 0)[None, :], float("nan"), acc)
    return acc


@triton.jit
def _finite_abs(x):
    """|x| in fp32 with NaN and inf mapped to 0 (NaN < inf is false, so one compare covers both)."""
    ax = tl.abs(_to_f32(x))
    return tl.where(ax < float("inf"), ax, 0.0)


@triton.jit
def _scale_from_amax(amax, FMAX: tl.constexpr):
    """Dequantization scale for a group amax; 1 for an all-zero group, never below 2^-126."""
    s = tl.where(amax > 0.0, tl.math.div_rn(amax, FMAX), 1.0)
    return tl.maximum(s, 1.1754943508222875e-38)


@triton.jit
def _round_to_fp8_grid(v, OUT: tl.constexpr):
    """Round fp32 ``v`` (already within +-fmax) to the nearest FP8 value, ties to even, in fp32.

    Only used under Triton's interpreter, whose fp32->fp8 cast rounds ties away from zero and can drop
    the exponent carry (31.6 -> 16 instead of 32 for e4m3). After this the cast is exact. On GPUs the
    hardware ``cvt.rn.satfinite`` already rounds to nearest even, so compiled kernels skip it.
    """
    if OUT == tl.float8e4nv:
        MBITS: tl.constexpr = 3
        MIN_NORMAL: tl.constexpr = 0.015625  # 2^-6
        MAGIC: tl.constexpr = 16384.0  # 2^14: fp32 ulp there is 2^-9, the e4m3 subnormal step
    else:
        MBITS: tl.constexpr = 2
        MIN_NORMAL: tl.constexpr = 6.103515625e-05  # 2^-14
        MAGIC: tl.constexpr = 128.0  # 2^7: fp32 ulp there is 2^-16, the e5m2 subnormal step
    SHIFT: tl.constexpr = 23 - MBITS
    vb = v.to(tl.uint32, bitcast=True)
    sign = vb & 0x80000000
    a = tl.abs(v)
    ab = a.to(tl.uint32, bitcast=True)
    lsb = (ab >> SHIFT) & 1
    normal = (((ab + ((1 << (SHIFT - 1)) - 1) + lsb) >> SHIFT) << SHIFT).to(tl.float32, bitcast=True)
    sub = (a + MAGIC) - MAGIC
    r = tl.where(a < MIN_NORMAL, sub, normal)
    r = (r.to(tl.uint32, bitcast=True) | sign).to(tl.float32, bitcast=True)
    return tl.where(v != v, v, r)


@triton.jit
def _to_fp8(x, inv, FMAX: tl.constexpr, OUT: tl.constexpr):
    """Scale in fp32, saturate to +-FMAX (comparisons are false for NaN, so NaN passes through), cast
    with round-to-nearest-even."""
    v = _to_f32(x) * inv
    v = tl.where(v > FMAX, FMAX, v)
    v = tl.where(v < -FMAX, -FMAX, v)
    if SOFT_ROUND:
        # The interpreter's cast also turns NaN into a finite code; write the canonical NaN bits instead.
        q = _round_to_fp8_grid(v, OUT).to(OUT).to(tl.uint8, bitcast=True)
        NAN: tl.constexpr = 0x7F if OUT == tl.float8e4nv else 0x7E
        return tl.where(v != v, NAN, q).to(tl.uint8).to(OUT, bitcast=True)
    return v.to(OUT)


@triton.jit
def _ub_amax(amax, ub, UB: tl.constexpr):
    """``min(amax, scale_ub)``: UB 0 no bound, 1 ``ub`` points at the fp32 bound, 2 ``ub`` is the bound."""
    if UB == 1:
        amax = tl.minimum(amax, tl.load(ub))
    elif UB == 2:
        amax = tl.minimum(amax, ub)
    return amax


@triton.jit
def _rows_block(x_ptr, q_ptr, s_ptr, ub, pid, M, K, stride_xm, stride_qm, stride_sm, FMAX: tl.constexpr,
                GROUP: tl.constexpr, GP: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
                SINGLE: tl.constexpr, UB: tl.constexpr):
    """ROWS rows starting at ``pid * ROWS``: dynamic per-row (GROUP == BLOCK_K, one scale per row) or
    per-(1, GROUP) group quantization, GP = next_power_of_2(GROUP) <= BLOCK_K: BLOCK_K // GP groups per
    row and tile (a power-of-two GROUP reshapes the loaded tile; any other one is loaded as
    ``[ROWS, groups, GP]`` with the lanes past GROUP masked off). SINGLE: the row fits in BLOCK_K, read
    once; otherwise (per-row only) loop twice over the row (the second read mostly from L2). UB: the amax
    bound, see _ub_amax."""
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rmask = rows < M
    cols = tl.arange(0, BLOCK_K)
    OUT = q_ptr.dtype.element_ty
    if SINGLE:
        if GROUP == BLOCK_K:
            mask = rmask[:, None] & (cols[None, :] < K)
            x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0)
            amax = _ub_amax(tl.max(_finite_abs(x), axis=1), ub, UB)
            s = _scale_from_amax(amax, FMAX)
            inv = tl.math.div_rn(tl.full([ROWS], 1.0, tl.float32), s)
            q = _to_fp8(x, inv[:, None], FMAX, OUT)
            tl.store(s_ptr + rows * stride_sm, s, mask=rmask)
            tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], q, mask=mask)
        else:
            NG: tl.constexpr = BLOCK_K // GP
            g = tl.arange(0, NG)
            smask = rmask[:, None] & (g[None, :] < tl.cdiv(K, GROUP))
            if GROUP == GP:
                mask = rmask[:, None] & (cols[None, :] < K)
                x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0)
                xg = tl.reshape(x, [ROWS, NG, GROUP])
                amax = _ub_amax(tl.max(_finite_abs(xg), axis=2), ub, UB)
                s = _scale_from_amax(amax, FMAX)
                inv = tl.math.div_rn(tl.full([ROWS, NG], 1.0, tl.float32), s)
                q = tl.reshape(_to_fp8(xg, inv[:, :, None], FMAX, OUT), [ROWS, BLOCK_K])
                tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], q, mask=mask)
            else:
                j = tl.arange(0, GP)
                gc = g[:, None] * GROUP + j[None, :]  # [NG, GP] column of each lane
                mask = rmask[:, None, None] & ((j[None, :] < GROUP) & (gc < K))[None, :, :]
                x = tl.load(x_ptr + rows[:, None, None] * stride_xm + gc[None, :, :], mask=mask, other=0.0)
                amax = _ub_amax(tl.max(_finite_abs(x), axis=2), ub, UB)
                s = _scale_from_amax(amax, FMAX)
                inv = tl.math.div_rn(tl.full([ROWS, NG], 1.0, tl.float32), s)
                tl.store(q_ptr + rows[:, None, None] * stride_qm + gc[None, :, :],
                         _to_fp8(x, inv[:, :, None], FMAX, OUT), mask=mask)
            tl.store(s_ptr + rows[:, None] * stride_sm + g[None, :], s, mask=smask)
    else:
        amax = tl.zeros([ROWS], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            mask = rmask[:, None] & ((k0 + cols)[None, :] < K)
            x = tl.load(x_ptr + rows[:, None] * stride_xm + (k0 + cols)[None, :], mask=mask, other=0.0)
            amax = tl.maximum(amax, tl.max(_finite_abs(x), axis=1))
        s = _scale_from_amax(_ub_amax(amax, ub, UB), FMAX)
        inv = tl.math.div_rn(tl.full([ROWS], 1.0, tl.float32), s)
        tl.store(s_ptr + rows * stride_sm, s, mask=rmask)
        for k0 in range(0, K, BLOCK_K):
            mask = rmask[:, None] & ((k0 + cols)[None, :] < K)
            x = tl.load(x_ptr + rows[:, None] * stride_xm + (k0 + cols)[None, :], mask=mask, other=0.0)
            tl.store(q_ptr + rows[:, None] * stride_qm + (k0 + cols)[None, :],
                     _to_fp8(x, inv[:, None], FMAX, OUT), mask=mask)


@triton.jit
def _quant_rows_kernel(x_ptr, q_ptr, s_ptr, ub, M, K, stride_xm, stride_qm, stride_sm, FMAX: tl.constexpr,
                       GROUP: tl.constexpr, GP: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
                       SINGLE: tl.constexpr, UB: tl.constexpr):
    """Dynamic per-row or per-(1, GROUP) group quantization, ROWS rows per program."""
    _rows_block(x_ptr, q_ptr, s_ptr, ub, tl.program_id(0), M, K, stride_xm, stride_qm, stride_sm, FMAX, GROUP, GP,
                ROWS, BLOCK_K, SINGLE, UB)


@triton.jit
def _block_range(pid, n, B: tl.constexpr):
    """``[lo, hi)`` of block ``pid`` along a dim of size ``n`` (B == -1: the whole dim)."""
    if B == -1:
        lo = pid.to(tl.int64) * 0
        hi = lo + n
    else:
        lo = pid.to(tl.int64) * B
        hi = tl.minimum(lo + B, n)
    return lo, hi


@triton.jit
def _block_amax(x_ptr, r0, r1, c0, c1, stride_xm, TILE_M: tl.constexpr, TILE_K: tl.constexpr):
    """amax of ``x[r0:r1, c0:c1]`` in TILE_M x TILE_K tiles (a per-row accumulator, as _amax_rows_kernel)."""
    rr = tl.arange(0, TILE_M)
    cc = tl.arange(0, TILE_K)
    acc = tl.zeros([TILE_M], dtype=tl.float32)
    for r in range(r0, r1, TILE_M):
        rows = r + rr
        for c in range(c0, c1, TILE_K):
            cols = c + cc
            mask = (rows < r1)[:, None] & (cols < c1)[None, :]
            x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0)
            acc = tl.maximum(acc, tl.max(_finite_abs(x), axis=1))
    return tl.max(acc, axis=0)


@triton.jit
def _block_store(x_ptr, q_ptr, inv, r0, r1, c0, c1, stride_xm, stride_qm, FMAX: tl.constexpr,
                 TILE_M: tl.constexpr, TILE_K: tl.constexpr):
    """``q[r0:r1, c0:c1] = fp8(x * inv)`` in TILE_M x TILE_K tiles."""
    rr = tl.arange(0, TILE_M)
    cc = tl.arange(0, TILE_K)
    for r in range(r0, r1, TILE_M):
        rows = r + rr
        for c in range(c0, c1, TILE_K):
            cols = c + cc
            mask = (rows < r1)[:, None] & (cols < c1)[None, :]
            x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0)
            tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :],
                     _to_fp8(x, inv, FMAX, q_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tile_mask(idx, n, hi, B: tl.constexpr, T: tl.constexpr):
    """Lanes of a one-tile block inside the tensor and the block: a tile that is the block (or spans the
    whole dim) is only cut by the tensor's edge, a wider one (non-power-of-two B) by the block's too."""
    if B == -1:
        m = idx < n
    elif B == T:
        m = idx < n
    else:
        m = idx < hi
    return m


@triton.jit
def _quant_block_kernel(x_ptr, q_ptr, s_ptr, amax_ptr, ub, M, K, stride_xm, stride_qm, stride_sm, n_split,
                        rows_per_split, FMAX: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                        TILE_M: tl.constexpr, TILE_K: tl.constexpr, PHASE: tl.constexpr, UB: tl.constexpr):
    """Dynamic (BM, BK)-block quantization; -1 is the full extent of that dim. Program (i, k) handles
    block (i // n_split, k), row split i % n_split.

    PHASE 0: the block fits one TILE_M x TILE_K tile: one pass. 1: one program loops over the block twice
    (amax, then quantize; the second read mostly from L2). 2 and 3, two launches for few tall blocks
    ((-1, 128) over a weight) whose rows are split over ``n_split`` programs of ``rows_per_split`` rows:
    2 takes each split's amax and merges it into ``amax_ptr[block]`` (int32, zeroed) with an atomic max
    (non-negative floats order as their bits do); 3 quantizes each split from the merged amax, the first
    split writing the scale. UB: the amax bound, see _ub_amax.
    """
    pid0 = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = pid0 // n_split
    split = pid0 % n_split
    r_lo, r_hi = _block_range(pid_m, M, BM)
    c_lo, c_hi = _block_range(pid_k, K, BK)
    s_off = pid_m.to(tl.int64) * stride_sm + pid_k
    if PHASE == 0:
        rows = r_lo + tl.arange(0, TILE_M)
        cols = c_lo + tl.arange(0, TILE_K)
        mask = _tile_mask(rows, M, r_hi, BM, TILE_M)[:, None] & _tile_mask(cols, K, c_hi, BK, TILE_K)[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0)
        amax = _ub_amax(tl.max(tl.max(_finite_abs(x), axis=1), axis=0), ub, UB)
        s = _scale_from_amax(amax, FMAX)
        inv = tl.math.div_rn(1.0, s)
        tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], _to_fp8(x, inv, FMAX, q_ptr.dtype.element_ty),
                 mask=mask)
        tl.store(s_ptr + s_off, s)
    elif PHASE == 1:
        amax = _ub_amax(_block_amax(x_ptr, r_lo, r_hi, c_lo, c_hi, stride_xm, TILE_M, TILE_K), ub, UB)
        s = _scale_from_amax(amax, FMAX)
        tl.store(s_ptr + s_off, s)
        _block_store(x_ptr, q_ptr, tl.math.div_rn(1.0, s), r_lo, r_hi, c_lo, c_hi, stride_xm, stride_qm, FMAX,
                     TILE_M, TILE_K)
    else:
        r0 = r_lo + split * rows_per_split
        r1 = tl.minimum(r0 + rows_per_split, r_hi)
        if PHASE == 2:
            amax = _block_amax(x_ptr, r0, r1, c_lo, c_hi, stride_xm, TILE_M, TILE_K)
            tl.atomic_max(amax_ptr + s_off, amax.to(tl.int32, bitcast=True))
        else:
            amax = _ub_amax(tl.load(amax_ptr + s_off).to(tl.float32, bitcast=True), ub, UB)
            s = _scale_from_amax(amax, FMAX)
            if split == 0:
                tl.store(s_ptr + s_off, s)
            _block_store(x_ptr, q_ptr, tl.math.div_rn(1.0, s), r0, r1, c_lo, c_hi, stride_xm, stride_qm, FMAX,
                         TILE_M, TILE_K)


@triton.jit
def _amax_rows_kernel(x_ptr, part_ptr, R, C, stride_r, rows_per_prog, BLOCK_R: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    """Partial amax of rows [pid * rows_per_prog, ...) over all columns -> part[pid]."""
    pid = tl.program_id(0)
    r_start = pid * rows_per_prog
    r_end = tl.minimum(r_start + rows_per_prog, R)
    # A per-row accumulator (one in-warp reduction per tile): a full [BLOCK_R, BLOCK_C] fp32 one next to
    # the loaded tile made ptxas spill 32 B with 8 warps on sm_89; the pass is memory-bound either way.
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    rr = tl.arange(0, BLOCK_R)
    cc = tl.arange(0, BLOCK_C)
    for r0 in range(r_start, r_end, BLOCK_R):
        rows = (r0 + rr).to(tl.int64)
        rmask = rows < r_end
        for c0 in range(0, C, BLOCK_C):
            mask = rmask[:, None] & ((c0 + cc) < C)[None, :]
            x = tl.load(x_ptr + rows[:, None] * stride_r + (c0 + cc)[None, :], mask=mask, other=0.0)
            acc = tl.maximum(acc, tl.max(_finite_abs(x), axis=1))
    tl.store(part_ptr + pid, tl.max(acc, axis=0))


@triton.jit
def _col_amax_block(x_ptr, part_ptr, pid_c, split, R, C, stride_r, stride_c, rows_per_split,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Partial column amax of columns [pid_c * BLOCK_C, ...) over rows [split * rows_per_split, ...)
    -> part[split, C]."""
    cols = pid_c.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    r_start = split * rows_per_split
    r_end = tl.minimum(r_start + rows_per_split, R)
    rr = tl.arange(0, BLOCK_R)
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for r0 in range(r_start, r_end, BLOCK_R):
        rows = (r0 + rr).to(tl.int64)
        mask = (rows < r_end)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_r + cols[None, :] * stride_c, mask=mask, other=0.0)
        acc = tl.maximum(acc, _finite_abs(x))
    tl.store(part_ptr + split.to(tl.int64) * C + cols, tl.max(acc, axis=0), mask=cmask)


@triton.jit
def _amax_cols_kernel(x_ptr, part_ptr, R, C, stride_r, stride_c, rows_per_split, BLOCK_R: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    """Partial column amax over rows [split * rows_per_split, ...) -> part[split, C]."""
    _col_amax_block(x_ptr, part_ptr, tl.program_id(0), tl.program_id(1), R, C, stride_r, stride_c, rows_per_split,
                    BLOCK_R, BLOCK_C)


@triton.jit
def _gemm_prep_kernel(a_ptr, qa_ptr, sa_ptr, M, K, stride_am, stride_qam, n_a,
                      b_ptr, part_ptr, N, stride_bk, stride_bn, rows_per_split, n_cb,
                      FMAX: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, SINGLE: tl.constexpr,
                      CB_R: tl.constexpr, CB_C: tl.constexpr):
    """One launch for both operands of ``fp8_gemm(a, b)`` from float inputs: programs [0, n_a) quantize
    a [M, K] per row in one pass (q and scale); the programs after them take partial column amaxes of
    b [K, N]. b's programs run last so that its rows, which ``_quant_cols_kernel`` reads again right
    after (bottom-up), are the freshest in L2."""
    pid = tl.program_id(0)
    if pid < n_a:
        _rows_block(a_ptr, qa_ptr, sa_ptr, sa_ptr, pid, M, K, stride_am, stride_qam, 1, FMAX, BLOCK_K, BLOCK_K, ROWS,
                    BLOCK_K, SINGLE, 0)
    else:
        p = pid - n_a
        _col_amax_block(b_ptr, part_ptr, p % n_cb, p // n_cb, K, N, stride_bk, stride_bn, rows_per_split, CB_R,
                        CB_C)


@triton.jit
def _quant_cols_kernel(x_ptr, q_ptr, part_ptr, s_ptr, R, C, stride_xr, stride_xc, stride_qr, stride_qc,
                       n_split, rows_per_prog, FMAX: tl.constexpr, BLOCK_R: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, REVERSE: tl.constexpr):
    """Per-column quantization of x [R, C] from the ``n_split`` partial amaxes in part[split, C]: each
    program reduces the partials of its BLOCK_C columns once (programs of the first row band also write
    the scales to s_ptr), then quantizes ``rows_per_prog`` rows of them. q may have any strides (the
    GEMM asks for the transpose, K-major). REVERSE walks the row bands bottom-up: the amax pass read the
    bottom rows last, so they are the ones still in L2."""
    pid = tl.program_id(0)
    n_c = tl.cdiv(C, BLOCK_C)
    n_r = tl.cdiv(R, rows_per_prog)
    if REVERSE:
        pid = n_r * n_c - 1 - pid
    pid_r = pid // n_c
    pid_c = pid % n_c
    cols = pid_c.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    pp = tl.arange(0, BLOCK_P)
    part = tl.load(part_ptr + pp[:, None] * C + cols[None, :], mask=(pp < n_split)[:, None] & cmask[None, :],
                   other=0.0)
    s = _scale_from_amax(tl.max(part, axis=0), FMAX)
    if pid_r == 0:
        tl.store(s_ptr + cols, s, mask=cmask)
    inv = tl.math.div_rn(tl.full([BLOCK_C], 1.0, tl.float32), s)
    OUT = q_ptr.dtype.element_ty
    r_start = pid_r * rows_per_prog
    r_end = tl.minimum(r_start + rows_per_prog, R)
    rr = tl.arange(0, BLOCK_R)
    for r0 in range(r_start, r_end, BLOCK_R):
        rows = (r0 + rr).to(tl.int64)
        mask = (rows < r_end)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xc, mask=mask, other=0.0)
        tl.store(q_ptr + rows[:, None] * stride_qr + cols[None, :] * stride_qc, _to_fp8(x, inv[None, :], FMAX, OUT),
                 mask=mask)


@triton.jit
def _finalize_cols_kernel(part_ptr, s_ptr, SPLIT, C, FMAX: tl.constexpr, BLOCK_S: tl.constexpr,
                          BLOCK_C: tl.constexpr):
    """scale[c] = scale_from_amax(max_s part[s, c])."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    ss = tl.arange(0, BLOCK_S)
    p = tl.load(part_ptr + ss[:, None] * C + cols[None, :], mask=(ss < SPLIT)[:, None] & (cols < C)[None, :],
                other=0.0)
    tl.store(s_ptr + cols, _scale_from_amax(tl.max(p, axis=0), FMAX), mask=cols < C)


@triton.jit
def _scale_tile_kernel(x_ptr, y_ptr, s_ptr, R, C, stride_xr, stride_xc, stride_yr, stride_yc,
                       stride_sr, stride_sc, n_part, FMAX: tl.constexpr, MODE: tl.constexpr,
                       DEQUANT: tl.constexpr, REVERSE: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Apply given scales tile by tile: quantize (``y = fp8(x / s)``) or dequantize (``y = x * s``).

    MODE: 0 one scale at s_ptr; 1 one scale reduced from ``n_part`` partial amaxes at s_ptr (the
    dynamic per-tensor pass; program 0 also writes the scale to y's companion slot ``s_ptr + n_part``);
    2 per row ``s[r]``; 3 per column ``s[c]``; 4 per (BM, BK) block ``s[r // BM, c // BK]``.
    """
    pid = tl.program_id(0)
    n_c = tl.cdiv(C, BLOCK_C)
    if REVERSE:  # walk tiles backwards: the amax pass read the last rows most recently (still in L2)
        pid = tl.cdiv(R, BLOCK_R) * n_c - 1 - pid
    pid_r = pid // n_c
    pid_c = pid % n_c
    rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_c.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < R)[:, None] & (cols < C)[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xc, mask=mask, other=0.0)
    if MODE == 0:
        s = tl.load(s_ptr)
    elif MODE == 1:
        pp = tl.arange(0, BLOCK_P)
        part = tl.load(s_ptr + pp, mask=pp < n_part, other=0.0)
        s = _scale_from_amax(tl.max(part, axis=0), FMAX)
        if pid == 0:
            tl.store(s_ptr + n_part, s)
    elif MODE == 2:
        s = tl.load(s_ptr + rows * stride_sr, mask=rows < R, other=1.0)[:, None]
    elif MODE == 3:
        s = tl.load(s_ptr + cols * stride_sc, mask=cols < C, other=1.0)[None, :]
    else:
        s = tl.load(s_ptr + (rows // BM)[:, None] * stride_sr + (cols // BK)[None, :] * stride_sc,
                    mask=mask, other=1.0)
    if DEQUANT:
        y = (fp8_to(x, tl.float32) * s).to(y_ptr.dtype.element_ty)
    else:
        y = _to_fp8(x, tl.math.div_rn(1.0, s), FMAX, y_ptr.dtype.element_ty)
    tl.store(y_ptr + rows[:, None] * stride_yr + cols[None, :] * stride_yc, y, mask=mask)


# ---------------------------------------------------------------------------------------------------
# Layer 2: configs (pure functions of the problem) and launch steps
# ---------------------------------------------------------------------------------------------------
#
# Every launcher below is a *step factory*: it takes the geometry of a call (sizes and strides, all fixed
# by the call's signature) and returns a function of the tensors alone that launches through
# ``KernelLaunch``. Plans (``_plan_quantize`` / ``_plan_dequantize``, and fp8_gemm's) build their steps
# once per signature; a repeated call only allocates its outputs and launches.

#: BLOCK_K choices of the per-row kernel; rows longer than the last one loop (two reads per row).
ROW_BLOCKS = (256, 1024, 4096, 8192)
#: (BLOCK_R, BLOCK_C, num_warps) of the tile kernels: wide rows, narrow rows, transposed copies.
TILE_CONFIGS = {"wide": (8, 1024, 8), "narrow": (64, 128, 8), "square": (64, 64, 4)}
#: At most this many per-tensor amax partials (reduced by every program of the second pass: 4 KB).
MAX_PARTIALS = 1024


def row_config(K: int, group: int | None = None) -> dict:
    """Per-row / (1, group) kernel config: BLOCK_K, ROWS per program, num_warps, SINGLE, and GP (the
    padded group: BLOCK_K // GP groups per row and tile)."""
    gp = None if group is None else next_power_of_2(group)
    # the tile's lanes a row needs: K, or its groups each padded to GP
    need = max(K, 1) if group is None else cdiv(max(K, 1), group) * gp
    block_k = next((b for b in ROW_BLOCKS if b >= need), ROW_BLOCKS[-1])
    single = need <= block_k
    if group is not None and not single:
        # (1, group) blocks always fit a whole number of groups per tile; rows longer than the tile are
        # handled by launching the kernel over column slices (see rows_step).
        single = True
    # ~4096 elements per program: enough bytes in flight per SM without starving the grid of programs.
    rows = max(1, 4096 // block_k)
    gp = gp or block_k
    # the masked [ROWS, groups, GP] tile of a non-power-of-two group: 4 warps spilled (K256 g100, sm_89/90)
    warps = 8 if block_k * rows >= 8192 or (group is not None and gp != group) else 4
    return {"BLOCK_K": block_k, "ROWS": rows, "num_warps": warps, "SINGLE": single, "GP": gp}


def _block_warps(bm: int, bk: int) -> int:
    """Warps for one (bm, bk) block: ~1024 elements per warp (128x128 spilled 16-28 B with 8 warps)."""
    return max(4, min(16, bm * bk // 1024))


#: (1, g) groups up to this (padded) size take the per-row kernel; longer ones the block kernel.
MAX_ROW_GROUP = ROW_BLOCKS[-1]
#: A (bm, bk) block up to this many (padded) elements is one tile of one program, read once.
BLOCK_TILE_MAX = 16384
#: Tile of the looping block kernel (larger blocks, and -1 dims that do not fit one tile).
BLOCK_LOOP_ELEMS = 4096


def block_dims(M: int, K: int, bm: int, bk: int) -> tuple[int, int]:
    """``(bm, bk)`` with -1 (the full extent) resolved for an ``[M, K]`` view."""
    return (max(M, 1) if bm == -1 else bm), (max(K, 1) if bk == -1 else bk)


def block_grid(M: int, K: int, bm: int, bk: int) -> tuple[int, int]:
    """Shape of the block scales: ``[ceil(M/bm), ceil(K/bk)]``, 1 along a -1 dim (one group)."""
    return (1 if bm == -1 else cdiv(M, bm)), (1 if bk == -1 else cdiv(K, bk))


def uses_row_kernel(bm: int, bk: int) -> bool:
    """(1, g) groups (g up to MAX_ROW_GROUP, or -1: per row) go through the per-row kernel."""
    return bm == 1 and (bk == -1 or next_power_of_2(bk) <= MAX_ROW_GROUP)


def block_config(M: int, K: int, bm: int, bk: int, sms: int) -> dict:
    """Config of ``_quant_block_kernel`` for (bm, bk) blocks of ``[M, K]`` on a GPU with ``sms`` SMs: the
    tile, PHASE (0 one tile per block, 1 a looping program per block, 2+3 row splits of few tall blocks),
    ``n_split`` / ``rows_per_split`` and num_warps. A pure function of its arguments."""
    em, ek = block_dims(M, K, bm, bk)
    gm, gk = block_grid(M, K, bm, bk)
    pm, pk = next_power_of_2(em), next_power_of_2(ek)
    if pm * pk <= BLOCK_TILE_MAX:
        return {"PHASE": 0, "TILE_M": pm, "TILE_K": pk, "n_split": 1, "rows_per_split": em,
                "num_warps": _block_warps(pm, pk)}
    tk = min(pk, 1024)
    tm = min(pm, max(1, BLOCK_LOOP_ELEMS // tk))
    n_split, per = 1, em
    want = 2 * sms
    if gm * gk < want and em > 2 * tm:
        # too few blocks to fill the GPU: split each block's rows over several programs
        n_split = min(cdiv(want, gm * gk), cdiv(em, tm))
        per = cdiv(cdiv(em, n_split), tm) * tm
        n_split = cdiv(em, per)
    return {"PHASE": 1 if n_split == 1 else 2, "TILE_M": tm, "TILE_K": tk, "n_split": n_split,
            "rows_per_split": per, "num_warps": 8 if tm * tk >= 4096 else 4}


def tile_config(R: int, C: int, transposed: bool = False) -> tuple[int, int, int]:
    if transposed:
        return TILE_CONFIGS["square"]
    return TILE_CONFIGS["wide"] if C > 128 else TILE_CONFIGS["narrow"]


def _on_sm80(device: torch.device) -> bool:
    if interpreter_enabled() or device.type != "cuda":
        return False
    cap = device_capability(device)
    return cap is not None and cap < (8, 9)


#: Programs per SM of the per-tensor amax pass (each reduces a contiguous band of rows to one partial).
AMAX_PROGS_PER_SM = 4


def _grid_rows(R: int, device: torch.device) -> tuple[int, int]:
    """(programs, rows per program) for the per-tensor amax pass: <= MAX_PARTIALS programs."""
    want = min(MAX_PARTIALS, max(1, AMAX_PROGS_PER_SM * num_sms(device)), R)
    per = cdiv(R, want)
    return cdiv(R, per), per


def _row_slice(K: int, group: int | None) -> int | None:
    """Width of the column slices (1, group) rows longer than the largest tile are launched over: a whole
    number of groups per tile; None when the row is not sliced."""
    if group is None:
        return None
    cfg = row_config(K, group)
    width = (cfg["BLOCK_K"] // cfg["GP"]) * group
    return None if K <= width else width


def rows_sliced(K: int, group: int | None) -> bool:
    """(1, group) rows longer than the largest tile: launched per column slice, on 2-D views."""
    return _row_slice(K, group) is not None


def rows_step(M: int, K: int, stride_xm: int, stride_qm: int, stride_sm: int, fmax: float,
              group: int | None, ub_mode: int = 0):
    """Dynamic per-row (``group`` None) or (1, group) quantization of ``x [M, K]`` (K contiguous) into
    ``q`` (K contiguous) and ``s``: ``run(x, q, s, ub=0.0)``; x, q and s must be 2-D when ``rows_sliced``.
    ``ub_mode``: 0 no amax bound, 1 ``ub`` a 1-element fp32 tensor, 2 ``ub`` a float (see _ub_amax)."""
    cfg = row_config(K, group)
    width = _row_slice(K, group)
    if width is not None:
        # Long rows with (1, group) groups: one launch per column slice of whole groups.
        parts = [(k0, min(width, K - k0),
                  rows_step(M, min(width, K - k0), stride_xm, stride_qm, stride_sm, fmax, group, ub_mode))
                 for k0 in range(0, K, width)]

        def run_sliced(x, q, s, ub=0.0):
            for k0, kk, step in parts:
                step(x[:, k0:k0 + kk], q[:, k0:k0 + kk], s[:, k0 // group:], ub)
        return run_sliced
    launch = KernelLaunch(_quant_rows_kernel, (cdiv(M, cfg["ROWS"]),),
                          dict(FMAX=fmax, GROUP=group or cfg["BLOCK_K"], GP=cfg["GP"], ROWS=cfg["ROWS"],
                               BLOCK_K=cfg["BLOCK_K"], SINGLE=cfg["SINGLE"], UB=ub_mode), num_warps=cfg["num_warps"])
    ints = (M, K, stride_xm, stride_qm, stride_sm)

    def run(x, q, s, ub=0.0):
        launch(x, q, s, ub, *ints)
    return run


def blocks_step(M: int, K: int, stride_xm: int, stride_qm: int, bm: int, bk: int, fmax: float,
                device: torch.device, ub_mode: int = 0):
    """Dynamic (bm, bk)-block quantization of ``x [M, K]`` (K contiguous) into ``q`` (K contiguous) and
    ``s [gm, gk]`` (``_quant_block_kernel``): ``run(x, q, s, ub=0.0)``; ``ub_mode`` as for rows_step."""
    cfg = block_config(M, K, bm, bk, num_sms(device))
    gm, gk = block_grid(M, K, bm, bk)
    n_split = cfg["n_split"]
    const = dict(FMAX=fmax, BM=bm, BK=bk, TILE_M=cfg["TILE_M"], TILE_K=cfg["TILE_K"], UB=ub_mode)
    ints = (M, K, stride_xm, stride_qm, gk, n_split, cfg["rows_per_split"])
    if cfg["PHASE"] < 2:
        launch = KernelLaunch(_quant_block_kernel, (gm, gk), dict(const, PHASE=cfg["PHASE"]),
                              num_warps=cfg["num_warps"])

        def run(x, q, s, ub=0.0):
            launch(x, q, s, s, ub, *ints)
        return run
    amax = KernelLaunch(_quant_block_kernel, (gm * n_split, gk), dict(const, PHASE=2), num_warps=cfg["num_warps"])
    quant = KernelLaunch(_quant_block_kernel, (gm * n_split, gk), dict(const, PHASE=3), num_warps=cfg["num_warps"])

    def run_split(x, q, s, ub=0.0):
        part = torch.zeros(gm, gk, dtype=torch.int32, device=device)  # amax bits, merged by atomic max
        amax(x, q, s, part, ub, *ints)
        quant(x, q, s, part, ub, *ints)
    return run_split


def _block_tile_args(M: int, K: int, bm: int, bk: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(BM, BK)`` and the scale strides for ``_scale_tile_kernel`` MODE 4 over ``[gm, gk]`` block scales:
    a -1 dim becomes block size 1 with scale stride 0 (every row / column reads the one group's scale)."""
    gm, gk = block_grid(M, K, bm, bk)
    return (1 if bm == -1 else bm, 1 if bk == -1 else bk), (0 if bm == -1 else gk, 0 if bk == -1 else 1)


def scale_tiles_step(R: int, C: int, x_strides, y_strides, s_strides, mode: int, fmax: float, *, dequant: bool,
                     block=(1, 1), n_part: int = 0, reverse: bool = False):
    """Apply given scales tile by tile (``_scale_tile_kernel``): ``run(x, y, s)``."""
    br, bc, warps = tile_config(R, C)
    launch = KernelLaunch(_scale_tile_kernel, (cdiv(R, br) * cdiv(C, bc),),
                          dict(FMAX=fmax, MODE=mode, DEQUANT=dequant, REVERSE=reverse, BM=block[0], BK=block[1],
                               BLOCK_R=br, BLOCK_C=bc, BLOCK_P=max(16, next_power_of_2(max(n_part, 1)))),
                          num_warps=warps)
    ints = (R, C, x_strides[0], x_strides[1], y_strides[0], y_strides[1], s_strides[0], s_strides[1], n_part)

    def run(x, y, s):
        launch(x, y, s, *ints)
    return run


def tensor_quant_step(R: int, C: int, x_strides, q_strides, fmax: float, device: torch.device):
    """Dynamic per-tensor quantization in two launches and no host sync: ``run(x, q) -> scale []``."""
    n, per = _grid_rows(R, device)
    br, bc, warps = tile_config(R, C)
    amax = KernelLaunch(_amax_rows_kernel, (n,), dict(BLOCK_R=br, BLOCK_C=bc), num_warps=warps)
    amax_ints = (R, C, x_strides[0], per)
    quant = scale_tiles_step(R, C, x_strides, q_strides, (0, 0), 1, fmax, dequant=False, n_part=n, reverse=True)

    def run(x, q):
        part = torch.empty(n + 1, dtype=torch.float32, device=device)  # the last slot receives the scale
        amax(x, part, *amax_ints)
        quant(x, q, part)
        return part[n:].view(())
    return run


#: Column amax partials: (BLOCK_R, BLOCK_C) per program and at most this many row splits (the quantize
#: pass reduces [splits, BLOCK_C] partials once per program).
COL_AMAX = (32, 128)
COL_MAX_SPLITS = 64
#: Column quantize (``_quant_cols_kernel``): (BLOCK_R, BLOCK_C, num_warps, rows per program). 128 rows of
#: 64 columns: 16 KB of fp16 per step and 128-byte runs when written transposed (K-major); 512 rows per
#: program amortise the partials' reduction (<= 16 KB from L2) over 64 KB of input. 8 warps: 128 registers
#: a thread for the transposed store (4 warps took 228-240).
COL_QUANT = (128, 64, 8, 512)


def _col_splits(R: int) -> tuple[int, int]:
    """(splits, rows per split) of the column-amax pass: ~256 rows (64 KB of fp16 x 128 columns) per
    program, at most COL_MAX_SPLITS splits."""
    per = max(256, cdiv(cdiv(R, COL_MAX_SPLITS), COL_AMAX[0]) * COL_AMAX[0])
    return cdiv(R, per), per


def _quant_cols_launch(R: int, C: int, x_strides, q_strides, n_split: int, fmax: float):
    br, bc, warps, per = COL_QUANT
    launch = KernelLaunch(_quant_cols_kernel, (cdiv(C, bc) * cdiv(R, per),),
                          dict(FMAX=fmax, BLOCK_R=br, BLOCK_C=bc, BLOCK_P=max(2, next_power_of_2(n_split)),
                               REVERSE=True), num_warps=warps)
    ints = (R, C, x_strides[0], x_strides[1], q_strides[0], q_strides[1], n_split, per)
    return launch, ints


def cols_step(R: int, C: int, x_strides, q_strides, fmax: float, device: torch.device):
    """Dynamic per-column quantization of ``x [R, C]`` (any strides) into ``q`` (any strides, e.g. the
    K-major transpose fp8_gemm wants) and ``s [C]``: column-amax partials, then one pass that reduces them
    per column and quantizes. ``run(x, q, s)``."""
    split, per = _col_splits(R)
    bc = 128 if x_strides[1] == 1 else 64
    amax = KernelLaunch(_amax_cols_kernel, (cdiv(C, bc), split), dict(BLOCK_R=COL_AMAX[0], BLOCK_C=bc),
                        num_warps=4)
    amax_ints = (R, C, x_strides[0], x_strides[1], per)
    quant, quant_ints = _quant_cols_launch(R, C, x_strides, q_strides, split, fmax)

    def run(x, q, s):
        part = torch.empty(split, C, dtype=torch.float32, device=device)
        amax(x, part, *amax_ints)
        quant(x, q, part, s, *quant_ints)
    return run


def gemm_prep_step(M: int, K: int, stride_am: int, N: int, b_strides, device: torch.device):
    """Both operands of ``fp8_gemm(a, b)`` from float ``a [M, K]`` (K contiguous) and a row-major
    ``b [K, N]`` in two launches (see :func:`quantize_operands_for_gemm`): ``run(a, b, qa, sa, qbt, sb)``
    with ``qbt [N, K]`` contiguous (K-major b)."""
    fmax = FP8_MAX[torch.float8_e4m3fn]
    cfg = row_config(K)
    n_a = cdiv(M, cfg["ROWS"])
    split, per = _col_splits(K)
    br, bc = COL_AMAX
    n_cb = cdiv(N, bc)
    prep = KernelLaunch(_gemm_prep_kernel, (n_a + n_cb * split,),
                        dict(FMAX=fmax, ROWS=cfg["ROWS"], BLOCK_K=cfg["BLOCK_K"], SINGLE=cfg["SINGLE"], CB_R=br,
                             CB_C=bc), num_warps=cfg["num_warps"])
    prep_ints_a = (M, K, stride_am, K, n_a)
    prep_ints_b = (N, b_strides[0], b_strides[1], per, n_cb)
    quant, quant_ints = _quant_cols_launch(K, N, b_strides, (1, K), split, fmax)

    def run(a, b, qa, sa, qbt, sb):
        part = torch.empty(split, N, dtype=torch.float32, device=device)
        prep(a, qa, sa, *prep_ints_a, b, part, *prep_ints_b)
        quant(b, qbt, part, sb, *quant_ints)
    return run


def column_scales(x2: torch.Tensor, fmax: float) -> torch.Tensor:
    """Dynamic per-column scales ``[C]`` of a 2-D ``[R, C]`` view (any strides)."""
    R, C = x2.shape
    bc = 128 if x2.stride(1) == 1 else 64
    br = 32
    # Enough programs to fill the GPU: split the rows so that (C / bc) * split >= 4 programs per SM.
    split = max(1, min(64, cdiv(4 * num_sms(x2.device), cdiv(C, bc)), cdiv(R, br)))
    per = cdiv(R, split)
    split = cdiv(R, per)
    part = torch.empty(split, C, dtype=torch.float32, device=x2.device)
    _amax_cols_kernel[(cdiv(C, bc), split)](x2, part, R, C, x2.stride(0), x2.stride(1), per, BLOCK_R=br,
                                             BLOCK_C=bc, num_warps=4)
    s = torch.empty(C, dtype=torch.float32, device=x2.device)
    _finalize_cols_kernel[(cdiv(C, 128),)](part, s, split, C, FMAX=fmax,
                                           BLOCK_S=max(2, next_power_of_2(split)), BLOCK_C=128, num_warps=4)
    return s


def quantize_operands_for_gemm(a2: torch.Tensor, b: torch.Tensor):
    """e4m3 operands for ``fp8_gemm(a, b)`` from float ``a2 [M, K]`` and ``b [K, N]`` in two launches:
    a per row (one pass), b per column, written K-major (``qb`` is a ``[K, N]`` view of a contiguous
    ``[N, K]``, the layout FP8 MMA wants). Returns ``(qa, sa [M, 1], qb, sb [1, N])``.

    * ``b = w.t()`` (K-major already): both are per-row quantizations, one pass each.
    * row-major ``b``: launch 1 quantizes a and takes b's column-amax partials; launch 2 reduces the
      partials per column and quantizes b transposed, bottom-up so its first reads hit L2. Bytes per b
      element: 2 (amax) + 2 (mostly L2) + 1 (write), against 2 + 2 + 1 plus a finalize launch before.

    fp8_gemm uses these two launches when ``b``'s FP8 copy cannot be reused (a new ``b``, CUDA-graph
    capture); a ``b`` passed again unchanged is quantized once (see fp8_cache).
    """
    fmax = FP8_MAX[torch.float8_e4m3fn]
    M, K = a2.shape
    N = b.shape[1]
    dev = a2.device
    if a2.stride(-1) != 1:
        a2 = a2.contiguous()
    qa = torch.empty(M, K, dtype=torch.float8_e4m3fn, device=dev)
    sa = torch.empty(M, 1, dtype=torch.float32, device=dev)
    qw = torch.empty(N, K, dtype=torch.float8_e4m3fn, device=dev)
    sb = torch.empty(1, N, dtype=torch.float32, device=dev)
    if _on_sm80(dev):
        qa, sa = _quantize_torch(a2, torch.float8_e4m3fn, "row", None, None, qa)
        qb, sb = _quantize_torch(b, torch.float8_e4m3fn, "column", None, None, qw.t())
        return qa, sa, qb, sb.reshape(1, N)
    if b.stride(0) == 1 and b.shape[0] > 1:
        # b = w.t(): per column of b is per row of w
        rows_step(M, K, a2.stride(0), K, 1, fmax, None)(a2, qa, sa)
        rows_step(N, K, b.stride(1), K, 1, fmax, None)(b, qw, sb)
    else:
        gemm_prep_step(M, K, a2.stride(0), N, b.stride(), dev)(a2, b, qa, sa, qw, sb)
    return qa, sa, qw.t(), sb


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 0:
        return x.reshape(1, 1)
    if x.dim() == 1:
        return x.reshape(1, -1)
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    return rows_view(x)


def _same_memory(view: torch.Tensor, x: torch.Tensor) -> bool:
    """``view`` (of non-empty x) reads x's own elements: no copy was made (a copy is a new allocation), so x
    itself can be passed to a kernel with view's strides."""
    return view.data_ptr() == x.data_ptr()


def scale_shape(shape: tuple[int, ...], granularity: str, block_size: tuple[int, int] | None) -> tuple:
    """Shape of the scale tensor for an input of ``shape``."""
    if granularity == "tensor":
        return ()
    K = shape[-1] if shape else 1
    M = 1
    for d in shape[:-1]:
        M *= d
    if granularity == "row":
        return tuple(shape[:-1]) + (1,)
    if granularity == "column":
        return (1,) * (len(shape) - 1) + (K,)
    bm, bk = block_size
    return block_grid(M, K, bm, bk)


#: Attribute set on the scale tensors dynamic quantization returns: ``(id, data_ptr, version)`` at creation.
#: Cheaper than a cache entry (no weak reference per call) and it dies with the tensor; a later in-place
#: write (version bump), a swapped storage (``.data = ...``, new data_ptr) or a copy that carries the
#: attribute along (``deepcopy``, ``torch.save``/``load``: another object) invalidates it.
_VALID_ATTR = "_triton_ops_valid_scale"


def _mark_valid(s: torch.Tensor) -> None:
    try:
        setattr(s, _VALID_ATTR, (id(s), s.data_ptr(), s._version))
    except RuntimeError:  # inference tensor: no version counter, nothing can be remembered safely
        pass


def _marked_valid(t: torch.Tensor) -> bool:
    mark = getattr(t, _VALID_ATTR, None)
    if mark is None:
        return False
    try:
        return mark == (id(t), t.data_ptr(), t._version)
    except RuntimeError:
        return False


def _plan_quantize(x: torch.Tensor, fmt: str, granularity: str, bm: int, bk: int, has_scale: bool,
                   transpose_out: bool = False, mark_valid: bool = False, ub_mode: int = 0):
    """A quantization plan for x's signature: ``run(x, scale, ub=None) -> (q, s)``. ``transpose_out`` (2-D
    x, column granularity only) writes q as the contiguous ``[K, M]`` transpose, returned as a ``[M, K]``
    view (fp8_gemm's K-major weights). ``mark_valid``: remember the dynamic scales it returns as valid
    (finite, >= 2^-126 by construction), so fp8_gemm's ``check_scales`` needs no device sync for them.
    ``ub_mode`` (dynamic row / block only): 0 no ``scale_ub``, 1 ``ub`` a 1-element fp32 tensor, 2 a float."""
    dtype = _FMT_DTYPE[fmt]
    fmax = FP8_MAX[dtype]
    dev = x.device
    shape = tuple(x.shape)
    block = (bm, bk) if granularity == "block" else None
    s_shape = scale_shape(shape, granularity, block)

    def alloc_q():
        if transpose_out:
            return torch.empty(shape[1], shape[0], dtype=dtype, device=dev).t()
        return torch.empty(shape, dtype=dtype, device=dev)

    if x.numel() == 0:
        def run_empty(x, scale, ub=None):
            s = torch.ones(s_shape, dtype=torch.float32, device=dev) if scale is None else \
                scale.to(torch.float32).reshape(s_shape).clone()
            return alloc_q(), s
        return run_empty
    if _on_sm80(dev):
        return lambda x, scale, ub=None: _quantize_torch(x, dtype, granularity, block, scale, alloc_q(), ub)
    # The column path's kernels take any strides (a transposed weight w.t() is read in place).
    col2d = granularity == "column" and x.dim() == 2
    x2 = x if col2d else _as_2d(x)
    direct = col2d or _same_memory(x2, x)  # pass x itself with x2's strides (no per-call view or copy)
    M, K = x2.shape
    xs = x2.stride()
    qs = (1, M) if transpose_out else (K, 1)  # q is [*shape] contiguous, or the [M, K] view of a [K, M]
    keep = _mark_valid if mark_valid else None

    def src(x):
        return x if direct else _as_2d(x)

    if has_scale:
        mode = {"tensor": 0, "row": 2, "column": 3, "block": 4}[granularity]
        tile_block = (1, 1)
        if mode == 4:
            tile_block, ss = _block_tile_args(M, K, bm, bk)
        else:
            ss = (1, 0) if mode == 2 else (0, 1) if mode == 3 else (0, 0)
        step = scale_tiles_step(M, K, xs, qs, ss, mode, fmax, dequant=False, block=tile_block)

        def run_static(x, scale, ub=None):
            s = scale.to(torch.float32).reshape(s_shape).contiguous()
            if s.data_ptr() == scale.data_ptr():
                s = s.clone()  # never hand back the caller's tensor as an output
            q = alloc_q()
            step(src(x), q, s)
            return q, s
        return run_static

    if granularity == "row" or (granularity == "block" and uses_row_kernel(bm, bk)):
        group = None if granularity == "row" or bk == -1 else bk
        s2_shape = (M, 1) if group is None else (M, cdiv(K, bk))
        step = rows_step(M, K, xs[0], K, s2_shape[1], fmax, group, ub_mode)
        sliced = rows_sliced(K, group)

        def run_rows(x, scale, ub=None):
            q = alloc_q()
            s = torch.empty(s_shape if granularity == "row" else s2_shape, dtype=torch.float32, device=dev)
            u = 0.0 if ub is None else ub
            if sliced:
                step(_as_2d(x), q.view(M, K), s, u)
            else:
                step(src(x), q, s, u)
            if keep is not None:
                keep(s)
            return q, s
        return run_rows
    if granularity == "block":
        step = blocks_step(M, K, xs[0], K, bm, bk, fmax, dev, ub_mode)

        def run_block(x, scale, ub=None):
            q = alloc_q()
            s = torch.empty(s_shape, dtype=torch.float32, device=dev)
            step(src(x), q, s, 0.0 if ub is None else ub)
            if keep is not None:
                keep(s)
            return q, s
        return run_block
    if granularity == "tensor":
        step = tensor_quant_step(M, K, xs, qs, fmax, dev)

        def run_tensor(x, scale, ub=None):
            q = alloc_q()
            s = step(src(x), q)
            if keep is not None:
                keep(s)
            return q, s
        return run_tensor
    # column
    step = cols_step(M, K, xs, qs, fmax, dev)

    def run_cols(x, scale, ub=None):
        q = alloc_q()
        s = torch.empty(s_shape, dtype=torch.float32, device=dev)
        step(src(x), q, s)
        if keep is not None:
            keep(s)
        return q, s
    return run_cols


def _quantize_impl(x: torch.Tensor, fmt: str, granularity: str, bm: int, bk: int,
                   scale: torch.Tensor | None, transpose_out: bool = False,
                   scale_ub: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher (x validated), planned for this one call: the custom op's implementation."""
    return _plan_quantize(x, fmt, granularity, bm, bk, scale is not None, transpose_out,
                          ub_mode=0 if scale_ub is None else 1)(x, scale, scale_ub)


def _quantize_torch(x, dtype, granularity, block, scale, q, scale_ub=None):
    """Same semantics with PyTorch ops (sm_80: no FP8 conversion instructions for Triton). ``scale_ub``: a
    float or a 1-element tensor bounding the dynamic amax."""
    xf = x.float()
    fmax = FP8_MAX[dtype]
    ax = xf.abs()
    ax = torch.where(torch.isfinite(ax), ax, torch.zeros((), device=x.device))
    s_shape = scale_shape(tuple(x.shape), granularity, block)
    K = x.shape[-1] if x.dim() else 1
    if scale is None:
        if granularity == "tensor":
            amax = ax.amax()
        elif granularity == "row":
            amax = ax.amax(dim=-1, keepdim=True)
        elif granularity == "column":
            amax = ax.reshape(-1, K).amax(dim=0).reshape(s_shape)
        else:
            a2 = ax.reshape(-1, K)
            M = a2.shape[0]
            em, ek = block_dims(M, K, *block)
            gm, gk = s_shape
            pad = torch.zeros(gm * em, gk * ek, device=x.device)
            pad[:M, :K] = a2
            amax = pad.reshape(gm, em, gk, ek).amax(dim=(1, 3))
        if scale_ub is not None:
            ub = scale_ub.to(torch.float32).reshape(()) if isinstance(scale_ub, torch.Tensor) else \
                torch.tensor(scale_ub, dtype=torch.float32, device=x.device)
            amax = torch.minimum(amax, ub)
        # divide by a device tensor, not a Python number: CUDA's div by a CPU scalar multiplies by the
        # rounded reciprocal (1 ulp off the kernels' div_rn in ~40% of groups, measured on an H200)
        fmax_t = torch.full((), fmax, dtype=torch.float32, device=x.device)
        s = torch.where(amax > 0, amax / fmax_t, torch.ones((), device=x.device)).clamp_min(MIN_SCALE)
    else:
        s = scale.to(torch.float32).reshape(s_shape)
    if granularity == "block":
        full = _expand_block_scales(s, xf.reshape(-1, K).shape, block).reshape(x.shape)
    else:
        full = s
    v = (xf * (1.0 / full)).clamp(-fmax, fmax)
    v = torch.where(torch.isnan(xf), xf, v)
    q.copy_(v.to(dtype))
    return q, s.contiguous()


def _expand_block_scales(s: torch.Tensor, shape2: tuple, block) -> torch.Tensor:
    """Block scales ``[gm, gk]`` repeated over the ``[M, K]`` view (PyTorch ops, for sm_80)."""
    M, K = shape2
    em, ek = block_dims(M, K, *block)
    return s.float().repeat_interleave(em, 0).repeat_interleave(ek, 1)[:M, :K]


def _plan_dequantize(q: torch.Tensor, scale: torch.Tensor, granularity: str, bm: int, bk: int,
                     out_dtype: torch.dtype):
    """A dequantization plan for the signature of (q, scale): ``run(q, scale) -> out``."""
    dev = q.device
    shape = tuple(q.shape)
    if q.numel() == 0:
        return lambda q, scale: torch.empty(shape, dtype=out_dtype, device=dev)
    if _on_sm80(dev):
        def run_torch(q, scale):
            out = torch.empty(shape, dtype=out_dtype, device=dev)
            if granularity == "block":
                q2 = q.reshape(-1, q.shape[-1]).float()
                return out.copy_((q2 * _expand_block_scales(scale, q2.shape, (bm, bk))).reshape(shape))
            return out.copy_(q.float() * scale.float().reshape(scale_shape(shape, granularity, None)))
        return run_torch
    q2 = _as_2d(q)
    direct = _same_memory(q2, q)
    R, C = q2.shape
    mode = {"tensor": 0, "row": 2, "column": 3, "block": 4}[granularity]
    tile_block = (1, 1)
    if mode == 4:
        tile_block, ss = _block_tile_args(R, C, bm, bk)
    else:
        ss = (1, 0) if mode == 2 else (0, 1) if mode == 3 else (0, 0)
    step = scale_tiles_step(R, C, q2.stride(), (C, 1), ss, mode, 0.0, dequant=True, block=tile_block)
    as_is = scale.dtype == torch.float32 and scale.is_contiguous()

    def run(q, scale):
        out = torch.empty(shape, dtype=out_dtype, device=dev)
        step(q if direct else _as_2d(q), out, scale if as_is else scale.to(torch.float32).contiguous())
        return out
    return run


def _dequantize_impl(q: torch.Tensor, scale: torch.Tensor, granularity: str, bm: int, bk: int,
                     out_dtype: torch.dtype) -> torch.Tensor:
    return _plan_dequantize(q, scale, granularity, bm, bk, out_dtype)(q, scale)


# ---------------------------------------------------------------------------------------------------
# Layer 3: custom ops
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op("triton_ops::fp8_quantize", mutates_args=())
def _fp8_quantize_op(x: torch.Tensor, fmt: str, granularity: str, bm: int, bk: int,
                     scale: torch.Tensor | None, scale_ub: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize_impl(x, fmt, granularity, bm, bk, scale, scale_ub=scale_ub)


@_fp8_quantize_op.register_fake
def _(x, fmt, granularity, bm, bk, scale, scale_ub=None):
    block = (bm, bk) if granularity == "block" else None
    q = x.new_empty(x.shape, dtype=_FMT_DTYPE[fmt])
    return q, x.new_empty(scale_shape(tuple(x.shape), granularity, block), dtype=torch.float32)


@torch.library.custom_op("triton_ops::fp8_dequantize", mutates_args=())
def _fp8_dequantize_op(q: torch.Tensor, scale: torch.Tensor, granularity: str, bm: int, bk: int,
                       out_dtype: torch.dtype) -> torch.Tensor:
    return _dequantize_impl(q, scale, granularity, bm, bk, out_dtype)


@_fp8_dequantize_op.register_fake
def _(q, scale, granularity, bm, bk, out_dtype):
    return q.new_empty(q.shape, dtype=out_dtype)


# ---------------------------------------------------------------------------------------------------
# Layer 4: functional API
# ---------------------------------------------------------------------------------------------------


def _check_fp8_dtype(dtype) -> str:
    if dtype not in FP8_DTYPES:
        raise InvalidArgumentError(f"dtype={dtype!r} is not an FP8 format; expected torch.float8_e4m3fn or "
                                   "torch.float8_e5m2")
    return _FMT_NAME[dtype]


def _plain_block(block_size) -> bool:
    """None or a tuple of plain ints: only those take a plan (``(1.0, 128) == (1, 128)`` as a dict key, so a
    float block would find the plan of the int one and skip the check that refuses it)."""
    return block_size is None or (type(block_size) is tuple and all(type(v) is int for v in block_size))


def _check_block(granularity: str, block_size) -> tuple[int, int]:
    if granularity != "block":
        if block_size is not None:
            raise InvalidArgumentError(f"block_size={block_size!r} is only meaningful with granularity='block'")
        return 1, 1
    if block_size is None:
        raise InvalidArgumentError("granularity='block' needs block_size, e.g. (1, 128) or (128, 128)")
    try:
        pair = tuple(block_size)
    except TypeError:
        pair = ()
    if len(pair) != 2:
        raise InvalidArgumentError(f"block_size must be a pair of ints, got {block_size!r}")
    # (1.5, 128), (1.0, 128), ("1", 128) or (True, 128) are refused, not truncated
    bm, bk = (check_int(v, f"block_size[{i}]") for i, v in enumerate(pair))
    for i, v in enumerate((bm, bk)):
        if v < 1 and v != -1:
            raise InvalidArgumentError(
                f"block_size={block_size!r} is not supported: block_size[{i}] must be >= 1, or -1 for the full "
                f"extent of that dim (e.g. (1, 128) per token group, (128, 128) for weights, (-1, 128) per "
                f"128 columns over all rows), got {v}")
    return bm, bk


def _check_scale_ub(scale_ub, granularity: str, has_scale: bool, x: torch.Tensor, check: bool):
    """``scale_ub`` validated: None, a Python float, or a 1-element fp32 tensor on x's device."""
    if scale_ub is None:
        return None
    if has_scale:
        raise InvalidArgumentError("scale_ub bounds dynamic scales; it cannot be combined with a given scale")
    if granularity not in UB_GRANULARITIES:
        raise InvalidArgumentError(f"scale_ub is supported with granularity in {UB_GRANULARITIES} (dynamic), not "
                                   f"{granularity!r}")
    if isinstance(scale_ub, torch.Tensor):
        check_tensor(scale_ub, "scale_ub")
        check_dtype(scale_ub, "scale_ub", (torch.float32,))
        if scale_ub.numel() != 1:
            raise ShapeError(f"scale_ub must hold one value (a 0-d fp32 tensor), got shape {tuple(scale_ub.shape)}")
        check_same_device({"x": x, "scale_ub": scale_ub})
        if check:
            check_scale_values(scale_ub, "scale_ub")
        return scale_ub
    if isinstance(scale_ub, (bool, np.bool_)) or not isinstance(scale_ub, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"scale_ub must be a float or a 0-d fp32 tensor, got {type(scale_ub).__name__} "
                                   f"{scale_ub!r}")
    v = float(scale_ub)
    # finite and > 0 once rounded to fp32: above half the smallest subnormal (2^-150 rounds to 0) and below
    # the midpoint between fp32's largest value and 2^128 (which rounds to inf)
    if not (2.0**-150 < v < 2.0**128 - 2.0**103):
        raise InvalidArgumentError(f"scale_ub must be finite and > 0 in fp32, got {scale_ub!r}")
    return v


def _skip_value_checks() -> bool:
    """Value checks on scales read the device (a host sync): skipped while tracing or capturing."""
    try:
        if torch.compiler.is_compiling():
            return True
    except AttributeError:  # pragma: no cover - very old torch
        pass
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def check_scale_values(scale: torch.Tensor, name: str) -> None:
    """Scales must be finite and > 0.

    One device->host sync the first time a scale tensor is seen; a scale that passed, or that
    ``quantize_fp8`` produced by dynamic scaling (finite and >= 2^-126 by construction), is remembered
    while unchanged (same storage and version counter, see fp8_cache), so a scale reused across calls
    costs the sync once, not per call. Skipped while tracing or capturing a CUDA graph; the FP8 GEMM
    kernels check every scale they read as well and write NaN where one is invalid, so a bad scale never
    yields a finite wrong result on any path."""
    base = scale._base
    if _marked_valid(scale) or (base is not None and _marked_valid(base)):  # ours, or a view of ours (sw.t())
        return
    if scale.numel() == 0 or valid_scales.get(scale, True) is not None or _skip_value_checks():
        return
    s = scale.detach().float()
    bad = ~(torch.isfinite(s) & (s > 0))
    if bool(bad.any()):
        first = s[bad].reshape(-1)[0].item()
        raise NumericalError(f"{name} must hold finite positive values; found {first!r} "
                             f"({int(bad.sum())} bad of {s.numel()})")
    valid_scales.put(scale, True, True)


def check_scale_shape(scale: torch.Tensor, x_shape: tuple, granularity: str, block, name: str) -> None:
    want = scale_shape(tuple(x_shape), granularity, block)
    numel = 1
    for d in want:
        numel *= d
    if granularity == "block":
        ok = tuple(scale.shape) == tuple(want)
    elif granularity == "tensor":
        ok = scale.numel() == 1
    else:
        # accept the canonical shape or any shape with the same number of scales along the one axis
        ok = scale.numel() == numel and (tuple(scale.shape) == tuple(want) or scale.dim() <= 2)
    if not ok:
        raise ShapeError(f"{name} has shape {tuple(scale.shape)}; granularity={granularity!r} for an input of "
                         f"shape {tuple(x_shape)} expects {want}")


_quant_plans = PlanCache("quantize_fp8")
_dequant_plans = PlanCache("dequantize_fp8")


def quantize_fp8(x: torch.Tensor, *, dtype: torch.dtype = torch.float8_e4m3fn, granularity: str = "tensor",
                 block_size: tuple[int, int] | None = None, scale: torch.Tensor | None = None,
                 check_scale: bool = True, scale_ub: float | torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` (fp16/bf16/fp32) to FP8; returns ``(q, scale)`` with ``x ~= q.float() * scale``.

    granularity: "tensor" (scale ``[]``), "row" (per token, ``[*lead, 1]``), "column" (per channel over
    the last dim, ``[1, K]``) or "block" with ``block_size=(bm, bk)`` over the ``[M, K]`` view of the
    leading dims (scale ``[ceil(M/bm), ceil(K/bk)]``, fp32). Any ``bm, bk >= 1`` works, and -1 stands for
    the full extent of that dim (vLLM's ``GroupShape``): ``(1, 128)`` / ``(1, 64)`` / ``(1, 32)`` /
    ``(1, 16)`` or ``(1, g)`` for any g are per-token groups, ``(128, 128)`` / ``(4, 256)`` 2-D blocks,
    ``(-1, 128)`` one scale per 128 columns over all rows (scale ``[1, ceil(K/128)]``), ``(1, -1)`` per
    row (scale ``[M, 1]``) and ``(-1, -1)`` one scale (``[1, 1]``). A group that K (or M) does not divide
    is ragged: the last one holds fewer values.

    ``scale=None`` computes the scale from the amax (dynamic, no host sync): ``scale = amax / fmax`` (448
    for e4m3fn, 57344 for e5m2) with NaN and +-inf left out of the amax. An all-zero group (or one holding
    only NaN/inf) gets scale 1 -- vLLM floors it at ``1 / (fmax * 512)`` instead; the codes are 0 and
    dequantize to 0 either way -- and a scale is never below 2^-126, so ``1 / scale`` is finite: a group
    of tiny values (1e-30, subnormals) gets a tiny finite scale and dequantizes close to itself. A given
    scale is used as is (static). ``check_scale`` verifies a static scale (and a ``scale_ub`` tensor) is
    finite and positive (one host sync per new tensor or version, skipped under torch.compile /
    CUDA-graph capture).

    ``scale_ub`` (dynamic "row" and "block" only; vLLM's ``scaled_fp8_quant(..., scale_ub=)``): an upper
    bound on each group's *amax* (not on the scale), a float or a one-element fp32 tensor on x's device:
    ``scale = max(min(amax, scale_ub) / fmax, 2^-126)`` (1 for an all-zero group); values above
    ``scale_ub`` then saturate to +-fmax. The bound is taken in fp32.
    """
    ub = scale_ub
    if type(ub) is int:
        ub = float(ub)
    ub_tensor = ub if type(ub) in (torch.Tensor, torch.nn.Parameter) else None
    ub_key = None if ub is None else ("f", ub) if type(ub) is float else "t" if ub_tensor is not None else ()
    key = plan_key(x, scale, ub_tensor) if _plain_block(block_size) and ub_key != () else None
    if key is not None:
        key = (key, dtype, granularity, block_size, check_scale, ub_key)
        plan = _quant_plans.get(key)
        if plan is not None:
            if scale is not None and check_scale:
                check_scale_values(scale, "scale")
            if ub_tensor is not None and check_scale:
                check_scale_values(ub_tensor, "scale_ub")
            return plan(x, scale, ub)
    check_tensor(x, "x")
    check_dtype(x, "x", FLOAT_DTYPES)
    fmt = _check_fp8_dtype(dtype)
    if granularity not in GRANULARITIES:
        raise InvalidArgumentError(f"granularity={granularity!r} is not supported; expected one of {GRANULARITIES}")
    bm, bk = _check_block(granularity, block_size)
    if granularity != "tensor" and x.dim() < 1:
        raise ShapeError(f"granularity={granularity!r} needs at least a 1-D input, got a 0-d tensor")
    if scale is not None:
        check_tensor(scale, "scale")
        check_dtype(scale, "scale", FLOAT_DTYPES)
        check_same_device({"x": x, "scale": scale})
        check_scale_shape(scale, tuple(x.shape), granularity, (bm, bk), "scale")
        if check_scale:
            check_scale_values(scale, "scale")
    ub = _check_scale_ub(scale_ub, granularity, scale is not None, x, check_scale)
    check_runnable_device(x.device, "x")
    if key is not None:
        # Plain eager call: plan once per signature, launch directly (no custom-op dispatcher).
        ub_mode = 0 if ub is None else 2 if isinstance(ub, float) else 1
        plan = _quant_plans.put(key, _plan_quantize(x, fmt, granularity, bm, bk, scale is not None,
                                                     mark_valid=True, ub_mode=ub_mode))
        return plan(x, scale, ub)
    if isinstance(ub, float):
        ub = torch.full((), ub, dtype=torch.float32, device=x.device)
    return _fp8_quantize_op(x, fmt, granularity, bm, bk, scale, ub)


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, *, out_dtype: torch.dtype = torch.float32,
                   granularity: str | None = None, block_size: tuple[int, int] | None = None) -> torch.Tensor:
    """``q.float() * scale`` cast to ``out_dtype`` (fp16/bf16/fp32).

    The granularity is inferred from the scale's shape when not given (``[]``/``[1]`` tensor, ``[*lead, 1]``
    row, ``[1, K]`` column); block scales need ``granularity="block", block_size=...``, the block size they
    were made with (every shape :func:`quantize_fp8` takes, -1 included).
    """
    key = plan_key(q, scale) if _plain_block(block_size) else None
    if key is not None:
        key = (key, out_dtype, granularity, block_size)
        plan = _dequant_plans.get(key)
        if plan is not None:
            return plan(q, scale)
    check_tensor(q, "q")
    check_tensor(scale, "scale")
    check_dtype(q, "q", FP8_DTYPES)
    check_dtype(scale, "scale", FLOAT_DTYPES)
    check_out_dtype(out_dtype, FLOAT_DTYPES)
    check_same_device({"q": q, "scale": scale})
    gran = granularity
    if gran is None:
        if block_size is not None:
            gran = "block"
        elif scale.numel() == 1:
            gran = "tensor"
        elif q.dim() >= 1 and tuple(scale.shape) == tuple(q.shape[:-1]) + (1,):
            gran = "row"
        elif q.dim() >= 1 and scale.numel() == q.shape[-1] and scale.shape[-1] == q.shape[-1]:
            gran = "column"
        else:
            raise ShapeError(f"cannot infer the granularity of a scale of shape {tuple(scale.shape)} for q of shape "
                             f"{tuple(q.shape)}; pass granularity= (and block_size= for blocks)")
    if gran not in GRANULARITIES:
        raise InvalidArgumentError(f"granularity={gran!r} is not supported; expected one of {GRANULARITIES}")
    bm, bk = _check_block(gran, block_size)
    check_scale_shape(scale, tuple(q.shape), gran, (bm, bk), "scale")
    check_runnable_device(q.device, "q")
    if key is not None:
        plan = _dequant_plans.put(key, _plan_dequantize(q, scale, gran, bm, bk, out_dtype))
        return plan(q, scale)
    return _fp8_dequantize_op(q, scale, gran, bm, bk, out_dtype)


class FP8Quantizer(torch.nn.Module):
    """Module form of :func:`quantize_fp8` (dynamic scaling; ``scale_ub`` a float, as there)."""

    def __init__(self, dtype: torch.dtype = torch.float8_e4m3fn, granularity: str = "row",
                 block_size: tuple[int, int] | None = None, scale_ub: float | None = None):
        super().__init__()
        _check_fp8_dtype(dtype)
        if granularity not in GRANULARITIES:
            raise InvalidArgumentError(f"granularity={granularity!r} is not supported; expected one of "
                                       f"{GRANULARITIES}")
        bm, bk = _check_block(granularity, block_size)
        if scale_ub is not None:
            if isinstance(scale_ub, torch.Tensor):
                raise InvalidArgumentError("FP8Quantizer takes scale_ub as a float; pass a tensor bound to "
                                           "quantize_fp8 directly")
            scale_ub = _check_scale_ub(scale_ub, granularity, False, None, False)
        # kept as a tuple of ints (a list or numpy ints given), the form the launch plans are keyed on
        block_size = None if block_size is None else (bm, bk)
        self.dtype, self.granularity, self.block_size, self.scale_ub = dtype, granularity, block_size, scale_ub

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_fp8(x, dtype=self.dtype, granularity=self.granularity, block_size=self.block_size,
                            scale_ub=self.scale_ub)


# ---------------------------------------------------------------------------------------------------
# Compile specs (in fp8_build.py: this file passed ~1,000 lines)
# ---------------------------------------------------------------------------------------------------


def compile_specs(arch: int) -> list:
    """Every config the launchers above can pick on ``arch`` (see fp8_build.quantize_compile_specs)."""
    from .fp8_build import quantize_compile_specs

    return quantize_compile_specs(arch)


__all__ = ["quantize_fp8", "dequantize_fp8", "FP8Quantizer", "FP8_MAX", "MIN_SCALE", "GRANULARITIES",
           "UB_GRANULARITIES", "row_config", "block_config", "tile_config", "scale_shape", "column_scales",
           "quantize_operands_for_gemm", "compile_specs"]
