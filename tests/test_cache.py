"""ConfigCache: keys, persistence, concurrency (threads and processes), corrupt files, invalidation."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import threading
import time
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from triton_ops.autotuner import cache as cache_mod
from triton_ops.autotuner.cache import CacheKey, ConfigCache
from triton_ops.exceptions import InvalidArgumentError, NumericalError
from triton_ops.models import KernelMetrics


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    monkeypatch.delenv("TRITON_OPS_CACHE_DIR", raising=False)
    # corrupt-file reports are once per process and path; forget earlier tests' reports
    monkeypatch.setattr(cache_mod, "_reported", set())


def _file(d, kernel_type="k"):
    return d / f"configs-{kernel_type}.json"


# ---------------------------------------------------------------------------------------------- basics


def test_memory_cache_keys_and_copies():
    c = ConfigCache()
    assert not c.persistent
    assert c.get("k", (1, 2), "cuda:0") is None
    c.set("k", (1, 2), "cuda:0", {"BLOCK": 64})
    assert c.get("k", [1, 2], "cuda:0") == {"BLOCK": 64}  # list and tuple sizes are one key
    assert c.get("k", (1, 2), "cuda:1") is None  # another device is another entry
    assert c.get("k", (2, 1), "cuda:0") is None
    assert c.get("other", (1, 2), "cuda:0") is None
    got = c.get("k", (1, 2), "cuda:0")
    got["BLOCK"] = 1  # callers get a copy
    assert c.get("k", (1, 2), "cuda:0") == {"BLOCK": 64}
    c.set("k", (1, 2), "cuda:0", {"BLOCK": 128})  # replaces
    c.set("k", 7, "cpu", {"BLOCK": 8})
    assert c.get_all_keys() == [CacheKey("k", (1, 2), "cuda:0"), CacheKey("k", (7,), "cpu")]
    assert ("k", (7,), "cpu") in c and len(c) == 2
    c.clear()
    assert c.get_all_keys() == [] and c.get("k", (1, 2), "cuda:0") is None


def test_device_spellings_are_one_key(tmp_path):
    """Every spelling of one device finds the same entry, so `triton-ops tune` (which stores under the
    current device) and a launcher (which looks up with its tensor's device) meet."""
    import torch

    from triton_ops.autotuner import runtime as rt

    current = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cuda:0"
    spellings = ["cuda", current, torch.device("cuda"), torch.device(current), f" {current} "]
    for dev in spellings:
        assert cache_mod.normalize_device(dev) == current
        assert rt.device_key(dev) == current
    for dev in ("cpu", "cpu:0", torch.device("cpu"), torch.device("cpu", 0)):
        assert cache_mod.normalize_device(dev) == "cpu"
    assert cache_mod.normalize_device(torch.device("cuda", 3)) == "cuda:3"
    assert cache_mod.normalize_device("my-box") == "my-box"  # not a torch device: a label kept as given

    c = ConfigCache(tmp_path)
    for i, stored in enumerate(spellings):
        c.set("k", (8,), stored, {"A": i})
        for asked in spellings:
            assert c.get("k", (8,), asked) == {"A": i}
            assert ConfigCache(tmp_path).get("k", (8,), asked) == {"A": i}  # through the file too
    assert c.get_all_keys() == [CacheKey("k", (8,), current)]
    c.set("k", (8,), "cpu:0", {"A": -1})
    assert c.get("k", (8,), torch.device("cpu")) == {"A": -1}
    assert sorted(k.device for k in c.get_all_keys()) == sorted(["cpu", current])
    entries = json.loads(_file(tmp_path).read_text())["entries"]
    assert sorted(e["device"] for e in entries.values()) == sorted(["cpu", current])


def test_files_with_uncanonical_device_names_are_merged(tmp_path):
    """A file written before device names were canonical ("cuda") is read as "cuda:<index>", and the
    next write merges the two spellings into one entry (the newer wins)."""
    current = cache_mod.normalize_device("cuda")
    c = ConfigCache(tmp_path)
    c.set("k", (8,), "cuda", {"A": 1})
    data = json.loads(_file(tmp_path).read_text())
    [(skey, raw)] = data["entries"].items()
    raw["device"] = "cuda"
    raw["time"] = "2000-01-01T00:00:00+00:00"
    data["entries"] = {skey.replace(current, "cuda"): raw}
    _file(tmp_path).write_text(json.dumps(data))
    fresh = ConfigCache(tmp_path)
    assert fresh.get("k", (8,), current) == {"A": 1}
    assert fresh.get_all_keys() == [CacheKey("k", (8,), current)]
    # both spellings in one file: the newer entry is the one read, whichever comes first in the file
    newer = dict(raw, device=current, config={"A": 3}, time="2001-01-01T00:00:00+00:00")
    for order in ((skey.replace(current, "cuda"), raw), (skey, newer)), ((skey, newer), ("x", raw)):
        data["entries"] = dict(order)
        _file(tmp_path).write_text(json.dumps(data))
        assert ConfigCache(tmp_path).get("k", (8,), "cuda") == {"A": 3}
    fresh.set("k", (8,), current, {"A": 2})
    entries = json.loads(_file(tmp_path).read_text())["entries"]
    assert [(e["device"], e["config"]) for e in entries.values()] == [(current, {"A": 2})]


def test_clear_one_kernel_type(tmp_path):
    c = ConfigCache(tmp_path)
    c.set("a", (1,), "cpu", {"X": 1})
    c.set("b", (1,), "cpu", {"X": 2})
    c.clear("a")
    assert [k.kernel_type for k in c.get_all_keys()] == ["b"]
    assert not _file(tmp_path, "a").exists() and _file(tmp_path, "b").exists()
    assert ConfigCache(tmp_path).get("b", (1,), "cpu") == {"X": 2}


@pytest.mark.parametrize("args", [("", (1,), "cpu"), ("k", (1.5,), "cpu"), ("k", (-1,), "cpu"),
                                  ("k", "12", "cpu"), ("k", (True,), "cpu"), ("k", (1,), ""),
                                  ("k", (1,), None)])
def test_bad_keys_raise(args):
    with pytest.raises(InvalidArgumentError):
        ConfigCache().get(*args)


def test_config_values_must_be_json(tmp_path):
    c = ConfigCache(tmp_path)
    with pytest.raises(InvalidArgumentError, match="JSON"):
        c.set("k", (1,), "cpu", {"fn": object()})
    with pytest.raises(InvalidArgumentError, match="JSON"):
        c.set("k", (1,), "cpu", {"nested": {"a": 1}})
    with pytest.raises(InvalidArgumentError):
        c.set("k", (1,), "cpu", [("BLOCK", 1)])
    c.set("k", (1,), "cpu", {"BLOCK": np.int64(64), "TMA": np.bool_(True), "name": "x", "tiles": (1, 2),
                             "order": [3, (4, 5)], "none": None, "scale": np.float32(0.5)})
    want = {"BLOCK": 64, "TMA": True, "name": "x", "tiles": (1, 2), "order": [3, (4, 5)], "none": None,
            "scale": 0.5}
    for reader in (c, ConfigCache(tmp_path)):  # in memory and through the file: tuples stay tuples
        got = reader.get("k", (1,), "cpu")
        assert got == want
        assert [type(v) for v in got.values()] == [type(v) for v in want.values()]
        assert type(got["order"][1]) is tuple and type(got["BLOCK"]) is int and type(got["TMA"]) is bool


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float64("nan"), (1.0, math.nan), [math.inf]])
def test_non_finite_config_values_are_refused(bad):
    c = ConfigCache()
    with pytest.raises(NumericalError, match="finite"):
        c.set("k", (1,), "cpu", {"alpha": bad})
    assert c.get("k", (1,), "cpu") is None  # nothing half-stored
    # metrics are informational: a non-finite figure is stored as "not measured"
    c.set("k", (1,), "cpu", {"alpha": 1.0}, metrics={"latency_ms": 0.5, "throughput_tflops": math.nan})
    assert c.get_entry("k", (1,), "cpu")["metrics"] == {"latency_ms": 0.5, "throughput_tflops": None}


def test_nested_values_are_copies():
    c = ConfigCache()
    c.set("k", (1,), "cpu", {"order": [1, [2, 3]]})
    got = c.get("k", (1,), "cpu")
    got["order"][1].append(4)
    assert c.get("k", (1,), "cpu") == {"order": [1, [2, 3]]}


# ---------------------------------------------------------------------------------------------- disk


def test_persistence_across_instances(tmp_path):
    a = ConfigCache(tmp_path)
    a.set("gemm", (4096, 4096, 4096), "cuda:0", {"BLOCK_M": 128}, metrics=KernelMetrics(0.25, 550.0))
    b = ConfigCache(tmp_path)
    assert b.get("gemm", (4096, 4096, 4096), "cuda:0") == {"BLOCK_M": 128}
    entry = b.get_entry("gemm", (4096, 4096, 4096), "cuda:0")
    assert entry["metrics"]["latency_ms"] == 0.25 and entry["metrics"]["throughput_tflops"] == 550.0
    data = json.loads(_file(tmp_path, "gemm").read_text())
    assert data["format"] == cache_mod.FORMAT_VERSION and len(data["entries"]) == 1
    # a later write by another instance is seen by the first one without re-creating it
    b.set("gemm", (1, 1, 1), "cuda:0", {"BLOCK_M": 16})
    assert a.get("gemm", (1, 1, 1), "cuda:0") == {"BLOCK_M": 16}
    # and a clear by another instance too
    b.clear()
    assert a.get("gemm", (4096, 4096, 4096), "cuda:0") is None


def test_env_var_gives_the_default_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_OPS_CACHE_DIR", str(tmp_path / "cfg"))
    c = ConfigCache()
    assert c.persistent and c.cache_dir == tmp_path / "cfg"
    c.set("k", (3,), "cpu", {"A": 1})
    assert _file(tmp_path / "cfg").exists()


def test_unwritable_directory_warns_and_keeps_memory(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    c = ConfigCache(blocker / "sub")
    with pytest.warns(RuntimeWarning, match="could not write"):
        c.set("k", (1,), "cpu", {"A": 1})
    assert c.get("k", (1,), "cpu") == {"A": 1}


# ---------------------------------------------------------------------------------------------- concurrency


def test_threads_share_one_instance_and_separate_instances(tmp_path):
    shared = ConfigCache(tmp_path)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            own = ConfigCache(tmp_path)
            for i in range(15):
                (shared if i % 2 else own).set("k", (t, i), "cpu", {"T": t, "I": i})
                assert shared.get("k", (t, i), "cpu") == {"T": t, "I": i}
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    fresh = ConfigCache(tmp_path)
    assert len(fresh.get_all_keys()) == 6 * 15
    assert all(fresh.get("k", (t, i), "cpu") == {"T": t, "I": i} for t in range(6) for i in range(15))
    json.loads(_file(tmp_path).read_text())
    assert not list(tmp_path.glob("*.tmp"))


def _process_writer(cache_dir: str, worker: int, n: int, barrier) -> None:
    c = ConfigCache(cache_dir)
    barrier.wait()
    for i in range(n):
        c.set("k", (worker, i), "cpu", {"W": worker, "I": i})
        c.set("k", (999,), "cpu", {"last_writer": worker})  # one key every process fights over


def test_processes_writing_at_once_lose_nothing(tmp_path):
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    n_proc, n = 4, 20
    barrier = ctx.Barrier(n_proc)
    procs = [ctx.Process(target=_process_writer, args=(str(tmp_path), w, n, barrier)) for w in range(n_proc)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    c = ConfigCache(tmp_path)
    assert len(c.get_all_keys()) == n_proc * n + 1
    for w in range(n_proc):
        for i in range(n):
            assert c.get("k", (w, i), "cpu") == {"W": w, "I": i}
    assert c.get("k", (999,), "cpu")["last_writer"] in range(n_proc)
    data = json.loads(_file(tmp_path).read_text())
    assert len(data["entries"]) == n_proc * n + 1
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.corrupt"))


# ---------------------------------------------------------------------------------------------- corruption


@pytest.mark.parametrize("content", ["{not json", '{"format": 1, "entries": {"k|1|cpu|cpu": {"conf',
                                     "[1, 2, 3]", "", '{"format": 1}'])
def test_corrupt_file_is_reported_once_and_rebuilt(tmp_path, content):
    good = ConfigCache(tmp_path)
    good.set("k", (5,), "cpu", {"A": 5})
    _file(tmp_path).write_text(content)  # truncated / garbage / another program's file
    c = ConfigCache(tmp_path)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert c.get("k", (1,), "cpu") is None
    assert (tmp_path / "configs-k.json.corrupt").read_text() == content
    json.loads(_file(tmp_path).read_text())  # rebuilt: valid again
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once: no second warning
        assert c.get("k", (1,), "cpu") is None
        c.set("k", (1,), "cpu", {"A": 1})
    assert ConfigCache(tmp_path).get("k", (1,), "cpu") == {"A": 1}


def test_corrupt_file_met_by_a_writer(tmp_path):
    _file(tmp_path).write_text("\x00\x01garbage")
    c = ConfigCache(tmp_path)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        c.set("k", (2,), "cpu", {"B": 2})
    assert ConfigCache(tmp_path).get("k", (2,), "cpu") == {"B": 2}


def test_bad_entries_are_skipped_individually(tmp_path):
    c = ConfigCache(tmp_path)
    c.set("k", (1,), "cpu", {"A": 1})
    data = json.loads(_file(tmp_path).read_text())
    data["entries"]["junk"] = {"kernel_type": "k", "problem_size": "oops"}
    data["entries"]["junk2"] = 42
    _file(tmp_path).write_text(json.dumps(data))
    fresh = ConfigCache(tmp_path)
    with pytest.warns(RuntimeWarning, match="2 entries .* could not be read"):
        assert fresh.get("k", (1,), "cpu") == {"A": 1}
    assert fresh.get_all_keys() == [CacheKey("k", (1,), "cpu")]


@pytest.mark.parametrize("value", [{"a": 1}, math.nan, {"__tuple__": 3}, "Infinity"])
def test_hand_edited_config_values_skip_the_entry(tmp_path, value):
    c = ConfigCache(tmp_path)
    c.set("k", (1,), "cpu", {"A": 1})
    c.set("k", (2,), "cpu", {"A": 2})
    data = json.loads(_file(tmp_path).read_text())
    raw = next(e for e in data["entries"].values() if e["problem_size"] == [2])
    raw["config"]["A"] = value
    text = json.dumps(data).replace('"Infinity"', "Infinity")  # json.loads reads the bare token as inf
    _file(tmp_path).write_text(text)
    fresh = ConfigCache(tmp_path)
    with pytest.warns(RuntimeWarning, match="could not be read"):
        assert fresh.get("k", (1,), "cpu") == {"A": 1}
    assert fresh.get("k", (2,), "cpu") is None


def test_own_entries_survive_a_damaged_file(tmp_path):
    """An instance keeps what it set (or read) when its file is damaged behind its back, and the rebuilt
    file holds those entries again."""
    c = ConfigCache(tmp_path)
    c.set("k", (1,), "cpu", {"A": 1})
    c.set("k", (2,), "cpu", {"A": 2})
    _file(tmp_path).write_text("{garbage")
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert c.get("k", (1,), "cpu") == {"A": 1}
    assert c.get("k", (2,), "cpu") == {"A": 2}  # and stays so: no later read forgets it
    assert ConfigCache(tmp_path).get("k", (2,), "cpu") == {"A": 2}  # rebuilt from memory
    assert (tmp_path / "configs-k.json.corrupt").read_text() == "{garbage"


def test_truncated_file_keeps_its_complete_entries(tmp_path):
    c = ConfigCache(tmp_path)
    for i in range(6):
        c.set("k", (i,), "cpu", {"A": i, "T": (i, i)})
    text = _file(tmp_path).read_text()
    last = text.rindex('"kernel_type"')  # cut inside the last entry
    _file(tmp_path).write_text(text[:last + 5])
    fresh = ConfigCache(tmp_path)
    with pytest.warns(RuntimeWarning, match=r"5 complete entries recovered") as rec:
        keys = fresh.get_all_keys()
    assert len([w for w in rec if "corrupt" in str(w.message)]) == 1
    assert sorted(k.problem_size for k in keys) == [(i,) for i in range(5)]
    assert all(fresh.get("k", (i,), "cpu") == {"A": i, "T": (i, i)} for i in range(5))
    assert len(json.loads(_file(tmp_path).read_text())["entries"]) == 5  # rebuilt with what was recovered
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        assert ConfigCache(tmp_path).get("k", (0,), "cpu") == {"A": 0, "T": (0, 0)}


def test_rebuild_by_another_instance_does_not_make_this_one_forget(tmp_path):
    a = ConfigCache(tmp_path)
    a.set("k", (1,), "cpu", {"A": 1})
    _file(tmp_path).write_bytes(b"\xff\xfe not even text")  # nothing recoverable
    b = ConfigCache(tmp_path)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert b.get("k", (1,), "cpu") is None  # b never knew it; it rebuilds an empty file
    b.set("k", (2,), "cpu", {"A": 2})
    assert a.get("k", (1,), "cpu") == {"A": 1}  # a keeps it ...
    assert a.get("k", (2,), "cpu") == {"A": 2}
    assert ConfigCache(tmp_path).get("k", (1,), "cpu") == {"A": 1}  # ... and wrote it back
    # a clear is a real removal, seen by every instance
    b.clear("k")
    assert a.get("k", (1,), "cpu") is None and a.get("k", (2,), "cpu") is None


def test_damage_after_a_clear_does_not_bring_cleared_entries_back(tmp_path):
    """An instance that has not seen a clear keeps its entries through damage only when the damaged file
    could be one it knew; a file whose surviving header shows it was created afresh means a clear."""
    a, b = ConfigCache(tmp_path), ConfigCache(tmp_path)
    a.set("k", (1,), "cpu", {"A": 1})
    b.clear()
    b.set("k", (2,), "cpu", {"A": 2})
    text = _file(tmp_path).read_text()
    _file(tmp_path).write_text(text[:text.index('"entries"') + 20])  # header kept, entries cut
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert a.get("k", (1,), "cpu") is None
    assert ConfigCache(tmp_path).get("k", (1,), "cpu") is None  # and not written back either


def test_damage_to_a_rebuilt_file_keeps_what_an_instance_holds(tmp_path):
    """A file rebuilt by another instance after its header was lost has an unknown lineage; damage to
    that file (even cutting its header short) must not be taken for a clear by an instance holding
    entries from before."""
    a, b = ConfigCache(tmp_path), ConfigCache(tmp_path)
    a.set("k", (1,), "cpu", {"A": 1})
    _file(tmp_path).write_bytes(b"")
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert b.get("k", (1,), "cpu") is None  # rebuilt, knowing nothing of the entry
    text = _file(tmp_path).read_text()
    for cut in range(text.index('"epoch"'), len(text), 7):
        _file(tmp_path).write_text(text[:cut])
        assert a.get("k", (1,), "cpu") == {"A": 1}, cut
    assert ConfigCache(tmp_path).get("k", (1,), "cpu") == {"A": 1}


@pytest.mark.parametrize("content", ["[" * 100_000, b"\x80\x81", '{"format": 1, "entries": {"x": ' + "[" * 50_000])
def test_pathological_files_are_corrupt_not_crashes(tmp_path, content):
    c = ConfigCache(tmp_path)
    c.set("k", (1,), "cpu", {"A": 1})
    if isinstance(content, bytes):
        _file(tmp_path).write_bytes(content)
    else:
        _file(tmp_path).write_text(content)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert ConfigCache(tmp_path).get("k", (1,), "cpu") is None
    assert c.get("k", (1,), "cpu") == {"A": 1}


def test_kernel_types_never_share_a_file(tmp_path):
    names = ["attn_fp8", "attn/fp8", "attn fp8", "attn%2Ffp8", "Gemm", "gemm", "GEMM", "a" * 300, "a" * 301,
             "ä", "..", "con"]
    c = ConfigCache(tmp_path)
    for i, kt in enumerate(names):
        c.set(kt, (1,), "cpu", {"I": i})
    files = {cache_mod._file_name(kt).lower() for kt in names}  # distinct even where case is ignored
    assert len(files) == len(names)
    assert all(len(f.encode()) < 200 for f in files)
    c.clear("attn_fp8")
    fresh = ConfigCache(tmp_path)
    assert fresh.get("attn_fp8", (1,), "cpu") is None
    for i, kt in enumerate(names):
        if kt != "attn_fp8":
            assert fresh.get(kt, (1,), "cpu") == {"I": i}, kt
    assert cache_mod._file_name("gated_mlp") == "configs-gated_mlp.json"  # plain names are unchanged


def test_a_rewrite_with_an_unchanged_stamp_is_still_seen(tmp_path, monkeypatch):
    """A file replaced within the file system's timestamp granularity can keep its (inode, size, mtime)
    stamp (inode numbers are reused at once): a stamp younger than STAMP_TRUST_S is not trusted."""
    a, b = ConfigCache(tmp_path), ConfigCache(tmp_path)
    a.set("k", (1,), "cpu", {"A": 1})
    fixed = (1, 100, time.time_ns())
    monkeypatch.setattr(ConfigCache, "_stat", staticmethod(lambda path: fixed))
    assert a.get("k", (1,), "cpu") == {"A": 1}
    b.set("k", (1,), "cpu", {"A": 2})  # same size, "same" stamp
    assert a.get("k", (1,), "cpu") == {"A": 2}


def test_other_format_version_is_ignored(tmp_path):
    _file(tmp_path).write_text(json.dumps({"format": 99, "entries": {"x": {}}}))
    c = ConfigCache(tmp_path)
    assert c.get("k", (1,), "cpu") is None
    c.set("k", (1,), "cpu", {"A": 1})
    assert json.loads(_file(tmp_path).read_text())["format"] == cache_mod.FORMAT_VERSION


# ---------------------------------------------------------------------------------------------- invalidation


@pytest.mark.parametrize("what", ["_library_version", "_triton_version", "_device_model"])
def test_entries_invalid_when_environment_changes(tmp_path, monkeypatch, what):
    c = ConfigCache(tmp_path)
    c.set("k", (1,), "cuda:0", {"A": 1})
    assert c.get("k", (1,), "cuda:0") == {"A": 1}
    monkeypatch.setattr(cache_mod, what, lambda *a: "something-else")
    assert c.get("k", (1,), "cuda:0") is None
    assert ConfigCache(tmp_path).get("k", (1,), "cuda:0") is None
    assert c.get_all_keys() == []
    monkeypatch.undo()
    monkeypatch.delenv("TRITON_OPS_CACHE_DIR", raising=False)
    assert c.get("k", (1,), "cuda:0") == {"A": 1}  # back in the original environment


def test_new_library_version_prunes_old_entries_on_write(tmp_path, monkeypatch):
    c = ConfigCache(tmp_path)
    c.set("k", (1,), "cpu", {"A": 1})
    monkeypatch.setattr(cache_mod, "_library_version", lambda: "99.0")
    c2 = ConfigCache(tmp_path)
    c2.set("k", (2,), "cpu", {"A": 2})
    entries = json.loads(_file(tmp_path).read_text())["entries"]
    assert [e["problem_size"] for e in entries.values()] == [[2]]


def test_gpu_models_coexist_in_one_file(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "_device_model", lambda d: "NVIDIA H100")
    ConfigCache(tmp_path).set("k", (1,), "cuda:0", {"A": 100})
    monkeypatch.setattr(cache_mod, "_device_model", lambda d: "NVIDIA H200")
    ConfigCache(tmp_path).set("k", (1,), "cuda:0", {"A": 200})
    assert ConfigCache(tmp_path).get("k", (1,), "cuda:0") == {"A": 200}
    monkeypatch.setattr(cache_mod, "_device_model", lambda d: "NVIDIA H100")
    assert ConfigCache(tmp_path).get("k", (1,), "cuda:0") == {"A": 100}


@given(st.lists(st.tuples(st.sampled_from(["a", "b/c", "d e"]), st.lists(st.integers(0, 5), max_size=3),
                          st.sampled_from(["cpu", "cuda:0", "cuda"]), st.integers(0, 1 << 20)), max_size=12))
def test_cache_matches_a_dict_model_through_disk(tmp_path_factory, ops):
    d = tmp_path_factory.mktemp("model")
    c = ConfigCache(d)
    model = {}
    for kt, size, dev, v in ops:
        c.set(kt, size, dev, {"V": v})
        model[(kt, tuple(size), cache_mod.normalize_device(dev))] = {"V": v}  # "cuda" is "cuda:<index>"
    fresh = ConfigCache(d)  # everything went through the JSON files
    assert sorted(fresh.get_all_keys()) == sorted(CacheKey(*k) for k in model)
    for k, cfg in model.items():
        assert fresh.get(*k) == cfg
