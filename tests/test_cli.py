"""The ``triton-ops`` command end to end (in the Triton interpreter with no GPU).

This module doubles as a tiny op package for the command: it defines a Triton kernel ``y = x * a + b``
with benchmark ``cases()`` and a ``tuning_entry()``, which the tests pass to the command with
``--cases-module tests.test_cli`` / ``--entries-module tests.test_cli`` so they stay fast and do not
depend on the library's own ops. The library's ops are exercised through the same command on the GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl

from triton_ops.autotuner import TuningEntry
from triton_ops.autotuner import runtime as rt
from triton_ops.autotuner.cache import ConfigCache
from triton_ops.benchmark.case import BenchCase
from triton_ops.benchmark.report import load_results
from triton_ops.cli import main
from triton_ops.exceptions import TritonOpsError

REPO = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _axpb_kernel(x_ptr, y_ptr, n, a, b, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    tl.store(y_ptr + offs, (x * a + b).to(y_ptr.dtype.element_ty), mask=mask)


def axpb(x: torch.Tensor, a: float = 1.5, b: float = -0.25, BLOCK_SIZE: int = 64, num_warps: int = 1):
    y = torch.empty_like(x)
    n = x.numel()
    _axpb_kernel[(triton.cdiv(n, BLOCK_SIZE),)](x, y, n, a, b, BLOCK_SIZE=BLOCK_SIZE, num_warps=num_warps)
    return y


def cases(quick: bool = False, shapes: list[str] | None = None, device: str = "cuda") -> list[BenchCase]:
    """Benchmark cases of the synthetic op (``broken`` is a deliberately wrong system)."""
    out = []
    for n in (100, 1000):
        label = f"n={n}"
        if shapes and label not in shapes:
            continue

        def make(n=n):
            return {"x": torch.randn(n, device=device)}

        out.append(BenchCase(
            op="synth_axpb", shape=label, dtype="float32", make_inputs=make,
            systems={"triton_ops": lambda d: axpb(d["x"]), "torch_eager": lambda d: d["x"] * 1.5 - 0.25,
                     "copy": lambda d: d["x"].clone(), "torch_compile": lambda d: d["x"] * 1.5 - 0.25,
                     "broken": lambda d: d["x"] * 1.5},
            reference=lambda d: d["x"].double() * 1.5 - 0.25, bytes_moved=8.0 * n, flops=2.0 * n,
            # one fp32 multiply-add against float64: <= ~1.2e-7 relative, so 1e-6 catches "broken" (x * 1.5)
            ceiling="copy", unchecked=("copy",), rtol=1e-6, size=n))
    return out


def tuning_entry() -> TuningEntry:
    def make_args(shape, device, dtype):
        return (torch.randn(shape, device=device, dtype=dtype),), {}

    return TuningEntry(
        kernel_type="synth_axpb",
        # 48 is not a power of two: Triton refuses it, so the tuner must score it as failed and go on
        config_space={"BLOCK_SIZE": [32, 48, 128], "num_warps": [1, 2]},
        make_args=make_args,
        run=lambda x, **cfg: axpb(x, **cfg),
        default_config=lambda shape: {"BLOCK_SIZE": 64, "num_warps": 1},
        # rtol: candidates must match the default's fp32 output up to one rounding (same math, same order)
        default_shapes=[(4096,)], cpu_shapes=[(300,)], dtype=torch.float32, rtol=1e-6)


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("TRITON_OPS_CACHE_DIR", str(d))
    monkeypatch.delenv("TRITON_OPS_USE_TUNED", raising=False)
    rt.use_tuned_configs(None)
    yield d
    rt.use_tuned_configs(None)


def test_synthetic_kernel_is_right():
    x = torch.randn(333, device=DEVICE)
    for bs in (32, 64, 128):
        # fp32 fma vs torch's separate multiply and add: they differ by at most one rounding (~1e-7)
        torch.testing.assert_close(axpb(x, BLOCK_SIZE=bs), x * 1.5 - 0.25, rtol=1e-6, atol=1e-6)


def test_info_text_and_json(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "device:" in out and "ops:" in out and "FP8 tensor cores" in out and "tuned configs" in out
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["env"]) == {"gpu", "torch", "triton", "cuda", "commit"}
    assert set(info["paths"]) == {"fp8_tensor_cores", "weight_only_fp8", "interpreter"}
    assert {"rmsnorm_rope", "gated_mlp", "fp8_gemm", "fp8_quantize"} <= set(info["ops"])
    if not torch.cuda.is_available():
        assert info["paths"]["interpreter"] is True
        assert info["compute_capability"] is None
    else:
        major, minor = torch.cuda.get_device_capability()
        assert info["compute_capability"] == f"{major}.{minor}"
        assert info["paths"]["fp8_tensor_cores"] == ((major, minor) >= (8, 9) and info["ops"]["fp8_gemm"]["available"])


def test_bench_writes_reports(tmp_path, capsys):
    out = tmp_path / "results"
    rc = main(["bench", "synth_axpb", "--cases-module", "tests.test_cli", "--out", str(out),
               "--skip", "broken", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "## synth_axpb" in captured.out
    jsons = list(out.glob("*.json"))
    assert len(jsons) == 1
    data = load_results(jsons[0])
    systems = {r["system"]: r for r in data["rows"] if r["shape"] == "n=1000"}
    assert systems["triton_ops"]["correct"] is True and systems["triton_ops"]["ms"] > 0
    assert systems["broken"]["status"] == "skipped"
    if not torch.cuda.is_available():
        assert jsons[0].name.startswith("cpu-")
        assert "NOT GPU performance figures" in captured.out
        assert systems["torch_compile"]["status"] == "skipped"
    for ext in ("md", "csv"):
        assert len(list(out.glob(f"*.{ext}"))) == 1
    assert len(list(out.glob("*-synth_axpb.png"))) == 1


def test_bench_fails_on_wrong_system(tmp_path, capsys):
    rc = main(["bench", "synth_axpb", "--cases-module", "tests.test_cli", "--out", "", "--shapes", "n=100",
               "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "**FAILED**" in captured.out and "broken" in captured.err
    assert not list(tmp_path.iterdir())  # --out '' writes nothing


def test_bench_nothing_to_run_is_an_error_not_a_crash(capsys, monkeypatch):
    from triton_ops.benchmark import suite

    monkeypatch.setattr(suite, "OP_FAMILIES", {"nothing": "triton_ops.benchmark.cases_does_not_exist"})
    assert main(["bench", "--out", "", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "nothing: not available" in err


def test_tune_stores_and_reuses(cache_env, capsys):
    # --shapes given: with no option the command tunes the entry's GPU shapes on a GPU, its CPU shapes here
    argv = ["tune", "synth_axpb", "--entries-module", "tests.test_cli", "--warmup", "1", "--runs", "2",
            "--shapes", "300", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "synth_axpb" in out and "5/7/6" in out  # default + 6 candidates, the two BLOCK_SIZE=48 fail
    cache = ConfigCache(cache_env)
    # stored under the canonical device name: found with every spelling of the device
    for dev in (DEVICE, rt.device_key(DEVICE), torch.device(DEVICE)):
        cfg = cache.get("synth_axpb", (300,), dev)
        assert cfg is not None and cfg["BLOCK_SIZE"] in (32, 64, 128)
    # a second run answers from the cache; --force re-tunes
    assert main(argv) == 0
    assert "from cache" in capsys.readouterr().out
    assert main([*argv, "--force"]) == 0
    assert "from cache" not in capsys.readouterr().out
    cfg = ConfigCache(cache_env).get("synth_axpb", (300,), DEVICE)  # the re-tune may pick another
    # the runtime switch finds it only when enabled, whichever way the launcher names the device
    assert rt.lookup("synth_axpb", (300,), DEVICE) is None
    with rt.use_tuned_configs():
        assert rt.lookup("synth_axpb", (300,), DEVICE) == cfg
        assert rt.lookup("synth_axpb", (300,), torch.device(DEVICE)) == cfg
        assert rt.lookup("synth_axpb", (300,), torch.randn(1, device=DEVICE).device) == cfg
    # cache list / clear
    assert main(["cache", "list"]) == 0
    assert "synth_axpb" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert ConfigCache(cache_env).get_all_keys() == []


def test_tune_writes_report(cache_env, tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", "synth_axpb", "--entries-module", "tests.test_cli", "--warmup", "0", "--runs", "1",
                 "--max-configs", "3", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    [report] = list(out.glob("*-tune-*.json"))
    rows = json.loads(report.read_text())["rows"]
    assert rows[0]["status"] == "ok" and rows[0]["configs_tried"] == 3
    assert rows[0]["default_ms"] > 0 and rows[0]["best_ms"] > 0


def test_tune_default_shapes_follow_the_device(cache_env, capsys):
    """No --shapes: the entry's CPU shapes here, its GPU shapes on a GPU; the entry is stored where the
    command says."""
    assert main(["tune", "synth_axpb", "--entries-module", "tests.test_cli", "--warmup", "0", "--runs", "1",
                 "--max-configs", "2", "--no-progress"]) == 0
    shape = (4096,) if torch.cuda.is_available() else (300,)
    assert "x".join(map(str, shape)) in capsys.readouterr().out
    assert ConfigCache(cache_env).get("synth_axpb", shape, DEVICE) is not None


def test_order_candidates_puts_the_default_and_its_neighbours_first():
    from triton_ops.autotuner import generate_configs
    from triton_ops.cli import order_candidates

    space = generate_configs({"A": [1, 2, 3], "B": [1, 2], "C": [0, 1]})
    default = {"A": 2, "B": 1, "C": 0}
    got = order_candidates(space, default)
    assert got[0] == default and len(got) == len(space)
    dist = [sum(c[k] != default[k] for k in default) for c in got]
    assert dist == sorted(dist) and dist[1:5] == [1, 1, 1, 1]
    assert order_candidates(space, default, 3) == got[:3]
    assert order_candidates(space, default, 0) == [default]
    assert order_candidates(space, {"A": 9}, None)[0] == {"A": 9}  # a default outside the space runs too


def test_tune_time_budget(cache_env, capsys, tmp_path):
    out = tmp_path / "tune"
    assert main(["tune", "synth_axpb", "--entries-module", "tests.test_cli", "--warmup", "0", "--runs", "1",
                 "--time-budget", "0", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    [report] = list(out.glob("*-tune-*.json"))
    [row] = json.loads(report.read_text())["rows"]
    assert row["configs_tried"] == 1 and row["best_config"] == row["default_config"]
    assert row["speedup"] == 1.0


def test_tune_rmsnorm_rope_entry_in_the_interpreter(cache_env, capsys, tmp_path):
    """The library's own tunable op through the command: its CPU shape, a few configs, both times side
    by side in the output and the results file."""
    out = tmp_path / "tune"
    # one shape per op, as the seed-shape run on a GPU does; ops given no shape (gated_mlp ...) are skipped
    assert main(["tune", "--shapes", "rmsnorm_rope=1x3x256x64", "synth_axpb=100", "--entries-module",
                 "tests.test_cli", "--warmup", "0", "--runs", "1", "--max-configs", "3", "--out", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| rmsnorm_rope | 1x3x256x64 | float16 |" in text and "default ms" in text and "speedup" in text
    [report] = list(out.glob("*-tune-*.json"))
    rows = json.loads(report.read_text())["rows"]
    assert [(r["kernel_type"], r["shape"]) for r in rows] == [("rmsnorm_rope", "1x3x256x64"), ("synth_axpb", "100")]
    row = rows[0]
    assert row["status"] == "ok" and row["configs_ok"] == row["configs_tried"] == 3
    assert row["default_ms"] > 0 and row["best_ms"] > 0 and row["speedup"] >= 1.0
    assert row["cache_key"] == "3x256x64x64x2x0"  # rows x hidden x head_dim x rot x itemsize x residual
    assert ConfigCache(cache_env).get("rmsnorm_rope", (3, 256, 64, 64, 2, 0), DEVICE) == row["best_config"]


def test_rmsnorm_rope_launcher_uses_tuned_config_only_when_switched_on(cache_env, monkeypatch):
    from triton_ops.kernels import rmsnorm_rope as rr

    seen = []
    real = rr.pick_config
    monkeypatch.setattr(rr, "pick_config", lambda *a: seen.append(a[-1]) or real(*a))
    x = torch.randn(2, 5, 256, device=DEVICE)
    w = torch.randn(256, device=DEVICE)
    ang = torch.rand(5, 64, device=DEVICE) * 6.0
    cos, sin = ang.cos(), ang.sin()
    want = rr.rmsnorm_rope_reference(x.double(), w.double(), cos.double(), sin.double(), head_dim=64)
    # the key the launcher asks for: rows x hidden x head_dim x rot x itemsize x residual
    ConfigCache(cache_env).set("rmsnorm_rope", (10, 256, 64, 64, 4, 0), DEVICE,
                               {"ROWS_PER_PROG": 4, "num_warps": 1, "NOT_A_LAUNCH_PARAM": 3})
    off = rr.fused_rmsnorm_rope(x, w, cos, sin, head_dim=64)
    assert not seen[-1]  # heuristic only
    with rt.use_tuned_configs():
        on = rr.fused_rmsnorm_rope(x, w, cos, sin, head_dim=64)
        assert seen[-1] == {"ROWS_PER_PROG": 4, "num_warps": 1}
        # an explicit config wins over the cache
        out = torch.full_like(x, float("nan"))
        rr._launch(x, w, cos, sin, None, None, out, None, 1e-6, 64, False, 0.0, config={"num_warps": 2})
        assert seen[-1] == {"num_warps": 2}
        # another problem is not tuned: heuristic
        rr.fused_rmsnorm_rope(x[:1], w, cos, sin, head_dim=64)
        assert seen[-1] is None
        # an entry with a value the kernel cannot take (a hand-edited cache) is ignored as a whole, with a
        # warning: the heuristic config runs
        ConfigCache(cache_env).set("rmsnorm_rope", (10, 256, 64, 64, 4, 0), DEVICE,
                                   {"ROWS_PER_PROG": 3, "num_warps": 2})
        rt.forget_lookups()
        monkeypatch.setattr(rt, "_warned", set())  # warned once per process: forget other tests' warnings
        with pytest.warns(RuntimeWarning, match="ROWS_PER_PROG=3"):
            rr.fused_rmsnorm_rope(x, w, cos, sin, head_dim=64)
        assert seen[-1] is None
    # fp32 in and out, fp32 accumulation either way: identical up to summation order (~1e-6)
    torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-5)
    # against the float64 reference: fp32 rsqrt + rotation over 256 channels is within ~1e-6; the bound is
    # a sanity check that the tuned config computes the op, the config choice is asserted above
    torch.testing.assert_close(on.double(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-4)


def test_rmsnorm_rope_tuning_entry_matches_its_launcher():
    """default_config is what the launcher picks, and cache_key is the key the launcher asks for."""
    from triton_ops.kernels import rmsnorm_rope as rr
    from triton_ops.utils import num_sms

    entry = rr.tuning_entry()
    assert entry.kernel_type == "rmsnorm_rope"
    assert entry.config_space == {"ROWS_PER_PROG": [1, 2, 4], "num_warps": [1, 2, 4, 8]}
    assert (8, 2048, 4096, 64) in entry.default_shapes and entry.dtype == torch.float16
    for shape, dtype in (((8, 2048, 4096, 64), torch.float16), ((4, 1, 2048), torch.float32)):
        b, s, h = shape[:3]
        hd = shape[3] if len(shape) == 4 else 64
        cfg = rr.pick_config(b * s, h, hd, hd, dtype.itemsize, False, num_sms(DEVICE))
        assert entry.default_for(shape, dtype) == {"ROWS_PER_PROG": cfg.ROWS_PER_PROG, "num_warps": cfg.num_warps}
        assert entry.key_for(shape, dtype) == rr._tuning_key(b * s, h, hd, hd, dtype.itemsize, False)
    # configs that spilled registers when built for sm_90 at the seed problem are not tried there
    from triton_ops.autotuner import generate_configs

    valid = entry.valid_for((8, 2048, 4096, 64), generate_configs(entry.config_space), torch.float16)
    assert sorted((c["ROWS_PER_PROG"], c["num_warps"]) for c in valid) == [
        (1, 2), (1, 4), (1, 8), (2, 4), (2, 8), (4, 4), (4, 8)]
    for shape in entry.default_shapes + entry.cpu_shapes:
        assert entry.default_for(shape, torch.float16) in entry.valid_for(
            shape, generate_configs(entry.config_space), torch.float16)
    for bad in ((8, 2048), (1, 2, 100, 64), (1, 2, 128, 3)):
        with pytest.raises(TritonOpsError):
            entry.key_for(bad)
    args, kwargs = entry.make_args((1, 3, 128, 64), DEVICE, torch.float32)
    a = entry.run(*args, **kwargs, ROWS_PER_PROG=1, num_warps=1)
    b = entry.run(*args, **kwargs, ROWS_PER_PROG=2, num_warps=2)
    assert a.data_ptr() != b.data_ptr()  # fresh outputs: one config cannot overwrite another's result
    # two configs, same fp32 math; only the reduction order may differ (~1e-6)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_gpu_tuned_rmsnorm_rope_reaches_the_launcher(cache_env, capsys, monkeypatch, tmp_path):
    """On the README's shape: `tune` stores a config at least as fast as the default, under the key and
    device the public op looks up, and the op launches with it once tuned configs are switched on."""
    from triton_ops.kernels import rmsnorm_rope as rr

    out = tmp_path / "tune"
    assert main(["tune", "--shapes", "rmsnorm_rope=8x2048x4096x64", "--max-configs", "6", "--warmup", "3",
                 "--runs", "20", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    [report] = list(out.glob("*-tune-*.json"))
    [row] = json.loads(report.read_text())["rows"]
    assert row["status"] == "ok" and row["speedup"] >= 1.0 and row["device"].startswith("cuda:")
    seen = []
    real = rr.pick_config
    monkeypatch.setattr(rr, "pick_config", lambda *a: seen.append(a[-1]) or real(*a))
    x = torch.randn(8, 2048, 4096, device="cuda", dtype=torch.float16)
    w = torch.randn(4096, device="cuda", dtype=torch.float16)
    ang = torch.rand(2048, 64, device="cuda") * 6.0
    with rt.use_tuned_configs():
        rr.fused_rmsnorm_rope(x, w, ang.cos(), ang.sin(), head_dim=64)
    assert seen[-1] == row["best_config"]


def test_tune_unknown_op(cache_env, capsys):
    assert main(["tune", "no_such_op", "--no-progress"]) == 1
    assert "nothing to tune" in capsys.readouterr().err
    assert main(["tune", "--shapes", "rmsnorm_rope=8xq", "--no-progress"]) == 2
    assert "is not a list of integers" in capsys.readouterr().err


def test_python_dash_m_runs_the_command():
    proc = subprocess.run([sys.executable, "-m", "triton_ops", "cache", "path"], cwd=REPO,
                          env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()
    proc = subprocess.run([sys.executable, "-m", "triton_ops", "--help"], cwd=REPO, env=_subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "tune" in proc.stdout


def test_bench_scripts_delegate(monkeypatch):
    from tests.benchmarks import bench_fp8_gemm, bench_gated_mlp, bench_rmsnorm_rope

    seen = []
    monkeypatch.setattr("triton_ops.cli.main", lambda argv: seen.append(argv) or 0)
    assert bench_rmsnorm_rope.main(["--quick", "--out", "x"]) == 0
    assert bench_gated_mlp.main(["--shapes", "a", "b"]) == 0
    assert bench_fp8_gemm.main(["--no-plots"]) == 0
    assert seen[0] == ["bench", "rmsnorm_rope", "--out", "x", "--quick"]
    assert seen[1] == ["bench", "gated_mlp", "--out", "benchmarks/results", "--shapes", "a", "b"]
    assert seen[2] == ["bench", "fp8", "--out", "benchmarks/results", "--no-plots"]


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the command must switch the interpreter on by itself
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_command_in_fresh_process_without_gpu(tmp_path):
    """As a user runs it on a CPU-only machine: no TRITON_INTERPRET set, triton already imported by the
    package, reports written under cpu-<date>."""
    out = tmp_path / "res"
    proc = subprocess.run([sys.executable, "-c", "import sys, triton; from triton_ops.cli import main; "
                           "sys.exit(main())", "bench", "synth_axpb", "--cases-module", "tests.test_cli",
                           "--skip", "broken", "--out", str(out), "--no-progress", "--no-plots"],
                          cwd=REPO, env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "NOT GPU performance figures" in proc.stdout
    [j] = list(out.glob("cpu-*.json"))
    rows = load_results(j)["rows"]
    assert any(r["system"] == "triton_ops" and r["correct"] for r in rows)
