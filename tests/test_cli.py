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
    argv = ["tune", "synth_axpb", "--entries-module", "tests.test_cli", "--warmup", "1", "--runs", "2",
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "synth_axpb" in out and "5/7" in out  # default + 6 candidates, the two BLOCK_SIZE=48 fail
    cache = ConfigCache(cache_env)
    key_dev = rt.device_key(DEVICE)
    cfg = cache.get("synth_axpb", (300,), key_dev)
    assert cfg is not None and cfg["BLOCK_SIZE"] in (32, 64, 128)
    # a second run answers from the cache; --force re-tunes
    assert main(argv) == 0
    assert "from cache" in capsys.readouterr().out
    assert main([*argv, "--force", "--shapes", "300"]) == 0
    assert "from cache" not in capsys.readouterr().out
    cfg = ConfigCache(cache_env).get("synth_axpb", (300,), key_dev)  # the re-tune may pick another
    # the runtime switch finds it only when enabled
    assert rt.lookup("synth_axpb", (300,), DEVICE) is None
    with rt.use_tuned_configs():
        assert rt.lookup("synth_axpb", (300,), DEVICE) == cfg
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
    [report] = list(out.glob("tune-*.json"))
    rows = json.loads(report.read_text())["rows"]
    assert rows[0]["status"] == "ok" and rows[0]["configs_tried"] == 3
    assert rows[0]["default_ms"] > 0 and rows[0]["best_ms"] > 0


def test_tune_unknown_op(cache_env, capsys):
    assert main(["tune", "no_such_op", "--no-progress"]) == 1
    assert "nothing to tune" in capsys.readouterr().err


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
