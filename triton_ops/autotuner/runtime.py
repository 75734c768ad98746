"""The opt-in switch that lets the public ops use configs tuned by ``triton-ops tune``.

By default every op launches with its heuristic config (a pure function of the problem), so results do
not depend on what happens to be in a cache. Tuned configs are used only when switched on, either in
code::

    import triton_ops
    triton_ops.use_tuned_configs()          # or: with triton_ops.use_tuned_configs(): ...

or for a whole process with ``TRITON_OPS_USE_TUNED=1`` in the environment (read when the package is
imported, and again by ``use_tuned_configs(None)``). The configs are read from the
cache directory in ``$TRITON_OPS_CACHE_DIR`` (default ``~/.cache/triton_ops``), which is where
``triton-ops tune`` writes them.

A launcher asks with ``lookup(kernel_type, problem_size, device)`` (None when off or not tuned), or merges
with its default via ``resolve(...)``; only keys its default config has are taken from the cache. A
launcher on a hot path tests the module-level bool :data:`ENABLED` first, so the disabled path costs one
attribute look-up.

A cache file can be edited by hand or written by another version of a kernel, so ``resolve`` checks every
tuned value before a launch can see it: against the launcher's ``allowed`` rules (a collection of
accepted values, or a predicate such as :func:`tuned_int`), and otherwise against the kind of the
default's value (an int stays an int, positive where the default is). An entry with any value that
fails is ignored as a whole, with one warning per entry, and the launch uses its default config.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Union

import torch

from .cache import CACHE_DIR_ENV, ConfigCache, normalize_device

log = logging.getLogger(__name__)

#: What ``resolve(..., allowed=...)`` takes per parameter: the accepted values, or a predicate
#: ``rule(value) -> bool`` (a rule that raises rejects the value).
Rule = Union[Collection[Any], Callable[[Any], bool]]

#: Environment variable that switches tuned configs on for the whole process ("1", "true", "on", "yes").
#: It is read when the package is imported and again by ``use_tuned_configs(None)``.
USE_TUNED_ENV = "TRITON_OPS_USE_TUNED"

#: Seconds a launcher's look-up result is reused before the cache is asked again: entries written
#: meanwhile (by another process, or by another ConfigCache instance in this one) are seen after at most
#: this long; ``use_tuned_configs(...)`` and :func:`forget_lookups` drop remembered results at once.
LOOKUP_TTL_S = 1.0

_state_lock = threading.Lock()
_enabled_override: bool | None = None  # None: follow the environment variable
_default_cache: ConfigCache | None = None
_default_cache_dir: Path | None = None
# (kernel_type, problem_size, device as given) -> (expiry on time.monotonic(), config or None)
_memo: dict[tuple[Any, ...], tuple[float, dict[str, Any] | None]] = {}


def _env_enabled() -> bool:
    return os.environ.get(USE_TUNED_ENV, "").strip().lower() in ("1", "true", "on", "yes")


#: The switch as one module-level bool, so a launcher's disabled path is a single attribute test
#: (``if runtime.ENABLED``: ~30 ns, against the ~2 us a decode-sized RMSNorm+RoPE takes on the GPU).
#: Read it, never assign it: :func:`use_tuned_configs` keeps it in step.
ENABLED: bool = _env_enabled()


def default_cache_dir() -> Path:
    """``$TRITON_OPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/triton_ops``, else ``~/.cache/triton_ops``."""
    env = os.environ.get(CACHE_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "triton_ops"


def default_cache() -> ConfigCache:
    """The process-wide cache on :func:`default_cache_dir` (re-created if the directory setting changed)."""
    global _default_cache, _default_cache_dir
    wanted = default_cache_dir()
    with _state_lock:
        if _default_cache is None or _default_cache_dir != wanted:
            _default_cache = ConfigCache(wanted)
            _default_cache_dir = wanted
            _memo.clear()
        return _default_cache


def tuned_configs_enabled() -> bool:
    """Whether launchers may use tuned configs (the :func:`use_tuned_configs` switch, else the env var as
    read at import or at the last ``use_tuned_configs(None)``)."""
    return ENABLED


def _apply(override: bool | None) -> None:
    global _enabled_override, ENABLED
    _enabled_override = override
    ENABLED = _env_enabled() if override is None else override
    _memo.clear()
    _clear_launch_plans()


def _clear_launch_plans() -> None:
    """Launch plans bake in the config they chose: switching tuned configs on or off, or forgetting
    look-ups, re-plans every signature on its next call."""
    from ..launch import clear_plans

    clear_plans()


class _Switch:
    """Returned by :func:`use_tuned_configs`; as a context manager it restores the previous setting."""

    def __init__(self, previous: bool | None) -> None:
        self._previous = previous

    def __enter__(self) -> _Switch:
        return self

    def __exit__(self, *exc: object) -> None:
        with _state_lock:
            _apply(self._previous)

    def __bool__(self) -> bool:
        return tuned_configs_enabled()


def use_tuned_configs(enabled: bool | None = True) -> _Switch:
    """Let the ops use configs from the tuning cache (``enabled=False``: heuristics only; ``None``: follow
    ``$TRITON_OPS_USE_TUNED`` again, re-reading it). Works as a plain call or as
    ``with use_tuned_configs(): ...``."""
    if enabled is not None and not isinstance(enabled, bool):
        from ..exceptions import InvalidArgumentError

        raise InvalidArgumentError(f"enabled must be True, False or None, got {enabled!r}")
    with _state_lock:
        previous = _enabled_override
        _apply(enabled)
    return _Switch(previous)


def device_key(device: torch.device | str) -> str:
    """The cache's canonical device string: "cuda:<index>" (an index-less "cuda" is the current device)
    or "cpu"; the same function the cache applies to every key (:func:`cache.normalize_device`)."""
    return normalize_device(device)


def _same_model_devices(key: str) -> list[str]:
    """Other CUDA devices of this host with the same model as ``key``: a config tuned on cuda:0 is as good
    on cuda:3 of an 8-GPU tensor-parallel server whose GPUs are all alike."""
    if not key.startswith("cuda:") or not torch.cuda.is_available():
        return []
    try:
        index = int(key.split(":", 1)[1])
        model = torch.cuda.get_device_name(index)
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())
                if i != index and torch.cuda.get_device_name(i) == model]
    except Exception:  # an index that does not exist here: nothing to share with
        return []


def lookup(kernel_type: str, problem_size: Any, device: torch.device | str) -> dict[str, Any] | None:
    """The tuned config for this problem, or None when tuned configs are off or none was stored.

    Off: one flag test. On: a dictionary look-up in this module (a result is reused for
    :data:`LOOKUP_TTL_S`), else the cache (a ``stat`` of its file plus a dictionary look-up). An entry
    tuned on another GPU of the same model is used when this device has none of its own.
    """
    if not ENABLED:
        return None
    try:
        memo_key = (kernel_type, tuple(problem_size) if isinstance(problem_size, (list, tuple)) else problem_size,
                    device)
        hash(memo_key)
    except TypeError:
        memo_key = None
    now = time.monotonic()
    if memo_key is not None:
        hit = _memo.get(memo_key)
        if hit is not None and hit[0] > now:
            return dict(hit[1]) if hit[1] is not None else None
    cache = default_cache()
    key = device_key(device)
    cfg = cache.get(kernel_type, problem_size, key)
    if cfg is None:
        for other in _same_model_devices(key):
            cfg = cache.get(kernel_type, problem_size, other)
            if cfg is not None:
                break
    if memo_key is not None:
        if len(_memo) > 4096:  # many distinct problems (e.g. every decode batch size): start over
            _memo.clear()
        _memo[memo_key] = (now + LOOKUP_TTL_S, dict(cfg) if cfg is not None else None)
    return cfg


def forget_lookups() -> None:
    """Drop remembered look-up results and the launch plans built from them (the next look-up asks the
    cache again)."""
    _memo.clear()
    _clear_launch_plans()


class tuned_int:  # noqa: N801 - used like a function: tuned_int(1, 64)
    """A rule for ``resolve(..., allowed=...)``: a Python int (not a bool, not a float such as 8.0) in
    ``[min_value, max_value]``, optionally a power of two.

    >>> rule = tuned_int(1, 8, power_of_two=True)
    >>> rule(4), rule(6), rule(16), rule(4.0), rule(True)
    (True, False, False, False, False)
    """

    def __init__(self, min_value: int | None = 1, max_value: int | None = None, *,
                 power_of_two: bool = False) -> None:
        self.min_value, self.max_value, self.power_of_two = min_value, max_value, power_of_two

    def __call__(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        if self.min_value is not None and value < self.min_value:
            return False
        if self.max_value is not None and value > self.max_value:
            return False
        return not self.power_of_two or (value > 0 and value & (value - 1) == 0)

    def __str__(self) -> str:
        lo, hi = self.min_value, self.max_value
        span = (f" in [{lo}, {hi}]" if lo is not None and hi is not None else f" >= {lo}" if lo is not None
                else f" <= {hi}" if hi is not None else "")
        return f"an int{span}" + (", a power of two" if self.power_of_two else "")

    def __repr__(self) -> str:
        return f"tuned_int({self.min_value!r}, {self.max_value!r}, power_of_two={self.power_of_two!r})"


def _same_value(value: Any, choice: Any) -> bool:
    """``value == choice`` without Python's cross-type equalities (True == 1, 8.0 == 8, (1,) vs [1])."""
    if type(value) is not type(choice):
        return False
    if isinstance(value, (list, tuple)):
        return len(value) == len(choice) and all(_same_value(a, b) for a, b in zip(value, choice))
    return value == choice


def _check_value(value: Any, rule: Rule | None, default: Any) -> str | None:
    """None when ``value`` may replace ``default``; else what was expected."""
    if rule is not None:
        if callable(rule):
            try:
                ok = bool(rule(value))
            except Exception:  # a rule that cannot judge the value rejects it
                ok = False
            return None if ok else str(rule) if isinstance(rule, tuned_int) else \
                f"a value accepted by {getattr(rule, '__name__', repr(rule))}"
        choices = list(rule)
        return None if any(_same_value(value, c) for c in choices) else f"one of {choices!r}"
    # no rule: the kind of the default's value (None: anything goes)
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "a bool"
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            return "an int"
        # launch parameters with a positive default (block sizes, warps, stages, GROUP_M, SPLIT_K ...) are
        # never zero or negative; such a value faults or corrupts a launch
        return None if default <= 0 or value > 0 else "a positive int"
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "a finite number"
    if isinstance(default, (str, list, tuple)):
        return None if type(value) is type(default) else f"a {type(default).__name__}"
    return None


#: (kernel_type, problem size, device, what was wrong) already warned about
_warned: set[tuple[Any, ...]] = set()


def validate_tuned(kernel_type: str, problem_size: Any, device: Any, tuned: Mapping[str, Any] | None,
                   default: Mapping[str, Any], allowed: Mapping[str, Rule] | None = None) -> dict[str, Any]:
    """``default`` updated with ``tuned``'s values for the keys ``default`` has, when every one of them is
    valid; else ``default`` unchanged, with one :class:`RuntimeWarning` per entry.

    ``allowed`` maps a parameter to its rule: a collection of accepted values (compared type-strictly:
    ``True`` is not ``1``, ``8.0`` is not ``8``) or a predicate ``rule(value) -> bool`` such as
    :class:`tuned_int`. Parameters without a rule must match the kind of the default's value: a bool, an
    int (positive when the default is), a finite number, a str, a list or a tuple; a default of None
    accepts anything. Keys the default does not have are ignored (an entry may record more than one
    launcher needs). ``kernel_type``, ``problem_size`` and ``device`` only name the entry in the warning.
    """
    out = dict(default)
    if not tuned:
        return out
    rules = allowed or {}
    bad = []
    for k, v in tuned.items():
        if k not in out:
            continue
        why = _check_value(v, rules.get(k), out[k])
        if why is not None:
            bad.append(f"{k}={v!r} (expected {why})")
    if bad:
        try:
            size = tuple(problem_size)
        except TypeError:
            size = problem_size
        what = "; ".join(bad)
        key = (kernel_type, repr(size), str(device), what)
        with _state_lock:
            first = key not in _warned
            if first:
                if len(_warned) > 4096:  # bounded: many distinct damaged entries only repeat warnings
                    _warned.clear()
                _warned.add(key)
        if first:
            msg = (f"triton_ops: ignoring the tuned config of {kernel_type} for problem {size} on {device} "
                   f"from the config cache: {what}; the launch uses its heuristic config. Re-tune it "
                   f"(triton-ops tune {kernel_type} --force) or remove it (triton-ops cache clear "
                   f"{kernel_type}).")
            log.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return out
    for k, v in tuned.items():
        if k in out:
            out[k] = v
    return out


def resolve(kernel_type: str, problem_size: Any, device: torch.device | str, default: Mapping[str, Any],
            allowed: Mapping[str, Rule] | None = None) -> dict[str, Any]:
    """``default`` updated with the tuned values of the keys it already has (when switched on and the
    stored entry is valid: see :func:`validate_tuned`)."""
    tuned = lookup(kernel_type, problem_size, device)
    if not tuned:
        return dict(default)
    return validate_tuned(kernel_type, problem_size, device_key(device), tuned, default, allowed)


__all__ = ["use_tuned_configs", "tuned_configs_enabled", "lookup", "resolve", "validate_tuned", "tuned_int",
           "Rule", "default_cache",
           "default_cache_dir", "device_key", "forget_lookups", "USE_TUNED_ENV", "ENABLED", "LOOKUP_TTL_S"]
