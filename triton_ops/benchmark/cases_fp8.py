"""Benchmark problems for FP8 quantization, FP8 GEMM and the FP8 decode GEMM.

Targets (see the FP8 issue): per-token quantize >= 90% of copy bandwidth, per-tensor >= 1.3x
torch.compile; pre-quantized e4m3 GEMM -> bf16 >= 1.0x cuBLASLt ``torch._scaled_mm``; ``fp8_gemm`` from
fp16 >= 1.3x / 1.7x fp16 cuBLAS at 4096^3 / 8192^3 and never slower at 1024x4096x4096; decode
M=16 N=14336 K=4096 >= 80% of copy bandwidth for the weight bytes.

``cases(quick=True, device="cpu")`` gives tiny shapes that run through Triton's interpreter.
"""

from __future__ import annotations

from typing import Any

import torch

from ..utils import cdiv
from .case import BenchCase, select_shapes
from .timing import compiled, copy_ceiling

E4M3 = torch.float8_e4m3fn
FMAX = 448.0


# ---- plain-PyTorch versions of the same math (the torch_eager / torch_compile systems) --------------


def torch_quantize(x: torch.Tensor, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What a PyTorch user writes: amax, scale, multiply, clamp, cast."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True) if granularity == "row" else xf.abs().amax()
    scale = (amax / FMAX).clamp_min(1e-12)
    q = (xf / scale).clamp(-FMAX, FMAX).to(E4M3)
    return q, scale


def torch_quant_scaled_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dynamic per-row a / per-column b quantization, then cuBLASLt ``_scaled_mm``.

    cuBLASLt FP8 takes only a row-major first and a column-major second operand, so b [K, N] (row-major)
    is quantized as b^T [N, K] made contiguous (per row of b^T == per column of b) and passed as its
    ``.t()`` view: column-major [K, N]. Under torch.compile the transpose fuses into the quantize kernel.
    """
    qa, sa = torch_quantize(a, "row")
    qbt, sb = torch_quantize(b.t().contiguous(), "row")
    return torch._scaled_mm(qa, qbt.t(), scale_a=sa, scale_b=sb.t(), out_dtype=a.dtype)


def torch_dequant_mm(qa, sa, qb, sb, out_dtype=torch.bfloat16) -> torch.Tensor:
    return (qa.to(out_dtype) * sa.to(out_dtype)) @ (qb.to(out_dtype) * sb.to(out_dtype))


def _ref_gemm(qa, sa, qb, sb) -> torch.Tensor:
    # fp32 on the dequantized operands; fp32's 24-bit mantissa sits far below the bf16 output rounding
    # the systems are compared at, so it stands in for float64 on GPU-sized problems.
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return (qa.float() * sa.float()) @ (qb.float() * sb.float())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def _parse(label: str) -> tuple[int, ...]:
    return tuple(int(v) for v in label.split()[0].split("x"))


# ---- cases ------------------------------------------------------------------------------------------


def _quant_cases(shapes, device, gpu: bool) -> list[BenchCase]:
    from ..kernels.fp8_quantize import quantize_fp8

    out = []
    for label in shapes:
        M, K = _parse(label)
        for gran in ("row", "tensor"):
            def make(M=M, K=K):
                return {"x": torch.randn(M, K, device=device, dtype=torch.bfloat16) * 4}

            nbytes = M * K * 2 + M * K + (M * 4 if gran == "row" else 4)
            systems: dict[str, Any] = {
                "triton_ops": lambda i, g=gran: quantize_fp8(i["x"], granularity=g),
                "torch_eager": lambda i, g=gran: torch_quantize(i["x"], g),
                "copy": (lambda f: (lambda i: f()))(copy_ceiling(nbytes, device)),
            }
            if gpu:
                cq = compiled(torch_quantize)
                systems["torch_compile"] = lambda i, g=gran, cq=cq: cq(i["x"], g)

            def reference(i, g=gran):
                q, _ = torch_quantize(i["x"], g)
                return q.float()

            out.append(BenchCase(op="fp8_quantize", shape=f"{M}x{K} {gran}", dtype="bfloat16->e4m3",
                                 make_inputs=make, systems=systems, reference=reference, bytes_moved=nbytes,
                                 ceiling="copy", unchecked=("copy",), rtol=2e-2))
    return out


def _prequant_cases(shapes, device, gpu: bool) -> list[BenchCase]:
    from ..kernels.fp8_gemm import fp8_gemm
    from ..kernels.fp8_quantize import quantize_fp8

    out = []
    for label in shapes:
        M, N, K = _parse(label)
        for gran in ("tensor", "row"):
            def make(M=M, N=N, K=K, g=gran):
                a = torch.randn(M, K, device=device, dtype=torch.bfloat16)
                w = torch.randn(N, K, device=device, dtype=torch.bfloat16)
                qa, sa = quantize_fp8(a, granularity=g)
                qw, sw = quantize_fp8(w, granularity=g)
                sa = sa.reshape(1) if g == "tensor" else sa
                sb = sw.reshape(1) if g == "tensor" else sw.t()
                # b = w.t(): [K, N] column-major, the layout cuBLASLt FP8 requires and ours prefers.
                return {"qa": qa, "sa": sa, "qb": qw.t(), "sb": sb,
                        "a16": a.half(), "b16": w.half().t().contiguous()}

            systems: dict[str, Any] = {
                "triton_ops": lambda i: fp8_gemm(i["qa"], i["qb"], a_scale=i["sa"], b_scale=i["sb"],
                                                 out_dtype=torch.bfloat16, check_scales=False),
                "torch_eager": lambda i: torch_dequant_mm(i["qa"], i["sa"], i["qb"], i["sb"]),
            }
            if gpu:
                cdm = compiled(torch_dequant_mm)
                systems["torch_compile"] = lambda i, f=cdm: f(i["qa"], i["sa"], i["qb"], i["sb"])
                systems["torch_scaled_mm"] = lambda i: torch._scaled_mm(
                    i["qa"], i["qb"], scale_a=i["sa"] if i["sa"].dim() == 2 else i["sa"].reshape(()),
                    scale_b=i["sb"] if i["sb"].dim() == 2 else i["sb"].reshape(()), out_dtype=torch.bfloat16)
                systems["cublas_fp16"] = lambda i: torch.mm(i["a16"], i["b16"])
            out.append(BenchCase(
                op="fp8_gemm_prequant", shape=f"{M}x{N}x{K} {gran}", dtype="e4m3->bf16", make_inputs=make,
                systems=systems, reference=lambda i: _ref_gemm(i["qa"], i["sa"], i["qb"], i["sb"]),
                bytes_moved=M * K + K * N + 2 * M * N, flops=2.0 * M * N * K,
                ceiling="torch_scaled_mm" if gpu else None, unchecked=("cublas_fp16",),
                # bf16 output rounding (2^-9 relative) bounds the error: ~50 dB; 40 dB leaves margin.
                min_sqnr_db=40.0))
    return out


def _auto_cases(shapes, device, gpu: bool, graph: bool = False) -> list[BenchCase]:
    """``fp8_gemm(a, b)`` from fp16. ``graph``: the same problems timed as CUDA-graph replays
    (op "fp8_gemm_auto_graph"), which removes the host's launch work: the gap between the two rows is
    the per-call host overhead (Python, validation, launches), the graph row is the GPU time. The
    "triton_ops_quant" row is the two operand-quantization launches alone (GPU share of quantization)."""
    from ..kernels.fp8_gemm import fp8_gemm
    from ..kernels.fp8_quantize import quantize_operands_for_gemm

    out = []
    for label in shapes:
        M, N, K = _parse(label)

        def make(M=M, N=N, K=K):
            return {"a": torch.randn(M, K, device=device, dtype=torch.float16),
                    "b": torch.randn(K, N, device=device, dtype=torch.float16)}

        systems: dict[str, Any] = {"triton_ops": lambda i: fp8_gemm(i["a"], i["b"])}
        if gpu:
            systems["triton_ops_quant"] = lambda i: quantize_operands_for_gemm(i["a"], i["b"])[0]
            if not graph:
                systems["torch_eager"] = lambda i: torch_quant_scaled_mm(i["a"], i["b"])
            cq = compiled(torch_quant_scaled_mm)
            systems["torch_compile"] = lambda i, f=cq: f(i["a"], i["b"])
            systems["cublas_fp16"] = lambda i: torch.mm(i["a"], i["b"])
        else:
            systems["torch_eager"] = lambda i: torch.mm(i["a"].float(), i["b"].float())

        def reference(i):
            prev = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                return i["a"].float() @ i["b"].float()
            finally:
                torch.backends.cuda.matmul.allow_tf32 = prev

        out.append(BenchCase(
            op="fp8_gemm_auto_graph" if graph else "fp8_gemm_auto", shape=f"{M}x{N}x{K}",
            dtype="float16 (e4m3 row/col)", make_inputs=make,
            systems=systems, reference=reference, bytes_moved=2 * (M * K + K * N + M * N),
            flops=2.0 * M * N * K, ceiling="cublas_fp16" if gpu else None, unchecked=("triton_ops_quant",),
            # per-row x per-column e4m3 on Gaussian data measures 28.5-29 dB (tests/test_fp8_gemm.py);
            # 27 dB leaves room for the bf16/fp16 output rounding.
            min_sqnr_db=27.0, cuda_graph=graph))
    return out


def _decode_cases(shapes, device, gpu: bool, graph: bool = False) -> list[BenchCase]:
    """Decode GEMM with FP8 weights. "triton_ops" is the default (no split-K when the N tiles cover the
    SMs, hardware fp8 -> fp16 conversion on sm_89+); "triton_ops_split" splits K for ~4 programs per SM
    (the previous default); "triton_ops_n32" uses 32-column tiles. ``graph``: CUDA-graph
    replays (op "fp8_decode_gemm_graph"), how decode steps run in serving stacks."""
    from ..kernels.fp8_gemm import _weight_only_impl, fp8_weight_only_gemm, gemm_config
    from ..kernels.fp8_quantize import quantize_fp8
    from ..utils import num_sms

    out = []
    for label in shapes:
        M, N, K = _parse(label)

        def make(M=M, N=N, K=K):
            w = torch.randn(N, K, device=device, dtype=torch.float16)
            qw, sw = quantize_fp8(w, granularity="row")
            return {"x": torch.randn(M, K, device=device, dtype=torch.float16), "qw_t": qw.t(), "sw": sw.t(),
                    "w16_t": w.t()}

        nbytes = N * K + M * K * 2 + M * N * 2 + N * 4

        def eager(i):
            return i["x"] @ (i["qw_t"].to(torch.float16) * i["sw"].to(torch.float16))

        def variant(name=None, split_k=None, M=M, N=N, K=K):
            from ..kernels.fp8_gemm import _arch, _finish_config

            def run(i):
                dev = i["x"].device
                cfg = gemm_config(M, N, K, _arch(dev), weight_only=True, sms=num_sms(dev))
                if split_k is None:  # the old rule: ~4 programs per SM whatever the tile count
                    k_tiles = cdiv(K, cfg["BLOCK_K"])
                    split = max(1, min(cdiv(4 * num_sms(dev), cdiv(N, cfg["BLOCK_N"])), k_tiles // 2, 8))
                else:
                    split = split_k
                cfg = _finish_config(name or cfg["name"], M, N, K, _arch(dev), num_sms(dev), split_k=split)
                return _weight_only_impl(i["x"], i["qw_t"], i["sw"], None, torch.float16, config=cfg)
            return run

        systems: dict[str, Any] = {
            "triton_ops": lambda i: fp8_weight_only_gemm(i["x"], i["qw_t"], i["sw"]),
            # candidates: split-K as the previous default picked it, and 32-column tiles (448 programs)
            "triton_ops_split": variant(),
            "triton_ops_n32": variant("small_16_n32", 1) if M <= 16 else variant(None, 1),
            "torch_eager": eager,
            "copy": (lambda f: (lambda i: f()))(copy_ceiling(nbytes, device)),
        }
        if gpu:
            systems["torch_compile"] = (lambda f: (lambda i: f(i)))(compiled(eager))
            systems["cublas_fp16"] = lambda i: i["x"] @ i["w16_t"]

            def scaled_mm(i):
                qx, sx = torch_quantize(i["x"], "row")
                return torch._scaled_mm(qx, i["qw_t"], scale_a=sx, scale_b=i["sw"], out_dtype=torch.float16)

            systems["torch_scaled_mm"] = scaled_mm
        out.append(BenchCase(
            op="fp8_decode_gemm_graph" if graph else "fp8_decode_gemm", shape=f"{M}x{N}x{K}",
            dtype="float16 x e4m3 weights", make_inputs=make,
            systems=systems, reference=lambda i: i["x"].float() @ (i["qw_t"].float() * i["sw"].float()),
            bytes_moved=nbytes, flops=2.0 * M * N * K, ceiling="copy",
            unchecked=("copy", "cublas_fp16", "torch_scaled_mm"),
            # fp16 activations times exactly decoded weights, fp32 accumulation, fp16 output: ~1e-3.
            rtol=5e-3, cuda_graph=graph))
    return out


QUANT_SHAPES = ["16384x4096"]
PREQUANT_SHAPES = ["4096x4096x4096", "8192x8192x8192", "16384x11264x4096"]
AUTO_SHAPES = ["4096x4096x4096", "8192x8192x8192", "1024x4096x4096"]
DECODE_SHAPES = ["16x14336x4096"]


def cases(quick: bool = False, shapes: list[str] | None = None, device: str = "cuda") -> list[BenchCase]:
    """All FP8 benchmark cases. ``quick``: tiny shapes (interpreter-friendly). ``shapes``: keep only cases
    whose shape label contains one of these strings."""
    gpu = device != "cpu" and torch.cuda.is_available()
    if quick:
        qs, ps, aus, ds = ["64x256"], ["64x96x128"], ["48x80x160"], ["4x96x128"]
    else:
        qs, ps, aus, ds = QUANT_SHAPES, PREQUANT_SHAPES, AUTO_SHAPES, DECODE_SHAPES
    out = (_quant_cases(qs, device, gpu) + _prequant_cases(ps, device, gpu) + _auto_cases(aus, device, gpu)
           + _decode_cases(ds, device, gpu))
    if gpu:  # CUDA-graph twins: GPU time without the per-call host work (see _auto_cases)
        out += _auto_cases(aus, device, gpu, graph=True) + _decode_cases(ds, device, gpu, graph=True)
    return select_shapes(out, shapes)


__all__ = ["cases", "torch_quantize", "torch_quant_scaled_mm", "torch_dequant_mm"]
