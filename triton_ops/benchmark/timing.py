"""Timing primitives shared by the benchmark suite, the autotuner and the bench scripts."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch


def do_bench_median(fn: Callable[[], object], *, warmup_ms: float = 25.0, rep_ms: float = 100.0,
                    cuda_graph: bool = False) -> float:
    """Median latency in ms of ``fn`` on the current CUDA device.

    ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs) or its CUDA-graph variant for
    launches short enough that launch overhead would dominate. On a machine with no GPU, falls back to a
    host clock (the numbers then describe the CPU/interpreter, not a GPU).
    """
    if not torch.cuda.is_available():
        return cpu_bench_median(fn, reps=3)
    import triton.testing

    if cuda_graph:
        with torch.cuda.stream(torch.cuda.Stream()):
            return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))
    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def cpu_bench_median(fn: Callable[[], object], reps: int = 5, warmup: int = 1) -> float:
    """Median wall time in ms with a host clock (CPU callables, interpreter runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def copy_ceiling(nbytes: int, device: str = "cuda") -> Callable[[], object]:
    """A device copy that reads and writes ``nbytes / 2`` bytes each: the memory ceiling of an op that
    moves ``nbytes`` in total."""
    half = max(1, int(nbytes) // 2)
    src = torch.empty(half, dtype=torch.uint8, device=device)
    src.random_(0, 255)
    dst = torch.empty_like(src)
    return functools.partial(dst.copy_, src)


def compiled(fn: Callable, mode: str | None = None) -> Callable:
    """``torch.compile(fn, dynamic=False)`` in the given mode (None = default, or "max-autotune").

    "max-autotune" is run as "max-autotune-no-cudagraphs": the same autotuned kernels, without Inductor's
    own CUDA-graph wrapper. The suite times every system the same way (CUDA events, or one CUDA graph of
    its own for microsecond-scale launches); Inductor's graph trees cannot be captured inside that graph
    ("Cannot prepare for replay during capturing"), and with them the max-autotune mode measured 1.8x
    slower than the default mode at (8, 2048, 4096) on an H200 (161 vs 88 us), which points at the graph
    wrapper's per-call input handling rather than at its kernels (not profiled further).
    """
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if mode is None:
        return torch.compile(fn, dynamic=False)
    if mode == "max-autotune":
        mode = "max-autotune-no-cudagraphs"
    return torch.compile(fn, dynamic=False, mode=mode)
