"""FP8 measurements in one GPU run: operand layouts, the README call, FP8Linear, decode, GEMM config
variants, quantization and host cost, each timed three ways next to its baselines.

    python benchmarks/scripts/sweep_fp8.py OUTDIR [--sections layouts auto ...] [--quick] [--compile]

Writes OUTDIR/sweep_fp8.json ({"env", "rows"}) and prints a short table last. Every row is one system on
one problem:

* ``events_ms``: ``triton.testing.do_bench`` median (CUDA events around each call after an L2 flush; the
  flush hides up to ~65 us of host work per call);
* ``wall_ms``: wall time per call of back-to-back eager calls, synchronised once per sample: what a
  user's eager loop sees, host cost included when the call is host-bound;
* ``graph_ms``: CUDA-graph replays (GPU time only; not taken for "fresh" systems, whose point is host
  work, nor for systems that cannot be captured);
* ``host_us``: Python-side cost per call with the launches themselves skipped (``launch.host_only``).

Sections (default: all but tests): tests (the FP8 ``pytest -m gpu`` tests), check (GPU correctness of
every layout, bit for bit), layouts (pre-quantized e4m3 GEMM, every layout of a and b, plus the in-kernel
and pre-fix ways of reading an MN-major b), auto (``fp8_gemm(a, b)`` from fp16), linear (FP8Linear, buffer
and Parameter weights), decode (weight-only, both weight layouts and both MN-major policies), configs (GEMM
tile/stage/grouping/TMA variants at 4096^3 and 8192^3 against ``torch._scaled_mm``), quant (per-token /
per-tensor quantize of (16384, 4096)), host (host us per eager call at decode sizes beside an empty Triton
kernel). Predictions: docs/perf-notes.md.
With no GPU (``--quick`` on the interpreter) it only checks that every section runs.
"""

# ruff: noqa: B023 -- each closure over a loop variable is timed by measure() before the loop moves on

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from triton_ops.benchmark.timing import compiled, do_bench_median  # noqa: E402
from triton_ops.kernels import fp8_cache  # noqa: E402
from triton_ops.kernels import fp8_gemm as fg  # noqa: E402
from triton_ops.kernels.fp8_linear import FP8Linear  # noqa: E402
from triton_ops.kernels.fp8_quantize import dequantize_fp8, quantize_fp8  # noqa: E402
from triton_ops.launch import clear_plans, host_only  # noqa: E402

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
ROWS: list[dict] = []
#: --compile: also time torch.compile baselines here (each build takes 20-60 s; `triton-ops bench fp8` times
#: them anyway, next to the same systems).
args_compile = False


# ---- timing ------------------------------------------------------------------------------------------


def _sync():
    if GPU:
        torch.cuda.synchronize()


def wall_ms(fn, budget_ms: float = 40.0, samples: int = 5) -> float:
    fn()
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    est = max((time.perf_counter() - t0) * 1e3, 1e-3)
    calls = int(max(5, min(400, budget_ms / est)))
    out = []
    for _ in range(samples):
        _sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync()
        out.append((time.perf_counter() - t0) / calls * 1e3)
    return statistics.median(out)


def host_us(fn, calls: int = 300) -> float:
    fn()
    _sync()
    with host_only():
        for _ in range(10):
            fn()
        out = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            out.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(out)


def measure(section: str, shape: str, system: str, fn, *, flops: float | None = None, graph: bool = True,
            host: bool = False, events: bool = True, baseline: str | None = None, note: str = "") -> dict:
    row = {"section": section, "shape": shape, "system": system, "note": note}
    try:
        fn()
        _sync()
        if events:
            row["events_ms"] = do_bench_median(fn) if GPU else None
        row["wall_ms"] = wall_ms(fn) if GPU else wall_ms(fn, budget_ms=1.0, samples=1)
        if graph and GPU:
            try:
                row["graph_ms"] = do_bench_median(fn, cuda_graph=True)
            except Exception as exc:  # e.g. a baseline that syncs
                row["graph_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
        if host:
            row["host_us"] = host_us(fn)
        if flops:
            best = row.get("graph_ms") or row.get("events_ms") or row["wall_ms"]
            row["tflops"] = flops / (best * 1e-3) / 1e12 if GPU else None
        row["baseline"] = baseline
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        traceback.print_exc()
    ROWS.append(row)
    ms = {k: row.get(k) for k in ("events_ms", "wall_ms", "graph_ms")}
    print(f"  {section:8s} {shape:28s} {system:34s} " + " ".join(
        f"{k[:-3]}={v * 1e3:9.1f}us" if isinstance(v, float) else f"{k[:-3]}=      n/a" for k, v in ms.items())
        + (f" host={row['host_us']:.1f}us" if "host_us" in row else "") + (f" ERROR {row['error']}" if "error"
                                                                             in row else ""), flush=True)
    return row


def _policy(**kw):
    """Set fp8_gemm's measurement knobs and drop the plans that baked in the old ones."""
    for k, v in kw.items():
        setattr(fg, k, v)
    clear_plans()


def _col(x):
    return x.t().contiguous().t()


# ---- sections ----------------------------------------------------------------------------------------


def sec_check(quick: bool):
    """Bit-for-bit equality of every layout on the GPU (the CPU tests check the same on the interpreter)."""
    M, N, K = (80, 72, 160) if quick else (1024, 4096, 4096)
    a = torch.randn(M, K, device=DEV)
    w = torch.randn(N, K, device=DEV)
    qa, sa = quantize_fp8(a, granularity="row")
    qw, sw = quantize_fp8(w, granularity="row")
    base = fg.fp8_gemm(qa, qw.t(), a_scale=sa, b_scale=sw.t())
    ok = {}
    for name, (x, y) in {"b_kn": (qa, qw.t().contiguous()), "a_col": (_col(qa), qw.t()),
                         "both": (_col(qa), qw.t().contiguous())}.items():
        ok[name] = bool(torch.equal(fg.fp8_gemm(x, y, a_scale=sa, b_scale=sw.t()), base))
    a16, b16 = a.half(), w.half().t().contiguous()
    out = fg.fp8_gemm(a16, b16)
    want = a16.double() @ b16.double()
    sqnr = 10 * torch.log10((want ** 2).sum() / ((out.double() - want) ** 2).sum()).item()
    ROWS.append({"section": "check", "shape": f"{M}x{N}x{K}", "system": "layouts_equal", "result": ok,
                 "auto_sqnr_db": sqnr})
    print(f"  check    layouts bit-equal: {ok}; fp8_gemm(a, b) fp16 SQNR {sqnr:.2f} dB (>= 28 expected)")


def sec_layouts(quick: bool):
    shapes = [(80, 96, 128)] if quick else [(1024, 4096, 4096), (4096, 4096, 4096), (8192, 8192, 8192),
                                            (16384, 11264, 4096)]
    for M, N, K in shapes:
        label = f"{M}x{N}x{K} row"
        qa, sa = quantize_fp8(torch.randn(M, K, device=DEV, dtype=torch.bfloat16), granularity="row")
        qw, sw = quantize_fp8(torch.randn(N, K, device=DEV, dtype=torch.bfloat16), granularity="row")
        qb, sb, qb_kn, qa_col = qw.t(), sw.t(), qw.t().contiguous(), _col(qa)
        fl = 2.0 * M * N * K

        def ours(x, y):
            return lambda: fg.fp8_gemm(x, y, a_scale=sa, b_scale=sb, out_dtype=torch.bfloat16, check_scales=False)

        measure("layouts", label, "triton_ops b=w.t()", ours(qa, qb), flops=fl, host=quick or M == 1024)
        measure("layouts", label, "triton_ops b=[K,N] (copy reused)", ours(qa, qb_kn), flops=fl)
        fresh = ours(qa, qb_kn)
        measure("layouts", label, "triton_ops b=[K,N] fresh copy", lambda: (fp8_cache.clear(), fresh())[1],
                flops=fl, graph=False)
        measure("layouts", label, "triton_ops a col-major", ours(qa_col, qb), flops=fl)
        if M in (4096, 80):  # the two ways of not copying (slow by design: they are why the copy exists)
            for policy in ("inkernel", "clamp"):
                _policy(NATIVE_MN_POLICY=policy)
                measure("layouts", label, f"triton_ops b=[K,N] {policy}", ours(qa, qb_kn), flops=fl, graph=False)
            _policy(NATIVE_MN_POLICY="copy")
        measure("layouts", label, "kmajor_copy alone", lambda: fg.kmajor_copy(qb_kn), graph=True,
                note=f"{2 * K * N / 1e6:.1f} MB moved")
        if GPU:
            measure("layouts", label, "torch_scaled_mm", lambda: torch._scaled_mm(
                qa, qb, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16), flops=fl, baseline="ceiling")
            a16 = torch.randn(M, K, device=DEV, dtype=torch.float16)
            b16 = torch.randn(K, N, device=DEV, dtype=torch.float16)
            measure("layouts", label, "cublas_fp16", lambda: a16 @ b16, flops=fl)
        fp8_cache.clear()
        if GPU:
            torch.cuda.empty_cache()


def sec_auto(quick: bool):
    shapes = [(48, 80, 160), (80, 96, 128)] if quick else [(16, 4096, 4096), (1024, 4096, 4096),
                                                           (4096, 4096, 4096), (8192, 8192, 8192)]
    for M, N, K in shapes:
        label = f"{M}x{N}x{K} fp16"
        a = torch.randn(M, K, device=DEV, dtype=torch.float16)
        b = torch.randn(K, N, device=DEV, dtype=torch.float16)
        b_t, a_col = _col(b), _col(a)
        fl = 2.0 * M * N * K
        measure("auto", label, "triton_ops fp8_gemm(a, b) (README)", lambda: fg.fp8_gemm(a, b), flops=fl,
                host=True)
        measure("auto", label, "triton_ops fresh b", lambda: (fp8_cache.clear(), fg.fp8_gemm(a, b))[1], flops=fl,
                graph=False)
        measure("auto", label, "triton_ops b=w.t()", lambda: fg.fp8_gemm(a, b_t), flops=fl)
        measure("auto", label, "triton_ops a col-major", lambda: fg.fp8_gemm(a_col, b), flops=fl)
        measure("auto", label, "cublas_fp16 a @ b", lambda: a @ b, flops=fl, baseline="ceiling", host=False)
        if GPU and args_compile and M >= 1024:
            from triton_ops.benchmark.cases_fp8 import torch_quant_scaled_mm

            f = compiled(torch_quant_scaled_mm)
            measure("auto", label, "torch_compile quant+scaled_mm", lambda: f(a, b), flops=fl)
        fp8_cache.clear()


def sec_linear(quick: bool):
    from torch import nn

    # the target range (M 1024..16384) at 4096 -> 4096, and the MLP's up and down shapes
    shapes = [(8, 64, 96), (80, 64, 96)] if quick else [(1, 4096, 4096), (16, 4096, 4096), (1024, 4096, 4096),
                                                        (2048, 4096, 4096), (4096, 4096, 4096), (8192, 4096, 4096),
                                                        (16384, 4096, 4096), (4096, 14336, 4096),
                                                        (4096, 4096, 14336)]
    for M, N, K in shapes:
        label = f"M={M} {K}->{N} bf16"
        lin = nn.Linear(K, N, device=DEV, dtype=torch.bfloat16)
        f = FP8Linear.from_linear(lin)
        fp = FP8Linear.from_linear(lin)
        w = fp.weight
        del fp.weight
        fp.weight = nn.Parameter(w, requires_grad=False)
        x = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
        fl = 2.0 * M * N * K
        with torch.no_grad():
            measure("linear", label, "FP8Linear (buffer weight)", lambda: f(x), flops=fl, host=True)
            measure("linear", label, "FP8Linear (Parameter weight)", lambda: fp(x), flops=fl, host=True)
            measure("linear", label, "nn.Linear bf16", lambda: lin(x), flops=fl, baseline="ceiling", host=True)
        measure("linear", label, "FP8Linear grad mode on", lambda: f(x), flops=fl, graph=False, host=True)


def sec_decode(quick: bool):
    M, N, K = (4, 96, 128) if quick else (16, 14336, 4096)
    label = f"{M}x{N}x{K}"
    w = torch.randn(N, K, device=DEV, dtype=torch.float16)
    qw, sw = quantize_fp8(w, granularity="row")
    x = torch.randn(M, K, device=DEV, dtype=torch.float16)
    kn = qw.t().contiguous()
    measure("decode", label, "weight-only b=w.t()", lambda: fg.fp8_weight_only_gemm(x, qw.t(), sw.t()), host=True)
    measure("decode", label, "weight-only b=[K,N] in kernel", lambda: fg.fp8_weight_only_gemm(x, kn, sw.t()))
    _policy(WEIGHT_ONLY_KMAJOR_COPY=True)
    measure("decode", label, "weight-only b=[K,N] copy reused", lambda: fg.fp8_weight_only_gemm(x, kn, sw.t()))
    _policy(WEIGHT_ONLY_KMAJOR_COPY=False)
    if GPU:
        w16 = w.t()
        measure("decode", label, "cublas_fp16", lambda: x @ w16, baseline="ceiling")
        src = torch.empty(N * K, dtype=torch.uint8, device=DEV)
        dst = torch.empty_like(src)
        measure("decode", label, "copy of the weight bytes", lambda: dst.copy_(src))
    fp8_cache.clear()


def _cfg(name, M, N, K, **over):
    """A launch config of fp8_gemm's CONFIGS[name] with overrides: tile/warps/stages keys as in the config
    dict, plus ``ctas`` (persistent programs per SM), ``tma`` and ``persistent=False`` (one program per
    tile)."""
    cfg = fg._finish_config(name, M, N, K, fg._arch(torch.device(DEV)), fg.num_sms(torch.device(DEV)),
                            group_m=over.pop("GROUP_M", 8), ctas_per_sm=over.pop("ctas", 1),
                            tma=over.pop("tma", False))
    persistent = over.pop("persistent", True)
    cfg.update(over)
    if not persistent:
        tiles = fg.cdiv(M, cfg["BLOCK_M"]) * fg.cdiv(N, cfg["BLOCK_N"])
        cfg.update(NUM_PROGS=tiles, FLATTEN=False)
    return cfg


def _time_variants(section, label, variants, qa, qb, sa, sb, fl, quick, keep=None):
    """Time fp8_gemm plans of each config variant on the same operands (graph replays), each checked
    against the default plan's result."""
    ref = fg.fp8_gemm(qa, qb, a_scale=sa, b_scale=sb, out_dtype=torch.bfloat16).float()
    for vname, (name, over) in variants.items():
        if keep is not None and vname not in keep:
            continue
        try:
            plan = fg._plan_gemm(qa, qb, sa, sb, None, torch.bfloat16, "auto", _cfg(name, *fl[1:], **dict(over)))
            got = plan(qa, qb, sa, sb, None).float()
        except Exception as exc:
            print(f"  {section}  {label} {vname}: {type(exc).__name__}: {str(exc)[:300]}")
            ROWS.append({"section": section, "shape": label, "system": vname, "error": f"{type(exc).__name__}"})
            continue
        err = ((got - ref).norm() / ref.norm()).item()
        # same operands, another tiling: only the accumulation order and bf16 rounding differ (<~4e-3)
        row = measure(section, label, vname, lambda p=plan: p(qa, qb, sa, sb, None), flops=fl[0], events=False,
                      note=f"rel err vs default {err:.1e}" + (" WRONG" if err > 1e-2 else ""))
        row["rel_err_vs_default"] = err


#: Pre-quantized e4m3 config variants (per-tensor / per-row scales).
GEMM_VARIANTS = {
    "h_256 (default) g8": ("h_256", {}),
    "h_256 g16": ("h_256", {"GROUP_M": 16}),
    "h_256 s3": ("h_256", {"num_stages": 3}),
    "h_256 TMA": ("h_256", {"tma": True}),
    "h_256 TMA g16": ("h_256", {"tma": True, "GROUP_M": 16}),
    "h_256 TMA s3": ("h_256", {"tma": True, "num_stages": 3}),
    "h_128 TMA s3 2cta": ("h_128", {"tma": True, "num_stages": 3, "ctas": 2}),
    "256x128x128 s3 TMA": ("h_256", {"BLOCK_M": 256, "BLOCK_N": 128, "num_stages": 3, "tma": True}),
}


def sec_configs(quick: bool):
    """GEMM config variants for the pre-quantized e4m3 -> bf16 GEMM (target: >= 1.1x torch._scaled_mm at
    4096^3 and 8192^3, per tensor and per row). Timed as graph replays (GPU time)."""
    shapes = [(80, 96, 128)] if quick else [(4096, 4096, 4096), (8192, 8192, 8192), (16384, 4096, 14336)]
    for M, N, K in shapes:
        for gran in ("row", "tensor"):
            if K == 14336 and gran == "tensor":
                continue
            label = f"{M}x{N}x{K} {gran}"
            qa, sa = quantize_fp8(torch.randn(M, K, device=DEV, dtype=torch.bfloat16), granularity=gran)
            qw, sw = quantize_fp8(torch.randn(N, K, device=DEV, dtype=torch.bfloat16), granularity=gran)
            sa = sa.reshape(1) if gran == "tensor" else sa
            sb = sw.reshape(1) if gran == "tensor" else sw.t()
            qb = qw.t()
            keep = ("h_256 (default) g8", "h_256 TMA") if quick else None
            _time_variants("configs", label, GEMM_VARIANTS, qa, qb, sa, sb, (2.0 * M * N * K, M, N, K), quick, keep)
            if GPU:
                measure("configs", label, "torch_scaled_mm", lambda: torch._scaled_mm(
                    qa, qb, scale_a=sa.reshape(()) if gran == "tensor" else sa,
                    scale_b=sb.reshape(()) if gran == "tensor" else sb, out_dtype=torch.bfloat16),
                    flops=2.0 * M * N * K, events=False, baseline="ceiling")
            fp8_cache.clear()


#: Block-scaled variants (a per (1, 128) block; b per column or per (128, 128) block).
BLOCK_VARIANTS = {
    "h_blk (default)": ("h_blk", {}),
    "h_blk TMA 2cta s3": ("h_blk", {"tma": True, "ctas": 2, "num_stages": 3}),
    "h_blk TMA 2cta s4": ("h_blk", {"tma": True, "ctas": 2}),
    "h_blk TMA 2cta s3 g16": ("h_blk", {"tma": True, "ctas": 2, "num_stages": 3, "GROUP_M": 16}),
    "h_blk TMA 3cta s2": ("h_blk", {"tma": True, "ctas": 3, "num_stages": 2}),
    "128x128 w8 TMA s3": ("h_blk", {"BLOCK_M": 128, "num_warps": 8, "tma": True, "num_stages": 3}),
}


def sec_blockscaled(quick: bool):
    """Block-scaled e4m3 GEMMs: the FP8 MLP chain's down projection (16384 x 4096 x 14336, a from the gated
    epilogue with (1, 128) block scales, b per column) and 8192^3 with (128, 128) weight blocks (DeepSeek
    style), config variants against the same GEMM with per-row scales and torch._scaled_mm."""
    shapes = [(80, 96, 256)] if quick else [(16384, 4096, 14336), (8192, 8192, 8192)]
    for M, N, K in shapes:
        x = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
        w = torch.randn(N, K, device=DEV, dtype=torch.bfloat16)
        qa, sa = quantize_fp8(x, granularity="block", block_size=(1, 128))
        fl = (2.0 * M * N * K, M, N, K)
        for bgran in ("column", "block"):
            if bgran == "column":
                qw, sw = quantize_fp8(w, granularity="row")
                sb = sw.t()
            else:
                qw, sw = quantize_fp8(w, granularity="block", block_size=(128, 128))
                sb = sw.t()
            label = f"{M}x{N}x{K} a(1x128) b {bgran}"
            keep = ("h_blk (default)", "h_blk TMA 2cta s3") if quick else None
            _time_variants("blockscaled", label, BLOCK_VARIANTS, qa, qw.t(), sa, sb, fl, quick, keep)
            if GPU:
                try:
                    measure("blockscaled", label, "torch_scaled_mm blockwise", lambda: torch._scaled_mm(
                        qa, qw.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16), flops=fl[0], events=False,
                        baseline="ceiling")
                except Exception as exc:  # cuBLASLt block scaling needs particular scale layouts / versions
                    print(f"  blockscaled {label} torch_scaled_mm blockwise: {type(exc).__name__}: {str(exc)[:200]}")
        qr, sr = quantize_fp8(x, granularity="row")
        qw, sw = quantize_fp8(w, granularity="row")
        label = f"{M}x{N}x{K} a row b column"
        measure("blockscaled", label, "triton_ops fp8_gemm", lambda: fg.fp8_gemm(
            qr, qw.t(), a_scale=sr, b_scale=sw.t(), out_dtype=torch.bfloat16, check_scales=False), flops=fl[0],
            events=False)
        if GPU:
            measure("blockscaled", label, "torch_scaled_mm rowwise", lambda: torch._scaled_mm(
                qr, qw.t(), scale_a=sr, scale_b=sw.t(), out_dtype=torch.bfloat16), flops=fl[0], events=False,
                baseline="ceiling")
        fp8_cache.clear()
        if GPU:
            torch.cuda.empty_cache()


def _quant_tensor_parts(x, label):
    """The per-tensor quantize's two passes timed alone, and variants of their grids and order."""
    from triton_ops.kernels import fp8_quantize as fq

    R, C = x.shape
    fmax = fq.FP8_MAX[torch.float8_e4m3fn]
    q = torch.empty(R, C, dtype=torch.float8_e4m3fn, device=DEV)
    for per_sm in (2, 4, 8):
        fq.AMAX_PROGS_PER_SM = per_sm
        n, per = fq._grid_rows(R, x.device)
        br, bc, warps = fq.tile_config(R, C)
        amax = fq.KernelLaunch(fq._amax_rows_kernel, (n,), dict(BLOCK_R=br, BLOCK_C=bc), num_warps=warps)
        part = torch.zeros(n + 1, dtype=torch.float32, device=DEV)
        measure("quant", label, f"amax pass alone ({per_sm}/SM)", lambda a=amax, p=part, nn=per: a(x, p, R, C, C, nn),
                graph=True, note=f"{R * C * 2 / 1e6:.0f} MB read")
        if per_sm == 4:
            amax(x, part, R, C, C, per)
            for rev in (True, False):
                step = fq.scale_tiles_step(R, C, (C, 1), (C, 1), (0, 0), 1, fmax, dequant=False, n_part=n,
                                           reverse=rev)
                measure("quant", label, f"scale pass alone ({'reverse' if rev else 'forward'})",
                        lambda st=step, p=part: st(x, q, p), graph=True, note=f"{R * C * 3 / 1e6:.0f} MB moved")
    fq.AMAX_PROGS_PER_SM = 4
    for per_sm in (2, 8):
        fq.AMAX_PROGS_PER_SM = per_sm
        clear_plans()
        measure("quant", label, f"quantize_fp8 (amax {per_sm}/SM)", lambda: quantize_fp8(x, granularity="tensor"),
                graph=True)
    fq.AMAX_PROGS_PER_SM = 4
    clear_plans()


def sec_quant(quick: bool):
    from triton_ops.benchmark.cases_fp8 import torch_quantize

    M, K = (64, 256) if quick else (16384, 4096)
    x = torch.randn(M, K, device=DEV, dtype=torch.bfloat16) * 4
    for gran in ("row", "tensor"):
        label = f"{M}x{K} {gran}"
        measure("quant", label, "quantize_fp8", lambda g=gran: quantize_fp8(x, granularity=g), graph=True,
                host=True, note=f"{M * K * 3 / 1e6:.0f} MB moved")
        if GPU and args_compile:
            f = compiled(torch_quantize)
            measure("quant", label, "torch_compile", lambda g=gran: f(x, g), baseline="ceiling")
        if gran == "tensor":
            _quant_tensor_parts(x, label)
        if GPU:
            src = torch.empty(M * K * 3 // 2, dtype=torch.uint8, device=DEV)
            dst = torch.empty_like(src)
            measure("quant", label, "copy of the same bytes", lambda: dst.copy_(src))


def sec_host(quick: bool):
    """Host us per eager call at decode sizes (plans warm), beside an empty Triton kernel."""
    H = 256 if quick else 4096
    x = torch.randn(16, H, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(H, H, device=DEV, dtype=torch.bfloat16)
    qx, sx = quantize_fp8(x, granularity="row")
    qw, sw = quantize_fp8(w, granularity="row")
    lin = FP8Linear(H, H, dtype=torch.bfloat16, device=DEV)
    calls = {
        "quantize_fp8 row": lambda: quantize_fp8(x, granularity="row"),
        "quantize_fp8 tensor": lambda: quantize_fp8(x),
        "dequantize_fp8": lambda: dequantize_fp8(qx, sx),
        "fp8_gemm e4m3 (check_scales=True)": lambda: fg.fp8_gemm(qx, qw.t(), a_scale=sx, b_scale=sw.t()),
        "fp8_gemm e4m3 (check_scales=False)": lambda: fg.fp8_gemm(qx, qw.t(), a_scale=sx, b_scale=sw.t(),
                                                                  check_scales=False),
        "fp8_gemm bf16 (b cached)": lambda: fg.fp8_gemm(x, w),
        "fp8_weight_only_gemm": lambda: fg.fp8_weight_only_gemm(x, qw.t(), sw.t()),
        "FP8Linear M=16": lambda: lin(x),
        "FP8Linear M=1": lambda: lin(x[:1]),
    }
    if GPU:
        from triton_ops.benchmark._empty_kernel import empty_kernel

        e = torch.empty(16, device=DEV)
        calls["empty Triton kernel (floor)"] = lambda: empty_kernel[(1,)](e, 16, BLOCK=16)
        y = torch.empty_like(x)
        calls["torch.add"] = lambda: torch.add(x, x, out=y)
    with torch.no_grad():
        for name, fn in calls.items():
            row = {"section": "host", "shape": f"16x{H}", "system": name}
            try:
                fn()
                _sync()
                # with launches: the real per-call cost of a back-to-back loop (GPU queue absorbs kernels)
                row["wall_us"] = wall_ms(fn, budget_ms=20.0) * 1e3
                row["host_us"] = host_us(fn) if "empty" not in name and "torch.add" not in name else None
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            ROWS.append(row)
            print(f"  host     {name:40s} wall/call={row.get('wall_us', float('nan')):7.1f}us "
                  f"python-only={row.get('host_us') or float('nan'):7.1f}us {row.get('error', '')}", flush=True)


def sec_tests(quick: bool):
    """The FP8 GPU tests (``pytest -m gpu``), in a subprocess; their summary line becomes a row."""
    import subprocess

    files = ["tests/test_fp8_gemm.py", "tests/test_fp8_linear.py", "tests/test_fp8_quantize.py",
             "tests/test_fp8_layouts.py"]
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider",
                           *([] if quick else ["-m", "gpu"]), "-W", "ignore::DeprecationWarning"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=420)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    failed = [ln[:160] for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    ROWS.append({"section": "tests", "system": "pytest -m gpu (FP8)", "result": lines[-1] if lines else "",
                 "failed": failed, "rc": proc.returncode})
    print(f"  tests    {lines[-1] if lines else 'no output'}")
    for ln in failed[:20]:
        print(f"           {ln}")


SECTIONS = {"tests": sec_tests, "check": sec_check, "layouts": sec_layouts, "auto": sec_auto, "linear": sec_linear,
            "blockscaled": sec_blockscaled,
            "decode": sec_decode, "configs": sec_configs, "quant": sec_quant, "host": sec_host}


def _best(r: dict):
    return r.get("graph_ms") or r.get("events_ms") or r.get("wall_ms")


def _summary() -> list[str]:
    """The short table: per row the best GPU time (graph, else events), the eager wall time per call, and
    both as ratios against the problem's baseline (its "ceiling" row: above 1.00 = faster than it)."""
    lines = ["", "| section | shape | system | GPU us | eager wall us | vs base (GPU) | vs base (wall) | TFLOPS "
             "| host us |", "|---|---|---|---|---|---|---|---|---|"]
    bases = {(r["section"], r.get("shape")): r for r in ROWS if r.get("baseline") == "ceiling" and "error" not in r}
    for r in ROWS:
        if r["section"] == "tests":
            lines.append(f"| tests | | {r.get('result', '')} | | | | | | |")
            lines += [f"| tests | | {f} | | | | | | |" for f in r.get("failed", [])[:20]]
            continue
        if r["section"] == "check":
            lines.append(f"| check | {r.get('shape', '')} | layouts bit-equal {r.get('result')} |  |  |  |  | "
                         f"SQNR {r.get('auto_sqnr_db', 0):.1f} dB |  |")
            continue
        if "error" in r and "system" not in r:
            lines.append(f"| {r['section']} | | ERROR {r['error'][:80]} | | | | | | |")
            continue
        hu = f"{r['host_us']:.1f}" if isinstance(r.get("host_us"), float) else ""
        if r["section"] == "host":
            lines.append(f"| host | {r['shape']} | {r['system']} |  | {r.get('wall_us', 0):.1f} |  |  |  | {hu} |")
            continue
        b = bases.get((r["section"], r.get("shape")))
        best, wall = _best(r), r.get("wall_ms")
        gpu_ratio = f"{_best(b) / best:.2f}x" if b and best and b is not r else ""
        wall_ratio = f"{b['wall_ms'] / wall:.2f}x" if b and wall and b is not r and b.get("wall_ms") else ""
        tf = f"{r['tflops']:.0f}" if isinstance(r.get("tflops"), float) else ""
        err = f" ERROR {r['error'][:60]}" if "error" in r else (f" {r['note']}" if r.get("note") else "")
        lines.append(f"| {r['section']} | {r.get('shape')} | {r['system']}{err} | "
                     f"{best * 1e3:.1f} | {wall * 1e3:.1f} | {gpu_ratio} | {wall_ratio} | {tf} | {hu} |"
                     if best and wall else f"| {r['section']} | {r.get('shape')} | {r['system']}{err} | | | | | | |")
    return lines


def _write(out: str, t0: float) -> str:
    env = {"gpu": torch.cuda.get_device_name() if GPU else "cpu (interpreter)", "torch": torch.__version__,
           "triton": __import__("triton").__version__, "seconds": round(time.time() - t0, 1)}
    path = os.path.join(out, "sweep_fp8.json")
    with open(path, "w") as fh:
        json.dump({"env": env, "rows": ROWS}, fh, indent=1, default=str)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=os.environ.get("OUT", "."))
    ap.add_argument("--sections", nargs="+", default=[k for k in SECTIONS if k != "tests"], choices=list(SECTIONS),
                    help="default: every section but tests")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (interpreter smoke run)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile baselines (slow to build)")
    args = ap.parse_args(argv)
    global args_compile
    args_compile = args.compile
    os.makedirs(args.out, exist_ok=True)
    quick = args.quick or not GPU
    t0 = time.time()
    for name in args.sections:
        print(f"== {name}", flush=True)
        try:
            SECTIONS[name](quick)
        except Exception as exc:  # one broken section must not lose the others' rows
            traceback.print_exc()
            ROWS.append({"section": name, "error": f"{type(exc).__name__}: {exc}"})
        _policy(NATIVE_MN_POLICY="copy", WEIGHT_ONLY_KMAJOR_COPY=False, NATIVE_TMA=False)
        path = _write(args.out, t0)  # after every section: a run cut short keeps what it measured
    print("\n".join(_summary()))
    print(f"\nwrote {path} ({len(ROWS)} rows, {time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
