"""The ``triton-ops`` command.

    triton-ops info                      device, available ops and paths, peak figures
    triton-ops bench [OPS] [--shapes ..] verify every op against its reference and baselines, time, report
    triton-ops bench host [OPS]          host microseconds per eager call of every op (launch floor beside)
    triton-ops bench model [MODELS]      Hugging Face models end to end, patched and unpatched
    triton-ops tune [OPS] [--shapes ..]  pre-tune problem sizes into the config cache
    triton-ops cache list|clear|path     inspect the config cache

With no GPU, Triton kernels run in Triton's CPU interpreter: the command switches it on by itself
(``TRITON_INTERPRET=1``, restarting once if Triton was already imported without it), runs small shapes
and says plainly that its timings are not GPU figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

_REEXEC_ENV = "TRITON_OPS_CLI_REEXEC"
CACHE_HELP = "cache directory (default: $TRITON_OPS_CACHE_DIR or ~/.cache/triton_ops)"


def _ensure_interpreter(argv: Sequence[str]) -> None:
    """With no GPU, make sure Triton kernels are interpreted.

    Triton decides interpreted-or-compiled when a kernel is decorated, i.e. when its module is imported.
    If ``triton`` is not imported yet, setting the variable now is enough; otherwise the process restarts
    itself once with the variable set (the user's own ``TRITON_INTERPRET`` setting is always kept).
    """
    if torch.cuda.is_available() or "TRITON_INTERPRET" in os.environ:
        return
    os.environ["TRITON_INTERPRET"] = "1"
    if "triton" not in sys.modules or os.environ.get(_REEXEC_ENV):
        return
    env = dict(os.environ, **{_REEXEC_ENV: "1"})
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "triton_ops.cli", *argv], env)


def _kernel_modules() -> tuple[str, ...]:
    from .compile_check import KERNEL_MODULES

    return tuple(KERNEL_MODULES)


def _try_import(module: str) -> tuple[Any | None, str | None]:
    try:
        return importlib.import_module(module), None
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None, "not built yet (module missing)"
        return None, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a broken op module must not break the command
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="cfg", dynamic_ncols=True, file=sys.stderr)


def _cpu_banner() -> str:
    from .benchmark.report import CPU_BANNER

    bar = "=" * 100
    return f"{bar}\nNo CUDA GPU found. {CPU_BANNER}\n{bar}"


# Argument checks: every command checks its arguments before running anything, so a mistake costs one
# clear line (exit 2 through main) instead of a traceback, possibly after minutes of benchmarking.


def _check_device_arg(text: str | None) -> str:
    from .exceptions import DeviceError
    from .utils import interpreter_enabled
    from .validation import check_device_available

    if text is None:
        return _device()
    dev = check_device_available(text, "--device")
    if dev.type == "cpu" and not interpreter_enabled():
        raise DeviceError("--device cpu runs the kernels in Triton's interpreter, which is off "
                          "(TRITON_INTERPRET=0 in the environment); set TRITON_INTERPRET=1")
    return str(dev)


def _check_out_dir(path: str, flag: str) -> None:
    """``path`` is a directory, or can be created as one, and can be written."""
    from .exceptions import InvalidArgumentError

    target = Path(path).expanduser()
    probe = target
    try:
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent  # the nearest existing ancestor is what mkdir would write into
        if not probe.is_dir():
            where = "is a file" if probe == target else f"would be created under {probe}, which is a file"
            raise InvalidArgumentError(f"{flag} {path}: {where}; expected a directory")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise InvalidArgumentError(f"{flag} {path}: {probe} is not writable")
    except OSError as exc:
        raise InvalidArgumentError(f"{flag} {path}: {exc.strerror or exc}") from None


def _check_numbers(args: argparse.Namespace, rules: dict[str, tuple[float, bool]]) -> None:
    """``rules``: option -> (least value, whether the least value itself is allowed)."""
    import math

    from .exceptions import InvalidArgumentError

    for opt, (least, inclusive) in rules.items():
        value = getattr(args, opt.lstrip("-").replace("-", "_"), None)
        if value is None:
            continue
        ok = math.isfinite(value) and (value >= least if inclusive else value > least)
        if not ok:
            bound = f">= {least:g}" if inclusive else f"> {least:g}"
            raise InvalidArgumentError(f"{opt} must be a finite number {bound}, got {value!r}")


def _check_bench_args(args: argparse.Namespace) -> str:
    dev = _check_device_arg(args.device)
    _check_numbers(args, {"--warmup-ms": (0, True), "--rep-ms": (0, False), "--cpu-reps": (1, True)})
    if args.out:
        _check_out_dir(args.out, "--out")
    return dev


def _check_tune_args(args: argparse.Namespace) -> str:
    from .autotuner.runtime import default_cache_dir

    dev = _check_device_arg(args.device)
    _check_numbers(args, {"--warmup": (0, True), "--runs": (1, True), "--max-configs": (1, True),
                          "--time-budget": (0, True)})  # 0: stop after the first config that works
    if args.dtype:
        _dtype(args.dtype)
    if args.out:
        _check_out_dir(args.out, "--out")
    _check_out_dir(str(args.cache_dir or default_cache_dir()), "--cache-dir" if args.cache_dir else
                   "cache directory (--cache-dir / $TRITON_OPS_CACHE_DIR)")
    return dev


def _check_tune_plan(entries: list[Any], shape_args: list[tuple[str | None, tuple[int, ...]]],
                     dtype: torch.dtype | None) -> None:
    """Every shape and the dtype fit the ops they are for, before any op is tuned."""
    from .exceptions import InvalidArgumentError

    for op, shape in shape_args:
        if op is not None and not any(_entry_wanted(m, e, [op]) for m, e in entries):
            names = ", ".join(e.kernel_type for _, e in entries)
            raise InvalidArgumentError(f"--shapes {op}={'x'.join(map(str, shape))}: {op!r} is not among the "
                                       f"ops to tune ({names})")
    for module, entry in entries:
        mine = [shape for op, shape in shape_args if op is None or _entry_wanted(module, entry, [op])]
        entry.check_dtype(dtype)
        for shape in mine:
            entry.check_problem(shape, dtype)


# ---------------------------------------------------------------------------------------------- info


def collect_info() -> dict[str, Any]:
    from . import __version__
    from .autotuner.runtime import USE_TUNED_ENV, default_cache_dir, tuned_configs_enabled
    from .benchmark.suite import OP_FAMILIES, collect_env
    from .performance import device_peaks
    from .utils import device_capability, has_fp8_tensor_cores, interpreter_enabled, num_sms

    dev = _device()
    cap = device_capability(dev) if dev == "cuda" else None
    env = collect_env(dev)
    peaks = device_peaks(dev)
    ops = {}
    for module in _kernel_modules():
        mod, err = _try_import(module)
        name = module.rsplit(".", 1)[-1]
        ops[name] = {"module": module, "available": mod is not None, "error": err,
                     "tunable": mod is not None and callable(getattr(mod, "tuning_entry", None))}
    bench = {}
    for fam, module in OP_FAMILIES.items():
        mod, err = _try_import(module)
        ok = mod is not None and callable(getattr(mod, "cases", None))
        bench[fam] = {"module": module, "available": ok, "error": err}
    fp8_ops = ops.get("fp8_gemm", {}).get("available", False)
    interp = interpreter_enabled()

    def nan_none(x: float | None) -> float | None:
        return None if x is None or x != x else x

    return {
        "version": __version__,
        "env": env,
        "python": sys.version.split()[0],
        "device": env["gpu"],
        "compute_capability": f"{cap[0]}.{cap[1]}" if cap else None,
        "sms": num_sms(dev) if cap else None,
        "paths": {
            "fp8_tensor_cores": bool(has_fp8_tensor_cores(dev)) and fp8_ops,
            "weight_only_fp8": bool(cap is not None and cap >= (8, 0)) and fp8_ops,
            "interpreter": interp,
        },
        "peaks": {"name": peaks.name, "mem_gbps": nan_none(peaks.mem_gbps),
                  "fp16_tflops": nan_none(peaks.fp16_tflops), "fp8_tflops": nan_none(peaks.fp8_tflops)},
        "ops": ops,
        "benchmarks": bench,
        "tuning": {"enabled": tuned_configs_enabled(), "switch": f"{USE_TUNED_ENV}=1 or use_tuned_configs()",
                   "cache_dir": str(default_cache_dir())},
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    yn = lambda b: "yes" if b else "no"
    env = info["env"]
    print(f"triton-ops {info['version']}  (python {info['python']}, torch {env['torch']}, "
          f"triton {env['triton']}, CUDA {env['cuda'] or 'n/a'})")
    if info["compute_capability"]:
        print(f"device: {info['device']}  (compute capability {info['compute_capability']}, "
              f"{info['sms']} SMs)")
    else:
        print(f"device: {info['device']}  (no CUDA GPU: kernels run in the Triton interpreter, slowly)")
    p = info["paths"]
    print("paths:")
    print(f"  FP8 tensor cores (sm_89+):                         {yn(p['fp8_tensor_cores'])}")
    print(f"  weight-only FP8 (sm_80+, bytes decoded in-kernel): {yn(p['weight_only_fp8'])}")
    print(f"  Triton interpreter (TRITON_INTERPRET=1):           {yn(p['interpreter'])}")
    pk = info["peaks"]
    if pk["mem_gbps"] is not None:
        fp8 = f"{pk['fp8_tflops']:.0f}" if pk["fp8_tflops"] else "n/a"
        print(f"peaks used for utilisation ({pk['name']} datasheet): memory {pk['mem_gbps']:.0f} GB/s, "
              f"fp16/bf16 {pk['fp16_tflops']:.0f} TFLOPS, fp8 {fp8} TFLOPS")
    else:
        print("peaks used for utilisation: none known for this device (utilisation is not reported)")
    print("ops:")
    for name, o in info["ops"].items():
        if o["available"]:
            state = "available" + (", tunable" if o["tunable"] else "")
        else:
            state = f"NOT available: {o['error']}"
        print(f"  {name:14s} {state}")
    print("benchmark cases:")
    for fam, b in info["benchmarks"].items():
        print(f"  {fam:14s} {'available' if b['available'] else 'NOT available: ' + str(b['error'])}")
    t = info["tuning"]
    print(f"tuned configs: {'on' if t['enabled'] else 'off'} (switch: {t['switch']}); "
          f"cache: {t['cache_dir']}")
    return 0


# ---------------------------------------------------------------------------------------------- bench


def _write_json_rows(rows: list, out_dir: str, suffix: str, dev: str, command: str) -> Path | None:
    """``<out>/<gpu>-<date>-<suffix>.json`` in the results-file format ({"env", "command", "rows"})."""
    if not out_dir:
        return None
    from .benchmark.report import gpu_slug
    from .benchmark.suite import collect_env

    env = collect_env(dev)
    gpu = torch.device(dev).type == "cuda"
    stem = gpu_slug(env.get("gpu")) if gpu else "cpu"
    path = Path(out_dir) / f"{stem}-{_dt.date.today().isoformat()}-{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"env": env, "command": command, "rows": rows}, indent=1) + "\n")
    return path


def cmd_bench_host(args: argparse.Namespace, dev: str) -> int:
    from .benchmark.host import host_markdown, run_host_bench

    rows = run_host_bench(dev, select=args.ops[1:] or None)
    print(host_markdown(rows, torch.device(dev).type == "cuda"))
    command = "triton-ops " + " ".join(shlex.quote(a) for a in args.argv)
    path = _write_json_rows(rows, args.out, "host", dev, command)
    if path:
        print(f"wrote json: {path}")
    return 1 if any(r.get("status") == "FAILED" for r in rows) else 0


def cmd_bench_model(args: argparse.Namespace, dev: str) -> int:
    from .benchmark.model import model_markdown, run_model_bench

    rows = run_model_bench(dev, select=args.ops[1:] or None, quick=args.quick)
    print(model_markdown(rows))
    command = "triton-ops " + " ".join(shlex.quote(a) for a in args.argv)
    path = _write_json_rows(rows, args.out, "model", dev, command)
    if path:
        print(f"wrote json: {path}")
    return 1 if any(r.get("status") == "FAILED" for r in rows) else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark.report import to_markdown, write_reports
    from .benchmark.suite import BenchmarkSuite

    dev = _check_bench_args(args)
    if args.ops and args.ops[0] == "host":
        return cmd_bench_host(args, dev)
    if args.ops and args.ops[0] == "model":
        return cmd_bench_model(args, dev)
    cpu = torch.device(dev).type != "cuda"
    if cpu:
        print(_cpu_banner(), flush=True)
    quick = True if cpu else args.quick
    suite = BenchmarkSuite(args.ops or None, quick=quick, shapes=args.shapes, device=dev,
                           cases_modules=args.cases_module or (), warmup_ms=args.warmup_ms,
                           rep_ms=args.rep_ms,
                           cpu_reps=args.cpu_reps, skip_systems=args.skip or (),
                           cpu_skip=() if args.cpu_compile else ("torch_compile", "torch_compile_max"))
    cases = suite.load_cases()
    for name, why in suite.unavailable.items():
        print(f"{name}: {why}", file=sys.stderr)
    if not cases:
        print("nothing to benchmark: no op has benchmark cases for this selection", file=sys.stderr)
        return 1
    report = suite.run(cases, progress=not args.no_progress)
    command = "triton-ops " + " ".join(shlex.quote(a) for a in args.argv)
    print()
    print(to_markdown(report.rows, report.env, cpu_only=report.cpu_only, unavailable=report.unavailable,
                      command=command))
    if args.out:
        written = write_reports(report, args.out, plots=not args.no_plots, merge=not args.no_merge,
                                command=command)
        for kind, paths in written.items():
            for p in paths:
                print(f"wrote {kind}: {p}")
    if cpu:
        print(_cpu_banner())
    failed = report.failed
    if failed:
        print(f"{len(failed)} system(s) FAILED (wrong output or error): "
              + ", ".join(f"{r['op']} {r['shape']} {r['system']}" for r in failed), file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------- tune


def _load_entries(modules: Sequence[str]) -> tuple[list[Any], dict[str, str]]:
    from .autotuner.entry import TuningEntry

    entries, missing = [], {}
    for module in modules:
        mod, err = _try_import(module)
        if mod is None:
            missing[module] = err or "not importable"
            continue
        fn = getattr(mod, "tuning_entry", None) or getattr(mod, "tuning_entries", None)
        if not callable(fn):
            missing[module] = "no tuning_entry()"
            continue
        try:
            got = fn()
        except Exception as exc:
            missing[module] = f"tuning_entry() raised {type(exc).__name__}: {exc}"
            continue
        for e in got if isinstance(got, (list, tuple)) else [got]:
            if isinstance(e, TuningEntry):
                entries.append((module, e))
            else:
                missing[module] = f"tuning_entry() returned {type(e).__name__}, expected TuningEntry"
    return entries, missing


def _entry_wanted(module: str, entry: Any, ops: Sequence[str] | None) -> bool:
    if not ops:
        return True
    short = module.rsplit(".", 1)[-1]
    return any(o in (entry.kernel_type, short, module) or entry.kernel_type.startswith(o) for o in ops)


def _split_shape_arg(text: str) -> tuple[str | None, tuple[int, ...]]:
    """``"8x2048x4096"`` -> (None, dims) for every op; ``"gated_mlp=16384x4096x11264"`` -> that op only."""
    from .autotuner.entry import parse_shape

    op, sep, dims = text.partition("=")
    if not sep:
        return None, parse_shape(text)
    return op.strip() or None, parse_shape(dims)


def _dtype(name: str) -> torch.dtype:
    from .exceptions import InvalidArgumentError

    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise InvalidArgumentError(f"--dtype {name!r} is not a torch dtype (e.g. float16, bfloat16, float32)")
    return dt


def _confirm(tuner: Any, best: dict[str, Any], default: dict[str, Any], args: tuple, kwargs: dict,
             device: str, rounds: int = 3) -> tuple[float, float]:
    """Re-time the default and the winner alternately; medians of the rounds (noise check)."""
    d, b = [], []
    for _ in range(rounds):
        d.append(tuner.benchmark_config(default, *args, device=device, **kwargs))
        b.append(tuner.benchmark_config(best, *args, device=device, **kwargs))
    d.sort()
    b.sort()
    return d[len(d) // 2], b[len(b) // 2]


def _snapshot(out: Any) -> Any:
    """A copy of a launch's output that later launches cannot overwrite (entries may reuse buffers)."""
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, (list, tuple)):
        return type(out)(_snapshot(o) for o in out)
    return out


def order_candidates(configs: list[dict[str, Any]], default: dict[str, Any],
                     max_configs: int | None = None) -> list[dict[str, Any]]:
    """The default first, then the other configs by how many parameters they change (one-parameter moves
    first, generation order among equals), cut to ``max_configs`` in all.

    A heuristic default is usually near the optimum, so its neighbours are the configs most worth the
    seconds each GEMM config takes to compile; a ``--max-configs`` or ``--time-budget`` cut keeps those.
    """
    others = [c for c in configs if c != default]
    diff = lambda c: sum(1 for k in set(c) | set(default) if c.get(k) != default.get(k))
    others = sorted(others, key=diff)  # stable: generation order among equals
    out = [dict(default)] + others
    if max_configs is not None:
        out = out[:max(1, max_configs)]
    return out


def tune_entry_shape(entry: Any, shape: tuple[int, ...], *, device: str, dtype: torch.dtype | None,
                     cache: Any, warmup: int, runs: int, force: bool, max_configs: int | None,
                     progress: bool, time_budget_s: float | None = None) -> dict[str, Any]:
    """Tune one problem of one entry; returns a result row (never raises for kernel failures).

    The winner is stored under the entry's cache key for the problem (:meth:`TuningEntry.key_for`), the
    key its launcher looks up, on the canonical device name (``"cuda"`` is stored as ``"cuda:<index>"``).
    """
    from .autotuner.configs import generate_configs
    from .autotuner.runtime import device_key
    from .autotuner.tuner import TritonAutoTuner
    from .benchmark.correctness import check_output
    from .exceptions import TuningFailedError

    dtype = dtype or entry.dtype
    dkey = device_key(device)
    row: dict[str, Any] = {"kernel_type": entry.kernel_type, "shape": "x".join(map(str, shape)),
                           "dtype": str(dtype).replace("torch.", ""), "device": dkey}
    try:
        key = entry.key_for(shape, dtype)
        row["cache_key"] = "x".join(map(str, key))
        call_args, call_kwargs = entry.make_args(shape, device, dtype)
        default = dict(entry.default_for(shape, dtype))
        ref = _snapshot(entry.run(*call_args, **call_kwargs, **default))
    except Exception as exc:
        row.update(status="FAILED", error=f"default config failed: {type(exc).__name__}: {exc}"[:300])
        return row
    configs = entry.valid_for(shape, generate_configs(entry.config_space), dtype)
    candidates = order_candidates(configs, default, max_configs)

    def verify(out: Any, cfg: dict[str, Any]) -> bool:
        res = check_output(out, ref, rtol=entry.rtol)
        if not res.passed:
            raise TuningFailedError(f"output differs from the default config's: {res.message}")
        return True

    profile = entry.profile(shape, dtype) if entry.profile is not None else None
    tuner = TritonAutoTuner(entry.run, entry.config_space, warmup_runs=warmup, benchmark_runs=runs,
                            cache=cache, profile=profile, verify=verify)
    bar = _progress(len(candidates), f"{entry.kernel_type} {row['shape']}", progress)
    try:
        result = tuner.tune(*call_args, problem_size=key, device=dkey, kernel_type=entry.kernel_type,
                            configs=candidates, force=force, time_budget_s=time_budget_s,
                            progress=(lambda c, m: bar.update(1)) if bar is not None else None, **call_kwargs)
    except TuningFailedError as exc:
        row.update(status="FAILED", error=str(exc).splitlines()[0][:300])
        return row
    finally:
        if bar is not None:
            bar.close()
    if not result.all_results:  # answered from the cache
        row.update(status="cached", best_config=result.best_config, best_ms=result.metrics.latency_ms)
        return row
    ok = [(c, m) for c, m in result.all_results if m is not None]
    default_ms = next((m.latency_ms for c, m in result.all_results if c == default and m is not None), None)
    best_cfg, best_ms = result.best_config, result.metrics.latency_ms
    if best_cfg != default and default_ms is not None:
        # the search's minimum is biased low by noise: confirm the winner against the default, and keep
        # the default unless the winner is at least 1% faster
        default_ms, best_ms = _confirm(tuner, best_cfg, default, call_args, call_kwargs, dkey)
        if best_ms > 0.99 * default_ms:
            best_cfg, best_ms = default, default_ms
        cache.set(entry.kernel_type, key, dkey, best_cfg,
                  metrics=tuner.metrics_for(best_ms, profile, dkey))
    row.update(status="ok", default_config=default, default_ms=default_ms, best_config=best_cfg,
               best_ms=best_ms, speedup=(default_ms / best_ms) if default_ms and best_ms else None,
               configs_ok=len(ok), configs_tried=len(result.all_results), configs_total=len(configs))
    metrics = tuner.metrics_for(best_ms, profile, dkey)
    if metrics.throughput_tflops is not None:
        row["best_tflops"] = metrics.throughput_tflops
    if metrics.bandwidth_gbps is not None:
        row["best_gbps"] = metrics.bandwidth_gbps
    return row


def _tune_markdown(rows: list[dict[str, Any]], env: dict[str, Any], cpu: bool) -> str:
    from .benchmark.report import CPU_BANNER

    lines = [f"# Tuning results: {env.get('gpu')}", ""]
    if cpu:
        lines += [f"> **{CPU_BANNER}**", ""]
    lines += ["| kernel | shape | dtype | default ms | tuned ms | speedup | default config | tuned config "
              "| configs ok/tried/space | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda x: f"{x:.4g}" if isinstance(x, float) else ""
        sp = f"{r['speedup']:.3f}x" if r.get("speedup") else ""
        cfg = f"`{json.dumps(r['best_config'])}`" if r.get("best_config") else ""
        dflt = f"`{json.dumps(r['default_config'])}`" if r.get("default_config") else ""
        tried = (f"{r.get('configs_ok', '')}/{r.get('configs_tried', '')}/{r.get('configs_total', '')}"
                 if r.get("configs_tried") else "")
        note = r.get("error") or ""
        if r.get("status") == "cached":
            note = "from cache (use --force to re-tune)"
        elif r.get("status") == "ok":
            note = "default kept" if r.get("best_config") == r.get("default_config") else "tuned config stored"
        lines.append(f"| {r['kernel_type']} | {r['shape']} | {r['dtype']} | {fmt(r.get('default_ms'))} | "
                     f"{fmt(r.get('best_ms'))} | {sp} | {dflt} | {cfg} | {tried} | {note} |")
    return "\n".join(lines) + "\n"


def cmd_tune(args: argparse.Namespace) -> int:
    from .autotuner.cache import ConfigCache
    from .autotuner.runtime import default_cache_dir
    from .benchmark.report import gpu_slug
    from .benchmark.suite import collect_env

    dev = _check_tune_args(args)
    cpu = torch.device(dev).type != "cuda"
    modules = list(_kernel_modules()) + list(args.entries_module or [])
    entries, missing = _load_entries(modules)
    entries = [(m, e) for m, e in entries if _entry_wanted(m, e, args.ops)]
    for module, why in missing.items():
        asked = any(o in module for o in args.ops or ()) or module in (args.entries_module or [])
        # a module that simply has nothing to tune is news only to someone who asked for it
        if asked or (not args.ops and why != "no tuning_entry()"):
            print(f"{module}: not tunable ({why})", file=sys.stderr)
    if not entries:
        print("nothing to tune: no matching op exposes tuning_entry()", file=sys.stderr)
        return 1
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    cache = ConfigCache(cache_dir)
    dtype = _dtype(args.dtype) if args.dtype else None
    shape_args = [_split_shape_arg(s) for s in args.shapes] if args.shapes else []
    _check_tune_plan(entries, shape_args, dtype)
    if cpu:
        print(_cpu_banner(), flush=True)
    rows = []
    for module, entry in entries:
        mine = [shape for op, shape in shape_args if op is None or _entry_wanted(module, entry, [op])]
        if shape_args and not mine:
            continue  # shapes were given, none for this op
        shapes = mine or (entry.cpu_shapes if cpu else entry.default_shapes)
        if not shapes:
            print(f"{entry.kernel_type}: no {'CPU ' if cpu else ''}default shapes; pass --shapes",
                  file=sys.stderr)
            continue
        for shape in shapes:
            row = tune_entry_shape(entry, tuple(shape), device=dev, dtype=dtype, cache=cache,
                                   warmup=args.warmup, runs=args.runs, force=args.force,
                                   max_configs=args.max_configs, time_budget_s=args.time_budget,
                                   progress=not args.no_progress)
            rows.append(row)
    env = collect_env(dev)
    md = _tune_markdown(rows, env, cpu)
    print()
    print(md)
    print(f"cache: {cache_dir}  (used by the ops when TRITON_OPS_USE_TUNED=1 or "
          "triton_ops.use_tuned_configs())")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        # <gpu>-tune-<date>: beside the <gpu>-<date> benchmark files; cpu-* (interpreter) files are not results
        stem = f"{gpu_slug(env.get('gpu'))}-tune-{_dt.date.today().isoformat()}"
        doc = json.dumps({"env": env, "rows": rows}, indent=1, default=str)
        (out / f"{stem}.json").write_text(doc + "\n")
        (out / f"{stem}.md").write_text(md)
        print(f"wrote: {out / (stem + '.json')}, {out / (stem + '.md')}")
    if cpu:
        print(_cpu_banner())
    return 1 if any(r.get("status") == "FAILED" for r in rows) or not rows else 0


# ---------------------------------------------------------------------------------------------- cache


def cmd_cache(args: argparse.Namespace) -> int:
    from .autotuner.cache import ConfigCache
    from .autotuner.runtime import default_cache_dir

    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.action == "path":
        print(cache_dir)
        return 0
    cache = ConfigCache(cache_dir)
    if args.action == "clear":
        cache.clear(args.kernel_type)
        print(f"cleared {'all entries' if not args.kernel_type else args.kernel_type} in {cache_dir}")
        return 0
    items = cache.items()
    if not items:
        print(f"no tuned configs valid for this environment in {cache_dir}")
        return 0
    for key, entry in items:
        lat = (entry.get("metrics") or {}).get("latency_ms")
        lat_s = f"{lat:.4g} ms" if isinstance(lat, (int, float)) else ""
        print(f"{key.kernel_type:16s} {'x'.join(map(str, key.problem_size)):>22s} {key.device:8s} "
              f"{json.dumps(entry['config'])} {lat_s}")
    return 0


# ---------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triton-ops",
                                     description="Fused Triton ops: info, benchmarks, tuning.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="device, available ops and paths, peak figures")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="verify and time every op against its baselines, write reports")
    p.add_argument("ops", nargs="*", help="op families or ops (rmsnorm_rope, gated_mlp, fp8, fp8_gemm ...); "
                                          "default: all. 'host [OPS]': host cost per eager call; "
                                          "'model [MODELS]': end-to-end Hugging Face models")
    p.add_argument("--shapes", nargs="+", help="shape labels understood by the ops' benchmark cases")
    p.add_argument("--out", default="benchmarks/results",
                   help="directory for <gpu>-<date>.json/.md/.csv and plots "
                        "(default: %(default)s; '' = none)")
    p.add_argument("--quick", action="store_true", help="fewer, smaller problems (always on with no GPU)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-merge", action="store_true", help="replace today's results file instead of merging")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--skip", nargs="+", metavar="SYSTEM", help="systems not to run (e.g. torch_compile_max)")
    p.add_argument("--cpu-compile", action="store_true", help="with no GPU, run torch.compile systems too")
    p.add_argument("--cases-module", nargs="+", metavar="MODULE",
                   help="extra modules defining cases(quick, shapes, device) (benchmark your own ops)")
    p.add_argument("--warmup-ms", type=float, default=25.0)
    p.add_argument("--rep-ms", type=float, default=100.0)
    p.add_argument("--cpu-reps", type=int, default=1, help="timed repetitions per system with no GPU")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("tune", help="pre-tune problem sizes into the config cache")
    p.add_argument("ops", nargs="*", help="kernel types or kernel modules to tune (default: all tunable)")
    p.add_argument("--shapes", nargs="+", metavar="[OP=]SHAPE",
                   help="problem sizes like 8x2048x4096 for every op, or OP=SHAPE for one op "
                        "(e.g. gated_mlp=16384x4096x11264); ops with none given are skipped "
                        "(default: each op's own list)")
    p.add_argument("--dtype", help="torch dtype name (default: each op's own)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per config (default: %(default)s)")
    p.add_argument("--runs", type=int, default=30,
                   help="timed runs per config, median kept (default: %(default)s)")
    p.add_argument("--max-configs", type=int,
                   help="try at most this many configs per problem, the default's nearest neighbours first "
                        "(default: all)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop trying further configs of a problem after this many seconds (compiling a GEMM "
                        "config takes seconds; default: no limit)")
    p.add_argument("--force", action="store_true", help="re-tune problems already in the cache")
    p.add_argument("--cache-dir", help=CACHE_HELP)
    p.add_argument("--entries-module", nargs="+", metavar="MODULE",
                   help="extra modules exposing tuning_entry() (tune your own kernels)")
    p.add_argument("--out", help="also write <gpu>-tune-<date>.json/.md here (default and tuned side by side)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("cache", help="inspect or clear the tuned-config cache")
    p.add_argument("action", choices=("list", "clear", "path"))
    p.add_argument("kernel_type", nargs="?", help="with clear: only this kernel type")
    p.add_argument("--cache-dir", help=CACHE_HELP)
    p.set_defaults(func=cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _ensure_interpreter(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from .exceptions import TritonOpsError

    try:
        return int(args.func(args) or 0)
    except TritonOpsError as exc:
        print(f"triton-ops: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter shutdown quiet
        return 0


if __name__ == "__main__":
    sys.exit(main())
