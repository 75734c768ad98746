"""Config sweep for the RMSNorm+RoPE kernel on a GPU: rows per program x warps, against the baselines.

    python benchmarks/scripts/sweep_rmsnorm_rope.py [--out DIR] [--no-max-autotune]

Prints one table and writes sweep_rmsnorm_rope.json under --out. Used to choose pick_config's
heuristics; the published figures come from `triton-ops bench`.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from triton_ops.benchmark.timing import compiled, copy_ceiling, do_bench_median
from triton_ops.compute.rope import rope_cos_sin
from triton_ops.kernels.rmsnorm_rope import _launch, fused_rmsnorm_rope, pick_config, rmsnorm_rope_reference

SHAPES = [
    ("8x2048x4096 hd64 fp16", (8, 2048, 4096), 64, torch.float16, False),
    ("8x2048x4096 hd128 bf16", (8, 2048, 4096), 128, torch.bfloat16, False),
    ("1x32768x4096 hd128 bf16", (1, 32768, 4096), 128, torch.bfloat16, False),
    ("qknorm 16384x32x128 bf16", (1, 16384, 4096), 128, torch.bfloat16, True),
]


def sweep_shape(label, shape, hd, dtype, per_head, max_autotune: bool) -> list[dict]:
    x = torch.randn(shape, device="cuda", dtype=dtype)
    w = torch.randn(hd if per_head else shape[-1], device="cuda", dtype=dtype)
    c, s = rope_cos_sin(range(shape[1]), hd)
    cos = torch.tensor(c, device="cuda", dtype=torch.float32)
    sin = torch.tensor(s, device="cuda", dtype=torch.float32)
    out = torch.empty_like(x)
    nbytes = 2 * x.numel() * x.element_size()
    base = pick_config(shape[0] * shape[1], shape[-1], hd, hd, x.element_size())

    def ours(cfg):
        return lambda: _launch(x, w, cos, sin, None, None, out, None, 1e-6, hd, False, 0.0, False, cfg)

    results = {"copy": do_bench_median(copy_ceiling(nbytes)),
               "eager": do_bench_median(lambda: rmsnorm_rope_reference(x, w, cos, sin, head_dim=hd))}
    f = compiled(rmsnorm_rope_reference)
    results["compile"] = do_bench_median(lambda: f(x, w, cos, sin, head_dim=hd))
    if max_autotune:
        fm = compiled(rmsnorm_rope_reference, "max-autotune")
        results["compile_max"] = do_bench_median(lambda: fm(x, w, cos, sin, head_dim=hd))
    for rpp in (1, 2, 4):
        for nw in (2, 4, 8, 16):
            cfg = {"ROWS_PER_PROG": rpp, "num_warps": nw}
            try:
                results[f"ours r{rpp} w{nw}"] = do_bench_median(ours(cfg))
            except Exception as exc:  # a config that fails to build is reported, not fatal
                print(label, cfg, "failed:", type(exc).__name__, str(exc)[:200])
    results["ours default"] = do_bench_median(ours(None))
    # The public op adds validation and allocation; where it is slower than "ours default", the call is
    # host-bound (do_bench's L2 flush hides only ~65 us of host work per call).
    results["public op"] = do_bench_median(lambda: fused_rmsnorm_rope(x, w, cos, sin, head_dim=hd))
    print(f"\n{label}: default config {base}")
    for k, ms in sorted(results.items(), key=lambda kv: kv[1]):
        print(f"  {k:24s} {ms * 1e3:9.1f} us  {nbytes / ms / 1e6:8.0f} GB/s  "
              f"{results['copy'] / ms * 100:6.1f}% copy  {results['compile'] / ms:5.2f}x compile")
    return [{"shape": label, "system": k, "ms": ms, "gbps": nbytes / ms / 1e6,
             "pct_copy": results["copy"] / ms * 100} for k, ms in results.items()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--no-max-autotune", action="store_true")
    args = ap.parse_args()
    rows = []
    for spec in SHAPES:
        rows += sweep_shape(*spec, max_autotune=not args.no_max_autotune)
        torch.cuda.empty_cache()
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    with open(os.path.join(args.out, "sweep_rmsnorm_rope.json"), "w") as fh:
        json.dump({"env": env, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
