"""RMSNorm+RoPE backward launch variants at the training benchmark's shape, and where the step's time goes.

    python benchmarks/scripts/bwd_variants.py

For each (elements per thread, warps per SM) of the backward's persistent grid: the backward kernel alone
(``rmsnorm_rope_backward`` on saved inputs) and the whole forward + backward step through autograd, both
``triton.testing.do_bench`` medians, beside a copy of the backward's bytes (dy and s read, dx written).
Then a torch.profiler table of the default variant's step (kernel names and GPU time). Predictions and
outcomes: docs/perf-notes.md (training).
"""

from __future__ import annotations

import torch
import triton

from triton_ops import fused_rmsnorm_rope
from triton_ops.benchmark.timing import copy_ceiling
from triton_ops.compute.rope import rope_cos_sin
from triton_ops.kernels import rmsnorm_rope_backward as B
from triton_ops.launch import clear_plans

B_, S, H, HD = 8, 2048, 4096, 128
dt = torch.bfloat16
x = torch.randn(B_, S, H, device="cuda", dtype=dt).requires_grad_()
w = (1 + 0.1 * torch.randn(H, device="cuda")).to(dt).requires_grad_()
dy = torch.randn(B_, S, H, device="cuda", dtype=dt)
c, s_ = rope_cos_sin(torch.arange(S).numpy(), HD)
cos, sin = (torch.tensor(t, device="cuda", dtype=dt) for t in (c, s_))


def step():
    x.grad = w.grad = None
    y = fused_rmsnorm_rope(x, w, cos, sin, head_dim=HD)
    y.backward(dy)


def bwd_only():
    B.rmsnorm_rope_backward(dy, x.detach(), w.detach(), cos, sin, None, None, 1e-6, HD, False, 0.0)


copy = copy_ceiling(3 * x.numel() * 2)
t_copy = triton.testing.do_bench(copy)
print(f"copy of the backward's bytes (dy, s read; dx written): {t_copy * 1e3:.1f} us")
default = (B.ELEMS_PER_THREAD, B.WARPS_PER_SM)
for ept, wps in ((8, 16), (16, 16), (8, 32), (16, 32), (32, 16)):
    B.ELEMS_PER_THREAD, B.WARPS_PER_SM = ept, wps
    clear_plans()
    try:
        cfg = B.pick_backward_config(H, HD, HD, False)
        tb = triton.testing.do_bench(bwd_only)
        ts = triton.testing.do_bench(step)
        print(f"elems/thread {ept:2d} warps/SM {wps:2d} (warps {cfg.num_warps}, stages {cfg.num_stages}): "
              f"backward {tb * 1e3:7.1f} us = {t_copy / tb:5.1%} of copy; step {ts * 1e3:7.1f} us")
    except Exception as exc:  # a variant that does not build or launch is reported, not fatal
        print(f"elems/thread {ept} warps/SM {wps}: {type(exc).__name__}: {str(exc)[:200]}")
B.ELEMS_PER_THREAD, B.WARPS_PER_SM = default
clear_plans()
step()
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
