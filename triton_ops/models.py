"""Plain data containers shared by the kernels, the autotuner and the benchmark suite."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class TensorSpec:
    """Shape, dtype and device of a tensor, without its data (used to describe benchmark inputs)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: str = "cuda"
    stride: tuple[int, ...] | None = None

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> TensorSpec:
        return cls(tuple(t.shape), t.dtype, str(t.device), tuple(t.stride()))

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()

    def make(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A fresh random tensor of this spec (never zeros: zeros hide unwritten outputs)."""
        if self.dtype.is_floating_point and self.dtype.itemsize >= 2:
            return torch.randn(self.shape, dtype=self.dtype, device=self.device, generator=generator)
        return torch.randint(0, 127, self.shape, device=self.device, generator=generator).to(self.dtype)


@dataclass
class KernelMetrics:
    """What one timed run achieved. Fields that do not apply to the kernel are None."""

    latency_ms: float
    throughput_tflops: float | None = None
    bandwidth_gbps: float | None = None
    bandwidth_utilization: float | None = None  # fraction of the device's memory bandwidth, 0..1
    compute_utilization: float | None = None  # fraction of the device's peak for the dtype, 0..1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TuningResult:
    """Outcome of :meth:`TritonAutoTuner.tune`."""

    best_config: dict[str, Any]
    metrics: KernelMetrics
    all_results: list[tuple[dict[str, Any], KernelMetrics | None]] = field(default_factory=list)
    problem_size: tuple[int, ...] | None = None
    device: str | None = None


@dataclass
class CorrectnessResult:
    """Agreement of an output with its reference."""

    passed: bool
    max_abs_error: float
    rel_error: float  # ||out - ref|| / ||ref||
    sqnr_db: float
    tolerance: float
    message: str = ""


@dataclass
class BenchmarkRow:
    """One timed system on one problem, in the benchmarks/results JSON format."""

    op: str
    shape: str
    dtype: str
    system: str
    ms: float
    gbps: float | None = None
    tflops: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.op, "shape": self.shape, "dtype": self.dtype, "system": self.system,
                             "ms": self.ms}
        if self.gbps is not None:
            d["gbps"] = self.gbps
        if self.tflops is not None:
            d["tflops"] = self.tflops
        d.update(self.extra)
        return d


__all__ = ["TensorSpec", "KernelMetrics", "TuningResult", "CorrectnessResult", "BenchmarkRow"]
