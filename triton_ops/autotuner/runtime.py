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
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .cache import CACHE_DIR_ENV, ConfigCache, normalize_device

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


def resolve(kernel_type: str, problem_size: Any, device: torch.device | str,
            default: Mapping[str, Any]) -> dict[str, Any]:
    """``default`` updated with the tuned values of the keys it already has (when switched on)."""
    out = dict(default)
    tuned = lookup(kernel_type, problem_size, device)
    if tuned:
        for k, v in tuned.items():
            if k in out:
                out[k] = v
    return out


__all__ = ["use_tuned_configs", "tuned_configs_enabled", "lookup", "resolve", "default_cache",
           "default_cache_dir", "device_key", "forget_lookups", "USE_TUNED_ENV", "ENABLED", "LOOKUP_TTL_S"]
