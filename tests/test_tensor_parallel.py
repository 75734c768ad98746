"""Tensor parallelism on the CPU: groups of 2 (and 4) processes over gloo, kernels in Triton's interpreter.

Every sharded module's output is compared with the unsharded module's (tests/_tp_cases.py builds both
in each rank from the same seed; the tolerances and where they come from are in its docstring), and tiny
Hugging Face models (Llama, Qwen3, OLMo2), sharded with ``parallelize_module(model, mesh,
tp_plan(model))`` and then patched, give the unsharded model's logits and greedy tokens. One group of
processes runs all cases of a world size (starting a process costs ~4 s of imports), and each case is
reported by its own test below.

Processes are spawned (``TRITON_INTERPRET=1`` is set in each before triton_ops is imported) and meet
through a ``file://`` rendezvous in a fresh temporary directory, so concurrent runs never share a port.
"""

from __future__ import annotations

import importlib.util

import pytest

from ._tp_runner import run_group

#: (case, args) run by 2 processes.
CASES_2 = [
    ("gated_mlp", ["float32"]), ("gated_mlp", ["float16"]), ("gated_mlp_fp8", []), ("fp8_linear", []),
    ("fused_mlp", ["0"]), ("fused_mlp", ["1"]), ("fused_mlp_fp8_sharded_after", []), ("norms", []),
    ("load_full_state_dict", []),
    ("hf", ["llama"]), ("hf", ["qwen3"]), ("hf", ["olmo2"]), ("hf", ["qwen3", "1"]), ("hf", ["olmo2", "1"]),
]
#: The cheaper cases again with 4 processes (uneven head/kv splits and 4-way reductions).
CASES_4 = [("gated_mlp", ["float32"]), ("fused_mlp", ["0"]), ("norms", []), ("hf", ["olmo2"])]


def _key(name, args):
    return f"{name}{tuple(args)}"


def _check(results: dict, key: str) -> None:
    assert "_group" not in results, results["_group"]["errors"]
    assert key in results, f"{key} produced no result: {sorted(results)}"
    res = results[key]
    assert not res["errors"], "\n".join(res["errors"])
    assert res["checks"], f"{key} ran no check"
    failed = []
    for name, value, op, bound in res["checks"]:
        ok = {"<=": value <= bound, ">=": value >= bound, "==": value == bound}[op]
        if not ok:
            failed.append(f"{name}: {value} (expected {op} {bound})")
    assert not failed, "\n".join(failed)


def _interpreter_runs_gemms() -> None:
    """Skip (with the reason) where Triton's interpreter cannot run the persistent GEMM kernels: numpy >=
    2.3, which the package's own requirements exclude but a preinstalled environment may carry. The
    kernels then raise UnsupportedError naming the fix (test_launch checks that message)."""
    import numpy as np

    if tuple(int(v) for v in np.__version__.split(".")[:2]) >= (2, 3):
        pytest.skip(f"the ranks run Triton's interpreter, which needs numpy < 2.3 (numpy {np.__version__} here)")


@pytest.fixture(scope="module")
def world2():
    _interpreter_runs_gemms()
    return run_group(2, CASES_2)


@pytest.fixture(scope="module")
def world4():
    _interpreter_runs_gemms()
    return run_group(4, CASES_4)


@pytest.mark.parametrize("case", CASES_2, ids=lambda c: _key(*c))
def test_two_ranks(world2, case):
    _check(world2, _key(*case))


@pytest.mark.parametrize("case", CASES_4, ids=lambda c: _key(*c))
def test_four_ranks(world4, case):
    _check(world4, _key(*case))


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None,
                    reason="transformers' from_pretrained(tp_plan=...) needs the accelerate package")
def test_hf_tp_plan_auto_then_patch(tmp_path):
    """transformers' own tensor-parallel loading (a tiny Llama saved to a temp dir, loaded with
    ``tp_plan="auto"`` on 2 gloo ranks), then patch_model: same parts, unsharded logits."""
    import torch

    from ._tp_cases import _hf_model

    _interpreter_runs_gemms()
    model = _hf_model("llama", 2)
    model.save_pretrained(tmp_path)
    del model
    torch.manual_seed(0)
    results = run_group(2, [("hf_tp_plan_auto", ["llama", str(tmp_path)])])
    _check(results, _key("hf_tp_plan_auto", ["llama", str(tmp_path)]))


def test_a_wrong_result_fails_the_check():
    """The checker itself: a value past its bound, an error on a rank and a missing case all fail."""
    bad = {"c()": {"checks": [["rank 0: out", 0.5, "<=", 1e-5]], "errors": []}}
    with pytest.raises(AssertionError, match="out"):
        _check(bad, "c()")
    with pytest.raises(AssertionError, match="boom"):
        _check({"c()": {"checks": [], "errors": ["rank 1: boom"]}}, "c()")
    with pytest.raises(AssertionError, match="no result"):
        _check({}, "c()")


def test_tp_bench_script_imports_and_refuses_without_torchrun(monkeypatch):
    """benchmarks/scripts/tp_bench.py (the 2-GPU benchmark) imports on a CPU machine and says how to run it."""
    import importlib.util as iu
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "scripts", "tp_bench.py")
    spec = iu.spec_from_file_location("tp_bench", path)
    mod = iu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"):
        assert k in os.environ
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit, match="torchrun"):
        mod.main([])
