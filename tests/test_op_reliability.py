"""Per-op reliability contracts found by an adversarial pass over the public entry points: bf16 in the CPU
interpreter, ``out=`` buffers (overlap, autograd), explicit partial rotary, non-tensor and non-integer
arguments, module constructors, transposed weights, fake-tensor tracing, and tuned-config validation."""

from __future__ import annotations

import math

import pytest
import torch

from tests._rope_helpers import tables
from triton_ops.kernels.gated_mlp import fused_gated_mlp, gated_mlp_reference_torch
from triton_ops.kernels.rmsnorm_rope import fused_rmsnorm_rope, rmsnorm_rope_reference

from .conftest import DEVICE


# ----------------------------------------------------------------------------------------------------
# bf16: the interpreter's bf16 adds, dots and fp32 -> bf16 casts are wrong; the kernels route around them
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["neox", "gptj"])
@pytest.mark.parametrize("per_head", [False, True])
def test_rmsnorm_rope_bf16_residual_is_the_unfused_add(layout, per_head):
    torch.manual_seed(3)
    x = torch.randn(2, 5, 192, device=DEVICE).bfloat16() * 4
    r = torch.randn_like(x)
    w = torch.randn(64 if per_head else 192, device=DEVICE).bfloat16()
    cos, sin = tables(9, 64, layout, device=DEVICE)
    y, s = fused_rmsnorm_rope(x, w, cos, sin, head_dim=64, residual=r, rotary_layout=layout)
    # the sum is bit-exact torch's bf16 add (an fp32 add rounded to nearest even)
    assert torch.equal(s, x + r)
    # the output is the fp32 reference rounded to nearest even (not truncated): on the GPU the same
    # fp32 math ends in cvt.rn; allow a rare 1-ulp difference from fp32 summation order
    ref = rmsnorm_rope_reference((x + r).float(), w.float(), cos, sin, head_dim=64, rotary_layout=layout)
    ulp = (y.float() - ref.to(torch.bfloat16).float()).abs() / ref.abs().clamp_min(1e-30)
    assert (ulp > 2 ** -7).sum() == 0
    assert (y != ref.to(torch.bfloat16)).float().mean() < 0.02


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_gated_mlp_bf16_is_the_fp32_result_rounded(act):
    """bf16 on the CPU: the fp32 accumulation of exact bf16 products, rounded to nearest even once."""
    torch.manual_seed(4)
    x = torch.randn(37, 48, device=DEVICE).bfloat16()
    wg = (torch.randn(40, 48, device=DEVICE) / 7).bfloat16()
    wu = (torch.randn(40, 48, device=DEVICE) / 7).bfloat16()
    y = fused_gated_mlp(x, wg, wu, act)
    ref = gated_mlp_reference_torch(x.double(), wg.double(), wu.double(), act)
    # fp32 sums of 48 exact products differ from float64 by ~1e-7 relative: far below bf16's ulp, so all
    # but values within that of a rounding boundary round the same way
    assert (y.double() - ref).abs().max() <= 2 ** -8 * ref.abs().max()
    assert (y != ref.to(torch.bfloat16)).float().mean() < 0.01


# ----------------------------------------------------------------------------------------------------
# fused_gated_mlp takes weights in either layout: K-major [I, H] (nn.Linear) or a transposed view of [H, I]
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(5, 64, 48), (3, 7, 19), (70, 96, 130), (1, 16, 1)])
def test_gated_mlp_weight_layouts(dtype, shape):
    M, H, Inter = shape
    torch.manual_seed(M + H)
    x = torch.randn(M, H, device=DEVICE).to(dtype)
    g = (torch.randn(H, Inter, device=DEVICE) / math.sqrt(H)).to(dtype)  # [hidden, intermediate] storage
    u = (torch.randn(H, Inter, device=DEVICE) / math.sqrt(H)).to(dtype)
    ref = gated_mlp_reference_torch(x.double(), g.t().double(), u.t().double())
    tol = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    got = {}
    for name, (wg, wu) in {"mn": (g.t(), u.t()), "k": (g.t().contiguous(), u.t().contiguous()),
                           "mixed": (g.t(), u.t().contiguous())}.items():
        for _ in range(2):  # planned, then a plan hit
            y = fused_gated_mlp(x, wg, wu)
            torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)
        got[name] = y
    # the same products in the same order whatever the layout, up to the config (the MN-major layout takes
    # the unaligned-operand tile): within one output rounding of each other
    torch.testing.assert_close(got["mn"].double(), got["k"].double(), rtol=tol, atol=tol)
    torch.testing.assert_close(got["mixed"], got["mn"], rtol=0, atol=0)


def test_gated_mlp_transposed_weights_backward():
    """Gradients reach a [hidden, intermediate] parameter used through its transposed view."""
    torch.manual_seed(5)
    g = torch.randn(24, 20, device=DEVICE).requires_grad_()
    u = torch.randn(24, 20, device=DEVICE)
    x = torch.randn(3, 24, device=DEVICE, requires_grad=True)
    fused_gated_mlp(x, g.t(), u.t(), "gelu").sum().backward()
    xr, gr = x.detach().double().requires_grad_(), g.detach().double().requires_grad_()
    gated_mlp_reference_torch(xr, gr.t(), u.t().double(), "gelu").sum().backward()
    # fp32 backward against float64 (sums of 20-24 terms): ~1e-6 relative
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g.grad.double(), gr.grad, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# The library's own requirements make every op work on the CPU
# ----------------------------------------------------------------------------------------------------
def test_main_dependencies_exclude_numpy_the_interpreter_cannot_run_with():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    numpy_req = next(Requirement(d) for d in deps if Requirement(d).name == "numpy")
    # numpy 2.3 made int() of a one-element array an error; Triton 3.6's interpreter relies on it
    assert "2.3.0" not in numpy_req.specifier and "2.2.6" in numpy_req.specifier
