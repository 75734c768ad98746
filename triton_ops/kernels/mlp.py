"""FusedMLP: a whole LLaMA-style MLP, ``down_proj(act(gate_proj(x)) * up_proj(x))``, with the gate/up
half as one fused kernel (:func:`~triton_ops.fused_gated_mlp`) and ``down_proj`` as a GEMM.

The module keeps Hugging Face's parameter names -- ``gate_proj``, ``up_proj``, ``down_proj`` (or Phi-3's
packed ``gate_up_proj``) as ``nn.Linear`` children -- so ``state_dict()`` has the same keys as the module
it replaces and checkpoints load either way. :meth:`FusedMLP.from_hf` takes the Linear layers of an
existing MLP by reference (no copy: the original module and the FusedMLP share their parameters).

FP8 (:meth:`FusedMLP.to_fp8`): gate/up become e4m3 weights with one fp32 scale per output channel run by
the FP8 gated-MLP kernel (activations quantized per token at each call), and ``down_proj`` becomes an
:class:`~triton_ops.FP8Linear`. The fp16/bf16 weights are dropped -- that is the memory saving -- so
``state_dict()`` cannot return them. It returns the *same keys* as before, holding the dequantized FP8
weights (``q * scale``, in the dtype the weights had), i.e. exactly the weights the FP8 module computes
with; loading such a state dict into an unpatched model reproduces the FP8 model's weights, and loading a
Hugging Face state dict into an FP8 FusedMLP quantizes it on the way in.
"""

from __future__ import annotations

import torch
from torch import nn

from ..exceptions import InvalidArgumentError, UnsupportedError
from ..validation import FLOAT_DTYPES, check_choice, check_float_dtype_or_none, check_int, check_module_device
from .fp8_gemm import SMALL_M
from .fp8_linear import FP8Linear
from .gated_mlp import ACTIVATIONS, FusedGatedMLP, canonical_activation, fused_gated_mlp, quantize_rows_fp8

# Hugging Face activation classes (transformers.activations) whose math is one of ours. The tanh variants
# all compute 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): GELUTanh through torch's gelu(approximate=
# "tanh") or the same expression in Python, NewGELU and AccurateGELU as written, FastGELU factored as
# x * 0.7978845608 * (1 + 0.044715 x^2) -- its truncated constant is the same fp32 number as sqrt(2/pi).
# Results differ from HF's by fp32 rounding only (our kernel evaluates it as x * sigmoid(2u)). Clipped,
# quick (x * sigmoid(1.702 x)) and every other activation are a different function: not mapped.
_HF_ACTIVATIONS = {
    "SiLUActivation": "silu",
    "GELUActivation": "gelu",  # nn.functional.gelu or its erf formula in Python: exact GELU either way
    "GELUTanh": "gelu_tanh",
    "PytorchGELUTanh": "gelu_tanh",
    "NewGELUActivation": "gelu_tanh",
    "AccurateGELUActivation": "gelu_tanh",
    "FastGELUActivation": "gelu_tanh",
}


def resolve_activation(act: object) -> str:
    """The name of our kernel activation (``"silu"``, ``"gelu"``, ``"gelu_tanh"``) computing ``act``.

    ``act`` is one of those names (or a Hugging Face alias of one: ``"swish"``, ``"gelu_pytorch_tanh"``,
    ``"gelu_new"``), a ``torch.nn.SiLU`` / ``torch.nn.GELU``, or a Hugging Face activation
    module (``ACT2FN[...]``). Raises :class:`UnsupportedError` naming the activation when it is a
    different function (quick_gelu, clipped GELU, ReLU, ...).
    """
    if isinstance(act, str):
        act = canonical_activation(act)
        check_choice(act, "activation", tuple(ACTIVATIONS))
        return act
    cls = type(act)
    if cls is nn.SiLU:
        return "silu"
    if cls is nn.GELU:
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    if cls.__module__ == "transformers.activations" and cls.__name__ in _HF_ACTIVATIONS:
        return _HF_ACTIVATIONS[cls.__name__]
    raise UnsupportedError(f"activation {cls.__module__}.{cls.__name__} is not one the fused kernel computes "
                           f"(supported: {', '.join(ACTIVATIONS)} and the Hugging Face modules "
                           f"{', '.join(sorted(_HF_ACTIVATIONS))})")


def _check_linear(name: str, lin: object, in_features: int | None = None) -> nn.Linear:
    if type(lin) is not nn.Linear:
        raise InvalidArgumentError(f"{name} must be an nn.Linear, got {type(lin).__name__}")
    if in_features is not None and lin.in_features != in_features:
        raise InvalidArgumentError(f"{name} takes {lin.in_features} features, expected {in_features}")
    return lin


class FusedMLP(nn.Module):
    """``down_proj(act(gate_proj(x)) * up_proj(x))`` with gate/up fused into one kernel.

    Holds ``gate_proj``, ``up_proj`` and ``down_proj`` (``nn.Linear``, Hugging Face's names and layouts);
    ``packed=True`` holds Phi-3's ``gate_up_proj`` (``[2 * intermediate, hidden]``, gate rows first)
    instead of the two, read as two row-slices of the one weight without a copy. Biases are supported
    (Llama's ``mlp_bias``). ``activation``: ``"silu"`` (SwiGLU), ``"gelu"`` (exact), ``"gelu_tanh"``.

    Inputs must have the weights' dtype (fp16, bf16 or fp32); the gate/up accumulation and the activation
    run in fp32 and the gated product is rounded once to that dtype before ``down_proj``.

    Training: ``recompute`` (attribute, default None = ``gated_mlp_backward.RECOMPUTE``, False) keeps the
    gate/up projections from the forward; True recomputes them in the backward (less memory, two GEMMs
    more; see :func:`~triton_ops.fused_gated_mlp`). The FP8 module is inference only (its backward raises).
    """

    recompute: bool | None = None

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str = "silu", bias: bool = False,
                 *, packed: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        hidden_size = check_int(hidden_size, "hidden_size", min_value=1)
        intermediate_size = check_int(intermediate_size, "intermediate_size", min_value=1)
        self.activation = resolve_activation(activation)
        for name, flag in (("bias", bias), ("packed", packed)):
            if not isinstance(flag, bool):
                raise InvalidArgumentError(f"{name} must be a bool, got {flag!r}")
        # refused here, before any allocation: a module that could not run would fail only at its first call
        check_module_device(device)
        check_float_dtype_or_none(dtype)
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.packed, self.is_fp8 = packed, False
        factory = {"device": device, "dtype": dtype}
        if self.packed:
            self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=bias, **factory)
        else:
            self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias, **factory)
            self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias, **factory)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias, **factory)

    @classmethod
    def from_hf(cls, mlp: nn.Module, activation: object = None) -> FusedMLP:
        """A FusedMLP sharing the ``nn.Linear`` layers of a Hugging Face MLP (no copy).

        ``mlp`` has ``gate_proj``/``up_proj``/``down_proj`` (Llama, Mistral, Qwen, Gemma, OLMo ...) or
        ``gate_up_proj``/``down_proj`` (Phi-3). ``activation`` defaults to the MLP's own ``act_fn`` /
        ``activation_fn`` module, mapped by :func:`resolve_activation` (which raises
        :class:`UnsupportedError` for an activation the kernel does not compute).
        """
        if activation is None:
            activation = getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn", None)
            if activation is None:
                raise InvalidArgumentError(f"{type(mlp).__name__} has no act_fn/activation_fn; pass activation=")
        act = resolve_activation(activation)
        down = _check_linear("down_proj", getattr(mlp, "down_proj", None))
        packed = hasattr(mlp, "gate_up_proj")
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod.activation, mod.packed, mod.is_fp8 = act, packed, False
        mod.hidden_size, mod.intermediate_size = down.out_features, down.in_features
        if packed:
            gu = _check_linear("gate_up_proj", mlp.gate_up_proj, down.out_features)
            if gu.out_features != 2 * down.in_features:
                raise InvalidArgumentError(f"gate_up_proj has {gu.out_features} outputs, expected "
                                           f"2 * {down.in_features}")
            mod.gate_up_proj = gu
        else:
            g = _check_linear("gate_proj", getattr(mlp, "gate_proj", None), down.out_features)
            u = _check_linear("up_proj", getattr(mlp, "up_proj", None), down.out_features)
            if g.out_features != down.in_features or u.out_features != down.in_features:
                raise InvalidArgumentError(f"gate_proj/up_proj have {g.out_features}/{u.out_features} outputs but "
                                           f"down_proj takes {down.in_features}")
            if (g.bias is None) != (u.bias is None):
                raise InvalidArgumentError("gate_proj and up_proj must both have a bias or neither")
            mod.gate_proj, mod.up_proj = g, u
        mod.down_proj = down
        return mod

    # --- weights ----------------------------------------------------------------------------------

    def _gate_up(self):
        """(gate_weight, up_weight, gate_bias, up_bias) of the bf16/fp16/fp32 module, as views."""
        if self.packed:
            w, b, inter = self.gate_up_proj.weight, self.gate_up_proj.bias, self.intermediate_size
            return w[:inter], w[inter:], (None if b is None else b[:inter]), (None if b is None else b[inter:])
        return self.gate_proj.weight, self.up_proj.weight, self.gate_proj.bias, self.up_proj.bias

    def hf_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The Hugging Face state dict of this MLP (the keys ``state_dict()`` returns), as detached
        tensors; dequantized (``q * scale`` in the original dtype) for an FP8 module."""
        if not self.is_fp8:
            return {k: v.detach() for k, v in self.state_dict(prefix=prefix).items()}
        dt = self._hf_dtype.dtype
        gate, up = self.gate_up.gate_up_weights()
        sd = {}
        if self.packed:
            sd[f"{prefix}gate_up_proj.weight"] = torch.cat([gate, up]).to(dt)
        else:
            sd[f"{prefix}gate_proj.weight"] = gate.to(dt)
            sd[f"{prefix}up_proj.weight"] = up.to(dt)
        sd[f"{prefix}down_proj.weight"] = self.down_proj.dequantized_weight(dt)
        if self.down_proj.bias is not None:
            sd[f"{prefix}down_proj.bias"] = self.down_proj.bias.detach()
        return sd

    # --- FP8 ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def to_fp8(self) -> FusedMLP:
        """Quantize to FP8 in place (returns self): gate/up through the FP8 gated-MLP kernel (e4m3,
        per-channel weight scales, per-token activation scales) and ``down_proj`` as an FP8Linear.

        The original-precision weights are released. ``state_dict()`` keeps the Hugging Face keys with the
        dequantized FP8 weights as values (in the weights' dtype, following later ``.to(dtype)`` casts);
        ``load_state_dict`` takes Hugging Face weights and quantizes them.
        Gate/up biases are not supported by the FP8 gated kernel (:class:`UnsupportedError`).
        """
        if self.is_fp8:
            return self
        gate, up, gb, _ = self._gate_up()
        if gb is not None:
            raise UnsupportedError("the FP8 gated-MLP kernel has no bias path; this MLP has gate/up biases")
        # The dtype state_dict() dequantizes to: a non-persistent empty buffer, so model.half() / .to(dtype)
        # convert it like any floating tensor and state_dict() follows them.
        self.register_buffer("_hf_dtype", torch.empty(0, dtype=gate.dtype, device=gate.device), persistent=False)
        gate_up = FusedGatedMLP.from_weights(gate.detach(), up.detach(), self.activation, fp8=True)
        down = FP8Linear.from_linear(self.down_proj)
        for name in ("gate_up_proj",) if self.packed else ("gate_proj", "up_proj"):
            delattr(self, name)
        self.gate_up, self.down_proj = gate_up, down
        self.is_fp8 = True
        self._fp8_hooks = (self.register_state_dict_post_hook(_fp8_state_dict_post_hook),
                           self.register_load_state_dict_pre_hook(_fp8_load_pre_hook))
        return self

    # --- forward ------------------------------------------------------------------------------------

    @property
    def takes_fp8_input(self) -> bool:
        """Whether ``forward`` takes an e4m3 ``x`` with its per-token ``x_scale``: an FP8 module that
        ``triton_ops.parallel`` has not sharded (the sharded forward takes float activations)."""
        return self.is_fp8 and getattr(self, "_triton_ops_tp", None) is None

    def fp8_chain(self, x: torch.Tensor) -> bool:
        """Whether a producer should hand ``forward`` e4m3 activations (the norm's FP8 output with per-token
        scales): an unsharded FP8 module above decode sizes (more than ``fp8_gemm.SMALL_M`` = 64 tokens).
        At decode sizes a producer need not quantize for it: the gated kernel quantizes x per token
        itself, and its planned float path costs less host time per call."""
        return self.takes_fp8_input and x.numel() > SMALL_M * x.shape[-1]

    def forward(self, x: torch.Tensor, x_scale: torch.Tensor | None = None, *,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """The MLP of ``x``. An FP8 module also takes an e4m3 ``x`` with its per-token ``x_scale`` (from
        ``fused_add_rmsnorm(..., out_dtype=torch.float8_e4m3fn, out_scaling="token")``; ``out_dtype``,
        default bfloat16, is then the output's dtype). In FP8 the gated kernel writes ``act(gate) * up`` in
        ``out_dtype`` and the down projection (FP8Linear) quantizes it per token (faster than e4m3 blocks
        from the gated epilogue, see the comment in the code); at decode sizes it runs weight-only, h not
        quantized."""
        if self.is_fp8:
            if not self.takes_fp8_input:
                # sharded by triton_ops.parallel: its gate_up and down_proj forwards are the sharded ones
                if x_scale is not None or out_dtype is not None:
                    raise UnsupportedError("a tensor-parallel FP8 FusedMLP takes a float x only")
                return self.down_proj(self.gate_up(x))
            if out_dtype is None:
                out_dtype = x.dtype if x_scale is None and x.dtype in FLOAT_DTYPES else torch.bfloat16
            if not self.fp8_chain(x):
                # decode sizes: the down projection streams its e4m3 weights against float activations
                # (fp8_gemm's weight-only path), so h stays in out_dtype and is not quantized; a float x
                # in its own dtype takes the modules' planned eager paths
                if x_scale is None and out_dtype == x.dtype:
                    return self.down_proj(self.gate_up(x))
                return self.down_proj(self.gate_up(x, x_scale, out_dtype=out_dtype))
            # h in out_dtype, quantized per token by FP8Linear, not e4m3 blocks from the gated epilogue: the
            # blocks save the quantize pass (~0.2 ms at 16384 x 14336) but make the down GEMM block-scaled,
            # whose per-step rescaling costs more: 2454 us vs 1495 us per row at 16384 x 4096 x 14336 (H200,
            # sweep_fp8.py blockscaled / configs); the block chain stays available as
            # gate_up(..., out_dtype=torch.float8_e4m3fn, out_scaling="block") -> down_proj(h_q, h_s)
            return self.down_proj(self.gate_up(x, x_scale, out_dtype=out_dtype))
        if x_scale is not None or out_dtype is not None:
            raise InvalidArgumentError("x_scale / out_dtype are for an FP8 FusedMLP (call to_fp8() first)")
        g, u, gb, ub = self._gate_up()
        return self.down_proj(fused_gated_mlp(x, g, u, self.activation, gate_bias=gb, up_bias=ub,
                                              recompute=self.recompute))

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, intermediate_size={self.intermediate_size}, "
                f"activation={self.activation!r}, packed={self.packed}, fp8={self.is_fp8}")


def _fp8_state_dict_post_hook(module: FusedMLP, state_dict: dict, prefix: str, local_metadata) -> None:
    """Replace the FP8 buffers' keys with the Hugging Face keys (dequantized weights)."""
    for key in [k for k in state_dict if k.startswith(f"{prefix}gate_up.") or k.startswith(f"{prefix}down_proj.")]:
        del state_dict[key]
    state_dict.update(module.hf_state_dict(prefix))


def _fp8_load_pre_hook(module: FusedMLP, state_dict: dict, prefix: str, local_metadata, strict, missing_keys,
                       unexpected_keys, error_msgs) -> None:
    """Quantize Hugging Face weights in ``state_dict`` into the FP8 buffers' keys (in place)."""
    names = ["gate_up_proj.weight"] if module.packed else ["gate_proj.weight", "up_proj.weight"]
    if all(f"{prefix}{n}" in state_dict for n in names):
        w = torch.cat([state_dict.pop(f"{prefix}{n}").float() for n in names])
        q, s = quantize_rows_fp8(w.to(module.gate_up.weight_fp8.device))
        state_dict[f"{prefix}gate_up.weight_fp8"] = q
        state_dict[f"{prefix}gate_up.weight_scale"] = s.reshape(-1)
    key = f"{prefix}down_proj.weight"
    if key in state_dict and state_dict[key].dtype != module.down_proj.weight.dtype:
        down = state_dict.pop(key)
        lin = nn.Linear(down.shape[1], down.shape[0], bias=False, device=module.down_proj.weight.device,
                        dtype=down.dtype if down.dtype.is_floating_point else torch.float32)
        lin.weight.data.copy_(down)
        q = FP8Linear.from_linear(lin, fp8_dtype=module.down_proj.fp8_dtype,
                                  weight_granularity=module.down_proj.weight_granularity)
        state_dict[key] = q.weight
        state_dict[f"{prefix}down_proj.weight_scale"] = q.weight_scale


__all__ = ["FusedMLP", "resolve_activation"]
