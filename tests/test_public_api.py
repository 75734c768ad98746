"""The root package exports every public name, and the seed's Quick Start imports work."""

from __future__ import annotations

import triton_ops


def test_all_names_resolve():
    for name in triton_ops.__all__:
        assert getattr(triton_ops, name) is not None, name


def test_seed_imports():
    from triton_ops import (  # noqa: F401
        FP8Linear,
        FusedGatedMLP,
        FusedRMSNormRoPE,
        TritonAutoTuner,
        fp8_gemm,
        fused_gated_mlp,
        fused_rmsnorm_rope,
    )


def test_errors_derive_from_builtins():
    assert issubclass(triton_ops.ShapeError, ValueError)
    assert issubclass(triton_ops.DTypeError, TypeError)
    assert issubclass(triton_ops.DeviceError, RuntimeError)
    assert issubclass(triton_ops.TuningFailedError, RuntimeError)
    for name in ("ShapeError", "DTypeError", "DeviceError", "LayoutError", "InvalidArgumentError",
                 "NumericalError", "UnsupportedError", "TuningFailedError", "CorrectnessError", "CacheError"):
        assert issubclass(getattr(triton_ops, name), triton_ops.TritonOpsError)


def test_every_public_name_is_documented():
    import pathlib

    api = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    missing = [n for n in triton_ops.__all__ if f"### `{n}" not in api and f"### `class {n}" not in api]
    assert not missing, f"regenerate docs/api.md (python docs/gen_api.py); missing: {missing}"


def test_compute_references_need_neither_torch_nor_triton():
    import subprocess
    import sys

    code = ("import sys, triton_ops.compute, triton_ops.exceptions; "
            "assert 'triton' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
