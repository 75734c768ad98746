"""RMSNorm with an optional fused residual add: one read and one write of every element.

``y = rmsnorm(s) * (weight_offset + weight)`` over the last dim, where ``s = x`` or ``s = x + residual``
(rounded to x's dtype, exactly as the unfused ``x + residual`` of a model in that dtype is) and the sum is
also written out, so the residual stream of a pre-norm Transformer block costs no extra pass.

Each program normalises a ``[ROWS, BLOCK]`` register tile: ``ROWS`` whole rows when they are narrow (the
per-head norms of QK-norm models have rows of 64-256), one row otherwise. Rows wider than the register
budget are processed in ``BLOCK``-wide chunks in two passes: pass 1 forms ``s`` (writing it when there is a
residual) and accumulates the sum of squares, pass 2 re-reads ``s`` (mostly from L2) to normalise and store.

In-place use (vLLM's convention, ``out=x, residual_out=residual``) is safe: every element a program writes
is one it read itself first (a store depends on the load of the same element), and the chunked pass 2 reads
the sum back from ``residual_out`` after a barrier, never the overwritten inputs. Output buffers are
checked by :func:`triton_ops.validation.check_writes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import validation as V
from ..exceptions import InvalidArgumentError, ShapeError
from ..launch import EagerAutograd, KernelLaunch, PlanCache, autograd_key, eager_autograd, mark_written, plan_key
from ..utils import cdiv, interpreter_enabled, next_power_of_2, num_sms, prev_power_of_2
from . import fp8_out as F8
from .fp8_out import _fp8_codes
from .fp8_quantize import _finite_abs, _mark_valid, _scale_from_amax, check_scale_values

#: Widest row normalised from one register tile (elements). Wider rows take the chunked two-pass loop.
#: 8192 covers every hidden size up to Llama-70B's; the compile check builds it for fp16/bf16/fp32, with
#: and without a residual, spill-free on sm_80/89/90.
MAX_SINGLE_BLOCK = 8192
#: Chunk width of the two-pass loop for wider rows (elements).
CHUNK_BLOCK = 4096
#: A program packs whole narrow rows until its tile holds this many elements (fewer programs, each with
#: enough loads in flight), keeping at least 4 programs per SM.
PACK_ELEMS = 4096


# ----------------------------------------------------------------------------------------------------
# Layer 1: kernel and its jit helpers
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _rounded(x, DTYPE: tl.constexpr, EXACT_BF16: tl.constexpr):
    """fp32 ``x`` rounded to nearest-even in DTYPE, returned as fp32 (so a later store to DTYPE is exact).

    EXACT_BF16 rounds with integer operations: Triton's CPU interpreter truncates fp32 -> bf16 conversions
    (28 of 64 random values came out 1 ulp low when checked against torch), which the GPU's ``cvt.rn``
    does not; NaN is kept as NaN, and values past bf16's range round to inf as on the GPU.
    """
    if EXACT_BF16:
        u = x.to(tl.uint32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        r = tl.where(x != x, x, u.to(tl.float32, bitcast=True))
    else:
        r = x.to(DTYPE).to(tl.float32)
    return r


@triton.jit
def _load_sum(x_ptr, res_ptr, res_out_ptr, x_off, r_off, ro_off, cols, m,
              HAS_RES: tl.constexpr, EXACT_BF16: tl.constexpr):
    """``x`` or ``x + residual`` rounded to x's dtype, as fp32; the sum is written to ``res_out``."""
    v = tl.load(x_ptr + x_off + cols, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
    if HAS_RES:
        r = tl.load(res_ptr + r_off + cols, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
        v = _rounded(v + r, x_ptr.dtype.element_ty, EXACT_BF16)
        tl.store(res_out_ptr + ro_off + cols, v.to(res_out_ptr.dtype.element_ty), mask=m)
    return v


@triton.jit
def _normalised(v, rstd, w_ptr, cols, n_cols, weight_offset,
                DTYPE: tl.constexpr, ROUND_BEFORE_WEIGHT: tl.constexpr, EXACT_BF16: tl.constexpr):
    """``rmsnorm(s) * (weight_offset + weight)`` in fp32, before the final rounding to the output dtype."""
    w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0, eviction_policy="evict_last").to(tl.float32)
    y = v * rstd
    if ROUND_BEFORE_WEIGHT:
        y = _rounded(y, DTYPE, EXACT_BF16)
    return y * (w + weight_offset)


@triton.jit
def _normalise_store(v, rstd, w_ptr, out_ptr, o_off, cols, m, n_cols, weight_offset,
                     DTYPE: tl.constexpr, ROUND_BEFORE_WEIGHT: tl.constexpr, EXACT_BF16: tl.constexpr):
    y = _normalised(v, rstd, w_ptr, cols, n_cols, weight_offset, DTYPE, ROUND_BEFORE_WEIGHT, EXACT_BF16)
    y = _rounded(y, DTYPE, EXACT_BF16)
    tl.store(out_ptr + o_off + cols, y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _row_total(t, ROWS: tl.constexpr, BLOCK: tl.constexpr, NG: tl.constexpr):
    """Sum over each row of a ``[ROWS, BLOCK]`` or ``[ROWS, NG, BLOCK // NG]`` tile, broadcastable back. The
    grouped tile is summed as one flat row (``can_reorder``: a reduction does not care in which order the
    compiler lays the values out), in the order of the ungrouped tile under the interpreter."""
    if NG > 1:
        return tl.sum(tl.reshape(t, [ROWS, BLOCK], can_reorder=True), axis=1)[:, None, None]
    else:
        return tl.sum(t, axis=1)[:, None]


@triton.jit
def _quantize_store(y, m, out_ptr, o_off, cols, s_ptr, srows, srow_ok, stride_sr, g0, n_cols, inv,
                    QUANT: tl.constexpr, N_CHUNKS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                    QGROUP: tl.constexpr, OUT_BYTES: tl.constexpr):
    """Store the fp32 tile ``y`` as e4m3 codes. Static, and per-token in chunks: ``inv`` is the reciprocal
    scale already known. Otherwise the scales come from the tile: one per tile row (per token, or a
    block row narrower than 128) or, for a ``[ROWS, NG, 128]`` tile, one per (1, 128) block, written from
    block ``g0`` on (blocks past the row's ``ceil(n_cols / 128)`` are masked off)."""
    NG: tl.constexpr = BLOCK // QGROUP
    if QUANT == 1 or (QUANT == 2 and N_CHUNKS > 1):
        q = _fp8_codes(y, inv, OUT_BYTES)
    elif NG == 1:
        s = _scale_from_amax(tl.max(tl.where(m, _finite_abs(y), 0.0), axis=1), 448.0)[:, None]
        q = _fp8_codes(y, tl.math.div_rn(tl.full([ROWS, 1], 1.0, tl.float32), s), OUT_BYTES)
        tl.store(s_ptr + srows * stride_sr + g0, s, mask=srow_ok)
    else:
        s = _scale_from_amax(tl.max(tl.where(m, _finite_abs(y), 0.0), axis=2), 448.0)
        q = _fp8_codes(y, tl.math.div_rn(tl.full([ROWS, NG], 1.0, tl.float32), s)[:, :, None], OUT_BYTES)
        g = g0 + tl.arange(0, NG)[None, :]
        tl.store(s_ptr + srows * stride_sr + g, s, mask=srow_ok & (g * QGROUP < n_cols))
    tl.store(out_ptr + o_off + cols, q, mask=m)


@triton.jit
def _add_rmsnorm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, scale_ptr,
    n_rows, n_cols, seq,
    stride_xb, stride_xs, stride_rb, stride_rs, stride_ob, stride_os, stride_rob, stride_ros, stride_sr,
    eps, weight_offset,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, N_CHUNKS: tl.constexpr, HAS_RES: tl.constexpr,
    ROUND_BEFORE_WEIGHT: tl.constexpr, FLAT: tl.constexpr, EXACT_BF16: tl.constexpr,
    QUANT: tl.constexpr, QGROUP: tl.constexpr, OUT_BYTES: tl.constexpr,
):
    """QUANT (triton_ops.kernels.fp8_out): 0 writes x's dtype; 1 static, 2 per-token, 3 (1, 128)-block e4m3
    codes of the fp32 normalised value, with the scales at ``scale_ptr`` (read for static, written
    otherwise, ``stride_sr`` apart per row). QGROUP: columns per scale group of the tile (128 for blocks of
    a tile wider than 128, else BLOCK)."""
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    NG: tl.constexpr = BLOCK // QGROUP
    pid = tl.program_id(0).to(tl.int64)
    # int64 row offsets: rows x row stride passes 2^31 elements at e.g. 262144 tokens x 8192.
    srows = pid * ROWS + tl.arange(0, ROWS)[:, None]
    srow_ok = srows < n_rows
    if NG > 1:
        # (1, 128) blocks: the tile is [ROWS, NG, 128] from the loads on, so a block's amax is a reduction
        # over the last axis (regrouping a [ROWS, BLOCK] tile by reshape spilled in the compile check).
        rows = srows[:, :, None]
        cols = (tl.arange(0, NG)[:, None] * QGROUP + tl.arange(0, QGROUP)[None, :])[None, :, :]
    else:
        rows = srows
        cols = tl.arange(0, BLOCK)[None, :]
    row_ok = rows < n_rows
    if FLAT:
        # Every tensor's rows are evenly strided (contiguous, or row slices of a wider buffer): one stride
        # each, no per-row 64-bit division (a [64, 64] packed tile spent 158 registers on the split).
        x_off = rows * stride_xs
        r_off = rows * stride_rs
        o_off = rows * stride_os
        ro_off = rows * stride_ros
    else:
        b = rows // seq
        s = rows % seq
        x_off = b * stride_xb + s * stride_xs
        r_off = b * stride_rb + s * stride_rs
        o_off = b * stride_ob + s * stride_os
        ro_off = b * stride_rob + s * stride_ros
    inv = 1.0
    if QUANT == 1:
        inv = tl.math.div_rn(1.0, tl.load(scale_ptr))

    if N_CHUNKS == 1:
        m = row_ok & (cols < n_cols)
        v = _load_sum(x_ptr, res_ptr, res_out_ptr, x_off, r_off, ro_off, cols, m, HAS_RES, EXACT_BF16)
        rstd = tl.rsqrt(_row_total(v * v, ROWS, BLOCK, NG) / n_cols + eps)
        if QUANT == 0:
            _normalise_store(v, rstd, w_ptr, out_ptr, o_off, cols, m, n_cols, weight_offset, DTYPE,
                             ROUND_BEFORE_WEIGHT, EXACT_BF16)
        else:
            y = _normalised(v, rstd, w_ptr, cols, n_cols, weight_offset, DTYPE, ROUND_BEFORE_WEIGHT, EXACT_BF16)
            _quantize_store(y, m, out_ptr, o_off, cols, scale_ptr, srows, srow_ok, stride_sr, 0, n_cols, inv,
                            QUANT, N_CHUNKS, ROWS, BLOCK, QGROUP, OUT_BYTES)
    else:
        # Wide rows (ROWS == 1): pass 1 forms the sum chunk by chunk and accumulates its squares.
        if NG > 1:
            acc = tl.zeros([ROWS, NG, QGROUP], dtype=tl.float32)
        else:
            acc = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
        for c in range(N_CHUNKS):
            cc = c * BLOCK + cols
            m = row_ok & (cc < n_cols)
            v = _load_sum(x_ptr, res_ptr, res_out_ptr, x_off, r_off, ro_off, cc, m, HAS_RES, EXACT_BF16)
            acc += v * v
        rstd = tl.rsqrt(_row_total(acc, ROWS, BLOCK, NG) / n_cols + eps)
        if HAS_RES:
            # Pass 2 reads the sum back from res_out (x or residual may have been overwritten in place):
            # make pass 1's stores visible to every thread of the program first.
            tl.debug_barrier()
        if QUANT == 2:
            # Per-token scale of a row too wide for registers: one more pass (mostly from L2) takes the amax
            # of the normalised row, computed exactly as the quantizing pass below recomputes it.
            amax = tl.zeros([ROWS], dtype=tl.float32)
            for c in range(N_CHUNKS):
                cc = c * BLOCK + cols
                m = row_ok & (cc < n_cols)
                if HAS_RES:
                    v = tl.load(res_out_ptr + ro_off + cc, mask=m, other=0.0).to(tl.float32)
                else:
                    v = tl.load(x_ptr + x_off + cc, mask=m, other=0.0).to(tl.float32)
                y = _normalised(v, rstd, w_ptr, cc, n_cols, weight_offset, DTYPE, ROUND_BEFORE_WEIGHT,
                                EXACT_BF16)
                amax = tl.maximum(amax, tl.max(tl.where(m, _finite_abs(y), 0.0), axis=1))
            s_row = _scale_from_amax(amax, 448.0)[:, None]
            tl.store(scale_ptr + srows * stride_sr, s_row, mask=srow_ok)
            inv = tl.math.div_rn(tl.full([ROWS, 1], 1.0, tl.float32), s_row)
        for c in range(N_CHUNKS):
            cc = c * BLOCK + cols
            m = row_ok & (cc < n_cols)
            if HAS_RES:
                v = tl.load(res_out_ptr + ro_off + cc, mask=m, other=0.0).to(tl.float32)
            else:
                v = tl.load(x_ptr + x_off + cc, mask=m, other=0.0).to(tl.float32)
            if QUANT == 0:
                _normalise_store(v, rstd, w_ptr, out_ptr, o_off, cc, m, n_cols, weight_offset, DTYPE,
                                 ROUND_BEFORE_WEIGHT, EXACT_BF16)
            else:
                y = _normalised(v, rstd, w_ptr, cc, n_cols, weight_offset, DTYPE, ROUND_BEFORE_WEIGHT,
                                EXACT_BF16)
                _quantize_store(y, m, out_ptr, o_off, cc, scale_ptr, srows, srow_ok, stride_sr, c * NG, n_cols,
                                inv, QUANT, N_CHUNKS, ROWS, BLOCK, QGROUP, OUT_BYTES)


# ----------------------------------------------------------------------------------------------------
# Layer 2: configuration heuristic and launcher
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RMSNormConfig:
    BLOCK: int
    ROWS: int
    N_CHUNKS: int
    num_warps: int


def pick_config(n_rows: int, n_cols: int, itemsize: int = 2, has_residual: bool = False,
                n_sms: int = 132, fp8_out: bool = False) -> RMSNormConfig:
    """Tile shape and warps for a problem. Pure: depends only on its arguments.

    * rows up to MAX_SINGLE_BLOCK wide are one register tile; wider rows take CHUNK_BLOCK-wide chunks in
      two passes;
    * narrow rows are packed into ``[ROWS, BLOCK]`` tiles of up to PACK_ELEMS elements while at least 4
      programs per SM remain;
    * warps: about 128 bytes of input per thread (64 with a residual, 32 for chunked or packed rows), a
      power of two in [1, 16] --
      the budget the RMSNorm+RoPE kernel measured best on an H200 (2 warps for an 8 KB row reached 90% of
      copy bandwidth, 8 warps 71-75%), halved where more values stay live per element.
    """
    block = next_power_of_2(max(n_cols, 1))
    n_chunks = 1
    if block > MAX_SINGLE_BLOCK:
        block = CHUNK_BLOCK
        n_chunks = cdiv(n_cols, block)
    rows = 1
    while n_chunks == 1 and rows < 64 and block * rows * 2 <= PACK_ELEMS and cdiv(n_rows, rows * 2) >= 4 * n_sms:
        rows *= 2
    in_bytes = rows * block * itemsize * (2 if has_residual else 1)
    # Packed tiles also keep per-row int64 offsets live in every thread: at 128 B/thread a [64, 64] fp16
    # tile on 2 warps spilled 1.8-2.9 KB on sm_80/89/90 in the compile check; 32 B/thread builds clean.
    if n_chunks > 1 or rows > 1:
        bytes_per_thread = 32
    else:
        bytes_per_thread = 64 if has_residual else 128
    num_warps = prev_power_of_2(min(16, max(1, in_bytes // (32 * bytes_per_thread))))
    if fp8_out and n_chunks == 1 and rows == 1:
        # FP8 output of a row held whole: 4-8 warps. The row amax and the code temporaries (and sm_80's
        # integer encoding) spilled 8-16 B in the compile check on 16 warps (sm_80, where ptxas gave a
        # thread 64 registers) and on 2 warps (sm_89, fp32 weights: 168 registers); 4-8 build clean.
        num_warps = min(max(num_warps, 4), 8)
    return RMSNormConfig(block, rows, n_chunks, num_warps)




# ---- output buffers ----------------------------------------------------------------------------------
# The overlap checks live in validation.py (one mechanism for every op); the names stay importable here.
Disjoint = V.Disjoint
same_view = V.same_view
check_no_self_overlap = V.check_no_self_overlap
check_writes = V.check_writes


# ---- plans -------------------------------------------------------------------------------------------
_ARGS = ("x", "residual", "weight", "out", "residual_out")
_ALIAS_OK = {("out", "x"), ("out", "residual"), ("residual_out", "residual"), ("residual_out", "x")}


def _alias_pattern(x, residual, out, residual_out) -> tuple:
    """Which given output buffer starts where an input does (with shapes and strides in the plan key,
    that is exact aliasing): part of the plan key, so an in-place call and a separate-buffer call of one
    signature keep separate plans."""
    if out is None and residual_out is None:
        return ()
    px = x.data_ptr()
    pr = residual.data_ptr() if residual is not None else -1
    po = out.data_ptr() if out is not None else -2
    pro = residual_out.data_ptr() if residual_out is not None else -3
    return (po == px, po == pr, pro == px, pro == pr)


class _Plan:
    """A validated launch: everything but the tensors' addresses, fixed by the call's signature."""

    __slots__ = ("launch", "ints", "shape", "has_res", "tests")

    def __init__(self, launch, ints, shape, has_res, tests):
        self.launch, self.ints, self.shape = launch, ints, shape
        self.has_res, self.tests = has_res, tests

    def set_shape(self, shape: tuple) -> None:
        """The caller's shape (the plan was made on the 3-D view), which the outputs take."""
        self.shape = shape

    def __call__(self, x, residual, weight, out, residual_out, eps, weight_offset, scale=None):
        y = out if out is not None else x.new_empty(self.shape)
        if self.has_res:
            ro = residual_out if residual_out is not None else x.new_empty(self.shape)
        else:
            residual, ro = x, y
        if self.launch is not None:
            self.launch(x, residual, weight, y, ro, None, *self.ints, eps, weight_offset)
            if out is not None or residual_out is not None:
                mark_written(out, residual_out)
        return (y, ro) if self.has_res else y


class _FP8Plan(_Plan):
    """A launch writing e4m3 codes and scales (``out_dtype=torch.float8_e4m3fn``); returns ``(q, scale)``
    or ``(q, scale, residual_sum)``. A static plan hands back the caller's scale; dynamic scales are new
    tensors, marked valid for fp8_gemm's scale check (finite and >= 2^-126 by construction)."""

    __slots__ = ("quant", "s_shape", "out_bytes")

    def __init__(self, launch, ints, shape, has_res, tests, quant, out_bytes):
        super().__init__(launch, ints, shape, has_res, tests)
        self.quant, self.out_bytes = quant, out_bytes
        self.s_shape = F8.scale_shape(quant, shape)

    def set_shape(self, shape: tuple) -> None:
        self.shape = shape
        self.s_shape = F8.scale_shape(self.quant, shape)

    def __call__(self, x, residual, weight, out, residual_out, eps, weight_offset, scale=None):
        q = torch.empty(self.shape, dtype=F8.FP8_OUT_DTYPE, device=x.device)
        if self.has_res:
            ro = residual_out if residual_out is not None else x.new_empty(self.shape)
        else:
            residual, ro = x, x  # never written (HAS_RES off)
        s = scale if self.quant == F8.QUANT_STATIC else torch.empty(self.s_shape, dtype=torch.float32,
                                                                     device=x.device)
        self.launch(x, residual, weight, q.view(torch.uint8) if self.out_bytes else q, ro, s, *self.ints, eps,
                    weight_offset)
        if residual_out is not None:
            mark_written(residual_out)
        if self.quant != F8.QUANT_STATIC:
            _mark_valid(s)
        return (q, s, ro) if self.has_res else (q, s)


def _qgroup(quant: int, block: int) -> int:
    """Columns per scale group of a tile (see _add_rmsnorm_kernel)."""
    return min(F8.GROUP, block) if quant == F8.QUANT_BLOCK else block


def _make_plan(x, weight, residual, out, residual_out, round_before_weight, tests=(), quant: int = 0) -> _Plan:
    """Plan a launch on validated inputs: ``x`` and ``residual`` as the 3-D tensors the kernel will read
    (views of the caller's, or copies when their leading dims do not collapse), ``out``/``residual_out`` of
    x's shape or None for contiguous buffers the plan allocates on each call (``out`` is None with an FP8
    output, ``quant`` > 0). The plan is called with tensors at the same addresses and with the same
    strides as the ones it was planned with."""
    has_res = residual is not None
    shape = tuple(x.shape)
    if x.numel() == 0:
        return _Plan(None, (), shape, has_res, ())
    n_cols = x.shape[-1]
    x3 = V.as_3d(x, "x")
    r3 = V.as_3d(residual, "residual") if has_res else x3
    n_rows, seq = x3.shape[0] * x3.shape[1], x3.shape[1]
    dense = (seq * n_cols, n_cols)
    o_st = V.as_3d(out, "out", writable=True).stride()[:2] if out is not None else dense
    if not has_res:
        ro_st = o_st
    elif residual_out is not None:
        ro_st = V.as_3d(residual_out, "residual_out", writable=True).stride()[:2]
    else:
        ro_st = dense
    cfg = pick_config(n_rows, n_cols, x.element_size(), has_res, num_sms(x.device), bool(quant))
    exact_bf16 = interpreter_enabled() and x.dtype == torch.bfloat16
    pairs = ((x3.stride(0), x3.stride(1)), (r3.stride(0), r3.stride(1)), tuple(o_st), tuple(ro_st))
    flat = x3.shape[0] == 1 or all(sb == seq * ss for sb, ss in pairs)
    out_bytes = bool(quant) and F8.store_bytes(x.device)
    launch = KernelLaunch(
        _add_rmsnorm_kernel, (cdiv(n_rows, cfg.ROWS),),
        dict(BLOCK=cfg.BLOCK, ROWS=cfg.ROWS, N_CHUNKS=cfg.N_CHUNKS, HAS_RES=has_res,
             ROUND_BEFORE_WEIGHT=bool(round_before_weight), FLAT=flat, EXACT_BF16=exact_bf16,
             QUANT=quant, QGROUP=_qgroup(quant, cfg.BLOCK), OUT_BYTES=out_bytes),
        num_warps=cfg.num_warps)
    # scale rows: [*lead, 1] per token (stride 1), [rows, ceil(n_cols / 128)] per block
    stride_sr = cdiv(n_cols, F8.GROUP) if quant == F8.QUANT_BLOCK else (1 if quant == F8.QUANT_TOKEN else 0)
    ints = (n_rows, n_cols, seq, *(v for pair in pairs for v in pair), stride_sr)
    idx = {n: i for i, n in enumerate(_ARGS)}
    tests = tuple((idx[a], idx[b], t) for a, b, t in tests)
    if quant:
        return _FP8Plan(launch, ints, shape, has_res, tests, quant, out_bytes)
    return _Plan(launch, ints, shape, has_res, tests)


def _launch(x, weight, residual, out, residual_out, eps, weight_offset, round_before_weight) -> None:
    """Plan and launch once on validated inputs; ``out`` (and ``residual_out`` with a residual) given."""
    if x.numel() == 0:
        return
    x3 = V.as_3d(x, "x")
    r3 = V.as_3d(residual, "residual") if residual is not None else None
    plan = _make_plan(x3, weight, r3, out, residual_out, round_before_weight)
    plan(x3, r3, weight, out, residual_out, float(eps), float(weight_offset))


def _launch_fp8(x, weight, residual, residual_out, out_scale, eps, weight_offset, round_before_weight,
                quant: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8-output launch on validated inputs (``residual_out`` given with a residual): ``(q, scale)``; the
    scale is the given one for a static output."""
    if x.numel() == 0:
        q, s = F8.empty_result(quant, tuple(x.shape), x.device)
        return q, (out_scale if quant == F8.QUANT_STATIC else s)
    x3 = V.as_3d(x, "x")
    r3 = V.as_3d(residual, "residual") if residual is not None else None
    plan = _make_plan(x3, weight, r3, None, residual_out, round_before_weight, quant=quant)
    plan.set_shape(tuple(x.shape))
    got = plan(x3, r3, weight, None, residual_out, float(eps), float(weight_offset), out_scale)
    return got[0], got[1]


# ----------------------------------------------------------------------------------------------------
# Layer 3: torch.library custom ops (work under torch.compile(fullgraph=True) and CUDA graphs)
# ----------------------------------------------------------------------------------------------------
def _rmsnorm_impl(x, weight, eps, weight_offset, round_before_weight):
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, weight, None, out, None, eps, weight_offset, round_before_weight)
    return out


def _add_rmsnorm_impl(x, residual, weight, eps, weight_offset, round_before_weight):
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    res_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, weight, residual, out, res_out, eps, weight_offset, round_before_weight)
    return out, res_out


@torch.library.custom_op("triton_ops::rmsnorm", mutates_args=())
def _rmsnorm_op(x: torch.Tensor, weight: torch.Tensor, eps: float, weight_offset: float,
                round_before_weight: bool) -> torch.Tensor:
    return _rmsnorm_impl(x, weight, eps, weight_offset, round_before_weight)


@_rmsnorm_op.register_fake
def _(x, weight, eps, weight_offset, round_before_weight):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("triton_ops::add_rmsnorm", mutates_args=())
def _add_rmsnorm_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                    weight_offset: float, round_before_weight: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _add_rmsnorm_impl(x, residual, weight, eps, weight_offset, round_before_weight)


@_add_rmsnorm_op.register_fake
def _(x, residual, weight, eps, weight_offset, round_before_weight):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            torch.empty(x.shape, dtype=x.dtype, device=x.device))


@torch.library.custom_op("triton_ops::add_rmsnorm_out", mutates_args=("out", "residual_out"))
def _add_rmsnorm_out_op(x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor,
                        out: torch.Tensor, residual_out: Optional[torch.Tensor], eps: float, weight_offset: float,
                        round_before_weight: bool) -> None:
    _launch(x, weight, residual, out, residual_out, eps, weight_offset, round_before_weight)


@_add_rmsnorm_out_op.register_fake
def _(x, residual, weight, out, residual_out, eps, weight_offset, round_before_weight):
    return None


# FP8 outputs (``out_dtype=torch.float8_e4m3fn``): ``quant`` is the kernel's QUANT mode (fp8_out). The scale
# output of a static op is an empty placeholder: the functional API returns the caller's own scale, which a
# custom op may not return (outputs must not alias inputs). No autograd: e4m3 codes carry no gradient.
@torch.library.custom_op("triton_ops::rmsnorm_fp8", mutates_args=())
def _rmsnorm_fp8_op(x: torch.Tensor, weight: torch.Tensor, out_scale: Optional[torch.Tensor], eps: float,
                    weight_offset: float, round_before_weight: bool, quant: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = _launch_fp8(x, weight, None, None, out_scale, eps, weight_offset, round_before_weight, quant)
    return q, (x.new_empty(0, dtype=torch.float32) if quant == F8.QUANT_STATIC else s)


@_rmsnorm_fp8_op.register_fake
def _(x, weight, out_scale, eps, weight_offset, round_before_weight, quant):
    return (x.new_empty(x.shape, dtype=F8.FP8_OUT_DTYPE),
            x.new_empty(F8.scale_shape(quant, tuple(x.shape)), dtype=torch.float32))


@torch.library.custom_op("triton_ops::add_rmsnorm_fp8", mutates_args=("residual_out",))
def _add_rmsnorm_fp8_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                        residual_out: torch.Tensor, out_scale: Optional[torch.Tensor], eps: float,
                        weight_offset: float, round_before_weight: bool,
                        quant: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = _launch_fp8(x, weight, residual, residual_out, out_scale, eps, weight_offset, round_before_weight,
                       quant)
    return q, (x.new_empty(0, dtype=torch.float32) if quant == F8.QUANT_STATIC else s)


@_add_rmsnorm_fp8_op.register_fake
def _(x, residual, weight, residual_out, out_scale, eps, weight_offset, round_before_weight, quant):
    return (x.new_empty(x.shape, dtype=F8.FP8_OUT_DTYPE),
            x.new_empty(F8.scale_shape(quant, tuple(x.shape)), dtype=torch.float32))


# Backward: one Triton kernel (rmsnorm_backward.py). _norm_grads below is the same math in PyTorch (fp32),
# the reference the kernel is tested against (rmsnorm_backward.USE_REFERENCE = True routes the autograd
# formula through it). From the saved sum: with xn = s * rstd and w' = weight_offset + weight,
#   d weight = sum over rows of dy * xn,   ds = rstd * (dy*w' - xn * mean(dy*w' * xn)).
# With round_before_weight the rounding of xn is taken as the identity for ds (its derivative almost
# everywhere), and d weight uses the rounded xn the forward multiplied by.
def _norm_grads(ctx, s, weight, grad_y):
    sf = s.float()
    rstd = torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + ctx.eps)
    xn = sf * rstd
    g = grad_y.float()
    gw = None
    if ctx.needs_weight:
        xw = xn.to(s.dtype).float() if ctx.round_before_weight else xn
        gw = (g * xw).reshape(-1, s.shape[-1]).sum(0).to(weight.dtype)
    gs = None
    if ctx.needs_input:
        gxn = g * (weight.float() + ctx.weight_offset)
        gs = rstd * (gxn - xn * (gxn * xn).mean(-1, keepdim=True))
    return gs, gw


def _setup_common(ctx, eps, weight_offset, round_before_weight, weight):
    ctx.eps, ctx.weight_offset, ctx.round_before_weight = eps, weight_offset, round_before_weight
    ctx.needs_weight = weight.requires_grad


def _setup_plain(ctx, inputs, output):
    x, weight, eps, weight_offset, rbw = inputs
    _setup_common(ctx, eps, weight_offset, rbw, weight)
    ctx.needs_input = x.requires_grad
    ctx.save_for_backward(x, weight)


def _backward_plain(ctx, grad_y):
    from .rmsnorm_backward import norm_grads

    x, weight = ctx.saved_tensors
    gs, gw = norm_grads(ctx, x, weight, grad_y)
    return gs, gw, None, None, None


def _setup_add(ctx, inputs, output):
    x, residual, weight, eps, weight_offset, rbw = inputs
    _setup_common(ctx, eps, weight_offset, rbw, weight)
    ctx.needs_input = x.requires_grad or residual.requires_grad
    ctx.dtypes = (x.dtype, residual.dtype)
    ctx.save_for_backward(output[1], weight)  # the sum s: one tensor instead of x and residual


def _backward_add(ctx, grad_y, grad_s):
    from .rmsnorm_backward import norm_grads

    s, weight = ctx.saved_tensors
    gs, gw = norm_grads(ctx, s, weight, grad_y, grad_s)
    gx = None if gs is None else gs.to(ctx.dtypes[0])
    gr = None if gs is None else gs.to(ctx.dtypes[1])
    return gx, gr, gw, None, None, None


_rmsnorm_op.register_autograd(_backward_plain, setup_context=_setup_plain)
_add_rmsnorm_op.register_autograd(_backward_add, setup_context=_setup_add)


# ----------------------------------------------------------------------------------------------------
# Layer 4: functional API and module
# ----------------------------------------------------------------------------------------------------
_plans = PlanCache("add_rmsnorm")


def fused_add_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *,
                      residual: Optional[torch.Tensor] = None, weight_offset: float = 0.0,
                      round_before_weight: bool = False, out: Optional[torch.Tensor] = None,
                      residual_out: Optional[torch.Tensor] = None, out_dtype: Optional[torch.dtype] = None,
                      out_scaling: Optional[str] = None, out_scale: Optional[torch.Tensor] = None):
    """RMSNorm over the last dim, optionally of ``x + residual``, in one kernel.

    ``s = x`` (or ``s = x + residual``, rounded to x's dtype exactly as the unfused add in that dtype is);
    ``y = s / sqrt(mean(s^2) + eps) * (weight_offset + weight)``, computed in fp32 and rounded once to x's
    dtype -- or, with ``out_dtype=torch.float8_e4m3fn``, quantized to e4m3 in the same kernel.

    Args:
        x: ``[..., hidden]`` activations, fp16, bf16 or fp32, any hidden size; rows may be strided (the
            last dim must be contiguous).
        weight: ``[hidden]``, x's dtype or fp32 (fp32 weights with bf16 activations are fine).
        eps: added to the mean square.
        residual: optional tensor of x's shape and dtype added to x before the norm.
        weight_offset: scale by ``weight_offset + weight`` (Gemma stores weights around 0 and uses 1.0).
        round_before_weight: round the normalised ``s`` to x's dtype before multiplying by the weight, as
            Hugging Face's Llama/Mistral/Qwen RMSNorm does (``weight * hidden.to(input_dtype)``): bit-exact
            with those modules up to the reduction order. The default multiplies in fp32 and rounds once
            (Gemma's order, and the more accurate one).
        out: optional output buffer of x's shape and dtype; may be ``x`` itself (in place). Not with an
            FP8 output.
        residual_out: optional buffer for the sum, only with ``residual``; may be ``residual`` itself.
            ``out=x, residual_out=residual`` is vLLM's in-place convention: afterwards ``x`` holds the
            normalised output and ``residual`` the updated residual stream.
        out_dtype: None (x's dtype) or ``torch.float8_e4m3fn``: write e4m3 codes and fp32 scales instead of
            ``y``, for an FP8 GEMM that follows (1 byte per element written instead of 2, and no separate
            quantization pass reading ``y`` again). What is quantized is the fp32 ``y`` itself, before any
            rounding to x's dtype (one rounding instead of two): bit-identical to
            ``quantize_fp8(y_fp32, ...)``, the quantization of the fp32 output this op computes for fp32
            inputs.
        out_scaling: with an FP8 output: ``"token"`` (default: one dynamic scale per row, ``[*lead, 1]``),
            ``"block"`` (dynamic (1, 128) blocks, ``[rows, ceil(hidden / 128)]``, the ``a_scale`` layout of
            ``fp8_gemm``'s block-scaled path) or ``"static"`` (``out_scale`` given; implied by passing it).
            Semantics of :func:`triton_ops.quantize_fp8`: ``y ~= q.float() * scale``, ``scale = amax / 448``
            over finite values, 1 for an all-zero group; NaN stays NaN, +-inf saturates to +-448.
        out_scale: the static scale, a one-element fp32 tensor (checked finite and positive once per
            tensor version).

    Returns:
        ``y`` without a residual; ``(y, s)`` with one -- the normalised output and the new residual stream
        ``x + residual`` (``out`` and ``residual_out`` themselves when given). With an FP8 output:
        ``(q, scale)`` or ``(q, scale, s)``; ``scale`` is ``out_scale`` itself for a static output. FP8
        outputs carry no autograd.
    """
    # a flag or number of a kind the checks refuse never takes a plan: True == 1 == 1.0 as dict keys, so
    # round_before_weight=1 would find the plan of True and skip the check that refuses it
    strict = type(round_before_weight) is bool and type(eps) is not bool and type(weight_offset) is not bool
    akey = None
    if (strict and out is None and residual_out is None and out_dtype is None and out_scaling is None
            and out_scale is None and eager_autograd(x, weight, residual)):
        # Eager training: a repeated signature skips the checks (what they resolve is eps and
        # weight_offset as floats) and records the implementation directly
        akey = (autograd_key(x, residual, weight), eps, weight_offset, round_before_weight)
        call = _grad_calls.get(akey)
        if call is not None:
            return _grad_call(call, x, residual, weight, round_before_weight)
    key = plan_key(x, residual, weight, out, residual_out, out_scale) if strict else None
    if key is not None:
        # Eager call with no autograd or tracing: a repeated signature is one dict hit and a launch.
        key = (key, eps, weight_offset, round_before_weight, _alias_pattern(x, residual, out, residual_out),
               out_dtype, out_scaling)
        plan = _plans.get(key)
        if plan is not None and (not plan.tests or V.writes_apart(plan.tests, (x, residual, weight, out,
                                                                              residual_out))):
            if out_scale is not None:
                check_scale_values(out_scale, "out_scale")
            return plan(x, residual, weight, out, residual_out, eps, weight_offset, out_scale)
    V.check_tensor(x, "x")
    V.check_tensor(weight, "weight")
    # optional tensors are checked for what they are before anything reads their device or shape
    for name, t in (("residual", residual), ("out", out), ("residual_out", residual_out), ("out_scale", out_scale)):
        V.check_is_tensor_or_none(t, name)
    V.check_dtype(x, "x", V.FLOAT_DTYPES)
    V.check_ndim(x, "x", min_ndim=1)
    device = V.check_same_device({"x": x, "weight": weight, "residual": residual, "out": out,
                                  "residual_out": residual_out})
    V.check_runnable_device(device, "x")
    eps = V.check_positive_finite(eps, "eps", allow_zero=True)
    weight_offset = V.check_finite(weight_offset, "weight_offset")
    if not isinstance(round_before_weight, bool):
        raise InvalidArgumentError(f"round_before_weight must be a bool, got {round_before_weight!r}")
    quant = F8.resolve_fp8_output(out_dtype, out_scaling, out_scale, x.dtype, device, "token", "fused_add_rmsnorm")
    if quant and out is not None:
        raise InvalidArgumentError("fused_add_rmsnorm: out= is not supported with an FP8 output (the op "
                                   "allocates the e4m3 codes and their scales); residual_out= is")
    V.check_last_dim_contiguous(x, "x")
    V.check_last_dim_contiguous(weight, "weight")
    V.check_dtype(weight, "weight", (x.dtype, torch.float32))
    hidden = x.shape[-1]
    if tuple(weight.shape) != (hidden,):
        raise ShapeError(f"weight has shape {tuple(weight.shape)}; expected ({hidden},) for x of shape "
                         f"{tuple(x.shape)}")
    if residual is not None:
        V.check_tensor(residual, "residual")
        if residual.shape != x.shape:
            raise ShapeError(f"residual has shape {tuple(residual.shape)}, expected x's {tuple(x.shape)}")
        V.check_dtype(residual, "residual", (x.dtype,))
        V.check_last_dim_contiguous(residual, "residual")
    elif residual_out is not None:
        raise InvalidArgumentError("residual_out is only written when residual is given")
    V.check_out(out, "out", x.shape, x.dtype, device)
    V.check_out(residual_out, "residual_out", x.shape, x.dtype, device)
    tests = V.check_writes({"out": out, "residual_out": residual_out},
                           {"x": x, "residual": residual, "weight": weight}, _ALIAS_OK)

    if key is not None:
        if x.numel() == 0:
            if quant:
                q, sc = F8.empty_result(quant, tuple(x.shape), x.device)
                sc = out_scale if quant == F8.QUANT_STATIC else sc
                return (q, sc) if residual is None else (
                    q, sc, residual_out if residual_out is not None else x + residual)
            y = out if out is not None else x.new_empty(x.shape)
            return y if residual is None else (y, residual_out if residual_out is not None else x + residual)
        x3 = V.as_3d(x, "x")
        r3 = V.as_3d(residual, "residual") if residual is not None else None
        plan = _make_plan(x3, weight, r3, out, residual_out, round_before_weight, tests, quant)
        plan.set_shape(tuple(x.shape))
        # A plan made for a copy of x or residual (leading dims that do not collapse) must not be reused:
        # later calls would pass the originals, whose strides differ from the copy's.
        if x3.data_ptr() == x.data_ptr() and (r3 is None or r3.data_ptr() == residual.data_ptr()):
            _plans.put(key, plan)
        return plan(x3, r3, weight, out, residual_out, eps, weight_offset, out_scale)

    # Traced, fake or autograd-recording call: through the registered custom ops.
    if quant:
        if residual is None:
            q, sc = torch.ops.triton_ops.rmsnorm_fp8(x, weight, out_scale, eps, weight_offset, round_before_weight,
                                                     quant)
            return q, (out_scale if quant == F8.QUANT_STATIC else sc)
        ro = residual_out if residual_out is not None else torch.empty_like(
            x, memory_format=torch.contiguous_format)
        q, sc = torch.ops.triton_ops.add_rmsnorm_fp8(x, residual, weight, ro, out_scale, eps, weight_offset,
                                                     round_before_weight, quant)
        return q, (out_scale if quant == F8.QUANT_STATIC else sc), ro
    if out is not None or residual_out is not None:
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, residual, weight)):
            raise InvalidArgumentError("fused_add_rmsnorm with out=/residual_out= does not support autograd; "
                                       "call it without output buffers to differentiate")
        y = out if out is not None else torch.empty_like(x, memory_format=torch.contiguous_format)
        ro = None
        if residual is not None:
            ro = residual_out if residual_out is not None else torch.empty_like(
                x, memory_format=torch.contiguous_format)
        torch.ops.triton_ops.add_rmsnorm_out(x, residual, weight, y, ro, eps, weight_offset, round_before_weight)
        return y if residual is None else (y, ro)
    if eager_autograd(x, weight, residual):
        # training in eager mode: the same implementation and autograd formula without the custom op's
        # dispatch layers (launch.EagerAutograd)
        if akey is not None:
            _grad_calls.put(akey, (eps, weight_offset))
        if residual is None:
            return EagerAutograd.apply(_rmsnorm_impl, _setup_plain, _backward_plain, x, weight, eps, weight_offset,
                                       round_before_weight)
        return EagerAutograd.apply(_add_rmsnorm_impl, _setup_add, _backward_add, x, residual, weight, eps,
                                   weight_offset, round_before_weight)
    if residual is None:
        return torch.ops.triton_ops.rmsnorm(x, weight, eps, weight_offset, round_before_weight)
    return torch.ops.triton_ops.add_rmsnorm(x, residual, weight, eps, weight_offset, round_before_weight)


class FusedAddRMSNorm(torch.nn.Module):
    """RMSNorm with a learned ``[hidden_size]`` weight and an optional fused residual add.

    ``forward(x)`` returns the normalised ``x``; ``forward(x, residual)`` returns ``(y, x + residual)``.
    The parameter is ``weight``, as in Hugging Face's ``LlamaRMSNorm``, so its ``state_dict`` loads as is.
    ``weight_offset=1.0`` gives Gemma's ``(1 + weight)`` scaling (the weight then starts at 0);
    ``round_before_weight=True`` gives Llama's rounding order (see :func:`fused_add_rmsnorm`).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, *, weight_offset: float = 0.0,
                 round_before_weight: bool = False, device=None, dtype=None):
        super().__init__()
        # the whole configuration is checked here: a module that cannot run is never built
        hidden_size = V.check_int(hidden_size, "hidden_size")  # "64", 64.0 or 3.7 are refused, not truncated
        if hidden_size <= 0:
            raise ShapeError(f"hidden_size must be positive, got {hidden_size}")
        eps = V.check_positive_finite(eps, "eps", allow_zero=True)
        weight_offset = V.check_finite(weight_offset, "weight_offset")
        if not isinstance(round_before_weight, bool):
            raise InvalidArgumentError(f"round_before_weight must be a bool, got {round_before_weight!r}")
        V.check_module_device(device)
        V.check_float_dtype_or_none(dtype)
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight_offset = weight_offset
        self.round_before_weight = round_before_weight
        init = 0.0 if weight_offset else 1.0
        self.weight = torch.nn.Parameter(torch.full((self.hidden_size,), init, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, *,
                out_dtype: Optional[torch.dtype] = None, out_scaling: Optional[str] = None,
                out_scale: Optional[torch.Tensor] = None):
        """``out_dtype=torch.float8_e4m3fn`` returns e4m3 codes and scales for the FP8 GEMM that follows
        (see :func:`fused_add_rmsnorm`)."""
        return fused_add_rmsnorm(x, self.weight, self.eps, residual=residual, weight_offset=self.weight_offset,
                                 round_before_weight=self.round_before_weight, out_dtype=out_dtype,
                                 out_scaling=out_scaling, out_scale=out_scale)

    def extra_repr(self) -> str:
        return (f"{self.hidden_size}, eps={self.eps}, weight_offset={self.weight_offset}, "
                f"round_before_weight={self.round_before_weight}")


#: Eager training calls of fused_add_rmsnorm: the checked eps and weight_offset per signature.
_grad_calls = PlanCache("rmsnorm/autograd")


def _grad_call(call, x, residual, weight, round_before_weight):
    eps, weight_offset = call
    if residual is None:
        return EagerAutograd.apply(_rmsnorm_impl, _setup_plain, _backward_plain, x, weight, eps, weight_offset,
                                   round_before_weight)
    return EagerAutograd.apply(_add_rmsnorm_impl, _setup_add, _backward_add, x, residual, weight, eps,
                               weight_offset, round_before_weight)


def add_rmsnorm_reference(x, weight, eps=1e-6, *, residual=None, weight_offset=0.0, round_before_weight=False,
                          out_dtype=None, out_scaling=None, out_scale=None):
    """Unfused PyTorch reference with fp32 math (the baseline the benchmarks compile and time).

    With ``out_dtype=torch.float8_e4m3fn`` the fp32 ``y`` is quantized by PyTorch ops as the fused op does
    (:func:`triton_ops.kernels.fp8_out.quantize_reference`) and the result is ``(q, scale[, s])``."""
    s = x if residual is None else x + residual
    sf = s.float()
    y = sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps)
    if round_before_weight:
        y = y.to(x.dtype).float()
    y = y * (weight_offset + weight.float())
    if out_dtype is not None and out_dtype != x.dtype:
        scaling = out_scaling or ("static" if out_scale is not None else "token")
        q, sc = F8.quantize_reference(y, scaling, out_scale)
        return (q, sc) if residual is None else (q, sc, s)
    y = y.to(x.dtype)
    return y if residual is None else (y, s)


# ----------------------------------------------------------------------------------------------------
# Compile check: every config pick_config can choose, for each architecture
# ----------------------------------------------------------------------------------------------------
_TYPE_SIZES = {"fp16": 2, "bf16": 2, "fp32": 4}


def _compile_variants():
    """(dtype, weight dtype, n_rows, hidden, has_res, round_before_weight, flat) combos to build: every tile
    class of pick_config (packed narrow rows, single rows up to MAX_SINGLE_BLOCK, chunked wide rows) per
    dtype, with and without a residual, without the full cross product (each build takes ~0.3 s)."""
    out = []
    for t in ("fp16", "bf16", "fp32"):
        wt = "fp32" if t == "bf16" else t
        for hidden in (64, 128, 896, 2048, 4096, 5120, 8192, 14336, 16384):
            for has_res in (False, True):
                out.append((t, wt, 1 << 16, hidden, has_res, t == "bf16" and not has_res, True))
            out.append((t, t, 1 << 16, hidden, True, False, False))  # leading dims that do not collapse
        out.append((t, t, 1, 4096, True, False, True))  # decode: one row
    return out


def _fp8_compile_variants():
    """(dtype, weight dtype, n_rows, hidden, has_res, rbw, quant) FP8-output combos: per-token and block
    scales at every tile class of pick_config and dtype (with a residual on one of the two), static
    scales on a narrow, a register-tile and a chunked row. Sizes with the same tile build once."""
    out = []
    for t in ("fp16", "bf16", "fp32"):
        wt = "fp32" if t == "bf16" else t
        for hidden in (64, 128, 896, 2048, 4096, 5120, 8192, 14336, 16384):
            out.append((t, wt, 1 << 16, hidden, t == "bf16", False, F8.QUANT_TOKEN))
            out.append((t, wt, 1 << 16, hidden, t != "bf16", t == "bf16", F8.QUANT_BLOCK))
        for hidden in (128, 4096, 14336):
            out.append((t, wt, 1 << 16, hidden, True, False, F8.QUANT_STATIC))
        out.append((t, t, 1, 4096, True, False, F8.QUANT_TOKEN))  # decode: one row
    return out


def compile_specs(arch: int):
    from ..compile_check import CompileSpec

    specs = []
    variants = [v + (0,) for v in _compile_variants()] + [
        (t, w, n, h, r, rbw, True, q) for t, w, n, h, r, rbw, q in _fp8_compile_variants()]
    # sm_80 has no FP8 conversion: the launcher encodes the bits with integer operations there (OUT_BYTES)
    out_bytes = arch < 89
    seen = set()
    for tname, wname, n_rows, hidden, has_res, rbw, flat, quant in variants:
        cfg = pick_config(n_rows, hidden, _TYPE_SIZES[tname], has_res, fp8_out=bool(quant))
        ident = (tname, wname, has_res, rbw, flat, quant, cfg)
        if ident in seen:  # another hidden size with the same tile: the same build
            continue
        seen.add(ident)
        out_t = tname if not quant else ("u8" if out_bytes else "fp8e4nv")
        sig = {"x_ptr": f"*{tname}", "res_ptr": f"*{tname}", "w_ptr": f"*{wname}", "out_ptr": f"*{out_t}",
               "res_out_ptr": f"*{tname}", "scale_ptr": "*fp32" if quant else "constexpr",
               "n_rows": "i32", "n_cols": "i32", "seq": "i32"}
        sig.update({k: "i64" for k in ("stride_xb", "stride_xs", "stride_rb", "stride_rs", "stride_ob",
                                        "stride_os", "stride_rob", "stride_ros", "stride_sr")})
        sig.update({"eps": "fp32", "weight_offset": "fp32"})
        const = dict(BLOCK=cfg.BLOCK, ROWS=cfg.ROWS, N_CHUNKS=cfg.N_CHUNKS, HAS_RES=has_res,
                     ROUND_BEFORE_WEIGHT=rbw, FLAT=flat, EXACT_BF16=False, QUANT=quant,
                     QGROUP=_qgroup(quant, cfg.BLOCK), OUT_BYTES=bool(quant) and out_bytes)
        sig.update({k: "constexpr" for k in const})
        if not quant:
            const["scale_ptr"] = None  # unused: the launcher passes None, which the JIT makes a constexpr
        aligned = ("x_ptr", "res_ptr", "w_ptr", "out_ptr", "res_out_ptr", "n_cols") + (("scale_ptr",) if quant else ())
        specs.append(CompileSpec(
            _add_rmsnorm_kernel, sig, const, num_warps=cfg.num_warps, num_stages=1, aligned=aligned,
            label=f"add_rmsnorm {tname} w={wname} h={hidden} res={int(has_res)} rbw={int(rbw)} flat={int(flat)} "
                  f"block={cfg.BLOCK} rows={cfg.ROWS} chunks={cfg.N_CHUNKS} warps={cfg.num_warps}"
                  + (f" fp8 quant={quant}{' bytes' if out_bytes else ''}" if quant else "")))
    return specs


__all__ = ["fused_add_rmsnorm", "FusedAddRMSNorm", "add_rmsnorm_reference", "pick_config", "RMSNormConfig",
           "compile_specs", "check_writes", "Disjoint"]
