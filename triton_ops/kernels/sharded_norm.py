"""Row statistics and normalize(+rotate) with external statistics: RMSNorm over a row split across ranks.

A full-row RMSNorm over a projection whose heads are split across tensor-parallel ranks (OLMo2/3's q/k
norm over ``heads * head_dim``) needs the sum of squares of the *whole* row, while each rank holds only
its heads. The sharded norm therefore runs in three steps, with one collective in the middle:

1. :func:`row_sum_of_squares`: per-row sum of squares of the local shard, in fp32 (one read of x);
2. an all-reduce (sum) of those ``[rows]`` partial sums across the ranks (see
   :func:`triton_ops.parallel.sharded_rmsnorm_rope`);
3. :func:`rmsnorm_rope_from_stats`: normalise the local shard with the full-row statistic -- either the
   reduced sum of squares (the kernel forms ``rsqrt(ss / n_total + eps)``) or a ready ``rstd`` -- multiply
   by the local slice of the weight and rotate each local head, in one pass (one read, one write).

The normalize+rope kernel reuses the pair offsets, loads and stores of :mod:`triton_ops.kernels.rmsnorm_rope`,
so the two kernels agree on layouts (neox / gptj, partial rotary, position sources) by construction; it has no
first pass over the row (the statistic comes in), so wide rows are one pass over chunks of heads.
On one rank (``n_total`` = the row width) steps 1 and 3 compute what :func:`~triton_ops.fused_rmsnorm_rope`
computes, up to the order of the fp32 sum.

Both ops run forward only (inference): they have no autograd formula.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import validation as V
from ..exceptions import InvalidArgumentError, ShapeError
from ..launch import KernelLaunch, PlanCache, mark_written, plan_key
from ..utils import cdiv, interpreter_enabled, next_power_of_2, num_sms
from . import rmsnorm as _rn
from . import rmsnorm_rope as _rr
from .rmsnorm import _rounded
from .rmsnorm_rope import _load_pairs, _pair_offsets, _store_pairs

_POS_SEQ, _POS_IDS, _POS_ROW = _rr._POS_SEQ, _rr._POS_IDS, _rr._POS_ROW


# ----------------------------------------------------------------------------------------------------
# Layer 1: kernels
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _row_sumsq_kernel(
    x_ptr, out_ptr, n_rows, n_cols, seq, stride_xb, stride_xs,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, N_CHUNKS: tl.constexpr,
):
    """out[row] = sum over the row of x^2, accumulated in fp32. ``ROWS`` narrow rows per program, or one
    wide row in ``N_CHUNKS`` chunks of ``BLOCK``."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    row_ok = rows < n_rows
    x_off = (rows // seq) * stride_xb + (rows % seq) * stride_xs
    cols = tl.arange(0, BLOCK)[None, :]
    acc = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    for c in range(N_CHUNKS):
        cc = c * BLOCK + cols
        v = tl.load(x_ptr + x_off + cc, mask=row_ok & (cc < n_cols), other=0.0).to(tl.float32)
        acc += v * v
    ss = tl.sum(acc, axis=1)
    r1 = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    tl.store(out_ptr + r1, ss, mask=r1 < n_rows)


@triton.jit
def _rmsnorm_rope_stats_kernel(
    x_ptr, w_ptr, cos_ptr, sin_ptr, pos_ptr, stat_ptr, out_ptr,
    n_rows, seq_len, n_heads, n_table_rows,
    stride_xb, stride_xs, stride_ob, stride_os, stride_pb, stride_ps, stride_cos, stride_sin,
    eps, inv_n, weight_offset,
    HEAD_DIM: tl.constexpr, ROT_DIM: tl.constexpr, HALF_BLOCK: tl.constexpr, PASS_BLOCK: tl.constexpr,
    NH_BLOCK: tl.constexpr, N_CHUNKS: tl.constexpr, GPTJ: tl.constexpr, IS_RSTD: tl.constexpr,
    POS_MODE: tl.constexpr, ROWS_PER_PROG: tl.constexpr, EXACT_BF16: tl.constexpr,
):
    """y = rope(x * rstd * (weight_offset + w)) per row, with rstd = stat[row] (IS_RSTD) or
    rsqrt(stat[row] * inv_n + eps) (stat = the row's full sum of squares, inv_n = 1 / full row width).

    EXACT_BF16 (bf16 output under Triton's CPU interpreter, whose fp32 -> bf16 casts truncate): round each
    result to nearest even with integer operations before the store, which is what the GPU's cast does."""
    HALF: tl.constexpr = ROT_DIM // 2
    PASS: tl.constexpr = HEAD_DIM - ROT_DIM
    pid = tl.program_id(0).to(tl.int64)
    h_loc = tl.arange(0, NH_BLOCK)[:, None]
    i = tl.arange(0, HALF_BLOCK)[None, :]
    k = tl.arange(0, PASS_BLOCK)[None, :]
    zero_h = tl.zeros([1, 1], dtype=tl.int32)
    ca, cb = _pair_offsets(zero_h, i, 0, HALF, GPTJ)  # cos/sin row offsets of each pair half
    m_half = i < HALF
    for r in range(ROWS_PER_PROG):
        row = pid * ROWS_PER_PROG + r
        row_ok = row < n_rows
        b_idx = row // seq_len
        s_idx = row % seq_len
        x_off = b_idx * stride_xb + s_idx * stride_xs
        o_off = b_idx * stride_ob + s_idx * stride_os
        if POS_MODE == 0:
            pos = s_idx
        elif POS_MODE == 1:
            pos = tl.load(pos_ptr + b_idx * stride_pb + s_idx * stride_ps, mask=row_ok, other=0).to(tl.int64)
        else:
            pos = row
        # An out-of-range position makes the token's output NaN, as in fused_rmsnorm_rope.
        pos_ok = (pos >= 0) & (pos < n_table_rows)
        safe_pos = tl.where(pos_ok, pos, 0)
        cm = m_half & row_ok
        c1, c2 = _load_pairs(cos_ptr + safe_pos * stride_cos, ca, cb, cm, GPTJ, "evict_last")
        s1, s2 = _load_pairs(sin_ptr + safe_pos * stride_sin, ca, cb, cm, GPTJ, "evict_last")
        c1, c2, s1, s2 = c1.to(tl.float32), c2.to(tl.float32), s1.to(tl.float32), s2.to(tl.float32)
        st = tl.load(stat_ptr + row, mask=row_ok, other=1.0)
        if IS_RSTD:
            rs = st
        else:
            rs = tl.rsqrt(st * inv_n + eps)
        for c in range(N_CHUNKS):
            h = c * NH_BLOCK + h_loc
            oa, ob = _pair_offsets(h, i, HEAD_DIM, HALF, GPTJ)
            m = (h < n_heads) & m_half & row_ok
            a, b = _load_pairs(x_ptr + x_off, oa, ob, m, GPTJ, "evict_first")
            a, b = a.to(tl.float32), b.to(tl.float32)
            wa, wb = _load_pairs(w_ptr, oa, ob, m, GPTJ, "evict_last")
            na = a * rs * (wa.to(tl.float32) + weight_offset)
            nb = b * rs * (wb.to(tl.float32) + weight_offset)
            ya = tl.where(pos_ok, na * c1 - nb * s1, float("nan"))
            yb = tl.where(pos_ok, nb * c2 + na * s2, float("nan"))
            if EXACT_BF16:
                ya = _rounded(ya, out_ptr.dtype.element_ty, True)
                yb = _rounded(yb, out_ptr.dtype.element_ty, True)
            _store_pairs(out_ptr + o_off, oa, ob, ya, yb, m, GPTJ)
            if PASS > 0:
                op = h * HEAD_DIM + ROT_DIM + k
                mp = (h < n_heads) & (k < PASS) & row_ok
                p = tl.load(x_ptr + x_off + op, mask=mp, other=0.0, eviction_policy="evict_first").to(tl.float32)
                wp = tl.load(w_ptr + op, mask=mp, other=0.0, eviction_policy="evict_last").to(tl.float32)
                yp = tl.where(pos_ok, p * rs * (wp + weight_offset), float("nan"))
                if EXACT_BF16:
                    yp = _rounded(yp, out_ptr.dtype.element_ty, True)
                tl.store(out_ptr + o_off + op, yp.to(out_ptr.dtype.element_ty), mask=mp)


# ----------------------------------------------------------------------------------------------------
# Layer 2: configs, plans, launchers
# ----------------------------------------------------------------------------------------------------
def pick_sumsq_config(n_rows: int, n_cols: int, itemsize: int = 2, n_sms: int = 132) -> _rn.RMSNormConfig:
    """Tile of the statistics kernel: the RMSNorm kernel's tiling (same loads, no store of the row)."""
    return _rn.pick_config(n_rows, n_cols, itemsize, False, n_sms)


def pick_norm_config(n_rows: int, hidden: int, head_dim: int, rot_dim: int, itemsize: int = 2,
                     n_sms: int = 132) -> _rr.RMSNormRoPEConfig:
    """Tile of the normalize+rope kernel: fused_rmsnorm_rope's tiling of the same row (no residual), with
    ~32 bytes of row per thread on one-tile rows instead of its 128. This kernel loads the weight tile
    next to each row tile (it has no first pass to hoist it over), and at 64-128 bytes per thread ptxas
    spilled 8-176 bytes for fp16 rows of head_dim 80-256 on sm_80/89/90 in the compile check (erratically:
    4 warps spilled where 2 did not); 32 bytes per thread built every variant spill-free."""
    cfg = _rr.pick_config(n_rows, hidden, head_dim, rot_dim, itemsize, False, n_sms)
    if cfg.N_CHUNKS == 1:
        per_head = 2 * cfg.HALF_BLOCK + (cfg.PASS_BLOCK if head_dim > rot_dim else 0)
        tile_bytes = per_head * cfg.NH_BLOCK * itemsize  # packed rows are processed one after another
        cfg = replace(cfg, num_warps=min(16, next_power_of_2(max(1, tile_bytes // (32 * 32)))))
    return cfg


class _SumsqPlan:
    __slots__ = ("launch", "ints", "shape")

    def __init__(self, launch, ints, shape):
        self.launch, self.ints, self.shape = launch, ints, shape

    def __call__(self, x3, out):
        y = out if out is not None else torch.empty(self.shape, dtype=torch.float32, device=x3.device)
        if self.launch is not None:
            self.launch(x3, y, *self.ints)
            if out is not None:
                mark_written(out)
        return y


def _make_sumsq_plan(x: torch.Tensor) -> _SumsqPlan:
    shape = tuple(x.shape[:-1])
    if x.numel() == 0:
        return _SumsqPlan(None, (), shape)
    x3 = V.as_3d(x, "x")
    n_rows, n_cols = x3.shape[0] * x3.shape[1], x3.shape[2]
    cfg = pick_sumsq_config(n_rows, n_cols, x.element_size(), num_sms(x.device))
    launch = KernelLaunch(_row_sumsq_kernel, (cdiv(n_rows, cfg.ROWS),),
                          dict(BLOCK=cfg.BLOCK, ROWS=cfg.ROWS, N_CHUNKS=cfg.N_CHUNKS), num_warps=cfg.num_warps)
    return _SumsqPlan(launch, (n_rows, n_cols, x3.shape[1], x3.stride(0), x3.stride(1)), shape)


class _NormPlan:
    __slots__ = ("launch", "ints", "shape", "pos_mode", "is_rstd")

    def __init__(self, launch, ints, shape, pos_mode, is_rstd):
        self.launch, self.ints, self.shape, self.pos_mode, self.is_rstd = launch, ints, shape, pos_mode, is_rstd

    def __call__(self, x3, weight, cos, sin, pos, stat, out, eps, inv_n, weight_offset):
        y = out if out is not None else x3.new_empty(self.shape)
        if self.launch is not None:
            self.launch(x3, weight, cos, sin, pos if self.pos_mode == _POS_IDS else x3, stat, y, *self.ints,
                        eps, inv_n, weight_offset)
            if out is not None:
                mark_written(out)
        return y


def _make_norm_plan(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: Optional[torch.Tensor],
                    out: Optional[torch.Tensor], head_dim: int, gptj: bool, per_token: bool,
                    is_rstd: bool) -> tuple[_NormPlan, bool]:
    """(plan, cacheable) for validated inputs; cos/sin are 2-D tables, pos is None, [seq] or [b, seq]."""
    pos_mode = _POS_IDS if pos is not None else (_POS_ROW if per_token else _POS_SEQ)
    shape = tuple(x.shape)
    if x.numel() == 0:
        return _NormPlan(None, (), shape, pos_mode, is_rstd), True
    x3 = V.as_3d(x, "x")
    n_rows, seq, hidden = x3.shape[0] * x3.shape[1], x3.shape[1], x3.shape[2]
    o_st = V.as_3d(out, "out", writable=True).stride() if out is not None else (seq * hidden, hidden, 1)
    cacheable = x3.data_ptr() == x.data_ptr()
    spb = sps = 0
    if pos_mode == _POS_IDS:
        p2 = pos.reshape(-1, seq) if pos.dim() > 1 else pos.view(1, seq)
        cacheable = cacheable and p2.data_ptr() == pos.data_ptr()
        spb = p2.stride(0) if p2.shape[0] > 1 else 0
        sps = p2.stride(1)
    rot = cos.shape[-1]
    cfg = pick_norm_config(n_rows, hidden, head_dim, rot, x.element_size(), num_sms(x.device))
    launch = KernelLaunch(
        _rmsnorm_rope_stats_kernel, (cdiv(n_rows, cfg.ROWS_PER_PROG),),
        dict(HEAD_DIM=head_dim, ROT_DIM=rot, HALF_BLOCK=cfg.HALF_BLOCK, PASS_BLOCK=cfg.PASS_BLOCK,
             NH_BLOCK=cfg.NH_BLOCK, N_CHUNKS=cfg.N_CHUNKS, GPTJ=gptj, IS_RSTD=is_rstd, POS_MODE=pos_mode,
             ROWS_PER_PROG=cfg.ROWS_PER_PROG, EXACT_BF16=interpreter_enabled() and x.dtype == torch.bfloat16),
        num_warps=cfg.num_warps)
    ints = (n_rows, seq, hidden // head_dim, cos.shape[0], x3.stride(0), x3.stride(1), o_st[0], o_st[1],
            spb, sps, cos.stride(0), sin.stride(0))
    return _NormPlan(launch, ints, shape, pos_mode, is_rstd), cacheable


def _pos_2d(x3: torch.Tensor, position_ids: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if position_ids is not None and position_ids.dim() > 1:
        return position_ids.reshape(-1, x3.shape[1])
    return position_ids


def _run_sumsq(x: torch.Tensor, out: torch.Tensor) -> None:
    if x.numel():
        _make_sumsq_plan(x)(V.as_3d(x, "x"), out)


def _run_norm(x, weight, cos, sin, position_ids, stat, out, eps, inv_n, head_dim, gptj, weight_offset,
              per_token, is_rstd) -> None:
    if x.numel() == 0:
        return
    x3 = V.as_3d(x, "x")
    pos = _pos_2d(x3, position_ids)
    plan, _ = _make_norm_plan(x3, cos, sin, pos, out, head_dim, gptj, per_token, is_rstd)
    plan(x3, weight, cos, sin, pos, stat, out, float(eps), float(inv_n), float(weight_offset))


# ----------------------------------------------------------------------------------------------------
# Layer 3: custom ops (torch.compile(fullgraph=True), fake tensors)
# ----------------------------------------------------------------------------------------------------
@torch.library.custom_op("triton_ops::row_sum_of_squares", mutates_args=())
def _row_sumsq_op(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    _run_sumsq(x, out)
    return out


@_row_sumsq_op.register_fake
def _(x):
    return torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)


@torch.library.custom_op("triton_ops::row_sum_of_squares_out", mutates_args=("out",))
def _row_sumsq_out_op(x: torch.Tensor, out: torch.Tensor) -> None:
    _run_sumsq(x, out)


@_row_sumsq_out_op.register_fake
def _(x, out):
    return None


@torch.library.custom_op("triton_ops::rmsnorm_rope_from_stats", mutates_args=())
def _norm_op(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             position_ids: Optional[torch.Tensor], stat: torch.Tensor, eps: float, inv_n: float, head_dim: int,
             gptj: bool, weight_offset: float, per_token_tables: bool, is_rstd: bool) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _run_norm(x, weight, cos, sin, position_ids, stat, out, eps, inv_n, head_dim, gptj, weight_offset,
              per_token_tables, is_rstd)
    return out


@_norm_op.register_fake
def _(x, weight, cos, sin, position_ids, stat, eps, inv_n, head_dim, gptj, weight_offset, per_token_tables,
      is_rstd):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


# ----------------------------------------------------------------------------------------------------
# Layer 4: functional API
# ----------------------------------------------------------------------------------------------------
_sumsq_plans = PlanCache("row_sum_of_squares")
_norm_plans = PlanCache("rmsnorm_rope_from_stats")


def _check_stat_buffer(t: torch.Tensor, name: str, x: torch.Tensor, writable: bool) -> None:
    V.check_tensor(t, name)
    V.check_dtype(t, name, (torch.float32,))
    rows = math.prod(x.shape[:-1])
    if t.numel() != rows or not t.is_contiguous():
        raise ShapeError(f"{name} has shape {tuple(t.shape)} (contiguous: {t.is_contiguous()}); expected a "
                         f"contiguous fp32 tensor of {rows} values, one per row of x {tuple(x.shape)}")
    if t.device != x.device:
        V.check_same_device({"x": x, name: t})
    if writable:
        _rn.check_no_self_overlap(t, name)


def row_sum_of_squares(x: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-row sum of squares of ``x`` over its last dim, accumulated and returned in fp32.

    The statistics step of a full-row RMSNorm whose row is split across ranks: each rank reduces its
    shard, an all-reduce (sum) adds the partial sums, and :func:`rmsnorm_rope_from_stats` normalises with
    the total.

    Args:
        x: ``[..., n]`` fp16, bf16 or fp32; rows may be strided, the last dim must be contiguous.
        out: optional contiguous fp32 buffer of ``x.shape[:-1]`` (or any shape with that many values),
            e.g. one half of a ``[2, rows]`` buffer holding the statistics of q and k for one all-reduce.

    Returns:
        fp32 ``x.shape[:-1]`` (``out`` when given).
    """
    key = plan_key(x, out)
    if key is not None:
        plan = _sumsq_plans.get(key)
        if plan is not None:
            return plan(x if x.dim() == 3 else V.as_3d(x, "x"), out)
    V.check_tensor(x, "x")
    V.check_dtype(x, "x", V.FLOAT_DTYPES)
    V.check_ndim(x, "x", min_ndim=1)
    V.check_runnable_device(x.device, "x")
    V.check_last_dim_contiguous(x, "x")
    if out is not None:
        _check_stat_buffer(out, "out", x, writable=True)
    if key is not None:
        plan = _make_sumsq_plan(x)
        x3 = V.as_3d(x, "x") if x.numel() else x
        if x3.data_ptr() == x.data_ptr():
            _sumsq_plans.put(key, plan)
        return plan(x3, out)
    if out is not None:
        torch.ops.triton_ops.row_sum_of_squares_out(x, out)
        return out
    return torch.ops.triton_ops.row_sum_of_squares(x)


def rmsnorm_rope_from_stats(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                            sum_of_squares: Optional[torch.Tensor] = None, n_total: Optional[int] = None,
                            rstd: Optional[torch.Tensor] = None, eps: float = 1e-6,
                            head_dim: Optional[int] = None, position_ids: Optional[torch.Tensor] = None,
                            rotary_layout: str = "neox", weight_offset: float = 0.0,
                            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """RMSNorm of ``x`` with a per-row statistic computed elsewhere, then RoPE on every head, in one kernel.

    ``y = rope(x * rstd * (weight_offset + weight))`` where ``rstd`` is given, or
    ``rstd = rsqrt(sum_of_squares / n_total + eps)`` from the full row's sum of squares (the all-reduced
    output of :func:`row_sum_of_squares` over the shards) and the full row width ``n_total``.

    Args:
        x: ``[..., seq, n]``: this rank's heads of the row (``n`` a multiple of ``head_dim``), fp16, bf16 or
            fp32, last dim contiguous.
        weight: ``[n]``: this rank's slice of the norm weight; x's dtype or fp32.
        cos, sin: RoPE tables as for :func:`~triton_ops.fused_rmsnorm_rope` (``[rows, rot]``,
            ``[1, rows, rot]`` or per-token ``[*x.shape[:-1], rot]``).
        sum_of_squares, n_total: the full row's sum of squares (fp32, one per row of x, contiguous) and
            the full row width (``n`` times the number of shards); or
        rstd: the reciprocal RMS per row (fp32, contiguous), used as is (``eps`` unused).
        eps, head_dim, position_ids, rotary_layout, weight_offset, out: as for
            :func:`~triton_ops.fused_rmsnorm_rope`.

    Returns:
        ``x``'s shape and dtype.
    """
    stat = rstd if rstd is not None else sum_of_squares
    key = plan_key(x, weight, cos, sin, position_ids, stat, out)
    if key is not None:
        key = (key, rstd is not None, n_total, eps, head_dim, rotary_layout, weight_offset)
        plan = _norm_plans.get(key)
        if plan is not None:
            x3 = x if x.dim() == 3 else V.as_3d(x, "x")
            return plan(x3, weight, _table_2d(cos, x), _table_2d(sin, x), _pos_2d(x3, position_ids), stat, out,
                        eps, 1.0 / n_total if n_total else 0.0, weight_offset)
    if (rstd is None) == (sum_of_squares is None):
        raise InvalidArgumentError("pass exactly one of sum_of_squares (with n_total) and rstd")
    V.check_tensor(x, "x")
    V.check_tensor(weight, "weight")
    V.check_tensor(cos, "cos")
    V.check_tensor(sin, "sin")
    V.check_choice(rotary_layout, "rotary_layout", _rr.LAYOUTS)
    V.check_dtype(x, "x", V.FLOAT_DTYPES)
    V.check_ndim(x, "x", min_ndim=1)
    device = V.check_same_device({"x": x, "weight": weight, "cos": cos, "sin": sin, "position_ids": position_ids,
                                  "stat": stat, "out": out})
    V.check_runnable_device(device, "x")
    eps = V.check_positive_finite(eps, "eps", allow_zero=True)
    weight_offset = V.check_finite(weight_offset, "weight_offset")
    for name, t in (("x", x), ("weight", weight), ("cos", cos), ("sin", sin)):
        V.check_last_dim_contiguous(t, name)
    V.check_dtype(weight, "weight", (x.dtype, torch.float32))
    V.check_dtype(cos, "cos", (x.dtype, torch.float32))
    V.check_same_dtype({"cos": cos, "sin": sin})
    _check_stat_buffer(stat, "rstd" if rstd is not None else "sum_of_squares", x, writable=False)
    hidden = x.shape[-1]
    if rstd is None:
        if not isinstance(n_total, int) or isinstance(n_total, bool) or n_total < hidden:
            raise InvalidArgumentError(f"n_total must be the full row width (an int >= x.shape[-1] = {hidden}), "
                                       f"got {n_total!r}")
    elif n_total is not None:
        raise InvalidArgumentError("n_total is only used with sum_of_squares")
    tables_cos, tables_sin, per_token = _rr._normalize_tables(x, cos, sin, position_ids)
    rot = tables_cos.shape[-1]
    head_dim = rot if head_dim is None else int(head_dim)
    if head_dim <= 0 or head_dim % 2 or head_dim > _rr.MAX_HEAD_DIM:
        raise ShapeError(f"head_dim must be a positive even number <= {_rr.MAX_HEAD_DIM}, got {head_dim}")
    if hidden % head_dim:
        raise ShapeError(f"x.shape[-1]={hidden} is not a multiple of head_dim={head_dim}")
    if rot % 2 or rot == 0 or rot > head_dim:
        raise ShapeError(f"cos/sin have {rot} channels; expected an even rotary_dim in [2, head_dim={head_dim}]")
    if tuple(weight.shape) != (hidden,):
        raise ShapeError(f"weight has shape {tuple(weight.shape)}; expected ({hidden},): this shard's slice of "
                         "the row norm's weight")
    seq = x.shape[-2] if x.dim() >= 2 else 1
    if position_ids is not None:
        V.check_tensor(position_ids, "position_ids")
        V.check_dtype(position_ids, "position_ids", (torch.int32, torch.int64))
        if tuple(position_ids.shape) not in ((seq,), tuple(x.shape[:-1]), (1, seq)):
            raise ShapeError(f"position_ids has shape {tuple(position_ids.shape)}; expected ({seq},) or "
                             f"{tuple(x.shape[:-1])} for x of shape {tuple(x.shape)}")
        if position_ids.dim() == 2 and position_ids.shape[0] == 1 and x.dim() > 2:
            position_ids = position_ids[0]
    elif tables_cos.shape[0] < seq and not per_token:
        raise ShapeError(f"cos/sin have {tables_cos.shape[0]} rows but x has seq={seq} positions; pass a longer "
                         "table or position_ids")
    if out is not None:
        V.check_out(out, "out", x.shape, x.dtype, device)
    gptj = rotary_layout == "gptj"
    inv_n = 1.0 / n_total if rstd is None else 0.0
    if key is not None:
        if x.numel() == 0:
            return out if out is not None else x.new_empty(x.shape)
        x3 = V.as_3d(x, "x")
        pos = _pos_2d(x3, position_ids)
        plan, cacheable = _make_norm_plan(x3, tables_cos, tables_sin, pos, out, head_dim, gptj, per_token,
                                          rstd is not None)
        # Reuse only plans made on the caller's own tensors (no copies) and on 2-D tables the fast path
        # can rebuild without a copy (plan_cos below).
        same_tables = tables_cos.data_ptr() == cos.data_ptr() and tables_sin.data_ptr() == sin.data_ptr()
        if cacheable and same_tables and (position_ids is None or pos.data_ptr() == position_ids.data_ptr()):
            _norm_plans.put(key, plan)
        return plan(x3, weight, tables_cos, tables_sin, pos, stat, out, eps, inv_n, weight_offset)
    return torch.ops.triton_ops.rmsnorm_rope_from_stats(x, weight, tables_cos, tables_sin, position_ids, stat,
                                                        eps, inv_n, head_dim, gptj, weight_offset, per_token,
                                                        rstd is not None)


def _table_2d(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A cos/sin table as the 2-D ``[rows, rot]`` view the kernel indexes, the same view
    ``rmsnorm_rope._normalize_tables`` made when the plan was built (plans are only kept when that was a
    view, not a copy)."""
    if t.dim() == 2:
        return t
    if t.dim() == x.dim() and tuple(t.shape[:-1]) == tuple(x.shape[:-1]):
        return t.view(-1, t.shape[-1])
    return t.reshape(t.shape[-2], t.shape[-1])


def rmsnorm_rope_stats_reference(x, weight, cos, sin, *, sum_of_squares=None, n_total=None, rstd=None, eps=1e-6,
                                 head_dim=None, position_ids=None, rotary_layout="neox", weight_offset=0.0):
    """Unfused PyTorch reference of :func:`rmsnorm_rope_from_stats` (fp32 math)."""
    if rstd is None:
        rstd = torch.rsqrt(sum_of_squares.float() / n_total + eps)
    y = x.float() * rstd.reshape(*x.shape[:-1], 1).float() * (weight_offset + weight.float())
    return _rotate_reference(y, cos, sin, head_dim, position_ids, rotary_layout).to(x.dtype)


def _rotate_reference(y, cos, sin, head_dim, position_ids, rotary_layout):
    rot = cos.shape[-1]
    head_dim = rot if head_dim is None else head_dim
    shape = y.shape
    yh = y.reshape(*shape[:-1], shape[-1] // head_dim, head_dim)
    if cos.dim() == y.dim():
        c, s = cos.float().unsqueeze(-2), sin.float().unsqueeze(-2)
    else:
        c2, s2 = cos.reshape(-1, rot).float(), sin.reshape(-1, rot).float()
        idx = torch.arange(shape[-2] if y.dim() >= 2 else 1) if position_ids is None else position_ids.long()
        c, s = c2[idx].unsqueeze(-2), s2[idx].unsqueeze(-2)
    yr, yp = yh[..., :rot], yh[..., rot:]
    if rotary_layout == "neox":
        half = rot // 2
        partner = torch.cat([-yr[..., half:], yr[..., :half]], dim=-1)
    else:
        partner = torch.stack([-yr[..., 1::2], yr[..., 0::2]], dim=-1).flatten(-2)
    return torch.cat([yr * c + partner * s, yp], dim=-1).reshape(shape)


# ----------------------------------------------------------------------------------------------------
# Compile check
# ----------------------------------------------------------------------------------------------------
_TYPE_SIZES = {"fp16": 2, "bf16": 2, "fp32": 4}


def compile_specs(arch: int):
    """Every tile class the two kernels' pickers choose: the statistics kernel on packed narrow rows,
    single rows and chunked wide rows; the normalize+rope kernel for each head_dim class on one-tile and
    chunked rows (a shard of a 64- or 112-head row), with both statistic kinds, both layouts, every position
    source and partial rotary, in each dtype."""
    from ..compile_check import CompileSpec

    specs = []
    for t in ("fp16", "bf16", "fp32"):
        for n_rows, n_cols in ((1 << 16, 64), (1 << 16, 2048), (1 << 16, 8192), (1 << 16, 14336), (1, 4096)):
            cfg = pick_sumsq_config(n_rows, n_cols, _TYPE_SIZES[t])
            sig = {"x_ptr": f"*{t}", "out_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32", "seq": "i32",
                   "stride_xb": "i64", "stride_xs": "i64"}
            const = dict(BLOCK=cfg.BLOCK, ROWS=cfg.ROWS, N_CHUNKS=cfg.N_CHUNKS)
            sig.update({k: "constexpr" for k in const})
            specs.append(CompileSpec(_row_sumsq_kernel, sig, const, num_warps=cfg.num_warps, num_stages=1,
                                     aligned=("x_ptr", "out_ptr", "n_cols"),
                                     label=f"row_sumsq {t} n={n_cols} block={cfg.BLOCK} rows={cfg.ROWS} "
                                           f"chunks={cfg.N_CHUNKS} w={cfg.num_warps}"))
    variants = []
    for head_dim, rot in ((64, 64), (80, 80), (96, 96), (128, 128), (128, 64), (256, 256)):
        for heads in (16, 56):  # 32 or 112 heads over 2 ranks: one tile, chunked
            variants.append(("fp16", heads * head_dim, head_dim, rot, False, False, _POS_SEQ))
            variants.append(("bf16", heads * head_dim, head_dim, rot, True, True, _POS_ROW))
            variants.append(("fp32", heads * head_dim, head_dim, rot, False, True, _POS_IDS))
    for t, hidden, head_dim, rot, is_rstd, gptj, pos_mode in variants:
        cfg = pick_norm_config(16384, hidden, head_dim, rot, _TYPE_SIZES[t])
        sig = {"x_ptr": f"*{t}", "w_ptr": f"*{t}", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "pos_ptr": "*i64",
               "stat_ptr": "*fp32", "out_ptr": f"*{t}"}
        sig.update({k: "i32" for k in ("n_rows", "seq_len", "n_heads", "n_table_rows")})
        sig.update({k: "i64" for k in ("stride_xb", "stride_xs", "stride_ob", "stride_os", "stride_pb",
                                        "stride_ps", "stride_cos", "stride_sin")})
        sig.update({"eps": "fp32", "inv_n": "fp32", "weight_offset": "fp32"})
        const = dict(HEAD_DIM=head_dim, ROT_DIM=rot, HALF_BLOCK=cfg.HALF_BLOCK, PASS_BLOCK=cfg.PASS_BLOCK,
                     NH_BLOCK=cfg.NH_BLOCK, N_CHUNKS=cfg.N_CHUNKS, GPTJ=gptj, IS_RSTD=is_rstd, POS_MODE=pos_mode,
                     ROWS_PER_PROG=cfg.ROWS_PER_PROG, EXACT_BF16=False)
        sig.update({k: "constexpr" for k in const})
        specs.append(CompileSpec(
            _rmsnorm_rope_stats_kernel, sig, const, num_warps=cfg.num_warps, num_stages=1,
            label=f"rmsnorm_rope_from_stats {t} n={hidden} hd={head_dim} rot={rot} rstd={int(is_rstd)} "
                  f"gptj={int(gptj)} pos={pos_mode} chunks={cfg.N_CHUNKS} rows={cfg.ROWS_PER_PROG} "
                  f"w={cfg.num_warps}"))
    return specs


__all__ = ["row_sum_of_squares", "rmsnorm_rope_from_stats", "rmsnorm_rope_stats_reference", "pick_sumsq_config",
           "pick_norm_config", "compile_specs"]
