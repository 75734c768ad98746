"""Fused RMSNorm + rotary position embedding: one read of x, one write of the result.

Each program handles whole rows (tokens). RoPE rotates channel pairs: ``(d, d + rot/2)`` in the neox
layout, ``(2i, 2i + 1)`` in the gptj layout. The kernel loads each row directly as its two pair halves,
``a`` and ``b``, each a ``[NH_BLOCK, HALF_BLOCK]`` register tile (heads x pairs), plus the channels that do
not rotate (partial rotary) as a third tile. Every element of x, the weight and the cos/sin rows is loaded
exactly once: an earlier version loaded each channel's rotation partner a second time, which kept HBM
traffic the same but doubled the L1/L2 traffic and ran at 65% of copy bandwidth on an H200.

* neox: ``a = x[h, i]`` and ``b = x[h, rot/2 + i]``: two contiguous loads.
* gptj: one contiguous ``[NH_BLOCK, HALF_BLOCK, 2]`` load split on its last axis (``tl.split``).

The full-row norm reduces over all tiles; the per-head norm (QK-norm) reduces over the pair axis. Rows
wider than the register budget are processed in chunks of heads: pass 1 accumulates the sum of squares,
pass 2 re-reads the row (mostly from L2) to normalise, rotate and store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import validation as V
from ..autotuner import runtime as _rt
from ..exceptions import InvalidArgumentError, ShapeError, UnsupportedError
from ..launch import (
    EagerAutograd,
    KernelLaunch,
    PlanCache,
    autograd_key,
    eager_autograd,
    mark_written,
    plan_key,
    tensor_key,
)
from ..launch import tensor_key as _tensor_key
from ..utils import cdiv, interpreter_enabled, next_power_of_2, num_sms
from . import fp8_out as F8
from .fp8_out import _fp8_codes
from .fp8_quantize import _finite_abs, _mark_valid, _scale_from_amax, check_scale_values
from .rmsnorm import _rounded
from .rope import _rot_dim

LAYOUTS = ("neox", "gptj")
#: Largest head_dim accepted.
MAX_HEAD_DIM = 512
#: Largest row tile held in registers, in bytes of input (x, plus the residual when present): 8192 16-bit
#: elements over 16 warps is 16 per thread. 16384-element tiles spilled in the compile check (128
#: registers per thread is the cap at 16 warps); 16 KB tiles build spill-free on sm_80/89/90.
MAX_TILE_BYTES = 16384

# Position sources (constexpr POS_MODE).
_POS_SEQ = 0  # token (b, s) uses table row s
_POS_IDS = 1  # table row read from position_ids[b, s]
_POS_ROW = 2  # per-token tables: token r uses table row r


# ----------------------------------------------------------------------------------------------------
# Layer 1: kernel and its jit helpers
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _pair_offsets(h, i, HEAD_DIM: tl.constexpr, HALF: tl.constexpr, GPTJ: tl.constexpr):
    """Offsets of the two halves of each rotation pair (neox: two [NH, HB] grids; gptj: one [NH, HB, 2])."""
    if GPTJ:
        j = tl.arange(0, 2)[None, None, :]
        oa = h[:, :, None] * HEAD_DIM + 2 * i[:, :, None] + j
        ob = oa
    else:
        oa = h * HEAD_DIM + i
        ob = h * HEAD_DIM + HALF + i
    return oa, ob


@triton.jit
def _load_pairs(ptr, offs_a, offs_b, mask, GPTJ: tl.constexpr, EVICT: tl.constexpr):
    if GPTJ:
        t = tl.load(ptr + offs_a, mask=mask[:, :, None], other=0.0, eviction_policy=EVICT)
        a, b = tl.split(t)
    else:
        a = tl.load(ptr + offs_a, mask=mask, other=0.0, eviction_policy=EVICT)
        b = tl.load(ptr + offs_b, mask=mask, other=0.0, eviction_policy=EVICT)
    return a, b


@triton.jit
def _store_pairs(ptr, offs_a, offs_b, a, b, mask, GPTJ: tl.constexpr):
    if GPTJ:
        tl.store(ptr + offs_a, tl.join(a, b).to(ptr.dtype.element_ty), mask=mask[:, :, None])
    else:
        tl.store(ptr + offs_a, a.to(ptr.dtype.element_ty), mask=mask)
        tl.store(ptr + offs_b, b.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_in_dtype(a, r, DTYPE: tl.constexpr, EXACT_BF16: tl.constexpr):
    """``a + r`` rounded to DTYPE, as an unfused add in that dtype is. EXACT_BF16 (bf16 under Triton's CPU
    interpreter, whose bf16 adds are wrong by up to 1e38 and whose fp32 -> bf16 casts truncate): the sum in
    fp32, rounded to nearest even with integer operations (an fp32 value on the bf16 grid)."""
    if EXACT_BF16:
        s = _rounded(a.to(tl.float32) + r.to(tl.float32), DTYPE, True)
    else:
        s = (a + r).to(DTYPE)
    return s


@triton.jit
def _load_row_tiles(x_ptr, res_ptr, res_out_ptr, x_off, r_off, ro_off, h, i, k, n_heads,
                    HEAD_DIM: tl.constexpr, ROT_DIM: tl.constexpr, HALF_BLOCK: tl.constexpr,
                    PASS_BLOCK: tl.constexpr, GPTJ: tl.constexpr, HAS_RES: tl.constexpr,
                    STORE_RES: tl.constexpr, row_ok, EXACT_BF16: tl.constexpr):
    """x (+ residual, rounded to x's dtype as an unfused add would) as pair halves a, b and the
    non-rotating tail p, in fp32. Optionally writes the residual sum."""
    HALF: tl.constexpr = ROT_DIM // 2
    PASS: tl.constexpr = HEAD_DIM - ROT_DIM
    oa, ob = _pair_offsets(h, i, HEAD_DIM, HALF, GPTJ)
    m = (h < n_heads) & (i < HALF) & row_ok
    a, b = _load_pairs(x_ptr + x_off, oa, ob, m, GPTJ, "evict_first")
    if HAS_RES:
        ra, rb = _load_pairs(res_ptr + r_off, oa, ob, m, GPTJ, "evict_first")
        a = _add_in_dtype(a, ra, x_ptr.dtype.element_ty, EXACT_BF16)
        b = _add_in_dtype(b, rb, x_ptr.dtype.element_ty, EXACT_BF16)
        if STORE_RES:
            _store_pairs(res_out_ptr + ro_off, oa, ob, a, b, m, GPTJ)
    p = tl.zeros([1, 1], dtype=tl.float32)
    if PASS > 0:
        op = h * HEAD_DIM + ROT_DIM + k
        mp = (h < n_heads) & (k < PASS) & row_ok
        p = tl.load(x_ptr + x_off + op, mask=mp, other=0.0, eviction_policy="evict_first")
        if HAS_RES:
            p = _add_in_dtype(p, tl.load(res_ptr + r_off + op, mask=mp, other=0.0, eviction_policy="evict_first"),
                              x_ptr.dtype.element_ty, EXACT_BF16)
            if STORE_RES:
                tl.store(res_out_ptr + ro_off + op, p.to(res_out_ptr.dtype.element_ty), mask=mp)
        p = p.to(tl.float32)
    return a.to(tl.float32), b.to(tl.float32), p


@triton.jit
def _chunk_rstd(a, b, p, rstd, hidden, eps, HEAD_DIM: tl.constexpr, PASS: tl.constexpr, PER_HEAD: tl.constexpr,
                N_CHUNKS: tl.constexpr):
    """The reciprocal RMS that normalises a chunk: per head (QK-norm), of the whole row held in one tile,
    or ``rstd`` from the first pass over a chunked row."""
    if PER_HEAD:
        ss = tl.sum(a * a + b * b, axis=1)
        if PASS > 0:
            ss += tl.sum(p * p, axis=1)
        rs = tl.rsqrt(ss / HEAD_DIM + eps)[:, None]
    elif N_CHUNKS == 1:
        ss = tl.sum(a * a + b * b)
        if PASS > 0:
            ss += tl.sum(p * p)
        rs = tl.rsqrt(ss / hidden + eps)
    else:
        rs = rstd
    return rs


@triton.jit
def _rope_out(a, b, p, h, i, k, rs, w_ptr, wa, wb, wp, c1, c2, s1, s2, pos_ok, row_ok, n_heads, weight_offset,
              HEAD_DIM: tl.constexpr, ROT_DIM: tl.constexpr, GPTJ: tl.constexpr, PER_HEAD: tl.constexpr):
    """One chunk normalised (``rs``) and rotated in fp32, NaN for a token whose position lies outside the
    tables: ``(ya, yb, yp, oa, ob, op, m, mp)``, the pair halves and the tail with their offsets and masks.
    Per-head weights come in as ``wa, wb, wp``; row weights are loaded here."""
    HALF: tl.constexpr = ROT_DIM // 2
    PASS: tl.constexpr = HEAD_DIM - ROT_DIM
    oa, ob = _pair_offsets(h, i, HEAD_DIM, HALF, GPTJ)
    m = (h < n_heads) & (i < HALF) & row_ok
    if not PER_HEAD:
        wa, wb = _load_pairs(w_ptr, oa, ob, m, GPTJ, "evict_last")
        wa = wa.to(tl.float32) + weight_offset
        wb = wb.to(tl.float32) + weight_offset
    na = a * rs * wa
    nb = b * rs * wb
    ya = na * c1 - nb * s1
    yb = nb * c2 + na * s2
    ya = tl.where(pos_ok, ya, float("nan"))
    yb = tl.where(pos_ok, yb, float("nan"))
    op = h * HEAD_DIM + ROT_DIM + k
    mp = (h < n_heads) & (k < PASS) & row_ok
    yp = p
    if PASS > 0:
        if not PER_HEAD:
            wp = tl.load(w_ptr + op, mask=mp, other=0.0, eviction_policy="evict_last").to(tl.float32)
            wp = wp + weight_offset
        yp = tl.where(pos_ok, p * rs * wp, float("nan"))
    return ya, yb, yp, oa, ob, op, m, mp


@triton.jit
def _tiles_amax(ya, yb, yp, m, mp, PASS: tl.constexpr):
    """amax over the finite values of one chunk's tiles (masked-off lanes excluded)."""
    am = tl.maximum(tl.max(tl.where(m, _finite_abs(ya), 0.0)), tl.max(tl.where(m, _finite_abs(yb), 0.0)))
    if PASS > 0:
        am = tl.maximum(am, tl.max(tl.where(mp, _finite_abs(yp), 0.0)))
    return am


@triton.jit
def _head_amax(ya, yb, yp, m, mp, in_a, in_b, in_p, PASS: tl.constexpr):
    """Per-head amax ``[NH_BLOCK]`` over the finite values of one chunk's tiles selected by ``in_*``."""
    am = tl.maximum(tl.max(tl.where(m & in_a, _finite_abs(ya), 0.0), axis=1),
                    tl.max(tl.where(m & in_b, _finite_abs(yb), 0.0), axis=1))
    if PASS > 0:
        am = tl.maximum(am, tl.max(tl.where(mp & in_p, _finite_abs(yp), 0.0), axis=1))
    return am


@triton.jit
def _rope_quant_store(ya, yb, yp, oa, ob, op, m, mp, h, i, k, o_ptr, s_ptr, c, row_ok, n_heads, hidden, inv,
                      QUANT: tl.constexpr, N_CHUNKS: tl.constexpr, NH_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
                      ROT_DIM: tl.constexpr, GPTJ: tl.constexpr, HEAD_GROUPS: tl.constexpr,
                      GROUP_HEADS: tl.constexpr, OUT_BYTES: tl.constexpr):
    """Store one chunk as e4m3 codes (``o_ptr``: the row's output, ``s_ptr``: the row's scales).

    Static, and per-token over chunks: ``inv`` is known. Per-token of a row in one tile: the tile's amax.
    (1, 128) blocks along the row: with HEAD_DIM a multiple of 128, HEAD_GROUPS blocks inside each head
    (by the channel's position in the head); with HEAD_DIM < 128, blocks of GROUP_HEADS whole heads (the
    config makes NH_BLOCK a multiple of GROUP_HEADS, so chunks never split a block).
    """
    HALF: tl.constexpr = ROT_DIM // 2
    PASS: tl.constexpr = HEAD_DIM - ROT_DIM
    if QUANT == 1 or (QUANT == 2 and N_CHUNKS > 1):
        ia = inv
        ib = inv
        ip = inv
    elif QUANT == 2:
        s = _scale_from_amax(_tiles_amax(ya, yb, yp, m, mp, PASS), 448.0)
        tl.store(s_ptr, s, mask=row_ok)
        ia = tl.math.div_rn(1.0, s)
        ib = ia
        ip = ia
    elif GROUP_HEADS > 1:
        NG: tl.constexpr = NH_BLOCK // GROUP_HEADS
        ah = _head_amax(ya, yb, yp, m, mp, m, m, mp, PASS)
        sg = _scale_from_amax(tl.max(tl.reshape(ah, [NG, GROUP_HEADS]), axis=1), 448.0)
        g = c * NG + tl.arange(0, NG)
        tl.store(s_ptr + g, sg, mask=row_ok & (g * 128 < hidden))
        ig = tl.math.div_rn(tl.full([NG], 1.0, tl.float32), sg)
        ia = tl.reshape(tl.broadcast_to(ig[:, None], [NG, GROUP_HEADS]), [NH_BLOCK])[:, None]
        ib = ia
        ip = ia
    else:
        if GPTJ:
            pa = 2 * i
            pb = 2 * i + 1
        else:
            pa = i
            pb = HALF + i
        pp = ROT_DIM + k
        h_ok = (h < n_heads) & row_ok
        ia = inv
        ib = inv
        ip = inv
        for gg in tl.static_range(HEAD_GROUPS):
            in_a = pa // 128 == gg
            in_b = pb // 128 == gg
            in_p = pp // 128 == gg
            sg = _scale_from_amax(_head_amax(ya, yb, yp, m, mp, in_a, in_b, in_p, PASS), 448.0)[:, None]
            tl.store(s_ptr + h * HEAD_GROUPS + gg, sg, mask=h_ok)
            ig = tl.math.div_rn(tl.full([NH_BLOCK, 1], 1.0, tl.float32), sg)
            if HEAD_GROUPS == 1:
                ia = ig
                ib = ig
                ip = ig
            else:
                ia = tl.where(in_a, ig, ia)
                ib = tl.where(in_b, ig, ib)
                ip = tl.where(in_p, ig, ip)
    _store_pairs(o_ptr, oa, ob, _fp8_codes(ya, ia, OUT_BYTES), _fp8_codes(yb, ib, OUT_BYTES), m, GPTJ)
    if PASS > 0:
        tl.store(o_ptr + op, _fp8_codes(yp, ip, OUT_BYTES), mask=mp)


@triton.jit
def _rmsnorm_rope_kernel(
    x_ptr, res_ptr, w_ptr, cos_ptr, sin_ptr, pos_ptr, out_ptr, res_out_ptr, scale_ptr,
    n_rows, seq_len, n_heads, n_table_rows,
    stride_xb, stride_xs, stride_rb, stride_rs, stride_ob, stride_os, stride_rob, stride_ros,
    stride_pb, stride_ps, stride_cos, stride_sin, stride_sr,
    eps, weight_offset,
    HEAD_DIM: tl.constexpr, ROT_DIM: tl.constexpr, HALF_BLOCK: tl.constexpr, PASS_BLOCK: tl.constexpr,
    NH_BLOCK: tl.constexpr, N_CHUNKS: tl.constexpr, GPTJ: tl.constexpr, PER_HEAD: tl.constexpr,
    HAS_RES: tl.constexpr, POS_MODE: tl.constexpr, ROWS_PER_PROG: tl.constexpr, EXACT_BF16: tl.constexpr,
    QUANT: tl.constexpr, HEAD_GROUPS: tl.constexpr, GROUP_HEADS: tl.constexpr, OUT_BYTES: tl.constexpr,
):
    """EXACT_BF16: bf16 x under Triton's CPU interpreter, which gets bf16 adds and fp32 -> bf16 casts wrong:
    the residual add runs in fp32 and every bf16 store is rounded to nearest even first (see
    ``_add_in_dtype``), which is what the GPU computes. Off on the GPU.

    QUANT (triton_ops.kernels.fp8_out): 0 writes x's dtype; 1 static, 2 per-token, 3 (1, 128)-block e4m3
    codes of the fp32 result, with the scales at ``scale_ptr`` (read for static, written otherwise,
    ``stride_sr`` apart per row). HEAD_GROUPS / GROUP_HEADS: (1, 128) blocks per head / heads per block."""
    HALF: tl.constexpr = ROT_DIM // 2
    PASS: tl.constexpr = HEAD_DIM - ROT_DIM
    pid = tl.program_id(0).to(tl.int64)
    h_loc = tl.arange(0, NH_BLOCK)[:, None]
    i = tl.arange(0, HALF_BLOCK)[None, :]
    k = tl.arange(0, PASS_BLOCK)[None, :]
    zero_h = tl.zeros([1, 1], dtype=tl.int32)
    ca, cb = _pair_offsets(zero_h, i, 0, HALF, GPTJ)  # cos/sin row offsets of each pair half
    m_half = i < HALF
    hidden = n_heads * HEAD_DIM
    inv = 1.0
    if QUANT == 1:
        inv = tl.math.div_rn(1.0, tl.load(scale_ptr))
    wa = 0.0  # row weights are loaded per chunk (_rope_out); per-head ones once, here
    wb = 0.0
    wp = 0.0
    if PER_HEAD:
        wa, wb = _load_pairs(w_ptr, *_pair_offsets(zero_h, i, HEAD_DIM, HALF, GPTJ), m_half, GPTJ, "evict_last")
        wa = wa.to(tl.float32) + weight_offset
        wb = wb.to(tl.float32) + weight_offset
        wp = tl.load(w_ptr + ROT_DIM + k, mask=k < PASS, other=0.0).to(tl.float32) + weight_offset

    for r in range(ROWS_PER_PROG):
        row = pid * ROWS_PER_PROG + r
        row_ok = row < n_rows
        b_idx = row // seq_len
        s_idx = row % seq_len
        x_off = b_idx * stride_xb + s_idx * stride_xs
        r_off = b_idx * stride_rb + s_idx * stride_rs
        o_off = b_idx * stride_ob + s_idx * stride_os
        ro_off = b_idx * stride_rob + s_idx * stride_ros

        # Table row for this token. An out-of-range position makes the token's output NaN (checked in
        # the kernel: a host-side check would cost a device sync on every call).
        if POS_MODE == 0:
            pos = s_idx
        elif POS_MODE == 1:
            pos = tl.load(pos_ptr + b_idx * stride_pb + s_idx * stride_ps, mask=row_ok, other=0).to(tl.int64)
        else:
            pos = row
        pos_ok = (pos >= 0) & (pos < n_table_rows)
        safe_pos = tl.where(pos_ok, pos, 0)
        cm = m_half & row_ok
        c1, c2 = _load_pairs(cos_ptr + safe_pos * stride_cos, ca, cb, cm, GPTJ, "evict_last")
        s1, s2 = _load_pairs(sin_ptr + safe_pos * stride_sin, ca, cb, cm, GPTJ, "evict_last")
        c1, c2, s1, s2 = c1.to(tl.float32), c2.to(tl.float32), s1.to(tl.float32), s2.to(tl.float32)

        if PER_HEAD or N_CHUNKS == 1:
            rstd = 0.0
        else:
            # Wide rows: pass 1 accumulates the sum of squares chunk by chunk.
            acc = tl.zeros([NH_BLOCK, HALF_BLOCK], dtype=tl.float32)
            acc_p = tl.zeros([NH_BLOCK, PASS_BLOCK], dtype=tl.float32)
            for c in range(N_CHUNKS):
                h = c * NH_BLOCK + h_loc
                a, b, p = _load_row_tiles(x_ptr, res_ptr, res_out_ptr, x_off, r_off, ro_off, h, i, k, n_heads,
                                          HEAD_DIM, ROT_DIM, HALF_BLOCK, PASS_BLOCK, GPTJ, HAS_RES, False, row_ok,
                                          EXACT_BF16)
                acc += a * a + b * b
                if PASS > 0:
                    acc_p += p * p
            rstd = tl.rsqrt((tl.sum(acc) + tl.sum(acc_p)) / hidden + eps)

        if QUANT == 2 and N_CHUNKS > 1:
            # Per-token scale of a row too wide for one tile: one more pass (mostly from L2) takes the amax of
            # the result, computed exactly as the storing pass below recomputes it.
            amax = 0.0
            for c in range(N_CHUNKS):
                h = c * NH_BLOCK + h_loc
                a, b, p = _load_row_tiles(x_ptr, res_ptr, res_out_ptr, x_off, r_off, ro_off, h, i, k, n_heads,
                                          HEAD_DIM, ROT_DIM, HALF_BLOCK, PASS_BLOCK, GPTJ, HAS_RES, False, row_ok,
                                          EXACT_BF16)
                rs = _chunk_rstd(a, b, p, rstd, hidden, eps, HEAD_DIM, PASS, PER_HEAD, N_CHUNKS)
                ya, yb, yp, oa, ob, op, m, mp = _rope_out(a, b, p, h, i, k, rs, w_ptr, wa, wb, wp, c1, c2, s1, s2,
                                                          pos_ok, row_ok, n_heads, weight_offset, HEAD_DIM,
                                                          ROT_DIM, GPTJ, PER_HEAD)
                amax = tl.maximum(amax, _tiles_amax(ya, yb, yp, m, mp, PASS))
            s_tok = _scale_from_amax(amax, 448.0)
            tl.store(scale_ptr + row * stride_sr, s_tok, mask=row_ok)
            inv = tl.math.div_rn(1.0, s_tok)

        for c in range(N_CHUNKS):
            h = c * NH_BLOCK + h_loc
            a, b, p = _load_row_tiles(x_ptr, res_ptr, res_out_ptr, x_off, r_off, ro_off, h, i, k, n_heads,
                                      HEAD_DIM, ROT_DIM, HALF_BLOCK, PASS_BLOCK, GPTJ, HAS_RES, True, row_ok,
                                      EXACT_BF16)
            rs = _chunk_rstd(a, b, p, rstd, hidden, eps, HEAD_DIM, PASS, PER_HEAD, N_CHUNKS)
            ya, yb, yp, oa, ob, op, m, mp = _rope_out(a, b, p, h, i, k, rs, w_ptr, wa, wb, wp, c1, c2, s1, s2,
                                                      pos_ok, row_ok, n_heads, weight_offset, HEAD_DIM, ROT_DIM,
                                                      GPTJ, PER_HEAD)
            if QUANT == 0:
                if EXACT_BF16:
                    ya = _rounded(ya, out_ptr.dtype.element_ty, True)
                    yb = _rounded(yb, out_ptr.dtype.element_ty, True)
                _store_pairs(out_ptr + o_off, oa, ob, ya, yb, m, GPTJ)
                if PASS > 0:
                    if EXACT_BF16:
                        yp = _rounded(yp, out_ptr.dtype.element_ty, True)
                    tl.store(out_ptr + o_off + op, yp.to(out_ptr.dtype.element_ty), mask=mp)
            else:
                _rope_quant_store(ya, yb, yp, oa, ob, op, m, mp, h, i, k, out_ptr + o_off, scale_ptr + row * stride_sr,
                                  c, row_ok, n_heads, hidden, inv, QUANT, N_CHUNKS, NH_BLOCK, HEAD_DIM, ROT_DIM, GPTJ,
                                  HEAD_GROUPS, GROUP_HEADS, OUT_BYTES)


# ----------------------------------------------------------------------------------------------------
# Layer 2: configuration heuristic and launcher
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RMSNormRoPEConfig:
    HALF_BLOCK: int
    PASS_BLOCK: int
    NH_BLOCK: int
    N_CHUNKS: int
    ROWS_PER_PROG: int
    num_warps: int


def pick_config(n_rows: int, hidden: int, head_dim: int, rot_dim: int | None = None, itemsize: int = 2,
                has_residual: bool = False, n_sms: int = 132, override: dict | None = None,
                group_heads: int = 1, fp8_out: bool = False) -> RMSNormRoPEConfig:
    """Block shape and warps for a problem. Pure: depends only on its arguments.

    * the tile covers all heads of a row up to MAX_TILE_BYTES of input (x, plus the residual when there
      is one), else chunks of heads (two passes);
    * about 128 bytes of input per thread: warps = tile bytes / 4096, in [1, 16];
    * small rows (per-head norms of narrow tensors, tiny hidden) pack several rows per program so a program
      moves at least ~4096 elements, but never so many that fewer than 4 programs per SM remain.
    """
    rot_dim = head_dim if rot_dim is None else rot_dim
    n_heads = hidden // head_dim
    half_block = next_power_of_2(rot_dim // 2)
    pass_block = next_power_of_2(head_dim - rot_dim) if head_dim > rot_dim else 1
    per_head_elems = 2 * half_block + (pass_block if head_dim > rot_dim else 0)
    tile_budget = MAX_TILE_BYTES // (itemsize * (2 if has_residual else 1))
    nh_block = min(next_power_of_2(n_heads), max(1, 1 << (max(1, tile_budget // per_head_elems).bit_length() - 1)))
    if nh_block < n_heads:
        # Two-pass rows keep a sum-of-squares accumulator live across pass 1 as well: halve the tile (the
        # compile check showed 16 KB chunked tiles spilling 16-48 bytes on sm_80/89/90).
        nh_block = max(1, nh_block // 2)
    # (1, 128)-block FP8 outputs of heads narrower than 128: a chunk holds whole blocks of group_heads heads
    nh_block = max(nh_block, group_heads)
    n_chunks = cdiv(n_heads, nh_block)
    tile = per_head_elems * nh_block
    # ~128 bytes of input per thread: an 8 KB fp16 row of 4096 runs on 2 warps. Measured on an H200
    # (8x2048x4096 and 1x32768x4096, docs/perf-notes.md): 2 warps reached 90-91% of copy bandwidth, 4 warps
    # 87-89%, 8 warps 71-75%, 16 warps 50-61% -- more independent loads in flight per thread win.
    # Two-pass (chunked) rows and rows with a residual hold more live values per element; there the compile
    # check showed 128 B/thread spilling on sm_80/89, so they get 32 and 64 B/thread.
    bytes_per_thread = 32 if n_chunks > 1 else (64 if has_residual else 128)
    num_warps = int(min(16, max(1, tile * itemsize * (2 if has_residual else 1) // (32 * bytes_per_thread))))
    rows = 1
    while n_chunks == 1 and rows < 16 and tile * rows * 2 <= 4096 and cdiv(n_rows, rows * 2) >= 4 * n_sms:
        rows *= 2
    if override:
        rows = int(override.get("ROWS_PER_PROG", rows))
        num_warps = int(override.get("num_warps", num_warps))
    return RMSNormRoPEConfig(half_block, pass_block, nh_block, n_chunks, rows, num_warps)




class _Plan:
    """A validated launch: everything but the tensors' addresses, fixed by the call's signature.

    Called with tensors at the same addresses as the ones it was planned with (the originals, or the
    2-/3-D views of them the planner used: views keep the base address)."""

    __slots__ = ("launch", "ints", "shape", "dtype", "has_res", "pos_mode", "cacheable", "tests")

    def __init__(self, launch, ints, shape, dtype, has_res, pos_mode, cacheable):
        self.launch, self.ints, self.shape, self.dtype = launch, ints, shape, dtype
        self.has_res, self.pos_mode, self.cacheable = has_res, pos_mode, cacheable
        # (argument index, validation.Disjoint) per input a given `out` must stay apart from: they depend on
        # the addresses, which the plan key does not hold, so the eager fast path repeats them per call
        self.tests = ()

    def __call__(self, x, weight, cos, sin, position_ids, residual, out, residual_out=None, eps=1e-6,
                 weight_offset=0.0):
        y = out if out is not None else x.new_empty(self.shape)
        if self.has_res:
            ro = residual_out if residual_out is not None else x.new_empty(self.shape)
        else:
            residual, ro = x, y
        if self.launch is not None:
            self.launch(x, residual, weight, cos, sin, position_ids if self.pos_mode == _POS_IDS else x, y, ro,
                        None, *self.ints, eps, weight_offset)
            if out is not None or residual_out is not None:
                mark_written(out, residual_out)
        return (y, ro) if self.has_res else y


class _FP8Plan(_Plan):
    """A launch writing e4m3 codes and scales (``out_dtype=torch.float8_e4m3fn``): returns ``(q, scale)`` or
    ``(q, scale, residual_sum)``; a static plan hands back the caller's scale, dynamic scales are new
    tensors marked valid for fp8_gemm's scale check (finite and >= 2^-126 by construction)."""

    __slots__ = ("quant", "out_bytes")

    def __init__(self, launch, ints, shape, dtype, has_res, pos_mode, cacheable, quant, out_bytes):
        super().__init__(launch, ints, shape, dtype, has_res, pos_mode, cacheable)
        self.quant, self.out_bytes = quant, out_bytes

    def __call__(self, x, weight, cos, sin, position_ids, residual, out, residual_out=None, eps=1e-6,
                 weight_offset=0.0, scale=None):
        q = torch.empty(self.shape, dtype=F8.FP8_OUT_DTYPE, device=x.device)
        if self.has_res:
            ro = residual_out if residual_out is not None else x.new_empty(self.shape)
        else:
            residual, ro = x, x  # never written (HAS_RES off)
        s = scale if self.quant == F8.QUANT_STATIC else torch.empty(
            F8.scale_shape(self.quant, self.shape), dtype=torch.float32, device=x.device)
        self.launch(x, residual, weight, cos, sin, position_ids if self.pos_mode == _POS_IDS else x,
                    q.view(torch.uint8) if self.out_bytes else q, ro, s, *self.ints, eps, weight_offset)
        if residual_out is not None:
            mark_written(residual_out)
        if self.quant != F8.QUANT_STATIC:
            _mark_valid(s)
        return (q, s, ro) if self.has_res else (q, s)


def _make_plan(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               position_ids: Optional[torch.Tensor], residual: Optional[torch.Tensor],
               out: Optional[torch.Tensor], head_dim: int, gptj: bool, per_token_tables: bool = False,
               config: dict | None = None, residual_out: Optional[torch.Tensor] = None, quant: int = 0) -> _Plan:
    """Plan a launch on validated inputs (cos/sin already 2-D tables; ``out``/``residual_out`` of x's
    shape, or None for contiguous buffers the plan allocates on each call; ``out`` is None with an FP8
    output, ``quant`` > 0)."""
    has_res = residual is not None
    pos_mode = _POS_IDS if position_ids is not None else (_POS_ROW if per_token_tables else _POS_SEQ)
    if x.numel() == 0:
        return _Plan(None, (), tuple(x.shape), x.dtype, has_res, pos_mode, True)
    hidden = x.shape[-1]
    x3 = V.as_3d(x, "x")
    n_rows = x3.shape[0] * x3.shape[1]
    seq = x3.shape[1]
    # Outputs the op allocates are contiguous; a given `out` keeps its own strides.
    dense = _contiguous_strides(x3.shape)
    o_st = V.as_3d(out, "out", writable=True).stride() if out is not None else dense
    r3 = V.as_3d(residual, "residual") if has_res else x3
    if not has_res:
        ro_st = o_st
    elif residual_out is not None:
        ro_st = V.as_3d(residual_out, "residual_out", writable=True).stride()
    else:
        ro_st = dense
    cacheable = x3.data_ptr() == x.data_ptr() and (not has_res or r3.data_ptr() == residual.data_ptr())
    spb = sps = 0
    if pos_mode == _POS_IDS:
        p2 = position_ids.reshape(-1, seq) if position_ids.dim() > 1 else position_ids.view(1, seq)
        cacheable = cacheable and p2.data_ptr() == position_ids.data_ptr()
        spb = p2.stride(0) if p2.shape[0] > 1 else 0
        sps = p2.stride(1)
    per_head = weight.numel() == head_dim and head_dim != hidden
    rot = cos.shape[-1]
    head_groups, group_heads = _fp8_block_groups(head_dim) if quant == F8.QUANT_BLOCK else (1, 1)
    # tuned configs were measured for activation-dtype outputs: FP8 outputs keep the heuristic's
    tuned = None if quant else config or _rt.ENABLED and _tuned_config(x, n_rows, head_dim, rot, has_res)
    # (the FP8 arguments only when there is an FP8 output: the activation-dtype call stays as it was)
    fp8_args = {"group_heads": group_heads, "fp8_out": True} if quant else {}
    cfg = pick_config(n_rows, hidden, head_dim, rot, x.element_size(), has_res, num_sms(x.device), tuned,
                      **fp8_args)
    out_bytes = bool(quant) and F8.store_bytes(x.device)
    launch = KernelLaunch(
        _rmsnorm_rope_kernel, (cdiv(n_rows, cfg.ROWS_PER_PROG),),
        dict(HEAD_DIM=head_dim, ROT_DIM=rot, HALF_BLOCK=cfg.HALF_BLOCK, PASS_BLOCK=cfg.PASS_BLOCK,
             NH_BLOCK=cfg.NH_BLOCK, N_CHUNKS=cfg.N_CHUNKS, GPTJ=gptj, PER_HEAD=per_head, HAS_RES=has_res,
             POS_MODE=pos_mode, ROWS_PER_PROG=cfg.ROWS_PER_PROG,
             EXACT_BF16=interpreter_enabled() and x.dtype == torch.bfloat16,
             QUANT=quant, HEAD_GROUPS=head_groups, GROUP_HEADS=group_heads, OUT_BYTES=out_bytes),
        num_warps=cfg.num_warps)
    # scale rows: [*lead, 1] per token (stride 1), [rows, ceil(hidden / 128)] per block
    stride_sr = cdiv(hidden, F8.GROUP) if quant == F8.QUANT_BLOCK else (1 if quant == F8.QUANT_TOKEN else 0)
    ints = (n_rows, seq, hidden // head_dim, cos.shape[0],
            x3.stride(0), x3.stride(1), r3.stride(0), r3.stride(1), o_st[0], o_st[1],
            ro_st[0], ro_st[1], spb, sps, cos.stride(0), sin.stride(0), stride_sr)
    if quant:
        return _FP8Plan(launch, ints, tuple(x.shape), x.dtype, has_res, pos_mode, cacheable, quant, out_bytes)
    return _Plan(launch, ints, tuple(x.shape), x.dtype, has_res, pos_mode, cacheable)


def _fp8_block_groups(head_dim: int) -> tuple[int, int]:
    """(blocks per head, heads per block) of (1, 128) scale blocks along the row, or UnsupportedError where
    blocks would straddle heads unevenly (head_dim 80, 96, 192 ...): the kernel finds a block's channels by
    their head and position in it."""
    if head_dim % F8.GROUP == 0:
        return head_dim // F8.GROUP, 1
    if F8.GROUP % head_dim == 0:
        return 1, F8.GROUP // head_dim
    raise UnsupportedError(f"fused_rmsnorm_rope: out_scaling='block' needs head_dim to divide 128 or be a "
                           f"multiple of it (got head_dim={head_dim}); use out_scaling='token' or 'static'")


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(strides))


def _launch(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            position_ids: Optional[torch.Tensor], residual: Optional[torch.Tensor], out: torch.Tensor,
            residual_out: Optional[torch.Tensor], eps: float, head_dim: int, gptj: bool,
            weight_offset: float, per_token_tables: bool = False, config: dict | None = None) -> None:
    """Plan and launch once on validated inputs. ``out``/``residual_out`` have x's shape; cos/sin are 2-D."""
    if x.numel() == 0:
        return
    x3 = V.as_3d(x, "x")
    r3 = V.as_3d(residual, "residual") if residual is not None else None
    pos = None
    if position_ids is not None:
        pos = position_ids.reshape(-1, x3.shape[1]) if position_ids.dim() > 1 else position_ids
    key = None
    if config is None:  # explicit configs (tuning runs) are never cached
        key = (tensor_key(x, weight, cos, sin, position_ids, residual, out, residual_out), head_dim, gptj,
               per_token_tables, _rt.ENABLED)
    plan = _op_plans.get(key) if key is not None else None
    if plan is None:
        plan = _make_plan(x3, weight, cos, sin, pos, r3, out, head_dim, gptj, per_token_tables, config,
                          residual_out=residual_out)
        same = x3.data_ptr() == x.data_ptr() and (r3 is None or r3.data_ptr() == residual.data_ptr()) and \
            (pos is None or pos.data_ptr() == position_ids.data_ptr())
        if key is not None and plan.cacheable and same:
            _op_plans.put(key, plan)
    plan(x3, weight, cos, sin, pos, r3, out, residual_out, float(eps), float(weight_offset))


#: Plans of the custom ops' implementations (torch.compile graphs and autograd call the op through them).
_op_plans = PlanCache("rmsnorm_rope/op")


#: Plans of the FP8-output custom op's implementation.
_fp8_op_plans = PlanCache("rmsnorm_rope/fp8_op")


def _launch_fp8(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                position_ids: Optional[torch.Tensor], residual: Optional[torch.Tensor],
                residual_out: Optional[torch.Tensor], out_scale: Optional[torch.Tensor], eps: float, head_dim: int,
                gptj: bool, weight_offset: float, per_token_tables: bool, quant: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8-output launch on validated inputs (cos/sin 2-D; ``residual_out`` given with a residual):
    ``(q, scale)``, the scale being ``out_scale`` itself for a static output. Plans are kept per signature."""
    if x.numel() == 0:
        q, s = F8.empty_result(quant, tuple(x.shape), x.device)
        return q, (out_scale if quant == F8.QUANT_STATIC else s)
    x3 = V.as_3d(x, "x")
    r3 = V.as_3d(residual, "residual") if residual is not None else None
    pos = None
    if position_ids is not None:
        pos = position_ids.reshape(-1, x3.shape[1]) if position_ids.dim() > 1 else position_ids
    key = (_tensor_key(x, weight, cos, sin, position_ids, residual, residual_out, out_scale), head_dim, gptj,
           per_token_tables, quant)
    plan = _fp8_op_plans.get(key)
    if plan is None:
        plan = _make_plan(x3, weight, cos, sin, pos, r3, None, head_dim, gptj, per_token_tables,
                          residual_out=residual_out, quant=quant)
        plan.shape = tuple(x.shape)
        same = x3.data_ptr() == x.data_ptr() and (r3 is None or r3.data_ptr() == residual.data_ptr()) and \
            (pos is None or pos.data_ptr() == position_ids.data_ptr())
        if plan.cacheable and same:
            _fp8_op_plans.put(key, plan)
    got = plan(x3, weight, cos, sin, pos, r3, None, residual_out, float(eps), float(weight_offset), out_scale)
    return got[0], got[1]


# ----------------------------------------------------------------------------------------------------
# Layer 3: torch.library custom ops (work under torch.compile(fullgraph=True) and CUDA graphs)
# ----------------------------------------------------------------------------------------------------
def _rmsnorm_rope_impl(x, weight, cos, sin, position_ids, eps, head_dim, gptj, weight_offset, per_token_tables):
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, weight, cos, sin, position_ids, None, out, None, eps, head_dim, gptj, weight_offset,
            per_token_tables)
    return out


def _add_rmsnorm_rope_impl(x, residual, weight, cos, sin, position_ids, eps, head_dim, gptj, weight_offset,
                           per_token_tables):
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    res_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, weight, cos, sin, position_ids, residual, out, res_out, eps, head_dim, gptj, weight_offset,
            per_token_tables)
    return out, res_out


@torch.library.custom_op("triton_ops::rmsnorm_rope", mutates_args=())
def _rmsnorm_rope_op(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     position_ids: Optional[torch.Tensor], eps: float, head_dim: int, gptj: bool,
                     weight_offset: float, per_token_tables: bool) -> torch.Tensor:
    return _rmsnorm_rope_impl(x, weight, cos, sin, position_ids, eps, head_dim, gptj, weight_offset,
                              per_token_tables)


@_rmsnorm_rope_op.register_fake
def _(x, weight, cos, sin, position_ids, eps, head_dim, gptj, weight_offset, per_token_tables):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("triton_ops::add_rmsnorm_rope", mutates_args=())
def _add_rmsnorm_rope_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor, position_ids: Optional[torch.Tensor], eps: float, head_dim: int,
                         gptj: bool, weight_offset: float, per_token_tables: bool
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    return _add_rmsnorm_rope_impl(x, residual, weight, cos, sin, position_ids, eps, head_dim, gptj,
                                  weight_offset, per_token_tables)


@_add_rmsnorm_rope_op.register_fake
def _(x, residual, weight, cos, sin, position_ids, eps, head_dim, gptj, weight_offset, per_token_tables):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            torch.empty(x.shape, dtype=x.dtype, device=x.device))


@torch.library.custom_op("triton_ops::rmsnorm_rope_out", mutates_args=("out", "residual_out"))
def _rmsnorm_rope_out_op(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         position_ids: Optional[torch.Tensor], residual: Optional[torch.Tensor],
                         out: torch.Tensor, residual_out: Optional[torch.Tensor], eps: float, head_dim: int,
                         gptj: bool, weight_offset: float, per_token_tables: bool) -> None:
    _launch(x, weight, cos, sin, position_ids, residual, out, residual_out, eps, head_dim, gptj,
            weight_offset, per_token_tables)


@_rmsnorm_rope_out_op.register_fake
def _(x, weight, cos, sin, position_ids, residual, out, residual_out, eps, head_dim, gptj, weight_offset,
      per_token_tables):
    return None


# FP8 outputs (``out_dtype=torch.float8_e4m3fn``): ``quant`` is the kernel's QUANT mode (fp8_out). A static op
# returns an empty placeholder for the scale (the functional API hands back the caller's own: a custom op's
# outputs may not alias its inputs). No autograd: e4m3 codes carry no gradient.
@torch.library.custom_op("triton_ops::rmsnorm_rope_fp8", mutates_args=("residual_out",))
def _rmsnorm_rope_fp8_op(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         position_ids: Optional[torch.Tensor], residual: Optional[torch.Tensor],
                         residual_out: Optional[torch.Tensor], out_scale: Optional[torch.Tensor], eps: float,
                         head_dim: int, gptj: bool, weight_offset: float, per_token_tables: bool,
                         quant: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = _launch_fp8(x, weight, cos, sin, position_ids, residual, residual_out, out_scale, eps, head_dim, gptj,
                       weight_offset, per_token_tables, quant)
    return q, (x.new_empty(0, dtype=torch.float32) if quant == F8.QUANT_STATIC else s)


@_rmsnorm_rope_fp8_op.register_fake
def _(x, weight, cos, sin, position_ids, residual, residual_out, out_scale, eps, head_dim, gptj, weight_offset,
      per_token_tables, quant):
    return (x.new_empty(x.shape, dtype=F8.FP8_OUT_DTYPE),
            x.new_empty(F8.scale_shape(quant, tuple(x.shape)), dtype=torch.float32))


# Backward: one Triton kernel (rmsnorm_rope_backward.py) reading grad_y and the normalised input once, for
# x, residual and weight (cos/sin tables are treated as constants). _reference_grads below recomputes the
# unfused reference in fp32 and differentiates it: the reference the kernel is tested against
# (rmsnorm_rope_backward.USE_REFERENCE = True routes the autograd formula through it).
def _table_positions(x, position_ids, per_token_tables):
    if per_token_tables:
        return torch.arange(x[..., 0].numel(), device=x.device).view(x.shape[:-1])
    return position_ids


def _reference_grads(ctx, x, residual, weight, cos, sin, grad_y, grad_s):
    pos = _table_positions(x, ctx.position_ids, ctx.per_token_tables)
    with torch.enable_grad():
        xf = x.detach().float().requires_grad_(ctx.needs[0])
        wf = weight.detach().float().requires_grad_(ctx.needs[2])
        rf = residual.detach().float().requires_grad_(ctx.needs[1]) if residual is not None else None
        s = xf if rf is None else xf + rf
        y = rmsnorm_rope_reference(s, wf, cos.float(), sin.float(), ctx.eps, head_dim=ctx.head_dim,
                                   position_ids=pos, rotary_layout="gptj" if ctx.gptj else "neox",
                                   weight_offset=ctx.weight_offset)
        wanted = [t for t in (xf, rf, wf) if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(y, wanted, grad_y.float(), allow_unused=True)) if wanted else iter(())
    gx = next(grads) if xf.requires_grad else None
    gr = next(grads) if rf is not None and rf.requires_grad else None
    gw = next(grads) if wf.requires_grad else None
    if grad_s is not None:
        gx = None if gx is None else gx + grad_s.float()
        gr = None if gr is None else gr + grad_s.float()
    cast = lambda g, like: None if g is None else g.to(like.dtype)  # noqa: E731
    return cast(gx, x), cast(gr, residual) if residual is not None else None, cast(gw, weight)


def _save(ctx, x, residual, weight, cos, sin, position_ids, eps, head_dim, gptj, weight_offset, per_token):
    ctx.save_for_backward(x, residual, weight, cos, sin)
    ctx.position_ids = position_ids
    ctx.eps, ctx.head_dim, ctx.gptj = eps, head_dim, gptj
    ctx.weight_offset, ctx.per_token_tables = weight_offset, per_token


def _setup_plain(ctx, inputs, output):
    x, weight, cos, sin, position_ids, eps, head_dim, gptj, weight_offset, per_token = inputs
    ctx.needs = (x.requires_grad, False, weight.requires_grad)
    _save(ctx, x, None, weight, cos, sin, position_ids, eps, head_dim, gptj, weight_offset, per_token)


def _backward_plain(ctx, grad_y):
    from .rmsnorm_rope_backward import backward_grads

    x, _, weight, cos, sin = ctx.saved_tensors
    gx, gw = backward_grads(ctx, x, weight, cos, sin, grad_y)
    return gx, gw, None, None, None, None, None, None, None, None


def _setup_add(ctx, inputs, output):
    x, residual, weight, cos, sin, position_ids, eps, head_dim, gptj, weight_offset, per_token = inputs
    ctx.needs = (x.requires_grad, residual.requires_grad, weight.requires_grad)
    # The sum s = x + residual (the op's second output): the backward needs only s, one tensor instead
    # of two, and d x = d residual = d s.
    _save(ctx, output[1], None, weight, cos, sin, position_ids, eps, head_dim, gptj, weight_offset, per_token)


def _backward_add(ctx, grad_y, grad_s):
    from .rmsnorm_rope_backward import backward_grads

    s, _, weight, cos, sin = ctx.saved_tensors
    gs, gw = backward_grads(ctx, s, weight, cos, sin, grad_y, grad_s)
    gx = gs if ctx.needs[0] else None
    gr = gs if ctx.needs[1] else None
    return gx, gr, gw, None, None, None, None, None, None, None, None


_rmsnorm_rope_op.register_autograd(_backward_plain, setup_context=_setup_plain)
_add_rmsnorm_rope_op.register_autograd(_backward_add, setup_context=_setup_add)


# ----------------------------------------------------------------------------------------------------
# Layer 4: functional API and module
# ----------------------------------------------------------------------------------------------------
def _normalize_tables(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      position_ids: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """cos/sin as 2-D ``[rows, rot]`` tables.

    Accepted: ``[rows, rot]``; Hugging Face's ``[1, seq, rot]`` (leading ones dropped); and per-token
    tables ``[*x.shape[:-1], rot]`` (e.g. ``[batch, seq, rot]``), flattened to one row per token.
    """
    if cos.shape != sin.shape:
        raise ShapeError(f"cos has shape {tuple(cos.shape)} but sin has shape {tuple(sin.shape)}")
    if cos.dim() < 2:
        raise ShapeError(f"cos/sin must be [rows, rotary_dim] tables, got shape {tuple(cos.shape)}")
    if cos.dim() > 2:
        lead = tuple(cos.shape[:-1])
        if x.dim() >= 2 and lead == tuple(x.shape[:-1]):
            if position_ids is not None:
                raise ShapeError("per-token cos/sin tables of shape [*x.shape[:-1], rot] already encode the "
                                 "positions; do not pass position_ids with them")
            return V.rows_view(cos), V.rows_view(sin), True
        while cos.dim() > 2 and cos.shape[0] == 1:
            cos, sin = cos[0], sin[0]
        if cos.dim() > 2:
            raise ShapeError(f"cos/sin of shape {tuple(cos.shape)} do not fit x of shape {tuple(x.shape)}: "
                             "expected [rows, rot], [1, rows, rot] or [*x.shape[:-1], rot]")
    return cos, sin, False


_SIZE_TYPES = (int, type(None))


def _full_width(t: torch.Tensor, rotary_layout: str) -> torch.Tensor:
    """A half-width table (one value per channel pair) as the kernel reads it, one value per channel:
    ``cat(f, f)`` for neox, ``repeat_interleave(f, 2)`` for gptj."""
    return torch.cat([t, t], dim=-1) if rotary_layout == "neox" else t.repeat_interleave(2, dim=-1)


def _alias_pattern(x: torch.Tensor, residual: Optional[torch.Tensor], out: torch.Tensor) -> tuple[bool, bool]:
    """Whether ``out`` starts where x / residual does: with shapes and strides in the plan key, that is
    exact aliasing (in place), so in-place and separate-buffer calls of one signature keep separate plans."""
    po = out.data_ptr()
    return po == x.data_ptr(), residual is not None and po == residual.data_ptr()


def fused_rmsnorm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       eps: float = 1e-6, *, head_dim: Optional[int] = None,
                       position_ids: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None,
                       rotary_layout: str = "neox", weight_offset: float = 0.0,
                       out: Optional[torch.Tensor] = None, rotary_dim: Optional[int] = None,
                       half_width_tables: bool = False, out_dtype: Optional[torch.dtype] = None,
                       out_scaling: Optional[str] = None, out_scale: Optional[torch.Tensor] = None):
    """RMSNorm over the hidden dim, then rotary embedding on every head, in one kernel.

    Args:
        x: ``[..., seq, hidden]`` activations (fp16, bf16 or fp32); rows may be strided, the last dim must
            be contiguous.
        weight: ``[hidden]`` norm weight, or ``[head_dim]`` for a per-head norm (QK-norm); x's dtype or fp32.
        cos, sin: ``[rows, w]`` tables in the layout's convention (see ``rotary_layout``), fp32 or x's dtype;
            ``[1, rows, w]`` and per-token ``[*x.shape[:-1], w]`` are accepted too. ``w`` is ``head_dim``
            (one value per channel), ``rotary_dim`` with partial rotary, or half of it with
            ``half_width_tables``; any other width raises :class:`ShapeError`.
        eps: added to the mean square.
        head_dim: size of one head; defaults to ``rotary_dim`` when given, else to the rotary width of the
            tables (``w``, or ``2 * w`` with ``half_width_tables``).
        position_ids: int ``[seq]`` or ``[*x.shape[:-1]]`` table rows per token (KV-cache decoding); default
            is the token's index along seq. A position outside the table yields NaN for that token, and in
            the backward NaN gradients for that token's x (and residual) and for the weight.
        residual: if given, normalises ``x + residual`` and also returns that sum.
        rotary_layout: ``"neox"`` (rotate-half, Hugging Face Llama) or ``"gptj"`` (interleaved pairs).
        weight_offset: scale by ``weight_offset + weight`` (Gemma uses 1.0).
        out: optional output buffer of x's shape and dtype. It may be exactly ``x`` or ``residual`` (in
            place: each row is read before it is written) but must not otherwise overlap an input, nor have
            elements that share memory (:class:`InvalidArgumentError`). Not differentiable: with an input
            that requires grad (and grad mode on) ``out`` raises :class:`InvalidArgumentError`.
        rotary_dim: rotate only the first ``rotary_dim`` channels of each head (partial rotary, e.g. Phi or
            GPT-NeoX); the rest are normalised and passed through. Tables narrower than ``head_dim`` need it:
            a narrower table without it is ambiguous and raises :class:`ShapeError`.
        half_width_tables: the tables hold one value per channel pair (``w = rotary_dim / 2``, the vLLM /
            GPT-J convention). They are widened to one value per channel on each call (a copy of the table
            rows, and the call is not planned: pass full-width tables on a hot path).
        out_dtype: None (x's dtype) or ``torch.float8_e4m3fn``: write e4m3 codes and fp32 scales instead,
            quantized in the same kernel from the fp32 result before any rounding to x's dtype
            (bit-identical to ``quantize_fp8`` of the fp32 result this op computes for fp32 inputs): e.g.
            q/k for FP8 attention or an FP8 KV cache, 1 byte per element written instead of 2 and no
            separate quantization pass. Not with ``out``.
        out_scaling: with an FP8 output: ``"token"`` (default: one dynamic scale per token, ``[*lead, 1]``),
            ``"block"`` (dynamic (1, 128) blocks along the row, ``[rows, ceil(hidden / 128)]``: one scale per
            head and token for head_dim 128; head_dim must divide 128 or be a multiple of it) or
            ``"static"`` (``out_scale`` given; implied by passing it). Semantics of
            :func:`triton_ops.quantize_fp8`: ``y ~= q.float() * scale``, ``scale = amax / 448`` over finite
            values, 1 for an all-zero group; NaN stays NaN (a token outside the tables is all NaN, scale
            1), +-inf saturates to +-448.
        out_scale: the static scale, a one-element fp32 tensor (checked finite and positive once per
            tensor version).

    Returns:
        the normalised and rotated tensor, or ``(out, x + residual)`` when ``residual`` is given. With an
        FP8 output: ``(q, scale)`` or ``(q, scale, x + residual)``; ``scale`` is ``out_scale`` itself for a
        static output. FP8 outputs carry no autograd.
    """
    # Scalars of a kind the checks refuse never take a plan, FP8 or not: 64.0 == 64 and True == 1 as dict
    # keys, so a float head_dim or an int flag would find the plan of the valid value and skip the check
    # that refuses it (numpy integers are validated on every call).
    sizes_plain = (type(head_dim) in _SIZE_TYPES and type(rotary_dim) in _SIZE_TYPES
                   and type(half_width_tables) is bool and type(eps) is not bool and type(weight_offset) is not bool)
    if out_dtype is not None and out is None and sizes_plain:
        # FP8 output, eager: its own plans (fp8_key), looked up before anything else.
        fkey = _fp8_key(x, weight, cos, sin, position_ids, residual, out_scale, eps, head_dim, rotary_layout,
                        weight_offset, rotary_dim, half_width_tables, out_dtype, out_scaling)
        plan = _fp8_plans.get(fkey) if fkey is not None else None
        if plan is not None:
            if out_scale is not None:
                check_scale_values(out_scale, "out_scale")
            return plan(x, weight, cos, sin, position_ids, residual, None, None, eps, weight_offset, out_scale)
    # as the caller passed them: the FP8 plan key
    position_ids_given, head_dim_given, rotary_dim_given = position_ids, head_dim, rotary_dim
    akey = None
    if (out is None and out_dtype is None and out_scaling is None and out_scale is None and sizes_plain
            and eager_autograd(x, weight, cos, sin, position_ids, residual)):
        # Eager training: a repeated signature skips the checks and calls the recorded implementation
        # with what they resolved (host per forward on the CPU, launches skipped: 21.8 -> ~14 us).
        akey = (autograd_key(x, weight, cos, sin, position_ids, residual), eps, head_dim, rotary_layout, weight_offset,
                rotary_dim, half_width_tables)
        call = _grad_calls.get(akey)
        if call is not None:
            return _grad_call(call, x, weight, cos, sin, position_ids, residual)
    key = plan_key(x, weight, cos, sin, position_ids, residual, out) if sizes_plain else None
    if key is not None:
        # Eager call with no autograd or tracing: a repeated signature is one dict hit and a launch. Which
        # input a given `out` starts at (the in-place pattern) is part of the key; its distance from the
        # other inputs depends on addresses, so a plan made for a separate `out` re-checks it (a few integer
        # operations per input) and a failing check takes the validated path, which decides.
        alias = () if out is None else _alias_pattern(x, residual, out)
        key = (key, eps, head_dim, rotary_layout, weight_offset, rotary_dim, half_width_tables, _rt.ENABLED,
               alias, out_dtype, out_scaling)
        plan = _plans.get(key)
        if plan is not None and (not plan.tests or V.out_apart(
                plan.tests, (x, weight, cos, sin, position_ids, residual), out)):
            return plan(x, weight, cos, sin, position_ids, residual, out, None, eps, weight_offset)
    V.check_tensor(x, "x")
    V.check_tensor(weight, "weight")
    V.check_tensor(cos, "cos")
    V.check_tensor(sin, "sin")
    # optional tensors are checked for what they are before anything reads their device or shape
    V.check_is_tensor_or_none(position_ids, "position_ids")
    V.check_is_tensor_or_none(residual, "residual")
    V.check_is_tensor_or_none(out, "out")
    V.check_choice(rotary_layout, "rotary_layout", LAYOUTS)
    if not isinstance(half_width_tables, bool):
        raise InvalidArgumentError(f"half_width_tables must be a bool, got {half_width_tables!r}")
    V.check_dtype(x, "x", V.FLOAT_DTYPES)
    V.check_ndim(x, "x", min_ndim=1)
    device = V.check_same_device({"x": x, "weight": weight, "cos": cos, "sin": sin,
                                  "position_ids": position_ids, "residual": residual, "out": out})
    V.check_runnable_device(device, "x")
    eps = V.check_positive_finite(eps, "eps", allow_zero=True)
    weight_offset = V.check_finite(weight_offset, "weight_offset")
    for name, t in (("x", x), ("weight", weight), ("cos", cos), ("sin", sin)):
        V.check_last_dim_contiguous(t, name)
    V.check_dtype(weight, "weight", (x.dtype, torch.float32))
    V.check_dtype(cos, "cos", (x.dtype, torch.float32))
    V.check_same_dtype({"cos": cos, "sin": sin})
    cos_given, sin_given = cos, sin
    cos, sin, per_token = _normalize_tables(x, cos, sin, position_ids)

    hidden = x.shape[-1]
    width = cos.shape[-1]
    if width == 0:
        raise ShapeError(f"cos/sin of shape {tuple(cos_given.shape)} have no columns")
    if rotary_dim is not None:
        rotary_dim = V.check_int(rotary_dim, "rotary_dim")
    if head_dim is None:
        head_dim = rotary_dim if rotary_dim is not None else (2 * width if half_width_tables else width)
    else:
        head_dim = V.check_int(head_dim, "head_dim")  # "64", 64.0 or 4.5 are refused, not truncated
    if head_dim <= 0 or head_dim % 2:
        raise ShapeError(f"head_dim must be a positive even number, got {head_dim}")
    if head_dim > MAX_HEAD_DIM:
        raise ShapeError(f"head_dim={head_dim} exceeds the supported maximum {MAX_HEAD_DIM}")
    if hidden % head_dim:
        raise ShapeError(f"hidden size {hidden} (x.shape[-1]) is not a multiple of head_dim={head_dim}")
    # A table narrower than head_dim is partial rotary or one value per pair: never guessed (rope._rot_dim
    # raises a ShapeError naming both options).
    _rot_dim(width, head_dim, rotary_dim, half_width_tables)
    if half_width_tables:
        cos, sin = _full_width(cos, rotary_layout), _full_width(sin, rotary_layout)
    if tuple(weight.shape) not in ((hidden,), (head_dim,)):
        raise ShapeError(f"weight has shape {tuple(weight.shape)}; expected ({hidden},) for a row norm "
                         f"or ({head_dim},) for a per-head norm")
    seq = x.shape[-2] if x.dim() >= 2 else 1
    if position_ids is not None:
        V.check_tensor(position_ids, "position_ids")
        V.check_dtype(position_ids, "position_ids", (torch.int32, torch.int64))
        ok = tuple(position_ids.shape) in ((seq,), tuple(x.shape[:-1]), (1, seq))
        if not ok or x.dim() < 2 and position_ids.numel() != 1:
            raise ShapeError(f"position_ids has shape {tuple(position_ids.shape)}; expected ({seq},) or "
                             f"{tuple(x.shape[:-1])} for x of shape {tuple(x.shape)}")
    elif cos.shape[0] < seq and not per_token:
        raise ShapeError(f"cos/sin have {cos.shape[0]} rows but x has seq={seq} positions; pass a longer "
                         "table or position_ids")
    if residual is not None:
        V.check_tensor(residual, "residual")
        if residual.shape != x.shape:
            raise ShapeError(f"residual has shape {tuple(residual.shape)}, expected x's {tuple(x.shape)}")
        V.check_dtype(residual, "residual", (x.dtype,))
        V.check_last_dim_contiguous(residual, "residual")
    gptj = rotary_layout == "gptj"
    if out is not None:
        V.check_out(out, "out", x.shape, x.dtype, device)
        # In place (out is exactly x or residual) is safe: every program reads a row (a chunk of it, for
        # wide rows) before it writes that row, and no program reads another's rows. Any other overlap,
        # or an out whose elements share memory, would race.
        V.check_no_overlap(out, "out", {"x": x, "residual": residual}, allow_exact_alias=True)
        V.check_no_overlap(out, "out", {"weight": weight, "cos": cos_given, "sin": sin_given,
                                        "position_ids": position_ids})
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, residual)):
            raise InvalidArgumentError("fused_rmsnorm_rope with out= does not support autograd (an input requires "
                                       "grad); call it without out= to differentiate, or under torch.no_grad()")
    position_ids = _row_positions(x, position_ids)
    if out_dtype is not None:
        quant = F8.resolve_fp8_output(out_dtype, out_scaling, out_scale, x.dtype, device, "token",
                                      "fused_rmsnorm_rope")
        if quant:
            if out is not None:
                raise InvalidArgumentError("fused_rmsnorm_rope: out= is not supported with an FP8 output (the op "
                                           "allocates the e4m3 codes and their scales)")
            fkey = _fp8_key(x, weight, cos_given, sin_given, position_ids_given, residual, out_scale, eps,
                            head_dim_given, rotary_layout, weight_offset, rotary_dim_given, half_width_tables,
                            out_dtype, out_scaling) if sizes_plain else None
            return _fp8_call(fkey, x, weight, cos, sin, position_ids, residual, out_scale, eps, head_dim, gptj,
                             weight_offset, per_token, quant, (cos_given, sin_given, position_ids_given))
    if key is not None:
        # Plain eager call: launch without the custom-op dispatcher (tens of us of host time per call,
        # several times this kernel's 2 us at decode sizes), and keep the plan for the next identical call.
        if x.numel() == 0:
            y = out if out is not None else x.new_empty(x.shape)
            return y if residual is None else (y, x + residual)
        x3 = V.as_3d(x, "x")
        r3 = V.as_3d(residual, "residual") if residual is not None else None
        pos = position_ids
        if pos is not None and pos.dim() > 1:
            pos = pos.reshape(-1, x3.shape[1])
        plan = _make_plan(x3, weight, cos, sin, pos, r3, out, head_dim, gptj, per_token)
        plan.shape = tuple(x.shape)
        # A plan is reused with the caller's own tensors: only when none of them had to be copied into
        # the layout the plan was made for (non-collapsible leading dims, strided per-token tables).
        same = [(x3, x), (cos, cos_given), (sin, sin_given)]
        if r3 is not None:
            same.append((r3, residual))
        if pos is not None:
            same.append((pos, position_ids))
        if out is not None:
            plan.tests = V.out_tests(out, (x, weight, cos_given, sin_given, position_ids, residual))
        apart = not plan.tests or V.out_apart(plan.tests, (x, weight, cos_given, sin_given, position_ids,
                                                            residual), out)
        if plan.cacheable and apart and all(a.data_ptr() == b.data_ptr() for a, b in same):
            _plans.put(key, plan)
        return plan(x3, weight, cos, sin, pos, r3, out, None, eps, weight_offset)
    if out is not None:
        res_out = torch.empty_like(x) if residual is not None else None
        torch.ops.triton_ops.rmsnorm_rope_out(x, weight, cos, sin, position_ids, residual, out, res_out,
                                              eps, head_dim, gptj, weight_offset, per_token)
        return out if residual is None else (out, res_out)
    if eager_autograd(x, weight, cos, sin, position_ids, residual):
        # training in eager mode: the same implementation and autograd formula without the custom op's
        # dispatch layers (launch.EagerAutograd)
        if akey is not None and not half_width_tables:  # widened tables are copies, made per call
            _grad_calls.put(akey, (eps, head_dim, gptj, weight_offset))
        if residual is None:
            return EagerAutograd.apply(_rmsnorm_rope_impl, _setup_plain, _backward_plain, x, weight, cos, sin,
                                       position_ids, eps, head_dim, gptj, weight_offset, per_token)
        return EagerAutograd.apply(_add_rmsnorm_rope_impl, _setup_add, _backward_add, x, residual, weight, cos,
                                   sin, position_ids, eps, head_dim, gptj, weight_offset, per_token)
    if residual is None:
        return torch.ops.triton_ops.rmsnorm_rope(x, weight, cos, sin, position_ids, eps, head_dim, gptj,
                                                 weight_offset, per_token)
    return torch.ops.triton_ops.add_rmsnorm_rope(x, residual, weight, cos, sin, position_ids, eps, head_dim,
                                                 gptj, weight_offset, per_token)


_plans = PlanCache("rmsnorm_rope")
#: Eager training calls (launch.EagerAutograd): the checked eps, head_dim, gptj and weight_offset per
#: signature; the tables' and positions' views are derived again per call (_normalize_tables,
#: _row_positions: a few shape comparisons).
_grad_calls = PlanCache("rmsnorm_rope/autograd")


def _row_positions(x: torch.Tensor, position_ids: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``[1, seq]`` position ids of a batched x as the ``[seq]`` row every sequence uses."""
    if position_ids is not None and position_ids.dim() == 2 and position_ids.shape[0] == 1 and x.dim() > 2:
        return position_ids[0]
    return position_ids


def _grad_call(call, x, weight, cos, sin, position_ids, residual):
    eps, head_dim, gptj, weight_offset = call
    cos, sin, per_token = _normalize_tables(x, cos, sin, position_ids)
    position_ids = _row_positions(x, position_ids)
    if residual is None:
        return EagerAutograd.apply(_rmsnorm_rope_impl, _setup_plain, _backward_plain, x, weight, cos, sin,
                                   position_ids, eps, head_dim, gptj, weight_offset, per_token)
    return EagerAutograd.apply(_add_rmsnorm_rope_impl, _setup_add, _backward_add, x, residual, weight, cos, sin,
                               position_ids, eps, head_dim, gptj, weight_offset, per_token)


#: Eager plans of FP8-output calls, keyed by _fp8_key.
_fp8_plans = PlanCache("rmsnorm_rope/fp8")


def _fp8_key(x, weight, cos, sin, position_ids, residual, out_scale, *scalars) -> tuple | None:
    """The eager plan key of an FP8-output call, from the arguments as the caller passed them."""
    key = plan_key(x, weight, cos, sin, position_ids, residual, out_scale)
    return None if key is None else (key, *scalars)


def _fp8_call(fkey, x, weight, cos, sin, position_ids, residual, out_scale, eps, head_dim, gptj, weight_offset,
              per_token, quant, given):
    """An FP8-output call on validated arguments (cos/sin as 2-D tables): planned and launched directly when
    eager (``fkey`` not None), else through the custom op. ``given``: the caller's cos, sin and position_ids
    (a plan is kept only when none of them had to be copied)."""
    if quant == F8.QUANT_BLOCK:
        _fp8_block_groups(head_dim)  # refuse an unsupported head_dim before tracing or launching
    if fkey is None:
        ro = torch.empty_like(x, memory_format=torch.contiguous_format) if residual is not None else None
        q, s = torch.ops.triton_ops.rmsnorm_rope_fp8(x, weight, cos, sin, position_ids, residual, ro, out_scale, eps,
                                                     head_dim, gptj, weight_offset, per_token, quant)
        s = out_scale if quant == F8.QUANT_STATIC else s
        return (q, s) if residual is None else (q, s, ro)
    if x.numel() == 0:
        q, s = F8.empty_result(quant, tuple(x.shape), x.device)
        s = out_scale if quant == F8.QUANT_STATIC else s
        return (q, s) if residual is None else (q, s, x + residual)
    x3 = V.as_3d(x, "x")
    r3 = V.as_3d(residual, "residual") if residual is not None else None
    pos = position_ids
    if pos is not None and pos.dim() > 1:
        pos = pos.reshape(-1, x3.shape[1])
    plan = _make_plan(x3, weight, cos, sin, pos, r3, None, head_dim, gptj, per_token, quant=quant)
    plan.shape = tuple(x.shape)
    cos_given, sin_given, pos_given = given
    same = [(x3, x), (cos, cos_given), (sin, sin_given)]
    if r3 is not None:
        same.append((r3, residual))
    if pos is not None:
        same.append((pos, pos_given))
    if plan.cacheable and all(a.data_ptr() == b.data_ptr() for a, b in same):
        _fp8_plans.put(fkey, plan)
    return plan(x3, weight, cos, sin, pos, r3, None, None, eps, weight_offset, out_scale)


class FusedRMSNormRoPE(torch.nn.Module):
    """RMSNorm with a learned weight followed by RoPE, as one kernel.

    ``FusedRMSNormRoPE(hidden_dim, head_dim)`` normalises whole rows; ``per_head=True`` makes the weight
    ``[head_dim]`` and normalises each head on its own (QK-norm). ``rotary_dim`` / ``half_width_tables``
    are passed to :func:`fused_rmsnorm_rope` (partial rotary; one table value per channel pair). The
    configuration is checked here, so a module that cannot run is never built.
    """

    def __init__(self, hidden_dim: int, head_dim: int, eps: float = 1e-6, *, rotary_layout: str = "neox",
                 weight_offset: float = 0.0, per_head: bool = False, rotary_dim: Optional[int] = None,
                 half_width_tables: bool = False, device=None, dtype=None):
        super().__init__()
        hidden_dim = V.check_int(hidden_dim, "hidden_dim")
        head_dim = V.check_int(head_dim, "head_dim")
        if head_dim <= 0 or head_dim % 2 or head_dim > MAX_HEAD_DIM:
            raise ShapeError(f"head_dim={head_dim} must be a positive even number <= {MAX_HEAD_DIM}")
        if hidden_dim <= 0 or hidden_dim % head_dim:
            raise ShapeError(f"hidden_dim={hidden_dim} must be a positive multiple of head_dim={head_dim}")
        if rotary_dim is not None:
            rotary_dim = V.check_int(rotary_dim, "rotary_dim")
            if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
                raise ShapeError(f"rotary_dim={rotary_dim} must be a positive even number <= head_dim={head_dim}")
        for name, flag in (("per_head", per_head), ("half_width_tables", half_width_tables)):
            if not isinstance(flag, bool):
                raise InvalidArgumentError(f"{name} must be a bool, got {flag!r}")
        V.check_choice(rotary_layout, "rotary_layout", LAYOUTS)
        eps = V.check_positive_finite(eps, "eps", allow_zero=True)
        weight_offset = V.check_finite(weight_offset, "weight_offset")
        V.check_module_device(device)
        V.check_float_dtype_or_none(dtype)
        self.hidden_dim = hidden_dim
        self.head_dim = head_dim
        self.eps = eps
        self.rotary_layout = rotary_layout
        self.weight_offset = weight_offset
        self.rotary_dim = rotary_dim
        self.half_width_tables = half_width_tables
        n = head_dim if per_head else hidden_dim
        # Gemma-style offsets store weights around 0; plain RMSNorm initialises them to 1.
        init = 0.0 if weight_offset else 1.0
        self.weight = torch.nn.Parameter(torch.full((n,), init, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                position_ids: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None, *,
                out_dtype: Optional[torch.dtype] = None, out_scaling: Optional[str] = None,
                out_scale: Optional[torch.Tensor] = None):
        """``out_dtype=torch.float8_e4m3fn`` returns e4m3 codes and scales (see :func:`fused_rmsnorm_rope`)."""
        return fused_rmsnorm_rope(x, self.weight, cos, sin, self.eps, head_dim=self.head_dim,
                                  position_ids=position_ids, residual=residual,
                                  rotary_layout=self.rotary_layout, weight_offset=self.weight_offset,
                                  rotary_dim=self.rotary_dim, half_width_tables=self.half_width_tables,
                                  out_dtype=out_dtype, out_scaling=out_scaling, out_scale=out_scale)

    def extra_repr(self) -> str:
        extra = "" if self.rotary_dim is None else f", rotary_dim={self.rotary_dim}"
        extra += ", half_width_tables=True" if self.half_width_tables else ""
        return (f"hidden_dim={self.hidden_dim}, head_dim={self.head_dim}, eps={self.eps}, "
                f"rotary_layout={self.rotary_layout!r}, weight_offset={self.weight_offset}{extra}")


def rmsnorm_rope_reference(x, weight, cos, sin, eps=1e-6, *, head_dim=None, position_ids=None, residual=None,
                           rotary_layout="neox", weight_offset=0.0, out_dtype=None, out_scaling=None, out_scale=None):
    """Unfused PyTorch reference with fp32 math (the baseline the benchmarks compile and time).

    With ``out_dtype=torch.float8_e4m3fn`` the fp32 result is quantized by PyTorch ops as the fused op does
    (:func:`triton_ops.kernels.fp8_out.quantize_reference`) and the result is ``(q, scale[, s])``."""
    if out_dtype is not None and out_dtype != x.dtype:
        got = rmsnorm_rope_reference(x.float() if residual is None else (x + residual).float(), weight, cos, sin,
                                     eps, head_dim=head_dim, position_ids=position_ids,
                                     rotary_layout=rotary_layout, weight_offset=weight_offset)
        scaling = out_scaling or ("static" if out_scale is not None else "token")
        q, sc = F8.quantize_reference(got, scaling, out_scale)
        return (q, sc) if residual is None else (q, sc, x + residual)
    rot = cos.shape[-1]
    head_dim = rot if head_dim is None else head_dim
    s = x if residual is None else x + residual
    xf = s.float()
    hidden = x.shape[-1]
    per_head = weight.shape[-1] == head_dim and head_dim != hidden
    if per_head:
        xf = xf.unflatten(-1, (hidden // head_dim, head_dim))
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (weight_offset + weight.float())
    xf = xf.reshape(*x.shape[:-1], hidden // head_dim, head_dim)
    bad = None
    if cos.dim() == x.dim():  # per-token tables
        c, sn = cos.float().unsqueeze(-2), sin.float().unsqueeze(-2)
    else:
        c2, s2 = cos.reshape(-1, rot).float(), sin.reshape(-1, rot).float()
        if position_ids is None:
            seq = x.shape[-2] if x.dim() >= 2 else 1
            idx = torch.arange(seq, device=x.device)
        else:
            # The kernel's contract for a position outside the table: NaN for that token (and so NaN
            # gradients through this reference, which the backward is checked against), not an IndexError.
            idx = position_ids.long()
            ok = (idx >= 0) & (idx < c2.shape[0])
            idx = torch.where(ok, idx, 0)
            # 1, or NaN for such a token, multiplying every output channel: NaN values and NaN gradients
            bad = torch.where(ok, 1.0, float("nan")).to(torch.float32)[..., None, None]
        c, sn = c2[idx].unsqueeze(-2), s2[idx].unsqueeze(-2)
    xr, xpass = xf[..., :rot], xf[..., rot:]
    if bad is not None:
        c, sn, xpass = c * bad, sn * bad, xpass * bad
    if rotary_layout == "neox":
        half = rot // 2
        partner = torch.cat([-xr[..., half:], xr[..., :half]], dim=-1)
    else:
        partner = torch.stack([-xr[..., 1::2], xr[..., 0::2]], dim=-1).flatten(-2)
    y = torch.cat([xr * c + partner * sn, xpass], dim=-1).reshape(x.shape).to(x.dtype)
    return y if residual is None else (y, s)


# ----------------------------------------------------------------------------------------------------
# Compile check: every config pick_config can choose, for each architecture
# ----------------------------------------------------------------------------------------------------
_TYPE_SIZES = {"fp16": 2, "bf16": 2, "fp32": 4}


def _compile_variants():
    """(dtype, hidden, head_dim, rot, per_head, has_res, gptj, pos_mode, n_rows) combos to build.

    Covers every branch of pick_config (single tile, chunked rows, packed rows) for every head_dim class,
    and every constexpr switch at least once per dtype class, without building the full cross product
    (each build takes ~0.3 s of CPU).
    """
    out = []
    for head_dim, rot in ((64, 64), (80, 80), (96, 96), (128, 128), (128, 64), (256, 256), (512, 512)):
        for hidden in (head_dim * 32, head_dim * 112):  # 32 heads: one tile; 112 heads: chunked (2 passes)
            out.append(("fp16", hidden, head_dim, rot, False, False, False, 0, 16384))
            out.append(("bf16", hidden, head_dim, rot, False, True, True, 1, 16384))
            out.append(("fp32", hidden, head_dim, rot, False, True, True, 1, 16384))
        out.append(("bf16", head_dim * 32, head_dim, rot, True, True, False, 2, 16384))  # per-head
        out.append(("fp32", head_dim * 32, head_dim, rot, True, False, True, 0, 16384))
        out.append(("fp16", head_dim * 2, head_dim, rot, False, False, False, 0, 1 << 20))  # packed rows
    return out


def _fp8_compile_variants():
    """FP8-output combos (dtype, hidden, head_dim, rot, per_head, has_res, gptj, pos_mode, n_rows, quant): per
    token and per block at every tile class of pick_config (one tile, chunked, packed rows, per-head) for
    every head_dim class (blocks only where head_dim divides 128 or is a multiple of it), static scales once
    per head_dim."""
    out = []
    T, B, S = F8.QUANT_TOKEN, F8.QUANT_BLOCK, F8.QUANT_STATIC
    for head_dim, rot in ((64, 64), (80, 80), (96, 96), (128, 128), (128, 64), (256, 256), (512, 512)):
        blocks = head_dim % 128 == 0 or 128 % head_dim == 0
        for hidden in (head_dim * 32, head_dim * 112):
            out.append(("fp16", hidden, head_dim, rot, False, False, False, 0, 16384, T))
            out.append(("bf16", hidden, head_dim, rot, False, True, True, 1, 16384, T))
            if blocks:
                out.append(("fp16", hidden, head_dim, rot, False, True, False, 0, 16384, B))
                out.append(("fp32", hidden, head_dim, rot, False, False, True, 1, 16384, B))
        out.append(("fp32", head_dim * 32, head_dim, rot, False, True, True, 1, 16384, S))
        out.append(("bf16", head_dim * 32, head_dim, rot, True, True, False, 2, 16384, B if blocks else T))
        out.append(("fp16", head_dim * 2, head_dim, rot, False, False, False, 0, 1 << 20, T))  # packed rows
        if blocks:
            out.append(("fp16", head_dim * 2, head_dim, rot, False, False, True, 0, 1 << 20, B))
    return out


def compile_specs(arch: int):
    from ..compile_check import CompileSpec

    specs = []
    seen = set()
    sig_types = {
        "x_ptr": "*{t}", "res_ptr": "*{t}", "w_ptr": "*{t}", "cos_ptr": "*fp32", "sin_ptr": "*fp32",
        "pos_ptr": "*i64", "out_ptr": "*{o}", "res_out_ptr": "*{t}", "scale_ptr": "*fp32",
    }
    int_args = ["n_rows", "seq_len", "n_heads", "n_table_rows", "stride_xb", "stride_xs", "stride_rb",
                "stride_rs", "stride_ob", "stride_os", "stride_rob", "stride_ros", "stride_pb", "stride_ps",
                "stride_cos", "stride_sin", "stride_sr"]
    # sm_80 has no FP8 conversion: the launcher encodes the bits with integer operations there (OUT_BYTES)
    out_bytes = arch < 89
    variants = [v + (0,) for v in _compile_variants()] + _fp8_compile_variants()
    for tname, hidden, head_dim, rot, per_head, has_res, gptj, pos_mode, n_rows, quant in variants:
        head_groups, group_heads = _fp8_block_groups(head_dim) if quant == F8.QUANT_BLOCK else (1, 1)
        cfg = pick_config(n_rows, hidden, head_dim, rot, _TYPE_SIZES[tname], has_res, group_heads=group_heads,
                          fp8_out=bool(quant))
        out_t = tname if not quant else ("u8" if out_bytes else "fp8e4nv")
        sig = {k: v.format(t=tname, o=out_t) for k, v in sig_types.items()}
        sig.update({k: "i64" if k.startswith("stride") else "i32" for k in int_args})
        sig.update({"eps": "fp32", "weight_offset": "fp32"})
        const = dict(HEAD_DIM=head_dim, ROT_DIM=rot, HALF_BLOCK=cfg.HALF_BLOCK, PASS_BLOCK=cfg.PASS_BLOCK,
                     NH_BLOCK=cfg.NH_BLOCK,
                     N_CHUNKS=cfg.N_CHUNKS, GPTJ=gptj, PER_HEAD=per_head, HAS_RES=has_res,
                     POS_MODE=pos_mode, ROWS_PER_PROG=cfg.ROWS_PER_PROG, EXACT_BF16=False,
                     QUANT=quant, HEAD_GROUPS=head_groups, GROUP_HEADS=group_heads,
                     OUT_BYTES=bool(quant) and out_bytes)
        sig.update({k: "constexpr" for k in const})
        if not quant:
            sig["scale_ptr"] = "constexpr"
            const["scale_ptr"] = None  # unused: the launcher passes None, which the JIT makes a constexpr
        ident = (tuple(sorted(sig.items())), tuple(sorted(const.items(), key=lambda kv: kv[0])), cfg.num_warps)
        if ident in seen:  # another hidden size with the same tile: the same build
            continue
        seen.add(ident)
        specs.append(CompileSpec(
            _rmsnorm_rope_kernel, sig, const, num_warps=cfg.num_warps, num_stages=1,
            label=f"rmsnorm_rope {tname} h={hidden} hd={head_dim} rot={rot} ph={int(per_head)} "
                  f"res={int(has_res)} gptj={int(gptj)} pos={pos_mode} chunks={cfg.N_CHUNKS} "
                  f"rows={cfg.ROWS_PER_PROG} w={cfg.num_warps}"
                  + (f" fp8 quant={quant}{' bytes' if out_bytes else ''}" if quant else "")))
    return specs



# ----------------------------------------------------------------------------------------------------
# Tuning: `triton-ops tune rmsnorm_rope` and the opt-in tuned configs (triton_ops.use_tuned_configs())
# ----------------------------------------------------------------------------------------------------

#: Launch parameters a tuned config may set, with the values the kernel accepts for them.
_TUNED_KEYS = {"ROWS_PER_PROG": (1, 2, 4, 8, 16), "num_warps": (1, 2, 4, 8, 16)}


def _tuning_key(n_rows: int, hidden: int, head_dim: int, rot: int, itemsize: int, has_res: bool) -> tuple:
    """Cache key of a launch: what pick_config's choice depends on (bar the SM count, which the cache's
    GPU-model check covers)."""
    return (n_rows, hidden, head_dim, rot, itemsize, int(has_res))


def _tuned_config(x: torch.Tensor, n_rows: int, head_dim: int, rot: int, has_res: bool) -> dict | None:
    """Tuned {"ROWS_PER_PROG", "num_warps"} for this launch, or None. Only called when tuned configs are
    switched on. An entry with a value outside what the kernel accepts (a hand-edited or foreign cache) is
    ignored as a whole, with one warning (runtime.resolve's allowed= rules), and the heuristic runs."""
    key = _tuning_key(n_rows, x.shape[-1], head_dim, rot, x.element_size(), has_res)
    got = _rt.resolve("rmsnorm_rope", key, x.device, dict.fromkeys(_TUNED_KEYS), allowed=_TUNED_KEYS)
    return {k: v for k, v in got.items() if v is not None} or None


def _tuning_dims(shape: tuple) -> tuple[int, int, int, int]:
    """(batch, seq, hidden[, head_dim]) -> the four; head_dim defaults to 64 (the README's benchmark)."""
    if len(shape) not in (3, 4):
        raise ShapeError(f"rmsnorm_rope tuning shapes are batch x seq x hidden [x head_dim], got {shape}")
    b, s, h = (int(v) for v in shape[:3])
    hd = int(shape[3]) if len(shape) == 4 else 64
    if hd <= 0 or hd % 2 or hd > MAX_HEAD_DIM or h % hd:
        raise ShapeError(f"head_dim={hd} must be even, <= {MAX_HEAD_DIM} and divide hidden={h}")
    return b, s, h, hd


def tuning_entry():
    """The op for ``triton-ops tune``: warps and rows per program of the row kernel (the tile shape is
    fixed by head_dim and hidden). Problems are ``batch x seq x hidden x head_dim``, plain RMSNorm+RoPE
    (no residual, NeoX layout, full-width rotation)."""
    from ..autotuner.entry import TuningEntry
    from ..performance import PerformanceProfile

    def itemsize(dtype: torch.dtype) -> int:
        return torch.empty((), dtype=dtype).element_size()

    def make_args(shape, device, dtype):
        b, s, h, hd = _tuning_dims(shape)
        x = torch.randn(b, s, h, device=device, dtype=dtype)
        weight = (1.0 + 0.1 * torch.randn(h, device=device)).to(dtype)
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
        ang = torch.arange(s, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        ang = torch.cat([ang, ang], dim=-1)
        return (x, weight, ang.cos().contiguous(), ang.sin().contiguous()), {"head_dim": hd}

    def run(x, weight, cos, sin, head_dim, **config):
        out = torch.empty_like(x)
        _launch(x, weight, cos, sin, None, None, out, None, 1e-6, head_dim, False, 0.0, False, config=config)
        return out

    def default_config(shape, dtype=torch.float16):
        b, s, h, hd = _tuning_dims(shape)
        n_sms = num_sms("cuda") if torch.cuda.is_available() else num_sms("cpu")
        cfg = pick_config(b * s, h, hd, hd, itemsize(dtype), False, n_sms)
        return {"ROWS_PER_PROG": cfg.ROWS_PER_PROG, "num_warps": cfg.num_warps}

    def cache_key(shape, dtype):
        b, s, h, hd = _tuning_dims(shape)
        return _tuning_key(b * s, h, hd, hd, itemsize(dtype), False)

    def valid_configs(shape, configs, dtype=torch.float16):
        # Drop configs that spill: built for sm_90 at the seed problem (fp16, 64 heads of 64, a 4096-element
        # tile), 1 warp (256 B of row per thread) spilled 120-176 B at every ROWS_PER_PROG, and 2 warps
        # (128 B per thread) spilled 256-288 B once a program handles 2 or 4 rows; 4 and 8 warps built
        # spill-free at 1, 2 and 4 rows. So: <= 128 B of row per thread, <= 64 B with several rows per
        # program; two-pass (chunked) rows hold more live values: a quarter of that, as pick_config does.
        b, s, h, hd = _tuning_dims(shape)
        base = pick_config(b * s, h, hd, hd, itemsize(dtype), False)
        tile_bytes = (2 * base.HALF_BLOCK) * base.NH_BLOCK * itemsize(dtype)
        limit = 128 if base.N_CHUNKS == 1 else 32
        return [c for c in configs
                if tile_bytes // (32 * c["num_warps"]) <= (limit if c["ROWS_PER_PROG"] == 1 else limit // 2)]

    def profile(shape, dtype):
        b, s, h, hd = _tuning_dims(shape)
        # x read once, out written once; the fp32 tables (s x hd x 2 x 4 bytes) stay in L2
        return PerformanceProfile.elementwise(b * s * h, dtype=dtype)

    return TuningEntry(
        kernel_type="rmsnorm_rope",
        config_space={"ROWS_PER_PROG": [1, 2, 4], "num_warps": [1, 2, 4, 8]},
        make_args=make_args, run=run, default_config=default_config,
        # the README's benchmark (Llama-7B-like rows, 64-wide heads) and a decode step of 64 tokens
        default_shapes=[(8, 2048, 4096, 64), (64, 1, 4096, 128)],
        cpu_shapes=[(1, 3, 256, 64)],
        shape_doc="batch x seq x hidden [x head_dim, default 64]",
        dtype=torch.float16, cache_key=cache_key, profile=profile, valid_configs=valid_configs,
        # fp16 outputs of one row computed in fp32 either way; only the cast rounds: ~5e-4 relative
        rtol=2e-3)


__all__ = ["fused_rmsnorm_rope", "FusedRMSNormRoPE", "rmsnorm_rope_reference", "pick_config",
           "RMSNormRoPEConfig", "tuning_entry"]
