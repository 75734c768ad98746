"""Tuned-configuration cache: in memory always, JSON files on disk when a directory is given.

Keys are ``(kernel_type, problem_size, device)``. Each entry also records the environment it was tuned
in (library version, Triton version, GPU model); an entry whose environment differs from the current
one is invisible (a config tuned on an H100 says nothing about an H200, and a new Triton release can
change which config is fastest). Entries for several GPU models can live side by side in one file, so
a home directory shared by different machines keeps each machine's results.

On disk there is one file per kernel type, ``<cache_dir>/configs-<kernel_type>.json``. Writers take a
file lock (``filelock``, or ``fcntl`` where filelock is not installed), re-read the file, merge their
entry and replace the file atomically (write to a temporary file in the same directory, fsync,
``os.replace``), so concurrent threads and processes never lose each other's entries and readers never
see half a file. A file that does not parse (truncated, edited by hand, another program's) is reported
once, moved aside to ``*.corrupt`` and rebuilt from what this process knows; the cache never raises on
a disk problem: it warns once and keeps working in memory.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import logging
import math
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..exceptions import InvalidArgumentError
from ..models import KernelMetrics

log = logging.getLogger(__name__)

#: Environment variable naming the default on-disk cache directory.
CACHE_DIR_ENV = "TRITON_OPS_CACHE_DIR"
#: Bumped when the file layout changes; files of another format are ignored and rewritten.
FORMAT_VERSION = 1
_FILE_PREFIX = "configs-"
#: Seconds to wait for another process's lock before giving up on persisting one entry (it stays in
#: memory). Writers hold the lock for a read-merge-write of a small JSON file: milliseconds.
LOCK_TIMEOUT_S = 30.0

_reported: set[str] = set()
_reported_lock = threading.Lock()


def _report_once(key: str, message: str) -> None:
    with _reported_lock:
        if key in _reported:
            return
        _reported.add(key)
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class CacheKey(NamedTuple):
    kernel_type: str
    problem_size: tuple[int, ...]
    device: str


# ----------------------------------------------------------------------------------------------------
# Environment fingerprint (module-level functions so tests can substitute them)


def _library_version() -> str:
    from .. import __version__

    return __version__


@functools.lru_cache(maxsize=1)
def _triton_version() -> str:
    # importlib.metadata avoids importing triton (which would fix the interpreter mode too early)
    try:
        from importlib.metadata import version

        return version("triton")
    except Exception:  # no triton distribution: still a usable key
        return "none"


@functools.lru_cache(maxsize=16)
def _device_model(device: str) -> str:
    dev = device.split(":")[0]
    if dev != "cuda":
        return dev
    if not torch.cuda.is_available():
        return "cuda-unavailable"
    try:
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        return torch.cuda.get_device_name(index)
    except Exception:  # bad index: matches nothing real
        return "cuda-unknown"


def environment_fingerprint(device: str) -> dict[str, str]:
    """What an entry's validity depends on: library version, Triton version, device model."""
    return {"library": _library_version(), "triton": _triton_version(), "gpu": _device_model(device)}


# ----------------------------------------------------------------------------------------------------
# Key normalisation


def normalize_problem_size(problem_size: Any) -> tuple[int, ...]:
    """``problem_size`` as a tuple of non-negative ints (an int, a list/tuple or a torch.Size)."""
    if isinstance(problem_size, bool):
        raise InvalidArgumentError(f"problem_size must be an int or a tuple of ints, got {problem_size!r}")
    if isinstance(problem_size, int):
        problem_size = (problem_size,)
    try:
        items = tuple(problem_size)
    except TypeError:
        raise InvalidArgumentError(
            f"problem_size must be an int or a tuple of ints, got {type(problem_size).__name__}") from None
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int,)) and not (hasattr(v, "__index__")):
            raise InvalidArgumentError(f"problem_size must contain ints, got {problem_size!r}")
        iv = int(v.__index__())
        if iv < 0:
            raise InvalidArgumentError(f"problem_size must be non-negative, got {problem_size!r}")
        out.append(iv)
    return tuple(out)


def normalize_device(device: Any) -> str:
    """The canonical key string of a device, so that every spelling of one device finds the same entries.

    ``"cuda"``, ``torch.device("cuda")``, ``"cuda:0"`` and ``torch.device("cuda", 0)`` are one key
    (``"cuda:<index>"``; an index-less CUDA device means the current device, as for tensor placement,
    and device 0 where CUDA is absent); ``"cpu"`` and ``"cpu:0"`` are ``"cpu"``. Strings that are not
    torch device names are kept as given (stripped), so callers may key entries by a label of their own.
    """
    if isinstance(device, str):
        text = device.strip()
        if not text:
            raise InvalidArgumentError(f"device must be a non-empty string or torch.device, got {device!r}")
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError):
            return text
    elif isinstance(device, torch.device):
        dev = device
    else:
        raise InvalidArgumentError(f"device must be a non-empty string or torch.device, got {device!r}")
    if dev.type == "cpu":
        return "cpu"
    if dev.index is None:
        if dev.type != "cuda":
            return dev.type
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return f"cuda:{index}"
    return f"{dev.type}:{dev.index}"


def _check_kernel_type(kernel_type: Any) -> str:
    if not isinstance(kernel_type, str) or not kernel_type:
        raise InvalidArgumentError(f"kernel_type must be a non-empty string, got {kernel_type!r}")
    return kernel_type


def _jsonable(value: Any, what: str) -> Any:
    """A JSON-safe copy of a config value (numpy/torch scalars become Python numbers)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, what) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        try:
            return _jsonable(value.item(), what)
        except (TypeError, ValueError):
            pass
    raise InvalidArgumentError(f"{what} must hold JSON-serialisable values (numbers, strings, bools, lists); "
                               f"got {value!r} of type {type(value).__name__}")


def _file_name(kernel_type: str) -> str:
    return _FILE_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", kernel_type) + ".json"


def _storage_key(key: CacheKey, gpu: str) -> str:
    return f"{key.kernel_type}|{'x'.join(map(str, key.problem_size))}|{key.device}|{gpu}"


# ----------------------------------------------------------------------------------------------------
# Cross-process lock


class _FcntlLock:
    """Minimal exclusive file lock for systems without the ``filelock`` package."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path, self.timeout, self._fd = path, timeout, None

    def __enter__(self) -> _FcntlLock:
        import fcntl
        import time

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise TimeoutError(f"could not lock {self.path} within {self.timeout} s") from None
                time.sleep(0.005)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _file_lock(path: str, timeout: float = LOCK_TIMEOUT_S):
    try:
        from filelock import FileLock
    except ImportError:  # pragma: no cover - filelock is a declared dependency
        return _FcntlLock(path, timeout)
    return FileLock(path, timeout=timeout)


# ----------------------------------------------------------------------------------------------------


class ConfigCache:
    """Best configs found by the autotuner, keyed by ``(kernel_type, problem_size, device)``.

    ``cache_dir=None`` uses the directory in ``$TRITON_OPS_CACHE_DIR`` if that is set, otherwise the cache
    lives in memory only. All methods are thread-safe; with a directory, several processes may share it.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        if cache_dir is None:
            env = os.environ.get(CACHE_DIR_ENV, "").strip()
            cache_dir = env or None
        self.cache_dir: Path | None = Path(cache_dir).expanduser() if cache_dir is not None else None
        self._lock = threading.RLock()
        # key -> entry dict {"config", "metrics", "env", "time", "persisted"}
        self._mem: dict[tuple[CacheKey, str], dict[str, Any]] = {}
        self._stamp: dict[str, tuple[int, int, int] | None] = {}  # file -> (ino, size, mtime_ns) last read

    # ------------------------------------------------------------------ public API

    @property
    def persistent(self) -> bool:
        return self.cache_dir is not None

    def get(self, kernel_type: str, problem_size: Any, device: Any) -> dict[str, Any] | None:
        """The cached config, or None when there is none valid for the current environment."""
        entry = self.get_entry(kernel_type, problem_size, device)
        return dict(entry["config"]) if entry is not None else None

    def get_entry(self, kernel_type: str, problem_size: Any, device: Any) -> dict[str, Any] | None:
        """The full entry ``{"config", "metrics", "env", "time"}`` or None."""
        key = CacheKey(_check_kernel_type(kernel_type), normalize_problem_size(problem_size),
                       normalize_device(device))
        env = environment_fingerprint(key.device)
        with self._lock:
            self._refresh(key.kernel_type)
            entry = self._mem.get((key, env["gpu"]))
            if entry is None or entry["env"] != env:
                return None
            return {k: (dict(v) if isinstance(v, dict) else v) for k, v in entry.items() if k != "persisted"}

    def set(self, kernel_type: str, problem_size: Any, device: Any, config: Mapping[str, Any],
            metrics: KernelMetrics | Mapping[str, Any] | None = None) -> None:
        """Store ``config`` (a dict of JSON-serialisable values) for the key, replacing any previous one."""
        key = CacheKey(_check_kernel_type(kernel_type), normalize_problem_size(problem_size),
                       normalize_device(device))
        if not isinstance(config, Mapping):
            raise InvalidArgumentError(
                f"config must be a dict of parameter -> value, got {type(config).__name__}")
        cfg = {}
        for k, v in config.items():
            if not isinstance(k, str):
                raise InvalidArgumentError(f"config keys must be strings, got {k!r}")
            cfg[k] = _jsonable(v, f"config[{k!r}]")
        if isinstance(metrics, KernelMetrics):
            metrics = metrics.to_dict()
        met = {str(k): _jsonable(v, f"metrics[{k!r}]") for k, v in metrics.items()} if metrics else None
        env = environment_fingerprint(key.device)
        entry = {"config": cfg, "metrics": met, "env": env,
                 "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        with self._lock:
            self._mem[(key, env["gpu"])] = dict(entry, persisted=False)
            if self.cache_dir is not None:
                ok = self._write_through(key, env["gpu"], entry)
                if ok:
                    self._mem[(key, env["gpu"])]["persisted"] = True

    def clear(self, kernel_type: str | None = None) -> None:
        """Forget every entry (or those of one kernel type), in memory and on disk."""
        with self._lock:
            if kernel_type is None:
                self._mem.clear()
            else:
                for k in [k for k in self._mem if k[0].kernel_type == kernel_type]:
                    del self._mem[k]
            if self.cache_dir is None or not self.cache_dir.is_dir():
                return
            files = [self.cache_dir / _file_name(kernel_type)] if kernel_type else list(self._files())
            for path in files:
                try:
                    with _file_lock(str(path) + ".lock"), contextlib.suppress(FileNotFoundError):
                        path.unlink()
                except (OSError, TimeoutError) as exc:
                    _report_once(f"clear:{path}", f"triton_ops config cache: could not remove {path}: {exc}")
                self._stamp.pop(str(path), None)

    def get_all_keys(self) -> list[CacheKey]:
        """Every ``(kernel_type, problem_size, device)`` with an entry valid in the current environment."""
        return [k for k, _ in self.items()]

    def items(self) -> list[tuple[CacheKey, dict[str, Any]]]:
        """``(key, entry)`` pairs valid in the current environment, sorted by key."""
        with self._lock:
            if self.cache_dir is not None:
                for path in self._files():
                    self._refresh_path(path)
            out = []
            for (key, gpu), entry in self._mem.items():
                env = environment_fingerprint(key.device)
                if env["gpu"] == gpu and entry["env"] == env:
                    out.append((key, {k: v for k, v in entry.items() if k != "persisted"}))
            return sorted(out, key=lambda kv: (kv[0].kernel_type, kv[0].problem_size, kv[0].device))

    def __len__(self) -> int:
        return len(self.get_all_keys())

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 3:
            return False
        return self.get(*key) is not None

    def __repr__(self) -> str:
        where = str(self.cache_dir) if self.cache_dir is not None else "memory"
        return f"ConfigCache({where}, {len(self._mem)} entries)"

    # ------------------------------------------------------------------ disk

    def _files(self) -> Iterator[Path]:
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return iter(())
        return iter(sorted(self.cache_dir.glob(_FILE_PREFIX + "*.json")))

    def _refresh(self, kernel_type: str) -> None:
        if self.cache_dir is not None:
            self._refresh_path(self.cache_dir / _file_name(kernel_type))

    @staticmethod
    def _stat(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _refresh_path(self, path: Path) -> None:
        """Reload ``path`` if it changed since this instance last read it (another process wrote)."""
        stamp = self._stat(path)
        if stamp == self._stamp.get(str(path), "unread"):
            return
        entries = self._read(path, rebuild=True)
        self._stamp[str(path)] = self._stat(path)
        self._merge_from_disk(path, entries)

    def _merge_from_disk(self, path: Path, entries: dict[str, dict[str, Any]]) -> None:
        seen = set()
        for raw in entries.values():
            parsed = self._parse_entry(raw)
            if parsed is None:
                continue
            mkey, entry = parsed
            if mkey in seen and str(self._mem[mkey].get("time") or "") > str(entry.get("time") or ""):
                continue  # two spellings of one device in an older file: the newer entry wins
            seen.add(mkey)
            self._mem[mkey] = dict(entry, persisted=True)
        # entries this instance loaded from (or wrote to) this file that another process removed
        name = path.name
        for mkey in [k for k, e in self._mem.items() if e.get("persisted") and k not in seen
                     and _file_name(k[0].kernel_type) == name]:
            del self._mem[mkey]

    @staticmethod
    def _parse_entry(raw: Any) -> tuple[tuple[CacheKey, str], dict[str, Any]] | None:
        try:
            key = CacheKey(_check_kernel_type(raw["kernel_type"]),
                           normalize_problem_size(raw["problem_size"]), normalize_device(raw["device"]))
            env = raw["env"]
            if not isinstance(raw["config"], dict) or not isinstance(env, dict):
                return None
            env = {k: str(env.get(k)) for k in ("library", "triton", "gpu")}
            metrics = raw.get("metrics") if isinstance(raw.get("metrics"), dict) else None
            return (key, env["gpu"]), {"config": dict(raw["config"]), "metrics": metrics, "env": env,
                                       "time": raw.get("time")}
        except (KeyError, TypeError, InvalidArgumentError):
            return None

    def _read(self, path: Path, rebuild: bool) -> dict[str, dict[str, Any]]:
        """Entries of one file ({} when missing). A corrupt file is reported once and, with ``rebuild``,
        moved aside and rewritten from the entries this instance holds."""
        entries, corrupt = self._read_raw(path)
        if corrupt and rebuild:
            self._rebuild(path)
        return entries

    @staticmethod
    def _read_raw(path: Path) -> tuple[dict[str, dict[str, Any]], bool]:
        """``(entries, corrupt)``; a missing or unreadable file is empty, not corrupt."""
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return {}, False
        except OSError as exc:
            _report_once(f"read:{path}",
                         f"triton_ops config cache: cannot read {path}: {exc}; using memory only")
            return {}, False
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
                raise ValueError("not a triton_ops config cache file")
        except ValueError as exc:
            _report_once(f"corrupt:{path}",
                         f"triton_ops config cache: {path} is corrupt ({exc}); it is moved aside to "
                         f"{path.name}.corrupt and rebuilt")
            return {}, True
        if data.get("format") != FORMAT_VERSION:
            # another layout (older or newer library): its entries are not ours to interpret
            return {}, False
        return data["entries"], False

    def _mine(self, path: Path) -> dict[str, dict[str, Any]]:
        """This instance's entries that belong in ``path``, in file form."""
        return {_storage_key(k, gpu): self._to_raw(k, e) for (k, gpu), e in self._mem.items()
                if _file_name(k.kernel_type) == path.name}

    def _rebuild(self, path: Path) -> None:
        try:
            with _file_lock(str(path) + ".lock"):
                entries, corrupt = self._read_raw(path)
                if not corrupt:  # another process repaired or removed it meanwhile
                    return
                with contextlib.suppress(OSError):
                    os.replace(path, str(path) + ".corrupt")
                self._atomic_write(path, self._mine(path))
        except (OSError, TimeoutError) as exc:
            _report_once(f"rebuild:{path}", f"triton_ops config cache: could not rebuild {path}: {exc}")

    @staticmethod
    def _to_raw(key: CacheKey, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {"kernel_type": key.kernel_type, "problem_size": list(key.problem_size), "device": key.device,
                "config": entry["config"], "metrics": entry.get("metrics"), "env": entry["env"],
                "time": entry.get("time")}

    def _atomic_write(self, path: Path, entries: Mapping[str, Any]) -> None:
        data = {"format": FORMAT_VERSION, "entries": dict(sorted(entries.items()))}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True, allow_nan=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _write_through(self, key: CacheKey, gpu: str, entry: Mapping[str, Any]) -> bool:
        if self.cache_dir is None:
            return False
        path = self.cache_dir / _file_name(key.kernel_type)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with _file_lock(str(path) + ".lock"):
                entries, corrupt = self._read_raw(path)
                if corrupt:
                    # keep the bad file for inspection and rebuild from what this instance knows
                    with contextlib.suppress(OSError):
                        os.replace(path, str(path) + ".corrupt")
                    entries = self._mine(path)
                current = environment_fingerprint(key.device)
                merged: dict[str, Any] = {}
                for raw in entries.values():
                    parsed = self._parse_entry(raw)
                    if parsed is None:
                        continue
                    (k, entry_gpu), e = parsed
                    # drop entries from an older/newer library or Triton: they can never be valid again here
                    if (e["env"]["library"], e["env"]["triton"]) != (current["library"], current["triton"]):
                        continue
                    # re-keyed canonically: files written before device names were canonical ("cuda")
                    # merge into the "cuda:<index>" entry instead of standing beside it
                    skey = _storage_key(k, entry_gpu)
                    if skey in merged and str(merged[skey].get("time") or "") > str(e.get("time") or ""):
                        continue  # two spellings of one key: the newer entry wins
                    merged[skey] = self._to_raw(k, e)
                merged[_storage_key(key, gpu)] = self._to_raw(key, entry)
                self._atomic_write(path, merged)
                self._stamp[str(path)] = self._stat(path)
                self._merge_from_disk(path, merged)
            return True
        except (OSError, TimeoutError, ValueError) as exc:
            _report_once(f"write:{path}", f"triton_ops config cache: could not write {path}: {exc}; "
                                          "keeping tuned configs in memory only")
            return False


__all__ = ["ConfigCache", "CacheKey", "CACHE_DIR_ENV", "environment_fingerprint", "normalize_problem_size",
           "normalize_device"]
