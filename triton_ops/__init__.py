"""triton-fused-ops: fused Triton GPU kernels for Transformer models.

The root package is the only public surface; everything users need is importable from here.

* ``fused_rmsnorm_rope`` / ``FusedRMSNormRoPE``: RMSNorm + rotary embedding in one pass.
* ``fused_add_rmsnorm`` / ``FusedAddRMSNorm``: RMSNorm with an optional fused residual add.
* ``apply_rope``: rotary embedding of q and k in one launch.
* ``fused_gated_mlp`` / ``FusedGatedMLP``: SwiGLU / GeGLU as one GEMM with the activation in its epilogue.
* ``quantize_fp8`` / ``dequantize_fp8`` / ``fp8_gemm`` / ``FP8Linear``: FP8 quantization and GEMM.
* ``TritonAutoTuner`` / ``ConfigCache``: autotuning with a persistent cache.
* ``BenchmarkSuite``: correctness-verified benchmarks against PyTorch, torch.compile and cuBLAS.
* ``patch_model`` / ``unpatch_model`` / ``FusedMLP``: these ops inside Hugging Face transformers models.
* ``FusedMLPParallel`` / ``GatedMLPColwiseParallel`` / ``FP8ColwiseParallel`` / ...: tensor-parallel styles
  for ``torch.distributed.tensor.parallel.parallelize_module`` (docs/parallel.md).
"""

# Names resolve on first use (PEP 562), so ``import triton_ops.compute`` (NumPy only) and the exceptions
# work without importing torch or Triton, and ``import triton_ops`` stays cheap until an op is used.
_LAZY = {
    "FP8_GEMM_CONFIGS": "autotuner",
    "GATED_MLP_CONFIGS": "autotuner",
    "RMSNORM_ROPE_CONFIGS": "autotuner",
    "ConfigCache": "autotuner",
    "TritonAutoTuner": "autotuner",
    "compute_elementwise_metrics": "autotuner",
    "compute_gemm_metrics": "autotuner",
    "filter_valid_configs": "autotuner",
    "generate_configs": "autotuner",
    "get_default_config": "autotuner",
    "tuned_configs_enabled": "autotuner",
    "use_tuned_configs": "autotuner",
    "BenchCase": "benchmark",
    "BenchmarkReport": "benchmark",
    "BenchmarkSuite": "benchmark",
    "CorrectnessVerifier": "benchmark",
    "CacheError": "exceptions",
    "CorrectnessError": "exceptions",
    "DeviceError": "exceptions",
    "DTypeError": "exceptions",
    "InvalidArgumentError": "exceptions",
    "LayoutError": "exceptions",
    "NumericalError": "exceptions",
    "ShapeError": "exceptions",
    "TritonOpsError": "exceptions",
    "TuningFailedError": "exceptions",
    "UnsupportedError": "exceptions",
    "fp8_gemm": "kernels.fp8_gemm",
    "fp8_weight_only_gemm": "kernels.fp8_gemm",
    "FP8Linear": "kernels.fp8_linear",
    "convert_to_fp8_linear": "kernels.fp8_linear",
    "FP8Quantizer": "kernels.fp8_quantize",
    "dequantize_fp8": "kernels.fp8_quantize",
    "quantize_fp8": "kernels.fp8_quantize",
    "FusedGatedMLP": "kernels.gated_mlp",
    "FusedMLP": "kernels.mlp",
    "PatchReport": "integrations",
    "patch_model": "integrations",
    "unpatch_model": "integrations",
    "FP8ColwiseParallel": "parallel",
    "FP8RowwiseParallel": "parallel",
    "FusedMLPParallel": "parallel",
    "GatedMLPColwiseParallel": "parallel",
    "ShardedRowNormParallel": "parallel",
    "load_full_state_dict": "parallel",
    "sharded_rmsnorm_rope": "parallel",
    "fused_gated_mlp": "kernels.gated_mlp",
    "fused_gated_mlp_fp8": "kernels.gated_mlp",
    "FusedAddRMSNorm": "kernels.rmsnorm",
    "fused_add_rmsnorm": "kernels.rmsnorm",
    "apply_rope": "kernels.rope",
    "FusedRMSNormRoPE": "kernels.rmsnorm_rope",
    "fused_rmsnorm_rope": "kernels.rmsnorm_rope",
    "BenchmarkRow": "models",
    "CorrectnessResult": "models",
    "KernelMetrics": "models",
    "TensorSpec": "models",
    "TuningResult": "models",
    "DevicePeaks": "performance",
    "PerformanceProfile": "performance",
    "device_peaks": "performance",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'triton_ops' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    # fused ops
    "fused_rmsnorm_rope",
    "FusedRMSNormRoPE",
    "fused_add_rmsnorm",
    "FusedAddRMSNorm",
    "apply_rope",
    "fused_gated_mlp",
    "fused_gated_mlp_fp8",
    "FusedGatedMLP",
    "FusedMLP",
    # model integration
    "patch_model",
    "unpatch_model",
    "PatchReport",
    # tensor parallelism
    "GatedMLPColwiseParallel",
    "FP8ColwiseParallel",
    "FP8RowwiseParallel",
    "FusedMLPParallel",
    "ShardedRowNormParallel",
    "sharded_rmsnorm_rope",
    "load_full_state_dict",
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
