"""Host cost per eager call: ``triton-ops bench host``.

A decode step launches each op once per layer on tensors that take the GPU a few microseconds, so the
Python and launch work around a kernel decides whether the library speeds a model up. This measures it
the way a model pays it: wall time of many back-to-back eager calls with a repeated signature (so launch
plans are warm) and no synchronisation inside the loop; the GPU queue absorbs the kernels, so the loop's
time is host time as long as fewer calls are queued than the driver's launch queue holds (~1000; we time
200 per sample).

Beside every op: ``torch.add`` (a PyTorch launch) and an empty Triton kernel launched the ordinary way
(``kernel[grid](...)``), the floor the targets are stated against (<= 1.5x of it). Each op runs twice: with
plain tensors and with its weights as ``nn.Parameter`` (what a module holds), under ``torch.no_grad()``
as in inference.

With no GPU the kernels would run in Triton's CPU interpreter, whose cost would drown the Python side, so
the ops run inside :func:`triton_ops.launch.host_only` (everything but the launch itself): the numbers are
then the Python-side cost of a call on this CPU, and the empty-kernel floor is not measured.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

CALLS_PER_SAMPLE = 200
SAMPLES = 7


@dataclass
class HostCase:
    name: str
    shape: str
    dtype: str
    make: Callable[[bool], Callable[[], object]]  # make(param: bool) -> the call to time
    ours: bool = True


def _time_host_us(fn: Callable[[], object], gpu: bool, calls: int = CALLS_PER_SAMPLE,
                  samples: int = SAMPLES) -> float:
    """Median over samples of the wall time per call of ``calls`` back-to-back calls, in us."""
    for _ in range(20):
        fn()
    if gpu:
        torch.cuda.synchronize()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        if gpu:
            torch.cuda.synchronize()  # drain the queue between samples, outside the timed region
        out.append((t1 - t0) / calls * 1e6)
    return statistics.median(out)


def _empty_kernel_call(device: str) -> Callable[[], object]:
    from ._empty_kernel import empty_kernel

    x = torch.empty(16, device=device)
    return lambda: empty_kernel[(1,)](x, 16, BLOCK=16)


def _weights(param: bool, *tensors: torch.Tensor):
    if not param:
        return tensors
    return tuple(torch.nn.Parameter(t, requires_grad=True) for t in tensors)


def host_cases(device: str) -> list[HostCase]:
    """Decode-sized calls of every public op (Qwen3-8B / Llama-8B layer shapes, batch 1)."""
    import triton_ops as T

    dt = torch.bfloat16
    dev = device
    # Qwen3-8B layer shapes on a GPU. With no GPU the Python side is the same at small sizes, and the
    # interpreter still runs the one-off set-up work (weight quantization), so the shapes shrink.
    H, I, NH, NKV, HD = (4096, 12288, 32, 8, 128) if device != "cpu" else (256, 512, 2, 1, 128)  # noqa: E741
    cases: list[HostCase] = []

    def rn(*shape, dtype=dt):
        return torch.randn(*shape, device=dev, dtype=dtype)

    def tables(rows, rot):
        ang = torch.rand(rows, rot // 2, device=dev) * 6.28
        ang = torch.cat([ang, ang], -1)
        return ang.cos().to(dt), ang.sin().to(dt)

    cases.append(HostCase("torch.add", f"1x{H}", "bf16", lambda p: _add_call(rn(1, H)), ours=False))

    def rope_row(p):
        x = rn(1, 1, H)
        (w,) = _weights(p, torch.ones(H, device=dev, dtype=dt))
        cos, sin = tables(4096, HD)
        pos = torch.tensor([[17]], device=dev)
        return lambda: T.fused_rmsnorm_rope(x, w, cos, sin, head_dim=HD, position_ids=pos)

    cases.append(HostCase("fused_rmsnorm_rope", f"1x1x{H} hd128 pos", "bf16", rope_row))

    def qk_norm(p):
        q = rn(1, 1, NH * HD)
        (w,) = _weights(p, torch.ones(HD, device=dev, dtype=dt))
        cos, sin = (t[None, 17:18] for t in tables(4096, HD))  # HF's per-token [1, 1, 128] tables
        return lambda: T.fused_rmsnorm_rope(q, w, cos, sin, head_dim=HD)

    cases.append(HostCase("fused_rmsnorm_rope", f"QK-norm 1x1x{NH}x{HD} per-token tables", "bf16", qk_norm))

    def norm_module(p):
        m = T.FusedRMSNormRoPE(H, HD, device=dev, dtype=dt)
        if not p:
            m.weight = torch.nn.Parameter(m.weight.detach())  # modules always hold Parameters
        x = rn(1, 1, H)
        cos, sin = tables(4096, HD)
        pos = torch.tensor([[17]], device=dev)
        return lambda: m(x, cos, sin, position_ids=pos)

    cases.append(HostCase("FusedRMSNormRoPE", f"1x1x{H} hd128", "bf16", norm_module))

    def gated(p):
        x = rn(1, H)
        wg, wu = _weights(p, rn(I, H) * 0.02, rn(I, H) * 0.02)
        return lambda: T.fused_gated_mlp(x, wg, wu)

    cases.append(HostCase("fused_gated_mlp", f"M=1 H={H} I={I}", "bf16", gated))

    def gated_module(p, fp8=False):
        m = T.FusedGatedMLP(H, I, device=dev, dtype=dt, fp8=fp8)
        x = rn(1, H)
        return lambda: m(x)

    cases.append(HostCase("FusedGatedMLP", f"M=1 H={H} I={I}", "bf16", gated_module))
    if _fp8_capable(device):
        cases.append(HostCase("FusedGatedMLP fp8", f"M=1 H={H} I={I}", "e4m3",
                              lambda p: gated_module(p, fp8=True)))

    def quant(p):
        x = rn(1, H)
        return lambda: T.quantize_fp8(x, granularity="row")

    cases.append(HostCase("quantize_fp8", f"1x{H} row", "bf16", quant))

    def gemm_auto(p):
        a = rn(16, H)
        (w,) = _weights(p, rn(H, H) * 0.02)  # an [N, K] weight, passed as b = w.t()
        return lambda: T.fp8_gemm(a, w.t())

    def gemm_prequant(p):
        qa, sa = T.quantize_fp8(rn(16, H), granularity="row")
        qw, sw = T.quantize_fp8(rn(H, H) * 0.02, granularity="row")
        qw, sw = _weights(p, qw, sw) if p else (qw, sw)
        return lambda: T.fp8_gemm(qa, qw.t(), a_scale=sa, b_scale=sw.t(), check_scales=False)

    if _fp8_capable(device):
        cases.append(HostCase("fp8_gemm", f"16x{H}x{H} from bf16, b = w.t()", "bf16", gemm_auto))
        cases.append(HostCase("fp8_gemm", f"16x{H}x{H} e4m3, row scales", "e4m3", gemm_prequant))

    def linear(p):
        lin = torch.nn.Linear(H, H, bias=False, device=dev, dtype=dt)
        m = T.FP8Linear.from_linear(lin)
        x = rn(1, H)
        return lambda: m(x)

    if _fp8_capable(device):
        cases.append(HostCase("FP8Linear", f"M=1 {H}->{H}", "bf16", linear))

    # Ops that exist only in newer builds of the library are measured when present.
    if hasattr(T, "fused_add_rmsnorm") and "fused_add_rmsnorm" in T.__all__:
        def add_norm(p):
            x, r = rn(1, H), rn(1, H)
            (w,) = _weights(p, torch.ones(H, device=dev, dtype=dt))
            return lambda: T.fused_add_rmsnorm(x, w, 1e-6, residual=r)

        cases.append(HostCase("fused_add_rmsnorm", f"1x{H} + residual", "bf16", add_norm))
    if "apply_rope" in T.__all__:
        def rope(p):
            q = rn(1, 1, NH, HD).transpose(1, 2)  # HF's [b, h, s, d] view
            k = rn(1, 1, NKV, HD).transpose(1, 2)
            cos, sin = (t[None, 17:18] for t in tables(4096, HD))
            return lambda: T.apply_rope(q, k, cos, sin)

        cases.append(HostCase("apply_rope", f"q 1x{NH}x1x{HD}, k 1x{NKV}x1x{HD}", "bf16", rope))
    return cases


def _fp8_capable(device: str) -> bool:
    if device == "cpu":
        return True
    from ..utils import has_fp8_tensor_cores

    return has_fp8_tensor_cores(device)


def _add_call(x: torch.Tensor) -> Callable[[], object]:
    y = torch.empty_like(x)
    return lambda: torch.add(x, x, out=y)


def run_host_bench(device: str | None = None, select: list[str] | None = None) -> list[dict]:
    """Rows ``{"op": "host", "shape", "dtype", "system", "host_us", "x_floor"?}`` for every case."""
    from .. import launch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.device(dev).type == "cuda"
    rows: list[dict] = []
    ctx = contextlib.nullcontext() if gpu else launch.host_only()
    floor = None
    with torch.no_grad(), ctx:
        if gpu:
            floor = _time_host_us(_empty_kernel_call(dev), gpu)
            rows.append({"op": "host", "shape": "grid (1,), 2 args", "dtype": "-",
                         "system": "empty Triton kernel, kernel[grid](...)", "host_us": round(floor, 2),
                         "ms": floor / 1e3})
        for case in host_cases(dev):
            if select and not any(s in case.name for s in select):
                continue
            for param in ((False, True) if case.ours else (False,)):
                try:
                    us = _time_host_us(case.make(param), gpu)
                    row = {"op": "host", "shape": case.shape, "dtype": case.dtype,
                           "system": case.name + (" (Parameter weights)" if param else ""),
                           "host_us": round(us, 2), "ms": us / 1e3}
                    if floor:
                        row["x_floor"] = round(us / floor, 3)
                except Exception as exc:  # one op failing must not hide the others' numbers
                    row = {"op": "host", "shape": case.shape, "dtype": case.dtype, "system": case.name,
                           "status": "FAILED", "error": f"{type(exc).__name__}: {exc}"[:300]}
                rows.append(row)
    return rows


def host_markdown(rows: list[dict], gpu: bool) -> str:
    lines = ["| call | shape | us per call | x empty kernel |", "|---|---|---|---|"]
    for r in rows:
        us = r.get("host_us")
        lines.append(f"| {r['system']} | {r['shape']} | {us if us is not None else r.get('error')} | "
                     f"{r.get('x_floor', '-')} |")
    if not gpu:
        lines.append("")
        lines.append("No GPU: Python-side cost per call on this CPU, kernels not launched "
                     "(triton_ops.launch.host_only); the empty-kernel floor needs a GPU.")
    return "\n".join(lines)
