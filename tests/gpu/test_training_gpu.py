"""The backward kernels on the GPU at real model shapes (`pytest -m gpu`), against float64 references.

Tolerances: relative L2 error of each gradient against float64 autograd of the unfused reference on the
same inputs. The norms' gradients are computed in fp32 and rounded once (bf16: 2^-9 relative per element,
~2e-3 in L2; fp16 ~3e-4); 1e-2 / 2e-3 leave 4-6x. The gated MLP's come from bf16 GEMMs over K = 4096-14336
with fp32 accumulation and the roundings of G, U, dG and dU (~4e-3 in L2 at these sizes): 2e-2.
"""

from __future__ import annotations

import pytest
import torch

from tests._rope_helpers import tables
from triton_ops import fused_add_rmsnorm, fused_gated_mlp, fused_rmsnorm_rope
from triton_ops.kernels.gated_mlp import gated_mlp_reference_torch
from triton_ops.kernels.rmsnorm_rope import rmsnorm_rope_reference

pytestmark = pytest.mark.gpu

L2_TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}


def _rel_l2(got, want):
    return (torch.linalg.vector_norm(got.double() - want) / torch.linalg.vector_norm(want)).item()


@pytest.mark.parametrize("shape,head_dim,per_head,dtype", [
    ((8, 2048, 4096), 128, False, torch.bfloat16),  # the training benchmark's shape
    ((2, 1000, 5120), 128, False, torch.float16),  # 40 heads: two-pass rows
    ((1, 64, 14336), 128, False, torch.bfloat16),  # wide rows
    ((4, 512, 4096), 128, True, torch.bfloat16),  # QK-norm
    ((4, 77, 2560), 80, False, torch.float16),
])
def test_rmsnorm_rope_backward_model_shapes(shape, head_dim, per_head, dtype):
    torch.manual_seed(0)
    x = torch.randn(shape, device="cuda", dtype=dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(head_dim if per_head else shape[-1], device="cuda")).to(dtype).requires_grad_()
    r = torch.randn(shape, device="cuda", dtype=dtype).requires_grad_()
    cos, sin = tables(shape[1], head_dim, device="cuda")
    gy, gs = torch.randn(shape, device="cuda", dtype=dtype), torch.randn(shape, device="cuda", dtype=dtype)
    y, s = fused_rmsnorm_rope(x, w, cos, sin, head_dim=head_dim, residual=r)
    torch.autograd.backward([y, s], [gy, gs])
    xd, wd, rd = (t.detach().double().requires_grad_() for t in (x, w, r))
    sd = xd + rd
    yd = rmsnorm_rope_reference(sd, wd, cos.double(), sin.double(), head_dim=head_dim)
    torch.autograd.backward([yd, sd], [gy.double(), gs.double()])
    for got, want in ((x.grad, xd.grad), (w.grad, wd.grad), (r.grad, rd.grad)):
        assert _rel_l2(got, want) < L2_TOL[dtype]


@pytest.mark.parametrize("shape,dtype", [((16384, 4096), torch.bfloat16), ((1000, 8192), torch.float16),
                                         ((333, 14336), torch.bfloat16)])
def test_add_rmsnorm_backward_model_shapes(shape, dtype):
    torch.manual_seed(1)
    x, r = (torch.randn(shape, device="cuda", dtype=dtype).requires_grad_() for _ in range(2))
    w = (1 + 0.1 * torch.randn(shape[-1], device="cuda")).to(dtype).requires_grad_()
    gy = torch.randn(shape, device="cuda", dtype=dtype)
    y, s = fused_add_rmsnorm(x, w, residual=r)
    torch.autograd.backward([y, s], [gy, gy])
    xd, wd, rd = (t.detach().double().requires_grad_() for t in (x, w, r))
    sd = xd + rd
    yd = sd * torch.rsqrt(sd.pow(2).mean(-1, keepdim=True) + 1e-6) * wd
    torch.autograd.backward([yd, sd], [gy.double(), gy.double()])
    for got, want in ((x.grad, xd.grad), (w.grad, wd.grad), (r.grad, rd.grad)):
        assert _rel_l2(got, want) < L2_TOL[dtype]


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("M,H,inter", [(2048, 4096, 12288), (333, 4096, 14336)])
def test_gated_mlp_backward_model_shapes(M, H, inter, recompute):
    torch.manual_seed(2)
    x = torch.randn(M, H, device="cuda", dtype=torch.bfloat16).requires_grad_()
    wg, wu = ((torch.randn(inter, H, device="cuda") / H ** 0.5).to(torch.bfloat16).requires_grad_() for _ in range(2))
    dy = torch.randn(M, inter, device="cuda", dtype=torch.bfloat16)
    fused_gated_mlp(x, wg, wu, recompute=recompute).backward(dy)
    xd, wgd, wud = (t.detach().double().requires_grad_() for t in (x, wg, wu))
    gated_mlp_reference_torch(xd, wgd, wud).backward(dy.double())
    for got, want in ((x.grad, xd.grad), (wg.grad, wgd.grad), (wu.grad, wud.grad)):
        assert got.dtype == torch.bfloat16 and _rel_l2(got, want) < 2e-2
