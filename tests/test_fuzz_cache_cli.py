"""Property and stateful tests (hypothesis) of the config cache, the tuned-config checks, the command's
argument checks and the shared validation helpers. Everything here is CPU-only and takes seconds; the
``ci`` profile runs more examples."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import threading
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, rule

from triton_ops import cli, validation
from triton_ops.autotuner import cache as cache_mod
from triton_ops.autotuner import runtime as rt
from triton_ops.autotuner.cache import ConfigCache
from triton_ops.autotuner.entry import parse_shape
from triton_ops.benchmark import suite as suite_mod
from triton_ops.exceptions import InvalidArgumentError, TritonOpsError
from triton_ops.utils import interpreter_enabled

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # damage reports are expected here

# ---------------------------------------------------------------------------------------------- strategies

#: kernel types that once shared a file, differ only in case, or hold the storage key's separator
KERNEL_TYPES = ["k", "attn/fp8", "attn_fp8", "Gemm", "gemm", "a|b", "ü", "x" * 200]
DEVICES = ["cpu", "cpu:0", "cuda", "cuda:1", "box|1", "label:x"]

leaves = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
          | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6))
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner), max_leaves=6)
configs = st.dictionaries(st.text(max_size=5), values, max_size=3)
sizes = st.lists(st.integers(0, 3), max_size=2).map(tuple)
keys = st.tuples(st.sampled_from(KERNEL_TYPES), sizes, st.sampled_from(DEVICES))


def strict_eq(a, b) -> bool:
    """Equality that also compares types (1 == 1.0 == True and (1,) vs [1] would hide a lossy round trip)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(strict_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_eq(a[k], b[k]) for k in a)
    return a == b


def norm(key):
    kt, size, dev = key
    return kt, tuple(size), cache_mod.normalize_device(dev)


# ---------------------------------------------------------------------------------------------- cache


#: a small key space, so that reads, overwrites and damage meet stored entries within a few steps
machine_keys = st.tuples(st.sampled_from(["attn/fp8", "attn_fp8", "Gemm", "gemm"]),
                         st.lists(st.integers(0, 1), max_size=1).map(tuple), st.sampled_from(["cpu", "cuda", "box|1"]))


class CacheMachine(RuleBasedStateMachine):
    """Three instances on one directory, against a model.

    Guarantees checked after every step that reads:
    * sound: a config read back is exactly (types included) one that was stored for that key since its
      kernel type was last cleared; never another key's, never a damaged or lossy one. (When damage also
      destroyed the file's header, an instance cannot tell a clear it has not seen from the damage, and
      may keep what it held before the clear: then any config ever stored for the key is allowed);
    * complete: while a kernel type's file has not been damaged since its last clear, every instance
      reads the latest config stored by any instance;
    * no forgetting: an instance that stored or read an entry still has it after damage (until a clear).
    """

    stored = Bundle("stored")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="cache-fuzz-"))
        self.caches = [ConfigCache(self.dir) for _ in range(3)]
        self.model: dict = {}
        self.history: dict = defaultdict(list)
        self.held: list[set] = [set() for _ in self.caches]
        self.damaged: set = set()
        self.blind: set = set()  # kernel types whose file lost its header to damage since their last clear
        self.ever: dict = defaultdict(list)

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _check(self, i: int, key, got) -> None:
        if got is not None:
            allowed = self.ever[key] if key[0] in self.blind else self.history[key]
            assert any(strict_eq(got, c) for c in allowed), (key, got)
            self.held[i].add(key)
        if key[0] not in self.damaged:
            assert strict_eq(got, self.model.get(key)), (i, key, got, self.model.get(key))
        elif key in self.held[i]:
            assert got is not None, (i, key)

    def _store(self, i, key, config):
        self.caches[i].set(*key, config)
        k = norm(key)
        self.model[k] = config
        self.history[k].append(config)
        self.ever[k].append(config)
        self.held[i].add(k)
        return key

    @rule(target=stored, i=st.integers(0, 2), key=machine_keys, config=configs)
    def store(self, i, key, config):
        return self._store(i, key, config)

    @rule(i=st.integers(0, 2), key=stored, config=configs)
    def overwrite(self, i, key, config):
        self._store(i, key, config)

    @rule(i=st.integers(0, 2), key=stored)
    def read(self, i, key):
        self._check(i, norm(key), self.caches[i].get(*key))

    @rule(i=st.integers(0, 2))
    def read_everything(self, i):
        listed = {k: e["config"] for k, e in self.caches[i].items()}
        for k in set(self.model) | set(self.history):
            self._check(i, k, listed.get(k))

    @rule(i=st.integers(0, 2), key=st.none() | stored)
    def clear(self, i, key):
        kt = None if key is None else key[0]
        self.caches[i].clear(kt)
        gone = [k for k in set(self.model) | set(self.history) if kt is None or k[0] == kt]
        for k in gone:
            self.model.pop(k, None)
            self.history.pop(k, None)
            for held in self.held:
                held.discard(k)
        self.damaged = set() if kt is None else self.damaged - {kt}
        self.blind = set() if kt is None else self.blind - {kt}

    @rule(key=stored, how=st.sampled_from(["truncate", "garbage", "append", "not utf-8"]), frac=st.floats(0, 1))
    def damage(self, key, how, frac):
        path = self.dir / cache_mod._file_name(key[0])
        if not path.exists():
            return
        data = path.read_bytes()
        data = {"truncate": data[:int(len(data) * frac)], "garbage": b"\x00garbage",
                "append": data + b"}{ trailing", "not utf-8": data[:int(len(data) * frac)] + b"\xff\xfe"}[how]
        path.write_bytes(data)
        self.damaged.add(key[0])
        if cache_mod._read_doc(path).epoch is None:
            self.blind.add(key[0])

    @rule(i=st.integers(0, 2))
    def reopen(self, i):
        self.caches[i] = ConfigCache(self.dir)
        self.held[i] = set()


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(stateful_step_count=30)


@given(st.lists(st.tuples(st.integers(0, 2), keys, configs), min_size=1, max_size=18))
def test_concurrent_instances_lose_nothing(tmp_path_factory, ops):
    d = tmp_path_factory.mktemp("threads")
    per_thread = defaultdict(list)
    for t, key, cfg in ops:
        per_thread[t].append((key, cfg))
    errors: list[BaseException] = []

    def work(items):
        try:
            own = ConfigCache(d)
            for key, cfg in items:
                own.set(*key, cfg)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(items,)) for items in per_thread.values()]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    stored = defaultdict(list)
    for _, key, cfg in ops:
        stored[norm(key)].append(cfg)
    fresh = ConfigCache(d)
    assert sorted(fresh.get_all_keys()) == sorted(stored)
    for k, cfgs in stored.items():
        got = fresh.get(*k)
        assert any(strict_eq(got, c) for c in cfgs)  # one of the racing writers' values, intact


@given(st.lists(configs, min_size=1, max_size=6), st.floats(0, 1))
def test_truncated_file_recovers_every_complete_entry(tmp_path_factory, cfgs, frac):
    d = tmp_path_factory.mktemp("trunc")
    c = ConfigCache(d)
    for i, cfg in enumerate(cfgs):
        c.set("k", (i,), "cpu", cfg)
    path = d / "configs-k.json"
    text = path.read_text()
    cut = int(len(text) * frac)
    path.write_text(text[:cut])
    entries = json.loads(text)["entries"]
    starts = [text.index(json.dumps(skey)) for skey in entries]  # file order is storage-key order
    must = sum(1 for s in starts[1:] if s <= cut) + (1 if cut == len(text) else 0)
    fresh = ConfigCache(d)
    got = {k.problem_size[0]: e["config"] for k, e in fresh.items()}
    for i, cfg in got.items():
        assert strict_eq(cfg, cfgs[i])  # sound
    order = [raw["problem_size"][0] for raw in entries.values()]
    assert set(got) == set(order[:len(got)])  # a prefix of the file ...
    assert len(got) >= must  # ... holding at least every entry that was complete before the cut


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4),
                           max_leaves=20)


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300), json_values.map(json.dumps),
                 st.dictionaries(st.text(max_size=10), json_values, max_size=4).map(
                     lambda e: json.dumps({"format": 1, "entries": e})),
                 st.lists(st.fixed_dictionaries({"kernel_type": st.sampled_from(["k", 3]),
                                                 "problem_size": json_values, "device": json_values,
                                                 "config": json_values, "env": json_values,
                                                 "metrics": json_values, "time": json_values}), max_size=3).map(
                     lambda es: json.dumps({"format": 1, "entries": {str(i): e for i, e in enumerate(es)}}))))
def test_any_file_content_is_survived(tmp_path_factory, content):
    """Whatever is in the file, the cache never raises, returns only well-formed configs, and a write
    leaves a valid file holding the new entry."""
    d = tmp_path_factory.mktemp("content")
    path = d / "configs-k.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    c = ConfigCache(d)
    for _, entry in c.items():
        assert isinstance(entry["config"], dict)
        json.dumps({k: cache_mod._encode(v) for k, v in entry["config"].items()}, allow_nan=False)
    c.get("k", (1,), "cpu")
    c.set("k", (1,), "cpu", {"A": (1, "x")})
    assert ConfigCache(d).get("k", (1,), "cpu") == {"A": (1, "x")}
    assert json.loads(path.read_text())["format"] == cache_mod.FORMAT_VERSION


@given(st.text(min_size=1, max_size=40))
def test_file_names_are_injective_and_safe(kernel_type):
    other = kernel_type + "_"
    a, b = cache_mod._file_name(kernel_type), cache_mod._file_name(other)
    assert a.lower() != b.lower()
    assert "/" not in a and "\\" not in a and "\x00" not in a and len(a.encode()) < 200
    assert a.startswith("configs-") and a.endswith(".json")


@given(st.lists(st.text(min_size=1, max_size=6), min_size=2, max_size=6, unique=True))
def test_distinct_kernel_types_get_distinct_files(names):
    files = [cache_mod._file_name(n).lower() for n in names]  # even where the file system ignores case
    assert len(set(files)) == len(files)


@given(values)
def test_non_finite_values_are_refused_or_kept_exactly(value):
    c = ConfigCache()
    c.set("k", (1,), "cpu", {"v": value})
    assert strict_eq(c.get("k", (1,), "cpu")["v"], value)


@given(st.recursive(st.floats() | st.integers(), lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=4))
def test_nan_anywhere_is_refused(value):
    def finite(v):
        return all(finite(x) for x in v) if isinstance(v, tuple) else math.isfinite(v)

    c = ConfigCache()
    if finite(value):
        c.set("k", (1,), "cpu", {"v": value})
        assert strict_eq(c.get("k", (1,), "cpu")["v"], value)
    else:
        with pytest.raises(TritonOpsError, match="finite"):
            c.set("k", (1,), "cpu", {"v": value})


# ---------------------------------------------------------------------------------------------- tuned configs

rule_values = st.one_of(st.integers(-4, 300), st.booleans(), st.floats(-2, 300), st.text(max_size=3), st.none(),
                        st.lists(st.integers(0, 4), max_size=2), st.tuples(st.integers(0, 4)))


@given(st.dictionaries(st.sampled_from(["BLOCK", "W", "name", "extra"]), rule_values, max_size=4))
def test_validate_tuned_takes_all_or_nothing(tuned):
    default = {"BLOCK": 64, "W": 4, "name": "a"}
    allowed = {"BLOCK": rt.tuned_int(16, 256, power_of_two=True), "name": ("a", "b")}
    rt._warned.clear()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = rt.validate_tuned("k", (1,), "cpu", tuned, default, allowed)
    taken = {k: v for k, v in tuned.items() if k in default}
    ok = (all(isinstance(taken[k], int) and not isinstance(taken[k], bool) and 16 <= taken[k] <= 256
              and taken[k] & (taken[k] - 1) == 0 for k in ("BLOCK",) if k in taken)
          and all(taken[k] in ("a", "b") and isinstance(taken[k], str) for k in ("name",) if k in taken)
          and all(isinstance(taken[k], int) and not isinstance(taken[k], bool) and taken[k] > 0
                  for k in ("W",) if k in taken))
    assert got == ({**default, **taken} if ok else default)
    assert len(rec) == (0 if ok else 1)


# ---------------------------------------------------------------------------------------------- command


@pytest.fixture(scope="module")
def cli_sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "a_file").write_text("x")
    (root / "a_dir").mkdir()
    return root


OUTS = {"none": (None, True), "new dir": ("{root}/new/{n}", True), "existing dir": ("{root}/a_dir", True),
        "a file": ("{root}/a_file", False), "under a file": ("{root}/a_file/x", False)}
# "cpu" runs the kernels in Triton's interpreter: refused (one clear line, exit 2) where it is off, as on a
# GPU machine
_CPU_OK = interpreter_enabled()
DEVICE_ARGS = {None: True, "cpu": _CPU_OK, " cpu ": _CPU_OK, "cpu:0": _CPU_OK, "gpu": False, "": False, "mps": False,
               "cuda:x": False, "meta": False, "cuda": torch.cuda.is_available()}


@given(cmd=st.sampled_from(["bench", "bench host", "tune"]), device=st.sampled_from(sorted(DEVICE_ARGS, key=str)),
       out=st.sampled_from(sorted(OUTS)), n=st.integers(0, 10 ** 6),
       numbers=st.fixed_dictionaries({}, optional={
           "--warmup-ms": st.floats(-1, 5), "--rep-ms": st.floats(-1, 5), "--cpu-reps": st.integers(-1, 3),
           "--warmup": st.integers(-1, 3), "--runs": st.integers(-1, 3), "--max-configs": st.integers(-1, 3),
           "--time-budget": st.floats(-1, 5) | st.sampled_from([math.inf, math.nan])}))
@settings(max_examples=40)
def test_command_arguments(cli_sandbox, cmd, device, out, n, numbers):
    """Any combination: either the command runs, or it exits 2 with one line before running anything;
    which one is decided by an independent model of the rules."""
    bench = cmd.startswith("bench")
    mine = {"--warmup-ms", "--rep-ms", "--cpu-reps"} if bench else {"--warmup", "--runs", "--max-configs",
                                                                    "--time-budget"}
    numbers = {k: v for k, v in numbers.items() if k in mine}
    least = {"--warmup-ms": (0, True), "--rep-ms": (0, False), "--cpu-reps": (1, True), "--warmup": (0, True),
             "--runs": (1, True), "--max-configs": (1, True), "--time-budget": (0, True)}
    numbers_ok = all(math.isfinite(v) and (v >= least[k][0] if least[k][1] else v > least[k][0])
                     for k, v in numbers.items())
    out_path, out_ok = OUTS[out]
    valid = DEVICE_ARGS[device] and out_ok and numbers_ok
    argv = cmd.split() + (["synth_axpb", "--entries-module", "tests.test_cli", "--shapes", "64", "--no-progress",
                           "--cache-dir", str(cli_sandbox / "cache")] if not bench else ["--no-progress"])
    if device is not None:
        argv += ["--device", device]
    if out_path is not None:
        argv += ["--out", out_path.format(root=cli_sandbox, n=n)]
    for k, v in numbers.items():
        argv.append(f"{k}={v}")  # "=": a negative value is not taken for an option

    ran = []

    def fake_tune(entry, shape, **kw):
        ran.append("tune")
        return {"kernel_type": entry.kernel_type, "shape": "x".join(map(str, shape)), "dtype": "float32",
                "device": "cpu", "status": "cached", "best_config": {}, "best_ms": 1.0}

    def fake_host(args, dev):
        ran.append("host")
        return 0

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "tune_entry_shape", fake_tune)
        mp.setattr(cli, "cmd_bench_host", fake_host)
        mp.setattr(suite_mod.BenchmarkSuite, "load_cases", lambda self: ran.append("bench") or [])
        import contextlib
        import io

        err, stdout = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
            rc = cli.main(argv)
    if valid:
        assert ran and rc in (0, 1), (argv, rc, err.getvalue())
    else:
        assert rc == 2 and not ran, (argv, rc, err.getvalue())
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("triton-ops: error: "), lines
        assert stdout.getvalue() == ""


@given(st.text(max_size=20))
def test_parse_shape_is_a_shape_or_a_clear_error(text):
    try:
        dims = parse_shape(text)
    except InvalidArgumentError as exc:
        assert repr(text) in str(exc)
    else:
        assert dims and all(isinstance(d, int) and d >= 0 for d in dims)


# ---------------------------------------------------------------------------------------------- validation


@given(st.one_of(st.integers(-(2 ** 80), 2 ** 80), st.booleans(), st.floats(), st.text(max_size=4), st.none(),
                 st.integers(-(2 ** 63), 2 ** 63 - 1).map(np.int64), st.integers(0, 255).map(np.uint8),
                 st.floats(width=32).map(np.float32), st.booleans().map(np.bool_),
                 st.integers(-100, 100).map(torch.tensor), st.floats(-5, 5).map(torch.tensor)),
       st.none() | st.integers(-5, 5))
def test_check_int_accepts_exactly_the_integers(value, least):
    integral = (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))) or (
        isinstance(value, torch.Tensor) and not value.dtype.is_floating_point and value.dtype != torch.bool)
    try:
        got = validation.check_int(value, "n", min_value=least)
    except InvalidArgumentError as exc:
        assert "n must be" in str(exc)
        assert not integral or (least is not None and int(value) < least)
    else:
        assert integral and type(got) is int and got == int(value)
        assert least is None or got >= least


def _true_bytes(t: torch.Tensor) -> set[int]:
    es = t.element_size()
    return {t.data_ptr() + sum(i * s for i, s in zip(idx, t.stride())) * es + b
            for idx in np.ndindex(*t.shape) for b in range(es)}


views = st.tuples(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.lists(st.integers(0, 6), min_size=3,
                                                                                 max_size=3), st.integers(0, 12),
                  st.sampled_from([torch.float32, torch.float16, torch.uint8]))


def _view(buf: torch.Tensor, spec) -> torch.Tensor:
    shape, strides, offset, dtype = spec
    flat = buf.view(dtype)
    strides = strides[:len(shape)]
    need = offset + sum((s - 1) * st for s, st in zip(shape, strides)) + 1
    assume(need <= flat.numel())
    return flat.as_strided(shape, strides, offset)


@given(views, views, st.booleans())
def test_no_overlap_matches_the_bytes(a_spec, b_spec, allow_exact):
    buf = torch.zeros(64, dtype=torch.float32)
    out, x = _view(buf, a_spec), _view(buf, b_spec)
    out_bytes = [sum(i * s for i, s in zip(idx, out.stride())) for idx in np.ndindex(*out.shape)]
    internal = len(set(out_bytes)) < len(out_bytes)
    exact = out.data_ptr() == x.data_ptr() and out.shape == x.shape and out.stride() == x.stride() \
        and out.dtype == x.dtype
    shared = bool(_true_bytes(out) & _true_bytes(x))
    should_refuse = internal or (shared and not (exact and allow_exact))
    try:
        validation.check_no_overlap(out, "out", {"x": x}, allow_exact_alias=allow_exact)
        refused = False
    except InvalidArgumentError:
        refused = True
    assert refused == should_refuse, (out.shape, out.stride(), x.shape, x.stride())
