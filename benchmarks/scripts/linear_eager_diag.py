"""Why an eager FP8Linear call at M=1024 (4096 -> 4096, bf16) takes longer than its GPU time: wall time of
back-to-back calls, host enqueue time per call (no sync), GPU time, and the kernel timeline, for FP8Linear
with and without bias, the same GEMM through fp8_gemm, and bf16 nn.Linear.

    python benchmarks/scripts/linear_eager_diag.py [M]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch import nn

from triton_ops.benchmark.timing import do_bench_median
from triton_ops.kernels import fp8_gemm as fg
from triton_ops.kernels.fp8_linear import FP8Linear

M = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
K = N = 4096
dev = "cuda"
x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
systems = {}
for bias in (True, False):
    lin = nn.Linear(K, N, bias=bias, device=dev, dtype=torch.bfloat16)
    f = FP8Linear.from_linear(lin)
    systems[f"FP8Linear bias={bias}"] = lambda f=f: f(x)
    systems[f"nn.Linear bias={bias}"] = lambda lin=lin: lin(x)
    if not bias:
        w_t, ws = f.weight.t(), f.weight_scale.reshape(1, -1)
        systems["fp8_gemm(x, w.t(), b_scale)"] = lambda w_t=w_t, ws=ws: fg.fp8_gemm(x, w_t, b_scale=ws,
                                                                                     check_scales=False)


def wall_us(fn, calls=200, samples=15):
    out = []
    for _ in range(samples):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(out), min(out)


def enqueue_us(fn, calls=200):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t = (time.perf_counter() - t0) / calls * 1e6
    torch.cuda.synchronize()
    return t


with torch.no_grad():
    for name, fn in systems.items():
        for _ in range(20):
            fn()
        med, best = wall_us(fn)
        enq = statistics.median(enqueue_us(fn, 50) for _ in range(5))
        gpu = do_bench_median(fn, cuda_graph=True) * 1e3
        print(f"{name:32s} wall {med:7.1f} us (best {best:6.1f})  enqueue {enq:6.1f} us  GPU (graph) {gpu:6.1f} us",
              flush=True)
    f = systems["FP8Linear bias=True"]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            f()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=50))
