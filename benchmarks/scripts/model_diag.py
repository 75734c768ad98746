"""Where a patched model's host time goes (profiler: CPU ops and CUDA runtime calls per forward), and the
FP8-patched model run step by step with a sync after each step so a failing kernel is named."""

import sys
import traceback

import torch
from torch.profiler import ProfilerActivity, profile

from triton_ops import patch_model
from triton_ops.benchmark.model import MODELS, _build, _make_step

spec = MODELS[0]
m = _build(spec, 2, "cuda")
patch_model(m)
with torch.inference_mode():
    step = _make_step(m, 1, 2048, 0, "cuda", False)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60))
del m
torch.cuda.empty_cache()

for fp8_batch in (1, 8):
    m = _build(spec, 2, "cuda")
    print(patch_model(m, fp8=True))
    try:
        with torch.inference_mode():
            step = _make_step(m, fp8_batch, 2048, 0, "cuda", False)
            out = step()
            torch.cuda.synchronize()
            print("fp8 prefill", fp8_batch, "ok", out.float().norm().item(), flush=True)
    except Exception:
        traceback.print_exc()
        sys.exit(1)
    del m
    torch.cuda.empty_cache()
