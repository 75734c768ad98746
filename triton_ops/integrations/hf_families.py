"""The Hugging Face transformers model families the patcher knows, and how each one's parts behave.

Every entry names a family's classes and what their forwards compute, as read from the transformers
5.17 modeling files. A class is recognised only by its exact module and name (a subclass, or a class a
library has replaced, is someone else's code). ``fingerprints`` holds a hash of each class's source (and
of the module's ``apply_rotary_pos_emb`` + ``rotate_half``) as installed when these entries were written:
when the installed transformers defines a class differently, the patcher leaves that part alone and
says so in its report instead of running a forward that may no longer match.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import textwrap
from dataclasses import dataclass, field
from functools import cache, lru_cache

#: The transformers release whose modeling code the entries (and the patched forwards) mirror.
MIRRORED_TRANSFORMERS = "5.17.0"

#: RoPE types whose cos/sin tables Hugging Face's rotary-embedding modules compute and whose attention
#: code applies them with the same ``q * cos + rotate_half(q) * sin`` (partial rotary: on the first
#: ``cos.shape[-1]`` channels). Scaling (linear, NTK/dynamic, YaRN, LongRoPE, Llama-3, proportional) and
#: YaRN/LongRoPE's attention factor are folded into the tables, so applying the tables is the whole job.
KNOWN_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional")


@dataclass(frozen=True)
class AttentionSpec:
    """How one family's attention forward differs from Llama's.

    * ``qkv``: ``"separate"`` (q_proj/k_proj/v_proj), ``"phi3"`` (one qkv_proj, q|k|v column blocks),
      ``"neox"`` (one query_key_value, per head [q|k|v]).
    * ``qk_norm``: None; ``"head"`` (Qwen3, Gemma3: RMSNorm over each head_dim slice, then RoPE); or
      ``"full"`` (OLMo2/3: RMSNorm over the whole q/k projection, then RoPE).
    * ``sliding``: where the ``sliding_window`` argument of the attention function comes from: None (not
      passed), ``"config"`` (``getattr(config, "sliding_window", None)``), ``"self"`` (the module's own).
    * ``softcap``: passes ``softcap=self.attn_logit_softcapping`` (Gemma2).
    """

    qkv: str = "separate"
    qk_norm: str | None = None
    sliding: str | None = None
    softcap: bool = False


@dataclass(frozen=True)
class NormSpec:
    """An RMSNorm class: the attribute holding eps, ``weight_offset`` (Gemma scales by ``1 + w``) and
    ``round_before_weight``: Llama-style norms return ``weight * x_hat.to(x.dtype)`` (x_hat rounded to the
    input dtype before the multiply, and a float32 weight promotes the output to float32); the others
    multiply in float32 and round once, as the fused kernel does."""

    eps_attr: str
    weight_offset: float = 0.0
    round_before_weight: bool = False


@dataclass(frozen=True)
class Family:
    name: str
    prefix: str  # class-name prefix: "Llama" -> LlamaAttention, LlamaRMSNorm, LlamaMLP
    attention: AttentionSpec
    norm: NormSpec | None  # None: the family uses nn.LayerNorm
    mlp_act_attr: str | None  # attribute holding the gated MLP's activation; None: not a gated MLP
    fingerprints: dict[str, str] = field(default_factory=dict)
    #: decoder-layer style whose residual add folds into the following norm (hf_layers); None: no such add
    layer: str | None = None

    @property
    def module(self) -> str:
        return f"transformers.models.{self.name}.modeling_{self.name}"


_LLAMA_NORM = NormSpec("variance_epsilon", round_before_weight=True)
_GEMMA_NORM = NormSpec("eps", weight_offset=1.0)
_OLMO_NORM = NormSpec("variance_epsilon")

FAMILIES: tuple[Family, ...] = (
    Family("llama", "Llama", AttentionSpec(), _LLAMA_NORM, "act_fn",
           {"LlamaAttention": "87ac6a454e19", "LlamaRMSNorm": "3f012147307d", "LlamaMLP": "c35b6e992834",
            "rope": "ea2343f714a4", "LlamaDecoderLayer": "7ecbd636f826"}, layer="llama"),
    Family("mistral", "Mistral", AttentionSpec(sliding="config"), _LLAMA_NORM, "act_fn",
           {"MistralAttention": "da11b3deab78", "MistralRMSNorm": "a9c3596b581d", "MistralMLP": "101558eeb427",
            "rope": "ea2343f714a4", "MistralDecoderLayer": "96f3341d8cfe"}, layer="llama"),
    Family("qwen2", "Qwen2", AttentionSpec(sliding="self"), _LLAMA_NORM, "act_fn",
           {"Qwen2Attention": "71eaab7b2f1a", "Qwen2RMSNorm": "4d37f89b119f", "Qwen2MLP": "b730c73312e8",
            "rope": "ea2343f714a4", "Qwen2DecoderLayer": "50181918d7f5"}, layer="llama"),
    Family("qwen3", "Qwen3", AttentionSpec(qk_norm="head", sliding="self"), _LLAMA_NORM, "act_fn",
           {"Qwen3Attention": "193f79b66ef0", "Qwen3RMSNorm": "a6be7f34ad2c", "Qwen3MLP": "cbe8e45014af",
            "rope": "ea2343f714a4", "Qwen3DecoderLayer": "221f753b6cd3"}, layer="llama"),
    Family("gemma", "Gemma", AttentionSpec(), _GEMMA_NORM, "act_fn",
           {"GemmaAttention": "986fba0e63b1", "GemmaRMSNorm": "ae74cd2133b2", "GemmaMLP": "08952b04da06",
            "rope": "ea2343f714a4", "GemmaDecoderLayer": "47b8c5f16a4f"}, layer="llama"),
    Family("gemma2", "Gemma2", AttentionSpec(sliding="self", softcap=True), _GEMMA_NORM, "act_fn",
           {"Gemma2Attention": "40a77a3f858e", "Gemma2RMSNorm": "5eb4c168c9bd", "Gemma2MLP": "bcae7a8059f2",
            "rope": "ea2343f714a4", "Gemma2DecoderLayer": "be7ad0184c89"}, layer="gemma2"),
    Family("gemma3", "Gemma3", AttentionSpec(qk_norm="head", sliding="self"), _GEMMA_NORM, "act_fn",
           {"Gemma3Attention": "55f29714cb1d", "Gemma3RMSNorm": "efad4b5a58e7", "Gemma3MLP": "a598ea3af680",
            "rope": "ea2343f714a4", "Gemma3DecoderLayer": "d160aaf9604d"}, layer="gemma2"),
    Family("olmo2", "Olmo2", AttentionSpec(qk_norm="full"), _OLMO_NORM, "act_fn",
           {"Olmo2Attention": "e28d7e0c5952", "Olmo2RMSNorm": "9cca1c39efe9", "Olmo2MLP": "6de1910cecb5",
            "rope": "8ec8adf714a4"}),
    Family("olmo3", "Olmo3", AttentionSpec(qk_norm="full", sliding="self"), _OLMO_NORM, "act_fn",
           {"Olmo3Attention": "d771598ffdaf", "Olmo3RMSNorm": "4d5d451e517a", "Olmo3MLP": "870d6b18878c",
            "rope": "8ec8adf714a4"}),
    Family("phi3", "Phi3", AttentionSpec(qkv="phi3", sliding="config"), _LLAMA_NORM, "activation_fn",
           {"Phi3Attention": "46165109d81e", "Phi3RMSNorm": "ef274faa68b8", "Phi3MLP": "a73eb58c0b9b",
            "rope": "0d2d41f714a4", "Phi3DecoderLayer": "acb5511091dc"}, layer="phi3"),
    Family("gpt_neox", "GPTNeoX", AttentionSpec(qkv="neox"), None, None,
           {"GPTNeoXAttention": "aa09e8b21725", "GPTNeoXMLP": "3ce5932bf46f", "rope": "8e6270f714a4"}),
)

ROLES = ("Attention", "RMSNorm", "MLP", "DecoderLayer")


def lookup(cls: type) -> tuple[Family, str] | None:
    """(family, role) for a class one of the families defines, role in ROLES; else None."""
    return _index().get((cls.__module__, cls.__name__))


@lru_cache(maxsize=1)
def _index() -> dict[tuple[str, str], tuple[Family, str]]:
    return {(f.module, f.prefix + role): (f, role) for f in FAMILIES for role in ROLES}


def _fingerprint(obj) -> str:
    return hashlib.sha256(textwrap.dedent(inspect.getsource(obj)).encode()).hexdigest()[:12]


def source_mismatch(family: Family, role: str) -> str | None:
    """None when the installed class (and, for attention, the module's RoPE functions) is the code this
    integration mirrors; otherwise the reason it is not."""
    return _source_mismatch(family.name, role)


@cache
def _source_mismatch(name: str, role: str) -> str | None:
    family = next(f for f in FAMILIES if f.name == name)
    mod = sys.modules.get(family.module)
    if mod is None:
        return f"{family.module} is not imported"
    names = [family.prefix + role] + (["rope"] if role == "Attention" else [])
    for name in names:
        want = family.fingerprints.get(name)
        try:
            if name == "rope":
                got = _fingerprint(mod.apply_rotary_pos_emb)[:6] + _fingerprint(mod.rotate_half)[:6]
            else:
                got = _fingerprint(getattr(mod, name))
        except (AttributeError, OSError, TypeError) as e:
            return f"cannot read the source of {family.module}.{name} ({e})"
        if got != want:
            what = "apply_rotary_pos_emb/rotate_half" if name == "rope" else name
            return (f"the installed transformers' {what} differs from the transformers "
                    f"{MIRRORED_TRANSFORMERS} code this patch mirrors")
    return None


def rope_types(config) -> list[str]:
    """The rope_type(s) a config uses (Gemma3-style configs have one parameter set per layer type)."""
    params = getattr(config, "rope_parameters", None)
    if not params:
        return ["default"]
    if "rope_type" in params or "rope_theta" in params:
        return [params.get("rope_type", "default")]
    return sorted({(p or {}).get("rope_type", "default") for p in params.values() if isinstance(p, dict)})
