"""Training the fused gated MLP: a backward at tensor-core speed, and the choice to save or recompute.

The op is ``H = act(G) * U`` with ``G = x Wg^T + bg`` and ``U = x Wu^T + bu`` (``[M, I]`` each). Its backward
for an incoming ``dH``::

    dG = dH * U * act'(G),   dU = dH * act(G)                  one Triton elementwise kernel (fp32 math)
    dx = dG Wg + dU Wu,  dWg = dG^T x,  dWu = dU^T x,  db = column sums of dG, dU

The four gradient GEMMs run in the input dtype through ``torch.mm`` (cuBLAS; bf16/fp16 on the tensor cores,
accumulating in fp32), on the weights as they are: no fp32 copies. ``dG`` and ``dU`` are written side by
side into one ``[M, 2I]`` buffer, so when the two weights are the halves of one ``[2I, H]`` tensor (the
:class:`~triton_ops.FusedGatedMLP` parameter, Phi-3's packed ``gate_up_proj``) ``dx`` is one GEMM with
``K = 2I`` and one rounding; otherwise it is ``dG Wg`` followed by ``addmm`` of ``dU Wu`` into it (one
extra rounding of the partial sum to the dtype: ~2^-9 relative in bf16).

G and U come from one of two places (``recompute=``, like Liger's and quack's recompute modes):

* ``recompute=False`` (default, :data:`RECOMPUTE`): the forward computes ``[G, U]`` with cuBLAS into one
  ``[M, 2I]`` buffer and ``H`` from it with a Triton elementwise kernel (the fused kernel is not used
  here: it keeps G and U in registers only), and saves ``x`` and that buffer. Without autograd (inference)
  the fused kernel runs as always.
* ``recompute=True``: the forward is the fused kernel; the backward recomputes G and U with two GEMMs
  (``x Wg^T``, ``x Wu^T``) into one ``[M, 2I]`` buffer, which the elementwise kernel then overwrites with
  ``dG, dU`` in place. Saved for the backward: ``x`` only; two more GEMMs per step (activation
  checkpointing of this op).

Bytes and flops per call, bf16 (2 B), at Qwen3-8B's MLP (H = 4096, I = 12288) and M = 8192 tokens
(``MHI`` = 4.1e11; one ``M x H x I`` GEMM is 2 MHI = 0.82 TFLOP):

======================  ===============================  ==========================================
mode                    saved for the backward           backward work
======================  ===============================  ==========================================
recompute=False         x + [G, U]: 2MH + 4MI = 470 MB   4 GEMMs (3.3 TFLOP) + 10 B/elem x MI (1 GB)
recompute=True          x: 2MH = 67 MB                   6 GEMMs (4.9 TFLOP) + 10 B/elem x MI (1 GB)
torch eager (HF MLP)    x, G, silu(G), U: 2MH + 6MI      4 GEMMs + 16 B/elem x MI (mul and silu
                        = 671 MB                         backward, 1.6 GB)
======================  ===============================  ==========================================

(``down_proj`` saves ``H``, 2MI = 201 MB, in every case.) The save mode's forward also writes ``[G, U]``
(4MI = 403 MB) and reads it back for ``H`` (6 B/elem x MI, 0.6 GB) where the fused kernel writes only
``H``. On an H200 (~700 TFLOPS of bf16 GEMM reached, 3.9 TB/s) that predicts, to be measured: gate/up
backward ~4.9 ms (save) vs ~7.3 ms (recompute), forward ~2.6 ms (save) vs ~2.5 ms (fused), against ~90 ms
for the fp32 backward this replaces (fp32 FMA GEMMs at ~60 TFLOPS). Per layer the save mode keeps 201 MB
less than eager and the recompute mode 604 MB less (21.7 GB over 36 layers at this M).

The FP8 module (:meth:`FusedGatedMLP.to_fp8`) is inference only: its weights are e4m3 buffers, not
parameters, and there is no FP8 backward. A forward with autograd recording works (a model run without
``torch.no_grad()``), and the backward raises :class:`~triton_ops.exceptions.UnsupportedError` instead of
silently returning no gradient for the layers before it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ..exceptions import UnsupportedError
from ..launch import KernelLaunch, PlanCache, tensor_key
from ..utils import interpreter_enabled
from ..validation import rows_view
from .gated_mlp import ACTIVATIONS, _activation
from .rmsnorm import _rounded

#: Default of ``recompute=`` in :func:`~triton_ops.fused_gated_mlp`, :class:`~triton_ops.FusedGatedMLP`
#: and :class:`~triton_ops.FusedMLP` (see the module docstring for the trade-off): save the projections,
#: the faster mode, which still keeps less than an eager MLP does.
RECOMPUTE = False
#: Elements per program of the elementwise kernels: 1024 16-bit elements on 4 warps is 8 per thread
#: (one 16-byte load per operand).
TILE_ELEMS = 1024



def _ew_warps(itemsize: int) -> int:
    """4 warps for 16-bit operands (8 elements per thread); 8 for fp32 (4 per thread: at 8, the tanh-GELU
    backward spilled 16 bytes on sm_80 in the compile check)."""
    return 8 if itemsize >= 4 else 4


# ----------------------------------------------------------------------------------------------------
# Elementwise kernels
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _activation_grad(g, ACTIVATION: tl.constexpr):
    """act(g) and act'(g) in fp32, for the activations of gated_mlp._activation (same formulas)."""
    if ACTIVATION == 0:
        s = tl.sigmoid(g)
        a = g * s
        da = s * (1.0 + g * (1.0 - s))
    elif ACTIVATION == 1:
        cdf = 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
        a = g * cdf
        da = cdf + g * tl.exp(-0.5 * g * g) * 0.3989422804014327
    else:
        # act = g * sigmoid(2u), u = c (g + 0.044715 g^3):  act' = s + 2 g s (1 - s) u'
        s = tl.sigmoid(2.0 * 0.7978845608028654 * (g + 0.044715 * g * g * g))
        a = g * s
        da = s + 2.0 * g * s * (1.0 - s) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * g * g)
    return a, da


@triton.jit
def _gated_bwd_kernel(dh_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, M, N, stride_dh, stride_g, stride_u, stride_dg,
                      stride_du, ACTIVATION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      EXACT_BF16: tl.constexpr):
    """One [BLOCK_M, BLOCK_N] tile of ``dG = dH * U * act'(G)``, ``dU = dH * act(G)``; dG/dU may overwrite
    G/U in place (each element is read before it is written, by the same thread)."""
    DTYPE: tl.constexpr = dg_ptr.dtype.element_ty
    # int64 row offsets: rows x row stride passes 2^31 at e.g. 87382 tokens x 2 x 12288
    rows = (tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]
    cols = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N))[None, :]
    m = (rows < M) & (cols < N)
    dh = tl.load(dh_ptr + rows * stride_dh + cols, mask=m, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + rows * stride_g + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + rows * stride_u + cols, mask=m, other=0.0).to(tl.float32)
    a, da = _activation_grad(g, ACTIVATION)
    dg = dh * u * da
    du = dh * a
    if EXACT_BF16:
        dg = _rounded(dg, DTYPE, True)
        du = _rounded(du, DTYPE, True)
    tl.store(dg_ptr + rows * stride_dg + cols, dg.to(DTYPE), mask=m)
    tl.store(du_ptr + rows * stride_du + cols, du.to(DTYPE), mask=m)


@triton.jit
def _act_mul_kernel(g_ptr, u_ptr, h_ptr, M, N, stride_g, stride_u, stride_h, ACTIVATION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EXACT_BF16: tl.constexpr):
    """One [BLOCK_M, BLOCK_N] tile of ``H = act(G) * U`` (the save mode's forward), fp32 math, one rounding."""
    DTYPE: tl.constexpr = h_ptr.dtype.element_ty
    rows = (tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]
    cols = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N))[None, :]
    m = (rows < M) & (cols < N)
    g = tl.load(g_ptr + rows * stride_g + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + rows * stride_u + cols, mask=m, other=0.0).to(tl.float32)
    h = _activation(g, ACTIVATION) * u
    if EXACT_BF16:
        h = _rounded(h, DTYPE, True)
    tl.store(h_ptr + rows * stride_h + cols, h.to(DTYPE), mask=m)


def elementwise_tile(M: int, N: int, elems: int | None = None) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) of the elementwise kernels: ``TILE_ELEMS`` elements, as many columns as the rows
    have (up to all of them), the rest in rows. Pure. The interpreter takes 8x larger tiles (it runs
    programs one after another, each paying its setup)."""
    elems = TILE_ELEMS if elems is None else elems
    bn = min(triton.next_power_of_2(max(N, 1)), elems)
    bm = min(max(1, elems // bn), triton.next_power_of_2(max(M, 1)))
    return bm, bn


def _exact_bf16(t: torch.Tensor) -> bool:
    return interpreter_enabled() and t.dtype == torch.bfloat16


_launches = PlanCache("gated_mlp_elementwise")


def _launch(kernel, tensors: tuple[torch.Tensor, ...], activation: str) -> None:
    """Launch one of the elementwise kernels on 2-D ``[M, N]`` tensors with unit column stride, through a
    launch kept per signature."""
    M, N = tensors[0].shape
    if not (M and N):
        return
    key = (kernel.__name__, tensor_key(*tensors), activation)
    launch = _launches.get(key)
    if launch is None:
        bm, bn = elementwise_tile(M, N, TILE_ELEMS * 8 if interpreter_enabled() else None)
        launch = _launches.put(key, KernelLaunch(
            kernel, (triton.cdiv(M, bm), triton.cdiv(N, bn)),
            dict(ACTIVATION=ACTIVATIONS[activation], BLOCK_M=bm, BLOCK_N=bn, EXACT_BF16=_exact_bf16(tensors[-1])),
            num_warps=_ew_warps(tensors[0].element_size())))
    launch(*tensors, M, N, *(t.stride(0) for t in tensors))


def act_mul(g: torch.Tensor, u: torch.Tensor, activation: str, out: torch.Tensor) -> torch.Tensor:
    """``out = act(g) * u`` for 2-D ``[M, N]`` operands with unit column stride (row-strided views allowed)."""
    _launch(_act_mul_kernel, (g, u, out), activation)
    return out


def gated_grads(dh: torch.Tensor, g: torch.Tensor, u: torch.Tensor, activation: str, dg: torch.Tensor,
                du: torch.Tensor) -> None:
    """``dg = dh * u * act'(g)``, ``du = dh * act(g)`` for 2-D ``[M, N]`` operands with unit column
    stride; ``dg``/``du`` may be ``g``/``u`` themselves."""
    _launch(_gated_bwd_kernel, (dh, g, u, dg, du), activation)


# ----------------------------------------------------------------------------------------------------
# GEMMs (cuBLAS through torch, in the input dtype)
# ----------------------------------------------------------------------------------------------------
def _packed(wg: torch.Tensor, wu: torch.Tensor) -> torch.Tensor | None:
    """``[Wg; Wu]`` as one ``[2I, H]`` view when wu's rows follow wg's in the same storage (no copy)."""
    if wg.stride(1) != 1 or wu.stride() != wg.stride() or wg.untyped_storage().data_ptr() != \
            wu.untyped_storage().data_ptr():
        return None
    if wu.data_ptr() != wg.data_ptr() + wg.shape[0] * wg.stride(0) * wg.element_size():
        return None
    return wg.as_strided((2 * wg.shape[0], wg.shape[1]), wg.stride())


def _projections(x2: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, bg: torch.Tensor | None,
                 bu: torch.Tensor | None) -> torch.Tensor:
    """``[G, U] = x [Wg; Wu]^T (+ [bg, bu])`` as one ``[M, 2I]`` buffer, in the input dtype."""
    M, inter = x2.shape[0], wg.shape[0]
    gu = torch.empty((M, 2 * inter), dtype=x2.dtype, device=x2.device)
    w = _packed(wg, wu)
    if w is not None:
        if bg is None:
            torch.mm(x2, w.t(), out=gu)
        else:
            torch.addmm(torch.cat([bg, bu]), x2, w.t(), out=gu)
        return gu
    for i, (wt, b) in enumerate(((wg, bg), (wu, bu))):
        dst = gu[:, i * inter:(i + 1) * inter]
        if b is None:
            torch.mm(x2, wt.t(), out=dst)
        else:
            torch.addmm(b, x2, wt.t(), out=dst)
    return gu


def gated_mlp_backward(grad_out: torch.Tensor, x: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor,
                       bg: torch.Tensor | None, bu: torch.Tensor | None, gu: torch.Tensor | None,
                       activation: str, need_x: bool = True, need_w: bool = True, need_b: bool = True):
    """``(dx, dWg, dWu, dbg, dbu)`` (None for what is not needed). ``gu`` is the saved ``[M, 2I]``
    ``[G, U]`` buffer, or None to recompute it."""
    inter, hidden = wg.shape
    M = math.prod(x.shape[:-1])
    has_bias = bg is not None
    if M == 0 or inter == 0:
        zx = torch.zeros_like(x) if need_x else None
        zb = (torch.zeros_like(bg), torch.zeros_like(bu)) if need_b and has_bias else (None, None)
        return (zx, torch.zeros_like(wg) if need_w else None, torch.zeros_like(wu) if need_w else None, *zb)
    x2 = rows_view(x)
    dh = grad_out.reshape(M, inter)
    if dh.stride(-1) != 1:
        dh = dh.contiguous()
    if gu is None:
        gu = _projections(x2, wg, wu, bg, bu)
        dgu = gu  # a transient buffer: dG, dU overwrite G, U
    else:
        dgu = torch.empty_like(gu)  # saved by the forward: kept intact (retain_graph, double backward)
    dg, du = dgu[:, :inter], dgu[:, inter:]
    gated_grads(dh, gu[:, :inter], gu[:, inter:], activation, dg, du)
    dx = dwg = dwu = dbg = dbu = None
    if need_x:
        w = _packed(wg, wu)
        if w is not None:
            dx2 = torch.mm(dgu, w)
        else:
            dx2 = torch.addmm(torch.mm(dg, wg), du, wu)
        dx = dx2.view(x.shape)
    if need_w:
        dwg = torch.mm(dg.t(), x2)
        dwu = torch.mm(du.t(), x2)
    if need_b and has_bias:
        # two column sums (not slices of one, which would alias as custom-op outputs), fp32 accumulation
        dbg = dg.sum(0, dtype=torch.float32).to(bg.dtype)
        dbu = du.sum(0, dtype=torch.float32).to(bu.dtype)
    return dx, dwg, dwu, dbg, dbu


# ----------------------------------------------------------------------------------------------------
# Custom ops and autograd formulas
# ----------------------------------------------------------------------------------------------------
def _empty_or(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return t if t is not None else like.new_empty(0)


@torch.library.custom_op("triton_ops::gated_mlp_backward", mutates_args=())
def _gated_mlp_backward_op(grad_out: torch.Tensor, x: torch.Tensor, gate_weight: torch.Tensor,
                           up_weight: torch.Tensor, gate_bias: Optional[torch.Tensor],
                           up_bias: Optional[torch.Tensor], gu: Optional[torch.Tensor], activation: str,
                           need_x: bool, need_w: bool, need_b: bool
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dwg, dwu, dbg, dbu = gated_mlp_backward(grad_out, x, gate_weight, up_weight, gate_bias, up_bias, gu,
                                                activation, need_x, need_w, need_b)
    # a custom op returns tensors: empty ones stand for the gradients not asked for
    bias_like = gate_bias if gate_bias is not None else x
    return (_empty_or(dx, x), _empty_or(dwg, gate_weight), _empty_or(dwu, up_weight), _empty_or(dbg, bias_like),
            _empty_or(dbu, bias_like))


@_gated_mlp_backward_op.register_fake
def _(grad_out, x, gate_weight, up_weight, gate_bias, up_bias, gu, activation, need_x, need_w, need_b):
    def like(t, need):
        return t.new_empty(t.shape if need else (0,))

    has_b = gate_bias is not None
    return (like(x, need_x), like(gate_weight, need_w), like(up_weight, need_w),
            like(gate_bias, need_b) if has_b else x.new_empty(0), like(up_bias, need_b) if has_b else x.new_empty(0))


def _needs(ctx, inputs):
    x, wg, wu, bg, bu = inputs
    ctx.needs = (x.requires_grad, wg.requires_grad, wu.requires_grad,
                 bg is not None and bg.requires_grad, bu is not None and bu.requires_grad)


def _grads(ctx, grad_out, saved_gu):
    x, wg, wu, bg, bu = ctx.saved_tensors[:5]
    nx, nwg, nwu, nbg, nbu = ctx.needs
    if grad_out is None or not any(ctx.needs):
        return None, None, None, None, None
    dx, dwg, dwu, dbg, dbu = torch.ops.triton_ops.gated_mlp_backward(
        grad_out, x, wg, wu, bg, bu, saved_gu, ctx.activation, nx, nwg or nwu, nbg or nbu)
    return (dx if nx else None, dwg if nwg else None, dwu if nwu else None, dbg if nbg else None,
            dbu if nbu else None)


def setup_recompute(ctx, inputs, output):
    """Autograd setup of ``triton_ops::fused_gated_mlp`` (the fused forward): save the inputs only."""
    x, wg, wu, activation, bg, bu = inputs
    ctx.activation = activation
    _needs(ctx, (x, wg, wu, bg, bu))
    ctx.save_for_backward(x, wg, wu, bg, bu)


def backward_recompute(ctx, grad_out):
    """Autograd formula of ``triton_ops::fused_gated_mlp``: G and U recomputed in the backward."""
    dx, dwg, dwu, dbg, dbu = _grads(ctx, grad_out, None)
    return dx, dwg, dwu, None, dbg, dbu


@torch.library.custom_op("triton_ops::gated_mlp_saving", mutates_args=())
def _gated_mlp_saving_op(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor, activation: str,
                         gate_bias: Optional[torch.Tensor],
                         up_bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    inter = gate_weight.shape[0]
    M = math.prod(x.shape[:-1])
    h = x.new_empty((*x.shape[:-1], inter))
    if M == 0 or inter == 0:
        return h, x.new_empty((M, 2 * inter))
    gu = _projections(rows_view(x), gate_weight, up_weight, gate_bias, up_bias)
    act_mul(gu[:, :inter], gu[:, inter:], activation, h.view(M, inter))
    return h, gu


@_gated_mlp_saving_op.register_fake
def _(x, gate_weight, up_weight, activation, gate_bias, up_bias):
    inter = gate_weight.shape[0]
    M = math.prod(x.shape[:-1])
    return x.new_empty((*x.shape[:-1], inter)), x.new_empty((M, 2 * inter))


def _setup_saving(ctx, inputs, output):
    x, wg, wu, activation, bg, bu = inputs
    ctx.activation = activation
    _needs(ctx, (x, wg, wu, bg, bu))
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no [M, 2I] of zeros for the [G, U] output nobody differentiates
    ctx.save_for_backward(x, wg, wu, bg, bu, output[1])


def _backward_saving(ctx, grad_h, grad_gu):
    dx, dwg, dwu, dbg, dbu = _grads(ctx, grad_h, ctx.saved_tensors[5])
    return dx, dwg, dwu, None, dbg, dbu


_gated_mlp_saving_op.register_autograd(_backward_saving, setup_context=_setup_saving)


def gated_mlp_saving(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor, activation: str,
                     gate_bias: torch.Tensor | None, up_bias: torch.Tensor | None) -> torch.Tensor:
    """The gated MLP with ``recompute=False`` on validated arguments: ``[G, U]`` from cuBLAS, kept for the
    backward; returns ``H``."""
    return torch.ops.triton_ops.gated_mlp_saving(x, gate_weight, up_weight, activation, gate_bias, up_bias)[0]


def wants_saving(recompute: bool | None, *tensors: torch.Tensor | None) -> bool:
    """Take the save mode: ``recompute`` is False (None: the module default :data:`RECOMPUTE`) and autograd
    is recording a graph through one of ``tensors`` (inference keeps the fused kernel either way)."""
    if recompute is None:
        recompute = RECOMPUTE
    return not recompute and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ----------------------------------------------------------------------------------------------------
# FP8: inference only
# ----------------------------------------------------------------------------------------------------
#: What to train with instead, per FP8 module (the error names it).
_FP8_TRAIN_WITH = {
    "the FP8 gated MLP": "the bf16/fp16 module (FusedGatedMLP / FusedMLP without fp8)",
    "FP8Linear": "nn.Linear (FP8Linear.from_linear quantizes it for inference)",
}


def _fp8_message(what: str) -> str:
    return (f"{what} is inference only: its e4m3 weights (and bias) are buffers with no FP8 backward. Train with "
            f"{_FP8_TRAIN_WITH.get(what, 'the float module')}, or run the FP8 model under torch.no_grad()")


@torch.library.custom_op("triton_ops::fp8_inference_only", mutates_args=())
def _fp8_inference_only(grad: torch.Tensor, shape: list[int], dtype: torch.dtype, what: str) -> torch.Tensor:
    """Stands for the gradient of x through an FP8 module: raises when a backward really runs. An op
    (not a raise in the autograd formula) so that torch.compile can trace the backward graph, with this
    fake implementation, and the error comes when the compiled backward is executed."""
    raise UnsupportedError(_fp8_message(what))


@_fp8_inference_only.register_fake
def _(grad, shape, dtype, what):
    return grad.new_empty(shape, dtype=dtype)


class _InferenceOnly(torch.autograd.Function):
    """Identity on the FP8 output that ties it to the input ``x`` in the autograd graph, so a backward
    through the FP8 module raises instead of leaving the layers before it without gradients."""

    @staticmethod
    def forward(ctx, out, x, what):
        ctx.x_meta = (list(x.shape), x.dtype, what)
        return out

    @staticmethod
    def backward(ctx, grad):
        shape, dtype, what = ctx.x_meta
        return None, torch.ops.triton_ops.fp8_inference_only(grad, shape, dtype, what), None


def inference_only(out: torch.Tensor, x: torch.Tensor, what: str = "the FP8 gated MLP") -> torch.Tensor:
    """``out`` itself, except that when autograd records through ``x`` its backward raises
    :class:`UnsupportedError` naming ``what`` (the FP8 path has no gradient)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _InferenceOnly.apply(out, x, what)
    return out


# ----------------------------------------------------------------------------------------------------
# Compile check
# ----------------------------------------------------------------------------------------------------
_SIZES = {"fp16": 2, "bf16": 2, "fp32": 4}


def compile_specs(arch: int):
    """Both elementwise kernels at the tile shapes elementwise_tile picks for wide rows (1 x 1024: every
    MLP) and narrow ones (16 x 64): every activation in bf16 at both, fp16 (the same 16-bit code) once,
    every activation in fp32 (its own warp count)."""
    from ..compile_check import CompileSpec

    wide, narrow = elementwise_tile(8192, 12288), elementwise_tile(8192, 64)
    combos = [("bf16", act, tile) for act in ACTIVATIONS for tile in (wide, narrow)]
    combos += [("fp16", "silu", wide)] + [("fp32", act, wide) for act in ACTIVATIONS]
    specs = []
    for t, act, (bm, bn) in combos:
        const = dict(ACTIVATION=ACTIVATIONS[act], BLOCK_M=bm, BLOCK_N=bn, EXACT_BF16=False)
        ptrs = {"bwd": ("dh_ptr", "g_ptr", "u_ptr", "dg_ptr", "du_ptr"), "act_mul": ("g_ptr", "u_ptr", "h_ptr")}
        for name, kernel in (("bwd", _gated_bwd_kernel), ("act_mul", _act_mul_kernel)):
            strides = tuple("stride_" + p[:-4] for p in ptrs[name])
            sig = {**{p: f"*{t}" for p in ptrs[name]}, "M": "i32", "N": "i32", **{k: "i32" for k in strides},
                   **{k: "constexpr" for k in const}}
            specs.append(CompileSpec(kernel, sig, const, num_warps=_ew_warps(_SIZES[t]), num_stages=1,
                                     aligned=ptrs[name] + strides, label=f"gated_mlp_{name} {t} {act} {bm}x{bn}"))
    return specs


__all__ = ["RECOMPUTE", "gated_mlp_backward", "gated_mlp_saving", "act_mul", "gated_grads", "inference_only",
           "wants_saving", "setup_recompute", "backward_recompute", "compile_specs"]
