"""Patch Hugging Face transformers models in place with this library's ops, and undo it.

:func:`patch_model` walks the model's modules and replaces, for every family listed in
:mod:`~triton_ops.integrations.hf_families`:

* ``norm``: each RMSNorm module (decoder-layer norms, the final norm) by a
  :class:`~triton_ops.FusedAddRMSNorm` holding the *same* weight ``Parameter`` with the family's semantics
  (Gemma's ``1 + w``; Llama's rounding before the weight multiply);
* ``rope``: each attention module's ``forward`` (on the instance; the module and its submodules stay) by
  one that applies RoPE -- fused with the q/k norms in QK-norm families -- through this library's kernels;
* ``mlp``: each gated MLP by a :class:`~triton_ops.FusedMLP` sharing its ``nn.Linear`` layers (with
  ``fp8=True``, quantized to FP8 instead);
* with ``norm``, in pre-norm decoder layers (Llama, Mistral, Qwen2/3, Gemma, Gemma2/3, Phi3), the layer's
  ``forward`` (on the instance) so the residual add before the second norm runs inside that norm's kernel.

Nothing else changes: parameter names, buffers, the rotary-embedding modules, caches, masks and attention
kernels stay Hugging Face's. Parts that cannot be taken exactly -- another activation, a RoPE type whose
application has not been checked, a class whose installed source differs from the one mirrored, a norm
whose dtypes would change the output dtype -- are left as they are and listed in the report with the
reason. :func:`unpatch_model` restores the original modules and forwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..exceptions import InvalidArgumentError, UnsupportedError
from ..kernels.mlp import resolve_activation
from . import hf_layers, hf_tp
from .hf_families import KNOWN_ROPE_TYPES, Family, lookup, rope_types, source_mismatch
from .report import PatchReport

#: Attribute of a patched model holding what :func:`unpatch_model` needs.
_STATE = "_triton_ops_patch"


@dataclass
class _PatchState:
    # (parent, child name, original module, replacement, fp8)
    modules: list[tuple[nn.Module, str, nn.Module, nn.Module, bool]] = field(default_factory=list)
    forwards: list[nn.Module] = field(default_factory=list)


def patch_model(model: nn.Module, *, norm: bool = True, rope: bool = True, mlp: bool = True,
                fp8: bool = False) -> PatchReport:
    """Swap this library's fused ops into a Hugging Face transformers model, in place.

    Args:
        model: a transformers model (``LlamaForCausalLM``, ``Qwen3Model``, a Gemma3 multimodal model ...)
            of a supported family: Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Gemma3, OLMo2, OLMo3, Phi3,
            GPT-NeoX. Patch before ``torch.compile``.
        norm: replace RMSNorm modules by :class:`~triton_ops.FusedAddRMSNorm`, and fold the residual add
            in front of a decoder layer's second norm into that norm's kernel.
        rope: replace the attention modules' forward so RoPE (and the q/k norms of Qwen3, Gemma3 and
            OLMo2/3, fused with it) runs through this library's kernels.
        mlp: replace gated MLPs by :class:`~triton_ops.FusedMLP`.
        fp8: quantize the patched MLPs to FP8 (e4m3 weights with per-channel scales, per-token activation
            scales): gate/up through the FP8 gated-MLP kernel, ``down_proj`` as an FP8Linear. Their
            original-precision weights are released; ``state_dict()`` keeps the Hugging Face keys and
            returns the dequantized FP8 weights.

    Returns:
        a :class:`PatchReport` listing every replaced part and every part left unpatched with the reason.

    ``state_dict()`` keys are unchanged, so a patched model saves and loads as the original (and loads
    Hugging Face checkpoints). :func:`unpatch_model` undoes the patch.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be an nn.Module, got {type(model).__name__}")
    if hasattr(model, "_orig_mod"):
        raise InvalidArgumentError("model is a torch.compile wrapper: patch the model first, then compile it")
    if getattr(model, _STATE, None) is not None:
        raise InvalidArgumentError("model is already patched; call unpatch_model(model) before patching again")
    for name, v in (("norm", norm), ("rope", rope), ("mlp", mlp), ("fp8", fp8)):
        if not isinstance(v, bool):
            raise InvalidArgumentError(f"{name} must be a bool, got {v!r}")
    report = PatchReport(type(model).__name__, {"norm": norm, "rope": rope, "mlp": mlp, "fp8": fp8})
    state = _PatchState()
    act_dtype = _activation_dtype(model)
    # Attention modules whose forward is replaced consume their q_norm/k_norm inside the fused kernel.
    fused_qk_norms: set[int] = set()
    # The root itself is never swapped (it has no parent to hold a replacement); its forward may be.
    modules = list(model.named_modules())
    for path, module in modules:
        hit = lookup(type(module))
        if hit is None or hit[1] != "Attention":
            continue
        if not rope:
            report.add_skipped(path, "attention", type(module).__name__, "not requested (rope=False)")
            continue
        reason = _hooked(module) or _attention_blocker(hit[0], module) or hf_tp.attention_blocker(hit[0], module)
        if reason is not None:
            report.add_skipped(path, "attention", type(module).__name__, reason)
            continue
        module.forward = hf_tp.make_attention_forward(hit[0], module)  # sharded q/k norms: see hf_tp
        state.forwards.append(module)
        if hit[0].attention.qk_norm is not None:
            fused_qk_norms.update((id(module.q_norm), id(module.k_norm)))
        report.add_replaced(path, "attention", type(module).__name__, hf_tp.describe_attention(hit[0], module))

    for path, module in modules:
        hit = lookup(type(module))
        cls = type(module).__name__
        if not path:
            continue
        if hit is not None and hit[1] == "RMSNorm":
            if id(module) in fused_qk_norms:
                continue  # reported with its attention module
            if not norm:
                report.add_skipped(path, "norm", cls, "not requested (norm=False)")
                continue
            reason = _hooked(module) or source_mismatch(hit[0], "RMSNorm") or _norm_blocker(hit[0], module, act_dtype)
            if reason is not None:
                report.add_skipped(path, "norm", cls, reason)
                continue
            new = _fused_norm(hit[0], module)
            _swap(model, path, module, new, state, fp8=False)
            extra = ", 1 + w" if new.weight_offset else (", rounded before the weight multiply"
                                                         if new.round_before_weight else "")
            report.add_replaced(path, "norm", cls, f"FusedAddRMSNorm({new.hidden_size}{extra})")
        elif hit is not None and hit[1] == "MLP":
            if not mlp:
                report.add_skipped(path, "mlp", cls, "not requested (mlp=False)")
                continue
            _patch_mlp(model, path, module, hit[0], fp8, report, state)
        elif hit is None and isinstance(module, nn.LayerNorm):
            if norm:
                report.add_skipped(path, "norm", cls, "LayerNorm (mean-centred, with a bias) is not an RMSNorm")
        elif hit is None and _looks_patchable(module):
            report.add_skipped(path, _kind_of(cls), cls, "class not supported by triton_ops.integrations")

    # Decoder layers whose residual add can fold into the (now fused) norm after it.
    fused_norms = {id(new) for _, _, _, new, _ in state.modules}
    for path, module in modules:
        hit = lookup(type(module))
        if hit is None or hit[1] != "DecoderLayer" or hit[0].layer is None:
            continue
        cls, style = type(module).__name__, hit[0].layer
        if not norm:
            report.add_skipped(path, "layer", cls, "not requested (norm=False)")
            continue
        norm_name = hf_layers.FUSED_NORM[style]
        reason = _hooked(module) or source_mismatch(hit[0], "DecoderLayer")
        if reason is None and id(getattr(module, norm_name, None)) not in fused_norms:
            reason = f"residual add not fused: {norm_name} was not patched"
        if reason is not None:
            report.add_skipped(path, "layer", cls, reason)
            continue
        module.forward = hf_layers.make_forward(style, module)
        state.forwards.append(module)
        report.add_replaced(path, "layer", cls, hf_layers.describe(style))
    if state.modules or state.forwards:
        object.__setattr__(model, _STATE, state)
    return report


def unpatch_model(model: nn.Module) -> None:
    """Undo :func:`patch_model`: the original modules go back in place and the attention modules get
    their class forward again. The restored modules hold the patched model's current parameters (the same
    ``Parameter`` objects: loads and device moves made while patched carry over); an FP8-patched MLP comes
    back with its dequantized FP8 weights, the original-precision ones having been released. A model
    that is not patched is left as it is."""
    state = getattr(model, _STATE, None)
    if state is None:
        return
    for module in state.forwards:
        module.__dict__.pop("forward", None)
    for parent, name, original, replacement, fp8 in reversed(state.modules):
        if fp8:
            # assign=True: the dequantized tensors become the parameters, in the dtype the patched model
            # has now (it may have been cast since it was patched)
            original.to_empty(device=replacement.down_proj.weight.device)
            original.load_state_dict(replacement.hf_state_dict(), assign=True)
        else:
            for child_name, child in replacement.named_children():
                setattr(original, child_name, child)
            for pname, p in replacement.named_parameters(recurse=False):
                setattr(original, pname, p)
        setattr(parent, name, original)
    object.__delattr__(model, _STATE)


# ----------------------------------------------------------------------------------------------------
# Checks: why a part cannot be patched exactly (None when it can)
# ----------------------------------------------------------------------------------------------------
def _hooked(module: nn.Module) -> str | None:
    """Someone else already wraps this module: accelerate's dispatch/offload hooks (``device_map=...``) or
    another patch of the instance's forward. Replacing it would drop their wrapper."""
    if hasattr(module, "_hf_hook"):
        return "has an accelerate hook (device_map dispatch or offloading): left to it"
    if "forward" in vars(module):
        return "its forward is already replaced on the instance (by another library or patch)"
    return None


def _attention_blocker(family: Family, module: nn.Module) -> str | None:
    reason = source_mismatch(family, "Attention")
    if reason is not None:
        return reason
    config = getattr(module, "config", None)
    unknown = [t for t in rope_types(config) if t not in KNOWN_ROPE_TYPES]
    if unknown:
        return (f"rope_type {unknown[0]!r}: how its tables are applied has not been checked "
                f"(supported: {', '.join(KNOWN_ROPE_TYPES)})")
    if family.attention.qk_norm is not None:
        for name in ("q_norm", "k_norm"):
            sub = getattr(module, name, None)
            hit = lookup(type(sub)) if sub is not None else None
            if hit is None or hit[0] is not family or hit[1] != "RMSNorm":
                return f"{name} is {type(sub).__name__}, not {family.prefix}RMSNorm"
            reason = source_mismatch(family, "RMSNorm")
            if reason is not None:
                return reason
    if family.attention.qkv == "neox":
        head_dim = module.head_size
    else:
        head_dim = module.head_dim
    if head_dim % 2 or head_dim > 512:
        return f"head_dim={head_dim}: the kernels take even head dims up to 512"
    return None


def _norm_blocker(family: Family, module: nn.Module, act_dtype: torch.dtype | None) -> str | None:
    w = getattr(module, "weight", None)
    if not isinstance(w, nn.Parameter) or w.dim() != 1:
        return "no 1-D weight parameter"
    if family.norm.round_before_weight and act_dtype is not None and w.dtype != act_dtype:
        # HF computes weight * x_hat.to(x.dtype): a float32 weight promotes the output to float32, where
        # the fused norm returns x's dtype. Leave such mixed-precision norms alone.
        return (f"weight is {str(w.dtype).replace('torch.', '')} but activations are "
                f"{str(act_dtype).replace('torch.', '')}: Hugging Face's output dtype would change")
    return None


def _activation_dtype(model: nn.Module) -> torch.dtype | None:
    get = getattr(model, "get_input_embeddings", None)
    try:
        emb = get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        emb = None
    w = getattr(emb, "weight", None)
    return w.dtype if isinstance(w, torch.Tensor) and w.dtype.is_floating_point else None


def _looks_patchable(module: nn.Module) -> bool:
    """A transformers module whose name says it is an attention, MLP or RMSNorm of an unlisted class (a
    vision tower, a MoE block, a subclass): worth naming in the report as left alone."""
    cls = type(module)
    return cls.__module__.startswith("transformers.") and cls.__name__.endswith(("Attention", "MLP", "RMSNorm"))


def _kind_of(cls_name: str) -> str:
    return "attention" if cls_name.endswith("Attention") else ("mlp" if cls_name.endswith("MLP") else "norm")


# ----------------------------------------------------------------------------------------------------
# Replacements
# ----------------------------------------------------------------------------------------------------
def _fused_norm(family: Family, module: nn.Module):
    from ..kernels.rmsnorm import FusedAddRMSNorm

    spec = family.norm
    w = module.weight
    new = FusedAddRMSNorm(w.shape[0], getattr(module, spec.eps_attr), weight_offset=spec.weight_offset,
                          round_before_weight=spec.round_before_weight, device="meta")
    new.weight = w  # the same Parameter: state_dict, loads and device moves stay shared with the original
    new.train(module.training)
    return new


def _patch_mlp(model, path, module, family: Family, fp8: bool, report: PatchReport, state: _PatchState):
    cls = type(module).__name__
    if family.mlp_act_attr is None:
        report.add_skipped(path, "mlp", cls, "not a gated MLP (up -> activation -> down): no fused kernel")
        return
    reason = _hooked(module) or source_mismatch(family, "MLP")
    if reason is not None:
        report.add_skipped(path, "mlp", cls, reason)
        return
    act_module = getattr(module, family.mlp_act_attr, None)
    try:
        act = resolve_activation(act_module)
        new = hf_tp.fused_mlp_from_hf(module, act)  # FusedMLP.from_hf, sharded when the weights are DTensors
    except (UnsupportedError, InvalidArgumentError) as e:
        report.add_skipped(path, "mlp", cls, str(e))
        return
    new.train(module.training)
    what = f"FusedMLP({act}{', packed gate_up_proj' if new.packed else ''})"
    use_fp8 = False
    if fp8:
        try:
            new.to_fp8()
            use_fp8 = True
            what = f"FusedMLP({act}, FP8 e4m3: gated kernel + FP8Linear down_proj)"
        except UnsupportedError as e:
            report.add_skipped(path, "mlp", cls, f"fp8 not applied ({e}); patched without FP8")
    _swap(model, path, module, new, state, fp8=use_fp8)
    if use_fp8:
        module.to("meta")  # release the original-precision weights; unpatch_model restores dequantized ones
    report.add_replaced(path, "mlp", cls, what)


def _swap(model: nn.Module, path: str, original: nn.Module, new: nn.Module, state: _PatchState, fp8: bool):
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)
    state.modules.append((parent, name, original, new, fp8))


__all__ = ["patch_model", "unpatch_model"]
