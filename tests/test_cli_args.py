"""Argument checks of the ``triton-ops`` command and the benchmark suite: a mistake costs one clear line
and exit status 2, before anything is benchmarked or tuned."""

from __future__ import annotations

import pytest
import torch

from triton_ops import cli
from triton_ops.autotuner import TuningEntry
from triton_ops.autotuner import runtime as rt
from triton_ops.benchmark import suite as suite_mod
from triton_ops.benchmark.suite import BenchmarkSuite
from triton_ops.exceptions import DeviceError, InvalidArgumentError, TritonOpsError

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture
def nothing_runs(tmp_path, monkeypatch):
    """Fail the test if the command gets as far as benchmarking or tuning anything."""
    monkeypatch.setenv("TRITON_OPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TRITON_OPS_USE_TUNED", raising=False)
    rt.use_tuned_configs(None)

    def boom(*a, **k):
        raise AssertionError("the command ran before checking its arguments")

    monkeypatch.setattr(cli, "tune_entry_shape", boom)
    monkeypatch.setattr(suite_mod.BenchmarkSuite, "run", boom)
    monkeypatch.setattr(suite_mod.BenchmarkSuite, "load_cases", boom)
    (tmp_path / "a_file").write_text("x")
    yield tmp_path
    rt.use_tuned_configs(None)


def _run(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


TUNE = ["tune", "synth_axpb", "--entries-module", "tests.test_cli", "--no-progress"]
BAD = [
    (["bench", "--device", "gpu"], "--device='gpu' is not a device name; expected 'cuda', 'cuda:<index>' or 'cpu'"),
    (["bench", "--device", "mps"], "runs on CUDA devices or the CPU"),
    (["bench", "host", "--device", "gpu"], "not a device name"),
    (["bench", "model", "--device", "tpu"], "not a device name"),
    (["bench", "--out", "{tmp}/a_file"], "--out {tmp}/a_file: is a file; expected a directory"),
    (["bench", "--out", "{tmp}/a_file/sub/dir"], "would be created under {tmp}/a_file, which is a file"),
    (["bench", "host", "--out", "{tmp}/a_file/x"], "which is a file"),
    (["bench", "--rep-ms", "0"], "--rep-ms must be a finite number > 0, got 0.0"),
    (["bench", "--warmup-ms", "nan"], "--warmup-ms must be a finite number >= 0, got nan"),
    (["bench", "--cpu-reps", "0"], "--cpu-reps must be a finite number >= 1, got 0"),
    (TUNE + ["--device", "gpu"], "not a device name"),
    (TUNE + ["--dtype", "float64"], "synth_axpb cannot be tuned in float64; expected one of: float32, float16, "
                                    "bfloat16"),
    (TUNE + ["--dtype", "floatX"], "--dtype 'floatX' is not a torch dtype"),
    (TUNE + ["--shapes", "0"], "synth_axpb: shape 0 must list positive sizes"),
    (TUNE + ["--shapes", "synth_axpb=abc"], "shape 'abc' is not a list of integers like 8x2048x4096"),
    (TUNE + ["--shapes", "nope=16"], "--shapes nope=16: 'nope' is not among the ops to tune (synth_axpb)"),
    (TUNE + ["--out", "{tmp}/a_file/o"], "--out {tmp}/a_file/o: would be created under"),
    (TUNE + ["--cache-dir", "{tmp}/a_file/c"], "--cache-dir {tmp}/a_file/c: would be created under"),
    (TUNE + ["--runs", "0"], "--runs must be a finite number >= 1, got 0"),
    (TUNE + ["--warmup", "-1"], "--warmup must be a finite number >= 0, got -1"),
    (TUNE + ["--max-configs", "0"], "--max-configs must be a finite number >= 1"),
    (TUNE + ["--time-budget", "-5"], "--time-budget must be a finite number >= 0, got -5.0"),
    (TUNE + ["--time-budget", "inf"], "--time-budget must be a finite number"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a[5:] if a[:1] == ["tune"] else a) for a, _ in BAD])
def test_bad_arguments_give_one_clear_line(nothing_runs, capsys, argv, message):
    tmp = str(nothing_runs)
    rc, out, err = _run([a.replace("{tmp}", tmp) for a in argv], capsys)
    assert rc == 2
    assert out == ""  # not even the CPU banner: nothing started
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("triton-ops: error: "), err
    assert message.replace("{tmp}", tmp) in lines[0]


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal of --device cuda on a machine without a GPU")
@pytest.mark.parametrize("cmd", [["bench"], ["bench", "host"], TUNE])
def test_cuda_without_a_gpu(nothing_runs, capsys, cmd):
    rc, out, err = _run(cmd + ["--device", "cuda:0"], capsys)
    assert rc == 2 and out == ""
    assert err.strip() == ("triton-ops: error: --device='cuda:0' but no CUDA GPU is available here; use 'cpu' "
                           "(kernels then run in Triton's interpreter)")


def test_unwritable_out_directory(nothing_runs, capsys, monkeypatch):
    """Permissions cannot be taken away from root, so the access check itself is what is replaced."""
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    rc, out, err = _run(["bench", "--out", str(nothing_runs / "new")], capsys)
    assert rc == 2 and out == ""
    assert err.strip() == f"triton-ops: error: --out {nothing_runs / 'new'}: {nothing_runs} is not writable"


def test_cpu_with_the_interpreter_off(nothing_runs, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the user's own setting is kept by the command
    rc, out, err = _run(["bench", "--device", "cpu"], capsys)
    assert rc == 2 and "set TRITON_INTERPRET=1" in err and out == ""


def test_gated_mlp_shape_message_names_the_format(nothing_runs, capsys):
    """The library's own entries: a shape of the wrong length says what the op takes."""
    rc, out, err = _run(["tune", "gated_mlp", "--shapes", "1x2", "--no-progress"], capsys)
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("triton-ops: error: gated_mlp: shape 1x2 is not a problem it takes")
    assert "expected M x hidden x intermediate, e.g. " in line
    rc, out, err = _run(["tune", "rmsnorm_rope", "--dtype", "float64", "--no-progress"], capsys)
    assert rc == 2 and "rmsnorm_rope cannot be tuned in float64" in err


def test_valid_arguments_still_run(tmp_path, capsys, monkeypatch):
    """The checks refuse only what is wrong: writable new directories, a zero time budget and one op's
    shapes for one op are fine."""
    monkeypatch.setenv("TRITON_OPS_CACHE_DIR", str(tmp_path / "new" / "cache"))
    out_dir = tmp_path / "not" / "yet" / "there"
    rc, out, err = _run(TUNE + ["--shapes", "synth_axpb=64", "--warmup", "0", "--runs", "1",
                                "--time-budget", "0", "--out", str(out_dir)], capsys)
    assert rc == 0, err
    assert list(out_dir.glob("*-tune-*.json")) and "synth_axpb" in out


# ---------------------------------------------------------------------------------------------- tuning entries


def _entry(**kw):
    def default_config(shape):
        M, N = shape  # a two-dim problem, as a real entry would unpack it
        return {"B": 16}

    base = dict(kernel_type="toy", config_space={"B": [16]}, make_args=lambda s, d, t: ((), {}),
                run=lambda **c: None, default_config=default_config, shape_doc="M x N", default_shapes=[(64, 32)])
    base.update(kw)
    return TuningEntry(**base)


def test_entry_check_problem():
    e = _entry()
    e.check_problem((3, 4), torch.float16)
    for shape, match in (((3,), r"toy: shape 3 is not a problem it takes \(ValueError: not enough values"),
                         ((1, 2, 3), "too many values"), ((0, 4), "must list positive sizes"),
                         ((), r"shape \(empty\) must list positive"), ((2.0, 4), "positive sizes")):
        with pytest.raises(InvalidArgumentError, match=match) as exc:
            e.check_problem(shape)
        assert str(exc.value).endswith("expected M x N, e.g. 64x32")
    with pytest.raises(InvalidArgumentError, match="toy cannot be tuned in float64; expected one of: float16, "
                                                   "bfloat16, float32"):
        e.check_problem((3, 4), torch.float64)
    fp8 = _entry(dtype=torch.float8_e4m3fn, dtypes=(torch.float8_e4m3fn,))
    assert fp8.accepted_dtypes() == (torch.float8_e4m3fn,)
    with pytest.raises(InvalidArgumentError, match="expected one of: float8_e4m3fn$"):
        fp8.check_dtype(torch.float16)
    # a cache_key that refuses the problem (a library error) is reported with its own words
    strict = _entry(cache_key=lambda s, d: (_ for _ in ()).throw(DeviceError("needs hd | hidden")))
    with pytest.raises(InvalidArgumentError, match=r"not a problem it takes \(needs hd \| hidden\)"):
        strict.check_problem((3, 4))


# ---------------------------------------------------------------------------------------------- suite


@pytest.mark.parametrize("device, match", [("gpu", "'gpu' is not a device name"), ("tpu:0", "not a device name"),
                                           ("meta", "CUDA devices or the CPU"), (7, "must be a device name")])
def test_suite_refuses_unknown_devices(device, match):
    with pytest.raises(TritonOpsError, match=match):
        BenchmarkSuite(device=device)


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal of cuda on a machine without a GPU")
def test_suite_on_cuda_without_a_gpu_is_one_device_error():
    with pytest.raises(DeviceError, match="no CUDA GPU is available") as exc:
        BenchmarkSuite(device="cuda")
    assert isinstance(exc.value, RuntimeError)


@pytest.mark.parametrize("kw, match", [({"warmup_ms": -1}, "warmup_ms"), ({"rep_ms": 0}, "rep_ms"),
                                       ({"rep_ms": float("nan")}, "rep_ms"),
                                       ({"cpu_reps": 0}, "cpu_reps must be >= 1, got 0"),
                                       ({"cpu_reps": 2.5}, "cpu_reps must be an int")])
def test_suite_refuses_bad_timing_budgets(kw, match):
    with pytest.raises(TritonOpsError, match=match) as exc:
        BenchmarkSuite(device="cpu", **kw)
    assert isinstance(exc.value, ValueError)


def test_suite_device_is_canonical():
    assert BenchmarkSuite(device=" cpu ").device == "cpu"
    assert BenchmarkSuite(device=torch.device("cpu")).device == "cpu"
