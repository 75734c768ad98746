"""patch_model / unpatch_model on tiny random-init Hugging Face models of every supported family.

Models are built from configs in code (no downloads), in fp32 and eval mode, on the test device: the CPU
with the patched ops in Triton's interpreter, or the GPU where there is one (fp32 GEMMs run as exact fp32
dots in our kernels and, by PyTorch's default, in torch's, so the tolerances hold there too).

Each family's config exercises what is particular to it: GQA everywhere, sliding windows (Mistral,
Gemma2/3, OLMo3), softcapping through eager attention (Gemma2), per-head and whole-projection QK-norm
(Qwen3, Gemma3, OLMo2/3), ``1 + w`` norms and gelu_tanh MLPs (Gemma), partial rotary (Phi3, GPT-NeoX),
Phi3's packed qkv and gate_up projections, biases (Llama's mlp_bias, Qwen2's qkv bias) and RoPE scaling
types whose factors live in the cos/sin tables (Llama-3, YaRN, LongRoPE).

Tolerance of patched vs unpatched logits (``LOGITS_RTOL``): both are fp32 computations of the same
math that differ only in evaluation order -- the fused kernels accumulate their reductions (GEMM over K,
the mean of squares) in another order and fold the rounding of intermediate results into fp32 registers.
Each op's result then differs by a few fp32 ulps (u = 6e-8) times sqrt(K); through two layers and the
LM head this was measured at <= 2e-6 of the largest logit for every family here. 2e-5 leaves 10x margin
and is still far below what any wrong step produces (``test_a_wrong_op_is_caught``: >= 1e-2).
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as T

from triton_ops import FusedMLP, PatchReport, patch_model, unpatch_model
from triton_ops.integrations import hf_attention, hf_families
from triton_ops.kernels.rmsnorm import FusedAddRMSNorm

from .conftest import DEVICE, HAS_CUDA

LOGITS_RTOL = 2e-5  # of max |logit|; see the module docstring

_COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, pad_token_id=0,
               bos_token_id=None, eos_token_id=None)
_NO_GQA = {k: v for k, v in _COMMON.items() if k != "num_key_value_heads"}


def _config(family: str):
    c = _COMMON
    if family == "llama":
        return T.LlamaConfig(**c, mlp_bias=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    if family == "mistral":
        return T.MistralConfig(**c, sliding_window=4)
    if family == "qwen2":
        return T.Qwen2Config(**c, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                   "original_max_position_embeddings": 16})
    if family == "qwen3":
        return T.Qwen3Config(**c, head_dim=32)
    if family == "gemma":
        return T.GemmaConfig(**c, head_dim=32)
    if family == "gemma2":
        return T.Gemma2Config(**c, head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                              attn_logit_softcapping=5.0, final_logit_softcapping=30.0)
    if family == "gemma3":
        return T.Gemma3TextConfig(**c, head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                                  layer_types=["sliding_attention", "full_attention"])
    if family == "olmo2":
        return T.Olmo2Config(**c)
    if family == "olmo3":
        return T.Olmo3Config(**c, sliding_window=4, layer_types=["sliding_attention", "full_attention"])
    if family == "phi3":
        return T.Phi3Config(**c, rope_parameters={
            "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
            "original_max_position_embeddings": 16, "short_factor": [1.0, 1.5, 2.0, 2.5],
            "long_factor": [1.0, 2.0, 4.0, 8.0]})
    if family == "gpt_neox":
        return T.GPTNeoXConfig(**_NO_GQA, rotary_pct=0.25)
    raise KeyError(family)


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "olmo2", "olmo3", "phi3", "gpt_neox"]
#: Families whose q/k norms are fused with RoPE into fused_rmsnorm_rope; the others use apply_rope.
QK_NORM = {"qwen3", "gemma3", "olmo2", "olmo3"}
#: RMSNorm modules per decoder layer (plus the final norm); GPT-NeoX uses LayerNorm.
NORMS_PER_LAYER = {"gemma2": 4, "gemma3": 4, "gpt_neox": 0}
#: Pre-norm layers whose residual add before the second norm is fused into it (OLMo's norms come after
#: the add's operands are formed; GPT-NeoX has LayerNorms).
LAYER_FUSED = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3"}


def _build(family: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = _config(family)
    # Gemma2's attention-logit softcapping only exists in the eager attention function.
    attn = "eager" if family == "gemma2" else "sdpa"
    model = T.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, **kwargs).eval().to(DEVICE)
    with torch.no_grad():
        # HF initialises norm weights to 1 (Gemma: 0); random ones make a wrong offset or a dropped weight
        # visible in the logits.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _ids(seed: int = 1, batch: int = 2, seq: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, _COMMON["vocab_size"], (batch, seq), generator=g).to(DEVICE)


def _logits(model, ids, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, **kw).logits


def _assert_logits_close(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    assert err <= LOGITS_RTOL * scale, f"max |diff| {err:.3g} > {LOGITS_RTOL} x max |logit| {scale:.3g}"


class _Spy:
    """Counts calls of a function and forwards them."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Logits, report, state_dict
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_patched_logits_match(family, monkeypatch):
    model = _build(family)
    ref = copy.deepcopy(model)
    keys = list(ref.state_dict())
    rope_spy = _Spy(hf_attention._apply_rope())
    norm_rope_spy = _Spy(hf_attention.fused_rmsnorm_rope)
    monkeypatch.setattr(hf_attention, "_apply_rope", lambda: rope_spy)
    monkeypatch.setattr(hf_attention, "fused_rmsnorm_rope", norm_rope_spy)

    report = patch_model(model)
    n_layers = _COMMON["num_hidden_layers"]
    # Count the norm calls that receive a residual (the fused add of a patched decoder layer).
    with_residual = []
    for m in model.modules():
        if isinstance(m, FusedAddRMSNorm):
            m.register_forward_pre_hook(lambda mod, args: with_residual.append(len(args) > 1 and args[1] is not None))
    ids = _ids()
    _assert_logits_close(_logits(model, ids), _logits(ref, ids))
    assert sum(with_residual) == (n_layers if family in LAYER_FUSED else 0)

    # Every attention forward ran our kernels: q and k through fused_rmsnorm_rope, or both in apply_rope.
    if family in QK_NORM:
        assert (norm_rope_spy.calls, rope_spy.calls) == (2 * n_layers, 0)
    else:
        assert (norm_rope_spy.calls, rope_spy.calls) == (0, n_layers)

    # The report names every part: attention and MLP per layer, each RMSNorm; GPT-NeoX's LayerNorms and
    # non-gated MLPs are left with reasons.
    assert isinstance(report, PatchReport)
    norms = NORMS_PER_LAYER.get(family, 2) * n_layers + (1 if family != "gpt_neox" else 0)
    assert report.count("attention") == n_layers
    assert report.count("norm") == norms
    assert report.count("mlp") == (0 if family == "gpt_neox" else n_layers)
    assert report.count("layer") == (n_layers if family in LAYER_FUSED else 0)
    if family == "gpt_neox":
        reasons = {p.reason for p in report.skipped}
        assert any("not a gated MLP" in r for r in reasons) and any("LayerNorm" in r for r in reasons)
        assert len(report.skipped) == 3 * n_layers + 1
    else:
        assert report.skipped == []
    fused = [m for m in model.modules() if isinstance(m, (FusedAddRMSNorm, FusedMLP))]
    assert len(fused) == norms + report.count("mlp")

    # state_dict: same keys in the same order, same tensors.
    sd = model.state_dict()
    assert list(sd) == keys
    assert all(torch.equal(sd[k], v) for k, v in ref.state_dict().items())


@pytest.mark.parametrize("family", FAMILIES)
def test_unpatch_restores_original(family):
    model = _build(family)
    classes = {name: type(m) for name, m in model.named_modules()}
    ids = _ids()
    patch_model(model)
    # A checkpoint loaded while patched (the parameters are shared) carries over to the restored model.
    other = _build(family, seed=5)
    model.load_state_dict(other.state_dict())
    unpatch_model(model)
    assert {name: type(m) for name, m in model.named_modules()} == classes
    assert not any("forward" in vars(m) for m in model.modules())
    assert not hasattr(model, "_triton_ops_patch")
    # Hugging Face's own code again, so the same bits as the model the checkpoint came from.
    assert torch.equal(_logits(model, ids), _logits(other, ids))
    unpatch_model(model)  # not patched: nothing to do


def test_patched_state_dict_loads_both_ways():
    family = "qwen3"
    model = _build(family)
    ref = copy.deepcopy(model)
    patch_model(model)
    # patched -> unpatched: strict load, same model
    fresh = _build(family, seed=3)
    fresh.load_state_dict(model.state_dict())
    ids = _ids()
    assert torch.equal(_logits(fresh, ids), _logits(ref, ids))
    # unpatched checkpoint -> patched model
    other = _build(family, seed=4)
    model.load_state_dict(other.state_dict())
    _assert_logits_close(_logits(model, ids), _logits(other, ids))


@pytest.mark.parametrize("family", ["qwen3", "phi3"])
def test_gradients_match(family):
    # The patched ops are differentiable (their custom ops' backward): every parameter's gradient of the
    # LM loss matches HF's. Same fp32 evaluation-order argument as the logits (measured <= 2e-6).
    model = _build(family)
    ref = copy.deepcopy(model)
    patch_model(model)
    ids = _ids()
    for m in (ref, model):
        m(ids, labels=ids).loss.backward()
    for (name, p), (_, q) in zip(ref.named_parameters(), model.named_parameters()):
        assert q.grad is not None, name
        err = (q.grad - p.grad).abs().max().item()
        assert err <= LOGITS_RTOL * p.grad.abs().max().item(), (name, err)


@pytest.mark.parametrize("fp8", [False, True])
def test_save_pretrained_round_trip(fp8, tmp_path):
    # save_pretrained writes the patched model's state_dict: Hugging Face's keys, so from_pretrained builds
    # an ordinary model from it -- the same weights, or the dequantized FP8 ones.
    model = _build("qwen3")
    ref = copy.deepcopy(model)
    patch_model(model, fp8=fp8)
    model.save_pretrained(tmp_path)
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path).eval().to(DEVICE)
    want = {k: v for k, v in model.state_dict().items()}
    got = loaded.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], v) for k, v in want.items())
    if not fp8:
        ids = _ids()
        assert torch.equal(_logits(loaded, ids), _logits(ref, ids))


# ----------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_matches(family, cache):
    model = _build(family)
    ref = copy.deepcopy(model)
    patch_model(model)
    ids = _ids(seed=2, seq=5)
    # Left padding on the second row: per-row positions, i.e. per-token cos/sin tables in the kernels.
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    kw = dict(attention_mask=mask, max_new_tokens=3, do_sample=False)
    if cache == "static":
        # generate() would compile the decoding step on a GPU; test_generate_with_static_cache_compiled
        # covers that path, this one the eager forward on every device.
        kw.update(cache_implementation="static", disable_compile=True)
    want = ref.generate(ids, **kw)
    got = model.generate(ids, **kw)
    assert torch.equal(got, want), (got.tolist(), want.tolist())


# ----------------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------------
def test_compile_fullgraph_forward():
    # aot_eager traces with fake tensors (every op's fake implementation runs) and fails on any graph break
    # under fullgraph=True, without Inductor's C++ build time on the CPU.
    model = _build("qwen3")
    ref = copy.deepcopy(model)
    patch_model(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    ids = _ids()
    _assert_logits_close(_logits(compiled, ids), _logits(ref, ids))
    torch._dynamo.reset()


def test_generate_with_static_cache_compiled():
    # generate() compiles the decoding forward itself when the cache is static: on a GPU with its default
    # config (Inductor, CUDA graphs through mode="reduce-overhead"), on the CPU through a private switch
    # with aot_eager and fullgraph=True. One graph or more, no breaks, the same tokens.
    model = _build("llama")
    ref = copy.deepcopy(model)
    patch_model(model)
    ids = _ids(seed=2, seq=5)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    kw = dict(attention_mask=mask, max_new_tokens=3, do_sample=False, cache_implementation="static")
    want = ref.generate(ids, **kw)
    if HAS_CUDA:
        cc = T.CompileConfig(fullgraph=True)
    else:
        cc = T.CompileConfig(fullgraph=True, backend="aot_eager", mode=None)
        cc._compile_all_devices = True
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    got = model.generate(ids, compile_config=cc, **kw)
    stats = dict(torch._dynamo.utils.counters["stats"])
    breaks = dict(torch._dynamo.utils.counters["graph_break"])
    torch._dynamo.reset()
    assert stats.get("unique_graphs", 0) >= 1, stats  # the compiled path really ran
    assert not breaks, breaks
    assert torch.equal(got, want), (got.tolist(), want.tolist())


# ----------------------------------------------------------------------------------------------------
# Options, skips and the report
# ----------------------------------------------------------------------------------------------------
def test_options_leave_parts_alone():
    model = _build("llama")
    report = patch_model(model, norm=False, mlp=False)
    assert report.count("attention") == 2 and report.count() == 2
    assert {p.reason for p in report.skipped} == {"not requested (norm=False)", "not requested (mlp=False)"}
    unpatch_model(model)
    report = patch_model(model, rope=False)
    assert report.count("attention") == 0 and report.count("mlp") == 2 and report.count("layer") == 2
    assert not any("forward" in vars(layer.self_attn) for layer in model.model.layers)


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_qk_norms_alone_when_rope_is_off(family):
    # rope=False keeps HF's attention forward; its q_norm/k_norm modules are then plain norms to replace
    # (Gemma3 applies them to the transposed [b, h, s, d] view: strided rows).
    model = _build(family)
    ref = copy.deepcopy(model)
    report = patch_model(model, rope=False, mlp=False)
    assert report.count("norm") == NORMS_PER_LAYER.get(family, 2) * 2 + 1 + 2 * 2
    assert "model.layers.0.self_attn.q_norm" in report.paths("norm")
    ids = _ids()
    _assert_logits_close(_logits(model, ids), _logits(ref, ids))


@pytest.mark.parametrize("act, reason", [("relu", "ReLU"), ("quick_gelu", "QuickGELUActivation"),
                                         ("gelu_10", "ClippedGELUActivation")])
def test_unsupported_activation_is_reported(act, reason):
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(**_COMMON, hidden_act=act)).eval().to(DEVICE)
    report = patch_model(model)
    assert report.count("mlp") == 0
    skipped = [p for p in report.skipped if p.kind == "mlp"]
    assert len(skipped) == 2 and all(reason in p.reason for p in skipped)
    assert type(model.model.layers[0].mlp).__name__ == "LlamaMLP"
    assert reason in str(report)


@pytest.mark.parametrize("act, ours", [("silu", "silu"), ("swish", "silu"), ("gelu", "gelu"),
                                       ("gelu_python", "gelu"), ("gelu_pytorch_tanh", "gelu_tanh"),
                                       ("gelu_new", "gelu_tanh"), ("gelu_fast", "gelu_tanh"),
                                       ("gelu_accurate", "gelu_tanh")])
def test_activation_mapping_is_the_same_function(act, ours):
    from transformers.activations import ACT2FN

    from triton_ops import fused_gated_mlp
    from triton_ops.kernels.mlp import resolve_activation

    hf = ACT2FN[act]
    assert resolve_activation(hf) == ours
    torch.manual_seed(0)
    x = torch.randn(5, 32, device=DEVICE)
    wg, wu = torch.randn(24, 32, device=DEVICE) / 4, torch.randn(24, 32, device=DEVICE) / 4
    want = hf(x @ wg.t()) * (x @ wu.t())
    got = fused_gated_mlp(x, wg, wu, ours)
    # fp32 products over K=32 in another order, and the activation's fp32 evaluation: ~1e-6 relative.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_unknown_rope_type_is_reported():
    model = _build("llama")
    model.config.rope_parameters = dict(model.config.rope_parameters, rope_type="mystery")
    report = patch_model(model)
    assert report.count("attention") == 0
    assert all("rope_type 'mystery'" in p.reason for p in report.skipped if p.kind == "attention")
    assert len([p for p in report.skipped if p.kind == "attention"]) == 2
    assert report.count("mlp") == 2  # the rest is patched


def test_changed_transformers_source_is_reported(monkeypatch):
    monkeypatch.setattr(hf_families, "_fingerprint", lambda obj: "000000000000")
    hf_families._source_mismatch.cache_clear()
    try:
        model = _build("qwen3")
        report = patch_model(model)
    finally:
        hf_families._source_mismatch.cache_clear()
    assert report.count() == 0
    # attention, MLP and decoder layer of both layers, the 5 decoder/final norms, and -- their attention
    # left as it is -- the q_norm/k_norm modules as standalone norms
    assert len(report.skipped) == 2 + 2 + 2 + 5 + 4
    assert all(f"transformers {hf_families.MIRRORED_TRANSFORMERS} code" in p.reason for p in report.skipped)


def test_installed_transformers_matches_the_mirrored_code():
    # Every family's fingerprints match the installed transformers (else its parts would all be skipped).
    for family in hf_families.FAMILIES:
        _build(family.name)  # imports the modeling module
        for role in ("Attention", "RMSNorm", "MLP"):
            if f"{family.prefix}{role}" in family.fingerprints:
                assert hf_families.source_mismatch(family, role) is None, (family.name, role)


def test_mixed_precision_llama_norm_is_left_alone():
    # A float32 Llama norm weight with bfloat16 activations makes HF's norm return float32; the fused norm
    # would return bfloat16, so the patcher must not touch it (Gemma-style norms return x's dtype anyway).
    model = _build("llama").to(torch.bfloat16)
    model.model.norm.float()
    report = patch_model(model, rope=False, mlp=False)
    skipped = [p for p in report.skipped if p.path == "model.norm"]
    assert len(skipped) == 1 and "output dtype would change" in skipped[0].reason
    assert report.count("norm") == 4


def test_parts_wrapped_by_others_are_left_alone():
    # accelerate's device_map hooks (an _hf_hook attribute and a wrapped instance forward) or another
    # library's instance forward: replacing the module or its forward would drop their wrapper.
    model = _build("llama")
    attn = model.model.layers[0].self_attn
    attn.forward = attn.forward  # an instance-level forward, as a wrapper leaves
    model.model.layers[1].mlp._hf_hook = object()
    report = patch_model(model)
    skipped = {p.path: p.reason for p in report.skipped}
    assert "already replaced on the instance" in skipped["model.layers.0.self_attn"]
    assert "accelerate hook" in skipped["model.layers.1.mlp"]
    assert report.paths("attention") == ["model.layers.1.self_attn"]
    assert report.paths("mlp") == ["model.layers.0.mlp"]


def test_patch_twice_and_compiled_wrapper_are_refused():
    model = _build("llama")
    with pytest.raises(ValueError, match="torch.compile"):
        patch_model(torch.compile(model))
    patch_model(model, mlp=False)
    with pytest.raises(ValueError, match="already patched"):
        patch_model(model)


def test_report_text_and_non_hf_model():
    model = _build("gemma3")
    text = str(patch_model(model, fp8=False))
    assert "15 parts replaced, 0 left unpatched" in text
    assert "Gemma3DecoderLayer -> forward: residual add fused into pre_feedforward_layernorm" in text
    assert "model.layers.{0,1}.pre_feedforward_layernorm" in text
    assert "Gemma3RMSNorm -> FusedAddRMSNorm(64, 1 + w)" in text
    assert "Gemma3MLP -> FusedMLP(gelu_tanh)" in text
    report = patch_model(torch.nn.Sequential(torch.nn.Linear(4, 4)))  # nothing to take
    assert report.count() == 0 and report.skipped == []
    assert "0 parts replaced" in str(report)


def test_gemma3_multimodal_patches_the_text_decoder():
    # The multimodal model's language model is made of the Gemma3 text classes; its SigLIP vision tower is
    # not a supported family and is listed as left alone.
    text = dict(_COMMON, vocab_size=300, head_dim=16, sliding_window=4, query_pre_attn_scalar=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    cfg = T.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=299,
                         boi_token_index=297, eoi_token_index=298)
    torch.manual_seed(0)
    model = T.Gemma3ForConditionalGeneration(cfg).eval().to(DEVICE)
    ref = copy.deepcopy(model)
    report = patch_model(model)
    assert report.paths("attention") == [f"model.language_model.layers.{i}.self_attn" for i in range(2)]
    assert report.count("mlp") == 2 and report.count("layer") == 2
    left = {p.original for p in report.skipped}
    assert {"SiglipAttention", "SiglipMLP", "LayerNorm"} <= left
    assert "model.vision_tower.encoder.layers.0.self_attn" in str(report)
    ids = torch.randint(1, 290, (1, 6), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    _assert_logits_close(_logits(model, ids), _logits(ref, ids))


@pytest.mark.parametrize("corrupt", ["rope", "norm_offset"])
def test_a_wrong_op_is_caught(corrupt, monkeypatch):
    # The logits comparison detects a wrong kernel: a sign error in the RoPE rotation, or a norm that
    # loses Gemma's "1 +" -- each moves the logits by far more than LOGITS_RTOL.
    family = "llama" if corrupt == "rope" else "gemma"
    model = _build(family)
    ref = copy.deepcopy(model)
    if corrupt == "rope":
        apply_rope = hf_attention._apply_rope()
        monkeypatch.setattr(hf_attention, "_apply_rope",
                            lambda: lambda q, k, cos, sin, **kw: apply_rope(q, k, cos, -sin, **kw))
    patch_model(model, mlp=False)
    if corrupt == "norm_offset":
        model.model.norm.weight_offset = 0.0
    got, want = _logits(model, _ids()), _logits(ref, _ids())
    err = (got - want).abs().max().item()
    assert err > 1e-2 * want.abs().max().item()
    with pytest.raises(AssertionError):
        _assert_logits_close(got, want)


# ----------------------------------------------------------------------------------------------------
# FP8
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen3", "phi3"])
def test_fp8_patch(family):
    model = _build(family)
    ref = copy.deepcopy(model)
    keys = {k: v.dtype for k, v in ref.state_dict().items()}
    report = patch_model(model, fp8=True)
    assert report.count("mlp") == 2 and all("FP8" in p.replacement for p in report.replaced if p.kind == "mlp")
    # The original-precision MLP weights are released (kept only as meta placeholders for unpatch).
    state = model._triton_ops_patch
    fp8_originals = [orig for _, _, orig, _, fp8 in state.modules if fp8]
    assert len(fp8_originals) == 2 and all(p.is_meta for m in fp8_originals for p in m.parameters())

    ids = _ids()
    got, want = _logits(model, ids), _logits(ref, ids)
    # e4m3 keeps ~31 dB per element (README: ~2.8% relative error); with the weights and activations of
    # both MLPs quantized, the logits' cosine similarity to the fp32 model measured 0.9958-0.9979 over
    # seeds for these configs. A broken FP8 path (a lost or misapplied scale) gives ~0 or NaN.
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0).item()
    assert cos > 0.99, cos

    # state_dict: the Hugging Face keys and dtypes, holding the dequantized FP8 weights the model uses.
    sd = model.state_dict()
    assert {k: v.dtype for k, v in sd.items()} == keys
    fresh = _build(family, seed=3)
    fresh.load_state_dict(sd)
    mlp = model.model.layers[0].mlp
    name = "gate_up_proj" if family == "phi3" else "gate_proj"
    deq = mlp.hf_state_dict()[f"{name}.weight"]
    assert torch.equal(getattr(fresh.model.layers[0].mlp, name).weight, deq)
    assert not torch.equal(deq, getattr(ref.model.layers[0].mlp, name).weight)  # FP8 rounding is real
    # The dequantized model differs from the FP8 one only by the per-token activation quantization
    # (measured 0.9988-0.9993).
    cos = torch.nn.functional.cosine_similarity(_logits(fresh, ids).flatten(), got.flatten(), dim=0).item()
    assert cos > 0.995, cos

    # A Hugging Face checkpoint loads into the FP8 model (quantized on the way in).
    model.load_state_dict(ref.state_dict())
    assert torch.equal(_logits(model, ids), got)

    # unpatch: HF modules again, holding the dequantized FP8 weights.
    unpatch_model(model)
    assert type(model.model.layers[0].mlp).__name__ == f"{family.capitalize()}MLP"
    assert torch.equal(getattr(model.model.layers[0].mlp, name).weight, deq)
    assert torch.equal(_logits(model, ids), _logits(fresh, ids))


def test_fp8_with_mlp_bias_falls_back_and_says_so():
    model = _build("llama")  # mlp_bias=True
    report = patch_model(model, fp8=True, rope=False, norm=False)
    assert report.count("mlp") == 2
    assert all("FP8" not in p.replacement for p in report.replaced)
    notes = [p for p in report.skipped if p.kind == "mlp"]
    assert len(notes) == 2 and all("fp8 not applied" in p.reason and "bias" in p.reason for p in notes)
    assert not model.model.layers[0].mlp.is_fp8
