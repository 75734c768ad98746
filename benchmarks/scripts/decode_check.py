"""Patched vs unpatched decode steps at 8B layer shapes with a static cache, one system at a time, with a
synchronisation after each step so a failing kernel is named (run with CUDA_LAUNCH_BLOCKING=1)."""

import sys

import torch

from triton_ops import patch_model
from triton_ops.benchmark.model import MODELS, _build, _make_step

for spec in MODELS:
    for patched in (False, True):
        m = _build(spec, 2, "cuda")
        if patched:
            patch_model(m)
        with torch.inference_mode():
            for batch in (1, 8):
                for new, cached in ((2048, 0), (1, 2048)):
                    print(spec.name, "patched" if patched else "hf", batch, new, cached, flush=True)
                    step = _make_step(m, batch, new, cached, "cuda", False)
                    for _ in range(3):
                        out = step()
                        torch.cuda.synchronize()
                    print("  ok", out.float().norm().item(), flush=True)
        del m
sys.exit(0)
