"""How a kernel module offers itself to ``triton-ops tune``.

Each kernel module that can be tuned exposes ``tuning_entry() -> TuningEntry`` (or a list of them). The
entry says which parameters its launcher accepts (``config_space``), how to build arguments for a problem
size (``make_args``), how to run one launch with a given config (``run``) and what the launch heuristic
would pick (``default_config``). ``triton-ops tune`` times the default next to every candidate, rejects
candidates whose output differs from the default's, and stores the winner in the config cache, where
the op's launcher finds it when tuned configs are switched on (:mod:`triton_ops.autotuner.runtime`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TuningEntry:
    #: cache key family, the same string the launcher passes to ``runtime.lookup``
    kernel_type: str
    #: parameter name -> candidate values, as accepted by ``run(**config)``
    config_space: dict[str, list[Any]]
    #: ``make_args(problem_size, device, dtype) -> (args, kwargs)``: fresh random inputs (never zeros)
    make_args: Callable[[tuple[int, ...], str, torch.dtype], tuple[tuple[Any, ...], dict[str, Any]]]
    #: ``run(*args, **kwargs, **config)``: one launch with that config; returns the output tensor
    run: Callable[..., Any]
    #: ``default_config(problem_size) -> dict``: the launch heuristic's own choice for that problem; a
    #: function that also takes a second argument is given the dtype (heuristics that depend on it)
    default_config: Callable[[tuple[int, ...]], dict[str, Any]]
    # ---------------------------------------------------------------- optional
    #: problem sizes ``triton-ops tune`` uses when none are given (e.g. the README's benchmark shapes)
    default_shapes: list[tuple[int, ...]] = field(default_factory=list)
    #: small problem sizes for the CPU interpreter (``triton-ops tune`` with no GPU)
    cpu_shapes: list[tuple[int, ...]] = field(default_factory=list)
    #: what the problem-size tuple means, for help text (e.g. "batch x seq x hidden")
    shape_doc: str = ""
    #: dtype used when none is given
    dtype: torch.dtype = torch.float16
    #: ``valid_configs(problem_size, configs[, dtype]) -> configs``: drop configs that cannot run (or that
    #: are known to spill) for this problem
    valid_configs: Callable[[tuple[int, ...], list[dict[str, Any]]], list[dict[str, Any]]] | None = None
    #: ``profile(problem_size, dtype) -> PerformanceProfile`` for TFLOPS / GB/s in tuning reports
    profile: Callable[[tuple[int, ...], torch.dtype], Any] | None = None
    #: ``cache_key(problem_size, dtype) -> tuple[int, ...]``: the key the launcher passes to
    #: ``runtime.lookup`` for this problem, when it is not the problem size itself (e.g. a launcher that
    #: sees only rows x hidden, or whose best config depends on the element size); default: the size
    cache_key: Callable[[tuple[int, ...], torch.dtype], tuple[int, ...]] | None = None
    #: relative L2 error allowed between a candidate's output and the default config's output
    #: (accumulation order changes with tile sizes: ~1e-3 for fp16 outputs, 1e-2 covers bf16 and FP8)
    rtol: float = 1e-2
    #: dtypes ``triton-ops tune --dtype`` may ask for; empty: ``dtype`` and the library's activation
    #: dtypes (float16, bfloat16, float32)
    dtypes: tuple[torch.dtype, ...] = ()

    def accepted_dtypes(self) -> tuple[torch.dtype, ...]:
        """What ``--dtype`` may be for this entry (see :attr:`dtypes`)."""
        if self.dtypes:
            return tuple(self.dtypes)
        return tuple(dict.fromkeys((self.dtype, torch.float16, torch.bfloat16, torch.float32)))

    def check_dtype(self, dtype: torch.dtype | None) -> None:
        """Raise :class:`InvalidArgumentError` unless ``dtype`` (None: the entry's own) may be tuned."""
        from ..exceptions import InvalidArgumentError

        if dtype is not None and dtype not in self.accepted_dtypes():
            names = ", ".join(str(d).replace("torch.", "") for d in self.accepted_dtypes())
            raise InvalidArgumentError(f"{self.kernel_type} cannot be tuned in "
                                       f"{str(dtype).replace('torch.', '')}; expected one of: {names}")

    def check_problem(self, problem_size: tuple[int, ...], dtype: torch.dtype | None = None) -> None:
        """Raise :class:`InvalidArgumentError` naming the expected format unless this entry can tune
        ``problem_size`` in ``dtype``: positive sizes its ``cache_key`` and ``default_config`` accept
        (both are pure functions of the problem, so nothing runs)."""
        from ..exceptions import InvalidArgumentError, TritonOpsError

        dims = tuple(problem_size)
        shown = "x".join(map(str, dims)) or "(empty)"
        example = next(iter(self.default_shapes or self.cpu_shapes), None)
        fmt = (self.shape_doc or "the op's own shape format") + (
            f", e.g. {'x'.join(map(str, example))}" if example else "")
        self.check_dtype(dtype)
        if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in dims):
            raise InvalidArgumentError(f"{self.kernel_type}: shape {shown} must list positive sizes; expected {fmt}")
        try:
            self.key_for(dims, dtype)
            self.default_for(dims, dtype)
        except TritonOpsError as exc:
            reason = str(exc)
        except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            return
        raise InvalidArgumentError(f"{self.kernel_type}: shape {shown} is not a problem it takes ({reason}); "
                                   f"expected {fmt}")

    def default_for(self, problem_size: tuple[int, ...], dtype: torch.dtype | None = None) -> dict[str, Any]:
        """``default_config(problem_size, dtype)`` when it takes the dtype, else ``default_config(size)``."""
        if _takes(self.default_config, 2):
            return dict(self.default_config(tuple(problem_size), dtype or self.dtype))
        return dict(self.default_config(tuple(problem_size)))

    def valid_for(self, problem_size: tuple[int, ...], configs: list[dict[str, Any]],
                  dtype: torch.dtype | None = None) -> list[dict[str, Any]]:
        """``valid_configs(problem_size, configs[, dtype])`` (all configs when the entry has none)."""
        if self.valid_configs is None:
            return list(configs)
        if _takes(self.valid_configs, 3):
            return list(self.valid_configs(tuple(problem_size), configs, dtype or self.dtype))
        return list(self.valid_configs(tuple(problem_size), configs))

    def key_for(self, problem_size: tuple[int, ...], dtype: torch.dtype | None = None) -> tuple[int, ...]:
        """The cache key of a problem: ``cache_key(problem_size, dtype)`` or the size itself."""
        if self.cache_key is None:
            return tuple(problem_size)
        return tuple(int(v) for v in self.cache_key(tuple(problem_size), dtype or self.dtype))


def _takes(fn: Callable[..., Any], n: int) -> bool:
    """Whether ``fn`` accepts ``n`` positional arguments (optional extra arguments added later)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins and the like: assume the basic form
        return False
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= n


def parse_shape(text: str) -> tuple[int, ...]:
    """``"8x2048x4096"`` (or ``"8,2048,4096"``) -> ``(8, 2048, 4096)``."""
    from ..exceptions import InvalidArgumentError

    parts = [p for p in text.replace(",", "x").replace("X", "x").split("x") if p.strip()]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise InvalidArgumentError(f"shape {text!r} is not a list of integers like 8x2048x4096") from None
    if not dims or any(d < 0 for d in dims):
        raise InvalidArgumentError(f"shape {text!r} must list non-negative integers like 8x2048x4096")
    return dims


__all__ = ["TuningEntry", "parse_shape"]
