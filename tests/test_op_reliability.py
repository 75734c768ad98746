"""Per-op reliability contracts found by an adversarial pass over the public entry points: bf16 in the CPU
interpreter, ``out=`` buffers (overlap, autograd), explicit partial rotary, non-tensor and non-integer
arguments, module constructors, transposed weights, fake-tensor tracing, and tuned-config validation."""

from __future__ import annotations

import pytest
import torch

from tests._rope_helpers import tables
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
