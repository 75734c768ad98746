"""Correctness verification: does an output agree with its reference?

Two measures, both computed in float64 on the host:

* relative L2 error ``||out - ref|| / ||ref||``: right for fp32/fp16/bf16 outputs, where every element
  carries a rounding error of about one ulp of its dtype;
* SQNR in dB ``10 log10(||ref||^2 / ||out - ref||^2)``: right for FP8, whose 3-bit mantissa gives
  ~30 dB for e4m3 on Gaussian data; element-wise tolerances would be meaningless there.

An output with a different shape, or NaN/Inf where the reference is finite, fails whatever the measure.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..exceptions import CorrectnessError
from ..models import CorrectnessResult
from .case import relative_error, sqnr_db

#: Relative L2 error allowed per output dtype when comparing against a float32/float64 reference.
#: A correctly rounded result is off by about half an ulp per element: 2^-24 (fp32), 2^-11 (fp16),
#: 2^-8 (bf16); fused ops chain a few roundings (normalise, scale, rotate) and reductions in a different
#: order, so the limits below sit ~10x above one ulp.
DEFAULT_RTOL: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 3e-2,
}
#: Minimal SQNR for outputs computed from FP8 operands: e4m3 quantisation of Gaussian data gives ~31 dB
#: per operand; a GEMM's accumulation averages errors, so 25 dB leaves margin while a wrong scale or
#: layout gives < 0 dB.
DEFAULT_MIN_SQNR_DB = 25.0


def first_tensor(out: Any) -> torch.Tensor:
    """The tensor to check: ``out`` itself, or the first item of a tuple/list output."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise CorrectnessError(
        f"expected a tensor (or a tuple whose first item is a tensor), got {type(out).__name__}")


def default_rtol(dtype: torch.dtype) -> float:
    return DEFAULT_RTOL.get(dtype, 1e-2)


def check_output(out: Any, ref: Any, *, rtol: float | None = None,
                 min_sqnr_db: float | None = None) -> CorrectnessResult:
    """Compare ``out`` with ``ref``; ``min_sqnr_db`` (if given) replaces the relative-error test."""
    try:
        o, r = first_tensor(out), first_tensor(ref)
    except CorrectnessError as exc:
        return CorrectnessResult(False, math.inf, math.inf, -math.inf, rtol or 0.0, str(exc))
    tol = rtol if rtol is not None else default_rtol(o.dtype)
    if tuple(o.shape) != tuple(r.shape):
        return CorrectnessResult(False, math.inf, math.inf, -math.inf, tol,
                                 f"shape {tuple(o.shape)} differs from the reference's {tuple(r.shape)}")
    if o.numel() == 0:
        return CorrectnessResult(True, 0.0, 0.0, math.inf, tol, "empty output")
    # float64 on the reference's device: a GPU does this in milliseconds where the host would need
    # seconds for the 67M-element outputs of the larger benchmark problems
    o64 = o.detach().to(device=r.device, dtype=torch.float64)
    r64 = r.detach().to(dtype=torch.float64)
    bad = ~torch.isfinite(o64) & torch.isfinite(r64)
    if bool(bad.any()):
        n = int(bad.sum())
        return CorrectnessResult(False, math.inf, math.inf, -math.inf, tol,
                                 f"{n} of {o.numel()} outputs are NaN/Inf where the reference is finite")
    finite = torch.isfinite(r64)
    if not bool(finite.all()):
        # non-finite reference entries must be matched exactly (NaN in gives NaN out)
        same = (o64 == r64) | (torch.isnan(o64) & torch.isnan(r64))
        if not bool(same[~finite].all()):
            return CorrectnessResult(False, math.inf, math.inf, -math.inf, tol,
                                     "non-finite reference values are not reproduced")
        o64, r64 = o64[finite], r64[finite]
    max_abs = float((o64 - r64).abs().max()) if o64.numel() else 0.0
    rel = relative_error(o64, r64)
    sq = sqnr_db(o64, r64)
    if min_sqnr_db is not None:
        passed = sq >= min_sqnr_db
        msg = "" if passed else f"SQNR {sq:.1f} dB below the required {min_sqnr_db:.1f} dB"
        return CorrectnessResult(passed, max_abs, rel, sq, float(min_sqnr_db), msg)
    passed = rel <= tol
    msg = "" if passed else f"relative error {rel:.3g} above the tolerance {tol:.3g}"
    return CorrectnessResult(passed, max_abs, rel, sq, tol, msg)


class CorrectnessVerifier:
    """Reusable checker with fixed tolerances.

    >>> v = CorrectnessVerifier(rtol=1e-3)
    >>> v.verify(torch.ones(4), torch.ones(4))
    True
    """

    def __init__(self, rtol: float | None = None, min_sqnr_db: float | None = None) -> None:
        self.rtol = rtol
        self.min_sqnr_db = min_sqnr_db

    def check(self, out: Any, ref: Any) -> CorrectnessResult:
        return check_output(out, ref, rtol=self.rtol, min_sqnr_db=self.min_sqnr_db)

    def verify(self, out: Any, ref: Any) -> bool:
        return self.check(out, ref).passed

    def assert_close(self, out: Any, ref: Any, what: str = "output") -> CorrectnessResult:
        """Raise :class:`CorrectnessError` when the check fails."""
        res = self.check(out, ref)
        if not res.passed:
            raise CorrectnessError(f"{what}: {res.message}")
        return res


__all__ = ["CorrectnessVerifier", "check_output", "first_tensor", "default_rtol", "DEFAULT_RTOL",
           "DEFAULT_MIN_SQNR_DB"]
