"""FP8Linear: an ``nn.Linear`` whose weight is stored in FP8 (half the bytes of fp16), plus a helper that
swaps the ``nn.Linear`` layers of a model.

* The weight is quantized once, per output channel by default (``[N, K]`` e4m3, K contiguous, with an
  fp32 scale per output channel), or per tensor.
* Forward, large M on sm_89+: the activations are quantized per token, dynamically, in ONE pass (read the
  fp16/bf16 activation once, write FP8 and the ``[M, 1]`` scales), then the FP8 GEMM applies both
  scales and the bias in its epilogue.
* Forward, small M (decode, M <= 64) on every GPU, and every M on sm_80: no activation quantization at
  all; the weight-only kernel decodes the FP8 weight bits in registers next to an fp16/bf16 dot, reading
  the weights once at near copy speed.
* Host cost: ``forward`` is ``fp8_gemm(x, weight.t(), b_scale=..., bias=...)`` through one launch plan per
  input signature (``triton_ops.launch``), keyed on x, the weight, its scale and the bias; a repeated call
  allocates the output (and x's FP8 copy) and launches, with no per-call views, detaches or dtype checks.
  Buffers and ``nn.Parameter`` weights take the same path.
* Inference only: the FP8 weight, its scales and the bias are buffers (no parameters to train); when
  autograd records through ``x`` (grad mode, ``x.requires_grad``), the forward still runs and a backward
  through it raises :class:`~triton_ops.UnsupportedError` instead of leaving the layers before it
  without gradients. Train with ``nn.Linear`` and convert for inference.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..autotuner import runtime as _rt
from ..exceptions import InvalidArgumentError, ShapeError
from ..launch import PlanCache, plan_key
from ..utils import KeepBufferDtypes, interpreter_enabled
from ..validation import (
    FLOAT_DTYPES,
    FP8_DTYPES,
    check_dtype,
    check_int,
    check_module_device,
    check_runnable_device,
    check_same_device,
    check_tensor,
)
from .fp8_gemm import _plan_gemm, fp8_gemm
from .fp8_quantize import FP8_MAX, MIN_SCALE, quantize_fp8

_WEIGHT_GRANULARITIES = ("channel", "tensor")


def _runnable(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and interpreter_enabled())


def quantize_weight(weight: torch.Tensor, fp8_dtype: torch.dtype = torch.float8_e4m3fn,
                    granularity: str = "channel") -> tuple[torch.Tensor, torch.Tensor]:
    """``weight [N, K]`` -> ``(w_q [N, K] FP8, scale)``; scale ``[N, 1]`` per output channel or ``[]``.

    Uses the Triton kernels where they run, and the same math in PyTorch ops elsewhere (a model built on
    the CPU), so a layer can be created before it is moved to the GPU.
    """
    if granularity not in _WEIGHT_GRANULARITIES:
        raise InvalidArgumentError(f"granularity={granularity!r}; expected one of {_WEIGHT_GRANULARITIES}")
    gran = "row" if granularity == "channel" else "tensor"
    w = weight.detach()
    if w.dtype not in FLOAT_DTYPES:
        w = w.float()
    if _runnable(w.device) and w.numel():
        return quantize_fp8(w, dtype=fp8_dtype, granularity=gran)
    fmax = FP8_MAX[fp8_dtype]
    wf = w.float()
    aw = wf.abs()
    aw = torch.where(torch.isfinite(aw), aw, torch.zeros((), device=w.device))
    amax = aw.amax(dim=1, keepdim=True) if gran == "row" else (aw.amax() if aw.numel() else aw.new_zeros(()))
    s = torch.where(amax > 0, amax / fmax, torch.ones((), device=w.device)).clamp_min(MIN_SCALE)
    q = (wf * (1.0 / s)).clamp(-fmax, fmax)
    q = torch.where(torch.isnan(wf), wf, q).to(fp8_dtype)
    return q, s.to(torch.float32)


class FP8Linear(KeepBufferDtypes, nn.Module):
    """``y = x @ W^T + b`` with ``W`` stored in FP8 (e4m3 by default) and an fp32 scale per output channel.

    ``dtype`` is the activation/bias/output dtype the layer is used with (fp16, bf16 or fp32). Inference
    only: weight, scales and bias are buffers; a backward through the layer raises UnsupportedError.
    """

    # model.half() must not turn the FP8 weight or its fp32 scales into fp16 values.
    _keep_dtype_buffers = ("weight", "weight_scale")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype: torch.dtype | None = None, *, fp8_dtype: torch.dtype = torch.float8_e4m3fn,
                 weight_granularity: str = "channel"):
        super().__init__()
        # "64", 64.0 or 3.7 are refused, not truncated; a CUDA device without a GPU before any allocation
        in_features = check_int(in_features, "in_features", min_value=1)
        out_features = check_int(out_features, "out_features", min_value=1)
        if not isinstance(bias, bool):
            raise InvalidArgumentError(f"bias must be a bool, got {bias!r}")
        check_module_device(device)
        if fp8_dtype not in FP8_DTYPES:
            raise InvalidArgumentError(f"fp8_dtype={fp8_dtype!r}; expected torch.float8_e4m3fn or float8_e5m2")
        if weight_granularity not in _WEIGHT_GRANULARITIES:
            raise InvalidArgumentError(f"weight_granularity={weight_granularity!r}; expected one of "
                                       f"{_WEIGHT_GRANULARITIES}")
        dtype = dtype or torch.float16
        if dtype not in FLOAT_DTYPES:
            raise InvalidArgumentError(f"dtype={dtype!r}; expected float16, bfloat16 or float32")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.fp8_dtype, self.weight_granularity = fp8_dtype, weight_granularity
        # nn.Linear's default init, then quantize once.
        w = torch.empty(self.out_features, self.in_features, device=device, dtype=torch.float32)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        q, s = quantize_weight(w, fp8_dtype, weight_granularity)
        self.register_buffer("weight", q)
        self.register_buffer("weight_scale", s)
        bound = 1.0 / math.sqrt(self.in_features)
        # a buffer like the weight: the layer is inference only (see the module doc), nothing to train
        self.register_buffer("bias", torch.empty(self.out_features, device=device, dtype=dtype).uniform_(-bound, bound)
                             if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, fp8_dtype: torch.dtype = torch.float8_e4m3fn,
                    weight_granularity: str = "channel") -> FP8Linear:
        """An FP8Linear holding ``linear``'s weight quantized once and its bias unchanged."""
        if not isinstance(linear, nn.Linear):
            raise InvalidArgumentError(f"from_linear takes an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        dtype = w.dtype if w.dtype in FLOAT_DTYPES else torch.float16
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod.in_features, mod.out_features = linear.in_features, linear.out_features
        if fp8_dtype not in FP8_DTYPES:
            raise InvalidArgumentError(f"fp8_dtype={fp8_dtype!r}; expected torch.float8_e4m3fn or float8_e5m2")
        mod.fp8_dtype, mod.weight_granularity = fp8_dtype, weight_granularity
        q, s = quantize_weight(w, fp8_dtype, weight_granularity)
        mod.register_buffer("weight", q.contiguous())
        mod.register_buffer("weight_scale", s)
        mod.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype).clone())
        return mod

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``W`` as ``weight.float() * weight_scale`` (for inspection and references)."""
        return (self.weight.float() * self.weight_scale.float()).to(dtype)

    def _w_scale_cols(self) -> torch.Tensor:
        s = self.weight_scale
        return s.reshape(1, -1) if s.numel() > 1 else s.reshape(1)

    def forward(self, x: torch.Tensor, x_scale: torch.Tensor | None = None, *,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """``x @ W^T (+ bias)``. A float ``x`` is quantized per token inside the call. An FP8 ``x`` comes with
        its ``x_scale`` -- per token ``[..., 1]`` or per (1, 128) block ``[..., ceil(K / 128)]``, as
        ``fused_add_rmsnorm`` / ``fused_gated_mlp`` emit them with ``out_dtype=torch.float8_e4m3fn`` -- and
        is used as is: the activation crosses memory once, in one byte per element. ``out_dtype`` (FP8
        input only; default bfloat16, or the bias's dtype) is the output's dtype."""
        if torch.is_grad_enabled() and getattr(x, "requires_grad", False):
            # inference only: computed without recording, tied to x so that a backward raises clearly
            from .gated_mlp_backward import inference_only  # imports gated_mlp, which imports this module

            with torch.no_grad():
                out = self.forward(x.detach(), x_scale, out_dtype=out_dtype)
            return inference_only(out, x, "FP8Linear")
        if x_scale is not None or out_dtype is not None:
            return self._forward_fp8_input(x, x_scale, out_dtype)
        w, ws, bias = self.weight, self.weight_scale, self.bias
        key = plan_key(x, w, ws)
        if key is not None:
            key = (key, _bias_sig(bias), _rt.ENABLED)
            plan = _linear_plans.get(key)
            if plan is not None:
                # the plan was made for (w.t(), the [1, N] scale view): same addresses, no views per call
                return plan(x, w, None, ws, bias)
        check_tensor(x, "x")
        check_dtype(x, "x", FLOAT_DTYPES)
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ShapeError(f"x has shape {tuple(x.shape)}; FP8Linear({self.in_features}, {self.out_features}) "
                             f"expects [..., {self.in_features}]")
        check_dtype(w, "weight", FP8_DTYPES)
        check_same_device({"x": x, "weight": w, "weight_scale": ws, "bias": bias})
        if bias is not None:
            check_dtype(bias, "bias", FLOAT_DTYPES)
        if x.dim() == 1:  # a single token: [K] -> [N], planned as [1, K]
            return self(x.unsqueeze(0)).squeeze(0)
        check_runnable_device(x.device, "x")
        w_t = w.t()  # [K, N] view of the K-major [N, K] storage: no copy
        if key is not None and (bias is None or type(bias) in (torch.Tensor, nn.Parameter)):
            plan = _linear_plans.put(key, _plan_gemm(x, w_t, None, self._w_scale_cols(), bias, x.dtype, "auto"))
            return plan(x, w, None, ws, bias)
        # torch.compile, autograd on x, tensor subclasses: the registered custom op (same plan inside)
        return fp8_gemm(x, w_t, b_scale=self._w_scale_cols(), bias=None if bias is None else bias.detach(),
                        out_dtype=x.dtype, check_scales=False)

    def _forward_fp8_input(self, x, x_scale, out_dtype):
        check_tensor(x, "x")
        if x.dtype not in FP8_DTYPES:
            raise InvalidArgumentError(f"x_scale / out_dtype are for an FP8 x with its scales; x is {x.dtype} "
                                       "(a float x is quantized by the layer: call it with x alone)")
        if x_scale is None:
            raise InvalidArgumentError("an FP8 x needs x_scale: per token [..., 1] or per (1, 128) block "
                                       "[..., ceil(K / 128)]")
        check_tensor(x_scale, "x_scale")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ShapeError(f"x has shape {tuple(x.shape)}; FP8Linear({self.in_features}, {self.out_features}) "
                             f"expects [..., {self.in_features}]")
        if out_dtype is None:
            out_dtype = self.bias.dtype if self.bias is not None else torch.bfloat16
        lead = x.shape[:-1]
        # fp8_gemm takes [M, K] with [M, 1] / [M, groups] scales: the token dims flattened (views when
        # x and its scales are contiguous, as the producing kernels write them)
        x2 = x.reshape(-1, self.in_features)
        s2 = x_scale.reshape(x2.shape[0], -1) if x_scale.dim() > 0 and x_scale.numel() > 1 else x_scale
        bias = self.bias
        y = fp8_gemm(x2, self.weight.t(), a_scale=s2, b_scale=self._w_scale_cols(),
                     bias=None if bias is None else bias.detach(), out_dtype=out_dtype, check_scales=False)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"fp8_dtype={str(self.fp8_dtype).replace('torch.', '')}, weight={self.weight_granularity}")


_linear_plans = PlanCache("fp8_linear")


def _bias_sig(bias: torch.Tensor | None):
    """The bias's part of a plan key. The bias is read by the kernel only (FP8Linear is inference only; a
    bias assigned as a Parameter that requires grad is read detached), so it keys like a plain tensor."""
    if bias is None:
        return None
    # bias.device: get_device() is -1 for CPU and meta alike (see launch.plan_key)
    return (type(bias), bias.shape, bias.stride(), bias.dtype, bias.device, bias.data_ptr() % 16 == 0)


def _default_filter(name: str, module: nn.Linear) -> bool:
    return True


def convert_to_fp8_linear(model: nn.Module, filter_fn: Callable[[str, nn.Linear], bool] | None = None, *,
                          fp8_dtype: torch.dtype = torch.float8_e4m3fn, weight_granularity: str = "channel",
                          min_features: int = 16) -> nn.Module:
    """Replace (in place) every ``nn.Linear`` of ``model`` for which ``filter_fn(qualified_name, module)``
    is true by :class:`FP8Linear`. Returns ``model``; the converted names are in
    ``model._fp8_converted`` (a list).

    Layers with ``in_features`` or ``out_features`` below ``min_features`` or not a multiple of 16 are
    skipped: the kernel computes any size, but FP8 gains nothing on such layers (classifier heads with a
    few outputs, tiny projections) and the tensor-core tiles are 16-aligned.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be an nn.Module, got {type(model).__name__}")
    filter_fn = filter_fn or _default_filter
    converted: list[str] = []

    def ok_dims(m: nn.Linear) -> bool:
        return all(d >= min_features and d % 16 == 0 for d in (m.in_features, m.out_features))

    def visit(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            full = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, nn.Linear) and not isinstance(child, FP8Linear):
                if ok_dims(child) and filter_fn(full, child):
                    setattr(parent, child_name, FP8Linear.from_linear(child, fp8_dtype=fp8_dtype,
                                                                      weight_granularity=weight_granularity))
                    converted.append(full)
            else:
                visit(child, full)

    if isinstance(model, nn.Linear):
        raise InvalidArgumentError("pass the model that contains the nn.Linear (or use FP8Linear.from_linear)")
    visit(model, "")
    model._fp8_converted = converted
    return model


__all__ = ["FP8Linear", "convert_to_fp8_linear", "quantize_weight"]
