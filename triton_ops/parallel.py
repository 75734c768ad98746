"""Tensor parallelism for this library's modules: plans for ``torch.distributed.tensor.parallel``.

Every class here is a ``ParallelStyle`` for :func:`torch.distributed.tensor.parallel.parallelize_module`
on a 1-D device mesh (the tensor-parallel dimension). Each one

* turns the module's weights (and FP8 scales) into ``DTensor`` parameters/buffers holding this rank's
  shard, so ``state_dict()`` returns DTensors (:func:`full_tensor` of each is the unsharded tensor, in the
  unsharded module's layout; torch 2.11's own ``DTensor.full_tensor()`` refuses the packed gate/up
  weight's ``_StridedShard`` placement, 2.13's accepts it) and torch's distributed checkpointing works on them;
* replaces the module's ``forward`` (on the instance) by one that runs this library's kernels on the
  local shards -- plain tensors, so the kernels keep their one-dictionary-hit eager fast path -- and does
  the one collective the layout needs;
* lets ``load_state_dict`` take a *full* (unsharded) checkpoint: each full tensor is cut to this rank's
  shard on the way in (:func:`load_full_state_dict` does the same for a whole model, including layers
  sharded by torch's own styles).

The styles:

* :class:`GatedMLPColwiseParallel` -- :class:`~triton_ops.FusedGatedMLP` column-parallel. Its packed
  ``[2 * I, H]`` weight (gate rows, then up rows) is sharded so that rank ``r`` holds
  ``[gate_r; up_r]``: the r-th slice of the gate rows *and* the matching slice of the up rows (a plain
  row shard would hand rank 0 all of the gate and rank 1 all of the up projection). The placement is
  ``_StridedShard(0, split_factor=2)``, DTensor's name for "split in 2, shard each half"; ``full_tensor()``
  gives the packed layout back. FP8: ``weight_fp8`` and the per-output-channel ``weight_scale`` shard the
  same way, so each scale stays with its row. Output: this rank's ``[..., I / n]`` slice of the gated
  activation.
* :class:`FP8ColwiseParallel` / :class:`FP8RowwiseParallel` -- :class:`~triton_ops.FP8Linear`.
  Column-parallel: rows of the weight, their scales and the bias are sharded; output ``[..., N / n]``.
  Row-parallel: the weight is sharded along K; the per-output-channel scales (computed over whole rows)
  and the bias are replicated; the input is this rank's K-slice; each rank multiplies its slice and the
  partial outputs are summed by one all-reduce, the bias added once after it.
* :class:`FusedMLPParallel` -- :class:`~triton_ops.FusedMLP`, the Megatron MLP: gate/up column-parallel
  (one fused kernel on the local slices), down row-parallel, one all-reduce per call. FP8 MLPs shard as
  the two styles above.
* :class:`ShardedRowNormParallel` -- an RMSNorm over a whole row whose row is split across ranks with
  its heads (OLMo2/3's q/k norm under a column-parallel q/k projection): the weight is sharded with the
  heads and the partial sums of squares are all-reduced before normalising
  (:func:`sharded_rmsnorm_rope` is the fused form used by the patched attention).

FP8 numerics under sharding. Column-parallel layers split whole output channels: weights, scales and
outputs are those of the unsharded layer. Row-parallel layers split K: the weight bytes and their scales
are the unsharded ones (scales are computed over whole rows before sharding, or from an all-reduced amax
when quantizing shards, see :meth:`FusedMLPParallel`), but when activations are quantized (the FP8 x FP8
GEMM path), each rank quantizes its own K-slice of each token with its own per-token scale -- at least as
fine as the unsharded layer's scale -- so the sum differs from the unsharded result by quantization noise,
not by a systematic error. The partial outputs are summed in the output dtype by default (what
Megatron-style tensor parallelism does; one extra rounding of each partial), or in fp32 with
``reduce_dtype=torch.float32`` (twice the all-reduce bytes, the GEMM epilogue writes fp32).

The sharded modules run forward and, for the fp16/bf16/fp32 modules, backward (the column-parallel input
gradient is all-reduced, the row-parallel output reduction passes gradients through); FP8 modules are
inference-only, as they are unsharded. Module helpers that reassemble weights (``gate_up_weights``,
``to_hf_state_dict``, ``reset_parameters``) need unsharded modules: quantize (``to_fp8``) before sharding,
or shard a bf16 :class:`~triton_ops.FusedMLP` and call ``to_fp8()`` on the sharded module.
"""

from __future__ import annotations

import types
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle
from torch.distributed.tensor.placement_types import _StridedShard

from .exceptions import InvalidArgumentError, ShapeError, UnsupportedError
from .kernels.fp8_linear import FP8Linear, _runnable
from .kernels.fp8_quantize import FP8_MAX, MIN_SCALE, quantize_fp8
from .kernels.gated_mlp import FusedGatedMLP, fused_gated_mlp, fused_gated_mlp_fp8, quantize_rows_fp8
from .kernels.mlp import FusedMLP
from .kernels.rmsnorm_rope import FusedRMSNormRoPE
from .kernels.sharded_norm import rmsnorm_rope_from_stats, row_sum_of_squares
from .utils import cdiv
from .validation import FP8_DTYPES

#: Attribute of a sharded module holding its tensor-parallel state.
_TP = "_triton_ops_tp"


def packed_placement() -> _StridedShard:
    """The placement of a packed ``[gate; up]`` tensor (dim 0): split in two, shard each half, so rank r
    holds ``[gate_r; up_r]``."""
    return _StridedShard(0, split_factor=2)


class _TPState:
    """What a sharded module's forward needs: the mesh, its process group and the output convention."""

    __slots__ = ("mesh", "group", "size", "use_local_output", "reduce_dtype")

    def __init__(self, mesh, use_local_output: bool = True, reduce_dtype: Optional[torch.dtype] = None):
        self.mesh = mesh
        self.group = _group(mesh)
        self.size = mesh.size()
        self.use_local_output = use_local_output
        self.reduce_dtype = reduce_dtype


def _group(mesh):
    if mesh.ndim != 1:
        raise InvalidArgumentError(f"tensor-parallel styles take a 1-D device mesh (e.g. mesh['tp']), got a "
                                   f"{mesh.ndim}-D mesh {tuple(mesh.shape)}")
    return mesh.get_group()


def _local(t):
    """The local shard of a DTensor (anything else unchanged). Without autograd to record, the DTensor's
    own local tensor (the storage ``to_local()`` returns, without its ~2.5 us autograd function call)."""
    if isinstance(t, DTensor):
        if torch.is_grad_enabled() and t.requires_grad:
            return t.to_local()
        return t._local_tensor
    return t


def _norm_dim(p, ndim: int):
    """(kind, dim) of a placement, dims made non-negative: ('shard', d), ('strided', d), ('replicate', None)."""
    if isinstance(p, _StridedShard):
        return ("strided", p.dim % ndim, p.split_factor)
    if isinstance(p, Shard):
        return ("shard", p.dim % ndim)
    if isinstance(p, Replicate):
        return ("replicate",)
    return ("other", repr(p))


def _same_placement(a, b, ndim: int) -> bool:
    return _norm_dim(a, ndim) == _norm_dim(b, ndim)


# ----------------------------------------------------------------------------------------------------
# Distributing tensors
# ----------------------------------------------------------------------------------------------------
def _distribute(t: torch.Tensor, mesh, placement, src_data_rank: Optional[int]) -> DTensor:
    """A DTensor of the full tensor ``t`` with one placement. ``src_data_rank``: the rank whose copy is
    scattered (torch's convention, default 0), or None to cut each rank's shard from its own copy.

    FP8 tensors travel as bytes (uint8 views): collectives have no FP8 types on every backend."""
    if isinstance(t, DTensor):
        if t.device_mesh != mesh or not _same_placement(t.placements[0], placement, t.dim()):
            raise UnsupportedError(f"tensor is already a DTensor with placements {t.placements} on another mesh "
                                   f"or layout; expected {placement}")
        return t
    t = t.detach()
    if t.dtype in FP8_DTYPES:
        d = distribute_tensor(t.view(torch.uint8), mesh, [placement], src_data_rank=src_data_rank)
        return DTensor.from_local(d._local_tensor.view(t.dtype), mesh, [placement], run_check=False,
                                  shape=t.shape, stride=t.stride())
    return distribute_tensor(t, mesh, [placement], src_data_rank=src_data_rank)


def _from_local(local: torch.Tensor, mesh, placement, shape) -> DTensor:
    """A DTensor of known global shape from this rank's shard (no communication)."""
    shape = tuple(shape)
    stride = tuple(int(s) for s in torch.empty(shape, device="meta").stride())
    return DTensor.from_local(local, mesh, [placement], run_check=False, shape=torch.Size(shape), stride=stride)


def _shard_member(module: nn.Module, name: str, mesh, placement, src_data_rank: Optional[int]) -> None:
    """Replace parameter or buffer ``name`` of ``module`` by its DTensor (a Parameter stays a Parameter)."""
    if name in module._parameters:
        p = module._parameters[name]
        if p is None:
            return
        d = _distribute(p, mesh, placement, src_data_rank)
        module._parameters[name] = nn.Parameter(d, requires_grad=p.requires_grad) if d is not p else p
    elif name in module._buffers:
        if module._buffers[name] is not None:  # None: a registered buffer that is absent (no bias)
            module._buffers[name] = _distribute(module._buffers[name], mesh, placement, src_data_rank)
    else:
        raise InvalidArgumentError(f"{type(module).__name__} has no tensor {name!r}")


def _set_member(module: nn.Module, name: str, value: torch.Tensor, as_parameter: bool,
                requires_grad: bool = False) -> None:
    if as_parameter:
        module._parameters[name] = nn.Parameter(value, requires_grad=requires_grad)
    else:
        module._buffers[name] = value


def _full_to_dtensor(full: torch.Tensor, like: DTensor) -> DTensor:
    """This rank's shard of a full tensor, as a DTensor laid out like ``like`` (no communication)."""
    full = full.detach().to(like.device)
    return _distribute(full, like.device_mesh, like.placements[0], None)


def _load_full_pre_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                        error_msgs) -> None:
    """Cut full (plain) tensors in ``state_dict`` for this module's DTensors to this rank's shard; a value of
    another shape is left for load_state_dict to report."""
    for name, t in list(module._parameters.items()) + list(module._buffers.items()):
        key = prefix + name
        v = state_dict.get(key)
        if isinstance(t, DTensor) and isinstance(v, torch.Tensor) and not isinstance(v, DTensor) \
                and tuple(v.shape) == tuple(t.shape):
            state_dict[key] = _full_to_dtensor(v, t)


def load_full_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True, *,
                         assign: bool = False):
    """``model.load_state_dict`` with a full (unsharded) checkpoint on a sharded model: every full tensor
    whose entry in ``model.state_dict()`` is a DTensor is cut to this rank's shard first (no communication:
    every rank passes the same full checkpoint), whichever style sharded it (these styles, torch's
    ``ColwiseParallel``/``RowwiseParallel``, Hugging Face's). Returns what ``load_state_dict`` returns."""
    current = model.state_dict()
    converted = {}
    for k, v in state_dict.items():
        like = current.get(k)
        if isinstance(like, DTensor) and isinstance(v, torch.Tensor) and not isinstance(v, DTensor) \
                and tuple(v.shape) == tuple(like.shape):
            v = _full_to_dtensor(v, like)
        converted[k] = v
    return model.load_state_dict(converted, strict=strict, assign=assign)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The unsharded tensor of a DTensor (collective: every rank calls it); other tensors unchanged. FP8
    DTensors are gathered as bytes (gloo has no FP8 types; ``DTensor.full_tensor()`` fails on them there)."""
    if not isinstance(t, DTensor):
        return t
    if t.device_mesh.ndim == 1 and isinstance(t.placements[0], _StridedShard):
        return _gather_strided(t)
    if t.dtype in FP8_DTYPES:
        b = DTensor.from_local(t.to_local().view(torch.uint8), t.device_mesh, t.placements, run_check=False,
                               shape=t.shape, stride=t.stride())
        return b.full_tensor().view(t.dtype)
    return t.full_tensor()


def _gather_strided(t: DTensor) -> torch.Tensor:
    """Full tensor of a ``_StridedShard`` DTensor on a 1-D mesh, gathered here: torch 2.11's
    ``full_tensor()`` refuses these placements ("unable to be interpreted into a corresponding
    shard_order"); 2.13's accepts them. Rank r holds piece r of each of the ``split_factor`` parts, in
    part order, so its local tensor splits into ``split_factor`` equal pieces (the parts are chunked alike)."""
    p = t.placements[0]
    group, world = t.device_mesh.get_group(), t.device_mesh.size()
    local = t.to_local().detach()
    raw = local.view(torch.uint8) if local.dtype in FP8_DTYPES else local  # gloo has no FP8 types
    raw = raw.movedim(p.dim, 0).contiguous()
    # every rank's share follows from the global shape (torch.chunk of each part over the ranks): no
    # collective for the sizes
    part = t.shape[p.dim] // p.split_factor
    step = cdiv(part, world)
    sizes = [p.split_factor * max(0, min(step, part - r * step)) for r in range(world)]
    padded = raw.new_zeros((max(sizes), *raw.shape[1:]))
    padded[: raw.shape[0]] = raw
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    pieces = [q[:sz].chunk(p.split_factor) for q, sz in zip(parts, sizes)]
    full = torch.cat([pieces[r][j] for j in range(p.split_factor) for r in range(world)])
    full = full.movedim(0, p.dim)
    return full.view(local.dtype) if local.dtype in FP8_DTYPES else full


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every DTensor gathered to its full tensor (the unsharded model's state
    dict: same keys, same layouts). Collective: every rank calls it, every rank gets the full tensors."""
    return {k: full_tensor(v) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------------
# Collectives with the gradients tensor parallelism needs
# ----------------------------------------------------------------------------------------------------
class _SumPartials(torch.autograd.Function):
    """Forward: all-reduce (sum) the partial outputs of a row-parallel layer. Backward: the gradient of the
    replicated sum passes unchanged to every rank's partial."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.mark_dirty(x)
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _SumInputGrads(torch.autograd.Function):
    """Forward: identity on the replicated input of a column-parallel layer. Backward: each rank holds the
    input gradient through its own output columns only; their sum is the input's gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _SumStats(torch.autograd.Function):
    """All-reduce (sum) of per-rank partial statistics that every rank's outputs depend on (a sharded
    norm's sums of squares): the gradient of the total is summed across ranks in backward too."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        ctx.mark_dirty(x)
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _replicated_input(x, tp: _TPState):
    if isinstance(x, DTensor):
        if x.placements != (Replicate(),):
            x = x.redistribute(placements=[Replicate()])
        x = x.to_local()
    if torch.is_grad_enabled() and x.requires_grad:
        x = _SumInputGrads.apply(x, tp.group)
    return x


def _sharded_input(x, tp: _TPState):
    if isinstance(x, DTensor):
        if x.placements != (Shard(x.dim() - 1),):
            x = x.redistribute(placements=[Shard(-1)])
        x = x.to_local()
    return x


def _sum_partials(y: torch.Tensor, tp: _TPState) -> torch.Tensor:
    if torch.is_grad_enabled() and y.requires_grad:
        return _SumPartials.apply(y, tp.group)
    dist.all_reduce(y, group=tp.group)
    return y


def _colwise_output(y, tp: _TPState):
    return y if tp.use_local_output else DTensor.from_local(y, tp.mesh, [Shard(y.dim() - 1)], run_check=False)


def _replicated_output(y, tp: _TPState):
    return y if tp.use_local_output else DTensor.from_local(y, tp.mesh, [Replicate()], run_check=False)


def _install(module: nn.Module, forward, state: _TPState) -> None:
    object.__setattr__(module, _TP, state)
    module.forward = types.MethodType(forward, module)
    if not getattr(module, "_triton_ops_tp_load_hook", False):
        module.register_load_state_dict_pre_hook(_load_full_pre_hook)
        object.__setattr__(module, "_triton_ops_tp_load_hook", True)


def _check_divisible(what: str, n: int, size: int) -> None:
    if n % size:
        raise ShapeError(f"{what} is {n}, not divisible by the tensor-parallel size {size}")


def is_sharded(module: nn.Module) -> bool:
    """Whether one of these styles sharded ``module``."""
    return getattr(module, _TP, None) is not None


# ----------------------------------------------------------------------------------------------------
# FusedGatedMLP: column-parallel
# ----------------------------------------------------------------------------------------------------
def _gated_forward(self: FusedGatedMLP, x):
    tp = getattr(self, _TP)
    x = _replicated_input(x, tp)
    if x.shape[-1] != self.hidden_dim:
        raise ShapeError(f"x has hidden size {x.shape[-1]} (shape {tuple(x.shape)}); this module expects "
                         f"{self.hidden_dim}")
    if self.is_fp8:
        w, s = _local(self.weight_fp8), _local(self.weight_scale)
        il = w.shape[0] // 2
        x_q, x_scale = quantize_rows_fp8(x)
        y = fused_gated_mlp_fp8(x_q, x_scale, w[:il], s[:il], w[il:], s[il:], self.activation, out_dtype=x.dtype)
    else:
        w = _local(self.weight)
        il = w.shape[0] // 2
        gb = ub = None
        if self.bias is not None:
            b = _local(self.bias)
            gb, ub = b[:il], b[il:]
        y = fused_gated_mlp(x, w[:il], w[il:], self.activation, gate_bias=gb, up_bias=ub)
    return _colwise_output(y, tp)


class GatedMLPColwiseParallel(ParallelStyle):
    """Column-parallel :class:`~triton_ops.FusedGatedMLP` (bf16/fp16/fp32 or FP8).

    Rank r holds ``[gate_r; up_r]`` of the packed weight (and of the bias, or of ``weight_fp8`` and its
    per-channel ``weight_scale``), placement :func:`packed_placement`. The input is replicated (a plain
    tensor is taken as this rank's copy of it; a DTensor is redistributed to ``Replicate()``); the output
    is this rank's ``[..., intermediate / n]`` slice of the gated activation -- a plain tensor, or with
    ``use_local_output=False`` a DTensor with placement ``Shard(-1)``. ``intermediate_dim`` must be
    divisible by the mesh size.
    """

    def __init__(self, *, use_local_output: bool = True) -> None:
        super().__init__()
        self.use_local_output = use_local_output

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        if not isinstance(module, FusedGatedMLP):
            raise InvalidArgumentError(f"GatedMLPColwiseParallel shards a FusedGatedMLP, got {type(module).__name__}")
        state = _TPState(device_mesh, self.use_local_output)
        _check_divisible("intermediate_dim", module.intermediate_dim, state.size)
        names = ("weight_fp8", "weight_scale") if module.is_fp8 else ("weight", "bias")
        for name in names:
            _shard_member(module, name, device_mesh, packed_placement(), self.src_data_rank)
        _install(module, _gated_forward, state)
        return module


# ----------------------------------------------------------------------------------------------------
# FP8Linear: column- and row-parallel
# ----------------------------------------------------------------------------------------------------
def _local_fp8_linear(mod: FP8Linear, with_bias: bool) -> FP8Linear:
    """An FP8Linear over this rank's shards (their storage, no copy), rebuilt when a tensor of ``mod`` is
    replaced (a load with assign=True, a device move): it runs FP8Linear's own planned forward."""
    w, s, b = mod._buffers["weight"], mod._buffers["weight_scale"], mod.bias
    cached = mod.__dict__.get("_triton_ops_local")
    if cached is not None and cached[0] is w and cached[1] is s and cached[2] is b:
        return cached[3]
    lw, ls = w._local_tensor if isinstance(w, DTensor) else w, s._local_tensor if isinstance(s, DTensor) else s
    loc = FP8Linear.__new__(FP8Linear)
    nn.Module.__init__(loc)
    loc.out_features, loc.in_features = lw.shape
    loc.fp8_dtype, loc.weight_granularity = mod.fp8_dtype, mod.weight_granularity
    loc.register_buffer("weight", lw)
    loc.register_buffer("weight_scale", ls)
    if with_bias and b is not None:
        loc.register_buffer("bias", (b._local_tensor if isinstance(b, DTensor) else b).detach())
    else:
        loc.register_buffer("bias", None)
    mod.__dict__["_triton_ops_local"] = (w, s, b, loc)
    return loc


def _fp8_colwise_forward(self: FP8Linear, x):
    tp = getattr(self, _TP)
    x = _replicated_input(x, tp)
    return _colwise_output(_local_fp8_linear(self, with_bias=True)(x), tp)


def _fp8_rowwise_forward(self: FP8Linear, x):
    tp = getattr(self, _TP)
    x = _sharded_input(x, tp)
    k_local = self.in_features // tp.size
    if x.dim() < 1 or x.shape[-1] != k_local:
        raise ShapeError(f"x has shape {tuple(x.shape)}; this row-parallel FP8Linear({self.in_features}, "
                         f"{self.out_features}) takes this rank's slice [..., {k_local}] of the input")
    loc = _local_fp8_linear(self, with_bias=False)
    if tp.reduce_dtype is None or tp.reduce_dtype == x.dtype:
        y = loc(x)
    else:
        from .kernels.fp8_gemm import fp8_gemm

        y = fp8_gemm(x, loc.weight.t(), b_scale=loc._w_scale_cols(), out_dtype=tp.reduce_dtype, check_scales=False)
    y = _sum_partials(y, tp)
    b = self.bias
    if b is not None:
        y = y + _local(b).to(y.dtype)
    return _replicated_output(y.to(x.dtype), tp)


class FP8ColwiseParallel(ParallelStyle):
    """Column-parallel :class:`~triton_ops.FP8Linear`: weight rows, their per-channel scales (a per-tensor
    scale is replicated) and the bias are sharded (``Shard(0)``). Input replicated; output this rank's
    ``[..., out_features / n]`` (``Shard(-1)`` with ``use_local_output=False``)."""

    def __init__(self, *, use_local_output: bool = True) -> None:
        super().__init__()
        self.use_local_output = use_local_output

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        if not isinstance(module, FP8Linear):
            raise InvalidArgumentError(f"FP8ColwiseParallel shards an FP8Linear, got {type(module).__name__}")
        state = _TPState(device_mesh, self.use_local_output)
        _check_divisible("out_features", module.out_features, state.size)
        _shard_member(module, "weight", device_mesh, Shard(0), self.src_data_rank)
        per_channel = module.weight_scale.numel() > 1
        _shard_member(module, "weight_scale", device_mesh, Shard(0) if per_channel else Replicate(),
                      self.src_data_rank)
        _shard_member(module, "bias", device_mesh, Shard(0), self.src_data_rank)
        _install(module, _fp8_colwise_forward, state)
        return module


class FP8RowwiseParallel(ParallelStyle):
    """Row-parallel :class:`~triton_ops.FP8Linear`: the weight is sharded along K (``Shard(1)``); the
    per-output-channel scales and the bias are replicated. The input is this rank's K-slice (a plain
    tensor, or a DTensor redistributed to ``Shard(-1)``); the partial products are summed by one
    all-reduce -- in the output dtype, or in ``reduce_dtype`` (``torch.float32``: the GEMM writes fp32
    partials) -- and the bias is added once. Output replicated (``Replicate()`` DTensor with
    ``use_local_output=False``). See the module docstring for the FP8 numerics."""

    def __init__(self, *, use_local_output: bool = True, reduce_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        if reduce_dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
            raise InvalidArgumentError(f"reduce_dtype={reduce_dtype!r}; expected None (the output dtype) or a "
                                       "float dtype")
        self.use_local_output, self.reduce_dtype = use_local_output, reduce_dtype

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        if not isinstance(module, FP8Linear):
            raise InvalidArgumentError(f"FP8RowwiseParallel shards an FP8Linear, got {type(module).__name__}")
        state = _TPState(device_mesh, self.use_local_output, self.reduce_dtype)
        _check_divisible("in_features", module.in_features, state.size)
        _shard_member(module, "weight", device_mesh, Shard(1), self.src_data_rank)
        _shard_member(module, "weight_scale", device_mesh, Replicate(), self.src_data_rank)
        _shard_member(module, "bias", device_mesh, Replicate(), self.src_data_rank)
        _install(module, _fp8_rowwise_forward, state)
        return module


# ----------------------------------------------------------------------------------------------------
# FusedMLP: gate/up column-parallel, down row-parallel
# ----------------------------------------------------------------------------------------------------
def _mlp_forward(self: FusedMLP, x):
    tp = getattr(self, _TP)
    x = _replicated_input(x, tp)
    if self.packed:
        w = _local(self.gate_up_proj.weight)
        il = w.shape[0] // 2
        g, u = w[:il], w[il:]
        b = self.gate_up_proj.bias
        gb, ub = (None, None) if b is None else (_local(b)[:il], _local(b)[il:])
    else:
        g, u = _local(self.gate_proj.weight), _local(self.up_proj.weight)
        gb, ub = _local(self.gate_proj.bias), _local(self.up_proj.bias)
    h = fused_gated_mlp(x, g, u, self.activation, gate_bias=gb, up_bias=ub)
    y = _sum_partials(F.linear(h, _local(self.down_proj.weight)), tp)
    if self.down_proj.bias is not None:
        y = y + _local(self.down_proj.bias)
    return _replicated_output(y, tp)


def _linear_placements(mlp: FusedMLP) -> list[tuple[nn.Linear, str, object]]:
    """(linear, tensor name, placement) of every tensor of a bf16/fp16/fp32 FusedMLP under the Megatron split."""
    out = []
    if mlp.packed:
        out += [(mlp.gate_up_proj, "weight", packed_placement()), (mlp.gate_up_proj, "bias", packed_placement())]
    else:
        for lin in (mlp.gate_proj, mlp.up_proj):
            out += [(lin, "weight", Shard(0)), (lin, "bias", Shard(0))]
    out += [(mlp.down_proj, "weight", Shard(1)), (mlp.down_proj, "bias", Replicate())]
    return out


class FusedMLPParallel(ParallelStyle):
    """The Megatron MLP for :class:`~triton_ops.FusedMLP`: ``gate_proj``/``up_proj`` (or Phi-3's packed
    ``gate_up_proj``) column-parallel, ``down_proj`` row-parallel; per call one fused gate/up kernel on the
    local slices, the local down GEMM and one all-reduce (in the output dtype; ``reduce_dtype`` applies to
    the FP8 ``down_proj``). Input and output replicated.

    A bf16/fp16/fp32 MLP keeps its ``nn.Linear`` children, their weights becoming DTensors
    (``Shard(0)``, ``Shard(0)``, ``Shard(1)``; the packed weight :func:`packed_placement`; the down bias
    replicated), so ``state_dict()`` has the Hugging Face keys with DTensor values. Weights that are
    already DTensors in exactly that layout (an MLP sharded by torch's ``ColwiseParallel`` /
    ``RowwiseParallel`` or Hugging Face's ``tp_plan``) are adopted as they are. ``to_fp8()`` on the sharded
    module quantizes the shards (see :func:`_tp_to_fp8`).

    An FP8 MLP shards its ``gate_up`` with :class:`GatedMLPColwiseParallel` and its ``down_proj`` with
    :class:`FP8RowwiseParallel`; ``state_dict()`` keeps the Hugging Face keys with the dequantized FP8
    weights as DTensors, and loading Hugging Face weights (full tensors or DTensors) quantizes this rank's
    shards.
    """

    def __init__(self, *, use_local_output: bool = True, reduce_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.use_local_output, self.reduce_dtype = use_local_output, reduce_dtype

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        if not isinstance(module, FusedMLP):
            raise InvalidArgumentError(f"FusedMLPParallel shards a FusedMLP, got {type(module).__name__}")
        state = _TPState(device_mesh, self.use_local_output, self.reduce_dtype)
        _check_divisible("intermediate_size", module.intermediate_size, state.size)
        if module.is_fp8:
            col = GatedMLPColwiseParallel()
            row = FP8RowwiseParallel(reduce_dtype=self.reduce_dtype, use_local_output=self.use_local_output)
            col.src_data_rank = row.src_data_rank = self.src_data_rank
            col._apply(module.gate_up, device_mesh)
            row._apply(module.down_proj, device_mesh)
            _use_sharded_fp8_hooks(module, state)
            return module
        for lin, name, placement in _linear_placements(module):
            _shard_member(lin, name, device_mesh, placement, self.src_data_rank)
        _install(module, _mlp_forward, state)
        module.to_fp8 = types.MethodType(_tp_to_fp8, module)
        return module


def adopt_sharded_mlp(mlp: FusedMLP, use_local_output: bool = True) -> FusedMLP:
    """Make a :class:`~triton_ops.FusedMLP` whose ``nn.Linear`` weights are already DTensors (it shares
    them with an MLP sharded by torch's or Hugging Face's column/row styles) run sharded, without moving
    any data. Raises :class:`UnsupportedError` when the layout is not the Megatron one on one 1-D mesh."""
    meshes = []
    for lin, name, placement in _linear_placements(mlp):
        t = getattr(lin, name)
        if t is None:
            continue
        if not isinstance(t, DTensor):
            raise UnsupportedError(f"{name} of a {tuple(t.shape)} Linear is not sharded while other MLP weights are")
        if len(t.placements) != 1 or not _same_placement(t.placements[0], placement, t.dim()):
            raise UnsupportedError(f"MLP weight sharded as {t.placements}; the fused MLP needs gate/up {Shard(0)} "
                                   f"(packed: {packed_placement()}) and down_proj {Shard(1)} (bias replicated)")
        meshes.append(t.device_mesh)
        mesh = t.device_mesh
    # Equal meshes, not necessarily one object: torch's styles may hand a weight and a bias copies of it.
    if not meshes or any(m != meshes[0] for m in meshes):
        raise UnsupportedError("the MLP's weights are sharded over different device meshes")
    style = FusedMLPParallel(use_local_output=use_local_output)
    return style._apply(mlp, mesh)


def _amax_rows(w: torch.Tensor) -> torch.Tensor:
    """Per-row amax of the finite values (non-finite ones count as 0, as the quantizers treat them)."""
    a = w.detach().float().abs()
    return torch.where(torch.isfinite(a), a, torch.zeros((), device=a.device)).amax(dim=1)


def _quantize_rows_with_amax(w: torch.Tensor, amax: torch.Tensor, fp8_dtype=torch.float8_e4m3fn):
    """Per-row FP8 quantization of ``w`` with the scales of rows whose amax is ``amax`` (the amax of the
    *whole* row when ``w`` is a K-slice): the bytes and scales of the unsharded row's quantization."""
    fmax = FP8_MAX[fp8_dtype]
    s = torch.where(amax > 0, amax / fmax, torch.ones((), device=amax.device)).clamp_min(MIN_SCALE)
    s = s.reshape(-1, 1).to(torch.float32)
    wf = w.detach()
    if _runnable(wf.device) and wf.numel():
        q, _ = quantize_fp8(wf if wf.dtype.is_floating_point and wf.dtype in (torch.float16, torch.bfloat16,
                                                                               torch.float32) else wf.float(),
                            dtype=fp8_dtype, granularity="row", scale=s)
        return q, s
    q = (wf.float() * (1.0 / s)).clamp(-fmax, fmax)
    q = torch.where(torch.isnan(wf.float()), wf.float(), q).to(fp8_dtype)
    return q, s


def _row_sharded_fp8_linear(w_local: torch.Tensor, in_features: int, bias, tp: _TPState) -> FP8Linear:
    """A row-parallel FP8Linear from this rank's K-slice ``[N, K / n]`` of a float weight: per-channel scales
    from the all-reduced (max) row amax, so weights and scales are those of the unsharded quantization."""
    amax = _amax_rows(w_local)
    dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=tp.group)
    q, s = _quantize_rows_with_amax(w_local, amax)
    lin = FP8Linear.__new__(FP8Linear)
    nn.Module.__init__(lin)
    lin.in_features, lin.out_features = in_features, w_local.shape[0]
    lin.fp8_dtype, lin.weight_granularity = torch.float8_e4m3fn, "channel"
    lin.register_buffer("weight", _from_local(q.contiguous(), tp.mesh, Shard(1), (w_local.shape[0], in_features)))
    lin.register_buffer("weight_scale", _from_local(s, tp.mesh, Replicate(), s.shape))
    # a buffer, as in every FP8Linear (inference only)
    lin.register_buffer("bias", None if bias is None else _from_local(_local(bias).detach().clone(), tp.mesh,
                                                                         Replicate(), bias.shape))
    state = _TPState(tp.mesh, tp.use_local_output, tp.reduce_dtype)
    _install(lin, _fp8_rowwise_forward, state)
    return lin


def _col_sharded_gated_fp8(gate_local: torch.Tensor, up_local: torch.Tensor, hidden: int, inter: int,
                           activation: str, tp: _TPState) -> FusedGatedMLP:
    """A column-parallel FP8 FusedGatedMLP from this rank's gate/up rows (whole rows: their per-channel
    scales are those of the unsharded quantization)."""
    loc = FusedGatedMLP.from_weights(gate_local, up_local, activation, fp8=True)
    loc.hidden_dim, loc.intermediate_dim = hidden, inter
    loc._buffers["weight_fp8"] = _from_local(loc.weight_fp8, tp.mesh, packed_placement(), (2 * inter, hidden))
    loc._buffers["weight_scale"] = _from_local(loc.weight_scale, tp.mesh, packed_placement(), (2 * inter,))
    _install(loc, _gated_forward, _TPState(tp.mesh, True))
    return loc


@torch.no_grad()
def _tp_to_fp8(self: FusedMLP) -> FusedMLP:
    """``FusedMLP.to_fp8`` for a sharded MLP: each rank quantizes its shards -- gate/up rows per channel (whole
    rows), down_proj per channel with the row amax all-reduced across ranks -- so the FP8 weights and scales
    are exactly those of ``to_fp8()`` on the unsharded MLP, sharded. Collective: every rank calls it."""
    if self.is_fp8:
        return self
    tp = getattr(self, _TP)
    if self.packed:
        w = _local(self.gate_up_proj.weight)
        il = w.shape[0] // 2
        gate, up = w[:il], w[il:]
        has_bias = self.gate_up_proj.bias is not None
        dtype = w.dtype
    else:
        gate, up = _local(self.gate_proj.weight), _local(self.up_proj.weight)
        has_bias = self.gate_proj.bias is not None
        dtype = gate.dtype
    if has_bias:
        raise UnsupportedError("the FP8 gated-MLP kernel has no bias path; this MLP has gate/up biases")
    self.register_buffer("_hf_dtype", torch.empty(0, dtype=dtype, device=gate.device), persistent=False)
    gate_up = _col_sharded_gated_fp8(gate.detach(), up.detach(), self.hidden_size, self.intermediate_size,
                                     self.activation, tp)
    down = _row_sharded_fp8_linear(_local(self.down_proj.weight).detach(), self.intermediate_size,
                                   self.down_proj.bias, tp)
    for name in ("gate_up_proj",) if self.packed else ("gate_proj", "up_proj"):
        delattr(self, name)
    self.gate_up, self.down_proj = gate_up, down
    self.is_fp8 = True
    self.__dict__.pop("forward", None)  # FusedMLP.forward: down_proj(gate_up(x)), both sharded
    self.__dict__.pop("to_fp8", None)
    _use_sharded_fp8_hooks(self, tp)
    return self


def _use_sharded_fp8_hooks(mlp: FusedMLP, tp: _TPState) -> None:
    """Replace an FP8 FusedMLP's state-dict hooks (they reassemble full weights) by sharded ones."""
    for h in getattr(mlp, "_fp8_hooks", ()):  # FusedMLP.to_fp8 keeps the handles of the hooks it registered
        h.remove()
    object.__setattr__(mlp, _TP, tp)
    mlp._fp8_hooks = (mlp.register_state_dict_post_hook(_tp_fp8_state_dict_post_hook),
                      mlp.register_load_state_dict_pre_hook(_tp_fp8_load_pre_hook))
    mlp.hf_state_dict = types.MethodType(_tp_hf_state_dict, mlp)


def _tp_hf_state_dict(self: FusedMLP, prefix: str = "") -> dict[str, torch.Tensor]:
    """The Hugging Face keys of a sharded FP8 MLP: dequantized FP8 weights (``q * scale`` in the weights'
    dtype) as DTensors, gate/up ``Shard(0)`` (packed: :func:`packed_placement`), down ``Shard(1)``."""
    tp = getattr(self, _TP)
    dt = self._hf_dtype.dtype
    w, s = _local(self.gate_up.weight_fp8), _local(self.gate_up.weight_scale)
    deq = (w.float() * s[:, None]).to(dt)
    il = deq.shape[0] // 2
    inter, hidden = self.intermediate_size, self.hidden_size
    sd = {}
    if self.packed:
        sd[f"{prefix}gate_up_proj.weight"] = _from_local(deq, tp.mesh, packed_placement(), (2 * inter, hidden))
    else:
        sd[f"{prefix}gate_proj.weight"] = _from_local(deq[:il].contiguous(), tp.mesh, Shard(0), (inter, hidden))
        sd[f"{prefix}up_proj.weight"] = _from_local(deq[il:].contiguous(), tp.mesh, Shard(0), (inter, hidden))
    dw = (_local(self.down_proj.weight).float() * _local(self.down_proj.weight_scale).float()).to(dt)
    sd[f"{prefix}down_proj.weight"] = _from_local(dw, tp.mesh, Shard(1), (hidden, inter))
    if self.down_proj.bias is not None:
        sd[f"{prefix}down_proj.bias"] = self.down_proj.bias.detach()
    return sd


def _tp_fp8_state_dict_post_hook(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(f"{prefix}gate_up.") or k.startswith(f"{prefix}down_proj.")]:
        del state_dict[key]
    state_dict.update(module.hf_state_dict(prefix))


def _shard_of(v: torch.Tensor, kind: str, tp: _TPState, rank: int) -> torch.Tensor:
    """This rank's shard of a Hugging Face MLP weight given full (plain) or as a DTensor."""
    if isinstance(v, DTensor):
        return v.to_local()
    if kind == "rows":
        return v.chunk(tp.size, dim=0)[rank]
    if kind == "packed":
        g, u = v.chunk(2, dim=0)
        return torch.cat([g.chunk(tp.size, dim=0)[rank], u.chunk(tp.size, dim=0)[rank]])
    return v.chunk(tp.size, dim=1)[rank]  # "cols"


def _tp_fp8_load_pre_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                          error_msgs) -> None:
    """Quantize this rank's shards of Hugging Face weights (full tensors or DTensors) into the FP8 keys."""
    tp = getattr(module, _TP)
    rank = tp.mesh.get_local_rank()
    names = [("gate_up_proj.weight", "packed")] if module.packed else [("gate_proj.weight", "rows"),
                                                                        ("up_proj.weight", "rows")]
    dev = _local(module.gate_up.weight_fp8).device
    if all(f"{prefix}{n}" in state_dict for n, _ in names):
        w = torch.cat([_shard_of(state_dict.pop(f"{prefix}{n}"), kind, tp, rank).float() for n, kind in names])
        q, s = quantize_rows_fp8(w.to(dev))
        state_dict[f"{prefix}gate_up.weight_fp8"] = _from_local(q, tp.mesh, packed_placement(),
                                                                module.gate_up.weight_fp8.shape)
        state_dict[f"{prefix}gate_up.weight_scale"] = _from_local(s.reshape(-1), tp.mesh, packed_placement(),
                                                                  module.gate_up.weight_scale.shape)
    key = f"{prefix}down_proj.weight"
    if key in state_dict and state_dict[key].dtype not in FP8_DTYPES:
        w = _shard_of(state_dict.pop(key), "cols", tp, rank).to(dev)
        amax = _amax_rows(w)
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=tp.group)
        q, s = _quantize_rows_with_amax(w, amax, module.down_proj.fp8_dtype)
        state_dict[key] = _from_local(q.contiguous(), tp.mesh, Shard(1), module.down_proj.weight.shape)
        state_dict[f"{prefix}down_proj.weight_scale"] = _from_local(s, tp.mesh, Replicate(), s.shape)


# ----------------------------------------------------------------------------------------------------
# Norms over a sharded row
# ----------------------------------------------------------------------------------------------------
def sharded_rmsnorm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         eps: float = 1e-6, *, group=None, n_total: Optional[int] = None,
                         head_dim: Optional[int] = None, position_ids: Optional[torch.Tensor] = None,
                         rotary_layout: str = "neox", weight_offset: float = 0.0) -> torch.Tensor:
    """RMSNorm over a row split across the ranks of ``group``, then RoPE, on this rank's part of the row.

    ``x`` ``[..., n]`` holds this rank's heads, ``weight`` ``[n]`` the matching slice of the norm weight
    (a plain tensor or a ``Shard(0)`` DTensor). Three steps: ``row_sum_of_squares`` of
    :mod:`triton_ops.kernels.sharded_norm` (fp32, this shard), one all-reduce of the ``[rows]`` partial sums,
    and the normalize+rope kernel with ``rstd = rsqrt(total / n_total + eps)``. ``n_total`` defaults to ``n`` times
    the group size (equal shards). Every rank of the group must call it.
    """
    ss = row_sum_of_squares(x)
    dist.all_reduce(ss, group=group)
    n_total = n_total or x.shape[-1] * dist.get_world_size(group)
    return rmsnorm_rope_from_stats(x, _local(weight), cos, sin, sum_of_squares=ss, n_total=n_total, eps=eps,
                                   head_dim=head_dim, position_ids=position_ids, rotary_layout=rotary_layout,
                                   weight_offset=weight_offset)


def sharded_qk_rmsnorm_rope(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                            cos: torch.Tensor, sin: torch.Tensor, q_eps: float, k_eps: float, *, group=None,
                            head_dim: Optional[int] = None, weight_offset: float = 0.0,
                            rotary_layout: str = "neox") -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sharded_rmsnorm_rope` on q and k of the same tokens with ONE all-reduce for both: their
    partial sums of squares go into the two rows of one ``[2, tokens]`` buffer."""
    rows = q.numel() // q.shape[-1] if q.shape[-1] else 0
    if k.numel() // max(k.shape[-1], 1) != rows:
        raise ShapeError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must hold the same tokens")
    buf = torch.empty(2, rows, dtype=torch.float32, device=q.device)
    row_sum_of_squares(q, out=buf[0])
    row_sum_of_squares(k, out=buf[1])
    dist.all_reduce(buf, group=group)
    n = dist.get_world_size(group)
    qo = rmsnorm_rope_from_stats(q, _local(q_weight), cos, sin, sum_of_squares=buf[0], n_total=q.shape[-1] * n,
                                 eps=q_eps, head_dim=head_dim, rotary_layout=rotary_layout,
                                 weight_offset=weight_offset)
    ko = rmsnorm_rope_from_stats(k, _local(k_weight), cos, sin, sum_of_squares=buf[1], n_total=k.shape[-1] * n,
                                 eps=k_eps, head_dim=head_dim, rotary_layout=rotary_layout,
                                 weight_offset=weight_offset)
    return qo, ko


def _norm_eps(module: nn.Module) -> float:
    for name in ("variance_epsilon", "eps"):
        v = getattr(module, name, None)
        if isinstance(v, float):
            return v
    raise InvalidArgumentError(f"{type(module).__name__} has no float eps / variance_epsilon attribute")


def _row_norm_forward(self, x, *args, **kwargs):
    """An RMSNorm over a sharded row in PyTorch ops: Hugging Face's ``weight * (x * rstd)`` (OLMo2's order:
    the weight multiplied in fp32, one rounding; ``round_before_weight``: Llama's order)."""
    tp = getattr(self, _TP)
    cfg = self._triton_ops_norm
    x = _sharded_input(x, tp)
    dt = x.dtype
    h = x.float()
    ss = h.pow(2).sum(-1, keepdim=True)
    if torch.is_grad_enabled() and ss.requires_grad:
        ss = _SumStats.apply(ss, tp.group)
    else:
        dist.all_reduce(ss, group=tp.group)
    h = h * torch.rsqrt(ss / (x.shape[-1] * tp.size) + cfg["eps"])
    w = _local(self.weight)
    if cfg["round_before_weight"]:
        return (cfg["weight_offset"] + w) * h.to(dt)
    return ((cfg["weight_offset"] + w.float()) * h).to(dt)


def _row_norm_rope_forward(self: FusedRMSNormRoPE, x, cos, sin, position_ids=None, residual=None):
    tp = getattr(self, _TP)
    if residual is not None:
        raise UnsupportedError("a sharded FusedRMSNormRoPE has no residual path")
    x = _sharded_input(x, tp)
    return sharded_rmsnorm_rope(x, self.weight, cos, sin, self.eps, group=tp.group, head_dim=self.head_dim,
                                position_ids=position_ids, rotary_layout=self.rotary_layout,
                                weight_offset=self.weight_offset)


class ShardedRowNormParallel(ParallelStyle):
    """An RMSNorm over a whole row whose row is sharded along its last dim (with the heads of a
    column-parallel projection): the weight becomes ``Shard(0)`` and each call all-reduces the ``[rows]``
    partial sums of squares before normalising this rank's part (output: this rank's part).

    * :class:`~triton_ops.FusedRMSNormRoPE` (a full-row norm): the statistics kernel, one all-reduce and
      the normalize+rope kernel (:func:`sharded_rmsnorm_rope`).
    * any other RMSNorm module with a ``weight`` and an ``eps``/``variance_epsilon`` (Hugging Face's
      ``Olmo2RMSNorm``): the same math in PyTorch ops; ``weight_offset`` and ``round_before_weight`` select
      the family's formula (OLMo2: 0 and False). A patched model's attention runs the fused kernels on the
      norm's local weight instead (:func:`triton_ops.integrations.hf_tp.tp_plan`).
    """

    def __init__(self, *, weight_offset: float = 0.0, round_before_weight: bool = False) -> None:
        super().__init__()
        self.weight_offset, self.round_before_weight = float(weight_offset), bool(round_before_weight)

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        w = getattr(module, "weight", None)
        if not isinstance(w, nn.Parameter) or w.dim() != 1:
            raise InvalidArgumentError(f"ShardedRowNormParallel needs a norm with a 1-D weight, got "
                                       f"{type(module).__name__}")
        state = _TPState(device_mesh)
        _check_divisible("the norm's width", w.shape[0], state.size)
        if isinstance(module, FusedRMSNormRoPE):
            if module.weight.shape[0] != module.hidden_dim:
                raise UnsupportedError("a per-head FusedRMSNormRoPE is local to each rank's heads: leave it replicated")
            _check_divisible("the number of heads", module.hidden_dim // module.head_dim, state.size)
            _shard_member(module, "weight", device_mesh, Shard(0), self.src_data_rank)
            _install(module, _row_norm_rope_forward, state)
            return module
        eps = _norm_eps(module)
        _shard_member(module, "weight", device_mesh, Shard(0), self.src_data_rank)
        object.__setattr__(module, "_triton_ops_norm", {"eps": eps, "weight_offset": self.weight_offset,
                                                        "round_before_weight": self.round_before_weight})
        _install(module, _row_norm_forward, state)
        return module


__all__ = [
    "GatedMLPColwiseParallel",
    "FP8ColwiseParallel",
    "FP8RowwiseParallel",
    "FusedMLPParallel",
    "ShardedRowNormParallel",
    "sharded_rmsnorm_rope",
    "sharded_qk_rmsnorm_rope",
    "load_full_state_dict",
    "full_state_dict",
    "full_tensor",
    "adopt_sharded_mlp",
    "packed_placement",
    "is_sharded",
]
