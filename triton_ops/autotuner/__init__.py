"""Autotuning: search spaces, a generic tuner, a persistent config cache and the opt-in runtime switch."""

from ..exceptions import TuningFailedError
from ..models import KernelMetrics, TuningResult
from .cache import CACHE_DIR_ENV, CacheKey, ConfigCache
from .configs import (
    FP8_GEMM_CONFIGS,
    GATED_MLP_CONFIGS,
    RMSNORM_ROPE_CONFIGS,
    filter_valid_configs,
    generate_configs,
    get_default_config,
)
from .entry import TuningEntry, parse_shape
from .runtime import USE_TUNED_ENV, lookup, resolve, tuned_configs_enabled, use_tuned_configs
from .tuner import TritonAutoTuner, compute_elementwise_metrics, compute_gemm_metrics

__all__ = [
    "TritonAutoTuner",
    "TuningResult",
    "KernelMetrics",
    "TuningFailedError",
    "ConfigCache",
    "CacheKey",
    "CACHE_DIR_ENV",
    "RMSNORM_ROPE_CONFIGS",
    "GATED_MLP_CONFIGS",
    "FP8_GEMM_CONFIGS",
    "generate_configs",
    "filter_valid_configs",
    "get_default_config",
    "compute_gemm_metrics",
    "compute_elementwise_metrics",
    "TuningEntry",
    "parse_shape",
    "use_tuned_configs",
    "tuned_configs_enabled",
    "lookup",
    "resolve",
    "USE_TUNED_ENV",
]
