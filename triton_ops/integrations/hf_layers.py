"""Decoder-layer forwards that fold a residual add into the norm that follows it.

A pre-norm block computes ``h = residual + attn_out; residual = h; h = norm(h)``: with the norm patched to a
:class:`~triton_ops.FusedAddRMSNorm`, ``h, residual = norm(attn_out, residual)`` does the add and the
norm in one kernel, saving one elementwise launch and one pass over the activations per layer. The sum is
rounded to the activations' dtype before it is normalised and returned, exactly as the unfused add, so
the result is the one Hugging Face's forward computes. Everything else in the forward is the transformers
5.17 code of the family, step for step.

* ``"llama"`` (Llama, Mistral, Qwen2, Qwen3, Gemma): the add before ``post_attention_layernorm``;
* ``"phi3"``: the same, after Phi-3's residual dropout;
* ``"gemma2"`` (Gemma2, Gemma3, post-norm attention output): the add before ``pre_feedforward_layernorm``.

When the MLP is an FP8 :class:`~triton_ops.FusedMLP` (``patch_model(..., fp8=True)``) and the step is above
decode sizes (``FusedMLP.fp8_chain``), that norm writes its output as e4m3 with per-token scales and
the MLP takes them as they are: norm -> gated-MLP GEMM (FP8 epilogue, (1, 128) block scales) -> down
GEMM, every activation between the norm and the down projection crossing memory once, in one byte per
element.

The add at the end of each layer feeds the next layer's ``input_layernorm``; fusing it would change the
model's own forward (the layer loop), so it stays as it is.
"""

from __future__ import annotations

import types

import torch

from ..kernels.mlp import FusedMLP

#: Which norm absorbs the residual add, per layer style.
FUSED_NORM = {"llama": "post_attention_layernorm", "phi3": "post_attention_layernorm",
              "gemma2": "pre_feedforward_layernorm"}


def _norm_mlp(layer, norm, hidden_states, residual):
    """``mlp(norm(hidden_states + residual))`` and the new residual; FP8 from the norm on for an FP8 MLP."""
    mlp = layer.mlp
    if isinstance(mlp, FusedMLP) and mlp.fp8_chain(hidden_states):
        q, scale, residual = norm(hidden_states, residual, out_dtype=torch.float8_e4m3fn, out_scaling="token")
        return mlp(q, scale, out_dtype=residual.dtype), residual
    hidden_states, residual = norm(hidden_states, residual)
    return mlp(hidden_states), residual


def _llama_forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                   use_cache=False, position_embeddings=None, **kwargs):
    residual = hidden_states
    hidden_states = self.input_layernorm(hidden_states)
    hidden_states, _ = self.self_attn(
        hidden_states=hidden_states,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        use_cache=use_cache,
        position_embeddings=position_embeddings,
        **kwargs,
    )
    hidden_states, residual = _norm_mlp(self, self.post_attention_layernorm, hidden_states, residual)
    hidden_states = residual + hidden_states
    return hidden_states


def _phi3_forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                  use_cache=False, position_embeddings=None, **kwargs):
    residual = hidden_states
    hidden_states = self.input_layernorm(hidden_states)
    hidden_states, _ = self.self_attn(
        hidden_states=hidden_states,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        use_cache=use_cache,
        position_embeddings=position_embeddings,
        **kwargs,
    )
    hidden_states, residual = _norm_mlp(self, self.post_attention_layernorm, self.resid_attn_dropout(hidden_states),
                                        residual)
    hidden_states = residual + self.resid_mlp_dropout(hidden_states)
    return hidden_states


def _gemma2_forward(self, hidden_states, position_embeddings=None, attention_mask=None, position_ids=None,
                    past_key_values=None, **kwargs):
    residual = hidden_states
    hidden_states = self.input_layernorm(hidden_states)
    hidden_states, _ = self.self_attn(
        hidden_states=hidden_states,
        position_embeddings=position_embeddings,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        **kwargs,
    )
    hidden_states = self.post_attention_layernorm(hidden_states)
    hidden_states, residual = _norm_mlp(self, self.pre_feedforward_layernorm, hidden_states, residual)
    hidden_states = self.post_feedforward_layernorm(hidden_states)
    hidden_states = residual + hidden_states
    return hidden_states


_FORWARDS = {"llama": _llama_forward, "phi3": _phi3_forward, "gemma2": _gemma2_forward}


def make_forward(style: str, module) -> types.MethodType:
    return types.MethodType(_FORWARDS[style], module)


def describe(style: str) -> str:
    return f"forward: residual add fused into {FUSED_NORM[style]} (fused_add_rmsnorm)"
