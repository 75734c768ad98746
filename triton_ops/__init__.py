"""triton-fused-ops: fused Triton GPU kernels for Transformer models.

The root package is the only public surface; everything users need is importable from here.

* ``fused_rmsnorm_rope`` / ``FusedRMSNormRoPE``: RMSNorm + rotary embedding in one pass.
* ``fused_gated_mlp`` / ``FusedGatedMLP``: SwiGLU / GeGLU as one GEMM with the activation in its epilogue.
* ``quantize_fp8`` / ``dequantize_fp8`` / ``fp8_gemm`` / ``FP8Linear``: FP8 quantization and GEMM.
* ``TritonAutoTuner`` / ``ConfigCache``: autotuning with a persistent cache.
* ``BenchmarkSuite``: correctness-verified benchmarks against PyTorch, torch.compile and cuBLAS.
"""

from .autotuner import (
    FP8_GEMM_CONFIGS,
    GATED_MLP_CONFIGS,
    RMSNORM_ROPE_CONFIGS,
    ConfigCache,
    TritonAutoTuner,
    compute_elementwise_metrics,
    compute_gemm_metrics,
    filter_valid_configs,
    generate_configs,
    get_default_config,
    tuned_configs_enabled,
    use_tuned_configs,
)
from .benchmark import BenchCase, BenchmarkReport, BenchmarkSuite, CorrectnessVerifier
from .exceptions import (
    CacheError,
    CorrectnessError,
    DeviceError,
    DTypeError,
    InvalidArgumentError,
    LayoutError,
    NumericalError,
    ShapeError,
    TritonOpsError,
    TuningFailedError,
    UnsupportedError,
)
from .kernels.fp8_gemm import fp8_gemm, fp8_weight_only_gemm
from .kernels.fp8_linear import FP8Linear, convert_to_fp8_linear
from .kernels.fp8_quantize import FP8Quantizer, dequantize_fp8, quantize_fp8
from .kernels.gated_mlp import FusedGatedMLP, fused_gated_mlp, fused_gated_mlp_fp8
from .kernels.rmsnorm_rope import FusedRMSNormRoPE, fused_rmsnorm_rope
from .models import BenchmarkRow, CorrectnessResult, KernelMetrics, TensorSpec, TuningResult
from .performance import DevicePeaks, PerformanceProfile, device_peaks

__version__ = "0.1.0"

__all__ = [
    # fused ops
    "fused_rmsnorm_rope",
    "FusedRMSNormRoPE",
    "fused_gated_mlp",
    "fused_gated_mlp_fp8",
    "FusedGatedMLP",
    # FP8
    "quantize_fp8",
    "dequantize_fp8",
    "FP8Quantizer",
    "fp8_gemm",
    "fp8_weight_only_gemm",
    "FP8Linear",
    "convert_to_fp8_linear",
    # autotuning
    "TritonAutoTuner",
    "ConfigCache",
    "RMSNORM_ROPE_CONFIGS",
    "GATED_MLP_CONFIGS",
    "FP8_GEMM_CONFIGS",
    "generate_configs",
    "filter_valid_configs",
    "get_default_config",
    "compute_gemm_metrics",
    "compute_elementwise_metrics",
    "use_tuned_configs",
    "tuned_configs_enabled",
    # benchmarking
    "BenchmarkSuite",
    "BenchmarkReport",
    "BenchCase",
    "CorrectnessVerifier",
    # data models and metrics
    "TensorSpec",
    "KernelMetrics",
    "TuningResult",
    "CorrectnessResult",
    "BenchmarkRow",
    "PerformanceProfile",
    "DevicePeaks",
    "device_peaks",
    # errors
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
    "__version__",
]
