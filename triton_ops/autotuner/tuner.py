"""A generic autotuner: time a callable under every configuration of a search space, keep the fastest.

The tuner knows nothing about kernels: ``kernel_fn(*args, **kwargs, **config)`` is called for each
config. A config that raises (fails to compile, to launch, or is rejected by ``verify``) is recorded as
failed with ``None`` metrics and the others still run; if none succeeds, :class:`TuningFailedError` lists
why. On a CUDA device each run is timed with CUDA events after an L2 flush; on the CPU (or with
``device="cpu"``) with a host clock. The median over ``benchmark_runs`` runs is the latency.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ..exceptions import InvalidArgumentError, TuningFailedError
from ..models import KernelMetrics, TuningResult
from ..performance import PerformanceProfile, device_peaks
from .cache import ConfigCache, normalize_device, normalize_problem_size
from .configs import generate_configs

log = logging.getLogger(__name__)

#: Bytes written between timed GPU runs to evict the previous run's data from L2 (50 MB on H100/H200;
#: 256 MB is what ``triton.testing.do_bench`` uses too).
L2_FLUSH_BYTES = 256 * 1024 * 1024


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _infer_device(args: Iterable[Any], kwargs: Mapping[str, Any]) -> str:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            return str(a.device)
    return "cuda" if torch.cuda.is_available() else "cpu"


#: Errors after which the CUDA context is unusable: every later launch in the process fails too, so
#: tuning stops instead of scoring the remaining configs as failed.
_FATAL_CUDA_ERRORS = ("illegal memory access", "unspecified launch failure", "misaligned address",
                      "device-side assert", "illegal instruction")


def _is_fatal_cuda_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return torch.cuda.is_available() and any(m in text for m in _FATAL_CUDA_ERRORS)


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:300]


class TritonAutoTuner:
    """Search ``config_space`` for the fastest configuration of ``kernel_fn``.

    Args:
        kernel_fn: callable accepting the searched values as keyword arguments.
        config_space: parameter name -> list of candidate values (see :mod:`.configs`).
        warmup_runs: untimed runs per config (compilation happens in the first).
        benchmark_runs: timed runs per config; the median is kept.
        cache_dir: directory of the persistent :class:`ConfigCache` (None: ``$TRITON_OPS_CACHE_DIR`` or
            memory only). ``cache`` may pass a ready :class:`ConfigCache` instead.
        profile: optional :class:`PerformanceProfile` turning latency into TFLOPS / GB/s / utilisation.
        verify: optional ``verify(output, config)``; returning False (or raising) marks the config failed,
            for example when its output disagrees with a reference.
        flush_l2: on CUDA, overwrite a 256 MB buffer before each timed run so no run reads warm L2.
    """

    def __init__(self, kernel_fn: Callable[..., Any], config_space: Mapping[str, list[Any]],
                 warmup_runs: int = 10, benchmark_runs: int = 100, cache_dir: str | None = None, *,
                 cache: ConfigCache | None = None, profile: PerformanceProfile | None = None,
                 verify: Callable[[Any, dict[str, Any]], Any] | None = None, flush_l2: bool = True) -> None:
        if not callable(kernel_fn):
            raise InvalidArgumentError(f"kernel_fn must be callable, got {type(kernel_fn).__name__}")
        self.configs = generate_configs(config_space)  # validates the space
        for name, value, least in (("warmup_runs", warmup_runs, 0), ("benchmark_runs", benchmark_runs, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidArgumentError(f"{name} must be an int >= {least}, got {value!r}")
        self.kernel_fn = kernel_fn
        self.config_space = {k: list(v) for k, v in config_space.items()}
        self.warmup_runs = warmup_runs
        self.benchmark_runs = benchmark_runs
        self.cache = cache if cache is not None else ConfigCache(cache_dir)
        self.profile = profile
        self.verify = verify
        self.flush_l2 = flush_l2
        self._flush_buf: torch.Tensor | None = None

    # ------------------------------------------------------------------ timing

    def _time_cpu(self, run: Callable[[], Any]) -> float:
        times = []
        for _ in range(self.benchmark_runs):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
        return _median(times)

    def _time_cuda(self, run: Callable[[], Any], device: torch.device) -> float:
        with torch.cuda.device(device):
            if self.flush_l2 and (self._flush_buf is None or self._flush_buf.device != device):
                self._flush_buf = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.benchmark_runs)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.benchmark_runs)]
            torch.cuda.synchronize(device)
            for s, e in zip(starts, ends):
                if self.flush_l2 and self._flush_buf is not None:
                    self._flush_buf.zero_()
                s.record()
                run()
                e.record()
            torch.cuda.synchronize(device)
            return _median([s.elapsed_time(e) for s, e in zip(starts, ends)])

    def benchmark_config(self, config: Mapping[str, Any], *args: Any, device: str | None = None,
                         **kwargs: Any) -> float:
        """Median latency in ms of one config (raises whatever the kernel raises)."""
        dev = torch.device(device) if device is not None else torch.device(_infer_device(args, kwargs))
        cfg = dict(config)
        run = lambda: self.kernel_fn(*args, **kwargs, **cfg)
        out = run()  # first call compiles; its output is what ``verify`` checks
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if self.verify is not None:
            ok = self.verify(out, cfg)
            if ok is False:
                raise TuningFailedError(f"config {cfg} produced a wrong result (rejected by verify)")
        del out
        for _ in range(max(0, self.warmup_runs - 1)):
            run()
        if dev.type == "cuda":
            return self._time_cuda(run, dev)
        return self._time_cpu(run)

    # ------------------------------------------------------------------ tuning

    def metrics_for(self, latency_ms: float, profile: PerformanceProfile | None = None,
                    device: str = "cpu") -> KernelMetrics:
        """Metrics of a latency with ``profile`` (default: the tuner's own), peaks of ``device``."""
        profile = profile if profile is not None else self.profile
        if profile is None:
            return KernelMetrics(latency_ms=latency_ms)
        if profile.peaks is None and device.startswith("cuda"):
            from dataclasses import replace

            profile = replace(profile, peaks=device_peaks(device))
        return profile.metrics(latency_ms)

    def tune(self, *args: Any, problem_size: Any = None, device: str | None = None,
             kernel_type: str | None = None, profile: PerformanceProfile | None = None,
             configs: list[Mapping[str, Any]] | None = None, force: bool = False,
             progress: Callable[[dict[str, Any], KernelMetrics | None], None] | None = None,
             time_budget_s: float | None = None, **kwargs: Any) -> TuningResult:
        """Benchmark every config and return the fastest as a :class:`TuningResult`.

        ``args``/``kwargs`` are passed to ``kernel_fn`` together with each config. When ``problem_size``
        and ``device`` are both given the result is looked up in (and stored into) the cache under
        ``kernel_type`` (default: the callable's name); ``force=True`` re-tunes despite a cached entry.
        ``configs`` replaces the configs generated from the space (e.g. after ``filter_valid_configs``).
        ``progress(config, metrics_or_None)`` is called after each config. ``time_budget_s`` stops trying
        further configs once that many seconds have passed and one config has succeeded (compiling a GEMM
        config takes seconds, so a large space can take minutes): put the configs most worth trying
        first.
        """
        if kernel_type is None:
            kernel_type = getattr(self.kernel_fn, "__name__", None) or type(self.kernel_fn).__name__
        use_cache = problem_size is not None and device is not None
        if use_cache:
            problem_size = normalize_problem_size(problem_size)
            device = normalize_device(device)
        elif problem_size is not None:
            problem_size = normalize_problem_size(problem_size)
        time_device = device if device is not None else _infer_device(args, kwargs)

        if use_cache and not force:
            entry = self.cache.get_entry(kernel_type, problem_size, device)
            if entry is not None:
                lat = (entry.get("metrics") or {}).get("latency_ms")
                # the cache hands back finite numbers or None; a latency of None or 0 is "not measured"
                metrics = (self.metrics_for(float(lat), profile, time_device) if lat and lat > 0
                           else KernelMetrics(math.nan))
                log.info("%s %s on %s: cached config %s", kernel_type, problem_size, device, entry["config"])
                return TuningResult(entry["config"], metrics, [], problem_size, device)

        candidates = [dict(c) for c in configs] if configs is not None else [dict(c) for c in self.configs]
        if not candidates:
            raise InvalidArgumentError("no configs to tune: the candidate list is empty")
        results: list[tuple[dict[str, Any], KernelMetrics | None]] = []
        errors: list[str] = []
        best: tuple[dict[str, Any], KernelMetrics] | None = None
        t_start = time.monotonic()
        for cfg in candidates:
            if time_budget_s is not None and best is not None and time.monotonic() - t_start > time_budget_s:
                log.info("%s %s: time budget of %.0f s spent after %d of %d configs", kernel_type, problem_size,
                         time_budget_s, len(results), len(candidates))
                break
            try:
                lat = self.benchmark_config(cfg, *args, device=time_device, **kwargs)
                if not math.isfinite(lat) or lat < 0:
                    raise TuningFailedError(f"measured latency {lat!r} ms is not a valid time")
                metrics = self.metrics_for(lat, profile, time_device)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # a config that does not compile/launch/verify is a failed config
                msg = _short_error(exc)
                if _is_fatal_cuda_error(exc):
                    raise TuningFailedError(
                        f"config {cfg} of {kernel_type!r} broke the CUDA context ({msg}); no later launch in "
                        "this process can succeed, so tuning stops here. Remove the config from the space "
                        "(or fix the kernel's masking) and run again in a new process.") from exc
                log.debug("config %s failed: %s", cfg, msg)
                errors.append(f"{cfg}: {msg}")
                results.append((cfg, None))
                if progress is not None:
                    progress(cfg, None)
                continue
            results.append((cfg, metrics))
            if best is None or metrics.latency_ms < best[1].latency_ms:
                best = (cfg, metrics)
            if progress is not None:
                progress(cfg, metrics)

        if best is None:
            shown = "\n  ".join(errors[:8])
            if len(errors) > 8:
                shown += f"\n  ... and {len(errors) - 8} more"
            raise TuningFailedError(f"all {len(candidates)} configs of {kernel_type!r} failed for "
                                    f"problem_size={problem_size}:\n  {shown}")
        if use_cache:
            self.cache.set(kernel_type, problem_size, device, best[0], metrics=best[1])
        return TuningResult(dict(best[0]), best[1], results, problem_size, device)


def compute_gemm_metrics(M: int, N: int, K: int, latency_ms: float, *, dtype: torch.dtype = torch.float16,
                         out_dtype: torch.dtype | None = None, bytes_moved: float | None = None,
                         device: str | None = None) -> KernelMetrics:
    """Metrics of an ``M x K @ K x N`` product that took ``latency_ms``: 2*M*N*K flops, A and B read and
    C written once; utilisation against the peaks of ``device`` (the current GPU by default)."""
    peaks = device_peaks(device) if device is not None else None
    return PerformanceProfile.gemm(M, N, K, dtype=dtype, out_dtype=out_dtype, bytes_moved=bytes_moved,
                                   peaks=peaks).metrics(latency_ms)


def compute_elementwise_metrics(numel: int, latency_ms: float, *, dtype: torch.dtype = torch.float16,
                                bytes_per_element: float | None = None, bytes_moved: float | None = None,
                                flops_per_element: float = 0.0, device: str | None = None) -> KernelMetrics:
    """Metrics of a memory-bound op over ``numel`` elements (one read and one write of ``dtype`` each
    unless ``bytes_per_element`` or ``bytes_moved`` says otherwise)."""
    peaks = device_peaks(device) if device is not None else None
    return PerformanceProfile.elementwise(numel, dtype=dtype, bytes_per_element=bytes_per_element,
                                          bytes_moved=bytes_moved, flops_per_element=flops_per_element,
                                          peaks=peaks).metrics(latency_ms)


__all__ = ["TritonAutoTuner", "compute_gemm_metrics", "compute_elementwise_metrics", "L2_FLUSH_BYTES"]
