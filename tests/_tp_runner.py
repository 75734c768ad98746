"""Run tests/_tp_cases.py in a group of spawned processes (gloo, file:// rendezvous in a temp dir)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def run_group(world: int, cases: list, timeout_s: float = 600.0) -> dict:
    """{case: {"checks": [...], "ranks": n} or {"error": text}} merged over the ranks (every rank's checks
    are kept, tagged with the rank). A group that does not finish within ``timeout_s`` (a rank stuck in a
    collective after another failed) is terminated and reported as an error."""
    import torch.multiprocessing as mp

    from . import _tp_cases

    tmp = tempfile.mkdtemp(prefix="tp_test_")
    init = os.path.join(tmp, "rendezvous")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_tp_cases.worker, args=(r, world, init, tmp, cases), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    stuck = [p for p in procs if p.is_alive()]
    for p in stuck:
        p.terminate()
        p.join(10)
    merged: dict = {}
    for r in range(world):
        path = os.path.join(tmp, f"rank{r}.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for case, res in json.load(f).items():
                m = merged.setdefault(case, {"checks": [], "errors": []})
                if "error" in res:
                    m["errors"].append(f"rank {r}:\n{res['error']}")
                else:
                    m["checks"] += [[f"rank {r}: {c[0]}"] + c[1:] for c in res["checks"]]
                    m["seconds"] = max(m.get("seconds", 0.0), res.get("seconds", 0.0))
    if stuck:
        merged["_group"] = {"checks": [], "errors": [f"{len(stuck)} of {world} ranks did not finish in {timeout_s} s"]}
    return merged


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests._tp_runner import run_group as _run

    world = int(sys.argv[1])
    cases = [(c.split(":")[0], c.split(":")[1:]) for c in sys.argv[2:]]
    t = time.time()
    res = _run(world, cases)
    for k, v in res.items():
        for e in v["errors"]:
            print(k, "ERROR", e[-3000:])
        for c in v["checks"]:
            print(k, c)
        print(k, "seconds", v.get("seconds"))
    print("time", time.time() - t)
