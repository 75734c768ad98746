"""Input contracts shared by every op.

Each check raises a :mod:`triton_ops.exceptions` subclass whose message names the argument, what was
given and what is expected. Launchers call these before touching a kernel, so a bad call never turns
into a kernel fault or a silently wrong result.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from .exceptions import (
    DeviceError,
    DTypeError,
    InvalidArgumentError,
    LayoutError,
    NumericalError,
    ShapeError,
)
from .utils import interpreter_enabled

#: Floating dtypes the activation paths accept.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: FP8 storage formats.
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

_INTERPRETER_HINT = (
    "Triton kernels need a CUDA tensor. To run them on the CPU, set TRITON_INTERPRET=1 in the "
    "environment before importing triton_ops (Triton's interpreter; slow, for testing)."
)


def check_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_dtype(x: torch.Tensor, name: str, allowed: Iterable[torch.dtype]) -> None:
    allowed = tuple(allowed)
    if x.dtype not in allowed:
        # dict.fromkeys: one name per dtype, however often (or under however many aliases) it is listed
        names = ", ".join(dict.fromkeys(str(d).replace("torch.", "") for d in allowed))
        raise DTypeError(f"{name} has dtype {str(x.dtype).replace('torch.', '')}; expected one of: {names}")


def check_out_dtype(out_dtype, allowed: Iterable[torch.dtype], name: str = "out_dtype") -> None:
    """``out_dtype`` is one of ``allowed``: a string (``"bfloat16"``), a Python type or a number is refused
    here with the same :class:`InvalidArgumentError` as an unsupported dtype, never torch's TypeError from
    an allocation deep inside the op. Every op's ``out_dtype`` argument goes through it."""
    allowed = tuple(allowed)
    if not isinstance(out_dtype, torch.dtype) or out_dtype not in allowed:
        names = ", ".join(dict.fromkeys(str(d).replace("torch.", "") for d in allowed))
        hint = " (a torch.dtype, e.g. torch.bfloat16)" if not isinstance(out_dtype, torch.dtype) else ""
        raise InvalidArgumentError(f"{name}={out_dtype!r} is not supported; expected one of: {names}{hint}")


def check_same_dtype(tensors: dict[str, torch.Tensor]) -> None:
    items = [(n, t) for n, t in tensors.items() if t is not None]
    if not items:
        return
    n0, t0 = items[0]
    for n, t in items[1:]:
        if t.dtype != t0.dtype:
            raise DTypeError(f"{n} has dtype {t.dtype} but {n0} has dtype {t0.dtype}; they must match")


def check_ndim(x: torch.Tensor, name: str, ndim: int | Sequence[int] | None = None, min_ndim: int = 0) -> None:
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            raise ShapeError(f"{name} must have {' or '.join(map(str, allowed))} dims, got shape {tuple(x.shape)}")
    if x.dim() < min_ndim:
        raise ShapeError(f"{name} must have at least {min_ndim} dims, got shape {tuple(x.shape)}")


def check_same_device(tensors: dict[str, torch.Tensor | None]) -> torch.device:
    """All given tensors on one device; returns it."""
    items = [(n, t) for n, t in tensors.items() if t is not None]
    n0, t0 = items[0]
    for n, t in items[1:]:
        if t.device != t0.device:
            raise DeviceError(f"{n} is on {t.device} but {n0} is on {t0.device}; all inputs must share a device")
    return t0.device


def check_runnable_device(device: torch.device, name: str = "input") -> None:
    """The device can run Triton kernels: CUDA, or CPU with the interpreter on."""
    if device.type == "cuda":
        return
    interp = interpreter_enabled()
    if device.type == "cpu":
        if interp:
            return
        raise DeviceError(f"{name} is on cpu. {_INTERPRETER_HINT}")
    # the hint names only what would help: with the interpreter on, CPU tensors already work
    where = ("CUDA tensors, or CPU tensors (the Triton interpreter is on)" if interp else
             "CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before importing triton_ops")
    if device.type == "meta":
        raise DeviceError(f"{name} is a meta tensor: it has a shape but no data, so no kernel can run on it; "
                          f"pass {where}")
    raise DeviceError(f"{name} is on {device}, where Triton kernels cannot run; pass {where}")


def check_last_dim_contiguous(x: torch.Tensor, name: str) -> None:
    if x.dim() > 0 and x.shape[-1] > 1 and x.stride(-1) != 1:
        raise LayoutError(
            f"{name} must have a contiguous last dimension (stride 1), got strides {tuple(x.stride())}; "
            f"call {name}.contiguous() first"
        )


def check_choice(value: object, name: str, choices: Iterable[object]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise InvalidArgumentError(f"{name}={value!r} is not supported; expected one of {choices}")


def _number(value: object, name: str) -> float:
    """``value`` as a float: ints, floats and numeric scalars (numpy, one-element tensors). Strings are
    refused although float("1e-6") parses (an eager plan keyed on the string would hand it to a kernel on
    the next identical call), and so are bools."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise InvalidArgumentError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise InvalidArgumentError(f"{name} must be a number, got {_short_repr(value)}") from None


def check_positive_finite(value: float, name: str, allow_zero: bool = False) -> float:
    v = _number(value, name)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise NumericalError(f"{name} must be a finite {kind} number, got {value!r}")
    return v


def check_finite(value: float, name: str) -> float:
    v = _number(value, name)
    if not math.isfinite(v):
        raise NumericalError(f"{name} must be finite, got {value!r}")
    return v


def check_int(value: object, name: str, *, min_value: int | None = None, max_value: int | None = None,
              error: type[Exception] = InvalidArgumentError) -> int:
    """``value`` as a Python int. Accepts ints and integer numpy/torch scalars (a one-element integer
    tensor too; ``torch.SymInt`` is returned as is, so tracing keeps it symbolic); refuses bools, floats
    (``64.0`` included: a size that arrives as a float is a bug upstream), strings and None. ``error``
    is the exception class to raise (e.g. :class:`ShapeError` for sizes)."""
    if isinstance(value, torch.SymInt):
        v = value
    else:
        given = f"{type(value).__name__} {_short_repr(value)}"
        bool_tensor = isinstance(value, torch.Tensor) and value.dtype == torch.bool
        if isinstance(value, (bool, np.bool_)) or bool_tensor:
            raise error(f"{name} must be an int, got {given}")
        try:
            v = operator.index(value)  # ints and integer scalars only: floats, strings and None raise
        except (TypeError, RuntimeError):
            raise error(f"{name} must be an int, got {given}") from None
    if min_value is not None and v < min_value:
        raise error(f"{name} must be >= {min_value}, got {v}")
    if max_value is not None and v > max_value:
        raise error(f"{name} must be <= {max_value}, got {v}")
    return v


def _short_repr(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_is_tensor_or_none(x: object, name: str) -> torch.Tensor | None:
    """``x`` when it is a tensor or None (an optional tensor argument such as a bias or residual)."""
    if x is not None and not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"{name} must be a torch.Tensor or None, got {type(x).__name__}")
    return x


#: Most element offsets an overlap check enumerates (32 MB of int64); past it, it refuses rather than guess.
_MAX_ENUMERATED = 1 << 22


def _offsets(t: torch.Tensor) -> torch.Tensor:
    """Every element's offset from ``t.data_ptr()``, in elements (int64, one per element)."""
    offsets = torch.zeros(1, dtype=torch.int64)
    for sz, st in zip(t.shape, t.stride()):
        if sz > 1:
            offsets = (offsets[:, None] + torch.arange(sz, dtype=torch.int64) * st).flatten()
    return offsets


def _dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: a permutation of a contiguous layout, so it occupies its whole span."""
    expected = 1
    for st, sz in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz > 1):
        if st != expected:
            return False
        expected *= sz
    return True


def _strides_may_overlap(t: torch.Tensor) -> bool:
    """The stride test alone: False when sorted by stride every dim steps past all the smaller ones span
    (then no two elements share an address); True when it cannot tell."""
    reach = 0
    for st, sz in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz > 1):
        if st <= reach:
            return True
        reach += st * (sz - 1)
    return False


def _has_internal_overlap(t: torch.Tensor) -> bool:
    """Whether two elements of ``t`` share memory (an expanded / stride-0 dim, or an as_strided view).

    Layouts the stride test clears are decided without a call into torch (so tensor subclasses never
    reach its overlap query); under ``torch.compile`` tracing, where that query cannot run, the stride
    test alone decides, conservatively."""
    if t.numel() <= 1 or not _strides_may_overlap(t):
        return False
    if torch.compiler.is_compiling():
        return True
    status = torch._debug_has_internal_overlap(t)  # 0: no, 1: yes, 2: too hard for torch to tell
    if status != 2:
        return status == 1
    # torch gives up on non-dense layouts that the stride test could not clear either: count the offsets
    if t.numel() > _MAX_ENUMERATED:
        return True  # too large to enumerate: refuse rather than risk a racy write
    offsets = _offsets(t)
    return int(torch.unique(offsets).numel()) < offsets.numel()


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether some byte belongs to an element of both (their spans are known to intersect)."""
    if _dense(a) and _dense(b):
        return True  # each fills its span, so intersecting spans share bytes
    es_a, es_b = a.element_size(), b.element_size()
    delta = a.data_ptr() - b.data_ptr()
    if es_a == es_b and delta % es_a == 0:  # same element grid: compare element offsets
        if a.numel() + b.numel() > _MAX_ENUMERATED:
            return True
        return bool(torch.isin(_offsets(a) + delta // es_a, _offsets(b)).any())
    if a.numel() * es_a + b.numel() * es_b > _MAX_ENUMERATED:
        return True
    bytes_a = (_offsets(a)[:, None] * es_a + delta + torch.arange(es_a)).flatten()
    bytes_b = (_offsets(b)[:, None] * es_b + torch.arange(es_b)).flatten()
    return bool(torch.isin(bytes_a, bytes_b).any())


def _is_fake(t: torch.Tensor) -> bool:
    """A FakeTensor (FakeTensorMode, make_fx, torch.compile tracing): its data_ptr() is 0 for every tensor,
    so addresses say nothing about overlap; functionalization resolves aliasing for such graphs instead."""
    if type(t) in (torch.Tensor, torch.nn.Parameter):
        return False
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def _byte_extent(t: torch.Tensor) -> int:
    """Bytes from ``t``'s first element to one past its last (0 when empty)."""
    if t.numel() == 0:
        return 0
    return (sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1) * t.element_size()


def _byte_span(t: torch.Tensor) -> tuple[int, int] | None:
    """``[first, last + 1)`` byte addresses ``t`` can touch, or None (empty, or no real memory)."""
    if t.numel() == 0 or t.device.type == "meta" or _is_fake(t):
        return None
    try:
        start = t.data_ptr()
    except Exception:  # tensors under tracing may have no memory to compare
        return None
    return start, start + _byte_extent(t)


def _dense_block(t: torch.Tensor) -> tuple[int, list[int]]:
    """(bytes of t's innermost dense block, byte strides of the dims outside it). The block merges the
    smallest-stride dims while each steps exactly over the block so far: the heads and channels of a
    ``[b, s, h, d]`` slice of a fused QKV buffer form one block of ``h * d`` elements."""
    isz = t.element_size()
    width, lead = isz, []
    for st, n in sorted((st, n) for n, st in zip(t.shape, t.stride()) if n > 1):
        if not lead and st * isz == width:
            width *= n
        else:
            lead.append(st * isz)
    return width, lead


class Disjoint:
    """A test, fixed by two tensors' shapes, strides and dtypes, that they share no byte given their base
    addresses: built once per plan, it costs a few integer operations per call. Sound (True only when
    no byte is shared) but not complete: False means "cannot tell here", and the caller then takes the
    exact check (:func:`check_no_overlap`, :func:`check_writes`).

    Disjoint byte ranges are disjoint. Interleaved views (q and k as column slices of one fused QKV buffer,
    ``x`` and ``out`` as two halves of each row) are recognised too: when every leading stride of both
    tensors is a multiple of one row period ``P`` and both rows fit in it, the tensors are disjoint exactly
    when their row windows, taken modulo ``P``, are.
    """

    __slots__ = ("ext_a", "ext_b", "period", "wa", "wb")

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.ext_a, self.ext_b = _byte_extent(a), _byte_extent(b)
        self.wa, lead_a = _dense_block(a)
        self.wb, lead_b = _dense_block(b)
        lead = lead_a + lead_b
        period = min(lead) if lead else 0
        ok = period > 0 and all(x % period == 0 for x in lead) and max(self.wa, self.wb) <= period
        self.period = period if ok else 0

    def __call__(self, pa: int, pb: int) -> bool:
        if pa + self.ext_a <= pb or pb + self.ext_b <= pa or not self.ext_a or not self.ext_b:
            return True
        p = self.period
        if not p:
            return False
        d = (pb - pa) % p
        return d >= self.wa and (p - d) % p >= self.wb


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` are the same elements: same address, shape, strides and dtype."""
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype)


def _overlapping(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether some byte belongs to an element of both ``a`` and ``b`` (False for tensors on different
    devices, empty ones and ones without real memory). Disjoint spans and the views :class:`Disjoint`
    recognises are decided without enumerating; anything else by :func:`_shares_memory`."""
    if a.device != b.device:
        return False
    span_a, span_b = _byte_span(a), _byte_span(b)
    if span_a is None or span_b is None or span_a[1] <= span_b[0] or span_b[1] <= span_a[0]:
        return False
    if Disjoint(a, b)(span_a[0], span_b[0]):
        return False
    return _shares_memory(a, b)


def check_no_overlap(out: torch.Tensor | None, name: str, inputs: Mapping[str, torch.Tensor | None], *,
                     allow_exact_alias: bool = False) -> None:
    """Refuse an ``out=`` buffer the kernel could not write correctly, as torch does for its own ops:

    * ``out`` has internal overlap (several elements at one address: ``expand``, stride 0 ...);
    * ``out`` shares memory with an input: some byte belongs to an element of both (so two halves of
      one buffer, ``buf[:, :n]`` and ``buf[:, n:]``, are fine). With ``allow_exact_alias``, ``out`` may be
      exactly an input (same address, shape, strides and dtype), for ops that are safe in place.

    Views of one buffer are compared element by element only when their spans intersect, :class:`Disjoint`
    cannot tell them apart and one of them is not dense; past 4M elements such a pair is refused rather
    than enumerated.

    Under ``torch.compile`` tracing tensors have no addresses (the compiler's functionalization resolves
    aliasing of a mutating custom op) and torch's overlap query cannot be traced: only ``out``'s strides
    are checked, conservatively (each dim, sorted by stride, must step past everything the smaller ones span).
    """
    if out is None:
        return
    check_tensor(out, name)
    if torch.compiler.is_compiling():
        if _strides_may_overlap(out):
            raise InvalidArgumentError(
                f"{name} (shape {tuple(out.shape)}, strides {tuple(out.stride())}) may have elements that share "
                f"memory (an expanded or stride-0 dim), so writing it could race; pass a fresh buffer")
        return
    if _has_internal_overlap(out):
        raise InvalidArgumentError(
            f"{name} (shape {tuple(out.shape)}, strides {tuple(out.stride())}) has elements that share memory "
            f"(an expanded or stride-0 dim), so writing it would race; pass {name}={name}.clone() or a fresh "
            "buffer")
    for iname, t in inputs.items():
        if not isinstance(t, torch.Tensor) or not _overlapping(out, t):
            continue
        exact = same_view(out, t)
        if exact and allow_exact_alias:
            continue
        if exact:
            raise InvalidArgumentError(f"{name} is the same memory as {iname}; this op cannot write its output "
                                       f"in place: pass an {name} that shares no memory with the inputs")
        raise InvalidArgumentError(
            f"{name} (shape {tuple(out.shape)}, strides {tuple(out.stride())}) partially overlaps {iname} "
            f"(shape {tuple(t.shape)}, strides {tuple(t.stride())}) in memory; pass an {name} that shares no "
            "memory with the inputs")


def check_no_self_overlap(t: torch.Tensor, name: str) -> None:
    """A buffer a kernel writes must not map two indices to one address (an ``expand``-ed view, say):
    :class:`LayoutError` otherwise. The same test as :func:`check_no_overlap`'s first one, with the
    error of the row and rotary kernels' output checks."""
    if _has_internal_overlap(t):
        raise LayoutError(f"{name} has shape {tuple(t.shape)} and strides {tuple(t.stride())}, under which "
                          "several elements share one address; pass a buffer with distinct elements")


def check_writes(writes: Mapping[str, torch.Tensor | None], others: Mapping[str, torch.Tensor | None],
                 alias_ok: set[tuple[str, str]]) -> list[tuple[str, str, Disjoint]]:
    """Every buffer in ``writes`` (an op writing several outputs, or writing its inputs in place) has
    distinct elements (:func:`check_no_self_overlap`) and shares no memory with any other tensor of the
    call, or is exactly the same view of an input where ``(write, input)`` is in ``alias_ok`` (safe for
    the kernel: each element read before it is written). Raises :class:`InvalidArgumentError` on any other
    overlap. Overlap is decided as in :func:`check_no_overlap`.

    Returns the ``(write, other, Disjoint)`` tests the eager fast path repeats on later calls with the same
    signature and aliasing pattern (they depend on the addresses, which the plan key does not hold; see
    :func:`writes_apart`).
    """
    tests = []
    items = list(writes.items()) + list(others.items())
    # Traced by torch.compile: tensors have no addresses yet (the mutating custom op is functionalized, so
    # aliases are resolved by the compiler); only the layout of each write buffer can be checked.
    traced = torch.compiler.is_compiling()
    for i, (wn, w) in enumerate(writes.items()):
        if w is None or w.numel() == 0:
            continue
        check_no_self_overlap(w, wn)
        if traced or _byte_span(w) is None:
            continue
        for on, o in items[i + 1:]:  # the other writes after this one (each pair once), then the inputs
            if o is None or _byte_span(o) is None:
                continue
            test = Disjoint(w, o)
            # apart: kept as a test (when the quick test cannot tell for these addresses, a later call
            # fails it and is validated again here)
            if test(w.data_ptr(), o.data_ptr()) or not _overlapping(w, o):
                tests.append((wn, on, test))
                continue
            if same_view(w, o) and ((wn, on) in alias_ok or (on, wn) in alias_ok):
                continue
            allowed = sorted(b for a, b in alias_ok if a == wn)
            hint = f" (it may be exactly {' or '.join(allowed)}, for in-place use)" if allowed else ""
            raise InvalidArgumentError(
                f"{wn} (shape {tuple(w.shape)}, strides {tuple(w.stride())}) overlaps {on} (shape "
                f"{tuple(o.shape)}, strides {tuple(o.stride())}) in memory; pass a separate buffer{hint}")
    return tests


def writes_apart(tests: Sequence[tuple[int, int, Disjoint]], args: Sequence[torch.Tensor | None]) -> bool:
    """Whether the ``(index, index, Disjoint)`` tests of a validated call (:func:`check_writes`, names
    mapped to indices into ``args``) hold for these tensors' addresses; False sends the call to full
    validation."""
    for i, j, test in tests:  # noqa: SIM110 (a plain loop: this runs on every planned call)
        if not test(args[i].data_ptr(), args[j].data_ptr()):
            return False
    return True


def out_tests(out: torch.Tensor, args: Sequence[torch.Tensor | None]) -> tuple[tuple[int, Disjoint], ...]:
    """``(index in args, Disjoint)`` for each input a validated ``out`` (:func:`check_no_overlap`) is not
    exactly (exact aliases are fixed by the plan key's alias pattern): the tests :func:`out_apart` repeats
    on a plan hit."""
    return tuple((i, Disjoint(out, t)) for i, t in enumerate(args)
                 if t is not None and t.numel() and not same_view(out, t))


def out_apart(tests: Sequence, args: Sequence[torch.Tensor | None], out: torch.Tensor) -> bool:
    """Whether a planned ``out=`` still shares no memory with the call's inputs: ``tests`` holds
    ``(index into args, test)`` pairs built when the plan's first call was validated with
    :func:`check_no_overlap`; a test is a :class:`Disjoint` of ``(out, input)`` (a function of shapes,
    strides and dtypes, which the plan key fixes; ``ext_a`` / ``ext_b`` are the two byte extents).
    Disjoint byte ranges are decided here inline (~0.1 us an input, most of it ``data_ptr()``), anything
    else by the test; False sends the call to full validation."""
    po = out.data_ptr()
    for i, test in tests:
        t = args[i]
        if t is None:
            return False
        pt = t.data_ptr()
        if po + test.ext_a <= pt or pt + test.ext_b <= po:
            continue
        if not test(po, pt):
            return False
    return True


def check_device_available(device: object, name: str = "device") -> torch.device:
    """A device argument (``"cuda"``, ``"cuda:1"``, ``"cpu"`` or a torch.device) that exists here, as a
    torch.device: unknown names, other device types and CUDA without a GPU (or an index past the last
    GPU) raise :class:`DeviceError` before anything runs."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device.strip())
        except (RuntimeError, ValueError):
            raise DeviceError(f"{name}={device!r} is not a device name; expected 'cuda', 'cuda:<index>' or "
                              "'cpu'") from None
    else:
        raise InvalidArgumentError(f"{name} must be a device name or torch.device, got {type(device).__name__}")
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise DeviceError(f"{name}={device!r}: this library runs on CUDA devices or the CPU; expected 'cuda', "
                          "'cuda:<index>' or 'cpu'")
    if not torch.cuda.is_available():
        raise DeviceError(f"{name}={device!r} but no CUDA GPU is available here; use 'cpu' (kernels then "
                          "run in Triton's interpreter)")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise DeviceError(f"{name}={device!r} but this machine has {count} CUDA device(s) (cuda:0 to "
                          f"cuda:{count - 1})")
    return dev


def check_module_device(device: object, name: str = "device") -> object:
    """A module constructor's ``device=``, refused before any parameter is allocated when it cannot hold
    them here: CUDA without a GPU (or past the last one) and devices other than CUDA, CPU and meta (meta
    builds a module's shapes for deferred initialisation) raise :class:`DeviceError`. Returns ``device``
    unchanged (None, the default device, included)."""
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise InvalidArgumentError(f"{name} must be a device name, index or torch.device, got "
                                   f"{type(device).__name__}")
    try:
        # an index is a CUDA device, as torch's factories read it on a CUDA machine
        dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(
            device.strip() if isinstance(device, str) else device)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"{name}={device!r} is not a device; expected 'cuda', 'cuda:<index>', 'cpu' or "
                          "'meta'") from None
    if dev.type in ("cpu", "meta"):
        return device
    check_device_available(dev if isinstance(device, int) else device, name)
    return device


def check_float_dtype_or_none(dtype: object, name: str = "dtype") -> torch.dtype | None:
    """A module constructor's ``dtype=``: None (the default dtype) or one of :data:`FLOAT_DTYPES`."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{name}={dtype!r} is not supported; expected None, torch.float16, torch.bfloat16 or "
                         "torch.float32")
    return dtype


def check_out(out: torch.Tensor | None, name: str, shape: Sequence[int], dtype: torch.dtype,
              device: torch.device) -> None:
    """A user-provided output buffer matches what the op will write."""
    if out is None:
        return
    check_tensor(out, name)
    if tuple(out.shape) != tuple(shape):
        raise ShapeError(f"{name} has shape {tuple(out.shape)}, expected {tuple(shape)}")
    if out.dtype != dtype:
        raise DTypeError(f"{name} has dtype {out.dtype}, expected {dtype}")
    if out.device != device:
        raise DeviceError(f"{name} is on {out.device}, expected {device}")
    check_last_dim_contiguous(out, name)


def rows_view(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a 2-D ``[rows, last]`` view when the leading dims collapse; a copy otherwise.

    The last dim must already be contiguous. Collapsing never copies for the common cases (contiguous
    tensors, and row slices such as ``big[:, :, :4096]``).
    """
    last = x.shape[-1] if x.dim() else 1
    try:
        return x.view(-1, last)
    except RuntimeError:
        return x.reshape(-1, last)


def as_3d(t: torch.Tensor, name: str, writable: bool = False) -> torch.Tensor:
    """View ``[..., S, H]`` as ``[B, S, H]`` keeping strides; inputs whose leading dims do not collapse are
    copied, outputs raise. The last dim must be contiguous. Shared by the row kernels (RMSNorm,
    RMSNorm+RoPE and their backward passes)."""
    if t.dim() == 1:
        return t.view(1, 1, -1)
    if t.dim() == 2:
        return t.unsqueeze(0)
    try:
        return t.view(-1, t.shape[-2], t.shape[-1])
    except RuntimeError:
        if writable:
            raise LayoutError(f"{name} has shape {tuple(t.shape)} and strides {tuple(t.stride())}, whose leading "
                              "dims cannot be flattened without a copy; pass a contiguous buffer") from None
        return t.reshape(-1, t.shape[-2], t.shape[-1])


def direct_launch_ok(*tensors: torch.Tensor | None) -> bool:
    """True for a plain eager call that may launch its kernels directly instead of through the registered
    custom op: not traced by torch.compile, no tensor subclasses (FakeTensor, DTensor, ...) and no autograd
    graph to record. The custom-op dispatcher costs tens of microseconds of host time per call, more than
    small kernels take on the GPU; everything that needs it (compile, fake tensors, autograd) still gets it."""
    if torch.compiler.is_compiling():
        return False
    grad = torch.is_grad_enabled()
    return all(t is None or (type(t) is torch.Tensor and not (grad and t.requires_grad)) for t in tensors)
