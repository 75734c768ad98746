"""Where does the time go: kernel alone (_launch) vs the public op (validation + custom-op dispatch),
and the host cost per call, for the RMSNorm+RoPE benchmark shapes.

    python benchmarks/scripts/probe_rmsnorm_rope.py
"""

from __future__ import annotations

import time

import torch

from triton_ops.benchmark.timing import do_bench_median
from triton_ops.compute.rope import rope_cos_sin
from triton_ops.kernels.rmsnorm_rope import _launch, fused_rmsnorm_rope

SHAPES = [
    ("8x2048x4096 hd64 fp16", (8, 2048, 4096), 64, torch.float16, False),
    ("qknorm 16384x32x128 bf16", (1, 16384, 4096), 128, torch.bfloat16, True),
    ("1x32768x4096 hd128 bf16", (1, 32768, 4096), 128, torch.bfloat16, False),
]


def probe(label, shape, hd, dtype, per_head):
    x = torch.randn(shape, device="cuda", dtype=dtype)
    w = torch.randn(hd if per_head else shape[-1], device="cuda", dtype=dtype)
    c, s = rope_cos_sin(range(shape[1]), hd)
    cos = torch.tensor(c, device="cuda", dtype=torch.float32)
    sin = torch.tensor(s, device="cuda", dtype=torch.float32)
    out = torch.empty_like(x)
    kernel = do_bench_median(lambda: _launch(x, w, cos, sin, None, None, out, None, 1e-6, hd, False, 0.0, False))
    public = do_bench_median(lambda: fused_rmsnorm_rope(x, w, cos, sin, head_dim=hd))
    torch.cuda.synchronize()
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        fused_rmsnorm_rope(x, w, cos, sin, head_dim=hd)
    host_us = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    print(f"{label:28s} kernel {kernel * 1e3:7.1f} us   public op {public * 1e3:7.1f} us   host/call {host_us:6.1f} us")


if __name__ == "__main__":
    for spec in SHAPES:
        probe(*spec)
