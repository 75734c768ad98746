"""`triton-ops bench host` on a CPU (Python-side cost, launches skipped) and `bench model`'s GPU guard."""

from __future__ import annotations

import pytest
import torch

from triton_ops.benchmark.host import host_markdown, run_host_bench
from triton_ops.exceptions import DeviceError


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU mode of bench host")
def test_host_bench_cpu_mode_reports_python_cost():
    rows = run_host_bench("cpu", select=["fused_rmsnorm_rope", "torch.add"])
    systems = {r["system"] for r in rows}
    assert {"torch.add", "fused_rmsnorm_rope", "fused_rmsnorm_rope (Parameter weights)"} <= systems
    assert all(r.get("status") != "FAILED" for r in rows), rows
    assert all(0 < r["host_us"] < 10_000 for r in rows)
    assert "kernels not launched" in host_markdown(rows, gpu=False)


def test_model_bench_needs_a_gpu():
    if torch.cuda.is_available():
        # what is tested is the refusal without a GPU; with one the bench runs (gpu_run.sh's model section)
        pytest.skip("has a GPU")
    from triton_ops.benchmark.model import run_model_bench

    with pytest.raises(DeviceError):
        run_model_bench("cpu")
