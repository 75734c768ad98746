"""FusedMLP: a whole gated MLP (fused gate/up kernel + down_proj) with Hugging Face's parameter names."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from triton_ops import FusedMLP, InvalidArgumentError, UnsupportedError
from triton_ops.kernels.mlp import resolve_activation

from .conftest import DEVICE

# fp32 GEMMs over K <= 96 accumulated in another order than torch's, then down_proj: ~1e-6 relative.
RTOL = ATOL = 1e-5


def _cfg(**kw):
    base = dict(hidden_size=48, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2)
    base.update(kw)
    return base


@pytest.mark.parametrize("bias", [False, True])
def test_from_hf_llama_matches_and_shares_parameters(bias):
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(0)
    hf = LlamaMLP(T.LlamaConfig(**_cfg(mlp_bias=bias))).eval().to(DEVICE)
    fused = FusedMLP.from_hf(hf)
    assert fused.activation == "silu" and not fused.packed
    assert list(fused.state_dict()) == list(hf.state_dict())
    assert fused.gate_proj is hf.gate_proj and fused.down_proj is hf.down_proj  # shared, not copied
    x = torch.randn(2, 5, 48, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), hf(x), rtol=RTOL, atol=ATOL)
    # Differentiable: the custom op's backward against autograd through HF's module.
    xg = x.clone().requires_grad_()
    fused(xg).square().sum().backward()
    g_fused = (xg.grad.clone(), hf.gate_proj.weight.grad.clone())
    xg.grad = None
    hf.zero_grad()
    hf(xg).square().sum().backward()
    torch.testing.assert_close(g_fused[0], xg.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_fused[1], hf.gate_proj.weight.grad, rtol=1e-4, atol=1e-5)


def test_from_hf_phi3_packed():
    from transformers.models.phi3.modeling_phi3 import Phi3MLP

    torch.manual_seed(0)
    hf = Phi3MLP(T.Phi3Config(**_cfg())).eval().to(DEVICE)
    fused = FusedMLP.from_hf(hf)
    assert fused.packed and list(fused.state_dict()) == ["gate_up_proj.weight", "down_proj.weight"]
    x = torch.randn(3, 48, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), hf(x), rtol=RTOL, atol=ATOL)


def test_gemma_gelu_tanh():
    from transformers.models.gemma.modeling_gemma import GemmaMLP

    torch.manual_seed(0)
    hf = GemmaMLP(T.GemmaConfig(**_cfg(head_dim=12))).eval().to(DEVICE)
    fused = FusedMLP.from_hf(hf)
    assert fused.activation == "gelu_tanh"
    x = torch.randn(4, 48, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), hf(x), rtol=RTOL, atol=ATOL)


def test_constructor_names_and_math():
    torch.manual_seed(0)
    m = FusedMLP(32, 80, "gelu", bias=True, device=DEVICE)
    assert [k for k, _ in m.named_parameters()] == ["gate_proj.weight", "gate_proj.bias", "up_proj.weight",
                                                      "up_proj.bias", "down_proj.weight", "down_proj.bias"]
    x = torch.randn(7, 32, device=DEVICE)
    with torch.no_grad():
        want = m.down_proj(torch.nn.functional.gelu(m.gate_proj(x)) * m.up_proj(x))
        torch.testing.assert_close(m(x), want, rtol=RTOL, atol=ATOL)
    packed = FusedMLP(32, 80, packed=True)
    assert [k for k, _ in packed.named_parameters()] == ["gate_up_proj.weight", "down_proj.weight"]


def test_fp8_state_dict_keeps_hf_keys_and_follows_casts():
    torch.manual_seed(0)
    m = FusedMLP(64, 128, "silu", device=DEVICE)
    ref = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(5, 64, device=DEVICE)
    with torch.no_grad():
        want = m(x)
    assert m.to_fp8() is m and m.to_fp8() is m  # idempotent
    sd = m.state_dict()
    assert list(sd) == list(ref) and all(v.dtype == torch.float32 for v in sd.values())
    # dequantized e4m3 weights: within e4m3's relative step (2^-3) of the originals, and not equal
    for k in ref:
        assert not torch.equal(sd[k], ref[k])
        assert ((sd[k] - ref[k]).abs() <= 0.07 * ref[k].abs().amax(dim=1, keepdim=True)).all()
    with torch.no_grad():
        got = m(x)
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0).item()
    assert cos > 0.995, cos  # per-token activations and per-channel weights in e4m3 (~31 dB each)
    # Loading Hugging Face weights quantizes them: the same buffers as quantizing at conversion.
    fp8_before = m.gate_up.weight_fp8.clone()
    m.load_state_dict(ref)
    assert torch.equal(m.gate_up.weight_fp8.view(torch.uint8), fp8_before.view(torch.uint8))
    # model.half(): FP8 buffers keep their dtype; state_dict follows the cast.
    m.half()
    assert m.gate_up.weight_fp8.dtype == torch.float8_e4m3fn and m.down_proj.weight.dtype == torch.float8_e4m3fn
    assert all(v.dtype == torch.float16 for v in m.state_dict().values())


def test_fp8_refuses_biases():
    with pytest.raises(UnsupportedError, match="bias"):
        FusedMLP(32, 64, bias=True).to_fp8()


def test_resolve_activation():
    assert resolve_activation("swish") == "silu"
    assert resolve_activation(torch.nn.SiLU()) == "silu"
    assert resolve_activation(torch.nn.GELU()) == "gelu"
    assert resolve_activation(torch.nn.GELU(approximate="tanh")) == "gelu_tanh"
    with pytest.raises(UnsupportedError, match="ReLU"):
        resolve_activation(torch.nn.ReLU())
    with pytest.raises(ValueError):
        resolve_activation("relu")


def test_from_hf_rejects_what_it_cannot_take():
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXMLP

    with pytest.raises(InvalidArgumentError):
        FusedMLP.from_hf(GPTNeoXMLP(T.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4)))
    from transformers.models.llama.modeling_llama import LlamaMLP

    mlp = LlamaMLP(T.LlamaConfig(**_cfg()))
    mlp.gate_proj = torch.nn.Linear(48, 80, bias=False)
    with pytest.raises(InvalidArgumentError, match="outputs"):
        FusedMLP.from_hf(mlp)
