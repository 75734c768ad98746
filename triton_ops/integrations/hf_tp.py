"""Tensor-parallel Hugging Face models: a ``parallelize_module`` plan, and what :func:`~triton_ops.patch_model`
does differently on a sharded model.

Two ways to shard a model, both patchable afterwards (shard first, then ``patch_model``):

* ``parallelize_module(model, mesh, tp_plan(model))`` with :func:`tp_plan`: torch's ``ColwiseParallel`` on
  q/k/v and gate/up, ``RowwiseParallel`` on o and down (the Megatron split; heads and the intermediate
  dim are divided among the ranks), and for OLMo2/3, whose q/k RMSNorm spans all heads,
  :class:`~triton_ops.parallel.ShardedRowNormParallel` on ``q_norm``/``k_norm`` (the norm weight sharded
  with the heads, the sums of squares all-reduced). Embeddings, the LM head and the decoder norms stay
  replicated.
* ``from_pretrained(..., tp_plan="auto")`` with transformers' own plans (it needs ``accelerate``
  installed and an initialised process group; on a CPU it runs with gloo). Its OLMo2 plan gathers q/k/v
  (every rank computes every head), so the q/k norms there are not sharded.

On such a model :func:`~triton_ops.patch_model` replaces the same parts as on an unsharded one and keeps
the sharding:

* an MLP whose ``nn.Linear`` weights are DTensors in the Megatron layout becomes a sharded
  :class:`~triton_ops.FusedMLP` (:func:`~triton_ops.parallel.adopt_sharded_mlp`): the fused gate/up kernel
  on the local slices, the local down GEMM and one all-reduce; with ``fp8=True`` each rank quantizes its
  shards (the FP8 bytes and scales of the unsharded quantization);
* attention forwards are the usual patched ones (projections through their sharded modules, the kernels
  on the local heads); in OLMo2/3 with sharded q/k norms, the patched forward computes both norms' partial
  sums of squares, all-reduces them in ONE collective and runs the normalize+rope kernel on the local
  heads (:func:`~triton_ops.parallel.sharded_qk_rmsnorm_rope`).
"""

from __future__ import annotations

import sys
import types

from torch import nn

from ..exceptions import UnsupportedError
from ..kernels.mlp import FusedMLP
from . import hf_attention
from .hf_families import Family, lookup

#: Families :func:`tp_plan` shards (separate q/k/v projections and gate/up/down MLPs).
TP_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "olmo2", "olmo3")


def tp_plan(model: nn.Module) -> dict:
    """The ``parallelize_module`` plan for a Hugging Face model of a family in :data:`TP_FAMILIES`: exact
    module paths mapped to parallel styles (see the module docstring). Raises :class:`UnsupportedError`
    for a model with no such layers, or with attention/MLP classes of another family (Phi-3's packed
    qkv_proj, GPT-NeoX)."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    from ..parallel import ShardedRowNormParallel

    plan: dict = {}
    for path, module in model.named_modules():
        hit = lookup(type(module))
        if hit is None or hit[1] not in ("Attention", "MLP"):
            continue
        family, role = hit
        if family.name not in TP_FAMILIES:
            raise UnsupportedError(f"{path} is a {type(module).__name__}: tp_plan covers {', '.join(TP_FAMILIES)}")
        p = f"{path}." if path else ""
        if role == "Attention":
            for name in ("q_proj", "k_proj", "v_proj"):
                plan[p + name] = ColwiseParallel()
            plan[p + "o_proj"] = RowwiseParallel()
            if family.attention.qk_norm == "full":
                spec = family.norm
                for name in ("q_norm", "k_norm"):
                    plan[p + name] = ShardedRowNormParallel(weight_offset=spec.weight_offset,
                                                            round_before_weight=spec.round_before_weight)
        else:
            plan[p + "gate_proj"] = ColwiseParallel()
            plan[p + "up_proj"] = ColwiseParallel()
            plan[p + "down_proj"] = RowwiseParallel()
    if not plan:
        raise UnsupportedError(f"{type(model).__name__} has no attention or MLP module of a supported family")
    return plan


def _is_dtensor(t) -> bool:
    """``t`` is a DTensor. Without importing torch.distributed.tensor (~0.4 s): when it was never imported,
    no tensor can be one."""
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def _sharded_rows(w) -> bool:
    if not _is_dtensor(w) or len(w.placements) != 1:
        return False
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    p = w.placements[0]
    return isinstance(p, Shard) and not isinstance(p, _StridedShard) and p.dim % w.dim() == 0


def _sharded_qk_norm(family: Family, module: nn.Module) -> bool:
    """A full-row q/k norm whose weights are sharded with the heads."""
    if family.attention.qk_norm != "full":
        return False
    return all(_sharded_rows(getattr(getattr(module, n, None), "weight", None)) for n in ("q_norm", "k_norm"))


def attention_blocker(family: Family, module: nn.Module) -> str | None:
    """Why a (possibly sharded) attention module cannot take the patched forward, or None."""
    if family.attention.qk_norm != "full":
        return None
    q_sharded = _sharded_rows(getattr(getattr(module, "q_proj", None), "weight", None))
    if q_sharded and not _sharded_qk_norm(family, module):
        return ("q_proj/k_proj are sharded by heads but q_norm/k_norm are not: shard them with "
                "triton_ops.parallel.ShardedRowNormParallel (see triton_ops.integrations.hf_tp.tp_plan)")
    if _sharded_qk_norm(family, module) and not q_sharded:
        return "q_norm/k_norm are sharded but q_proj is not"
    return None


def make_attention_forward(family: Family, module: nn.Module) -> types.MethodType:
    """The patched attention forward: :func:`hf_attention.make_forward`'s, or for a sharded full-row
    q/k norm the same forward with the sharded norm + RoPE step."""
    if not _sharded_qk_norm(family, module):
        return hf_attention.make_forward(family, module)
    return _sharded_qk_forward(family, module)


def describe_attention(family: Family, module: nn.Module) -> str:
    if _sharded_qk_norm(family, module):
        return ("forward: q/k RMSNorm over the sharded projection (partial sums of squares, one all-reduce for "
                "q and k) + RoPE fused (rmsnorm_rope_from_stats)")
    return hf_attention.describe(family)


def _sharded_qk_forward(family: Family, module: nn.Module) -> types.MethodType:
    from ..parallel import sharded_qk_rmsnorm_rope

    eager = sys.modules[family.module].eager_attention_forward
    extra = hf_attention._interface_kwargs(family.attention)
    attention_functions = hf_attention._attention_functions()
    eps_attr, offset = family.norm.eps_attr, family.norm.weight_offset
    group = module.q_norm.weight.device_mesh.get_group()

    # The forward of hf_attention.make_forward (transformers 5.17's, step for step) with the q/k step
    # replaced: this rank's heads of q and k are normalised with the whole projection's statistics.
    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)

        q, k, v = hf_attention._project_separate(self, hidden_states)  # this rank's heads
        cos, sin = position_embeddings
        qn, kn = self.q_norm, self.k_norm
        q, k = sharded_qk_rmsnorm_rope(q, k, qn.weight, kn.weight, cos, sin, getattr(qn, eps_attr),
                                       getattr(kn, eps_attr), group=group, head_dim=self.head_dim,
                                       weight_offset=offset)
        query_states = q.view(hidden_shape).transpose(1, 2)
        key_states = k.view(hidden_shape).transpose(1, 2)
        value_states = v.view(hidden_shape).transpose(1, 2)

        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)

        attention_interface = attention_functions.get_interface(self.config._attn_implementation, eager)
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **extra(self),
            **kwargs,
        )

        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights

    return types.MethodType(forward, module)


def fused_mlp_from_hf(mlp: nn.Module, activation: object) -> FusedMLP:
    """:meth:`FusedMLP.from_hf`, made sharded when the MLP's weights are DTensors (Megatron layout).
    Raises :class:`UnsupportedError` (reported by patch_model as a part left unpatched) for another
    layout."""
    new = FusedMLP.from_hf(mlp, activation)
    if any(_is_dtensor(p) for p in new.parameters()):
        from ..parallel import adopt_sharded_mlp

        adopt_sharded_mlp(new)
    return new


__all__ = ["tp_plan", "TP_FAMILIES", "fused_mlp_from_hf", "make_attention_forward", "attention_blocker",
           "describe_attention"]
