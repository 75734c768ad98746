"""Derived metrics: TFLOPS, GB/s and utilisation against the device's peak figures.

``PerformanceProfile`` carries the problem's work (flops, bytes) so a latency can be turned into
throughput by the benchmark suite and the autotuner alike. Sizes must be non-negative ints, byte and
flop counts non-negative finite numbers, latencies finite and >= 0 (0: too fast to measure, no
throughput); anything else raises, since a negative size or time can only come from a bug upstream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .exceptions import DeviceError, InvalidArgumentError, NumericalError
from .models import KernelMetrics
from .validation import check_int, check_positive_finite


@dataclass(frozen=True)
class DevicePeaks:
    """Datasheet peaks (dense, no sparsity). Memory bandwidth in GB/s, compute in TFLOPS."""

    name: str
    mem_gbps: float
    fp32_tflops: float
    fp16_tflops: float  # also bf16
    fp8_tflops: float | None  # None: no FP8 tensor cores


# Vendor datasheet figures for the SXM parts; measured copy bandwidth is lower (about 4.0-4.3 TB/s on
# an H200 and 2.9-3.0 TB/s on an H100 counting read + write), which is why benchmarks also report the
# measured copy ceiling next to these.
_PEAKS = [
    DevicePeaks("H200", 4800.0, 67.0, 989.0, 1979.0),
    DevicePeaks("H100", 3350.0, 67.0, 989.0, 1979.0),
    DevicePeaks("H20", 4000.0, 44.0, 148.0, 296.0),
    DevicePeaks("A100", 2039.0, 19.5, 312.0, None),
    DevicePeaks("L40S", 864.0, 91.6, 362.0, 733.0),
    DevicePeaks("L4", 300.0, 30.3, 121.0, 242.0),
    DevicePeaks("4090", 1008.0, 82.6, 165.0, 330.0),
    DevicePeaks("A10", 600.0, 31.2, 125.0, None),
]
_UNKNOWN = DevicePeaks("unknown", float("nan"), float("nan"), float("nan"), None)


def device_peaks(device: torch.device | str | None = None) -> DevicePeaks:
    """Peak figures for the named device, matched on the CUDA device name; NaN figures if unknown."""
    try:
        dev = torch.device(device) if device is not None else torch.device("cuda")
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"device={device!r} is not a device name; expected e.g. 'cuda', 'cuda:0' or 'cpu'") \
            from None
    if not torch.cuda.is_available():
        return _UNKNOWN
    if dev.type != "cuda":
        return _UNKNOWN
    name = torch.cuda.get_device_name(dev)
    for p in _PEAKS:
        if p.name in name:
            return p
    return _UNKNOWN


def _size(value: object, name: str) -> int:
    return check_int(value, name, min_value=0)


def _amount(value: object, name: str) -> float:
    return check_positive_finite(value, name, allow_zero=True)


def _latency(latency_ms: object) -> float:
    if isinstance(latency_ms, bool):
        raise InvalidArgumentError(f"latency_ms must be a number, got {latency_ms!r}")
    try:
        ms = float(latency_ms)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"latency_ms must be a number, got {latency_ms!r}") from None
    if not math.isfinite(ms) or ms < 0:
        raise NumericalError(f"latency_ms must be a finite time >= 0, got {latency_ms!r}")
    return ms


def _peak_tflops(peaks: DevicePeaks, dtype: torch.dtype | None) -> float | None:
    if dtype is None:
        return None
    if dtype in (torch.float16, torch.bfloat16):
        return peaks.fp16_tflops
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return peaks.fp8_tflops
    if dtype == torch.float32:
        return peaks.fp32_tflops
    return None


@dataclass(frozen=True)
class PerformanceProfile:
    """The work a problem does, to turn latencies into throughput.

    Build one with :meth:`latency_only`, :meth:`elementwise` or :meth:`gemm`.
    """

    kind: str
    flops: float | None = None
    bytes_moved: float | None = None
    compute_dtype: torch.dtype | None = None
    peaks: DevicePeaks | None = None

    def __post_init__(self) -> None:
        for name in ("flops", "bytes_moved"):
            if getattr(self, name) is not None:
                _amount(getattr(self, name), name)

    @classmethod
    def latency_only(cls) -> PerformanceProfile:
        return cls("latency_only")

    @classmethod
    def elementwise(cls, numel: int, *, bytes_per_element: float | None = None, dtype: torch.dtype | None = None,
                    bytes_moved: float | None = None, flops_per_element: float = 0.0,
                    peaks: DevicePeaks | None = None) -> PerformanceProfile:
        """A memory-bound op. Give the total ``bytes_moved`` or ``bytes_per_element`` (read + write);
        by default one read and one write of ``dtype`` per element."""
        numel = _size(numel, "numel")
        flops_per_element = _amount(flops_per_element, "flops_per_element")
        if bytes_per_element is not None:
            bytes_per_element = _amount(bytes_per_element, "bytes_per_element")
        if bytes_moved is not None:
            bytes_moved = _amount(bytes_moved, "bytes_moved")
        if bytes_moved is None:
            if bytes_per_element is None:
                itemsize = torch.empty((), dtype=dtype or torch.float32).element_size()
                bytes_per_element = 2.0 * itemsize
            bytes_moved = numel * bytes_per_element
        return cls("elementwise", flops=numel * flops_per_element, bytes_moved=float(bytes_moved),
                   compute_dtype=dtype, peaks=peaks)

    @classmethod
    def gemm(cls, M: int, N: int, K: int, *, dtype: torch.dtype = torch.float16,
             bytes_moved: float | None = None, out_dtype: torch.dtype | None = None,
             peaks: DevicePeaks | None = None) -> PerformanceProfile:
        """A matrix product: 2*M*N*K flops; bytes default to reading A, B and writing C once."""
        M, N, K = _size(M, "M"), _size(N, "N"), _size(K, "K")
        if bytes_moved is not None:
            bytes_moved = _amount(bytes_moved, "bytes_moved")
        if bytes_moved is None:
            isz = torch.empty((), dtype=dtype).element_size()
            osz = torch.empty((), dtype=out_dtype or dtype).element_size()
            bytes_moved = (M * K + K * N) * isz + M * N * osz
        return cls("gemm", flops=2.0 * M * N * K, bytes_moved=float(bytes_moved), compute_dtype=dtype, peaks=peaks)

    def _peaks(self) -> DevicePeaks:
        return self.peaks if self.peaks is not None else device_peaks()

    def tflops(self, latency_ms: float) -> float | None:
        latency_ms = _latency(latency_ms)
        if not self.flops or latency_ms <= 0:
            return None
        return self.flops / (latency_ms * 1e-3) / 1e12

    def gbps(self, latency_ms: float) -> float | None:
        latency_ms = _latency(latency_ms)
        if not self.bytes_moved or latency_ms <= 0:
            return None
        return self.bytes_moved / (latency_ms * 1e-3) / 1e9

    def metrics(self, latency_ms: float) -> KernelMetrics:
        latency_ms = _latency(latency_ms)
        peaks = self._peaks()
        tf = self.tflops(latency_ms)
        bw = self.gbps(latency_ms)
        peak_tf = _peak_tflops(peaks, self.compute_dtype)
        bw_util = bw / peaks.mem_gbps if bw is not None and peaks.mem_gbps == peaks.mem_gbps else None
        tf_util = tf / peak_tf if tf is not None and peak_tf and peak_tf == peak_tf else None
        return KernelMetrics(latency_ms=latency_ms, throughput_tflops=tf, bandwidth_gbps=bw,
                             bandwidth_utilization=bw_util, compute_utilization=tf_util)


__all__ = ["DevicePeaks", "PerformanceProfile", "device_peaks"]
