"""Configuration spaces for autotuning and helpers to expand and prune them.

A *config space* is a plain ``dict`` from a launch parameter name to the list of values to try; a
*config* is one choice per parameter. The three spaces below are starting points for tuning custom
kernels shaped like the library's ops (a row-wise memory-bound kernel, a gated GEMM and an FP8 GEMM).
The shipped kernels describe the exact parameters they accept in their ``tuning_entry()`` (see
:mod:`triton_ops.autotuner.entry`), which is what ``triton-ops tune`` searches.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from ..exceptions import InvalidArgumentError
from ..utils import next_power_of_2

#: Row-wise RMSNorm + RoPE: one program per row (or group of rows); BLOCK_SIZE covers the hidden dim.
RMSNORM_ROPE_CONFIGS: dict[str, list[Any]] = {
    "BLOCK_SIZE": [256, 512, 1024, 2048, 4096, 8192],
    "num_warps": [2, 4, 8, 16],
}

#: Gated MLP: tiles of the fused gate/up GEMM. 128x128 fp16 tiles with BLOCK_K=64 and 4 stages use
#: 4 * (128*64 + 2*64*128) * 2 B = 192 KiB of shared memory, under Hopper's 227 KiB per block.
GATED_MLP_CONFIGS: dict[str, list[Any]] = {
    "BLOCK_M": [32, 64, 128],
    "BLOCK_N": [64, 128],
    "BLOCK_K": [32, 64],
    "GROUP_M": [8],
    "num_warps": [4, 8],
    "num_stages": [3, 4],
}

#: FP8 GEMM: one-byte operands let BLOCK_K reach 128 at the same shared memory as fp16 with 64.
FP8_GEMM_CONFIGS: dict[str, list[Any]] = {
    "BLOCK_M": [64, 128],
    "BLOCK_N": [64, 128, 256],
    "BLOCK_K": [64, 128],
    "GROUP_M": [8],
    "num_warps": [4, 8],
    "num_stages": [3, 4],
}

_DEFAULTS: dict[str, dict[str, Any]] = {
    "rmsnorm_rope": {"BLOCK_SIZE": 4096, "num_warps": 8},
    "gated_mlp": {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8,
                  "num_warps": 8, "num_stages": 3},
    "fp8_gemm": {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8,
                 "num_warps": 8, "num_stages": 3},
}
_ALIASES = {"rmsnorm": "rmsnorm_rope", "rope": "rmsnorm_rope", "mlp": "gated_mlp", "fp8": "fp8_gemm"}

#: Shared memory a block may use on Hopper (227 KiB); Ampere A100 allows 163 KiB, Ada 99 KiB.
DEFAULT_SMEM_LIMIT_BYTES = 227 * 1024
#: Smallest tile the tensor-core paths accept on any side (mma/wgmma need 16).
MIN_TILE = 16


def generate_configs(config_space: Mapping[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values in ``config_space``, in a stable order (first key slowest).

    >>> generate_configs({"BLOCK": [64, 128], "num_warps": [4]})
    [{'BLOCK': 64, 'num_warps': 4}, {'BLOCK': 128, 'num_warps': 4}]
    """
    if not isinstance(config_space, Mapping):
        raise InvalidArgumentError(
            "config_space must be a dict of parameter name -> list of values, "
            f"got {type(config_space).__name__}")
    if not config_space:
        return [{}]
    names, values = [], []
    for name, vals in config_space.items():
        if not isinstance(name, str):
            raise InvalidArgumentError(f"config_space keys must be parameter names (str), got {name!r}")
        if isinstance(vals, (str, bytes)) or not isinstance(vals, Iterable):
            raise InvalidArgumentError(
                f"config_space[{name!r}] must be a list of candidate values, got {vals!r}")
        vals = list(vals)
        if not vals:
            raise InvalidArgumentError(f"config_space[{name!r}] is empty; give at least one candidate value")
        names.append(name)
        values.append(vals)
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def _cap(dim: int | None) -> int | None:
    """Largest useful tile along a dim of size ``dim``: its next power of two, at least MIN_TILE."""
    if dim is None:
        return None
    return max(MIN_TILE, next_power_of_2(int(dim)))


def _smem_bytes(cfg: Mapping[str, Any], dtype_bytes: int, b_tiles: int) -> int | None:
    """Shared memory of a pipelined GEMM: ``num_stages`` buffers of an A tile and ``b_tiles`` B tiles."""
    try:
        bm, bn, bk = int(cfg["BLOCK_M"]), int(cfg["BLOCK_N"]), int(cfg["BLOCK_K"])
    except (KeyError, TypeError, ValueError):
        return None
    stages = int(cfg.get("num_stages", 1) or 1)
    return stages * (bm * bk + b_tiles * bk * bn) * dtype_bytes


def filter_valid_configs(configs: Iterable[Mapping[str, Any]], hidden_dim: int | None = None,
                         intermediate_dim: int | None = None, M: int | None = None, N: int | None = None,
                         K: int | None = None, *, dtype_bytes: int = 2,
                         smem_limit_bytes: int = DEFAULT_SMEM_LIMIT_BYTES,
                         b_tiles: int | None = None) -> list[dict[str, Any]]:
    """Drop configs that cannot help (or cannot run) for a problem of the given sizes.

    * ``BLOCK_SIZE`` larger than the next power of two of ``hidden_dim`` only adds masked lanes.
    * ``BLOCK_M`` / ``BLOCK_N`` / ``BLOCK_K`` larger than the next power of two of ``M`` / ``N`` (or
      ``intermediate_dim``) / ``K`` (or ``hidden_dim``) likewise, but tiles of 16 are always allowed.
    * GEMM tiles whose pipelined buffers exceed ``smem_limit_bytes`` of shared memory fail to launch.
      ``b_tiles`` is the number of B tiles per stage: 2 for a gated MLP (gate and up weights, the
      default when ``intermediate_dim`` is given), else 1. ``dtype_bytes`` is the operand size (1 for FP8).
    * ``num_warps * 32`` threads with fewer than one element each (``BLOCK_SIZE < 32 * num_warps``) waste
      the extra warps.

    The result keeps the input order. If every config is dropped, the one with the smallest tiles is kept so
    the caller always has something to run.
    """
    configs = [dict(c) for c in configs]
    n_dim = N if N is not None else intermediate_dim
    k_dim = K if K is not None else hidden_dim
    caps = {"BLOCK_M": _cap(M), "BLOCK_N": _cap(n_dim), "BLOCK_K": _cap(k_dim)}
    block_cap = _cap(hidden_dim)
    if b_tiles is None:
        b_tiles = 2 if intermediate_dim is not None and N is None else 1
    keep = []
    for cfg in configs:
        ok = True
        for key, cap in caps.items():
            if cap is not None and key in cfg and int(cfg[key]) > cap:
                ok = False
        if block_cap is not None and "BLOCK_SIZE" in cfg and int(cfg["BLOCK_SIZE"]) > block_cap:
            ok = False
        if "BLOCK_SIZE" in cfg and "num_warps" in cfg and int(cfg["BLOCK_SIZE"]) < 32 * int(cfg["num_warps"]):
            ok = False
        smem = _smem_bytes(cfg, dtype_bytes, b_tiles)
        if smem is not None and smem > smem_limit_bytes:
            ok = False
        if ok:
            keep.append(cfg)
    if keep or not configs:
        return keep

    def size(cfg: Mapping[str, Any]) -> tuple[int, ...]:
        keys = ("BLOCK_SIZE", "BLOCK_M", "BLOCK_N", "BLOCK_K", "num_stages")
        return tuple(int(cfg.get(k, 0)) for k in keys)

    return [min(configs, key=size)]


def get_default_config(kernel_type: str) -> dict[str, Any]:
    """The static default config of one of the config spaces above ("rmsnorm_rope", "gated_mlp",
    "fp8_gemm"). The shipped kernels pick theirs per problem with their own heuristics."""
    key = _ALIASES.get(kernel_type, kernel_type)
    if key not in _DEFAULTS:
        raise InvalidArgumentError(
            f"no default config for kernel_type={kernel_type!r}; expected one of {sorted(_DEFAULTS)}")
    return dict(_DEFAULTS[key])


__all__ = [
    "RMSNORM_ROPE_CONFIGS",
    "GATED_MLP_CONFIGS",
    "FP8_GEMM_CONFIGS",
    "DEFAULT_SMEM_LIMIT_BYTES",
    "generate_configs",
    "filter_valid_configs",
    "get_default_config",
]
