"""Shared input builders and tolerances for the RMSNorm+RoPE tests."""

from __future__ import annotations

import numpy as np
import torch

from triton_ops.compute.rope import rope_cos_sin

# |out - ref| <= ATOL + RTOL * |ref| against a float64 reference on the same (rounded) inputs. The kernel
# computes in fp32 and rounds once at the end, so the error is about half an ulp of the output dtype:
# fp16 ulp(1) = 2^-10 ~ 9.8e-4, bf16 2^-7 ~ 7.8e-3; fp32 math over <= 8K terms stays under ~1e-6.
TOL = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def tables(n_rows: int, rot: int, layout: str = "neox", dtype=torch.float32, device="cpu"):
    cos, sin = rope_cos_sin(np.arange(n_rows) * 0.37, rot, layout=layout)
    return (torch.tensor(cos, dtype=dtype, device=device), torch.tensor(sin, dtype=dtype, device=device))


def assert_close(out: torch.Tensor, ref, dtype: torch.dtype, what: str = "output"):
    ref_t = torch.as_tensor(ref, dtype=torch.float64).to(out.device)
    atol, rtol = TOL[dtype]
    diff = (out.double() - ref_t).abs()
    bound = atol + rtol * ref_t.abs()
    assert not torch.isnan(out).any(), f"{what}: NaN in output"
    bad = diff > bound
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {out.numel()} elements off; max abs err "
                           f"{diff.max().item():.3e} (atol {atol}, rtol {rtol})")
