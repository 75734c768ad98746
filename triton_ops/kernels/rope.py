"""Rotary position embedding of q and k in one launch.

The grid is ``tokens x head blocks``, where the heads of q and then of k form one list: a program rotates
``HB`` heads of one token, whichever tensor each head belongs to (per-head pointers are selected between q
and k), so GQA/MQA shapes (many q heads, few k heads) waste no programs and q and k cost one launch. A
program loads its token's cos/sin row once and applies it to all its heads.

RoPE rotates channel pairs: ``(i, rot/2 + i)`` in the neox (rotate-half) layout, ``(2i, 2i + 1)`` in the
gptj (interleaved) layout. Each head is loaded as its two pair halves ``a`` and ``b`` (``[HB, HALF_BLOCK]``
tiles; gptj splits one ``[HB, HALF_BLOCK, 2]`` load), so every element is read once and written once:

    forward:   a' = a*cos1 - b*sin1,   b' = b*cos2 + a*sin2
    backward:  a' = a*cos1 + b*sin2,   b' = b*cos2 - a*sin1   (the transpose: rotation by -angle)

``cos1/sin1`` are the table entries of the pair's first channel and ``cos2/sin2`` of its second (equal for
tables built the usual way; the backward is the exact transpose for any table). The channels past
``rotary_dim`` (partial rotary) are copied, or left alone in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import validation as V
from ..exceptions import InvalidArgumentError, ShapeError
from ..launch import (
    EagerAutograd,
    KernelLaunch,
    PlanCache,
    autograd_key,
    eager_autograd,
    eager_backward,
    mark_written,
    plan_key,
    tensor_key,
)
from ..utils import cdiv, interpreter_enabled, next_power_of_2, num_sms, prev_power_of_2
from .rmsnorm import _rounded

LAYOUTS = ("neox", "gptj")
#: q/k dim orders: Hugging Face attention's ``[batch, heads, seq, head_dim]`` (also as a transposed view
#: of a ``[b, s, h, d]`` projection) and the token-major ``[batch, seq, heads, head_dim]``; 3-D tensors
#: drop the batch dim (``[heads, seq, d]`` / ``[tokens, heads, d]``).
QK_LAYOUTS = ("bhsd", "bshd")
#: Largest head_dim accepted (the compile check builds up to it).
MAX_HEAD_DIM = 512
#: Elements of q/k per program tile, at most: 4096 16-bit elements over 8 warps is 16 per thread.
TILE_ELEMS = 4096

# Position sources (constexpr POS_MODE).
_POS_SEQ = 0  # token (b, s) uses table row s
_POS_IDS = 1  # table row read from position_ids[b, s]
_POS_ROW = 2  # per-token tables [b, s, w]: token (b, s) uses its own row


# ----------------------------------------------------------------------------------------------------
# Layer 1: kernel
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _table_pairs(ptr, off, i, mi, HALF: tl.constexpr, GPTJ: tl.constexpr, HALF_TABLE: tl.constexpr):
    """A token's table entries for each pair's first and second channel, as fp32 ``[1, HALF_BLOCK]``."""
    if HALF_TABLE:
        t1 = tl.load(ptr + off + i, mask=mi, other=0.0, eviction_policy="evict_last").to(tl.float32)
        t2 = t1
    elif GPTJ:
        j = tl.arange(0, 2)[None, None, :]
        t = tl.load(ptr + off + 2 * i[:, :, None] + j, mask=mi[:, :, None], other=0.0, eviction_policy="evict_last")
        t1, t2 = tl.split(t.to(tl.float32))
    else:
        t1 = tl.load(ptr + off + i, mask=mi, other=0.0, eviction_policy="evict_last").to(tl.float32)
        t2 = tl.load(ptr + off + HALF + i, mask=mi, other=0.0, eviction_policy="evict_last").to(tl.float32)
    return t1, t2


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr, pos_ptr, qo_ptr, ko_ptr,
    seq, n_q_heads, n_heads, n_table_rows,
    sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sqo_b, sqo_s, sqo_h, sko_b, sko_s, sko_h,
    sc_b, sc_s, ss_b, ss_s, sp_b, sp_s,
    HEAD_DIM: tl.constexpr, ROT: tl.constexpr, HALF_BLOCK: tl.constexpr, PASS_BLOCK: tl.constexpr,
    HB: tl.constexpr, GPTJ: tl.constexpr, HALF_TABLE: tl.constexpr, POS_MODE: tl.constexpr,
    BACKWARD: tl.constexpr, COPY_PASS: tl.constexpr, EXACT_BF16: tl.constexpr,
):
    HALF: tl.constexpr = ROT // 2
    PASS: tl.constexpr = HEAD_DIM - ROT
    DTYPE: tl.constexpr = q_ptr.dtype.element_ty
    # int64 offsets: token x token stride passes 2^31 elements at e.g. 65536 tokens x 40 heads x 1024.
    tok = tl.program_id(0).to(tl.int64)
    b = tok // seq
    s = tok % seq

    # This token's table row. An out-of-range position makes the token's output NaN (checked here: a host
    # check would cost a device sync per call).
    if POS_MODE == 1:
        pos = tl.load(pos_ptr + b * sp_b + s * sp_s).to(tl.int64)
        pos_ok = (pos >= 0) & (pos < n_table_rows)
        pos = tl.where(pos_ok, pos, 0)
        c_off = pos * sc_s
        s_off = pos * ss_s
    elif POS_MODE == 2:
        c_off = b * sc_b + s * sc_s
        s_off = b * ss_b + s * ss_s
    else:
        c_off = s * sc_s
        s_off = s * ss_s
    i = tl.arange(0, HALF_BLOCK)[None, :]
    mi = i < HALF
    c1, c2 = _table_pairs(cos_ptr, c_off, i, mi, HALF, GPTJ, HALF_TABLE)
    s1, s2 = _table_pairs(sin_ptr, s_off, i, mi, HALF, GPTJ, HALF_TABLE)

    # Heads of this program: q heads first, then k heads; each row of the tile picks its tensor.
    g = tl.program_id(1).to(tl.int64) * HB + tl.arange(0, HB)[:, None]
    is_q = g < n_q_heads
    h_ok = g < n_heads
    qh = tl.where(is_q, g, 0)
    kh = tl.where(is_q, 0, g - n_q_heads)
    src = tl.where(is_q, q_ptr + (b * sq_b + s * sq_s + qh * sq_h), k_ptr + (b * sk_b + s * sk_s + kh * sk_h))
    dst = tl.where(is_q, qo_ptr + (b * sqo_b + s * sqo_s + qh * sqo_h),
                   ko_ptr + (b * sko_b + s * sko_s + kh * sko_h))
    m = h_ok & mi
    if GPTJ:
        j = tl.arange(0, 2)[None, None, :]
        pair = 2 * i[:, :, None] + j
        xa, xb = tl.split(tl.load(src[:, :, None] + pair, mask=m[:, :, None], other=0.0).to(tl.float32))
    else:
        xa = tl.load(src + i, mask=m, other=0.0).to(tl.float32)
        xb = tl.load(src + HALF + i, mask=m, other=0.0).to(tl.float32)
    if BACKWARD:
        ya = xa * c1 + xb * s2
        yb = xb * c2 - xa * s1
    else:
        ya = xa * c1 - xb * s1
        yb = xb * c2 + xa * s2
    if POS_MODE == 1:
        ya = tl.where(pos_ok, ya, float("nan"))
        yb = tl.where(pos_ok, yb, float("nan"))
    ya = _rounded(ya, DTYPE, EXACT_BF16)
    yb = _rounded(yb, DTYPE, EXACT_BF16)
    if GPTJ:
        tl.store(dst[:, :, None] + pair, tl.join(ya, yb).to(qo_ptr.dtype.element_ty), mask=m[:, :, None])
    else:
        tl.store(dst + i, ya.to(qo_ptr.dtype.element_ty), mask=m)
        tl.store(dst + HALF + i, yb.to(qo_ptr.dtype.element_ty), mask=m)
    if COPY_PASS:
        if PASS > 0:
            kk = tl.arange(0, PASS_BLOCK)[None, :]
            mp = h_ok & (kk < PASS)
            p = tl.load(src + ROT + kk, mask=mp, other=0.0)
            if POS_MODE == 1:
                p = tl.where(pos_ok, p.to(tl.float32), float("nan"))
            tl.store(dst + ROT + kk, p.to(qo_ptr.dtype.element_ty), mask=mp)


# ----------------------------------------------------------------------------------------------------
# Layer 2: configuration heuristic and launcher
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoPEConfig:
    HALF_BLOCK: int
    PASS_BLOCK: int
    HB: int
    num_warps: int


def pick_config(n_tokens: int, n_q_heads: int, n_k_heads: int, head_dim: int, rot: int | None = None,
                copy_pass: bool = True, n_sms: int = 132) -> RoPEConfig:
    """Tile shape and warps. Pure: depends only on its arguments.

    * ``HB`` heads per program, at most TILE_ELEMS elements per tile; among the four largest powers of two
      that fit, the one that leaves the fewest masked head slots for ``n_q_heads + n_k_heads`` (40 heads of
      128 take 5 blocks of 8, not 2 of 32 with 24 empty);
    * smaller blocks while there would be fewer than 2 programs per SM (decode steps);
    * about 16 elements per thread: a power of two from 1 to 8 warps.
    """
    rot = head_dim if rot is None else rot
    half_block = next_power_of_2(rot // 2)
    has_pass = copy_pass and head_dim > rot
    pass_block = next_power_of_2(head_dim - rot) if has_pass else 1
    per_head = 2 * half_block + (pass_block if has_pass else 0)
    n_heads = max(1, n_q_heads + n_k_heads)
    top = min(prev_power_of_2(TILE_ELEMS // per_head), next_power_of_2(n_heads))
    cands = [top >> i for i in range(4) if top >> i >= 1]
    hb = min(cands, key=lambda h: (cdiv(n_heads, h) * h, -h))
    while hb > 1 and n_tokens * cdiv(n_heads, hb) < 2 * n_sms:
        hb //= 2
    num_warps = prev_power_of_2(min(8, max(1, hb * per_head // (32 * 16))))
    return RoPEConfig(half_block, pass_block, hb, num_warps)


def _as_4d(t: torch.Tensor, bshd: bool) -> torch.Tensor:
    """``t`` as ``[B, S, H, D]`` (a view; strides kept)."""
    if t.dim() == 3:
        t = t.unsqueeze(0)
    return t if bshd else t.transpose(1, 2)


def _norm_tables(cos: torch.Tensor, sin: torch.Tensor, batch: int, seq: int, bshd: bool,
                 position_ids: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """cos/sin as ``[rows, w]`` tables (modes SEQ/IDS) or per-token ``[batch, seq, w]`` tables (mode ROW),
    views of the given ones. Validated inputs only (see ``_check_tables``)."""
    if cos.dim() == 4:  # [b, 1, s, w] (bhsd) or [b, s, 1, w] (bshd): the broadcast heads dim
        cos, sin = (cos[:, :, 0], sin[:, :, 0]) if bshd else (cos[:, 0], sin[:, 0])
    if cos.dim() == 3:
        if cos.shape[0] == 1:
            cos, sin = cos[0], sin[0]
        else:
            return cos, sin, _POS_ROW
    return cos, sin, (_POS_IDS if position_ids is not None else _POS_SEQ)


def _check_tables(cos, sin, q, batch, seq, bshd, position_ids):
    if cos.shape != sin.shape:
        raise ShapeError(f"cos has shape {tuple(cos.shape)} but sin has shape {tuple(sin.shape)}")
    if cos.dim() not in (2, 3, 4):
        raise ShapeError(f"cos/sin must be [rows, w], [1, rows, w], per-token [batch, seq, w] or "
                         f"[batch, 1, seq, w] tables, got shape {tuple(cos.shape)}")
    if cos.dim() == 4:
        hd = 2 if bshd else 1
        if cos.shape[hd] != 1:
            raise ShapeError(f"4-D cos/sin must have a size-1 heads dim (dim {hd} for qk_layout="
                             f"{'bshd' if bshd else 'bhsd'}), got shape {tuple(cos.shape)}")
    c3, _, mode = _norm_tables(cos, sin, batch, seq, bshd, position_ids)
    layout = f"read as {'[batch, seq, heads, d]' if bshd else '[batch, heads, seq, d]'}; check qk_layout"
    if mode == _POS_ROW:
        if position_ids is not None:
            raise ShapeError(f"per-token cos/sin tables of shape {tuple(cos.shape)} already encode the positions; "
                             "do not pass position_ids with them (or pass [rows, w] tables)")
        if tuple(c3.shape[:2]) != (batch, seq):
            raise ShapeError(f"per-token cos/sin have shape {tuple(cos.shape)}, expected [{batch} or 1, {seq}, w] "
                             f"for q of shape {tuple(q.shape)} (batch={batch}, seq={seq}, {layout})")
    elif cos.dim() > 2 and position_ids is None and c3.shape[0] != seq:
        # [1, s, w] is Hugging Face's per-token table of batch 1: its seq must be q's (a mismatch is most
        # often q passed in the other dim order). Longer tables indexed from row 0 are [rows, w].
        raise ShapeError(f"per-token cos/sin have shape {tuple(cos.shape)}, expected seq={seq} for q of shape "
                         f"{tuple(q.shape)} ({layout}); pass a 2-D [rows, w] table to index a longer one")
    elif position_ids is None and c3.shape[0] < seq:
        raise ShapeError(f"cos/sin have {c3.shape[0]} rows but q has seq={seq} positions; pass a longer table, "
                         "position_ids, or check qk_layout")


def _rot_dim(table_width: int, head_dim: int, rotary_dim: Optional[int], half_width_tables: bool) -> int:
    rot_t = 2 * table_width if half_width_tables else table_width
    what = (f"cos/sin have {table_width} columns"
            + (" (one per pair: half_width_tables=True)" if half_width_tables else ""))
    if rotary_dim is None:
        if rot_t == head_dim:
            return rot_t
        if rot_t < head_dim:
            raise ShapeError(f"{what} but head_dim is {head_dim}: ambiguous. Pass rotary_dim={rot_t} to rotate "
                             f"only the first {rot_t} channels of each head (partial rotary), or "
                             "half_width_tables=True if the tables hold one value per channel pair")
        raise ShapeError(f"{what}, more than head_dim={head_dim}")
    rotary_dim = V.check_int(rotary_dim, "rotary_dim")  # numpy/torch integers too; 32.0 or "32" are refused
    if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
        raise ShapeError(f"rotary_dim={rotary_dim} must be a positive even number <= head_dim={head_dim}")
    if rot_t != rotary_dim:
        need = rotary_dim // 2 if half_width_tables else rotary_dim
        hint = ("; pass half_width_tables=True if they hold one value per channel pair"
                if not half_width_tables and 2 * table_width == rotary_dim else "")
        raise ShapeError(f"{what}; rotary_dim={rotary_dim} needs {need}{hint}")
    return rotary_dim


class _Plan:
    """A validated launch: everything but the tensors' addresses, fixed by the call's signature."""

    __slots__ = ("launch", "ints", "q_out", "k_out", "inplace", "has_k", "pos_mode", "tests")

    def __init__(self, launch, ints, q_out, k_out, inplace, has_k, pos_mode, tests):
        self.launch, self.ints, self.q_out, self.k_out = launch, ints, q_out, k_out
        self.inplace, self.has_k, self.pos_mode, self.tests = inplace, has_k, pos_mode, tests

    def __call__(self, q, k, cos, sin, position_ids, q_out=None, k_out=None):
        if self.inplace:
            qo, ko = q, k
        else:
            qo = q_out if q_out is not None else torch.empty_strided(*self.q_out, dtype=q.dtype, device=q.device)
            ko = None
            if self.has_k:
                ko = k_out if k_out is not None else torch.empty_strided(*self.k_out, dtype=q.dtype,
                                                                         device=q.device)
        if self.launch is not None:
            kk, kko = (k, ko) if self.has_k else (q, qo)
            self.launch(q, kk, cos, sin, position_ids if self.pos_mode == _POS_IDS else q, qo, kko, *self.ints)
            if self.inplace or q_out is not None or k_out is not None:
                mark_written(qo, ko)
        return qo, ko


def _out_layout(t: torch.Tensor) -> tuple[tuple, tuple]:
    """(shape, strides) of the output allocated for input ``t``: ``empty_like``'s choice (t's own dim order,
    dense), fixed by t's shape and strides."""
    e = torch.empty_like(t, device="meta")
    return tuple(e.shape), tuple(e.stride())


def _make_plan(q, k, cos, sin, position_ids, gptj, rotary_dim, inplace, half_width_tables, bshd, backward=False,
               tests=(), q_out=None, k_out=None) -> _Plan:
    """Plan a launch on validated inputs. ``q_out``/``k_out``: given output buffers (the custom ops'), else the
    plan allocates ``empty_like``-shaped ones per call (or writes q and k in place)."""
    has_k = k is not None
    q_lay = _out_layout(q)
    k_lay = _out_layout(k) if has_k else None
    q4 = _as_4d(q, bshd)
    batch, seq, hq, head_dim = q4.shape
    k4 = _as_4d(k, bshd) if has_k else None
    hk = k4.shape[2] if has_k else 0
    c2, s2, mode = _norm_tables(cos, sin, batch, seq, bshd, position_ids)
    rot = _rot_dim(c2.shape[-1], head_dim, rotary_dim, half_width_tables)
    n_tokens = batch * seq
    if n_tokens == 0 or hq + hk == 0 or head_dim == 0:
        return _Plan(None, (), q_lay, k_lay, inplace, has_k, mode, ())
    if inplace:
        qo4, ko4 = q4, k4
    else:
        qo4 = _as_4d(q_out if q_out is not None else torch.empty_strided(*q_lay, device="meta"), bshd)
        ko4 = None
        if has_k:
            ko4 = _as_4d(k_out if k_out is not None else torch.empty_strided(*k_lay, device="meta"), bshd)
    if not has_k:
        k4, ko4 = q4, qo4
    spb = sps = 0
    if mode == _POS_IDS:
        p = position_ids
        if p.dim() == 2 and p.shape[0] == 1:
            p = p[0]
        if p.dim() == 2:
            spb, sps = p.stride(0), p.stride(1)
        else:
            sps = p.stride(0)
    scb, scs = (c2.stride(0), c2.stride(1)) if mode == _POS_ROW else (0, c2.stride(0))
    ssb, sss = (s2.stride(0), s2.stride(1)) if mode == _POS_ROW else (0, s2.stride(0))
    if mode == _POS_ROW and c2.shape[0] == 1:
        scb = ssb = 0
    copy_pass = not inplace
    cfg = pick_config(n_tokens, hq, hk, head_dim, rot, copy_pass, num_sms(q.device))
    n_heads = hq + hk
    exact_bf16 = interpreter_enabled() and q.dtype == torch.bfloat16
    launch = KernelLaunch(
        _rope_kernel, (n_tokens, cdiv(n_heads, cfg.HB)),
        dict(HEAD_DIM=head_dim, ROT=rot, HALF_BLOCK=cfg.HALF_BLOCK, PASS_BLOCK=cfg.PASS_BLOCK, HB=cfg.HB,
             GPTJ=bool(gptj), HALF_TABLE=bool(half_width_tables), POS_MODE=mode, BACKWARD=bool(backward),
             COPY_PASS=copy_pass, EXACT_BF16=exact_bf16),
        num_warps=cfg.num_warps)

    def bsh(t4):  # strides of batch, seq, heads; batch stride 0 when there is one batch
        return (t4.stride(0) if t4.shape[0] > 1 else 0), t4.stride(1), t4.stride(2)

    ints = (seq, hq, n_heads, c2.shape[0] if mode != _POS_ROW else c2.shape[1],
            *bsh(q4), *bsh(k4), *bsh(qo4), *bsh(ko4), scb, scs, ssb, sss, spb, sps)
    # Every tensor the kernel reads is a view of the caller's (no copies), so the plan holds for any call
    # of this signature.
    return _Plan(launch, ints, q_lay, k_lay, inplace, has_k, mode, tests)


def _launch(q, k, cos, sin, position_ids, gptj, rotary_dim, half_width_tables, bshd, backward, inplace,
            q_out=None, k_out=None) -> None:
    """Launch on validated inputs through a plan kept per signature (the custom ops' path: torch.compile
    graphs and autograd call the op through it)."""
    key = (tensor_key(q, k, cos, sin, position_ids, q_out, k_out), gptj, rotary_dim, half_width_tables, bshd,
           backward, inplace)
    plan = _op_plans.get(key)
    if plan is None:
        plan = _op_plans.put(key, _make_plan(q, k, cos, sin, position_ids, gptj, rotary_dim, inplace,
                                             half_width_tables, bshd, backward, q_out=q_out, k_out=k_out))
    plan(q, k, cos, sin, position_ids, q_out, k_out)


_op_plans = PlanCache("rope/op")


# ----------------------------------------------------------------------------------------------------
# Layer 3: torch.library custom ops (work under torch.compile(fullgraph=True) and CUDA graphs)
# ----------------------------------------------------------------------------------------------------
def _empty_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t)  # t's dim order, dense: the layout _out_layout gives the eager plans


def _rope_impl(q, k, cos, sin, position_ids, gptj, rotary_dim, half_width_tables, bshd, backward):
    qo, ko = _empty_like(q), _empty_like(k)
    _launch(q, k, cos, sin, position_ids, gptj, rotary_dim, half_width_tables, bshd, backward, False, qo, ko)
    return qo, ko


def _rope_q_impl(q, cos, sin, position_ids, gptj, rotary_dim, half_width_tables, bshd, backward):
    qo = _empty_like(q)
    _launch(q, None, cos, sin, position_ids, gptj, rotary_dim, half_width_tables, bshd, backward, False, qo)
    return qo


@torch.library.custom_op("triton_ops::rope", mutates_args=())
def _rope_op(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             position_ids: Optional[torch.Tensor], gptj: bool, rotary_dim: int, half_width_tables: bool,
             bshd: bool, backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _rope_impl(q, k, cos, sin, position_ids, gptj, rotary_dim, half_width_tables, bshd, backward)


@_rope_op.register_fake
def _(q, k, cos, sin, position_ids, gptj, rotary_dim, half_width_tables, bshd, backward):
    return _empty_like(q), _empty_like(k)


@torch.library.custom_op("triton_ops::rope_q", mutates_args=())
def _rope_q_op(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, position_ids: Optional[torch.Tensor],
               gptj: bool, rotary_dim: int, half_width_tables: bool, bshd: bool, backward: bool) -> torch.Tensor:
    return _rope_q_impl(q, cos, sin, position_ids, gptj, rotary_dim, half_width_tables, bshd, backward)


@_rope_q_op.register_fake
def _(q, cos, sin, position_ids, gptj, rotary_dim, half_width_tables, bshd, backward):
    return _empty_like(q)


@torch.library.custom_op("triton_ops::rope_", mutates_args=("q", "k"))
def _rope_inplace_op(q: torch.Tensor, k: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                     position_ids: Optional[torch.Tensor], gptj: bool, rotary_dim: int, half_width_tables: bool,
                     bshd: bool) -> None:
    _launch(q, k, cos, sin, position_ids, gptj, rotary_dim, half_width_tables, bshd, False, True)


@_rope_inplace_op.register_fake
def _(q, k, cos, sin, position_ids, gptj, rotary_dim, half_width_tables, bshd):
    return None


# Backward: the same kernel with BACKWARD=True applies the transposed rotation to the incoming gradients
# (fused, one launch for q and k). Gradients of the cos/sin tables, needed only when a table requires grad,
# come from PyTorch autograd of the unfused reference.
def _grad_input(g, shape, like):
    """An incoming gradient as the kernel takes it: zeros for an output the loss did not use, and a
    contiguous copy when its last dim is strided (e.g. the expanded ones of ``y.sum()``)."""
    if g is None:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return g if g.stride(-1) == 1 or g.shape[-1] == 1 else g.contiguous()


def _setup(ctx, q, k, cos, sin, position_ids, gptj, rot, half, bshd, backward):
    ctx.args = (gptj, rot, half, bshd, backward)
    ctx.shapes = (q.shape, None if k is None else k.shape)
    ctx.table_grad = cos.requires_grad or sin.requires_grad
    ctx.has_k = k is not None
    if ctx.table_grad:
        ctx.save_for_backward(cos, sin, position_ids, q, k)
    else:
        ctx.save_for_backward(cos, sin, position_ids)


def _table_grads(ctx, gq, gk):
    cos, sin, pos, q, k = ctx.saved_tensors
    gptj, rot, half, bshd, backward = ctx.args
    with torch.enable_grad():
        c = cos.detach().requires_grad_(cos.requires_grad)
        s = sin.detach().requires_grad_(sin.requires_grad)
        yq, yk = rope_reference(q.detach(), None if k is None else k.detach(), c, s, position_ids=pos,
                                rotary_layout="gptj" if gptj else "neox", rotary_dim=rot, half_width_tables=half,
                                qk_layout="bshd" if bshd else "bhsd", transpose=backward)
        outs = [yq] + ([yk] if k is not None else [])
        grads = [gq] + ([gk] if k is not None else [])
        wanted = [t for t in (c, s) if t.requires_grad]
        got = iter(torch.autograd.grad(outs, wanted, grads, allow_unused=True))
    gc = next(got) if c.requires_grad else None
    gs = next(got) if s.requires_grad else None
    return gc, gs


def _backward_tensors(ctx, gq, gk):
    cos, sin, pos = ctx.saved_tensors[:3]
    gptj, rot, half, bshd, backward = ctx.args
    like = gq if gq is not None else gk
    gq = _grad_input(gq, ctx.shapes[0], like)
    gk = _grad_input(gk, ctx.shapes[1], like) if ctx.has_k else None
    if eager_backward(gq, gk, cos, sin, pos):  # an eager backward: the implementation itself
        dq, dk = (_rope_impl(gq, gk, cos, sin, pos, gptj, rot, half, bshd, not backward) if ctx.has_k else
                  (_rope_q_impl(gq, cos, sin, pos, gptj, rot, half, bshd, not backward), None))
    else:  # traced, or a double backward (the rotation is linear: its backward is the op again)
        dq, dk = _call(gq, gk, cos, sin, pos, gptj, rot, half, bshd, not backward)
    gc = gs = None
    if ctx.table_grad:
        gc, gs = _table_grads(ctx, gq, gk)
    return dq, dk, gc, gs


def _setup_qk(ctx, inputs, output):
    _setup(ctx, *inputs)


def _backward_qk(ctx, gq, gk):
    dq, dk, gc, gs = _backward_tensors(ctx, gq, gk)
    return dq, dk, gc, gs, None, None, None, None, None, None


def _setup_q(ctx, inputs, output):
    q, cos, sin, position_ids, gptj, rot, half, bshd, backward = inputs
    _setup(ctx, q, None, cos, sin, position_ids, gptj, rot, half, bshd, backward)


def _backward_q(ctx, gq):
    dq, _, gc, gs = _backward_tensors(ctx, gq, None)
    return dq, gc, gs, None, None, None, None, None, None


_rope_op.register_autograd(_backward_qk, setup_context=_setup_qk)
_rope_q_op.register_autograd(_backward_q, setup_context=_setup_q)


def _call(q, k, cos, sin, position_ids, gptj, rot, half, bshd, backward):
    """The out-of-place rotation with autograd: ``(q_out, k_out or None)``. Eager training records
    launch.EagerAutograd (the same implementation and formula without the custom op's dispatch layers);
    tracing and tensor subclasses go through the custom ops."""
    if eager_autograd(q, k, cos, sin, position_ids):
        if k is None:
            return EagerAutograd.apply(_rope_q_impl, _setup_q, _backward_q, q, cos, sin, position_ids, gptj, rot,
                                       half, bshd, backward), None
        return EagerAutograd.apply(_rope_impl, _setup_qk, _backward_qk, q, k, cos, sin, position_ids, gptj, rot,
                                   half, bshd, backward)
    if k is None:
        return torch.ops.triton_ops.rope_q(q, cos, sin, position_ids, gptj, rot, half, bshd, backward), None
    return torch.ops.triton_ops.rope(q, k, cos, sin, position_ids, gptj, rot, half, bshd, backward)


# ----------------------------------------------------------------------------------------------------
# Layer 4: functional API
# ----------------------------------------------------------------------------------------------------
_plans = PlanCache("rope")
_ARGS = ("q", "k", "cos", "sin", "position_ids")


def _validate(q, k, cos, sin, position_ids, rotary_layout, rotary_dim, inplace, half_width_tables, qk_layout):
    V.check_tensor(q, "q")
    V.check_tensor(cos, "cos")
    V.check_tensor(sin, "sin")
    # optional tensors are checked for what they are before anything reads their device or shape
    V.check_is_tensor_or_none(k, "k")
    V.check_is_tensor_or_none(position_ids, "position_ids")
    V.check_choice(rotary_layout, "rotary_layout", LAYOUTS)
    V.check_choice(qk_layout, "qk_layout", QK_LAYOUTS)
    for name, flag in (("inplace", inplace), ("half_width_tables", half_width_tables)):
        if not isinstance(flag, bool):
            raise InvalidArgumentError(f"{name} must be a bool, got {flag!r}")
    V.check_dtype(q, "q", V.FLOAT_DTYPES)
    V.check_ndim(q, "q", (3, 4))
    if k is not None:
        V.check_tensor(k, "k")
        V.check_dtype(k, "k", (q.dtype,))
        V.check_ndim(k, "k", (q.dim(),))
    device = V.check_same_device({"q": q, "k": k, "cos": cos, "sin": sin, "position_ids": position_ids})
    V.check_runnable_device(device, "q")
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        if t is not None:
            V.check_last_dim_contiguous(t, name)
    V.check_dtype(cos, "cos", (q.dtype, torch.float32))
    V.check_same_dtype({"cos": cos, "sin": sin})
    bshd = qk_layout == "bshd"
    q4 = _as_4d(q, bshd)
    batch, seq, _, head_dim = q4.shape
    dims = "[batch, seq, heads, head_dim]" if bshd else "[batch, heads, seq, head_dim]"
    if head_dim > MAX_HEAD_DIM:
        raise ShapeError(f"head_dim={head_dim} exceeds the supported maximum {MAX_HEAD_DIM}")
    if k is not None:
        k4 = _as_4d(k, bshd)
        if (k4.shape[0], k4.shape[1], k4.shape[3]) != (batch, seq, head_dim):
            raise ShapeError(f"k has shape {tuple(k.shape)}, q has {tuple(q.shape)}: with qk_layout={qk_layout!r} "
                             f"({dims}) they must agree in batch, seq and head_dim (heads may differ)")
    if position_ids is not None:
        V.check_tensor(position_ids, "position_ids")
        V.check_dtype(position_ids, "position_ids", (torch.int32, torch.int64))
        if tuple(position_ids.shape) not in ((seq,), (1, seq), (batch, seq)):
            raise ShapeError(f"position_ids has shape {tuple(position_ids.shape)}; expected ({seq},) or "
                             f"({batch}, {seq}) for q of shape {tuple(q.shape)} read as {dims} "
                             f"(qk_layout={qk_layout!r})")
    _check_tables(cos, sin, q, batch, seq, bshd, position_ids)
    c2, _, _ = _norm_tables(cos, sin, batch, seq, bshd, position_ids)
    rot = _rot_dim(c2.shape[-1], head_dim, rotary_dim, half_width_tables)
    tests = ()
    if inplace:
        tests = V.check_writes({"q": q, "k": k}, {"cos": cos, "sin": sin, "position_ids": position_ids}, set())
    return rot, bshd, tests


def apply_rope(q: torch.Tensor, k: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor, *,
               position_ids: Optional[torch.Tensor] = None, rotary_layout: str = "neox",
               rotary_dim: Optional[int] = None, inplace: bool = False, half_width_tables: bool = False,
               qk_layout: str = "bhsd"):
    """Rotary position embedding of q and k, both in one kernel launch.

    Args:
        q: ``[batch, heads, seq, head_dim]`` (``qk_layout="bhsd"``, the default: what Hugging Face's
            ``apply_rotary_pos_emb`` receives, including the transposed view of a ``[b, s, h, d]``
            projection) or ``[batch, seq, heads, head_dim]`` (``qk_layout="bshd"``); 3-D tensors drop the
            batch dim (``[heads, seq, d]`` / ``[tokens, heads, d]``). fp16, bf16 or fp32; any strides with a
            contiguous last dim.
        k: like q, same dtype, batch, seq and head_dim; its head count may differ (GQA/MQA). None rotates q
            only.
        cos, sin: tables in the layout's convention, fp32 or q's dtype, shaped ``[rows, w]``, ``[1, rows, w]``,
            per-token ``[batch, seq, w]`` (what Hugging Face's rotary embedding returns; batch 1 is broadcast)
            or ``[batch, 1, seq, w]``. Without ``position_ids`` token ``s`` uses row ``s`` (per-token tables:
            its own row).
        position_ids: int ``[seq]`` or ``[batch, seq]``: the table row of each token (decoding with a KV
            cache). A position outside the table makes that token's output NaN.
        rotary_layout: ``"neox"`` (rotate-half: channel ``i`` pairs with ``i + rot/2``; tables hold
            ``cat(f, f)``) or ``"gptj"`` (interleaved: ``2i`` with ``2i + 1``; tables hold
            ``repeat_interleave(f, 2)``).
        rotary_dim: rotate only the first ``rotary_dim`` channels of each head (partial rotary); the rest pass
            through. Without it the table width must equal head_dim: a narrower table is ambiguous and raises.
        inplace: write the result into q and k and return them.
        half_width_tables: the tables hold one value per channel pair (``w = rotary_dim / 2``, the vLLM /
            GPT-J convention) instead of one per channel.
        qk_layout: ``"bhsd"`` or ``"bshd"``, the dim order of q and k (see q).

    Returns:
        ``(q_out, k_out)``: new tensors of q's and k's shapes and dim order (``k_out`` is None when k is);
        q and k themselves with ``inplace=True``. Math in fp32, rounded once to q's dtype.

    Differentiable with respect to q and k (the backward is the same kernel rotating by -angle) and to the
    tables when they require grad.
    """
    # a rotary_dim that is not a plain int, or a flag that is not a bool, never takes a plan (32.0 == 32 and
    # 1 == True as dict keys: the call would find the plan of the valid value and skip the check)
    strict = type(rotary_dim) in (int, type(None)) and type(inplace) is bool and type(half_width_tables) is bool
    akey = None
    if strict and not inplace and eager_autograd(q, k, cos, sin, position_ids):
        # Eager training: a repeated signature skips the checks (they resolve the rotary width and the
        # layout flags only) and records the implementation directly
        akey = (autograd_key(q, k, cos, sin, position_ids), rotary_layout, rotary_dim, half_width_tables, qk_layout)
        resolved = _grad_calls.get(akey)
        if resolved is not None:
            gptj, rot, bshd = resolved
            return _call(q, k, cos, sin, position_ids, gptj, rot, half_width_tables, bshd, False)
    key = plan_key(q, k, cos, sin, position_ids) if strict else None
    if key is not None:
        key = (key, rotary_layout, rotary_dim, inplace, half_width_tables, qk_layout)
        plan = _plans.get(key)
        if plan is not None and (not plan.tests or V.writes_apart(plan.tests, (q, k, cos, sin, position_ids))):
            return plan(q, k, cos, sin, position_ids)
    rot, bshd, tests = _validate(q, k, cos, sin, position_ids, rotary_layout, rotary_dim, inplace,
                                 half_width_tables, qk_layout)
    gptj = rotary_layout == "gptj"
    if key is not None:
        idx = {n: i for i, n in enumerate(_ARGS)}
        tests = tuple((idx[a], idx[b], t) for a, b, t in tests)
        plan = _make_plan(q, k, cos, sin, position_ids, gptj, rot, inplace, half_width_tables, bshd, tests=tests)
        _plans.put(key, plan)
        return plan(q, k, cos, sin, position_ids)
    if inplace:
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, cos, sin)):
            raise InvalidArgumentError("apply_rope(inplace=True) cannot be differentiated; use inplace=False")
        torch.ops.triton_ops.rope_(q, k, cos, sin, position_ids, gptj, rot, half_width_tables, bshd)
        return q, k
    if akey is not None:
        _grad_calls.put(akey, (gptj, rot, bshd))
    return _call(q, k, cos, sin, position_ids, gptj, rot, half_width_tables, bshd, False)


#: Eager training calls of apply_rope: (gptj, rotary width, bshd) as the checks resolved them per signature.
_grad_calls = PlanCache("rope/autograd")


def rope_reference(q, k, cos, sin, *, position_ids=None, rotary_layout="neox", rotary_dim=None,
                   half_width_tables=False, qk_layout="bhsd", transpose=False):
    """Unfused PyTorch reference (fp32 math, or float64 for float64 inputs) with :func:`apply_rope`'s
    arguments; ``transpose=True`` applies the backward (transposed) rotation. Returns ``(q_out, k_out)``."""
    bshd = qk_layout == "bshd"
    q4 = _as_4d(q, bshd)
    batch, seq, _, head_dim = q4.shape
    c, s, mode = _norm_tables(cos, sin, batch, seq, bshd, position_ids)
    rot = _rot_dim(c.shape[-1], head_dim, rotary_dim, half_width_tables)
    ct = torch.promote_types(q.dtype, torch.float32)
    c, s = c.to(ct), s.to(ct)
    if mode == _POS_ROW:
        ct_, st_ = c.expand(batch, seq, -1), s.expand(batch, seq, -1)
    else:
        if mode == _POS_SEQ:
            idx = torch.arange(seq, device=q.device).expand(batch, seq)
        else:
            idx = position_ids.long().expand(batch, seq)
        ok = (idx >= 0) & (idx < c.shape[0])
        safe = torch.where(ok, idx, 0)
        nan = torch.tensor(float("nan"), dtype=ct, device=q.device)
        ct_ = torch.where(ok[..., None], c[safe], nan)
        st_ = torch.where(ok[..., None], s[safe], nan)
    if half_width_tables:
        if rotary_layout == "neox":
            ct_, st_ = torch.cat([ct_, ct_], -1), torch.cat([st_, st_], -1)
        else:
            ct_, st_ = ct_.repeat_interleave(2, -1), st_.repeat_interleave(2, -1)
    ct_, st_ = ct_.unsqueeze(2), st_.unsqueeze(2)  # [b, s, 1, rot]

    def one(x):
        if x is None:
            return None
        x4 = _as_4d(x, bshd).to(ct)
        xr, xp = x4[..., :rot], x4[..., rot:]
        nanrow = torch.isnan(ct_[..., :1])
        if rotary_layout == "neox":
            h = rot // 2
            a, b = xr[..., :h], xr[..., h:]
            c1, c2, s1, s2 = ct_[..., :h], ct_[..., h:], st_[..., :h], st_[..., h:]
        else:
            a, b = xr[..., 0::2], xr[..., 1::2]
            c1, c2, s1, s2 = ct_[..., 0::2], ct_[..., 1::2], st_[..., 0::2], st_[..., 1::2]
        if transpose:
            ya, yb = a * c1 + b * s2, b * c2 - a * s1
        else:
            ya, yb = a * c1 - b * s1, b * c2 + a * s2
        yr = torch.cat([ya, yb], -1) if rotary_layout == "neox" else torch.stack([ya, yb], -1).flatten(-2)
        xp = torch.where(nanrow, torch.full_like(xp, float("nan")), xp)
        y4 = torch.cat([yr, xp], -1).to(x.dtype)
        y = y4 if bshd else y4.transpose(1, 2)
        return y[0] if x.dim() == 3 else y

    return one(q), one(k)


# ----------------------------------------------------------------------------------------------------
# Compile check: every config pick_config can choose, for each architecture
# ----------------------------------------------------------------------------------------------------
def _compile_variants():
    """(dtype, table dtype, n_tokens, hq, hk, head_dim, rot, gptj, half_table, pos_mode, backward, copy_pass)
    combos: every head_dim class, full and partial rotary, both layouts and table widths, each position mode,
    forward/backward, in place or not, large and decode-sized token counts (which change HB)."""
    out = []
    for t in ("fp16", "bf16", "fp32"):
        for hd, rot in ((64, 64), (80, 80), (96, 96), (128, 128), (128, 64), (256, 256), (256, 64), (512, 512)):
            out.append((t, "fp32", 16384, 32, 8, hd, rot, False, False, _POS_ROW, False, True))
            out.append((t, t, 16384, 32, 8, hd, rot, True, False, _POS_IDS, True, True))
            out.append((t, "fp32", 16384, 40, 40, hd, rot, False, True, _POS_SEQ, False, False))
        out.append((t, "fp32", 1, 32, 8, 128, 128, False, False, _POS_IDS, False, True))  # decode
        out.append((t, "fp32", 4096, 1, 1, 128, 128, True, True, _POS_SEQ, False, False))
    return out


def compile_specs(arch: int):
    from ..compile_check import CompileSpec

    specs = []
    ints = ["seq", "n_q_heads", "n_heads", "n_table_rows", "sq_b", "sq_s", "sq_h", "sk_b", "sk_s", "sk_h",
            "sqo_b", "sqo_s", "sqo_h", "sko_b", "sko_s", "sko_h", "sc_b", "sc_s", "ss_b", "ss_s", "sp_b", "sp_s"]
    for t, ct, n_tok, hq, hk, hd, rot, gptj, half, mode, backward, copy_pass in _compile_variants():
        cfg = pick_config(n_tok, hq, hk, hd, rot, copy_pass)
        sig = {"q_ptr": f"*{t}", "k_ptr": f"*{t}", "cos_ptr": f"*{ct}", "sin_ptr": f"*{ct}", "pos_ptr": "*i64",
               "qo_ptr": f"*{t}", "ko_ptr": f"*{t}"}
        sig.update({n: "i32" for n in ints})
        const = dict(HEAD_DIM=hd, ROT=rot, HALF_BLOCK=cfg.HALF_BLOCK, PASS_BLOCK=cfg.PASS_BLOCK, HB=cfg.HB,
                     GPTJ=gptj, HALF_TABLE=half, POS_MODE=mode, BACKWARD=backward, COPY_PASS=copy_pass,
                     EXACT_BF16=False)
        sig.update({n: "constexpr" for n in const})
        specs.append(CompileSpec(
            _rope_kernel, sig, const, num_warps=cfg.num_warps, num_stages=1,
            aligned=("q_ptr", "k_ptr", "cos_ptr", "sin_ptr", "qo_ptr", "ko_ptr", "sq_s", "sq_h", "sk_s", "sk_h",
                     "sqo_s", "sqo_h", "sko_s", "sko_h", "sc_s", "ss_s"),
            label=f"rope {t} tab={ct} tok={n_tok} hq={hq} hk={hk} hd={hd} rot={rot} gptj={int(gptj)} "
                  f"half={int(half)} pos={mode} bwd={int(backward)} copy={int(copy_pass)} hb={cfg.HB} "
                  f"w={cfg.num_warps}"))
    return specs


__all__ = ["apply_rope", "rope_reference", "pick_config", "RoPEConfig", "compile_specs"]
