"""End-to-end model benchmark: ``triton-ops bench model``.

Hugging Face ``Qwen3ForCausalLM`` and ``LlamaForCausalLM`` with 8B layer shapes (hidden 4096, 32 heads /
8 KV heads, head_dim 128, intermediate 12288 (Qwen3) / 14336 (Llama)), a few random-init layers, bf16,
sdpa attention, in inference mode. Each is run as

* ``hf eager``: the unpatched model;
* ``hf compile``: the unpatched model under ``torch.compile`` (default mode, dynamic=False);
* ``patched eager`` / ``patched compile``: after :func:`triton_ops.patch_model`;
* ``patched fp8 eager``: ``patch_model(fp8=True)`` (FP8 gate/up and down projections).

Work: prefill of ``B x 2048`` tokens (B = 1, 8) from an empty cache, and one decode step at batch
1 / 8 / 64 with a (dynamic) KV cache already holding 2048 tokens (the same step repeated, the cache
cropped back after each, so every repetition does identical work). A decode step ends with a synchronisation, as
in a generate loop that needs the token before the next step.

Per row: wall time per forward (``ms``: back-to-back forwards, one synchronisation at the end of each
sample; the systems of one work are timed in turn for several rounds and each reports its median round,
with the range in ``ms_spread``: what an eager user waits for) and GPU kernel time per forward
(``gpu_ms``: the sum of CUDA kernel durations from ``torch.profiler``). A model whose wall time is well
above its kernel time is host-bound. Logits of every system are checked against the unpatched eager
model's (relative L2 error) before timing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

SEQ = 2048


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    intermediate: int


MODELS = (ModelSpec("qwen3-8b-shapes", "qwen3", 12288), ModelSpec("llama-8b-shapes", "llama", 14336))
#: (label, batch, new tokens, cached tokens)
WORK = (("prefill 1x2048", 1, SEQ, 0), ("prefill 8x2048", 8, SEQ, 0), ("decode b1 kv2048", 1, 1, SEQ),
        ("decode b8 kv2048", 8, 1, SEQ), ("decode b64 kv2048", 64, 1, SEQ))
SYSTEMS = ("hf eager", "hf compile", "patched eager", "patched compile", "patched fp8 eager")


def _config(spec: ModelSpec, layers: int):
    import transformers

    common = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                  intermediate_size=spec.intermediate, num_hidden_layers=layers, vocab_size=32768,
                  max_position_embeddings=8192, rms_norm_eps=1e-6, attn_implementation="sdpa")
    if spec.family == "qwen3":
        return transformers.Qwen3Config(**common)
    return transformers.LlamaConfig(**common)


def _build(spec: ModelSpec, layers: int, device: str):
    import transformers

    torch.manual_seed(0)
    cfg = _config(spec, layers)
    cls = transformers.Qwen3ForCausalLM if spec.family == "qwen3" else transformers.LlamaForCausalLM
    with torch.device(device):
        model = cls(cfg).to(torch.bfloat16).eval()
    return model


def _wall_ms(fn: Callable[[], object], reps: int, samples: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) / reps * 1e3)
    return statistics.median(out)


def _gpu_ms(fn: Callable[[], object], reps: int = 3) -> float:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    total_us = 0.0
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            total_us += evt.device_time
    return total_us / reps / 1e3


def _make_step(model, batch: int, new: int, cached: int, device: str, compiled: bool):
    """A closure running one forward of the given work, and the tensor of its logits."""
    import transformers

    torch.manual_seed(1)
    vocab = model.config.vocab_size
    fwd = torch.compile(model, dynamic=False) if compiled else model
    if cached == 0:
        ids = torch.randint(0, vocab, (batch, new), device=device)
        return lambda: fwd(input_ids=ids, use_cache=False).logits
    cache = transformers.DynamicCache(config=model.config)
    prompt = torch.randint(0, vocab, (batch, cached), device=device)
    model(input_ids=prompt, past_key_values=cache, use_cache=True)  # fill the cache (eager, once)
    ids = torch.randint(0, vocab, (batch, 1), device=device)

    def decode_step():
        # One step on a cache of `cached` tokens, then crop it back, so every repetition does the same
        # work. A decode loop waits for each step's token before the next step (sampling reads the
        # logits), so a step is timed with its synchronisation: wall time = host time + GPU time, as a
        # generate loop pays it. (A static cache reused this way tripped a device-side index assert in
        # its update on the GPU machine, for the unpatched model too; the dynamic cache is what eager
        # Hugging Face decoding uses by default.)
        logits = fwd(input_ids=ids, past_key_values=cache, use_cache=True).logits
        cache.crop(-1)  # drop the token this step appended
        torch.cuda.synchronize()
        return logits

    return decode_step


def run_model_bench(device: str | None = None, select: list[str] | None = None, quick: bool = False,
                    layers: int = 2) -> list[dict]:
    """Rows ``{"op": "model", "shape": "<model> <work>", "system", "ms", "gpu_ms", "rel_err"}``."""
    from ..exceptions import DeviceError
    from ..integrations import patch_model

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(dev).type != "cuda":
        raise DeviceError("triton-ops bench model needs a CUDA GPU (8B layer shapes in bf16); the CPU proof of "
                          "the patched models is the test suite (tests/test_integrations_hf.py)")
    # `select` names model families ("qwen3", "llama"), work ("prefill", "decode", "b8") or systems
    # ("eager", "compile", "fp8"); each kind filters only when one of its names is given.
    wanted = [w.strip().lower() for w in (select or [])]

    def pick(items, names):
        chosen = [i for i in items if any(w in names(i) for w in wanted)]
        return chosen or list(items)

    models = pick(MODELS, lambda m: m.name + " " + m.family)
    work = pick(WORK, lambda w: w[0])
    systems = pick(SYSTEMS, lambda s: s)
    if quick:
        systems = [s for s in systems if "compile" not in s]
    if "hf eager" not in systems:
        systems.insert(0, "hf eager")  # every row's logits and speed-up are against it
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    rows: list[dict] = []
    for spec in models:
        base = _build(spec, layers, dev)
        variants = {"hf": base}
        patched = _build(spec, layers, dev)
        patch_model(patched)
        variants["patched"] = patched
        if "patched fp8 eager" in systems:
            p8 = _build(spec, layers, dev)
            patch_model(p8, fp8=True)
            variants["patched fp8"] = p8
        with torch.inference_mode():
            for label, batch, new, cached in work:
                rows += _time_work(spec, layers, label, batch, new, cached, systems, variants, dev)
        del base, patched, variants
        torch.cuda.empty_cache()
    _add_speedups(rows)
    return rows


#: Timing rounds per work: the systems are timed in turn, round after round, and each row reports its
#: median round. The host of the GPU machine is shared: a model's wall time at decode moved from 2.0 to
#: 3.5 ms between rows timed one after the other, more than the differences being measured, so systems
#: are interleaved rather than timed in blocks.
ROUNDS = 7


def _time_work(spec, layers, label, batch, new, cached, systems, variants, dev) -> list[dict]:
    steps, rows, ref = {}, [], None
    for system in systems:
        kind, mode = system.rsplit(" ", 1)
        row = {"op": "model", "shape": f"{spec.name} {layers}L {label}", "dtype": "bf16", "system": system}
        try:
            step = _make_step(variants[kind], batch, new, cached, dev, mode == "compile")
            logits = step().float()
            if ref is None:
                ref = logits
            row["rel_err"] = float((logits - ref).norm() / ref.norm())
            del logits
            steps[system] = step
        except Exception as exc:  # report and keep going: one failing system hides nothing else
            row["status"] = "FAILED"
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        rows.append(row)
    reps = 3 if new > 1 else 20
    times: dict[str, list[float]] = {s: [] for s in steps}
    for _ in range(ROUNDS):
        for system, step in list(steps.items()):
            try:
                times[system].append(_wall_ms(step, reps, samples=1))
            except Exception as exc:
                steps.pop(system)
                row = next(r for r in rows if r["system"] == system)
                row["status"] = "FAILED"
                row["error"] = f"{type(exc).__name__}: {exc}"[:400]
    for row in rows:
        system = row["system"]
        if system in steps:
            row["ms"] = statistics.median(times[system])
            row["ms_spread"] = [round(min(times[system]), 4), round(max(times[system]), 4)]
            row["gpu_ms"] = _gpu_ms(steps[system])
        print("row:", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    del steps
    torch.cuda.empty_cache()
    return rows


def _add_speedups(rows: list[dict]) -> None:
    """``x_hf_eager`` / ``x_hf_compile``: the unpatched model's wall time over this row's (>1: faster)."""
    by_shape: dict[str, dict[str, float]] = {}
    for r in rows:
        if "ms" in r:
            by_shape.setdefault(r["shape"], {})[r["system"]] = r["ms"]
    for r in rows:
        base = by_shape.get(r["shape"], {})
        if "ms" not in r:
            continue
        for ref in ("hf eager", "hf compile"):
            if ref in base and r["system"] != ref:
                r["x_" + ref.replace(" ", "_")] = round(base[ref] / r["ms"], 3)


def model_markdown(rows: list[dict]) -> str:
    lines = ["| model / work | system | wall ms | GPU kernel ms | vs HF eager | vs HF compile | logits rel. err |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") == "FAILED":
            lines.append(f"| {r['shape']} | {r['system']} | FAILED: {r.get('error', '')[:120]} | | | | |")
            continue
        lines.append(f"| {r['shape']} | {r['system']} | {r['ms']:.3f} | {r['gpu_ms']:.3f} | "
                     f"{r.get('x_hf_eager', '-')} | {r.get('x_hf_compile', '-')} | {r['rel_err']:.2e} |")
    return "\n".join(lines)
