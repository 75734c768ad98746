"""Tensors derived from an FP8 op's inputs, kept while the input is unchanged.

``fp8_gemm(a, b)`` with a weight ``b`` passed again and again quantizes (or, for an FP8 ``[K, N]``
row-major ``b`` on the native FP8 path, transposes) the same bytes on every call. :data:`operand_cache`
keeps the derived copy and hands it back while ``b`` is provably unchanged; :data:`valid_scales` remembers
which scale tensors are known to hold finite positive values, so ``check_scales`` costs a device sync once
per scale tensor version instead of once per call.

An entry is keyed on the tensor's *anchor* (the tensor itself, or its view base: ``w.t()`` and ``w`` share
one anchor, so a fresh ``w.t()`` view per call still hits) and on what identifies its contents:
``data_ptr``, the storage version counter ``_version`` (bumped by every in-place write through the tensor
or any of its views), shape, strides, dtype and device. The anchor is held by a weak reference: while it
is alive its storage cannot be freed and handed to another tensor, and when it dies its entries go with it.
Not seen: writes that bypass the version counter -- through ``t.data`` (a separate counter), DLPack, or a
kernel that writes through a raw pointer without bumping it (a custom Triton/CUDA kernel given ``b`` as an
output buffer; ``torch.autograd.graph.increment_version(b)`` after such a write makes it visible). Where
that can happen, switch the cache off (``TRITON_OPS_FP8_CACHE_MB=0`` or ``set_operand_cache_limit(0)``) or
call :func:`clear`. Inference tensors (created under ``torch.inference_mode``) have no version counter and
are never cached.

Not used while a CUDA graph is being captured: a hit would freeze the copy into the graph, and replays
after an in-place update of ``b`` (invisible to the graph) would use stale bytes; captured calls recompute.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import torch

#: Default byte budget of the operand cache: FP8 copies of float weights (half or a quarter of their bytes)
#: and K-major copies of FP8 weights. Beyond it the least recently used entries are dropped (a miss then
#: costs what an uncached call costs, never a wrong result). ``TRITON_OPS_FP8_CACHE_MB`` overrides it; 0
#: switches the cache off.
DEFAULT_MAX_BYTES = int(float(os.environ.get("TRITON_OPS_FP8_CACHE_MB", "4096")) * 2**20)


def _anchor(t: torch.Tensor) -> torch.Tensor:
    base = t._base
    return t if base is None else base


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensor: no version counter
        return None


def _key(anchor: torch.Tensor, t: torch.Tensor, tag: Hashable) -> tuple:
    """One entry per anchor, tag and view geometry (``w.t()`` and ``w[:, :64].t()`` do not evict each
    other); the version is checked on lookup and a newer one replaces the entry."""
    return (id(anchor), tag, t.data_ptr(), t.shape, t.stride(), t.dtype, t.device)


_HAS_CUDA = torch.cuda.is_available()


def capturing() -> bool:
    """True while the current stream is capturing a CUDA graph (0.3 us; False without CUDA)."""
    return _HAS_CUDA and torch.cuda.is_current_stream_capturing()


class DerivedCache:
    """LRU map ``(tensor, tag) -> value`` valid while the tensor is unchanged (see the module doc)."""

    def __init__(self, name: str, max_bytes: int) -> None:
        self.name = name
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.RLock()
        # _key(...) -> (weakref(anchor), version, value, nbytes)
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()
        self._refs: dict[int, weakref.ref] = {}

    def get(self, t: torch.Tensor, tag: Hashable) -> Any:
        anchor = _anchor(t)
        k = _key(anchor, t, tag)
        e = self._entries.get(k)
        if e is None or e[0]() is not anchor or e[1] != _version(t):
            self.misses += 1
            return None
        self.hits += 1
        try:
            self._entries.move_to_end(k)
        except KeyError:  # dropped by another thread meanwhile; the value is still valid for this call
            pass
        return e[2]

    def put(self, t: torch.Tensor, tag: Hashable, value: Any, nbytes: int = 0) -> Any:
        """Store ``value`` for ``t`` (returns ``value``); no-op when ``t`` cannot be tracked or the value
        alone exceeds the budget."""
        version = _version(t)
        if version is None or nbytes > self.max_bytes:
            return value
        anchor = _anchor(t)
        aid = id(anchor)
        k = _key(anchor, t, tag)
        with self._lock:
            ref = self._refs.get(aid)
            if ref is None or ref() is not anchor:
                ref = weakref.ref(anchor, self._make_callback(aid))
                self._refs[aid] = ref
            old = self._entries.pop(k, None)
            if old is not None:
                self.bytes -= old[3]
            self._entries[k] = (ref, version, value, nbytes)
            self.bytes += nbytes
            while self.bytes > self.max_bytes and self._entries:
                _, ev = self._entries.popitem(last=False)
                self.bytes -= ev[3]
        return value

    def _make_callback(self, aid: int):
        self_ref = weakref.ref(self)

        def dead(ref):
            cache = self_ref()
            if cache is not None:
                cache._drop_anchor(aid, ref)
        return dead

    def _drop_anchor(self, aid: int, ref) -> None:
        with self._lock:
            if self._refs.get(aid) is ref:
                del self._refs[aid]
            for k in [k for k, e in self._entries.items() if k[0] == aid and e[0] is ref]:
                self.bytes -= self._entries.pop(k)[3]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._refs.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)


#: K-major / FP8 copies of GEMM operands (``fp8_gemm``'s ``b``).
operand_cache = DerivedCache("fp8_operands", DEFAULT_MAX_BYTES)
#: Scale tensors known to hold finite positive values: produced by ``quantize_fp8``'s dynamic scaling, or
#: checked once on the host. Values are ``True``; entries cost no device memory.
valid_scales = DerivedCache("fp8_valid_scales", 2**62)


def set_operand_cache_limit(max_bytes: int) -> None:
    """Byte budget of the operand cache (0: keep nothing)."""
    with operand_cache._lock:
        operand_cache.max_bytes = int(max_bytes)
        while operand_cache.bytes > operand_cache.max_bytes and operand_cache._entries:
            _, ev = operand_cache._entries.popitem(last=False)
            operand_cache.bytes -= ev[3]


def clear() -> None:
    """Drop every cached operand copy and every remembered scale check."""
    operand_cache.clear()
    valid_scales.clear()


__all__ = ["DerivedCache", "operand_cache", "valid_scales", "set_operand_cache_limit", "clear", "capturing"]
