"""Small shared helpers: interpreter mode, architecture detection, integer maths."""

from __future__ import annotations

import functools
import os

import torch


def interpreter_enabled() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``).

    Triton reads the variable when ``@triton.jit`` decorates a kernel, so it must be set before
    ``triton_ops`` is imported.
    """
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def cdiv(a: int, b: int) -> int:
    """Ceiling division for non-negative integers."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def prev_power_of_2(n: int) -> int:
    """Largest power of two <= n (1 for n <= 1)."""
    return 1 << (max(1, n).bit_length() - 1)


def last_dim_contiguous(t):
    """``t``, or a contiguous copy when its last dim is strided (an incoming gradient: ``y.sum()`` hands
    back expanded ones)."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


@functools.lru_cache(maxsize=16)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def device_capability(device: torch.device | str | None = None) -> tuple[int, int] | None:
    """Compute capability ``(major, minor)`` of a CUDA device, or None for CPU / no GPU."""
    if device is None:
        if not torch.cuda.is_available():
            return None
        device = torch.device("cuda", torch.cuda.current_device())
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability(index)


def device_name(device: torch.device | str | None = None) -> str:
    """Human name of the device ('NVIDIA H200', 'cpu (Triton interpreter)', 'cpu')."""
    cap = device_capability(device)
    if cap is None:
        return "cpu (Triton interpreter)" if interpreter_enabled() else "cpu"
    dev = torch.device(device) if device is not None else torch.device("cuda")
    return torch.cuda.get_device_name(dev)


def has_fp8_tensor_cores(device: torch.device | str | None = None) -> bool:
    """FP8 MMA exists from sm_89 (Ada) on; Hopper (sm_90) adds wgmma."""
    cap = device_capability(device)
    return cap is not None and cap >= (8, 9)


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device | str | None = None) -> int:
    """Multiprocessor count (132 on H100/H200 SXM); a nominal 4 on the CPU interpreter.

    Cached per device, like the capability: launchers call it on every call, and querying the device
    properties costs microseconds of host time, which shows at decode sizes.
    """
    if device_capability(device) is None:
        return 4
    dev = torch.device(device) if device is not None else torch.device("cuda")
    return _sm_count(dev.index if dev.index is not None else torch.cuda.current_device())


def device_arch(device: torch.device | str | None = None) -> int | None:
    """Compute capability as one int (80, 89, 90 ...), or None for CPU / no GPU."""
    cap = device_capability(device)
    return None if cap is None else cap[0] * 10 + cap[1]



#: Reinterpretation dtypes that keep a tensor's bits through ``Module.to(dtype)`` / ``.half()``: those only
#: convert floating tensors, and integer views of the same width are left alone.
_BIT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class KeepBufferDtypes:
    """Mixin for ``nn.Module``s whose buffers named in ``_keep_dtype_buffers`` must keep their dtype.

    FP8 weights and their fp32 scales have to survive ``model.half()`` or ``model.to(torch.bfloat16)``, which
    convert every floating buffer; device moves (``.cuda()``, ``.to("cuda")``) still apply to them.
    """

    _keep_dtype_buffers: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        keep = {n: self._buffers.pop(n) for n in self._keep_dtype_buffers if self._buffers.get(n) is not None}
        super()._apply(fn, recurse)
        for name, t in keep.items():
            self._buffers[name] = fn(t.view(_BIT_VIEW[t.element_size()])).view(t.dtype)
        return self
