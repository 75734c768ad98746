"""Benchmark problems for fused RMSNorm+RoPE (see the op's issue for the targets).

Every case times the fused kernel against the unfused PyTorch reference in eager mode, the same reference
under ``torch.compile`` (default and max-autotune) and a device copy of the same number of bytes (the
memory ceiling: this op does ~10 flops per byte, far below any GPU's ridge point).
"""

from __future__ import annotations

from typing import Any

import torch

from ..compute.rope import rope_cos_sin
from ..kernels.rmsnorm_rope import fused_rmsnorm_rope, rmsnorm_rope_reference
from .case import BenchCase, select_shapes
from .timing import compiled, copy_ceiling

# (label, batch, seq, hidden, head_dim, dtype, per_head, decode)
_FULL = [
    ("8x2048x4096 hd64", 8, 2048, 4096, 64, torch.float16, False, False),  # the seed's table
    ("8x2048x4096 hd128", 8, 2048, 4096, 128, torch.bfloat16, False, False),
    ("1x32768x4096 hd128", 1, 32768, 4096, 128, torch.bfloat16, False, False),
    ("qknorm 16384x32x128", 1, 16384, 4096, 128, torch.bfloat16, True, False),
    ("decode 1x4096 hd128", 1, 1, 4096, 128, torch.bfloat16, False, True),
    ("decode 8x4096 hd128", 8, 1, 4096, 128, torch.bfloat16, False, True),
    ("decode 64x4096 hd128", 64, 1, 4096, 128, torch.bfloat16, False, True),
]
# Interpreter-sized problems for machines without a GPU.
_QUICK = [
    ("2x8x256 hd64", 2, 8, 256, 64, torch.float16, False, False),
    ("qknorm 8x4x32", 1, 8, 128, 32, torch.float32, True, False),
    ("decode 4x256 hd64", 4, 1, 256, 64, torch.float32, False, True),
]
_TABLE_ROWS = 4096  # a KV cache of 4096 positions for decode


def _case(label, batch, seq, hidden, head_dim, dtype, per_head, decode, device) -> BenchCase:
    table_rows = _TABLE_ROWS if decode else seq
    itemsize = torch.empty((), dtype=dtype).element_size()
    n_tokens = batch * seq
    weight_numel = head_dim if per_head else hidden
    # x read + out written once; weight and the cos/sin rows the tokens use read once. Tables are in x's
    # dtype, as Hugging Face's rotary embeddings return them.
    table_bytes = 2 * itemsize * head_dim * min(n_tokens, table_rows)
    nbytes = 2 * n_tokens * hidden * itemsize + weight_numel * itemsize + table_bytes

    def make_inputs() -> dict[str, Any]:
        g = torch.Generator(device=device).manual_seed(0)
        cos, sin = rope_cos_sin(torch.arange(table_rows).numpy(), head_dim)
        inp = {
            "x": torch.randn(batch, seq, hidden, device=device, dtype=dtype, generator=g),
            "w": torch.randn(weight_numel, device=device, dtype=dtype, generator=g),
            "cos": torch.tensor(cos, dtype=dtype, device=device),
            "sin": torch.tensor(sin, dtype=dtype, device=device),
            "pos": None,
        }
        if decode:
            inp["pos"] = torch.randint(0, table_rows, (batch, seq), device=device, generator=g)
        return inp

    def ours(i):
        return fused_rmsnorm_rope(i["x"], i["w"], i["cos"], i["sin"], head_dim=head_dim, position_ids=i["pos"])

    def eager(i):
        return rmsnorm_rope_reference(i["x"], i["w"], i["cos"], i["sin"], head_dim=head_dim,
                                      position_ids=i["pos"])

    compiled_default = compiled(rmsnorm_rope_reference)
    compiled_max = compiled(rmsnorm_rope_reference, "max-autotune")
    copy_fn: dict[str, Any] = {}

    def copy(i):
        if "fn" not in copy_fn:
            copy_fn["fn"] = copy_ceiling(nbytes, device)
        return copy_fn["fn"]()

    def reference(i):
        return rmsnorm_rope_reference(i["x"].double(), i["w"].double(), i["cos"].double(), i["sin"].double(),
                                      head_dim=head_dim, position_ids=i["pos"])

    return BenchCase(
        op="rmsnorm_rope", shape=label, dtype=str(dtype).replace("torch.", ""), make_inputs=make_inputs,
        systems={
            "triton_ops": ours,
            "torch_eager": eager,
            "torch_compile": lambda i: compiled_default(i["x"], i["w"], i["cos"], i["sin"], head_dim=head_dim,
                                                        position_ids=i["pos"]),
            "torch_compile_max": lambda i: compiled_max(i["x"], i["w"], i["cos"], i["sin"], head_dim=head_dim,
                                                        position_ids=i["pos"]),
            "copy": copy,
        },
        reference=reference, bytes_moved=float(nbytes), flops=None, ceiling="copy",
        # relative L2 error of one final rounding: fp16 ~3e-4, bf16 ~2.5e-3; 4x headroom
        rtol=1.2e-3 if dtype == torch.float16 else (1e-2 if dtype == torch.bfloat16 else 1e-5),
        unchecked=("copy",), gpu_only=("torch_compile", "torch_compile_max", "copy"),
        cuda_graph=decode, size=float(n_tokens),
        # decode inputs (<= 512 KB) fit in L2: rotate input sets so the cache does not flatter anyone
        rotate_inputs=8 if decode else 1,
    )


def cases(quick: bool = False, shapes: list[str] | None = None, device: str = "cuda") -> list[BenchCase]:
    table = _QUICK if quick else _FULL
    return select_shapes([_case(*row, device=device) for row in table], shapes)
