"""Where the FP8 MLP block's time goes: kernel times of our chain and of the compiled unfused composition.

    python benchmarks/scripts/fp8_block_profile.py [M]

Builds the ``norm_fp8_mlp_block`` case of ``triton-ops bench norm`` (H 4096, I 14336, bf16 activations,
e4m3 weights) and prints a torch.profiler table per system: each kernel's GPU time over 5 calls.
"""

from __future__ import annotations

import sys

import torch

from triton_ops.benchmark import cases_norm

M = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
case = next(c for c in cases_norm.cases(device="cuda") if c.op == "norm_fp8_mlp_block" and f"M={M} " in c.shape)
inputs = case.make_inputs()
for name in ("triton_ops", "triton_ops_patched", "unfused_fp8_compile", "hf_bf16_eager"):
    fn = case.systems[name]
    for _ in range(3):
        fn(inputs)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn(inputs)
        torch.cuda.synchronize()
    print(f"== {name} (M={M}), 5 calls")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=70))
