"""Tuned-configuration cache: in memory always, JSON files on disk when a directory is given.

Keys are ``(kernel_type, problem_size, device)``. Each entry also records the environment it was tuned
in (library version, Triton version, GPU model); an entry whose environment differs from the current
one is invisible (a config tuned on an H100 says nothing about an H200, and a new Triton release can
change which config is fastest). Entries for several GPU models can live side by side in one file, so
a home directory shared by different machines keeps each machine's results.

On disk there is one file per kernel type, ``<cache_dir>/configs-<name>.json``, where ``<name>`` is the
kernel type with every character other than lowercase letters, digits, ``_``, ``.`` and ``-``
percent-escaped (``"attn/fp8"`` -> ``configs-attn%2Ffp8.json``), so two kernel types never share a
file, even on case-insensitive file systems. Writers take a file lock (``filelock``, or ``fcntl`` where
filelock is not installed), re-read the file, merge their entry and replace the file atomically (write
to a temporary file in the same directory, fsync, ``os.replace``), so concurrent threads and processes
never lose each other's entries and readers never see half a file.

A file that does not parse (truncated, edited by hand, another program's) is reported once, moved aside
to ``*.corrupt`` and rebuilt from the entries that could still be read from it plus every entry this
instance holds; an instance never forgets entries because a file it had read was damaged. The cache
never raises on a disk problem: it warns once and keeps working in memory.

Config values round-trip exactly: numbers, strings, bools, None, lists and tuples come back as what was
stored (JSON has no tuples, so a tuple is written as ``{"__tuple__": [...]}``). Non-finite floats are
refused when a config is stored (JSON cannot hold them, and no launch parameter is NaN).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import functools
import hashlib
import json
import logging
import math
import operator
import os
import re
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..exceptions import InvalidArgumentError, NumericalError
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
#: A file modified less than this long before it was read may change again without its (inode, size,
#: mtime) stamp changing (timestamps are coarse on some file systems, and a replaced file's inode number
#: can be reused at once), so its stamp is not trusted and the next access reads it again.
STAMP_TRUST_S = 2.0
#: Marker of an encoded tuple in a file (JSON has only lists).
_TUPLE_TAG = "__tuple__"

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
        # operator.index takes ints and integer numpy/torch scalars, and refuses floats, strings and None
        try:
            if isinstance(v, (bool, np.bool_)):
                raise TypeError
            iv = operator.index(v)
        except TypeError:
            raise InvalidArgumentError(f"problem_size must contain ints, got {problem_size!r}") from None
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


def _jsonable(value: Any, what: str, *, finite: bool) -> Any:
    """A JSON-safe copy of a config or metrics value (numpy/torch scalars become Python numbers; lists
    stay lists and tuples stay tuples). A non-finite float raises with ``finite`` (config values),
    becomes None without (metrics, where None means "not measured")."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        if finite:
            raise NumericalError(f"{what} must be a finite number, got {value!r} (JSON cannot store it, and "
                                 "no launch parameter is NaN or infinite)")
        return None
    if isinstance(value, (list, tuple)):
        items = [_jsonable(v, what, finite=finite) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        try:
            item = value.item()
        except (TypeError, ValueError, RuntimeError):
            item = value
        if item is not value and isinstance(item, (bool, int, float)):
            return _jsonable(item, what, finite=finite)
    raise InvalidArgumentError(f"{what} must hold JSON-serialisable values (numbers, strings, bools, None, "
                               f"lists, tuples); got {value!r} of type {type(value).__name__}")


def _encode(value: Any) -> Any:
    """File form of a config value: tuples tagged, so they read back as tuples."""
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    """Inverse of :func:`_encode`; raises ValueError for anything a stored config cannot hold (a
    hand-edited file: dicts, NaN ...)."""
    if isinstance(value, dict):
        if set(value) == {_TUPLE_TAG} and isinstance(value[_TUPLE_TAG], list):
            return tuple(_decode(v) for v in value[_TUPLE_TAG])
        raise ValueError(f"a config value cannot be an object: {value!r}")
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"a config value must be finite, got {value!r}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"not a config value: {value!r}")


#: Characters that stand for themselves in a file name. Everything else, uppercase letters included, is
#: percent-escaped: the mapping is then injective, also where the file system ignores case.
_SAFE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")
#: Longer escaped names are cut and completed with a hash, within every file system's 255-byte limit.
_MAX_NAME = 160


def _file_name(kernel_type: str) -> str:
    body = "".join(c if c in _SAFE_CHARS else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
                   for c in kernel_type)
    if len(body) > _MAX_NAME:
        digest = hashlib.sha256(kernel_type.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        body = body[:_MAX_NAME - 25] + "~" + digest  # "~" never appears in an unhashed name
    return _FILE_PREFIX + body + ".json"


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _storage_key(key: CacheKey, gpu: str) -> str:
    """The entry's key inside its file (unique per entry: "|" inside names is escaped)."""
    return (f"{_esc(key.kernel_type)}|{'x'.join(map(str, key.problem_size))}|{_esc(key.device)}|"
            f"{_esc(gpu)}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


# ----------------------------------------------------------------------------------------------------
# Reading damaged files

_WS = re.compile(r"[ \t\n\r]*")


def _partial_object(text: str, pos: int, dec: json.JSONDecoder, nested: frozenset[str], depth: int = 0
                    ) -> dict[str, Any]:
    """The members of the JSON object at ``text[pos]`` up to the first one that does not parse. A member
    named in ``nested`` whose value does not parse is itself read member by member."""
    out: dict[str, Any] = {}
    pos = _WS.match(text, pos).end()
    if text[pos:pos + 1] != "{" or depth > 2:
        return out
    pos += 1
    while True:
        pos = _WS.match(text, pos).end()
        try:
            key, pos = dec.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return out
        if not isinstance(key, str):
            return out
        pos = _WS.match(text, pos).end()
        if text[pos:pos + 1] != ":":
            return out
        pos = _WS.match(text, pos + 1).end()
        try:
            value, pos = dec.raw_decode(text, pos)
        except (ValueError, RecursionError):
            if key in nested:
                out[key] = _partial_object(text, pos, dec, frozenset(), depth + 1)
            return out
        out[key] = value
        pos = _WS.match(text, pos).end()
        if text[pos:pos + 1] != ",":
            return out
        pos += 1


@dataclass
class _Doc:
    """One cache file as read: raw entries plus its header (the file's lineage)."""

    entries: dict[str, Any] = field(default_factory=dict)
    #: random id given to a file when it is created (no file existed: first write, or after a clear); kept
    #: by rewrites and repairs. Another epoch than the one an instance read means the file was cleared
    #: and created afresh since.
    epoch: str | None = None
    #: random id of the file's last repair after damage (None: never repaired). Another one than the one an
    #: instance read means entries may have been lost since, not removed.
    repaired: str | None = None
    #: a repair could not read the damaged file's header: its epoch says nothing about earlier files
    unknown_lineage: bool = False
    corrupt: bool = False
    #: the file exists but could not be read (permissions ...): nothing is known about its entries
    unreadable: bool = False
    error: str = ""


def _header(top: Mapping[str, Any]) -> dict[str, Any]:
    text = lambda k: top.get(k) if isinstance(top.get(k), str) else None  # noqa: E731
    return {"epoch": text("epoch"), "repaired": text("repaired"),
            "unknown_lineage": top.get("unknown_lineage") is True}


def _read_doc(path: Path) -> _Doc:
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return _Doc()
    except OSError as exc:
        _report_once(f"read:{path}", f"triton_ops config cache: cannot read {path}: {exc}; using memory only")
        return _Doc(unreadable=True)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _damaged(data[:exc.start].decode("utf-8"), f"not UTF-8 at byte {exc.start}")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return _damaged(text, str(exc) or type(exc).__name__)
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), dict):
        return _Doc(corrupt=True, error="not a triton_ops config cache file")
    if doc.get("format") != FORMAT_VERSION:
        # another layout (older or newer library): its entries are not ours to interpret
        return _Doc()
    return _Doc(doc["entries"], **_header(doc))


def _damaged(text: str, error: str) -> _Doc:
    """What can be read of a file that does not parse: the entries up to the damage."""
    top = _partial_object(text, 0, json.JSONDecoder(), frozenset({"entries"}))
    entries = top.get("entries") if isinstance(top.get("entries"), dict) else {}
    if "format" in top and top["format"] != FORMAT_VERSION:
        entries = {}
    # the header comes first in the file, so it usually survives a truncation
    return _Doc(entries, **_header(top), corrupt=True, error=error)


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


class _FileState(NamedTuple):
    """What an instance last read of one file."""

    stamp: tuple[int, int, int] | None  # (inode, size, mtime_ns); None: the file did not exist
    trusted: bool  # the stamp identifies the content (the file was old enough when read)
    epoch: str | None
    repaired: str | None


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
        self._seen: dict[str, _FileState] = {}  # file -> what this instance last read of it

    # ------------------------------------------------------------------ public API

    @property
    def persistent(self) -> bool:
        return self.cache_dir is not None

    def get(self, kernel_type: str, problem_size: Any, device: Any) -> dict[str, Any] | None:
        """The cached config, or None when there is none valid for the current environment."""
        entry = self.get_entry(kernel_type, problem_size, device)
        return entry["config"] if entry is not None else None

    def get_entry(self, kernel_type: str, problem_size: Any, device: Any) -> dict[str, Any] | None:
        """The full entry ``{"config", "metrics", "env", "time"}`` (a copy) or None."""
        key = CacheKey(_check_kernel_type(kernel_type), normalize_problem_size(problem_size),
                       normalize_device(device))
        env = environment_fingerprint(key.device)
        with self._lock:
            self._refresh(key.kernel_type)
            entry = self._mem.get((key, env["gpu"]))
            if entry is None or entry["env"] != env:
                return None
            return _public(entry)

    def set(self, kernel_type: str, problem_size: Any, device: Any, config: Mapping[str, Any],
            metrics: KernelMetrics | Mapping[str, Any] | None = None) -> None:
        """Store ``config`` for the key, replacing any previous one.

        Config values may be numbers (finite), strings, bools, None, and lists or tuples of those; they
        read back exactly as given. Non-finite metrics are stored as None (not measured)."""
        key = CacheKey(_check_kernel_type(kernel_type), normalize_problem_size(problem_size),
                       normalize_device(device))
        if not isinstance(config, Mapping):
            raise InvalidArgumentError(
                f"config must be a dict of parameter -> value, got {type(config).__name__}")
        cfg = {}
        for k, v in config.items():
            if not isinstance(k, str):
                raise InvalidArgumentError(f"config keys must be strings, got {k!r}")
            cfg[k] = _jsonable(v, f"config[{k!r}]", finite=True)
        if isinstance(metrics, KernelMetrics):
            metrics = metrics.to_dict()
        if metrics is not None and not isinstance(metrics, Mapping):
            raise InvalidArgumentError(f"metrics must be a KernelMetrics or a dict, got {type(metrics).__name__}")
        met = ({str(k): _jsonable(v, f"metrics[{k!r}]", finite=False) for k, v in metrics.items()}
               if metrics else None)
        env = environment_fingerprint(key.device)
        entry = {"config": cfg, "metrics": met, "env": env, "time": _now()}
        with self._lock:
            self._mem[(key, env["gpu"])] = dict(entry, persisted=False)
            if self.cache_dir is not None:
                path = self.cache_dir / _file_name(key.kernel_type)
                if self._persist(path, {_storage_key(key, env["gpu"]): self._to_raw(key, entry)}):
                    self._mem[(key, env["gpu"])]["persisted"] = True

    def clear(self, kernel_type: str | None = None) -> None:
        """Forget every entry (or those of one kernel type), in memory and on disk."""
        if kernel_type is not None:
            _check_kernel_type(kernel_type)
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
                self._seen.pop(str(path), None)

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
                    out.append((key, _public(entry)))
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

    # ------------------------------------------------------------------ disk: reading

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

    @staticmethod
    def _trusted(stamp: tuple[int, int, int] | None) -> bool:
        return stamp is None or time.time_ns() - stamp[2] > STAMP_TRUST_S * 1e9

    def _refresh_path(self, path: Path) -> None:
        """Reload ``path`` if it may have changed since this instance last read it (another instance or
        process wrote, cleared or damaged it)."""
        state = self._seen.get(str(path))
        stamp = self._stat(path)
        if state is not None and state.stamp == stamp and state.trusted:
            return
        for _ in range(2):  # a damaged file is repaired, then the repaired file read
            stamp = self._stat(path)  # taken before reading: a change after it shows at the next refresh
            doc = _read_doc(path)
            if doc.unreadable:
                self._seen[str(path)] = _FileState(stamp, True, *self._known(state))
                return
            if not doc.corrupt:
                break
            self._report_damage(path, doc)
            # a damaged file says nothing about which entries were removed: keep all, add what it still has
            # (unless its header shows the file was cleared and created afresh since this instance read it)
            self._merge(path, doc.entries, prune=self._lineage(doc, state) == "cleared")
            if not self._repair(path):
                self._seen[str(path)] = _FileState(stamp, True, *self._known(state))
                return
        else:
            return
        if self._lineage(doc, state) == "lost":
            # repaired since this instance read it: entries it holds may have been lost with the damage;
            # keep them and write them back
            self._merge(path, doc.entries, prune=False)
            missing = self._mine(path, doc.entries)
            self._seen[str(path)] = _FileState(stamp, self._trusted(stamp), doc.epoch, doc.repaired)
            if missing:
                self._persist(path, missing)
            return
        self._merge(path, doc.entries, prune=True)
        self._seen[str(path)] = _FileState(stamp, self._trusted(stamp), doc.epoch, doc.repaired)

    @staticmethod
    def _known(state: _FileState | None) -> tuple[str | None, str | None]:
        return (state.epoch, state.repaired) if state is not None else (None, None)

    @staticmethod
    def _lineage(doc: _Doc, state: _FileState | None) -> str:
        """How ``doc`` relates to the file this instance last read (``state``):

        * "same": the same file, rewritten since (or nothing to compare): the file is authoritative;
        * "cleared": created afresh since (a clear): entries from before were removed;
        * "lost": repaired after damage since, or descended from a file whose header was lost: entries this
          instance holds may have been lost, not removed.
        """
        if state is None or state.epoch is None:
            return "same"
        if doc.epoch is None:  # a header that did not survive damage, or a file of an older library
            return "lost" if doc.corrupt else "same"
        if doc.epoch == state.epoch:
            return "same" if doc.repaired == state.repaired else "lost"
        return "lost" if doc.unknown_lineage else "cleared"

    def _merge(self, path: Path, entries: Mapping[str, Any], prune: bool) -> None:
        """Take a file's entries into memory. ``prune``: the file is complete, so entries this instance
        had from it (or wrote to it) and it no longer holds were removed (cleared, or pruned by a newer
        library) and are forgotten; without, newer in-memory entries are kept."""
        seen = set()
        bad = 0
        for raw in entries.values():
            parsed = self._parse_entry(raw)
            if parsed is None:
                bad += 1
                continue
            mkey, entry = parsed
            if _file_name(mkey[0].kernel_type) != path.name:
                continue  # another kernel type's entry, from a file written before names were injective
            mine = self._mem.get(mkey)
            if ((mkey in seen or (not prune and mine is not None))
                    and str(mine.get("time") or "") > str(entry.get("time") or "")):
                continue  # two spellings of one device in an older file, or a newer entry in memory
            seen.add(mkey)
            self._mem[mkey] = dict(entry, persisted=True)
        if bad:
            _report_once(f"bad:{path}", f"triton_ops config cache: {bad} entr{'y' if bad == 1 else 'ies'} of "
                                        f"{path} could not be read (edited by hand?) and are ignored")
        if prune:
            name = path.name
            for mkey in [k for k, e in self._mem.items() if e.get("persisted") and k not in seen
                         and _file_name(k[0].kernel_type) == name]:
                del self._mem[mkey]

    @staticmethod
    def _parse_entry(raw: Any) -> tuple[tuple[CacheKey, str], dict[str, Any]] | None:
        """A file entry in memory form, or None when it is not a well-formed entry."""
        try:
            key = CacheKey(_check_kernel_type(raw["kernel_type"]),
                           normalize_problem_size(raw["problem_size"]), normalize_device(raw["device"]))
            env = raw["env"]
            if not isinstance(raw["config"], dict) or not isinstance(env, dict):
                return None
            config = {str(k): _decode(v) for k, v in raw["config"].items()}
            env = {k: str(env.get(k)) for k in ("library", "triton", "gpu")}
            metrics = raw.get("metrics") if isinstance(raw.get("metrics"), dict) else None
            if metrics is not None:
                # a hand-edited latency that is not a number reads as "not measured"
                metrics = {str(k): (v if isinstance(v, (int, float)) and not isinstance(v, bool)
                                    and math.isfinite(v) else None) for k, v in metrics.items()}
            stamp = raw.get("time") if isinstance(raw.get("time"), str) else None
            return (key, env["gpu"]), {"config": config, "metrics": metrics, "env": env, "time": stamp}
        except (KeyError, TypeError, ValueError, RecursionError):  # InvalidArgumentError is a ValueError
            return None

    def _mine(self, path: Path, present: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """This instance's entries that belong in ``path``, in file form (those not in ``present``)."""
        out = {}
        for (k, gpu), e in self._mem.items():
            if _file_name(k.kernel_type) != path.name:
                continue
            skey = _storage_key(k, gpu)
            if present is None or skey not in present:
                out[skey] = self._to_raw(k, e)
        return out

    def _report_damage(self, path: Path, doc: _Doc) -> None:
        n = sum(self._parse_entry(raw) is not None for raw in doc.entries.values())
        _report_once(f"corrupt:{path}",
                     f"triton_ops config cache: {path} is corrupt ({doc.error}); {n} complete "
                     f"entr{'y' if n == 1 else 'ies'} recovered from it; the damaged file is kept as "
                     f"{path.name}.corrupt and the file rebuilt from the recovered entries and those this "
                     "process holds")

    # ------------------------------------------------------------------ disk: writing

    @staticmethod
    def _to_raw(key: CacheKey, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {"kernel_type": key.kernel_type, "problem_size": list(key.problem_size), "device": key.device,
                "config": {k: _encode(v) for k, v in entry["config"].items()}, "metrics": entry.get("metrics"),
                "env": entry["env"], "time": entry.get("time")}

    def _atomic_write(self, path: Path, entries: Mapping[str, Any], header: Mapping[str, Any]) -> None:
        # the header first, so that a truncated file still says what it is and where it comes from; the
        # lineage flag before the epoch, so that an epoch that survived damage is never misread without it
        data: dict[str, Any] = {"format": FORMAT_VERSION, "unknown_lineage": bool(header.get("unknown_lineage")),
                                "epoch": header["epoch"]}
        if header.get("repaired"):
            data["repaired"] = header["repaired"]
        data["entries"] = dict(sorted(entries.items()))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=str(path.parent))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, allow_nan=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @staticmethod
    def _merged(base: Mapping[str, Any], *, keep_newer_of: Mapping[str, Any] | None = None
                ) -> dict[str, dict[str, Any]]:
        """``base``'s well-formed entries of the current library and Triton, re-keyed canonically (files
        written before device names were canonical hold "cuda"; the newer of two spellings wins), then the
        entries of ``keep_newer_of`` where they are newer or missing."""
        merged: dict[str, dict[str, Any]] = {}
        for source, newer_only in ((base, False), (keep_newer_of or {}, True)):
            for raw in source.values():
                parsed = ConfigCache._parse_entry(raw)
                if parsed is None:
                    continue
                (k, entry_gpu), e = parsed
                current = environment_fingerprint(k.device)
                # entries from an older/newer library or Triton can never be valid again here
                if (e["env"]["library"], e["env"]["triton"]) != (current["library"], current["triton"]):
                    continue
                skey = _storage_key(k, entry_gpu)
                if skey in merged and str(merged[skey].get("time") or "") > str(e.get("time") or ""):
                    continue
                if newer_only and skey in merged and str(merged[skey].get("time") or "") == str(e.get("time") or ""):
                    continue
                merged[skey] = ConfigCache._to_raw(k, e)
        return merged

    def _repair(self, path: Path) -> bool:
        """Rebuild a damaged file from what it still holds and this instance's entries; False when it
        could not be written (then memory is all there is)."""
        try:
            with _file_lock(str(path) + ".lock"):
                doc = _read_doc(path)
                if not doc.corrupt:  # another process repaired or removed it meanwhile
                    return True
                with contextlib.suppress(OSError):
                    os.replace(path, str(path) + ".corrupt")
                merged = self._merged(doc.entries, keep_newer_of=self._mine(path))
                self._atomic_write(path, {k: v for k, v in merged.items()
                                          if _file_name(v["kernel_type"]) == path.name}, _repaired_header(doc))
            return True
        except (OSError, TimeoutError, ValueError) as exc:
            _report_once(f"rebuild:{path}", f"triton_ops config cache: could not rebuild {path}: {exc}; "
                                            "keeping tuned configs in memory only")
            return False

    def _persist(self, path: Path, new: Mapping[str, dict[str, Any]]) -> bool:
        """Merge ``new`` (file-form entries; they replace entries of the same key) into ``path``."""
        if self.cache_dir is None:
            return False
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with _file_lock(str(path) + ".lock"):
                stamp = self._stat(path)
                doc = _read_doc(path)
                if doc.unreadable:
                    raise OSError(f"cannot read {path}")
                state = self._seen.get(str(path))
                header = {"epoch": doc.epoch or uuid.uuid4().hex, "repaired": doc.repaired,
                          "unknown_lineage": doc.unknown_lineage}
                base: Mapping[str, Any] = doc.entries
                if doc.corrupt:
                    self._report_damage(path, doc)
                    self._merge(path, doc.entries, prune=self._lineage(doc, state) == "cleared")
                    # keep the bad file for inspection; rebuild from what it still has and what we know
                    with contextlib.suppress(OSError):
                        os.replace(path, str(path) + ".corrupt")
                    base = self._merged(doc.entries, keep_newer_of=self._mine(path))
                    header = _repaired_header(doc)
                elif stamp is None:
                    header = {"epoch": uuid.uuid4().hex, "repaired": None, "unknown_lineage": False}  # new file
                elif self._lineage(doc, state) == "lost":
                    # repaired by someone else after damage: add back what this instance holds
                    base = self._merged(doc.entries, keep_newer_of=self._mine(path))
                merged = self._merged(base)
                merged = {k: v for k, v in merged.items() if _file_name(v["kernel_type"]) == path.name}
                merged.update(new)
                self._atomic_write(path, merged, header)
                stamp = self._stat(path)
                self._merge(path, merged, prune=True)
                self._seen[str(path)] = _FileState(stamp, self._trusted(stamp), header["epoch"], header["repaired"])
            return True
        except (OSError, TimeoutError, ValueError) as exc:
            _report_once(f"write:{path}", f"triton_ops config cache: could not write {path}: {exc}; "
                                          "keeping tuned configs in memory only")
            return False


def _repaired_header(doc: _Doc) -> dict[str, Any]:
    """Header of the file rebuilt from damaged ``doc``: its lineage when its header survived, else an
    unknown one."""
    if doc.epoch is not None:
        return {"epoch": doc.epoch, "repaired": uuid.uuid4().hex, "unknown_lineage": doc.unknown_lineage}
    return {"epoch": uuid.uuid4().hex, "repaired": uuid.uuid4().hex, "unknown_lineage": True}


def _public(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A caller's copy of an entry (nested lists included, so callers cannot change the cache)."""
    return {k: copy.deepcopy(v) for k, v in entry.items() if k != "persisted"}


__all__ = ["ConfigCache", "CacheKey", "CACHE_DIR_ENV", "environment_fingerprint", "normalize_problem_size",
           "normalize_device", "STAMP_TRUST_S"]
