"""Tensor-parallel benchmark: 2 GPUs (NCCL) against 1 GPU, ours against unpatched Hugging Face with the
same plan, and the correctness of every sharded system against its one-GPU run.

    torchrun --nproc-per-node 2 benchmarks/scripts/tp_bench.py --out benchmarks/results/h200-<date>-tp.json

Work (bf16, Qwen3-8B shapes: hidden 4096, intermediate 12288, 32 heads / 8 KV heads of 128):

* ``mlp``: one MLP, M = 8 x 2048 (prefill) and M = 8 (decode). Systems: ``hf`` (gate/up/down
  ``nn.Linear`` with torch's ColwiseParallel / RowwiseParallel), ``ours`` (:class:`FusedMLP` with
  :class:`FusedMLPParallel`), ``ours fp8`` (the same after ``to_fp8()``), each on 1 GPU (``tp=1``) and
  sharded over the 2 GPUs (``tp=2``).
* ``model``: a 2-layer Qwen3 (``Qwen3ForCausalLM``, vocab 32768), prefill 8 x 2048 and one decode step of
  batch 8 on a KV cache of 2048 tokens (the step repeated, the cache cropped back each time).
  Systems: ``hf`` (unpatched) and ``patched`` (``patch_model``), at tp=1 and with ``tp_plan(model)``
  at tp=2; ``patched fp8`` at tp=2.

Per row: wall ms per step (median of samples, back-to-back steps, one synchronisation per sample; decode
steps synchronise each step, as a generate loop does), and the relative L2 error of the tp=2 output
against the same system's tp=1 output. Rank 0 writes the JSON (``{"env", "rows"}``, the layout of
benchmarks/results) and prints a table.

NVLink SHARP / multicast stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
NVSHMEM_DISABLE_NVLS=1): the lent machines do not allow it.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

for _k, _v in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(_k, _v)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

HIDDEN, INTER = 4096, 12288
PREFILL, DECODE = (8, 2048), (8, 1)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _wall_ms(fn, reps: int, samples: int = 7) -> float:
    fn()
    torch.cuda.synchronize()
    dist.barrier()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) / reps * 1e3)
    return statistics.median(out)


class _HFMLP(torch.nn.Module):
    """Qwen3's MLP: down(silu(gate(x)) * up(x)) with three nn.Linear (what torch's styles shard)."""

    def __init__(self):
        super().__init__()
        self.gate_proj = torch.nn.Linear(HIDDEN, INTER, bias=False)
        self.up_proj = torch.nn.Linear(HIDDEN, INTER, bias=False)
        self.down_proj = torch.nn.Linear(INTER, HIDDEN, bias=False)

    def forward(self, x):
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def bench_mlp(mesh, dev) -> list[dict]:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from triton_ops import FusedMLP
    from triton_ops.parallel import FusedMLPParallel

    torch.manual_seed(0)
    hf = _HFMLP().to(dev, torch.bfloat16).eval()
    for lin in (hf.gate_proj, hf.up_proj, hf.down_proj):  # ~unit-variance outputs
        torch.nn.init.normal_(lin.weight, std=lin.in_features ** -0.5)
    ours = FusedMLP.from_hf(copy.deepcopy(hf), "silu")
    systems_1 = {"hf": hf, "ours": ours, "ours fp8": copy.deepcopy(ours).to_fp8()}
    hf_plan = {"gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(), "down_proj": RowwiseParallel()}
    systems_2 = {"hf": parallelize_module(copy.deepcopy(hf), mesh, hf_plan),
                 "ours": parallelize_module(copy.deepcopy(ours), mesh, FusedMLPParallel()),
                 "ours fp8": parallelize_module(copy.deepcopy(ours), mesh, FusedMLPParallel()).to_fp8()}
    rows = []
    with torch.inference_mode():
        for work, (b, s) in (("prefill 8x2048", PREFILL), ("decode b8", DECODE)):
            x = torch.randn(b * s, HIDDEN, device=dev, dtype=torch.bfloat16)
            reps = 20 if s > 1 else 200
            for name in systems_1:
                ref = systems_1[name](x)
                got = systems_2[name](x)
                err = _rel_l2(got, ref)
                for tp, mod in ((1, systems_1[name]), (2, systems_2[name])):
                    rows.append({"op": "tp mlp", "shape": f"{work} H{HIDDEN} I{INTER}", "dtype": "bf16",
                                 "system": f"{name} tp={tp}", "ms": _wall_ms(lambda m=mod, x=x: m(x), reps),
                                 "rel_l2_vs_tp1": err if tp == 2 else 0.0})
    return rows


def _qwen3(layers: int, dev):
    from triton_ops.benchmark.model import MODELS, _build

    spec = next(m for m in MODELS if m.family == "qwen3")
    return _build(spec, layers, dev)


def _step(model, b: int, s: int, cached: int, dev):
    from triton_ops.benchmark.model import _make_step

    return _make_step(model, b, s, cached, dev, compiled=False)


def bench_model(mesh, dev, layers: int = 2) -> list[dict]:
    from torch.distributed.tensor.parallel import parallelize_module

    from triton_ops import patch_model
    from triton_ops.integrations.hf_tp import tp_plan

    base = _qwen3(layers, dev)
    systems = {}
    systems[("hf", 1)] = base
    p1 = copy.deepcopy(base)
    patch_model(p1)
    systems[("patched", 1)] = p1
    h2 = parallelize_module(copy.deepcopy(base), mesh, tp_plan(base))
    systems[("hf", 2)] = h2
    p2 = parallelize_module(copy.deepcopy(base), mesh, tp_plan(base))
    patch_model(p2)
    systems[("patched", 2)] = p2
    f2 = parallelize_module(copy.deepcopy(base), mesh, tp_plan(base))
    patch_model(f2, fp8=True)
    systems[("patched fp8", 2)] = f2
    f1 = copy.deepcopy(base)
    patch_model(f1, fp8=True)
    systems[("patched fp8", 1)] = f1
    rows = []
    with torch.inference_mode():
        for work, (b, s), cached in (("prefill 8x2048", PREFILL, 0), ("decode b8 kv2048", DECODE, 2048)):
            reps = 5 if s > 1 else 50
            outs = {}
            for key, model in systems.items():
                step = _step(model, b, s, cached, dev)
                outs[key] = step()
                ms = _wall_ms(step, reps)
                rows.append({"op": "tp model", "shape": f"qwen3-8b-shapes {layers}L {work}", "dtype": "bf16",
                             "system": f"{key[0]} tp={key[1]}", "ms": ms})
            for row in rows[-len(systems):]:
                name, tp = row["system"].rsplit(" tp=", 1)
                row["rel_l2_vs_tp1"] = _rel_l2(outs[(name, int(tp))], outs[(name, 1)])
    return rows


def _env() -> dict:
    import triton

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {"gpu": torch.cuda.get_device_name(), "gpus": dist.get_world_size(), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda, "commit": commit,
            "nccl": ".".join(map(str, torch.cuda.nccl.version()))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<gpu>-<date>-tp.json)")
    ap.add_argument("--skip-model", action="store_true", help="MLP rows only")
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args(argv)
    if "RANK" not in os.environ:
        raise SystemExit("run under torchrun: torchrun --nproc-per-node 2 benchmarks/scripts/tp_bench.py")
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cuda", (dist.get_world_size(),))
    dev = torch.device("cuda", local)
    rows = bench_mlp(mesh, dev)
    if not args.skip_model:
        rows += bench_model(mesh, dev, args.layers)
    if dist.get_rank() == 0:
        env = _env()
        out = args.out or os.path.join("benchmarks", "results",
                                       f"{env['gpu'].split()[-1].lower()}-{datetime.date.today()}-tp.json")
        with open(out, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)
        for r in rows:
            print(f"{r['op']:9} {r['shape']:42} {r['system']:18} {r['ms']:9.3f} ms  rel_l2 {r['rel_l2_vs_tp1']:.2e}")
        print(f"wrote {out}")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
