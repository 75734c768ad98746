"""The benchmark suite: verify every system against the reference, then time the correct ones.

Op families declare their problems in ``triton_ops/benchmark/cases_<family>.py`` (see :mod:`.case`). For
each case the suite

1. makes the inputs (``rotate_inputs`` sets when the inputs fit in L2) and the reference output;
2. runs every system once and checks its output (relative L2 error or SQNR; systems in ``unchecked``,
   such as a copy ceiling, are exempt). A system that raises or disagrees is reported ``FAILED`` with
   the reason and is **not timed**: a wrong kernel has no speed;
3. times the correct systems (``triton.testing.do_bench`` median, CUDA-graph replays for tiny launches;
   a host clock with no GPU) and derives GB/s and TFLOPS from the case's bytes and flops;
4. adds ratios: ``ratio_vs_<system>`` = that system's time / this row's time (above 1: this row is
   faster), for every baseline (systems not named ``triton_ops*``), and ``pct_of_ceiling``.

A family whose cases module is missing or fails to import is reported as not available, never a crash.
With no GPU, ``gpu_only`` systems (and by default torch.compile, which takes minutes to build on a CPU)
are reported as skipped, and the timings describe the CPU/interpreter, not a GPU.
"""

from __future__ import annotations

import datetime as _dt
import gc
import importlib
import logging
import math
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..utils import device_name
from ..validation import check_device_available, check_int, check_positive_finite
from .case import BenchCase
from .correctness import check_output
from .timing import cpu_bench_median, do_bench_median

log = logging.getLogger(__name__)

#: Op family -> module defining ``cases(quick, shapes, device)``.
OP_FAMILIES: dict[str, str] = {
    "rmsnorm_rope": "triton_ops.benchmark.cases_rmsnorm_rope",
    "gated_mlp": "triton_ops.benchmark.cases_gated_mlp",
    "fp8": "triton_ops.benchmark.cases_fp8",
    "training": "triton_ops.benchmark.cases_training",
    "norm": "triton_ops.benchmark.cases_norm",
}
#: Systems skipped by default with no GPU: Inductor builds C++ for the CPU (about 30 s per graph here)
#: and its timings would say nothing about the GPU. ``cpu_skip=()`` runs them anyway.
DEFAULT_CPU_SKIP = ("torch_compile", "torch_compile_max")
OURS_PREFIX = "triton_ops"

STATUS_OK = "ok"
STATUS_FAILED = "FAILED"
STATUS_SKIPPED = "skipped"


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:400]


def _finite_or_none(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def git_commit(path: str | Path | None = None) -> str | None:
    """Short commit of the checkout holding ``path`` (this package by default), ``+dirty`` with local
    changes to tracked files; None outside a git checkout."""
    where = Path(path) if path is not None else Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=where, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        commit = head.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
        if dirty.returncode == 0 and dirty.stdout.strip():
            commit += "+dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return None


def collect_env(device: str | None = None) -> dict[str, Any]:
    """``{"gpu", "torch", "triton", "cuda", "commit"}`` as written into results files."""
    try:
        from importlib.metadata import version

        triton_v = version("triton")
    except Exception:  # no triton distribution metadata
        triton_v = None
    dev = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    return {"gpu": device_name(dev), "torch": torch.__version__, "triton": triton_v,
            "cuda": torch.version.cuda, "commit": git_commit()}


@dataclass
class BenchmarkReport:
    """Rows of one suite run plus what could not run."""

    env: dict[str, Any]
    rows: list[dict[str, Any]]
    #: op family -> reason it is not available (missing module, import error ...)
    unavailable: dict[str, str] = field(default_factory=dict)
    #: True when no GPU was used: timings describe the CPU / Triton interpreter
    cpu_only: bool = False
    date: str = field(default_factory=lambda: _dt.date.today().isoformat())

    def to_json_dict(self) -> dict[str, Any]:
        return {"env": dict(self.env), "rows": [dict(r) for r in self.rows]}

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("status") == STATUS_FAILED]

    @property
    def ops(self) -> list[str]:
        seen: list[str] = []
        for r in self.rows:
            if r["op"] not in seen:
                seen.append(r["op"])
        return seen


def family_of(op: str) -> str | None:
    """The family whose cases module defines ``op`` ("fp8_gemm" -> "fp8")."""
    for fam in OP_FAMILIES:
        if op == fam or op.startswith(fam + "_"):
            return fam
    return None


class BenchmarkSuite:
    """Verified, timed comparison of the library's ops against their baselines.

    Args:
        ops: op families or op names to run ("rmsnorm_rope", "gated_mlp", "fp8", "fp8_gemm" ...);
            None: every family in :data:`OP_FAMILIES`.
        quick: fewer/smaller problems (default: True with no GPU).
        shapes: shape labels passed to each family's ``cases`` (filters its problems).
        device: "cuda", "cuda:<index>" or "cpu" (default: "cuda" when available); a device that does not
            exist here raises :class:`~triton_ops.exceptions.DeviceError` at once.
        cases_modules: extra modules defining ``cases(quick, shapes, device)`` (your own ops).
        warmup_ms, rep_ms: GPU timing budget per system (``triton.testing.do_bench``).
        cpu_reps: timed repetitions per system with no GPU (the interpreter is slow).
        skip_systems: system names never run.
        cpu_skip: system names skipped with no GPU in addition to each case's ``gpu_only``.
    """

    def __init__(self, ops: Sequence[str] | None = None, *, quick: bool | None = None,
                 shapes: Sequence[str] | None = None, device: str | None = None,
                 cases_modules: Sequence[str] = (), warmup_ms: float = 25.0, rep_ms: float = 100.0,
                 cpu_reps: int = 3, skip_systems: Iterable[str] = (),
                 cpu_skip: Iterable[str] = DEFAULT_CPU_SKIP) -> None:
        # checked before anything runs: "gpu", or "cuda" on a machine without one, would otherwise fail
        # every row with a torch error from inside the cases
        dev = check_device_available(device if device is not None else
                                     ("cuda" if torch.cuda.is_available() else "cpu"), "device")
        self.device = str(dev)
        self.on_gpu = dev.type == "cuda"
        for name, value in (("warmup_ms", warmup_ms), ("rep_ms", rep_ms)):
            check_positive_finite(value, name, allow_zero=name == "warmup_ms")
        self.ops = list(ops) if ops else None
        self.quick = (not self.on_gpu) if quick is None else bool(quick)
        self.shapes = list(shapes) if shapes else None
        self.cases_modules = list(cases_modules)
        self.warmup_ms, self.rep_ms = float(warmup_ms), float(rep_ms)
        self.cpu_reps = check_int(cpu_reps, "cpu_reps", min_value=1)
        self.skip_systems = set(skip_systems)
        self.cpu_skip = set(cpu_skip)
        self._extra_cases: list[BenchCase] = []
        self.unavailable: dict[str, str] = {}

    # ------------------------------------------------------------------ cases

    def add_case(self, case: BenchCase) -> None:
        self._extra_cases.append(case)

    def add_cases(self, cases: Iterable[BenchCase]) -> None:
        for c in cases:
            self.add_case(c)

    def _wanted_families(self) -> list[str]:
        if self.ops is None:
            return list(OP_FAMILIES)
        fams = []
        for name in self.ops:
            fam = name if name in OP_FAMILIES else family_of(name)
            if fam is None:
                # "fp8" style prefixes of several families, or an unknown name
                matches = [f for f in OP_FAMILIES if f.startswith(name)]
                if not matches and not self._extra_cases and not self.cases_modules:
                    self.unavailable[name] = f"unknown op; known families: {', '.join(OP_FAMILIES)}"
                fams.extend(matches)
            else:
                fams.append(fam)
        return list(dict.fromkeys(fams))

    def _wanted(self, case: BenchCase) -> bool:
        if self.ops is None:
            return True
        return any(case.op == o or family_of(case.op) == o or case.op.startswith(o) for o in self.ops)

    def _load_module_cases(self, label: str, module: str) -> list[BenchCase]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                self.unavailable[label] = "not available (no benchmark cases module yet)"
            else:
                self.unavailable[label] = f"not available: {_short(exc)}"
            return []
        except Exception as exc:  # a broken op must not stop the others
            self.unavailable[label] = f"not available: {_short(exc)}"
            return []
        fn = getattr(mod, "cases", None)
        if not callable(fn):
            self.unavailable[label] = f"not available: {module} defines no cases()"
            return []
        try:
            cases = list(fn(quick=self.quick, shapes=self.shapes, device=self.device))
        except Exception as exc:
            self.unavailable[label] = f"not available: cases() raised {_short(exc)}"
            return []
        if not cases:
            self.unavailable[label] = "no cases for the requested shapes"
        return cases

    def load_cases(self) -> list[BenchCase]:
        """Every case to run: the families' cases, extra modules' cases and cases added by hand."""
        self.unavailable = {}
        cases: list[BenchCase] = []
        for fam in self._wanted_families():
            cases.extend(c for c in self._load_module_cases(fam, OP_FAMILIES[fam]) if self._wanted(c))
        for module in self.cases_modules:
            cases.extend(c for c in self._load_module_cases(module, module) if self._wanted(c))
        cases.extend(c for c in self._extra_cases if self._wanted(c))
        return cases

    # ------------------------------------------------------------------ running

    def _skip_reason(self, case: BenchCase, name: str) -> str | None:
        if name in self.skip_systems:
            return "skipped on request"
        if not self.on_gpu and (name in case.gpu_only or name in self.cpu_skip):
            return "GPU-only system, skipped with no GPU"
        return None

    def _time(self, case: BenchCase, fn: Callable[[dict[str, Any]], Any],
              input_sets: list[dict[str, Any]]) -> float:
        n = len(input_sets)
        if n == 1:
            inputs = input_sets[0]
            call = lambda: fn(inputs)
        else:
            state = [0]

            def call() -> Any:
                state[0] = (state[0] + 1) % n
                return fn(input_sets[state[0]])

        if not self.on_gpu:
            return cpu_bench_median(call, reps=self.cpu_reps, warmup=0)
        return do_bench_median(call, warmup_ms=self.warmup_ms, rep_ms=self.rep_ms, cuda_graph=case.cuda_graph)

    def run_case(self, case: BenchCase, step: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """Rows for one case (one per system, in the case's order)."""
        base = {"op": case.op, "shape": case.shape, "dtype": case.dtype}
        if case.size is not None:
            base["size"] = case.size
        rows: list[dict[str, Any]] = []

        def row(system: str, **kw: Any) -> dict[str, Any]:
            r = dict(base, system=system, ms=None)
            r.update(kw)
            return r

        def tick(name: str) -> None:
            if step is not None:
                step(f"{case.op} {case.shape} {name}")

        input_sets: list[dict[str, Any]] = []
        try:
            input_sets.append(case.make_inputs())
            ref = case.reference(input_sets[0])
        except Exception as exc:
            msg = f"inputs/reference failed: {_short(exc)}"
            for name in case.systems:
                rows.append(row(name, correct=False, status=STATUS_FAILED, error=msg))
                tick(name)
            return rows

        checked: dict[str, dict[str, Any]] = {}
        for name, fn in case.systems.items():
            reason = self._skip_reason(case, name)
            if reason is not None:
                checked[name] = row(name, correct=None, status=STATUS_SKIPPED, error=reason)
                continue
            if name in case.unchecked:
                checked[name] = row(name, correct=None, status=STATUS_OK)
                continue
            try:
                out_fn = case.extra.get(name) if callable(case.extra.get(name)) else fn
                out = out_fn(input_sets[0])
                res = check_output(out, ref, rtol=case.rtol, min_sqnr_db=case.min_sqnr_db)
                del out
            except Exception as exc:
                checked[name] = row(name, correct=False, status=STATUS_FAILED, error=_short(exc))
                self._cleanup()
                continue
            r = row(name, correct=bool(res.passed), rel_error=_finite_or_none(res.rel_error),
                    status=STATUS_OK if res.passed else STATUS_FAILED)
            if case.min_sqnr_db is not None:  # FP8 paths are judged (and reported) by SQNR
                r["sqnr_db"] = _finite_or_none(res.sqnr_db)  # None when exact (infinite SQNR)
            if not res.passed:
                r["error"] = res.message
            checked[name] = r
        del ref

        try:
            for _ in range(1, max(1, case.rotate_inputs)):
                input_sets.append(case.make_inputs())
        except Exception as exc:  # out of memory for extra sets: time on the sets we have
            log.warning("%s %s: only %d input sets (%s)", case.op, case.shape, len(input_sets), _short(exc))

        for name, fn in case.systems.items():
            r = checked[name]
            if r["status"] == STATUS_OK:
                try:
                    ms = self._time(case, fn, input_sets)
                    r["ms"] = ms
                    if case.bytes_moved:
                        r["gbps"] = case.bytes_moved / (ms * 1e-3) / 1e9
                    if case.flops:
                        r["tflops"] = case.flops / (ms * 1e-3) / 1e12
                    if case.measure_memory and self.on_gpu:
                        r["peak_mb"] = self._peak_mb(fn, input_sets[0])
                except Exception as exc:
                    r.update(status=STATUS_FAILED, error=f"timing failed: {_short(exc)}")
                    if r.get("correct") is None:
                        r["correct"] = False
                    self._cleanup()
            rows.append(r)
            tick(name)
        input_sets.clear()
        self._add_ratios(case, rows)
        self._cleanup()
        return rows

    @staticmethod
    def _add_ratios(case: BenchCase, rows: list[dict[str, Any]]) -> None:
        timed = {r["system"]: r["ms"] for r in rows if r["status"] == STATUS_OK and r["ms"]}
        baselines = [s for s in timed if not s.startswith(OURS_PREFIX)]
        for r in rows:
            if r["system"] not in timed:
                continue
            for b in baselines:
                if b != r["system"]:
                    r[f"ratio_vs_{b}"] = timed[b] / r["ms"]
            if case.ceiling and case.ceiling in timed:
                r["pct_of_ceiling"] = 100.0 * timed[case.ceiling] / r["ms"]

    def _peak_mb(self, fn: Callable[[dict[str, Any]], Any], inputs: dict[str, Any]) -> float:
        """MB one call of ``fn`` allocates at its peak above what was allocated before it."""
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn(inputs)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del out
        return peak / 1e6

    def _cleanup(self) -> None:
        gc.collect()
        if self.on_gpu:
            torch.cuda.empty_cache()

    def run(self, cases: Sequence[BenchCase] | None = None, progress: bool = False) -> BenchmarkReport:
        """Run ``cases`` (default :meth:`load_cases`) and return the report; ``progress`` shows a bar."""
        cases = list(cases) if cases is not None else self.load_cases()
        total = sum(len(c.systems) for c in cases)
        bar = None
        if progress and total:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, unit="system", dynamic_ncols=True)
            except ImportError:
                bar = None

        def step(desc: str) -> None:
            if bar is not None:
                bar.set_postfix_str(desc[:60], refresh=False)
                bar.update(1)

        rows: list[dict[str, Any]] = []
        try:
            for case in cases:
                rows.extend(self.run_case(case, step))
        finally:
            if bar is not None:
                bar.close()
        return BenchmarkReport(env=collect_env(self.device), rows=rows, unavailable=dict(self.unavailable),
                               cpu_only=not self.on_gpu)


__all__ = ["BenchmarkSuite", "BenchmarkReport", "OP_FAMILIES", "collect_env", "git_commit", "family_of",
           "STATUS_OK", "STATUS_FAILED", "STATUS_SKIPPED"]
