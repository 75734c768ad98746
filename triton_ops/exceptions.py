"""Exception hierarchy.

Every error the library raises on bad input is a :class:`TritonOpsError` and *also* derives from the
builtin exception a Python user would catch for that kind of mistake, so ``except ValueError`` keeps
working in code that does not know this library.
"""

from __future__ import annotations


class TritonOpsError(Exception):
    """Base class of every error raised by triton_ops."""


class ShapeError(TritonOpsError, ValueError):
    """A tensor has the wrong number of dimensions or incompatible sizes."""


class DTypeError(TritonOpsError, TypeError):
    """A tensor has a dtype the op does not accept, or dtypes that must match do not."""


class DeviceError(TritonOpsError, RuntimeError):
    """Tensors are on the wrong device, on different devices, or no usable GPU/interpreter exists."""


class LayoutError(TritonOpsError, ValueError):
    """A tensor's strides are not supported (for example a non-contiguous last dimension)."""


class InvalidArgumentError(TritonOpsError, ValueError):
    """A scalar or option argument is out of range or not one of the accepted choices."""


class NumericalError(TritonOpsError, ValueError):
    """A value that must be finite (a quantization scale, eps ...) is NaN, infinite or non-positive."""


class UnsupportedError(TritonOpsError, NotImplementedError):
    """The request is valid but this device or build does not support it."""


class TuningFailedError(TritonOpsError, RuntimeError):
    """Every configuration the autotuner tried failed to compile, launch or verify."""


class CorrectnessError(TritonOpsError, RuntimeError):
    """A kernel's output disagrees with its reference beyond tolerance (the benchmark refuses to time it)."""


class CacheError(TritonOpsError, RuntimeError):
    """The configuration cache could not be read or written."""


__all__ = [
    "TritonOpsError",
    "ShapeError",
    "DTypeError",
    "DeviceError",
    "LayoutError",
    "InvalidArgumentError",
    "NumericalError",
    "UnsupportedError",
    "TuningFailedError",
    "CorrectnessError",
    "CacheError",
]
