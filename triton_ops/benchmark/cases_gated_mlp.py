"""Benchmark problems for the fused gated MLP ``act(x @ Wg^T) * (x @ Wu^T)``.

Targets (see the gated-MLP issue), all measured in the same run:

* prefill M=16384, H=4096, I=11264 fp16 and I=14336 bf16: within 2% of ``cublas_cat_gemm`` (one
  ``torch.mm`` over ``cat(Wg, Wu)``, concatenated outside the timed region, computing the two projections
  and nothing else: the ceiling), and faster than ``torch_compile`` / ``torch_compile_max``;
* decode M=128, H=4096, I=14336 bf16: the weights read at >= 85% of ``copy`` (a device copy of the same
  number of bytes), about 1.3x ``torch_eager``;
* FP8 variant at M=16384, H=4096, I=14336 (e4m3 weights per output channel, activations quantized per
  token inside the timed call): >= 1.8x ``torch_eager`` in bf16; ceiling ``scaled_mm_cat`` = cuBLASLt
  ``torch._scaled_mm`` over the concatenated e4m3 weights on pre-quantized x (row-wise scales).

``cases(quick=True, device="cpu")`` gives tiny shapes that run through Triton's interpreter.

Set ``TRITON_OPS_GATED_MLP_SWEEP=1`` to add one ``triton_ops[<config>]`` system per launch config
(every candidate of the heuristic for the device plus the neighbours in ``gated_mlp.sweep_configs``;
FP8 rows included, quantizing x inside the timed call like the module does), to see which config wins
on the GPU at hand; the default ``triton_ops`` row always uses the heuristic's choice.

Decode rows (M <= 256 is not enough on its own: the ``decode`` labels) are timed as CUDA-graph replays.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..kernels import gated_mlp as G
from .case import BenchCase, select_shapes
from .timing import compiled, copy_ceiling

E4M3 = torch.float8_e4m3fn

# (label, M, H, Inter, dtype, kind) with kind in prefill / decode / fp8
_FULL = [
    ("16384x4096x11264", 16384, 4096, 11264, torch.float16, "prefill"),  # the seed's shape
    ("16384x4096x14336", 16384, 4096, 14336, torch.bfloat16, "prefill"),  # Llama-3-8B / Mistral-7B MLP
    ("2048x5120x13824", 2048, 5120, 13824, torch.bfloat16, "prefill"),
    ("decode 128x4096x14336", 128, 4096, 14336, torch.bfloat16, "decode"),
    ("decode 16x4096x14336", 16, 4096, 14336, torch.bfloat16, "decode"),
    ("decode 1x4096x14336", 1, 4096, 14336, torch.bfloat16, "decode"),
    ("fp8 16384x4096x14336", 16384, 4096, 14336, torch.bfloat16, "fp8"),
    ("fp8 decode 16x4096x14336", 16, 4096, 14336, torch.bfloat16, "fp8"),
]
# Interpreter-sized problems for machines without a GPU.
_QUICK = [
    ("quick 64x128x96", 64, 128, 96, torch.float16, "prefill"),
    ("quick decode 4x128x96", 4, 128, 96, torch.float16, "decode"),
    ("quick fp8 32x128x64", 32, 128, 64, torch.float16, "fp8"),
]


def eager_gated_mlp(x: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor) -> torch.Tensor:
    """What a PyTorch user writes: two projections, SiLU, multiply (three kernels, two [M, I] temps)."""
    return torch.nn.functional.silu(x @ wg.t()) * (x @ wu.t())


def _reference(i: dict[str, Any]) -> torch.Tensor:
    # float64 on the device: exact next to every system's fp16/bf16/fp8 rounding
    return eager_gated_mlp(i["x"].double(), i["wg"].double(), i["wu"].double())


def _sweep_configs(arch: int | None, dtype: torch.dtype, M: int) -> list[G.GatedMLPConfig]:
    """At most ~5 rows per case: the heuristic's candidates of the case's regime plus the measured-only
    neighbours (:func:`G.sweep_configs`). Prefill: the persistent default, its neighbours and the
    128 x (2 x 64) mid tile (smaller tiles measured 0.65-0.69x of cuBLAS). Weight-bound M <= 256: tiles of
    >= min(M, 64) rows (smaller ones re-read every weight tile M / BLOCK_M times) with BLOCK_N >= 64 above
    M = 64 (BLOCK_N = 32 measured 58% of copy at M=128); decode M <= 64: tiles of at most 2x the
    heuristic's BLOCK_M (larger ones measured 45-81% of copy at M=16)."""
    seen: dict[G.GatedMLPConfig, None] = {}
    for c in list(G.candidate_configs(arch, dtype)) + G.sweep_configs(arch, dtype):
        seen.setdefault(c, None)
    if M > 256:
        return [c for c in seen if c.block_m >= 128 and c.block_n >= 64]
    if M > 64:
        return [c for c in seen if c.block_m >= 64 and c.block_n >= 64 and not c.persistent]
    bm = max(16, G.next_power_of_2(M))
    return [c for c in seen if c.block_m <= 2 * bm and not c.persistent]


def _arch(device: str) -> int | None:
    cap = G.device_capability(device) if torch.cuda.is_available() else None
    return None if cap is None else cap[0] * 10 + cap[1]


def _case(label: str, M: int, H: int, Inter: int, dtype: torch.dtype, kind: str, device: str) -> BenchCase:
    es = torch.empty((), dtype=dtype).element_size()
    fp8 = kind == "fp8"
    w_es = 1 if fp8 else es
    # x read once, both weights read once, the gated output written once
    nbytes = M * H * es + 2 * Inter * H * w_es + M * Inter * es
    flops = 4.0 * M * H * Inter  # two M x H x Inter GEMMs

    def make_inputs() -> dict[str, Any]:
        g = torch.Generator(device=device).manual_seed(0)
        # weights ~ 1/sqrt(H) so both projections are O(1) (as in a trained layer)
        x = torch.randn(M, H, device=device, dtype=dtype, generator=g)
        wg = (torch.randn(Inter, H, device=device, generator=g) / H**0.5).to(dtype)
        wu = (torch.randn(Inter, H, device=device, generator=g) / H**0.5).to(dtype)
        inp: dict[str, Any] = {"x": x, "wg": wg, "wu": wu}
        if fp8:
            mod = G.FusedGatedMLP.from_weights(wg, wu, "silu", fp8=True)
            inp["mod"] = mod
            # the ceiling's operands, quantized outside the timed region
            xq, xs = G.quantize_rows_fp8(x)
            inp["xq"], inp["xs"] = xq, xs
            inp["wcat_q"], inp["wcat_s"] = mod.weight_fp8, mod.weight_scale.reshape(1, -1)
        else:
            inp["w_cat"] = torch.cat([wg, wu])
        return inp

    compiled_default = compiled(eager_gated_mlp)
    compiled_max = compiled(eager_gated_mlp, "max-autotune")
    systems: dict[str, Any] = {
        "torch_eager": lambda i: eager_gated_mlp(i["x"], i["wg"], i["wu"]),
        "torch_compile": lambda i: compiled_default(i["x"], i["wg"], i["wu"]),
        "torch_compile_max": lambda i: compiled_max(i["x"], i["wg"], i["wu"]),
    }
    unchecked: tuple[str, ...] = ()
    gpu_only: tuple[str, ...] = ("torch_compile", "torch_compile_max")
    if fp8:
        systems["triton_ops"] = lambda i: i["mod"](i["x"])
        systems["scaled_mm_cat"] = lambda i: torch._scaled_mm(i["xq"], i["wcat_q"].t(), scale_a=i["xs"],
                                                              scale_b=i["wcat_s"], out_dtype=dtype)
        ceiling = "scaled_mm_cat"
        unchecked += ("scaled_mm_cat",)
        gpu_only += ("scaled_mm_cat",)
    else:
        systems["triton_ops"] = lambda i: G.fused_gated_mlp(i["x"], i["wg"], i["wu"], "silu")
        systems["cublas_cat_gemm"] = lambda i: torch.mm(i["x"], i["w_cat"].t())
        unchecked += ("cublas_cat_gemm",)
        ceiling = "cublas_cat_gemm"
    if kind == "decode":
        copy_fn: dict[str, Any] = {}

        def copy(i):
            if "fn" not in copy_fn:
                copy_fn["fn"] = copy_ceiling(nbytes, device)
            return copy_fn["fn"]()

        systems["copy"] = copy
        unchecked += ("copy",)
        ceiling = "copy"
    if os.environ.get("TRITON_OPS_GATED_MLP_SWEEP", "0") == "1":
        for cfg in _sweep_configs(_arch(device), E4M3 if fp8 else dtype, M):
            def run_cfg(i, cfg=cfg):
                x = i["x"]
                out = torch.empty(x.shape[0], i["wg"].shape[0], dtype=x.dtype, device=x.device)
                if fp8:
                    # the same work as the module's call: per-token quantization of x, then the kernel
                    mod = i["mod"]
                    xq, xs = G.quantize_rows_fp8(x)
                    w, sc, n = mod.weight_fp8, mod.weight_scale, mod.intermediate_dim
                    G._run(xq, w[:n], w[n:], out, "silu", None, None, xs.reshape(-1), sc[:n], sc[n:], config=cfg)
                else:
                    G._run(x, i["wg"], i["wu"], out, "silu", None, None, config=cfg)
                return out

            systems[f"triton_ops[{cfg.label()}]"] = run_cfg

    if fp8:
        # e4m3 on both operands: ~25.5 dB on Gaussian data in exact arithmetic (cos ~0.9986); 23 dB
        # leaves room for fp32 accumulation and the bf16 output. bf16 systems reach ~45 dB.
        tol: dict[str, Any] = {"min_sqnr_db": 23.0}
    else:
        # relative L2 error: eager rounds both projections to the dtype, then the product: bf16 ~5e-3,
        # fp16 ~7e-4; 3x headroom
        tol = {"rtol": 1.5e-2 if dtype == torch.bfloat16 else (2e-3 if dtype == torch.float16 else 1e-5)}
    return BenchCase(
        op="gated_mlp_fp8" if fp8 else "gated_mlp", shape=label,
        dtype=("e4m3->" + str(dtype).replace("torch.", "")) if fp8 else str(dtype).replace("torch.", ""),
        make_inputs=make_inputs, systems=systems, reference=_reference, bytes_moved=float(nbytes),
        flops=flops, ceiling=ceiling, unchecked=unchecked, gpu_only=gpu_only, size=float(M),
        # the weights alone (>= 117 MB at the full shapes) exceed the 50-60 MB L2: no rotation needed
        rotate_inputs=1,
        # Decode kernels take ~60-90 us: timed as CUDA-graph replays, as a serving engine runs them, so the
        # rows compare kernels rather than Python launch paths (do_bench's 256 MB L2 flush hides only
        # ~65 us of host time per call; last run, two launch paths of the same kernel differed by 0.12 ms).
        cuda_graph=kind == "decode" or label.startswith("fp8 decode"), **tol,
    )


def cases(quick: bool = False, shapes: list[str] | None = None, device: str = "cuda") -> list[BenchCase]:
    table = _QUICK if quick else _FULL
    return select_shapes([_case(*row, device=device) for row in table], shapes)
