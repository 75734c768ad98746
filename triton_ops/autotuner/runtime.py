"""The opt-in switch that lets the public ops use configs tuned by ``triton-ops tune``.

By default every op launches with its heuristic config (a pure function of the problem), so results do
not depend on what happens to be in a cache. Tuned configs are used only when switched on, either in
code::

    import triton_ops
    triton_ops.use_tuned_configs()          # or: with triton_ops.use_tuned_configs(): ...

or for a whole process with ``TRITON_OPS_USE_TUNED=1`` in the environment. The configs are read from the
cache directory in ``$TRITON_OPS_CACHE_DIR`` (default ``~/.cache/triton_ops``), which is where
``triton-ops tune`` writes them.

A launcher asks with ``lookup(kernel_type, problem_size, device)`` (None when off or not tuned), or merges
with its default via ``resolve(...)``; only keys its default config has are taken from the cache.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .cache import CACHE_DIR_ENV, ConfigCache

#: Environment variable that switches tuned configs on for the whole process ("1", "true", "on", "yes").
USE_TUNED_ENV = "TRITON_OPS_USE_TUNED"

_state_lock = threading.Lock()
_enabled_override: bool | None = None  # None: follow the environment variable
_default_cache: ConfigCache | None = None
_default_cache_dir: Path | None = None


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
        return _default_cache


def tuned_configs_enabled() -> bool:
    """Whether launchers may use tuned configs (the :func:`use_tuned_configs` switch, else the env var)."""
    if _enabled_override is not None:
        return _enabled_override
    return os.environ.get(USE_TUNED_ENV, "").strip().lower() in ("1", "true", "on", "yes")


class _Switch:
    """Returned by :func:`use_tuned_configs`; as a context manager it restores the previous setting."""

    def __init__(self, previous: bool | None) -> None:
        self._previous = previous

    def __enter__(self) -> _Switch:
        return self

    def __exit__(self, *exc: object) -> None:
        global _enabled_override
        with _state_lock:
            _enabled_override = self._previous

    def __bool__(self) -> bool:
        return tuned_configs_enabled()


def use_tuned_configs(enabled: bool | None = True) -> _Switch:
    """Let the ops use configs from the tuning cache (``enabled=False``: heuristics only; ``None``: follow
    ``$TRITON_OPS_USE_TUNED`` again). Works as a plain call or as ``with use_tuned_configs(): ...``."""
    global _enabled_override
    if enabled is not None and not isinstance(enabled, bool):
        from ..exceptions import InvalidArgumentError

        raise InvalidArgumentError(f"enabled must be True, False or None, got {enabled!r}")
    with _state_lock:
        previous = _enabled_override
        _enabled_override = enabled
    return _Switch(previous)


def device_key(device: torch.device | str) -> str:
    """The cache's device string for a tensor's device: "cuda:<index>" or "cpu"."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        dev = torch.device("cuda", index)
    return str(dev)


def lookup(kernel_type: str, problem_size: Any, device: torch.device | str) -> dict[str, Any] | None:
    """The tuned config for this problem, or None when tuned configs are off or none was stored.

    Cheap when off (one flag test); when on, a dictionary look-up plus a ``stat`` of the cache file.
    """
    if not tuned_configs_enabled():
        return None
    cache = default_cache()
    key = device_key(device)
    for dev in (key, key.split(":")[0]) if key.startswith("cuda:") else (key,):
        cfg = cache.get(kernel_type, problem_size, dev)
        if cfg is not None:
            return cfg
    return None


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
           "default_cache_dir", "device_key", "USE_TUNED_ENV"]
