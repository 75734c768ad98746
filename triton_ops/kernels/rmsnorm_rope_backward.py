"""Backward of fused RMSNorm + RoPE: one Triton kernel reading ``grad_y`` and the normalised input once.

Forward (per row, or per head for the per-head norm), with ``s`` the input (``x`` or the sum
``x + residual``), ``w' = weight_offset + weight`` and ``R`` the rotation of each channel pair::

    rstd = 1 / sqrt(mean(s^2) + eps),   n = s * rstd,   y = R(n * w')

Backward, for an incoming ``dy``::

    dn' = R^T dy                       (the inverse rotation, in registers: a pair (a, b) maps to
                                        (a c1 + b s2, b c2 - a s1), the transpose of the forward's)
    g   = dn' * w'
    ds  = rstd * g - s * rstd^3 * sum(g * s) / N          (N = hidden, or head_dim per head)
    dw  = sum over rows (and heads) of dn' * n

``rstd`` is recomputed from ``s`` rather than saved by the forward. The kernel reads every element of
``s`` for ``sum(g * s)`` anyway, so the recomputation costs a second sum of squares in registers and no
memory traffic; saving it would have cost a forward output of 4 bytes per row (per head for QK-norm),
i.e. 1/2048 of a bf16 row of 4096, and a change to the forward kernel. Saving would only win for rows too
wide for one register tile, where it would not remove the second pass either (``sum(g * s)`` still needs
the whole row before any ``ds`` can be written).

The weight gradient is reduced without atomics: the grid is persistent (at most a few programs per SM),
each program walks its rows and accumulates ``dn' * n`` in fp32 registers, then writes one row of a
``[n_programs, W]`` fp32 buffer (``W`` = hidden, or head_dim for the per-head norm); one ``sum(0)``
over that buffer finishes the reduction. At (8, 2048, 4096) on 132 SMs that buffer is 264 x 4096 x 4 B =
4.3 MB against 403 MB moved by the kernel itself (bf16 s and dy read, dx written).

Rows wider than a register tile (hidden > ``MAX_TILE_ELEMS`` for the row norm) take two passes, as the
forward does: pass 1 accumulates ``sum(s^2)`` and ``sum(g * s)`` chunk by chunk, pass 2 re-reads the
chunks (from L2: the row was just read) to write ``ds`` and adds each chunk's ``dn' * n`` to the
program's row of the partial buffer in global memory (read-modify-write by the program that owns the row,
so still no atomics).

Out-of-range positions follow the forward's contract: that token's output was NaN, so its ``dx`` is NaN
and so is the weight gradient it contributes to.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import torch
import triton
import triton.language as tl

from ..launch import KernelLaunch, PlanCache, eager_backward, tensor_key
from ..utils import cdiv, interpreter_enabled, last_dim_contiguous, next_power_of_2, num_sms, prev_power_of_2
from ..validation import as_3d as _as_3d
from .rmsnorm import _rounded
from .rmsnorm_rope import _load_pairs, _pair_offsets, _store_pairs

#: Elements of one tensor held per register tile. The kernel keeps ~6 fp32 values live per element (s,
#: the rotated gradient, the weight, the dw accumulator and temporaries), about three times the forward,
#: whose tile holds 8192 16-bit elements: 4096 keeps the Llama/Qwen row of 4096 in one pass.
MAX_TILE_ELEMS = 4096
#: Elements of a tile per thread (per tensor). 16 (8 warps for the Llama/Qwen row of 4096): 118-150
#: registers per thread on sm_90, so two 8-warp programs share an SM where the kernel stays <= 128 and
#: overlap each other's reductions. Measured on an H200 at (8, 2048, 4096) bf16 (bwd_variants.py): the
#: backward alone 116.6 us = 84.5% of the copy of its bytes at 16, against 180.6 us (54.5%) at 8 (16
#: warps, one program per SM) and 130.5 us at 32 (4 warps). Every compile variant builds without spills.
ELEMS_PER_THREAD = 16
#: Two-pass rows (wider than one tile) keep 8: at 16 a sm_90 build of (h 14336, hd 128, rotary 64)
#: spilled 8 bytes, and these rows run from L2 in their second pass anyway.
TWO_PASS_ELEMS_PER_THREAD = 8
#: Warps per SM in the persistent grid. The one-tile kernels use 64-98 registers per thread (sm_90
#: build), so a 16-warp program takes 32-50K of the SM's 64K registers and only one is resident: 32 (two
#: programs of 16 warps) ran the second half of the grid as a second wave. 16 warps of <= 128 registers
#: always fit.
WARPS_PER_SM = 16
#: Software-pipelining depth of the row loop (``tl.range(num_stages=...)``): Triton stages the next rows'
#: s and dy loads through shared memory with cp.async while the current row is reduced. Unpipelined,
#: a program had one row's loads in flight only between its reductions: at (8, 2048, 4096) bf16 on an
#: H200 the backward ran at ~12% of the copy bandwidth (0.83 ms forward + backward vs 0.16 ms copy).
#: Two-pass rows keep 1: their partial weight-gradient row is read and written in global memory
#: every iteration, and a load hoisted above the previous iteration's store would read a stale sum.
PIPELINE_STAGES = 3

# Position sources, as in the forward (rmsnorm_rope._POS_*).
_POS_SEQ, _POS_IDS, _POS_ROW = 0, 1, 2

#: Use the unfused fp32 PyTorch reference (autograd of ``rmsnorm_rope_reference``) instead of the kernel.
#: For tests and debugging; the kernel is the default.
USE_REFERENCE = False


# ----------------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _chunk_offsets(h, i, k, n_heads, HEAD_DIM: tl.constexpr, ROT_DIM: tl.constexpr, GPTJ: tl.constexpr):
    """Offsets within a row and masks of a chunk of heads ``h``: the pair halves (oa, ob, m) and the
    non-rotating tail (op, mp)."""
    HALF: tl.constexpr = ROT_DIM // 2
    PASS: tl.constexpr = HEAD_DIM - ROT_DIM
    oa, ob = _pair_offsets(h, i, HEAD_DIM, HALF, GPTJ)
    m = (h < n_heads) & (i < HALF)
    op = h * HEAD_DIM + ROT_DIM + k
    mp = (h < n_heads) & (k < PASS)
    return oa, ob, m, op, mp


@triton.jit
def _grad_tiles(s_ptr, dy_ptr, s_off, dy_off, oa, ob, m, op, mp, c1, c2, s1, s2, PASS: tl.constexpr,
                GPTJ: tl.constexpr):
    """One chunk of a row: s as pair halves (a, b) and tail p, and the inversely rotated gradient
    (da, db) and tail dp, all fp32 (masked lanes are 0)."""
    a, b = _load_pairs(s_ptr + s_off, oa, ob, m, GPTJ, "evict_last")
    ga, gb = _load_pairs(dy_ptr + dy_off, oa, ob, m, GPTJ, "evict_first")
    a, b, ga, gb = a.to(tl.float32), b.to(tl.float32), ga.to(tl.float32), gb.to(tl.float32)
    # R^T: the forward rotated (na, nb) to (na c1 - nb s1, nb c2 + na s2).
    da = ga * c1 + gb * s2
    db = gb * c2 - ga * s1
    p = tl.zeros([1, 1], dtype=tl.float32)
    dp = tl.zeros([1, 1], dtype=tl.float32)
    if PASS > 0:
        p = tl.load(s_ptr + s_off + op, mask=mp, other=0.0, eviction_policy="evict_last").to(tl.float32)
        dp = tl.load(dy_ptr + dy_off + op, mask=mp, other=0.0, eviction_policy="evict_first").to(tl.float32)
    return a, b, p, da, db, dp


@triton.jit
def _row_weights(w_ptr, oa, ob, m, op, mp, weight_offset, PASS: tl.constexpr, GPTJ: tl.constexpr):
    """``weight_offset + weight`` for the channels of a chunk of heads (row norm), fp32."""
    wa, wb = _load_pairs(w_ptr, oa, ob, m, GPTJ, "evict_last")
    wp = tl.zeros([1, 1], dtype=tl.float32)
    if PASS > 0:
        wp = tl.load(w_ptr + op, mask=mp, other=0.0, eviction_policy="evict_last").to(tl.float32) + weight_offset
    return wa.to(tl.float32) + weight_offset, wb.to(tl.float32) + weight_offset, wp


@triton.jit
def _store_dx(dx_ptr, gs_ptr, x_off, g_off, oa, ob, m, op, mp, va, vb, vp, PASS: tl.constexpr,
              GPTJ: tl.constexpr, HAS_GRAD_S: tl.constexpr, DTYPE: tl.constexpr, EXACT_BF16: tl.constexpr):
    """dx = ds (+ the gradient reaching the residual-sum output), rounded once to x's dtype."""
    if HAS_GRAD_S:
        ra, rb = _load_pairs(gs_ptr + g_off, oa, ob, m, GPTJ, "evict_first")
        va += ra.to(tl.float32)
        vb += rb.to(tl.float32)
        if PASS > 0:
            vp += tl.load(gs_ptr + g_off + op, mask=mp, other=0.0, eviction_policy="evict_first").to(tl.float32)
    if EXACT_BF16:
        va = _rounded(va, DTYPE, True)
        vb = _rounded(vb, DTYPE, True)
        vp = _rounded(vp, DTYPE, True)
    _store_pairs(dx_ptr + x_off, oa, ob, va, vb, m, GPTJ)
    if PASS > 0:
        tl.store(dx_ptr + x_off + op, vp.to(dx_ptr.dtype.element_ty), mask=mp)


@triton.jit
def _rmsnorm_rope_bwd_kernel(
    dy_ptr, s_ptr, w_ptr, cos_ptr, sin_ptr, pos_ptr, gs_ptr, dx_ptr, dw_ptr,
    n_rows, seq_len, n_heads, n_table_rows, n_progs,
    stride_dyb, stride_dys, stride_sb, stride_ss, stride_gb, stride_gs, stride_xb, stride_xs,
    stride_pb, stride_ps, stride_cos, stride_sin,
    eps, weight_offset,
    HEAD_DIM: tl.constexpr, ROT_DIM: tl.constexpr, HALF_BLOCK: tl.constexpr, PASS_BLOCK: tl.constexpr,
    NH_BLOCK: tl.constexpr, N_CHUNKS: tl.constexpr, GPTJ: tl.constexpr, PER_HEAD: tl.constexpr,
    POS_MODE: tl.constexpr, HAS_GRAD_S: tl.constexpr, NEED_DX: tl.constexpr, NEED_DW: tl.constexpr,
    EXACT_BF16: tl.constexpr, STAGES: tl.constexpr,
):
    HALF: tl.constexpr = ROT_DIM // 2
    PASS: tl.constexpr = HEAD_DIM - ROT_DIM
    DTYPE: tl.constexpr = s_ptr.dtype.element_ty
    pid = tl.program_id(0)
    h_loc = tl.arange(0, NH_BLOCK)[:, None]
    i = tl.arange(0, HALF_BLOCK)[None, :]
    k = tl.arange(0, PASS_BLOCK)[None, :]
    zero_h = tl.zeros([1, 1], dtype=tl.int32)
    ca, cb = _pair_offsets(zero_h, i, 0, HALF, GPTJ)  # cos/sin row offsets of each pair half
    m_half = i < HALF
    hidden = n_heads * HEAD_DIM
    if N_CHUNKS == 1:
        # One tile per row: its offsets (and a row norm's weights) are the same for every row.
        oa1, ob1, m1, op1, mp1 = _chunk_offsets(h_loc, i, k, n_heads, HEAD_DIM, ROT_DIM, GPTJ)
        if not PER_HEAD:
            wa, wb, wp = _row_weights(w_ptr, oa1, ob1, m1, op1, mp1, weight_offset, PASS, GPTJ)
    # This program's row of the [n_progs, W] partial weight-gradient buffer.
    if PER_HEAD:
        dw_row = dw_ptr + pid.to(tl.int64) * HEAD_DIM
        pa, pb = _pair_offsets(zero_h, i, HEAD_DIM, HALF, GPTJ)
        wa, wb = _load_pairs(w_ptr, pa, pb, m_half, GPTJ, "evict_last")
        wa = wa.to(tl.float32) + weight_offset
        wb = wb.to(tl.float32) + weight_offset
        wp = tl.load(w_ptr + ROT_DIM + k, mask=k < PASS, other=0.0).to(tl.float32) + weight_offset
        acc_a = tl.zeros([1, HALF_BLOCK], dtype=tl.float32)
        acc_b = tl.zeros([1, HALF_BLOCK], dtype=tl.float32)
        acc_p = tl.zeros([1, PASS_BLOCK], dtype=tl.float32)
    else:
        dw_row = dw_ptr + pid.to(tl.int64) * hidden
        acc_a = tl.zeros([NH_BLOCK, HALF_BLOCK], dtype=tl.float32)
        acc_b = tl.zeros([NH_BLOCK, HALF_BLOCK], dtype=tl.float32)
        acc_p = tl.zeros([NH_BLOCK, PASS_BLOCK], dtype=tl.float32)

    # Rows pid, pid + n_progs, ...; int64: token x row stride passes 2^31 at 524288 tokens x 4096.
    pid64 = pid.to(tl.int64)
    for it in tl.range(0, tl.cdiv(n_rows - pid, n_progs), num_stages=STAGES):
        r64 = pid64 + it * n_progs
        b_idx = r64 // seq_len
        s_idx = r64 % seq_len
        dy_off = b_idx * stride_dyb + s_idx * stride_dys
        s_off = b_idx * stride_sb + s_idx * stride_ss
        g_off = b_idx * stride_gb + s_idx * stride_gs
        x_off = b_idx * stride_xb + s_idx * stride_xs
        if POS_MODE == 0:
            pos = s_idx
        elif POS_MODE == 1:
            pos = tl.load(pos_ptr + b_idx * stride_pb + s_idx * stride_ps).to(tl.int64)
        else:
            pos = r64
        pos_ok = (pos >= 0) & (pos < n_table_rows)
        safe_pos = tl.where(pos_ok, pos, 0)
        # The forward wrote NaN for this token: so are its gradients (added to rstd, reaching everything).
        nan_row = tl.where(pos_ok, 0.0, float("nan"))
        c1, c2 = _load_pairs(cos_ptr + safe_pos * stride_cos, ca, cb, m_half, GPTJ, "evict_last")
        s1, s2 = _load_pairs(sin_ptr + safe_pos * stride_sin, ca, cb, m_half, GPTJ, "evict_last")
        c1, c2, s1, s2 = c1.to(tl.float32), c2.to(tl.float32), s1.to(tl.float32), s2.to(tl.float32)

        if PER_HEAD or N_CHUNKS == 1:
            for c in range(N_CHUNKS):
                if N_CHUNKS == 1:
                    oa, ob, m, op, mp = oa1, ob1, m1, op1, mp1
                else:
                    oa, ob, m, op, mp = _chunk_offsets(c * NH_BLOCK + h_loc, i, k, n_heads, HEAD_DIM, ROT_DIM,
                                                       GPTJ)
                a, b, p, da, db, dp = _grad_tiles(s_ptr, dy_ptr, s_off, dy_off, oa, ob, m, op, mp, c1, c2, s1, s2,
                                                  PASS, GPTJ)
                ga = da * wa
                gb = db * wb
                gp = dp * wp
                if PER_HEAD:
                    ss = tl.sum(a * a + b * b, axis=1)
                    sg = tl.sum(ga * a + gb * b, axis=1)
                    if PASS > 0:
                        ss += tl.sum(p * p, axis=1)
                        sg += tl.sum(gp * p, axis=1)
                    rs = tl.rsqrt(ss / HEAD_DIM + eps)[:, None] + nan_row
                    coef = rs * rs * rs * sg[:, None] / HEAD_DIM
                else:
                    ss = tl.sum(a * a + b * b)
                    sg = tl.sum(ga * a + gb * b)
                    if PASS > 0:
                        ss += tl.sum(p * p)
                        sg += tl.sum(gp * p)
                    rs = tl.rsqrt(ss / hidden + eps) + nan_row
                    coef = rs * rs * rs * sg / hidden
                if NEED_DX:
                    _store_dx(dx_ptr, gs_ptr, x_off, g_off, oa, ob, m, op, mp, rs * ga - a * coef, rs * gb - b * coef,
                              rs * gp - p * coef, PASS, GPTJ, HAS_GRAD_S, DTYPE, EXACT_BF16)
                if NEED_DW:
                    if PER_HEAD:
                        acc_a += tl.sum(da * a * rs, axis=0)[None, :]
                        acc_b += tl.sum(db * b * rs, axis=0)[None, :]
                        if PASS > 0:
                            acc_p += tl.sum(dp * p * rs, axis=0)[None, :]
                    else:
                        acc_a += da * a * rs
                        acc_b += db * b * rs
                        if PASS > 0:
                            acc_p += dp * p * rs
        else:
            # Wide rows: pass 1 accumulates sum(s^2) and sum(g * s) chunk by chunk.
            t_ss = tl.zeros([NH_BLOCK, HALF_BLOCK], dtype=tl.float32)
            t_sg = tl.zeros([NH_BLOCK, HALF_BLOCK], dtype=tl.float32)
            t_ssp = tl.zeros([NH_BLOCK, PASS_BLOCK], dtype=tl.float32)
            t_sgp = tl.zeros([NH_BLOCK, PASS_BLOCK], dtype=tl.float32)
            for c in range(N_CHUNKS):
                oa, ob, m, op, mp = _chunk_offsets(c * NH_BLOCK + h_loc, i, k, n_heads, HEAD_DIM, ROT_DIM, GPTJ)
                a, b, p, da, db, dp = _grad_tiles(s_ptr, dy_ptr, s_off, dy_off, oa, ob, m, op, mp, c1, c2, s1, s2,
                                                  PASS, GPTJ)
                wa, wb, wp = _row_weights(w_ptr, oa, ob, m, op, mp, weight_offset, PASS, GPTJ)
                t_ss += a * a + b * b
                t_sg += da * wa * a + db * wb * b
                if PASS > 0:
                    t_ssp += p * p
                    t_sgp += dp * wp * p
            rs = tl.rsqrt((tl.sum(t_ss) + tl.sum(t_ssp)) / hidden + eps) + nan_row
            coef = rs * rs * rs * (tl.sum(t_sg) + tl.sum(t_sgp)) / hidden
            # Pass 2: re-read each chunk (from L2), write ds, add dn' * n to this program's partial row.
            for c in range(N_CHUNKS):
                oa, ob, m, op, mp = _chunk_offsets(c * NH_BLOCK + h_loc, i, k, n_heads, HEAD_DIM, ROT_DIM, GPTJ)
                a, b, p, da, db, dp = _grad_tiles(s_ptr, dy_ptr, s_off, dy_off, oa, ob, m, op, mp, c1, c2, s1, s2,
                                                  PASS, GPTJ)
                wa, wb, wp = _row_weights(w_ptr, oa, ob, m, op, mp, weight_offset, PASS, GPTJ)
                if NEED_DX:
                    _store_dx(dx_ptr, gs_ptr, x_off, g_off, oa, ob, m, op, mp, rs * da * wa - a * coef,
                              rs * db * wb - b * coef, rs * dp * wp - p * coef, PASS, GPTJ, HAS_GRAD_S, DTYPE,
                              EXACT_BF16)
                if NEED_DW:
                    # The program's first row starts its partial row; later rows add to it.
                    pa_, pb_ = _load_pairs(dw_row, oa, ob, m & (it > 0), GPTJ, "evict_last")
                    _store_pairs(dw_row, oa, ob, pa_ + da * a * rs, pb_ + db * b * rs, m, GPTJ)
                    if PASS > 0:
                        pp = tl.load(dw_row + op, mask=mp & (it > 0), other=0.0)
                        tl.store(dw_row + op, pp + dp * p * rs, mask=mp)
            # the next row's loads of the partial row must see these stores from every thread
            tl.debug_barrier()

    if NEED_DW:
        if PER_HEAD:
            pa, pb = _pair_offsets(zero_h, i, HEAD_DIM, HALF, GPTJ)
            _store_pairs(dw_row, pa, pb, acc_a, acc_b, m_half, GPTJ)
            if PASS > 0:
                tl.store(dw_row + ROT_DIM + k, acc_p, mask=k < PASS)
        elif N_CHUNKS == 1:
            _store_pairs(dw_row, oa1, ob1, acc_a, acc_b, m1, GPTJ)
            if PASS > 0:
                tl.store(dw_row + op1, acc_p, mask=mp1)


# ----------------------------------------------------------------------------------------------------
# Configuration and launcher
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RMSNormRoPEBackwardConfig:
    HALF_BLOCK: int
    PASS_BLOCK: int
    NH_BLOCK: int
    N_CHUNKS: int
    num_warps: int
    progs_per_sm: int
    num_stages: int


def pick_backward_config(hidden: int, head_dim: int, rot_dim: int, per_head: bool,
                         tile_elems: int | None = None) -> RMSNormRoPEBackwardConfig:
    """Tile shape, warps and programs per SM for the backward. Pure: depends only on its arguments.

    * the tile covers all heads of a row up to ``MAX_TILE_ELEMS`` elements, else chunks of heads (the row
      norm then takes two passes; its chunk is halved, as in the forward, for pass 1's accumulators);
    * ``ELEMS_PER_THREAD`` (two-pass rows: ``TWO_PASS_ELEMS_PER_THREAD``) elements of the tile per
      thread: warps = tile / (32 * that), in [1, 16];
    * persistent grid: ``WARPS_PER_SM / num_warps`` programs per SM (at least one);
    * the row loop pipelined ``PIPELINE_STAGES`` deep, except for two-pass rows (see there).
    """
    tile_elems = MAX_TILE_ELEMS if tile_elems is None else tile_elems
    n_heads = hidden // head_dim
    half_block = next_power_of_2(rot_dim // 2)
    pass_block = next_power_of_2(head_dim - rot_dim) if head_dim > rot_dim else 1
    per_head_elems = 2 * half_block + (pass_block if head_dim > rot_dim else 0)
    nh_block = min(next_power_of_2(n_heads), prev_power_of_2(max(1, tile_elems // per_head_elems)))
    if nh_block < n_heads and not per_head:
        nh_block = max(1, nh_block // 2)
    n_chunks = cdiv(n_heads, nh_block)
    tile = per_head_elems * nh_block
    one_pass = per_head or n_chunks == 1
    per_thread = ELEMS_PER_THREAD if one_pass else TWO_PASS_ELEMS_PER_THREAD
    num_warps = prev_power_of_2(min(16, max(1, tile // (32 * per_thread))))
    stages = PIPELINE_STAGES if one_pass else 1
    return RMSNormRoPEBackwardConfig(half_block, pass_block, nh_block, n_chunks, num_warps,
                                     max(1, WARPS_PER_SM // num_warps), stages)


class _Plan:
    __slots__ = ("launch", "ints", "n_progs", "w_numel", "pos_mode", "has_gs")

    def __init__(self, launch, ints, n_progs, w_numel, pos_mode, has_gs):
        self.launch, self.ints, self.n_progs, self.w_numel = launch, ints, n_progs, w_numel
        self.pos_mode, self.has_gs = pos_mode, has_gs


def _make_plan(dy3, s3, weight, cos, sin, pos2, gs3, x_strides, head_dim, gptj, per_token, need_dx, need_dw,
               tile_elems=None) -> _Plan:
    n_rows = s3.shape[0] * s3.shape[1]
    seq = s3.shape[1]
    hidden = s3.shape[-1]
    per_head = weight.numel() == head_dim and head_dim != hidden
    rot = cos.shape[-1]
    pos_mode = _POS_IDS if pos2 is not None else (_POS_ROW if per_token else _POS_SEQ)
    cfg = pick_backward_config(hidden, head_dim, rot, per_head, tile_elems)
    # The interpreter runs programs one after another, each paying its setup again (~30 ms at hidden 64):
    # two programs (the partial-sum reduction still sees more than one row).
    n_progs = max(1, min(n_rows, 2 if interpreter_enabled() else num_sms(s3.device) * cfg.progs_per_sm))
    spb = sps = 0
    if pos2 is not None:
        spb = pos2.stride(0) if pos2.shape[0] > 1 else 0
        sps = pos2.stride(1)
    g_st = (gs3.stride(0), gs3.stride(1)) if gs3 is not None else (0, 0)
    exact_bf16 = interpreter_enabled() and s3.dtype == torch.bfloat16
    launch = KernelLaunch(
        _rmsnorm_rope_bwd_kernel, (n_progs,),
        dict(HEAD_DIM=head_dim, ROT_DIM=rot, HALF_BLOCK=cfg.HALF_BLOCK, PASS_BLOCK=cfg.PASS_BLOCK,
             NH_BLOCK=cfg.NH_BLOCK, N_CHUNKS=cfg.N_CHUNKS, GPTJ=bool(gptj), PER_HEAD=per_head, POS_MODE=pos_mode,
             HAS_GRAD_S=gs3 is not None, NEED_DX=bool(need_dx), NEED_DW=bool(need_dw), EXACT_BF16=exact_bf16,
             STAGES=cfg.num_stages),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    ints = (n_rows, seq, hidden // head_dim, cos.shape[0], n_progs,
            dy3.stride(0), dy3.stride(1), s3.stride(0), s3.stride(1), *g_st, *x_strides,
            spb, sps, cos.stride(0), sin.stride(0))
    return _Plan(launch, ints, n_progs, head_dim if per_head else hidden, pos_mode, gs3 is not None)


_plans = PlanCache("rmsnorm_rope_backward")


def rmsnorm_rope_backward(grad_y: torch.Tensor, s: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor,
                          sin: torch.Tensor, position_ids: Optional[torch.Tensor], grad_s: Optional[torch.Tensor],
                          eps: float, head_dim: int, gptj: bool, weight_offset: float,
                          per_token_tables: bool = False, need_input: bool = True, need_weight: bool = True,
                          tile_elems: int | None = None):
    """``(ds + grad_s, d weight)`` of the fused op (None for what is not needed), on the forward's own
    validated arguments: ``s`` the normalised input (``x`` or ``x + residual``), cos/sin the 2-D tables the
    forward launched with. ``d weight`` is in weight's dtype, reduced in fp32. ``tile_elems`` overrides
    ``MAX_TILE_ELEMS`` (tests use it to exercise the two-pass path at small sizes)."""
    dx = torch.empty(s.shape, dtype=s.dtype, device=s.device) if need_input else None
    if s.numel() == 0:
        return dx, (torch.zeros_like(weight) if need_weight else None)
    grad_y = last_dim_contiguous(grad_y)
    grad_s = last_dim_contiguous(grad_s) if grad_s is not None else None
    s3 = _as_3d(s, "s")
    dy3 = _as_3d(grad_y, "grad_y")
    gs3 = _as_3d(grad_s, "grad_s") if grad_s is not None else None
    pos2 = None
    if position_ids is not None:
        seq = s3.shape[1]
        pos2 = position_ids.reshape(-1, seq) if position_ids.dim() > 1 else position_ids.view(1, seq)
    dx3 = dx.view(s3.shape) if dx is not None else s3
    key = (tensor_key(dy3, s3, weight, cos, sin, pos2, gs3), head_dim, bool(gptj), bool(per_token_tables),
           bool(need_input), bool(need_weight), tile_elems)
    plan = _plans.get(key)
    if plan is None:
        plan = _plans.put(key, _make_plan(dy3, s3, weight, cos, sin, pos2, gs3, dx3.stride()[:2], head_dim, gptj,
                                          per_token_tables, need_input, need_weight, tile_elems))
    partial = (torch.empty((plan.n_progs, plan.w_numel), dtype=torch.float32, device=s.device) if need_weight
               else None)
    plan.launch(dy3, s3, weight, cos, sin, pos2 if pos2 is not None else s3, gs3 if gs3 is not None else s3,
                dx3, partial if partial is not None else cos, *plan.ints, float(eps), float(weight_offset))
    dw = partial.sum(0).to(weight.dtype) if partial is not None else None
    return dx, dw


# ----------------------------------------------------------------------------------------------------
# Custom op (traceable by torch.compile, including inside a compiled backward) and the autograd hook
# ----------------------------------------------------------------------------------------------------
@torch.library.custom_op("triton_ops::rmsnorm_rope_backward", mutates_args=())
def _rmsnorm_rope_backward_op(grad_y: torch.Tensor, s: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor,
                              sin: torch.Tensor, position_ids: Optional[torch.Tensor],
                              grad_s: Optional[torch.Tensor], eps: float, head_dim: int, gptj: bool,
                              weight_offset: float, per_token_tables: bool, need_input: bool,
                              need_weight: bool) -> tuple[torch.Tensor, torch.Tensor]:
    dx, dw = rmsnorm_rope_backward(grad_y, s, weight, cos, sin, position_ids, grad_s, eps, head_dim, gptj,
                                   weight_offset, per_token_tables, need_input, need_weight)
    # a custom op returns tensors: empty ones stand for the gradients not asked for
    return (dx if dx is not None else s.new_empty(0)), (dw if dw is not None else weight.new_empty(0))


@_rmsnorm_rope_backward_op.register_fake
def _(grad_y, s, weight, cos, sin, position_ids, grad_s, eps, head_dim, gptj, weight_offset, per_token_tables,
      need_input, need_weight):
    return (s.new_empty(s.shape if need_input else (0,)), weight.new_empty(weight.shape if need_weight else (0,)))


def _reference(ctx, s, weight, cos, sin, grad_y, grad_s, need_input, need_weight):
    """The unfused fp32 reference (rmsnorm_rope._reference_grads) on the saved sum."""
    from .rmsnorm_rope import _reference_grads

    shim = SimpleNamespace(needs=(need_input, False, need_weight), position_ids=ctx.position_ids,
                           per_token_tables=ctx.per_token_tables, eps=ctx.eps, head_dim=ctx.head_dim,
                           gptj=ctx.gptj, weight_offset=ctx.weight_offset)
    gx, _, gw = _reference_grads(shim, s, None, weight, cos, sin, grad_y, None)
    if gx is not None and grad_s is not None:
        gx = (gx.float() + grad_s.float()).to(s.dtype)
    return gx, gw


def backward_grads(ctx, s, weight, cos, sin, grad_y, grad_s=None):
    """``(d s, d weight)`` for the op's autograd formula: ``s`` is the normalised input (the sum, with a
    residual), ``grad_s`` the gradient reaching the returned sum (added to ``d s``). None where
    ``ctx.needs`` (x, residual, weight) asks for no gradient."""
    need_input = bool(ctx.needs[0] or ctx.needs[1])
    need_weight = bool(ctx.needs[2])
    if not (need_input or need_weight):
        return None, None
    if grad_y is None:
        grad_y = torch.zeros_like(s)
    if USE_REFERENCE:
        return _reference(ctx, s, weight, cos, sin, grad_y, grad_s, need_input, need_weight)
    pos = ctx.position_ids
    if eager_backward(grad_y, s, weight, cos, sin, pos, grad_s):
        # an eager backward (grad mode off, real tensors): the implementation itself, without the
        # custom op's dispatch (~20 us of host time per call on a desktop CPU)
        return rmsnorm_rope_backward(grad_y, s, weight, cos, sin, pos, grad_s, ctx.eps, ctx.head_dim, ctx.gptj,
                                     ctx.weight_offset, ctx.per_token_tables, need_input, need_weight)
    dx, dw = torch.ops.triton_ops.rmsnorm_rope_backward(
        grad_y, s, weight, cos, sin, pos, grad_s, ctx.eps, ctx.head_dim, ctx.gptj, ctx.weight_offset,
        ctx.per_token_tables, need_input, need_weight)
    return (dx if need_input else None), (dw if need_weight else None)



# ----------------------------------------------------------------------------------------------------
# Compile check
# ----------------------------------------------------------------------------------------------------
_TYPE_SIZES = {"fp16": 2, "bf16": 2, "fp32": 4}


def _compile_variants():
    """(dtype, hidden, head_dim, rot, per_head, gptj, pos_mode, grad_s, need_dx) combos to build: every
    tile class of pick_backward_config (one tile, two-pass chunks, per-head) per head_dim class with 16-bit
    inputs; the other switches (layout, positions, grad_s, fp16 vs bf16, fp32) at a few head_dim classes
    each, the Llama/Qwen row (4096, hd 128) in every variant. ~0.6 s of CPU per build and architecture."""
    out = []
    for head_dim, rot in ((64, 64), (80, 80), (96, 96), (128, 128), (128, 64), (256, 256), (512, 512)):
        out.append(("bf16", head_dim * 32, head_dim, rot, False, False, 0, True, True))  # one tile
        out.append(("fp16", head_dim * 112, head_dim, rot, False, True, 1, False, True))  # two passes
        out.append(("bf16", head_dim * 32, head_dim, rot, True, False, 0, False, True))  # per-head
        if head_dim in (64, 128) or rot < head_dim:
            out.append(("fp16", head_dim * 32, head_dim, rot, False, True, 1, False, True))
            out.append(("bf16", head_dim * 112, head_dim, rot, False, False, 0, True, True))
            out.append(("fp16", head_dim * 32, head_dim, rot, True, True, 1, True, True))
    out.append(("fp32", 4096, 128, 128, False, False, 2, True, True))
    out.append(("fp32", 14336, 128, 128, False, True, 1, True, True))
    out.append(("fp32", 4096, 128, 64, True, True, 1, True, True))
    out.append(("bf16", 4096, 128, 128, False, False, 0, False, False))  # weight gradient only
    return out


def compile_specs(arch: int):
    from ..compile_check import CompileSpec

    specs = []
    for tname, hidden, head_dim, rot, per_head, gptj, pos_mode, grad_s, need_dx in _compile_variants():
        cfg = pick_backward_config(hidden, head_dim, rot, per_head)
        t = f"*{tname}"
        sig = {"dy_ptr": t, "s_ptr": t, "w_ptr": "*fp32" if tname == "bf16" else t, "cos_ptr": "*fp32",
               "sin_ptr": "*fp32", "pos_ptr": "*i64", "gs_ptr": t, "dx_ptr": t, "dw_ptr": "*fp32"}
        sig.update({n: "i32" for n in ("n_rows", "seq_len", "n_heads", "n_table_rows", "n_progs")})
        sig.update({n: "i64" for n in ("stride_dyb", "stride_dys", "stride_sb", "stride_ss", "stride_gb",
                                        "stride_gs", "stride_xb", "stride_xs", "stride_pb", "stride_ps",
                                        "stride_cos", "stride_sin")})
        sig.update({"eps": "fp32", "weight_offset": "fp32"})
        const = dict(HEAD_DIM=head_dim, ROT_DIM=rot, HALF_BLOCK=cfg.HALF_BLOCK, PASS_BLOCK=cfg.PASS_BLOCK,
                     NH_BLOCK=cfg.NH_BLOCK, N_CHUNKS=cfg.N_CHUNKS, GPTJ=gptj, PER_HEAD=per_head, POS_MODE=pos_mode,
                     HAS_GRAD_S=grad_s, NEED_DX=need_dx, NEED_DW=True, EXACT_BF16=False, STAGES=cfg.num_stages)
        sig.update({n: "constexpr" for n in const})
        specs.append(CompileSpec(
            _rmsnorm_rope_bwd_kernel, sig, const, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            # as specialised at run time for 16-byte aligned rows: without it the AOT build neither
            # vectorises the loads nor pipelines them through shared memory as the GPU's build does
            aligned=tuple(n for n in sig if n.endswith("_ptr") and n != "pos_ptr")
            + ("stride_dyb", "stride_dys", "stride_sb", "stride_ss", "stride_gb", "stride_gs", "stride_xb",
               "stride_xs", "stride_cos", "stride_sin"),
            label=f"rmsnorm_rope_bwd {tname} h={hidden} hd={head_dim} rot={rot} ph={int(per_head)} "
                  f"gptj={int(gptj)} pos={pos_mode} gs={int(grad_s)} dx={int(need_dx)} chunks={cfg.N_CHUNKS} "
                  f"nh={cfg.NH_BLOCK} w={cfg.num_warps}"))
    return specs


__all__ = ["rmsnorm_rope_backward", "pick_backward_config", "RMSNormRoPEBackwardConfig", "backward_grads",
           "compile_specs"]
