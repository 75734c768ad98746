"""Host-side cost per call of the public ops (Python validation, allocation, Triton launch), with the
top functions from cProfile, to find what dominates when an op is launch-bound.

    python benchmarks/scripts/profile_host.py
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time

import torch

from triton_ops import fp8_gemm, fused_rmsnorm_rope
from triton_ops.compute.rope import rope_cos_sin


def host_us(fn, n=300):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def profile(name, fn):
    print(f"\n== {name}: {host_us(fn):.1f} us host per call (no sync inside the loop)")
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(200):
        fn()
    pr.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(14)
    print("\n".join(s.getvalue().splitlines()[6:24]))


def main():
    x = torch.randn(8, 1, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    c, s = rope_cos_sin(range(4096), 128)
    cos = torch.tensor(c, device="cuda", dtype=torch.bfloat16)
    sin = torch.tensor(s, device="cuda", dtype=torch.bfloat16)
    pos = torch.randint(0, 4096, (8, 1), device="cuda")
    profile("fused_rmsnorm_rope decode 8x4096", lambda: fused_rmsnorm_rope(x, w, cos, sin, position_ids=pos))
    y = torch.empty_like(x)
    profile("torch.add (reference launch cost)", lambda: torch.add(x, x, out=y))
    a = torch.randn(1024, 4096, device="cuda", dtype=torch.float16)
    b = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    profile("fp8_gemm 1024x4096x4096 from fp16", lambda: fp8_gemm(a, b))


if __name__ == "__main__":
    main()
