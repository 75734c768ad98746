"""Regenerate docs/api.md from the public API's signatures and docstrings.

    python docs/gen_api.py

Every name in ``triton_ops.__all__`` gets a section: its kind, signature and docstring. Run it after
changing a public name; tests/test_public_api.py fails if a public name is missing from docs/api.md.
"""

from __future__ import annotations

import inspect
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # importable on machines without a GPU
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import triton_ops  # noqa: E402

GROUPS = [
    ("Fused ops", ["fused_rmsnorm_rope", "FusedRMSNormRoPE", "fused_add_rmsnorm", "FusedAddRMSNorm", "apply_rope",
                   "fused_gated_mlp", "fused_gated_mlp_fp8",
                   "FusedGatedMLP"]),
    ("FP8", ["quantize_fp8", "dequantize_fp8", "FP8Quantizer", "fp8_gemm", "fp8_weight_only_gemm", "FP8Linear",
             "convert_to_fp8_linear"]),
    ("Autotuning", ["TritonAutoTuner", "ConfigCache", "RMSNORM_ROPE_CONFIGS", "GATED_MLP_CONFIGS",
                    "FP8_GEMM_CONFIGS", "generate_configs", "filter_valid_configs", "get_default_config",
                    "compute_gemm_metrics", "compute_elementwise_metrics", "use_tuned_configs",
                    "tuned_configs_enabled"]),
    ("Model integration", ["patch_model", "unpatch_model", "PatchReport", "FusedMLP"]),
    ("Tensor parallelism", ["GatedMLPColwiseParallel", "FP8ColwiseParallel", "FP8RowwiseParallel",
                            "FusedMLPParallel", "ShardedRowNormParallel", "sharded_rmsnorm_rope",
                            "load_full_state_dict"]),
    ("Benchmarking", ["BenchmarkSuite", "BenchmarkReport", "BenchCase", "CorrectnessVerifier"]),
    ("Data models and metrics", ["TensorSpec", "KernelMetrics", "TuningResult", "CorrectnessResult",
                                 "BenchmarkRow", "PerformanceProfile", "DevicePeaks", "device_peaks"]),
    ("Errors", ["TritonOpsError", "ShapeError", "DTypeError", "DeviceError", "LayoutError",
                "InvalidArgumentError", "NumericalError", "UnsupportedError", "TuningFailedError",
                "CorrectnessError", "CacheError"]),
    ("Version", ["__version__"]),
]


def _section(name: str) -> str:
    obj = getattr(triton_ops, name)
    if isinstance(obj, type):
        bases = ", ".join(b.__name__ for b in obj.__bases__ if b is not object)
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            sig = "(...)"
        head = f"### `class {name}{sig}`" + (f"\n\nBases: `{bases}`" if bases else "")
        doc = inspect.getdoc(obj) or ""
        methods = []
        for mname, member in vars(obj).items():
            if mname.startswith("_") or not (inspect.isfunction(member) or isinstance(member, classmethod)):
                continue
            fn = member.__func__ if isinstance(member, classmethod) else member
            mdoc = (inspect.getdoc(fn) or "").split("\n\n")[0]
            methods.append(f"- `{mname}{inspect.signature(fn)}`" + (f": {mdoc}" if mdoc else ""))
        body = doc + ("\n\nMethods:\n\n" + "\n".join(methods) if methods else "")
    elif callable(obj):
        head = f"### `{name}{inspect.signature(obj)}`"
        body = inspect.getdoc(obj) or ""
    else:
        head = f"### `{name}`"
        body = f"```python\n{name} = {obj!r}\n```"
    return f"{head}\n\n{body}\n"


def main() -> None:
    listed = [n for _, names in GROUPS for n in names]
    missing = sorted(set(triton_ops.__all__) - set(listed))
    if missing:
        raise SystemExit(f"add these public names to a group in docs/gen_api.py: {missing}")
    parts = ["# API reference\n",
             "Everything public is importable from `triton_ops`. Generated from the docstrings by "
             "`python docs/gen_api.py`.\n"]
    for title, names in GROUPS:
        parts.append(f"## {title}\n")
        parts.extend(_section(n) for n in names)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "api.md")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
