"""Launch plans: the host side of an eager call, done once per input signature.

A decode-sized kernel runs in 2-50 us on the GPU, so the Python around it has to cost less than that or the
library makes models slower. Measured on the H200 machine's CPU before plans existed: ``torch.add`` 6.5-12 us
of host time per call, an empty Triton kernel launched through ``kernel[grid](...)`` 19 us, our ops 44-270 us
(validation, table normalisation, config choice, Triton's argument binding, and the custom-op dispatcher for
every ``nn.Parameter``).

The mechanism, shared by every op:

* :func:`plan_key` turns a call's tensors into a hashable signature (shape, strides, dtype, device,
  16-byte alignment of the base address, which Triton specialises on) -- or None when the call must go
  through the registered custom op instead: under ``torch.compile`` tracing, for tensor subclasses other
  than ``nn.Parameter`` (FakeTensor, DTensor, ...) and when autograd has to record the op.
* A :class:`PlanCache` per op maps ``(plan_key(...), scalars and flags...)`` to a plan: whatever the op
  derived from a fully validated first call (normalised tables, the config, grid, output shapes). A
  repeated call with the identical signature is a dictionary hit and a launch; any other call is
  validated in full, so errors stay exact.
* :class:`KernelLaunch` launches one kernel with a fixed config through the compiled kernel's own
  handle (``CompiledKernel.run``), skipping Triton's per-call argument binding and cache-key hashing.

Plans never hold tensors (so they keep no memory alive); they are dropped when tuned configs are switched
on or off (:func:`clear_plans`) because a plan bakes in the config it chose.

Rules for a plan's kernels: every integer argument must be a function of the plan key (shapes, strides,
flags) -- Triton specialises integers (``== 1``, divisibility by 16) and pointers (16-byte alignment) at
compile time, and a compiled handle is only reused where that specialisation is fixed by the key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from .exceptions import UnsupportedError
from .utils import interpreter_enabled

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
_is_compiling = torch.compiler.is_compiling
_grad_enabled = torch.is_grad_enabled
#: torch.func transforms keep the custom ops (their backward there runs with grad mode on and needs the
#: backward custom op's own dispatch, so nothing would be saved)
_functorch_active = torch._C._are_functorch_transforms_active


def plan_key(*tensors: torch.Tensor | None) -> tuple | None:
    """The signature of a call's tensors, or None when it must not take the eager fast path.

    None: being traced by ``torch.compile``; a tensor subclass other than ``nn.Parameter``; or grad mode
    is on and some input requires grad (the custom op records the autograd node). Everything else --
    plain tensors and ``nn.Parameter`` weights alike -- gets a key. Costs ~0.3 us per tensor.
    """
    if _is_compiling():
        return None
    grad = _grad_enabled()
    key = []
    for t in tensors:
        if t is None:
            key.append(None)
            continue
        if type(t) not in _PLAIN_TYPES or (grad and t.requires_grad):
            return None
        # t.device, not t.get_device(): that is -1 for a CPU and a meta tensor alike, so a meta weight found
        # the plan of a CPU one and reached the kernel (+13 ns a tensor)
        key.append((t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0))
    return tuple(key)


def eager_autograd(*tensors: torch.Tensor | None) -> bool:
    """Whether a call can record its autograd node with :class:`EagerAutograd` instead of going through its
    registered custom op: grad mode on, some input requiring grad, not traced by ``torch.compile``, every
    tensor plain (or an ``nn.Parameter``), no torch.func transform active. Tracing, tensor subclasses
    (FakeTensor, DTensor) and torch.func keep the custom op."""
    if _is_compiling() or not _grad_enabled() or _functorch_active():
        return False
    wants = False
    for t in tensors:
        if t is None:
            continue
        if type(t) not in _PLAIN_TYPES:
            return False
        wants = wants or t.requires_grad
    return wants


def autograd_key(*tensors: torch.Tensor | None) -> tuple:
    """Signature of an eager training call's tensors (after :func:`eager_autograd` said yes): a repeated
    one may replay what its checks resolved into :class:`EagerAutograd`. ``t.device``, not
    ``get_device()``: a meta tensor must not find a CPU call's entry."""
    return tuple(None if t is None else (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0)
                 for t in tensors)


def eager_backward(*tensors: torch.Tensor | None) -> bool:
    """Whether a backward formula may call its kernel's implementation directly instead of its custom op:
    not traced (torch.compile, FakeTensor and other subclasses keep the custom op) and grad mode off (a
    double backward, ``create_graph=True``, keeps the custom op, which then says it has no derivative
    instead of returning a silently constant one)."""
    return not _is_compiling() and not _grad_enabled() and all(t is None or type(t) in _PLAIN_TYPES
                                                                 for t in tensors)


class EagerAutograd(torch.autograd.Function):
    """An op's autograd in eager mode without the custom-op layers above its implementation.

    ``EagerAutograd.apply(impl, setup_context, backward, *inputs)`` runs ``impl(*inputs)`` (the custom
    op's own implementation, launch plans included), then the op's ``setup_context(ctx, inputs, output)``
    and, for the gradients, its ``backward(ctx, *grads)``: the functions registered with
    ``register_autograd``, so both paths compute the same thing. Through the custom op a training step
    of fused_rmsnorm_rope paid the dispatcher, torch.library's autograd wrapper and two redispatches on
    the forward and again on the backward's custom op (~115 us of host time per forward + backward at
    small sizes on a desktop CPU, ~600 us on the H200 machine's host against ~190 us of GPU work).
    """

    # forward(ctx, ...), not the forward / setup_context split: the split goes through autograd.Function's
    # functorch-aware apply, measured 87 against 63 us per RMSNorm+RoPE forward + backward (CPU host);
    # torch.func transforms take the custom ops instead (eager_autograd)
    @staticmethod
    def forward(ctx, impl, setup_context, backward, *inputs):
        out = impl(*inputs)
        setup_context(ctx, inputs, out)
        ctx.op_backward = backward
        return out

    @staticmethod
    def backward(ctx, *grads):
        return (None, None, None, *ctx.op_backward(ctx, *grads))


def tensor_key(*tensors: torch.Tensor | None) -> tuple:
    """The signature of real tensors, for plans made inside a registered custom op's implementation.

    There the dispatcher has already dealt with tracing and autograd (the implementation runs below
    them, on real tensors), so unlike :func:`plan_key` nothing is refused: under ``torch.compile`` and
    in training every call of an op goes through its custom op, and without a plan each one would be
    validated, configured and bound by Triton again (~50-100 us of host time per call).
    """
    return tuple(None if t is None else (t.shape, t.stride(), t.dtype, t.get_device(), t.data_ptr() % 16 == 0)
                 for t in tensors)


class PlanCache:
    """A bounded dict of plans for one op. Keys must be hashable; an unhashable key (a scalar argument
    of a strange type) is a miss, so the call takes the validated path and raises there if it is wrong."""

    #: Distinct signatures kept per op before the cache starts over (a serving engine sees one signature
    #: per batch size and sequence bucket; thousands would mean shapes that never repeat).
    MAX_PLANS = 2048

    def __init__(self, name: str) -> None:
        self.name = name
        self._plans: dict[Hashable, Any] = {}
        with _registry_lock:
            _registry.append(self)

    def get(self, key: Hashable) -> Any:
        try:
            return self._plans.get(key)
        except TypeError:  # unhashable scalar in the key
            return None

    def put(self, key: Hashable, plan: Any) -> Any:
        try:
            hash(key)
        except TypeError:
            return plan
        if len(self._plans) >= self.MAX_PLANS:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def clear(self) -> None:
        self._plans.clear()

    def __len__(self) -> int:
        return len(self._plans)


_registry_lock = threading.Lock()
_registry: list[PlanCache] = []


def clear_plans() -> None:
    """Drop every op's plans (the next call of each signature is validated and planned again)."""
    with _registry_lock:
        caches = list(_registry)
    for c in caches:
        c.clear()


def plan_counts() -> dict[str, int]:
    """Number of cached plans per op (for tests and ``triton-ops bench host``)."""
    with _registry_lock:
        return {c.name: len(c) for c in _registry}


# ----------------------------------------------------------------------------------------------------
# Launching one kernel with a fixed config
# ----------------------------------------------------------------------------------------------------
_skip_launches = False


@contextmanager
def host_only():
    """Within this block :class:`KernelLaunch` does everything but the launch itself: used by
    ``triton-ops bench host`` on a machine without a GPU to measure the Python-side cost of a call (the
    interpreter's kernel time would drown it)."""
    global _skip_launches
    prev, _skip_launches = _skip_launches, True
    try:
        yield
    finally:
        _skip_launches = prev


def _explain_interpreter_failure(exc: Exception) -> None:
    """Turn the interpreter's numpy failure into an error that says what to install.

    Triton 3.6's interpreter turns one-element arrays into Python ints for loop bounds known only at run
    time (``tl.range(pid, n, step)``); numpy >= 2.3 refuses that conversion, so the persistent GEMM kernels
    fail with an opaque ``TypeError('only 0-dimensional arrays ...')``. The package pins numpy < 2.3;
    this names the cause where another numpy was installed anyway.
    """
    if type(exc).__name__ == "InterpreterError" and "only 0-dimensional arrays" in str(exc):
        import numpy as np

        raise UnsupportedError(
            f"Triton's interpreter (TRITON_INTERPRET=1) cannot run this kernel with numpy {np.__version__}: "
            "it needs numpy < 2.3 (pip install 'numpy<2.3')") from exc


class KernelLaunch:
    """One kernel with a fixed grid, constexprs and launch options.

    ``launch(*args)`` takes the kernel's runtime arguments in declaration order (constexprs excluded; they
    must come after every runtime argument). The first call goes through ``kernel[grid](...)``, which
    compiles (or finds) the specialisation and returns the compiled kernel; later calls launch that
    compiled kernel directly on the current stream. Under the CPU interpreter every call goes through
    ``kernel[grid](...)``.

    Where the compiled kernel's launcher has the layout this was written against (Triton 3.6's
    ``CudaLauncher``: no global or profile scratch memory), calls go one level lower still, to the C
    launch function, and TMA descriptors are encoded once per base address: a descriptor depends only on
    the address, shape, strides, block and dtype, and the plan fixes all but the address, so a weight's
    descriptor is encoded once and an activation's whenever the allocator hands out a new address (it
    mostly hands back the same one). Anything unexpected falls back to ``CompiledKernel.run``.
    """

    __slots__ = ("fn", "grid", "constexprs", "options", "_tail", "_compiled", "_device", "_g", "_raw",
                 "_desc", "_desc_cache", "_ptr_idx")

    #: TMA descriptors kept per launch (per argument and base address) before the cache starts over.
    MAX_DESCRIPTORS = 64

    def __init__(self, fn, grid: Sequence[int], constexprs: dict[str, Any], **options: Any) -> None:
        self.fn = fn
        self.grid = tuple(int(g) for g in grid)
        self.constexprs = constexprs
        self.options = options
        self._g = (self.grid + (1, 1))[:3]
        self._compiled = None
        self._device = None
        self._tail = None
        self._raw = None
        self._desc = None
        self._ptr_idx: tuple[int, ...] = ()
        self._desc_cache: dict[tuple[int, int], list] = {}
        if not interpreter_enabled():
            names = list(getattr(fn, "arg_names", ()))
            n_const = len(constexprs)
            const_names = names[len(names) - n_const:] if n_const else []
            if set(const_names) == set(constexprs):
                self._tail = tuple(constexprs[n] for n in const_names)
            # otherwise constexprs are interleaved: every call takes the kernel[grid] path

    def __call__(self, *args: Any) -> None:
        if _skip_launches:
            return
        compiled = self._compiled
        if compiled is not None:
            device = _current_device()
            if device == self._device:
                rt = _RUNTIME_KNOBS or _runtime_knobs()
                stream = _current_stream(device)
                full = args + self._tail
                enter = rt.launch_enter_hook
                meta = compiled.launch_metadata(self.grid, stream, *full) if enter is not None else None
                g = self._g
                raw = self._raw
                if raw is not None:
                    if self._ptr_idx:
                        full = self._addresses(full)
                    if self._desc is not None:
                        full = self._expand_descriptors(full)
                    raw[0](g[0], g[1], g[2], stream, compiled.function, raw[1], raw[2], None, None,
                           compiled.packed_metadata, meta, enter, rt.launch_exit_hook, *full)
                    return
                compiled.run(g[0], g[1], g[2], stream, compiled.function, compiled.packed_metadata, meta,
                             enter, rt.launch_exit_hook, *full)
                return
        try:
            result = self.fn[self.grid](*args, **self.constexprs, **self.options)
        except Exception as exc:
            _explain_interpreter_failure(exc)
            raise
        if self._tail is not None and result is not None and hasattr(result, "packed_metadata"):
            launcher = result.run  # loads the module and builds the launcher now, not on the hot path
            self._compiled = result
            self._device = _current_device()
            self._bind_raw(launcher)

    def _bind_raw(self, launcher) -> None:
        """Find the C launch function under Triton's launcher (see the class docstring)."""
        try:
            if launcher.global_scratch_size or launcher.profile_scratch_size:
                return
            launch = launcher.launch
            code = getattr(launch, "__code__", None)
            if code is None:  # the C function itself: no tensor descriptors
                self._raw = (launch, launcher.launch_cooperative_grid, launcher.launch_pdl)
                return
            free = dict(zip(code.co_freevars, (c.cell_contents for c in launch.__closure__ or ())))
            if {"launcher", "tensordesc_indices", "tensordesc_meta"} - free.keys():
                return
            from triton.backends.nvidia.driver import make_tensordesc_arg

            indices = sorted(free["tensordesc_indices"])
            metas = list(free["tensordesc_meta"])
            self._desc = (tuple(indices), tuple(metas), make_tensordesc_arg)
            self._raw = (free["launcher"], launcher.launch_cooperative_grid, launcher.launch_pdl)
        except Exception:  # another Triton's launcher: CompiledKernel.run stays the path
            self._raw = self._desc = None
        finally:
            if self._raw is not None:
                self._ptr_idx = self._pointer_positions()

    def _pointer_positions(self) -> tuple[int, ...]:
        """Positions of pointer arguments. Passed as integers, the C launcher takes them as they are;
        passed as tensors it calls ``data_ptr()`` and then the driver (``cuPointerGetAttribute``) to check
        each address is device memory, ~0.5 us per pointer on the H200 machine. The plan key already fixed
        every tensor's device, so the check is redundant on a plan's launches."""
        try:
            sig = self._compiled.src.signature
            names = list(self.fn.arg_names)
            return tuple(i for i, n in enumerate(names)
                         if isinstance(sig.get(n), str) and sig[n].startswith("*"))
        except Exception:
            return ()

    def _addresses(self, full: tuple) -> list:
        out = list(full)
        for i in self._ptr_idx:
            a = out[i]
            if a is not None and not isinstance(a, int):
                out[i] = a.data_ptr()
        return out

    def _expand_descriptors(self, full) -> list:
        indices, metas, make = self._desc
        cache = self._desc_cache
        out: list = []
        prev = 0
        for j, i in enumerate(indices):
            out.extend(full[prev:i])
            d = full[i]
            key = (i, d.base.data_ptr())
            enc = cache.get(key)
            if enc is None:
                if len(cache) >= self.MAX_DESCRIPTORS:
                    cache.clear()
                enc = cache[key] = make(d, metas[j])
            out.extend(enc)
            prev = i + 1
        out.extend(full[prev:])
        return out


_RUNTIME_KNOBS = None


def _runtime_knobs():
    """``triton.knobs.runtime`` (launch hooks are read from it on every launch, as Triton does)."""
    global _RUNTIME_KNOBS
    from triton import knobs

    _RUNTIME_KNOBS = knobs.runtime
    return _RUNTIME_KNOBS


def _current_device() -> int:
    return torch.cuda.current_device()


def _current_stream(device: int) -> int:
    return torch._C._cuda_getCurrentRawStream(device)


_TensorDescriptor = None


def tensor_descriptor(base: torch.Tensor, shape: list[int], strides: list[int], block_shape: list[int]):
    """A host-side TMA descriptor for a planned launch, without re-running the constructor's checks.

    ``TensorDescriptor(...)`` asserts alignment, ranks and block shapes on every construction (~2 us
    each; a Hopper GEMM launch takes four). The planner checks those once (16-byte aligned base, row
    stride and row length) and the plan key fixes the base's alignment, shape and strides, so per call
    only the base changes.
    """
    global _TensorDescriptor
    if _TensorDescriptor is None:
        from triton.tools.tensor_descriptor import TensorDescriptor

        _TensorDescriptor = TensorDescriptor
    d = object.__new__(_TensorDescriptor)
    d.base, d.shape, d.strides, d.block_shape, d.padding = base, shape, strides, block_shape, "zero"
    return d


_increment_version = torch.autograd.graph.increment_version


def mark_written(*tensors: torch.Tensor | None) -> None:
    """Bump the version counter of caller-owned buffers a direct launch wrote (``out=``, in place).

    A kernel launched outside the dispatcher writes memory without PyTorch knowing, so a tensor's
    ``_version`` would not move; anything keyed on it (the FP8 operand cache of ``fp8_gemm``, autograd's
    saved-tensor checks) would then see stale data as unchanged. ~0.3 us per tensor, paid only when the
    op writes a caller's buffer.
    """
    for t in tensors:
        if t is not None:
            _increment_version(t)


def cached_call(cache: PlanCache, key: tuple | None, build: Callable[[], Any] | None):
    """The plan for ``key`` from ``cache``, building and storing it with ``build()`` on a miss; None when
    ``key`` is None (the call is not eligible for the fast path)."""
    if key is None:
        return None
    plan = cache.get(key)
    if plan is None and build is not None:
        plan = cache.put(key, build())
    return plan


__all__ = ["plan_key", "tensor_key", "PlanCache", "KernelLaunch", "clear_plans", "plan_counts", "host_only",
           "cached_call", "tensor_descriptor", "mark_written"]
