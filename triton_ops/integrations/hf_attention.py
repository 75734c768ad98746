"""Attention forwards for the Hugging Face families, computing q/k norm + RoPE with this library's ops.

Each forward is the transformers 5.17 forward of its family, step for step -- projections, the
``attention_interface`` dispatch on ``config._attn_implementation`` (eager, sdpa, flash, flex ...), the
same keyword arguments (dropout, scaling, sliding window, softcap), the KV-cache update, the output
projection -- except for the two steps this library fuses:

* QK-norm families (Qwen3, Gemma3: a per-head RMSNorm; OLMo2/3: an RMSNorm over the whole projection)
  normalise and rotate q and k with :func:`~triton_ops.fused_rmsnorm_rope`, one kernel per tensor on the
  ``[batch, seq, heads * head_dim]`` projection output, before the transpose to ``[b, h, s, d]``;
* the other families rotate q and k with :func:`~triton_ops.apply_rope` (one kernel for both).

The module keeps all its submodules (``q_norm``/``k_norm`` included: their weights feed the fused kernel),
so ``state_dict()`` does not change. The forward is bound to the instance; ``unpatch_model`` deletes it.
"""

from __future__ import annotations

import sys
import types

from ..kernels.rmsnorm_rope import fused_rmsnorm_rope
from .hf_families import AttentionSpec, Family


def _apply_rope():
    from ..kernels.rope import apply_rope

    return apply_rope


def _attention_functions():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS


def _interface_kwargs(spec: AttentionSpec):
    """The keyword arguments beyond dropout/scaling the family passes to its attention function."""
    if spec.sliding == "config":
        if spec.softcap:
            return lambda self: {"sliding_window": getattr(self.config, "sliding_window", None),
                                 "softcap": self.attn_logit_softcapping}
        return lambda self: {"sliding_window": getattr(self.config, "sliding_window", None)}
    if spec.sliding == "self":
        if spec.softcap:
            return lambda self: {"sliding_window": self.sliding_window, "softcap": self.attn_logit_softcapping}
        return lambda self: {"sliding_window": self.sliding_window}
    if spec.softcap:
        return lambda self: {"softcap": self.attn_logit_softcapping}
    return lambda self: {}


def make_forward(family: Family, module) -> types.MethodType:
    """The patched forward of one attention module, bound to it."""
    spec = family.attention
    eager = sys.modules[family.module].eager_attention_forward
    extra = _interface_kwargs(spec)
    attention_functions = _attention_functions()
    if spec.qkv == "neox":
        return types.MethodType(_neox_forward(eager, attention_functions), module)
    project = _project_phi3 if spec.qkv == "phi3" else _project_separate
    if spec.qk_norm is not None:
        qk = _qk_norm_rope(family.norm.eps_attr, family.norm.weight_offset)
    else:
        qk = _rope_only(_apply_rope())

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)

        q, k, v = project(self, hidden_states)  # [batch, seq, heads * head_dim] each
        cos, sin = position_embeddings
        query_states, key_states = qk(self, q, k, cos, sin, hidden_shape)
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


def _project_separate(self, hidden_states):
    return self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)


def _project_phi3(self, hidden_states):
    # Phi-3's qkv_proj output holds q | k | v as column blocks; the slices are strided views, as in HF.
    qkv = self.qkv_proj(hidden_states)
    query_pos = self.config.num_attention_heads * self.head_dim
    kv = self.num_key_value_heads * self.head_dim
    return qkv[..., :query_pos], qkv[..., query_pos:query_pos + kv], qkv[..., query_pos + kv:]


def _qk_norm_rope(eps_attr: str, weight_offset: float):
    """q/k RMSNorm + RoPE in one kernel each. The weight's size picks the norm: ``[head_dim]`` (Qwen3,
    Gemma3) normalises each head, ``[heads * head_dim]`` (OLMo2) the whole projection. HF's per-token
    ``[batch, seq, rot]`` (or ``[1, seq, rot]``) tables are passed as they are."""

    def qk(self, q, k, cos, sin, hidden_shape):
        qn, kn = self.q_norm, self.k_norm
        # tables narrower than a head are partial rotary (config.partial_rotary_factor), asked for explicitly
        rot = cos.shape[-1]
        rotary_dim = rot if rot != self.head_dim else None
        q = fused_rmsnorm_rope(q, qn.weight, cos, sin, getattr(qn, eps_attr), head_dim=self.head_dim,
                               weight_offset=weight_offset, rotary_dim=rotary_dim)
        k = fused_rmsnorm_rope(k, kn.weight, cos, sin, getattr(kn, eps_attr), head_dim=self.head_dim,
                               weight_offset=weight_offset, rotary_dim=rotary_dim)
        return q.view(hidden_shape).transpose(1, 2), k.view(hidden_shape).transpose(1, 2)

    return qk


def _rope_only(apply_rope):
    """RoPE on q and k in one kernel, on the ``[b, h, s, d]`` views HF rotates (partial rotary when the
    tables are narrower than head_dim: the remaining channels pass through)."""

    def qk(self, q, k, cos, sin, hidden_shape):
        q = q.view(hidden_shape).transpose(1, 2)
        k = k.view(hidden_shape).transpose(1, 2)
        rot = cos.shape[-1]
        return apply_rope(q, k, cos, sin, rotary_dim=rot if rot != q.shape[-1] else None)

    return qk


def _neox_forward(eager, attention_functions):
    apply_rope = _apply_rope()

    def forward(self, hidden_states, attention_mask, layer_past=None, position_embeddings=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, 3 * self.head_size)

        # Per head [q | k | v]: the chunks are strided [b, h, s, d] views, as in HF.
        qkv = self.query_key_value(hidden_states).view(hidden_shape).transpose(1, 2)
        query_states, key_states, value_states = qkv.chunk(3, dim=-1)

        cos, sin = position_embeddings
        rot = cos.shape[-1]
        query_states, key_states = apply_rope(query_states, key_states, cos, sin,
                                              rotary_dim=rot if rot != self.head_size else None)

        if layer_past is not None:
            key_states, value_states = layer_past.update(key_states, value_states, self.layer_idx)

        attention_interface = attention_functions.get_interface(self.config._attn_implementation, eager)
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            scaling=self.scaling,
            dropout=0.0 if not self.training else self.attention_dropout,
            **kwargs,
        )

        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.dense(attn_output)
        return attn_output, attn_weights

    return forward


def describe(family: Family) -> str:
    """What the patched forward runs instead of HF's q/k steps (for the report)."""
    spec = family.attention
    if spec.qk_norm == "head":
        off = " (1 + w)" if family.norm.weight_offset else ""
        return f"forward: per-head q/k RMSNorm{off} + RoPE fused (fused_rmsnorm_rope)"
    if spec.qk_norm == "full":
        return "forward: q/k RMSNorm over the projection + RoPE fused (fused_rmsnorm_rope)"
    return "forward: RoPE on q and k (apply_rope)"
