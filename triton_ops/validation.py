"""Input contracts shared by every op.

Each check raises a :mod:`triton_ops.exceptions` subclass whose message names the argument, what was
given and what is expected. Launchers call these before touching a kernel, so a bad call never turns
into a kernel fault or a silently wrong result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

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
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise DTypeError(f"{name} has dtype {str(x.dtype).replace('torch.', '')}; expected one of: {names}")


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
    if device.type == "cpu" and interpreter_enabled():
        return
    raise DeviceError(f"{name} is on {device}. {_INTERPRETER_HINT}")


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


def check_positive_finite(value: float, name: str, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise NumericalError(f"{name} must be a finite {kind} number, got {value!r}")
    return v


def check_finite(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise NumericalError(f"{name} must be finite, got {value!r}")
    return v


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


def direct_launch_ok(*tensors: torch.Tensor | None) -> bool:
    """True for a plain eager call that may launch its kernels directly instead of through the registered
    custom op: not traced by torch.compile, no tensor subclasses (FakeTensor, DTensor, ...) and no autograd
    graph to record. The custom-op dispatcher costs tens of microseconds of host time per call, more than
    small kernels take on the GPU; everything that needs it (compile, fake tensors, autograd) still gets it."""
    if torch.compiler.is_compiling():
        return False
    grad = torch.is_grad_enabled()
    return all(t is None or (type(t) is torch.Tensor and not (grad and t.requires_grad)) for t in tensors)
