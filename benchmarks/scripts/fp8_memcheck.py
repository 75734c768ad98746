"""FP8-patched model, prefill 8x2048 then a decode step, for compute-sanitizer memcheck."""

import torch

from triton_ops import patch_model
from triton_ops.benchmark.model import MODELS, _build, _make_step

spec = MODELS[0]
m = _build(spec, 1, "cuda")
patch_model(m, fp8=True)
with torch.inference_mode():
    for batch, new, cached in ((8, 2048, 0), (1, 1, 2048)):
        out = _make_step(m, batch, new, cached, "cuda", False)()
        torch.cuda.synchronize()
        print("ok", batch, new, cached, out.float().norm().item(), flush=True)
