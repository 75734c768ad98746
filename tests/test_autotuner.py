"""Autotuner: config spaces, the tuner on CPU callables and on an interpreted Triton kernel, metrics,
and the opt-in runtime switch."""

from __future__ import annotations

import math
import os
import time

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import given
from hypothesis import strategies as st

from triton_ops.autotuner import (
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
)
from triton_ops.autotuner import runtime as rt
from triton_ops.exceptions import InvalidArgumentError, TritonOpsError, TuningFailedError
from triton_ops.models import KernelMetrics, TuningResult
from triton_ops.performance import DevicePeaks, PerformanceProfile

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _no_default_cache_dir(monkeypatch):
    # tuners built with cache_dir=None must not write into a developer's real cache
    monkeypatch.delenv("TRITON_OPS_CACHE_DIR", raising=False)


# ---------------------------------------------------------------------------------------------- configs


def test_generate_configs_is_the_full_product_in_stable_order():
    cfgs = generate_configs({"A": [1, 2], "B": ["x", "y", "z"]})
    assert cfgs == [{"A": a, "B": b} for a in (1, 2) for b in ("x", "y", "z")]
    assert generate_configs({}) == [{}]
    assert len(generate_configs(GATED_MLP_CONFIGS)) == 3 * 2 * 2 * 1 * 2 * 2


@pytest.mark.parametrize("bad", [{"A": []}, {"A": 3}, {"A": "abc"}, [("A", [1])], {1: [1]}])
def test_generate_configs_rejects_bad_spaces(bad):
    with pytest.raises(InvalidArgumentError):
        generate_configs(bad)


@given(st.dictionaries(st.sampled_from(["A", "B", "C"]), st.lists(st.integers(1, 9), min_size=1, max_size=4),
                       min_size=1))
def test_generate_configs_property(space):
    cfgs = generate_configs(space)
    n = 1
    for v in space.values():
        n *= len(v)
    assert len(cfgs) == n
    for c in cfgs:
        assert set(c) == set(space) and all(c[k] in space[k] for k in space)


@pytest.mark.parametrize("kind,space", [("rmsnorm_rope", RMSNORM_ROPE_CONFIGS),
                                        ("gated_mlp", GATED_MLP_CONFIGS), ("fp8_gemm", FP8_GEMM_CONFIGS)])
def test_default_config_lies_in_its_space(kind, space):
    d = get_default_config(kind)
    assert set(d) == set(space)
    assert all(d[k] in space[k] for k in space)
    d["num_warps"] = 999  # a copy: the module's default is unchanged
    assert get_default_config(kind)["num_warps"] != 999


def test_default_config_aliases_and_unknown():
    assert get_default_config("fp8") == get_default_config("fp8_gemm")
    with pytest.raises(InvalidArgumentError, match="no default config"):
        get_default_config("conv2d")
    with pytest.raises(ValueError):  # also the builtin a user would catch
        get_default_config("conv2d")


def test_filter_valid_configs_caps_tiles_to_the_problem():
    cfgs = generate_configs(FP8_GEMM_CONFIGS)
    small = filter_valid_configs(cfgs, M=40, N=4096, K=4096, dtype_bytes=1)
    assert small and all(c["BLOCK_M"] <= 64 for c in small)  # next power of two of 40
    big = filter_valid_configs(cfgs, M=8192, N=8192, K=8192, dtype_bytes=1)
    # 4 stages of 128x128 (A) + 128x256 (B) FP8 tiles = 4 * 49152 B = 192 KiB: fits in 227 KiB
    assert any(c["BLOCK_N"] == 256 and c["num_stages"] == 4 and c["BLOCK_M"] == 128 for c in big)
    big16 = filter_valid_configs(cfgs, M=8192, N=8192, K=8192, dtype_bytes=2)
    # the same tiles in fp16 need 384 KiB: dropped
    assert not any(c["BLOCK_N"] == 256 and c["BLOCK_K"] == 128 and c["num_stages"] == 4 for c in big16)


def test_filter_valid_configs_gated_counts_two_weight_tiles():
    big = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_stages": 5}
    small = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_stages": 3}
    # 5 * (128*64 + 128*64) * 2 B = 160 KiB for a plain GEMM; 5 * (128*64 + 2*128*64) * 2 B = 240 KiB gated
    assert filter_valid_configs([big, small], M=4096, N=4096, K=4096) == [big, small]
    assert filter_valid_configs([big, small], M=4096, hidden_dim=4096, intermediate_dim=14336) == [small]


def test_filter_valid_configs_rowwise_and_fallback():
    cfgs = generate_configs(RMSNORM_ROPE_CONFIGS)
    kept = filter_valid_configs(cfgs, hidden_dim=1000)
    assert kept and all(c["BLOCK_SIZE"] <= 1024 for c in kept)
    assert all(c["BLOCK_SIZE"] >= 32 * c["num_warps"] for c in kept)
    # nothing fits a 1-element problem except by falling back to the smallest config
    tiny = filter_valid_configs([{"BLOCK_M": 64, "BLOCK_N": 64}, {"BLOCK_M": 32, "BLOCK_N": 32}], M=1, N=1)
    assert tiny == [{"BLOCK_M": 32, "BLOCK_N": 32}]
    assert filter_valid_configs([], M=5) == []


# ---------------------------------------------------------------------------------------------- tuner


def dummy_kernel(x, BLOCK_SIZE=64, num_warps=4):
    return x * 2


def test_seed_example_runs_on_this_machine(tmp_path):
    tuner = TritonAutoTuner(
        kernel_fn=dummy_kernel,
        config_space={"BLOCK_SIZE": [64, 128], "num_warps": [4, 8]},
        warmup_runs=2,
        benchmark_runs=5,
        cache_dir=str(tmp_path),
    )
    x = torch.randn(1024, device=DEVICE)
    dev = "cuda:0" if DEVICE == "cuda" else "cpu"
    result = tuner.tune(x, problem_size=(1024,), device=dev, kernel_type="dummy")
    assert isinstance(result, TuningResult)
    assert result.best_config in generate_configs(tuner.config_space)
    assert isinstance(result.metrics, KernelMetrics) and result.metrics.latency_ms > 0
    assert len(result.all_results) == 4 and all(m is not None for _, m in result.all_results)
    assert result.metrics.latency_ms == min(m.latency_ms for _, m in result.all_results)
    assert result.problem_size == (1024,) and result.device == dev
    assert ConfigCache(tmp_path).get("dummy", (1024,), dev) == result.best_config


def _sleeper(calls):
    # latencies 12 ms, 1 ms, 6 ms: the tuner must pick the middle config (gaps wide enough that a loaded
    # machine, e.g. tests run in parallel, cannot reorder the medians)
    delay = {1: 12e-3, 2: 1e-3, 3: 6e-3}

    def fn(x, CFG=1):
        calls.append(CFG)
        time.sleep(delay[CFG])
        return x

    return fn


def test_tuner_keeps_the_lowest_latency_and_caches():
    calls: list[int] = []
    tuner = TritonAutoTuner(_sleeper(calls), {"CFG": [1, 2, 3]}, warmup_runs=1, benchmark_runs=3)
    res = tuner.tune(torch.ones(3), problem_size=(3,), device="cpu", kernel_type="sleepy")
    assert res.best_config == {"CFG": 2}
    lat = {c["CFG"]: m.latency_ms for c, m in res.all_results}
    assert lat[2] < lat[3] < lat[1]
    assert 0.9 < lat[2] < 50.0  # sleep never returns early; the upper bound allows for a busy machine
    assert calls.count(1) == 1 + 3  # first (compile/verify) run + 3 timed; warmup_runs=1 includes the first
    n = len(calls)
    again = tuner.tune(torch.ones(3), problem_size=(3,), device="cpu", kernel_type="sleepy")
    assert len(calls) == n  # answered from the cache, nothing ran
    assert again.best_config == {"CFG": 2} and again.all_results == []
    assert again.metrics.latency_ms == pytest.approx(res.metrics.latency_ms)
    forced = tuner.tune(torch.ones(3), problem_size=(3,), device="cpu", kernel_type="sleepy", force=True)
    assert len(calls) > n and forced.best_config == {"CFG": 2}


def test_cached_result_is_identical_to_the_fresh_one(tmp_path):
    """Tuple-valued parameters (e.g. a tile shape) come back from the cache, in memory or through the
    file, exactly as the fresh search returned them."""
    def fn(x, TILE=(16, 16), ORDER=None):
        return x

    space = {"TILE": [(16, 16), (32, 64)], "ORDER": [[0, 1]]}
    fresh = TritonAutoTuner(fn, space, warmup_runs=0, benchmark_runs=1, cache_dir=str(tmp_path))
    res = fresh.tune(torch.ones(2), problem_size=(2,), device="cpu", kernel_type="tiles")
    for tuner in (fresh, TritonAutoTuner(fn, space, warmup_runs=0, benchmark_runs=1, cache_dir=str(tmp_path))):
        again = tuner.tune(torch.ones(2), problem_size=(2,), device="cpu", kernel_type="tiles")
        assert again.all_results == []  # from the cache
        assert again.best_config == res.best_config
        assert type(again.best_config["TILE"]) is tuple and type(again.best_config["ORDER"]) is list


def test_cached_entry_with_a_bad_latency_still_answers(tmp_path):
    c = ConfigCache(tmp_path)
    c.set("k", (2,), "cpu", {"A": 1}, metrics={"latency_ms": 1.0})
    path = tmp_path / "configs-k.json"
    path.write_text(path.read_text().replace('"latency_ms": 1.0', '"latency_ms": "fast"'))
    tuner = TritonAutoTuner(lambda x, A=0: x, {"A": [1, 2]}, warmup_runs=0, benchmark_runs=1,
                            cache=ConfigCache(tmp_path))
    res = tuner.tune(torch.ones(2), problem_size=(2,), device="cpu", kernel_type="k")
    assert res.best_config == {"A": 1} and res.all_results == [] and math.isnan(res.metrics.latency_ms)


def test_tuner_without_problem_size_does_not_cache():
    cache = ConfigCache()
    tuner = TritonAutoTuner(dummy_kernel, {"BLOCK_SIZE": [1, 2]}, warmup_runs=0, benchmark_runs=1,
                            cache=cache)
    res = tuner.tune(torch.ones(4), device="cpu")
    assert res.problem_size is None and len(cache) == 0
    res = tuner.tune(torch.ones(4), problem_size=(4,))  # no device: not cached either
    assert len(cache) == 0 and res.device is None


def test_failing_configs_are_scored_failed_and_the_rest_still_run():
    def kernel(x, BLOCK=1):
        if BLOCK == 2:
            raise RuntimeError("out of resources: shared memory")
        if BLOCK == 3:
            raise ValueError("does not compile")
        return x + 1

    tuner = TritonAutoTuner(kernel, {"BLOCK": [1, 2, 3, 4]}, warmup_runs=0, benchmark_runs=2)
    res = tuner.tune(torch.zeros(2) + 1, device="cpu")
    failed = [c["BLOCK"] for c, m in res.all_results if m is None]
    assert failed == [2, 3]
    assert res.best_config["BLOCK"] in (1, 4)


def test_all_configs_failing_raises_tuning_failed():
    def kernel(x, BLOCK=1):
        raise RuntimeError(f"no luck with {BLOCK}")

    cache = ConfigCache()
    tuner = TritonAutoTuner(kernel, {"BLOCK": [16, 32]}, warmup_runs=0, benchmark_runs=1, cache=cache)
    with pytest.raises(TuningFailedError, match="no luck with 32") as ei:
        tuner.tune(torch.ones(1), problem_size=(1,), device="cpu", kernel_type="bad")
    assert isinstance(ei.value, TritonOpsError) and isinstance(ei.value, RuntimeError)
    assert "all 2 configs" in str(ei.value)
    assert cache.get("bad", (1,), "cpu") is None


def test_verify_rejects_wrong_configs():
    def kernel(x, SCALE=1):
        return x * SCALE

    x = torch.randn(8) + 3
    verify = lambda out, cfg: torch.allclose(out, x)
    tuner = TritonAutoTuner(kernel, {"SCALE": [2, 1, 3]}, warmup_runs=0, benchmark_runs=1, verify=verify)
    res = tuner.tune(x, device="cpu")
    assert res.best_config == {"SCALE": 1}
    assert [m is None for _, m in res.all_results] == [True, False, True]


@pytest.mark.parametrize("kwargs", [dict(warmup_runs=-1), dict(benchmark_runs=0), dict(benchmark_runs=1.5),
                                    dict(warmup_runs=True)])
def test_tuner_rejects_bad_run_counts(kwargs):
    with pytest.raises(InvalidArgumentError):
        TritonAutoTuner(dummy_kernel, {"A": [1]}, **kwargs)


def test_tuner_rejects_bad_kernel_and_space():
    with pytest.raises(InvalidArgumentError):
        TritonAutoTuner("not callable", {"A": [1]})
    with pytest.raises(InvalidArgumentError):
        TritonAutoTuner(dummy_kernel, {"A": []})
    tuner = TritonAutoTuner(dummy_kernel, {"A": [1]})
    with pytest.raises(InvalidArgumentError):
        tuner.tune(torch.ones(1), device="cpu", configs=[])


def test_tuner_metrics_from_profile():
    peaks = DevicePeaks("test", mem_gbps=100.0, fp32_tflops=1.0, fp16_tflops=2.0, fp8_tflops=None)
    prof = PerformanceProfile.elementwise(1 << 20, dtype=torch.float32, peaks=peaks)
    tuner = TritonAutoTuner(dummy_kernel, {"BLOCK_SIZE": [1]}, warmup_runs=0, benchmark_runs=2, profile=prof)
    res = tuner.tune(torch.ones(16), device="cpu")
    m = res.metrics
    assert m.bandwidth_gbps == pytest.approx(8 * (1 << 20) / (m.latency_ms * 1e-3) / 1e9)
    assert m.bandwidth_utilization == pytest.approx(m.bandwidth_gbps / 100.0)


def test_compute_metrics_helpers():
    m = compute_gemm_metrics(4096, 4096, 4096, 1.0)
    assert m.throughput_tflops == pytest.approx(2 * 4096**3 / 1e-3 / 1e12)
    assert m.bandwidth_gbps == pytest.approx(3 * 4096 * 4096 * 2 / 1e-3 / 1e9)
    m8 = compute_gemm_metrics(128, 256, 512, 0.5, dtype=torch.float8_e4m3fn, out_dtype=torch.bfloat16)
    assert m8.bandwidth_gbps == pytest.approx(((128 * 512 + 512 * 256) + 128 * 256 * 2) / 0.5e-3 / 1e9)
    e = compute_elementwise_metrics(1000, 0.01, dtype=torch.float16)
    assert e.bandwidth_gbps == pytest.approx(1000 * 4 / 1e-5 / 1e9)
    e2 = compute_elementwise_metrics(1000, 0.01, bytes_moved=1e6)
    assert e2.bandwidth_gbps == pytest.approx(100.0)
    assert e2.throughput_tflops is None


@pytest.mark.parametrize("call, match", [
    (lambda: compute_gemm_metrics(-1, 4, 4, 1.0), "M must be >= 0, got -1"),
    (lambda: compute_gemm_metrics(4, 4.5, 4, 1.0), "N must be an int, got float 4.5"),
    (lambda: compute_gemm_metrics(4, 4, "4", 1.0), "K must be an int"),
    (lambda: compute_gemm_metrics(4, 4, 4, -1.0), "latency_ms must be a finite time >= 0, got -1.0"),
    (lambda: compute_gemm_metrics(4, 4, 4, float("nan")), "latency_ms must be a finite time"),
    (lambda: compute_gemm_metrics(4, 4, 4, 1.0, bytes_moved=-8), "bytes_moved must be a finite non-negative"),
    (lambda: compute_elementwise_metrics(-10, 1.0), "numel must be >= 0, got -10"),
    (lambda: compute_elementwise_metrics(10, float("inf")), "latency_ms"),
    (lambda: compute_elementwise_metrics(10, "fast"), "latency_ms must be a number, got 'fast'"),
    (lambda: compute_elementwise_metrics(10, 1.0, bytes_per_element=-2), "bytes_per_element"),
    (lambda: compute_elementwise_metrics(10, 1.0, flops_per_element=float("nan")), "flops_per_element"),
    (lambda: PerformanceProfile("gemm", flops=-1.0), "flops must be a finite non-negative"),
    (lambda: PerformanceProfile.latency_only().metrics(-0.5), "latency_ms"),
    (lambda: PerformanceProfile.elementwise(10).gbps(-1), "latency_ms"),
    (lambda: PerformanceProfile.elementwise(10).tflops(True), "latency_ms must be a number"),
])
def test_metrics_refuse_negative_sizes_and_times(call, match):
    with pytest.raises(TritonOpsError, match=match) as exc:
        call()
    assert isinstance(exc.value, ValueError)


def test_metrics_edge_values_are_fine():
    import numpy as np

    assert compute_gemm_metrics(0, 4, 4, 1.0).throughput_tflops is None  # no work: no throughput
    assert compute_elementwise_metrics(10, 0.0).bandwidth_gbps is None  # too fast to measure
    m = compute_gemm_metrics(np.int64(64), 64, 64, np.float32(0.5))
    assert m.throughput_tflops == pytest.approx(2 * 64**3 / 0.5e-3 / 1e12)


def test_device_peaks_refuses_a_bad_device_name():
    from triton_ops.exceptions import DeviceError
    from triton_ops.performance import device_peaks

    with pytest.raises(DeviceError, match="'gpu' is not a device name"):
        device_peaks("gpu")
    assert device_peaks("cpu").name == "unknown"


@triton.jit
def _scale_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * 3.0, mask=mask)


def _scale(x, BLOCK=32, num_warps=1):
    y = torch.full_like(x, float("nan"))  # poisoned: an unwritten element fails verify
    _scale_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, y, x.numel(), BLOCK=BLOCK, num_warps=num_warps)
    return y


def test_tuner_on_a_triton_kernel_with_an_uncompilable_config():
    x = torch.randn(199, device=DEVICE)
    verify = lambda out, cfg: torch.allclose(out, x * 3.0)
    tuner = TritonAutoTuner(_scale, {"BLOCK": [32, 96, 256], "num_warps": [1, 2]}, warmup_runs=1,
                            benchmark_runs=2, verify=verify)
    res = tuner.tune(x, device=DEVICE)
    failed = {c["BLOCK"] for c, m in res.all_results if m is None}
    assert failed == {96}  # tl.arange needs a power of two
    assert res.best_config["BLOCK"] in (32, 256)


# ------------------------------------------------------------------------------------------ runtime switch


@pytest.fixture
def runtime_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_OPS_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_OPS_USE_TUNED", raising=False)
    rt.use_tuned_configs(None)
    ConfigCache(tmp_path).set("axpy", (4096,), rt.device_key(DEVICE), {"BLOCK": 512, "EXTRA": 1})
    yield tmp_path
    rt.use_tuned_configs(None)


def test_lookup_is_off_by_default(runtime_cache):
    assert not rt.tuned_configs_enabled()
    assert rt.lookup("axpy", (4096,), DEVICE) is None
    assert rt.resolve("axpy", (4096,), DEVICE, {"BLOCK": 128}) == {"BLOCK": 128}


def test_use_tuned_configs_switch_and_context(runtime_cache):
    rt.use_tuned_configs()
    assert rt.lookup("axpy", (4096,), torch.device(DEVICE)) == {"BLOCK": 512, "EXTRA": 1}
    assert rt.lookup("axpy", (2048,), DEVICE) is None  # not tuned
    # only keys the launcher's default has are taken
    got = rt.resolve("axpy", (4096,), DEVICE, {"BLOCK": 128, "num_warps": 4})
    assert got == {"BLOCK": 512, "num_warps": 4}
    rt.use_tuned_configs(False)
    with rt.use_tuned_configs():
        assert rt.tuned_configs_enabled()
    assert not rt.tuned_configs_enabled()
    with pytest.raises(InvalidArgumentError):
        rt.use_tuned_configs("yes")


def test_env_var_switch(runtime_cache, monkeypatch):
    monkeypatch.setenv("TRITON_OPS_USE_TUNED", "1")
    assert rt.lookup("axpy", (4096,), DEVICE) is None  # read at import (one flag test per launch) ...
    rt.use_tuned_configs(None)  # ... and when asked to follow the environment again
    assert rt.ENABLED and rt.tuned_configs_enabled()
    assert rt.lookup("axpy", (4096,), DEVICE) == {"BLOCK": 512, "EXTRA": 1}
    rt.use_tuned_configs(False)  # the function call wins over the environment
    assert not rt.ENABLED
    assert rt.lookup("axpy", (4096,), DEVICE) is None


def test_env_var_read_at_import(tmp_path):
    import subprocess
    import sys

    code = "import triton_ops.autotuner.runtime as rt; print(rt.ENABLED, rt.tuned_configs_enabled())"
    for value, want in (("1", "True True"), ("0", "False False"), ("", "False False")):
        env = dict(os.environ, TRITON_OPS_USE_TUNED=value, TRITON_INTERPRET="1")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == want, out.stderr[-2000:]


def test_lookup_any_device_spelling_and_remembered(runtime_cache, monkeypatch):
    rt.use_tuned_configs()
    for dev in (DEVICE, torch.device(DEVICE), rt.device_key(DEVICE)):
        assert rt.lookup("axpy", (4096,), dev) == {"BLOCK": 512, "EXTRA": 1}
        assert rt.lookup("axpy", [4096], dev) == {"BLOCK": 512, "EXTRA": 1}
    # a result is remembered for LOOKUP_TTL_S: a write by another instance shows after that, or at
    # once after forget_lookups() / a switch call
    ConfigCache(runtime_cache).set("axpy", (4096,), DEVICE, {"BLOCK": 1024})
    clock = [time.monotonic()]
    monkeypatch.setattr(rt.time, "monotonic", lambda: clock[0])
    assert rt.lookup("axpy", (4096,), DEVICE) == {"BLOCK": 512, "EXTRA": 1}
    clock[0] += rt.LOOKUP_TTL_S + 0.01
    assert rt.lookup("axpy", (4096,), DEVICE) == {"BLOCK": 1024}
    ConfigCache(runtime_cache).set("axpy", (4096,), DEVICE, {"BLOCK": 64})
    rt.forget_lookups()
    assert rt.lookup("axpy", (4096,), DEVICE) == {"BLOCK": 64}
    got = rt.lookup("axpy", (4096,), DEVICE)
    got["BLOCK"] = 7  # callers get a copy of the remembered config
    assert rt.lookup("axpy", (4096,), DEVICE) == {"BLOCK": 64}
    assert rt.lookup("axpy", (2048,), DEVICE) is None  # misses are remembered too, and stay misses


def test_disabled_lookup_is_one_flag_test(runtime_cache, monkeypatch):
    rt.use_tuned_configs(False)
    monkeypatch.setattr(rt, "default_cache", lambda: pytest.fail("the cache must not be touched when off"))
    monkeypatch.setattr(rt, "device_key", lambda d: pytest.fail("nor the device key computed"))
    assert rt.lookup("axpy", (4096,), DEVICE) is None
    assert rt.resolve("axpy", (4096,), DEVICE, {"BLOCK": 128}) == {"BLOCK": 128}


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("TRITON_OPS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert rt.default_cache_dir() == tmp_path / "triton_ops"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(rt.default_cache_dir()).endswith(".cache/triton_ops")
    monkeypatch.setenv("TRITON_OPS_CACHE_DIR", str(tmp_path / "x"))
    assert rt.default_cache_dir() == tmp_path / "x"
    assert rt.default_cache().cache_dir == tmp_path / "x"


def test_device_key():
    assert rt.device_key("cpu") == "cpu"
    assert rt.device_key(torch.device("cuda", 1)) == "cuda:1"
    assert rt.device_key("cuda").startswith("cuda:")
    assert rt.device_key("cuda") == rt.device_key(torch.device("cuda")) == rt.device_key(rt.device_key("cuda"))


def test_time_budget_stops_after_first_success():
    calls = []

    def fn(x, A=0):
        calls.append(A)
        if A == 0:
            raise RuntimeError("does not compile")
        time.sleep(0.02)
        return x

    tuner = TritonAutoTuner(fn, {"A": [0, 1, 2, 3, 4]}, warmup_runs=0, benchmark_runs=1)
    res = tuner.tune(torch.ones(2), time_budget_s=0.0)
    # the failing config does not count as a success; the first success ends a zero budget
    assert [c["A"] for c, _ in res.all_results] == [0, 1]
    assert res.best_config == {"A": 1}
    res = tuner.tune(torch.ones(2), time_budget_s=60.0)
    assert len(res.all_results) == 5


@pytest.mark.gpu
def test_tuner_times_with_cuda_events_on_gpu(tmp_path):
    # 64 MiB in, 64 MiB out: ~40 us at 3 TB/s, long enough for CUDA-event timing to be meaningful
    x = torch.randn(16 * 1024 * 1024, device="cuda")
    verify = lambda out, cfg: torch.allclose(out, x * 3.0)
    tuner = TritonAutoTuner(_scale, {"BLOCK": [256, 1024, 4096], "num_warps": [4, 8]}, warmup_runs=3,
                            benchmark_runs=20, cache_dir=str(tmp_path), verify=verify,
                            profile=PerformanceProfile.elementwise(x.numel(), dtype=torch.float32))
    res = tuner.tune(x, problem_size=(x.numel(),), device="cuda:0", kernel_type="scale3")
    assert all(m is not None for _, m in res.all_results)
    m = res.metrics
    assert 0.005 < m.latency_ms < 5.0
    # bytes / time must stay below any GPU's bandwidth (H200: 4.8 TB/s datasheet)
    assert 100.0 < m.bandwidth_gbps < 5000.0
    entry = ConfigCache(tmp_path).get_entry("scale3", (x.numel(),), "cuda:0")
    assert entry["env"]["gpu"] == torch.cuda.get_device_name(0)
    rt.use_tuned_configs(True)
    try:
        assert rt.lookup("scale3", (x.numel(),), x.device) is None  # another cache dir: not visible
    finally:
        rt.use_tuned_configs(None)


# ------------------------------------------------------------------------------------------ tuned-config checks


@pytest.fixture
def fresh_warnings(monkeypatch):
    """validate_tuned warns once per entry and process: forget earlier tests' warnings."""
    monkeypatch.setattr(rt, "_warned", set())


def _validate(tuned, default, allowed=None, size=(8,)):
    return rt.validate_tuned("k", size, "cpu", tuned, default, allowed)


@pytest.mark.parametrize("tuned, allowed", [
    ({"W": 3}, {"W": (1, 2, 4)}),
    ({"W": True}, {"W": (1, 2, 4)}),  # True == 1 in Python, not here
    ({"W": 4.0}, {"W": (1, 2, 4)}),  # 4.0 == 4 in Python, not here
    ({"W": [1, 2]}, {"W": ((1, 2),)}),  # a list is not the tuple the launcher accepts
    ({"W": 0}, {"W": rt.tuned_int(1, 8)}),
    ({"W": 16}, {"W": rt.tuned_int(1, 8)}),
    ({"W": 6}, {"W": rt.tuned_int(1, 8, power_of_two=True)}),
    ({"W": "4"}, {"W": rt.tuned_int(1, 8)}),
    ({"W": 2}, {"W": lambda v: 1 / 0}),  # a rule that raises rejects
    ({"W": {"a": 1}}, {"W": {1, 2}}),  # unhashable against a set: rejected, not a TypeError
    ({"W": 2, "name": "nope"}, {"name": ("a", "b")}),  # one bad value rejects the whole entry
])
def test_invalid_tuned_values_give_the_default(fresh_warnings, tuned, allowed):
    default = {"W": 4, "name": "a"}
    with pytest.warns(RuntimeWarning, match="ignoring the tuned config of k for problem \\(8,\\) on cpu"):
        assert _validate(tuned, default, allowed) == default


@pytest.mark.parametrize("tuned, default", [
    ({"G": 0}, {"G": 8}), ({"G": -1}, {"G": 8}), ({"G": "8"}, {"G": 8}), ({"G": 4.5}, {"G": 8}),
    ({"G": 64.0}, {"G": 8}), ({"G": None}, {"G": 8}), ({"G": True}, {"G": 8}), ({"F": 1}, {"F": False}),
    ({"S": 1}, {"S": "name"}), ({"A": math.nan}, {"A": 0.5}), ({"A": "x"}, {"A": 0.5}),
    ({"T": [1, 2]}, {"T": (1, 2)}),
])
def test_without_rules_values_must_match_the_defaults_kind(fresh_warnings, tuned, default):
    with pytest.warns(RuntimeWarning, match="expected"):
        assert _validate(tuned, default) == default


def test_valid_tuned_values_are_taken(fresh_warnings):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _validate({"W": 2, "X": 1}, {"W": 4, "name": "a"}, {"W": (1, 2, 4)}) == {"W": 2, "name": "a"}
        assert _validate({"W": 8}, {"W": 4}, {"W": rt.tuned_int(1, 8, power_of_two=True)}) == {"W": 8}
        assert _validate({"G": 16, "A": 2, "S": "b", "T": (3, 4)}, {"G": 8, "A": 0.5, "S": "a", "T": (1, 2)}) \
            == {"G": 16, "A": 2, "S": "b", "T": (3, 4)}
        assert _validate({"E": 0}, {"E": 0}) == {"E": 0}  # a non-positive default: any int
        assert _validate({"N": "anything"}, {"N": None}) == {"N": "anything"}  # None: the launcher checks
        assert _validate(None, {"W": 4}) == {"W": 4} and _validate({}, {"W": 4}) == {"W": 4}


def test_one_warning_per_entry(fresh_warnings):
    import warnings

    with pytest.warns(RuntimeWarning) as rec:
        for _ in range(3):
            _validate({"G": 0}, {"G": 8})
        _validate({"G": 0}, {"G": 8}, size=(9,))  # another entry: its own warning
    assert len(rec) == 2
    assert "G=0 (expected a positive int)" in str(rec[0].message)
    assert "triton-ops cache clear k" in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _validate({"G": 0}, {"G": 8})


def test_resolve_ignores_a_hand_edited_entry(runtime_cache, fresh_warnings):
    path = runtime_cache / "configs-axpy.json"
    path.write_text(path.read_text().replace('"BLOCK": 512', '"BLOCK": -512'))
    rt.use_tuned_configs()
    with pytest.warns(RuntimeWarning, match="BLOCK=-512"):
        assert rt.resolve("axpy", (4096,), DEVICE, {"BLOCK": 128}) == {"BLOCK": 128}
    rt.forget_lookups()  # asked again from the cache: still ignored, not warned again
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rt.resolve("axpy", (4096,), DEVICE, {"BLOCK": 128}) == {"BLOCK": 128}
        assert rt.resolve("axpy", (4096,), DEVICE, {"BLOCK": 128}, allowed={"BLOCK": lambda v: True}) \
            == {"BLOCK": -512}  # the launcher's own rule decides


@pytest.mark.parametrize("group_m", [0, -1, "8", 4.5, 2 ** 40 + 0.5])
def test_fp8_gemm_ignores_a_damaged_tuned_entry(runtime_cache, fresh_warnings, group_m):
    """A hand-edited GROUP_M once gave NaN (0), wrote out of bounds (-1) or raised from inside the
    launcher (non-ints): the entry must be ignored and the heuristic config used."""
    from triton_ops import fp8_gemm
    from triton_ops.kernels import fp8_gemm as fg

    M, N, K = 32, 64, 128
    a, b = torch.randn(M, K, device=DEVICE), torch.randn(K, N, device=DEVICE)
    ref = fp8_gemm(a, b)
    name = fg.gemm_config(M, N, K, 90)["name"]
    ConfigCache(runtime_cache).set(fg.KERNEL_TYPE, (M, N, K), rt.device_key(DEVICE),
                                   {"name": name, "GROUP_M": group_m, "SPLIT_K": 1})
    with rt.use_tuned_configs(), pytest.warns(RuntimeWarning, match="ignoring the tuned config of fp8_gemm"):
        out = fp8_gemm(a, b)
    assert torch.equal(out, ref)
