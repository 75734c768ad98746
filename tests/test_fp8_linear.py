"""FP8Linear and the model conversion helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from triton_ops.compute import fp8 as ref
from triton_ops.exceptions import InvalidArgumentError, ShapeError
from triton_ops.kernels.fp8_linear import FP8Linear, convert_to_fp8_linear

from .conftest import DEVICE


def _cos(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("M", [3, 80])  # weight-only small-M path / per-token activation quantization path
@pytest.mark.parametrize("gran", ["channel", "tensor"])
def test_from_linear_matches_reference(M, gran):
    lin = nn.Linear(96, 48).to(DEVICE)
    f = FP8Linear.from_linear(lin, weight_granularity=gran)
    assert f.weight.dtype == torch.float8_e4m3fn and f.weight.shape == (48, 96) and f.weight.is_contiguous()
    x = torch.randn(M, 96, device=DEVICE)
    y = f(x)
    assert y.shape == (M, 48) and y.dtype == torch.float32
    w = f.dequantized_weight().double().cpu().numpy()
    b = lin.bias.detach().double().cpu().numpy()
    if M <= 64:  # fp16 activations x exact FP8 weights: fp16 rounding of x only (~2^-11 relative)
        want = x.half().double().cpu().numpy() @ w.T + b
        assert ref.relative_error(y.detach().cpu().numpy(), want) < 2e-3
    else:  # activations quantized per token too: >= 28 dB against the unquantized product
        want = x.double().cpu().numpy() @ w.T + b
        assert ref.sqnr_db(y.detach().cpu().numpy(), want) >= 28.0


def test_mlp_cosine_similarity_and_conversion():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128), nn.GELU(), nn.Linear(128, 10))
    model = model.to(DEVICE).half()
    x = torch.randn(96, 128, device=DEVICE, dtype=torch.float16)
    with torch.no_grad():
        want = model.float()(x.float())
        model.half()
        convert_to_fp8_linear(model)
        got = model(x)
    # the classifier head (10 outputs, not a multiple of 16) is skipped
    assert model._fp8_converted == ["0", "2"] and isinstance(model[4], nn.Linear)
    # The "<1% accuracy loss" for a model: cosine similarity >= 0.999 against the fp16 model.
    assert _cos(got.float(), want) >= 0.999


def test_filter_and_state_dict():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    convert_to_fp8_linear(model, filter_fn=lambda name, m: name != "2")
    assert isinstance(model[0], FP8Linear) and isinstance(model[2], nn.Linear)
    sd = model.state_dict()
    assert sd["0.weight"].dtype == torch.float8_e4m3fn and sd["0.weight_scale"].shape == (64, 1)
    fresh = FP8Linear(64, 64)
    fresh.load_state_dict({k[2:]: v for k, v in sd.items() if k.startswith("0.")})
    assert torch.equal(fresh.weight.view(torch.uint8), model[0].weight.view(torch.uint8))


def test_module_init_and_errors():
    f = FP8Linear(32, 16, bias=False, dtype=torch.float16).to(DEVICE)
    y = f(torch.randn(2, 5, 32, device=DEVICE, dtype=torch.float16))
    assert y.shape == (2, 5, 16) and y.dtype == torch.float16 and not torch.isnan(y).any()
    with pytest.raises(ShapeError):
        f(torch.randn(4, 31, device=DEVICE, dtype=torch.float16))
    with pytest.raises(InvalidArgumentError):
        FP8Linear(0, 4)
    with pytest.raises(InvalidArgumentError):
        FP8Linear(8, 4, fp8_dtype=torch.float16)
    with pytest.raises(InvalidArgumentError):
        FP8Linear.from_linear(nn.Conv1d(3, 3, 1))
    with pytest.raises(InvalidArgumentError):
        convert_to_fp8_linear(nn.Linear(16, 16))


def test_compile_smoke():
    f = FP8Linear(64, 32).to(DEVICE)
    x = torch.randn(4, 64, device=DEVICE, dtype=torch.float16)
    g = torch.compile(f, fullgraph=True)
    np.testing.assert_allclose(g(x).detach().float().cpu().numpy(), f(x).detach().float().cpu().numpy())


@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 16, 64, 65, 4096])
def test_gpu_linear(M):
    lin = nn.Linear(4096, 14336, dtype=torch.bfloat16, device="cuda")
    f = FP8Linear.from_linear(lin)
    x = torch.randn(M, 4096, device="cuda", dtype=torch.bfloat16)
    assert _cos(f(x).float(), lin(x).float()) >= 0.999
    assert f.weight.numel() * f.weight.element_size() * 2 == lin.weight.numel() * lin.weight.element_size()


def test_module_dtype_casts_keep_fp8_weights(device):
    """``model.half()`` / ``.to(torch.bfloat16)`` convert floating buffers; the FP8 weight and its fp32
    scales must keep their dtype and bits (only the bias follows the module dtype)."""
    from triton_ops import FP8Linear

    lin = FP8Linear(64, 32, device=device)
    w_bits = lin.weight.view(torch.uint8).clone()
    s = lin.weight_scale.clone()
    for cast in (lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.float(), lambda m: m.to(device)):
        cast(lin)
        assert lin.weight.dtype == torch.float8_e4m3fn and lin.weight_scale.dtype == torch.float32
        assert torch.equal(lin.weight.view(torch.uint8), w_bits) and torch.equal(lin.weight_scale, s)
    lin.half()
    assert lin.bias.dtype == torch.float16
    x = torch.randn(3, 64, device=device, dtype=torch.float16)
    ref = x.float() @ lin.dequantized_weight().t() + lin.bias.float()
    out = lin(x)
    assert out.dtype == torch.float16
    assert torch.linalg.vector_norm(out.float() - ref) / torch.linalg.vector_norm(ref) < 2e-2
