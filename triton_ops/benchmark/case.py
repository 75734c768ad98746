"""What one benchmark problem is: inputs, the systems to time on them, and the reference.

Each op family defines its problems in ``triton_ops/benchmark/cases_<op>.py`` as a function
``cases(quick: bool = False, shapes: list[str] | None = None, device: str = "cuda") -> list[BenchCase]``.
The suite (``suite.py``) turns cases into verified, timed rows; nothing else needs to know an op's details.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

#: A system takes the inputs dict and returns the output tensor (or a tuple whose first item is checked).
System = Callable[[dict[str, Any]], Any]


@dataclass
class BenchCase:
    op: str  # "rmsnorm_rope", "gated_mlp", "fp8_gemm", "fp8_quantize" ...
    shape: str  # human label, e.g. "8x2048x4096 hd64"
    dtype: str  # "float16", "bfloat16", "e4m3->bf16" ...
    make_inputs: Callable[[], dict[str, Any]]  # fresh random inputs on the device, never zeros
    systems: dict[str, System]  # "triton_ops", "torch_eager", "torch_compile", "torch_compile_max" ...
    reference: System  # high-precision (fp32 or fp64) reference output for correctness
    #: bytes that must move through memory (each input read once, each output written once)
    bytes_moved: float | None = None
    flops: float | None = None
    #: name of the ceiling system in ``systems`` (a copy of the same bytes, cuBLAS ...), if any
    ceiling: str | None = None
    #: correctness: relative L2 error ||out - ref|| / ||ref|| allowed per system (default ``rtol``)
    rtol: float = 1e-2
    #: minimal SQNR in dB instead of rtol (used for FP8 paths); None: use rtol
    min_sqnr_db: float | None = None
    #: systems exempt from the correctness check (e.g. a copy ceiling that computes nothing)
    unchecked: tuple[str, ...] = ()
    #: per-system callable that produces the output to compare when it differs from the timed callable
    extra: dict[str, Any] = field(default_factory=dict)
    #: cases whose inputs fit in L2 should be timed over several rotating input sets
    rotate_inputs: int = 1
    #: systems that only make sense on a GPU (torch.compile, cuBLAS-only paths ...): on a machine with no
    #: GPU the suite reports them as skipped instead of running them in the interpreter/on the CPU
    gpu_only: tuple[str, ...] = ()
    #: time with CUDA-graph replays (launches of a few microseconds, where launch overhead dominates)
    cuda_graph: bool = False
    #: numeric problem size for the x axis of plots (e.g. tokens or M); None: cases in listed order
    size: float | None = None
    #: also report ``peak_mb`` (GPU only): the peak memory one call of a system allocates above what was
    #: allocated before it (activations kept for a backward, gradients, workspaces)
    measure_memory: bool = False


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64, ref64 = out.detach().double(), ref.detach().double()
    denom = torch.linalg.vector_norm(ref64).item()
    num = torch.linalg.vector_norm(out64 - ref64).item()
    return num / denom if denom > 0 else num


def sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    import math

    out64, ref64 = out.detach().double(), ref.detach().double()
    sig = torch.sum(ref64 * ref64).item()
    noise = torch.sum((out64 - ref64) ** 2).item()
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(sig / noise) if sig > 0 else -math.inf


def select_shapes(cases: list[BenchCase], shapes: list[str] | None) -> list[BenchCase]:
    """The cases whose shape label contains one of ``shapes`` (all of them when ``shapes`` is empty): the
    filter every ``cases(..., shapes=...)`` applies, so ``--shapes`` means the same for every op."""
    if not shapes:
        return list(cases)
    return [c for c in cases if any(s in c.shape for s in shapes)]
