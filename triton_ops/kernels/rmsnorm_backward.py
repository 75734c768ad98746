"""Backward of :func:`~triton_ops.fused_add_rmsnorm` as one Triton kernel.

Forward, per row, with ``s`` the input (``x`` or the sum ``x + residual``, saved by the forward) and
``w' = weight_offset + weight``::

    rstd = 1 / sqrt(mean(s^2) + eps),   n = s * rstd,   y = n * w'      (or round(n) * w')

Backward, for an incoming ``dy`` and the gradient ``d_sum`` reaching the returned sum::

    g  = dy * w'
    ds = rstd * g - s * rstd^3 * sum(g * s) / hidden  (+ d_sum)
    dw = sum over rows of dy * n                       (round(n) with round_before_weight, the value the
                                                        forward multiplied by; its rounding is taken as
                                                        the identity for ds, its derivative almost everywhere)

The structure is the RMSNorm+RoPE backward's (:mod:`.rmsnorm_rope_backward`) without the rotation:
``rstd`` recomputed from ``s`` (no extra traffic: the kernel reads ``s`` for ``sum(g * s)`` anyway), a
persistent grid whose programs accumulate ``dy * n`` in fp32 registers and write one row each of a
``[n_programs, hidden]`` fp32 buffer that one ``sum(0)`` reduces (no atomics), narrow rows packed
several to a tile, rows wider than a tile in two passes (the partial row then updated in global memory
by the program that owns it), and ``d_sum`` added before the single rounding of ``dx``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from ..launch import KernelLaunch, PlanCache, eager_backward, tensor_key
from ..utils import cdiv, interpreter_enabled, last_dim_contiguous, next_power_of_2, num_sms, prev_power_of_2
from ..validation import as_3d as _as_3d
from .rmsnorm import _rounded

#: Widest row held in one register tile (elements of each tensor). The kernel keeps ~5 fp32 values live
#: per element (s, dy, the weight, the dw accumulator, temporaries), more than twice the forward, whose
#: tile goes to 8192: 4096 keeps the Llama/Qwen row of 4096 in one pass (64 registers on 16 warps, sm_90).
#: 8192 also built without spills, but at exactly the 128-register cap of 16 warps on sm_80/89/90: no margin.
MAX_SINGLE_BLOCK = 4096
#: Chunk of the two-pass loop for wider rows (elements).
CHUNK_BLOCK = 2048
#: Narrow rows are packed into tiles of up to this many elements.
PACK_ELEMS = 4096
#: Tile elements per thread: 8 (one 16-byte load each of a 16-bit s and dy), as the RMSNorm+RoPE
#: backward, whose compile check spilled at 16.
ELEMS_PER_THREAD = 8
#: Resident warps per SM the persistent grid aims for: 16 warps of <= 128 registers always fit an SM's
#: 64K registers (32 assumed two 16-warp programs resident, which the register use does not allow: the
#: second half of the grid ran as a second wave).
WARPS_PER_SM = 16
#: Software-pipelining depth of the row loop, as in the RMSNorm+RoPE backward (rmsnorm_rope_backward.
#: PIPELINE_STAGES, which has the measurement): the next tiles' s and dy loads go through shared memory
#: with cp.async while the current tile is reduced. Two-pass rows keep 1 (a global read-modify-write of
#: the partial weight-gradient row per iteration must not be reordered).
PIPELINE_STAGES = 3

#: Route the autograd formula through the fp32 PyTorch formula (rmsnorm._norm_grads) instead of the
#: kernel. For tests and debugging.
USE_REFERENCE = False


# ----------------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _rmsnorm_bwd_kernel(
    dy_ptr, s_ptr, w_ptr, gs_ptr, dx_ptr, dw_ptr,
    n_rows, n_cols, seq, n_progs,
    stride_dyb, stride_dys, stride_sb, stride_ss, stride_gb, stride_gs, stride_xb, stride_xs,
    eps, weight_offset,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, N_CHUNKS: tl.constexpr, HAS_GRAD_S: tl.constexpr,
    NEED_DX: tl.constexpr, NEED_DW: tl.constexpr, ROUND_BEFORE_WEIGHT: tl.constexpr, FLAT: tl.constexpr,
    EXACT_BF16: tl.constexpr, STAGES: tl.constexpr,
):
    DTYPE: tl.constexpr = s_ptr.dtype.element_ty
    pid = tl.program_id(0)
    pid64 = pid.to(tl.int64)
    cols = tl.arange(0, BLOCK)[None, :]
    r_loc = tl.arange(0, ROWS)[:, None]
    # This program's row of the [n_progs, n_cols] fp32 partial weight-gradient buffer.
    dw_row = dw_ptr + pid64 * n_cols
    acc = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    if N_CHUNKS == 1:
        w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32) + weight_offset
    n_blocks = tl.cdiv(n_rows, ROWS)
    for it in tl.range(0, tl.cdiv(n_blocks - pid, n_progs), num_stages=STAGES):
        # int64 row offsets: rows x row stride passes 2^31 elements at e.g. 262144 tokens x 8192.
        rows = (pid64 + it * n_progs) * ROWS + r_loc
        row_ok = rows < n_rows
        if FLAT:
            dy_off = rows * stride_dys
            s_off = rows * stride_ss
            g_off = rows * stride_gs
            x_off = rows * stride_xs
        else:
            b = rows // seq
            q = rows % seq
            dy_off = b * stride_dyb + q * stride_dys
            s_off = b * stride_sb + q * stride_ss
            g_off = b * stride_gb + q * stride_gs
            x_off = b * stride_xb + q * stride_xs
        if N_CHUNKS == 1:
            m = row_ok & (cols < n_cols)
            v = tl.load(s_ptr + s_off + cols, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
            g = tl.load(dy_ptr + dy_off + cols, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
            gw = g * w
            rstd = tl.rsqrt(tl.sum(v * v, axis=1) / n_cols + eps)[:, None]
            if NEED_DX:
                coef = rstd * rstd * rstd * tl.sum(gw * v, axis=1)[:, None] / n_cols
                dx = rstd * gw - v * coef
                if HAS_GRAD_S:
                    dx += tl.load(gs_ptr + g_off + cols, mask=m, other=0.0, eviction_policy="evict_first"
                                  ).to(tl.float32)
                tl.store(dx_ptr + x_off + cols, _rounded(dx, DTYPE, EXACT_BF16).to(dx_ptr.dtype.element_ty), mask=m)
            if NEED_DW:
                n = v * rstd
                if ROUND_BEFORE_WEIGHT:
                    n = _rounded(n, DTYPE, EXACT_BF16)
                # masked rows: with eps == 0 their rstd is inf and 0 * inf would poison the sum
                acc += tl.where(m, g * n, 0.0)
        else:
            # Wide rows (ROWS == 1): pass 1 accumulates sum(s^2) and sum(g * s) chunk by chunk.
            t_ss = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
            t_sg = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
            for c in range(N_CHUNKS):
                cc = c * BLOCK + cols
                m = row_ok & (cc < n_cols)
                v = tl.load(s_ptr + s_off + cc, mask=m, other=0.0, eviction_policy="evict_last").to(tl.float32)
                g = tl.load(dy_ptr + dy_off + cc, mask=m, other=0.0, eviction_policy="evict_last").to(tl.float32)
                wc = tl.load(w_ptr + cc, mask=cc < n_cols, other=0.0).to(tl.float32) + weight_offset
                t_ss += v * v
                t_sg += g * wc * v
            rstd = tl.rsqrt(tl.sum(t_ss, axis=1) / n_cols + eps)[:, None]
            coef = rstd * rstd * rstd * tl.sum(t_sg, axis=1)[:, None] / n_cols
            # Pass 2: re-read each chunk (from L2: the row was just read), write dx, update the partial row.
            for c in range(N_CHUNKS):
                cc = c * BLOCK + cols
                m = row_ok & (cc < n_cols)
                v = tl.load(s_ptr + s_off + cc, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
                g = tl.load(dy_ptr + dy_off + cc, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
                if NEED_DX:
                    wc = tl.load(w_ptr + cc, mask=cc < n_cols, other=0.0).to(tl.float32) + weight_offset
                    dx = rstd * g * wc - v * coef
                    if HAS_GRAD_S:
                        dx += tl.load(gs_ptr + g_off + cc, mask=m, other=0.0, eviction_policy="evict_first"
                                      ).to(tl.float32)
                    tl.store(dx_ptr + x_off + cc, _rounded(dx, DTYPE, EXACT_BF16).to(dx_ptr.dtype.element_ty),
                             mask=m)
                if NEED_DW:
                    n = v * rstd
                    if ROUND_BEFORE_WEIGHT:
                        n = _rounded(n, DTYPE, EXACT_BF16)
                    mc = cc < n_cols
                    # the program's first row starts its partial row; later rows add to it
                    prev = tl.load(dw_row + cc, mask=mc & (it > 0), other=0.0)
                    tl.store(dw_row + cc, prev + tl.where(m, g * n, 0.0), mask=mc)
            # the next row's loads of the partial row must see these stores from every thread
            tl.debug_barrier()
    if NEED_DW:
        if N_CHUNKS == 1:
            tl.store(dw_row + cols, tl.sum(acc, axis=0)[None, :], mask=cols < n_cols)


# ----------------------------------------------------------------------------------------------------
# Configuration and launcher
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RMSNormBackwardConfig:
    BLOCK: int
    ROWS: int
    N_CHUNKS: int
    num_warps: int
    progs_per_sm: int
    num_stages: int


def pick_backward_config(n_rows: int, n_cols: int, n_sms: int = 132, max_block: int | None = None,
                         programs: int | None = None) -> RMSNormBackwardConfig:
    """Tile, warps and programs per SM for the backward. Pure: depends only on its arguments.

    * rows up to ``MAX_SINGLE_BLOCK`` wide are one tile; wider rows take ``CHUNK_BLOCK`` chunks in two
      passes (``max_block`` overrides the first, for tests of the two-pass path at small sizes);
    * narrow rows are packed into ``[ROWS, BLOCK]`` tiles of up to ``PACK_ELEMS`` elements while every
      program of the persistent grid still gets a tile;
    * ``ELEMS_PER_THREAD`` elements per thread: warps = tile / 256, in [1, 16]; ``WARPS_PER_SM / warps``
      programs per SM (``programs`` overrides the grid size the packing aims for).
    """
    max_block = MAX_SINGLE_BLOCK if max_block is None else max_block
    block = next_power_of_2(max(n_cols, 1))
    n_chunks = 1
    if block > max_block:
        block = min(CHUNK_BLOCK, max_block)
        n_chunks = cdiv(n_cols, block)
    rows = 1
    while n_chunks == 1 and rows < 64 and block * rows * 2 <= PACK_ELEMS:
        warps = prev_power_of_2(min(16, max(1, block * rows * 2 // (32 * ELEMS_PER_THREAD))))
        if cdiv(n_rows, rows * 2) < (programs or n_sms * max(1, WARPS_PER_SM // warps)):
            break
        rows *= 2
    num_warps = prev_power_of_2(min(16, max(1, block * rows // (32 * ELEMS_PER_THREAD))))
    return RMSNormBackwardConfig(block, rows, n_chunks, num_warps, max(1, WARPS_PER_SM // num_warps),
                                 PIPELINE_STAGES if n_chunks == 1 else 1)


class _Plan:
    __slots__ = ("launch", "ints", "n_progs")

    def __init__(self, launch, ints, n_progs):
        self.launch, self.ints, self.n_progs = launch, ints, n_progs


def _make_plan(dy3, s3, gs3, x_st, round_before_weight, need_dx, need_dw, max_block=None) -> _Plan:
    n_rows, seq, n_cols = s3.shape[0] * s3.shape[1], s3.shape[1], s3.shape[2]
    sms = num_sms(s3.device)
    # The interpreter runs programs one after another, each paying its setup again (~20 ms at hidden 64):
    # one program, rows packed into its tile.
    programs = 1 if interpreter_enabled() else None
    cfg = pick_backward_config(n_rows, n_cols, sms, max_block, programs)
    n_progs = max(1, min(cdiv(n_rows, cfg.ROWS), programs or sms * cfg.progs_per_sm))
    g_st = (gs3.stride(0), gs3.stride(1)) if gs3 is not None else (seq * n_cols, n_cols)
    pairs = ((dy3.stride(0), dy3.stride(1)), (s3.stride(0), s3.stride(1)), g_st, tuple(x_st))
    flat = s3.shape[0] == 1 or all(sb == seq * ss for sb, ss in pairs)
    launch = KernelLaunch(
        _rmsnorm_bwd_kernel, (n_progs,),
        dict(BLOCK=cfg.BLOCK, ROWS=cfg.ROWS, N_CHUNKS=cfg.N_CHUNKS, HAS_GRAD_S=gs3 is not None,
             NEED_DX=bool(need_dx), NEED_DW=bool(need_dw), ROUND_BEFORE_WEIGHT=bool(round_before_weight),
             FLAT=flat, EXACT_BF16=interpreter_enabled() and s3.dtype == torch.bfloat16, STAGES=cfg.num_stages),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    ints = (n_rows, n_cols, seq, n_progs, *(v for p in pairs for v in p))
    return _Plan(launch, ints, n_progs)


_plans = PlanCache("add_rmsnorm_backward")


def add_rmsnorm_backward(grad_y: torch.Tensor, s: torch.Tensor, weight: torch.Tensor,
                         grad_s: Optional[torch.Tensor], eps: float, weight_offset: float,
                         round_before_weight: bool, need_input: bool = True, need_weight: bool = True,
                         max_block: int | None = None):
    """``(ds + grad_s, d weight)`` of the norm (None for what is not needed): ``ds`` in s's dtype, ``d
    weight`` in weight's, reduced in fp32. ``max_block`` overrides ``MAX_SINGLE_BLOCK`` (tests)."""
    dx = torch.empty(s.shape, dtype=s.dtype, device=s.device) if need_input else None
    if s.numel() == 0:
        if dx is not None and grad_s is not None:
            dx.copy_(grad_s)
        return dx, (torch.zeros_like(weight) if need_weight else None)
    grad_y = last_dim_contiguous(grad_y)
    grad_s = last_dim_contiguous(grad_s) if grad_s is not None else None
    s3 = _as_3d(s, "s")
    dy3 = _as_3d(grad_y, "grad_y")
    gs3 = _as_3d(grad_s, "grad_s") if grad_s is not None else None
    dx3 = dx.view(s3.shape) if dx is not None else s3
    key = (tensor_key(dy3, s3, weight, gs3), bool(round_before_weight), bool(need_input), bool(need_weight),
           max_block)
    plan = _plans.get(key)
    if plan is None:
        plan = _plans.put(key, _make_plan(dy3, s3, gs3, dx3.stride()[:2], round_before_weight, need_input,
                                          need_weight, max_block))
    partial = (torch.empty((plan.n_progs, s3.shape[-1]), dtype=torch.float32, device=s.device) if need_weight
               else None)
    plan.launch(dy3, s3, weight, gs3 if gs3 is not None else s3, dx3, partial if partial is not None else weight,
                *plan.ints, float(eps), float(weight_offset))
    return dx, (partial.sum(0).to(weight.dtype) if partial is not None else None)


# ----------------------------------------------------------------------------------------------------
# Custom op and the autograd hook
# ----------------------------------------------------------------------------------------------------
@torch.library.custom_op("triton_ops::add_rmsnorm_backward", mutates_args=())
def _add_rmsnorm_backward_op(grad_y: torch.Tensor, s: torch.Tensor, weight: torch.Tensor,
                             grad_s: Optional[torch.Tensor], eps: float, weight_offset: float,
                             round_before_weight: bool, need_input: bool,
                             need_weight: bool) -> tuple[torch.Tensor, torch.Tensor]:
    dx, dw = add_rmsnorm_backward(grad_y, s, weight, grad_s, eps, weight_offset, round_before_weight, need_input,
                                  need_weight)
    # a custom op returns tensors: empty ones stand for the gradients not asked for
    return (dx if dx is not None else s.new_empty(0)), (dw if dw is not None else weight.new_empty(0))


@_add_rmsnorm_backward_op.register_fake
def _(grad_y, s, weight, grad_s, eps, weight_offset, round_before_weight, need_input, need_weight):
    return (s.new_empty(s.shape if need_input else (0,)), weight.new_empty(weight.shape if need_weight else (0,)))


def norm_grads(ctx, s, weight, grad_y, grad_s=None):
    """``(d s + grad_s, d weight)`` for the norm's autograd formula (None where ``ctx`` asks for none):
    ``d s`` in s's dtype, ``d weight`` in weight's."""
    need_input, need_weight = bool(ctx.needs_input), bool(ctx.needs_weight)
    if not (need_input or need_weight):
        return None, None
    if grad_y is None:
        grad_y = torch.zeros_like(s)
    if USE_REFERENCE:
        from .rmsnorm import _norm_grads

        gs, gw = _norm_grads(ctx, s, weight, grad_y)
        if gs is not None:
            gs = (gs + grad_s.float() if grad_s is not None else gs).to(s.dtype)
        return gs, gw
    if eager_backward(grad_y, s, weight, grad_s):
        # an eager backward: the implementation itself, without the custom op's dispatch
        return add_rmsnorm_backward(grad_y, s, weight, grad_s, ctx.eps, ctx.weight_offset, ctx.round_before_weight,
                                    need_input, need_weight)
    dx, dw = torch.ops.triton_ops.add_rmsnorm_backward(grad_y, s, weight, grad_s, ctx.eps, ctx.weight_offset,
                                                       ctx.round_before_weight, need_input, need_weight)
    return (dx if need_input else None), (dw if need_weight else None)


# ----------------------------------------------------------------------------------------------------
# Compile check
# ----------------------------------------------------------------------------------------------------
def _compile_variants():
    """(dtype, weight dtype, n_rows, hidden, grad_s, rbw, flat, need_dx) combos: every tile class of
    pick_backward_config (packed narrow rows, one row per tile, two-pass wide rows) in bf16 with every
    switch on, and a few hidden sizes per class in fp16 (no residual-sum gradient, rows that do not
    collapse) and fp32, without the full cross product (~0.4 s per build)."""
    out = []
    for hidden in (64, 128, 896, 2048, 4096, 5120, 8192, 14336):
        out.append(("bf16", "fp32", 1 << 16, hidden, True, True, True, True))
    for hidden in (64, 2048, 5120, 14336):
        out.append(("fp16", "fp16", 1 << 16, hidden, False, False, False, True))
    for hidden in (128, 4096, 8192, 14336):
        out.append(("fp32", "fp32", 1 << 16, hidden, True, False, True, True))
    out.append(("bf16", "bf16", 1 << 16, 4096, False, False, True, False))  # weight gradient only
    return out


def compile_specs(arch: int):
    from ..compile_check import CompileSpec

    specs = []
    for tname, wname, n_rows, hidden, grad_s, rbw, flat, need_dx in _compile_variants():
        cfg = pick_backward_config(n_rows, hidden)
        t = f"*{tname}"
        sig = {"dy_ptr": t, "s_ptr": t, "w_ptr": f"*{wname}", "gs_ptr": t, "dx_ptr": t, "dw_ptr": "*fp32",
               "n_rows": "i32", "n_cols": "i32", "seq": "i32", "n_progs": "i32"}
        sig.update({k: "i64" for k in ("stride_dyb", "stride_dys", "stride_sb", "stride_ss", "stride_gb",
                                        "stride_gs", "stride_xb", "stride_xs")})
        sig.update({"eps": "fp32", "weight_offset": "fp32"})
        const = dict(BLOCK=cfg.BLOCK, ROWS=cfg.ROWS, N_CHUNKS=cfg.N_CHUNKS, HAS_GRAD_S=grad_s, NEED_DX=need_dx,
                     NEED_DW=True, ROUND_BEFORE_WEIGHT=rbw, FLAT=flat, EXACT_BF16=False, STAGES=cfg.num_stages)
        sig.update({k: "constexpr" for k in const})
        specs.append(CompileSpec(
            _rmsnorm_bwd_kernel, sig, const, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            aligned=("dy_ptr", "s_ptr", "w_ptr", "gs_ptr", "dx_ptr", "dw_ptr", "n_cols", "stride_dyb", "stride_dys",
                     "stride_sb", "stride_ss", "stride_gb", "stride_gs", "stride_xb", "stride_xs"),
            label=f"add_rmsnorm_bwd {tname} w={wname} h={hidden} gs={int(grad_s)} rbw={int(rbw)} "
                  f"flat={int(flat)} dx={int(need_dx)} block={cfg.BLOCK} rows={cfg.ROWS} chunks={cfg.N_CHUNKS} "
                  f"warps={cfg.num_warps}"))
    return specs


__all__ = ["add_rmsnorm_backward", "pick_backward_config", "RMSNormBackwardConfig", "norm_grads",
           "compile_specs"]
