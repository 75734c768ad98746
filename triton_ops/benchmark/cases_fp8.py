"""Benchmark problems for FP8 quantization, FP8 GEMM, FP8Linear and the FP8 decode GEMM.

Targets (see the FP8 issues): per-token quantize >= 90% of copy bandwidth, per-tensor >= 1.3x
torch.compile; pre-quantized e4m3 GEMM -> bf16 >= 1.0x cuBLASLt ``torch._scaled_mm`` (1.1x at 4096^3 and
8192^3 as the stretch goal) *whatever the operand layout*; ``fp8_gemm(a, b)`` from fp16 >= 1.3x / 1.7x fp16
cuBLAS at 4096^3 / 8192^3 and never slower at 1024x4096x4096; decode M=16 N=14336 K=4096 >= 80% of copy
bandwidth for the weight bytes.

Layouts: every GEMM case times the canonical layout (``b = w.t()`` of an ``[N, K]`` weight, row-major ``a``)
and the others next to it: ``*_b_kn`` a contiguous ``[K, N]`` ``b`` passed again unchanged (its K-major FP8
copy is reused), ``*_b_kn_fresh`` the same with the copy made on every call (the operand cache cleared first:
what a ``b`` that changes every call costs), ``*_a_col`` a column-major ``a``. The README's call,
``fp8_gemm(a, b)`` with fp16 ``a`` and ``b [K, N]``, is ``fp8_gemm_auto``'s "triton_ops" row.

Host cost: do_bench times each call between CUDA events after an L2 flush, which hides up to ~65 us of host
work per call (the flush kernel gives the host a head start). The ``*_wall`` twins time the same systems as
``WALL_CALLS`` back-to-back eager calls per timed sample (so ``ms`` is per ``WALL_CALLS`` calls, and GB/s and
TFLOPS count all of them): a host-bound call shows up there at its host cost. ``*_graph`` twins time CUDA-
graph replays (GPU time only). ``benchmarks/scripts/sweep_fp8.py`` reports the same per call.

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
#: Back-to-back eager calls per timed sample in the ``*_wall`` cases (the flush's ~65 us head start is then
#: spread over 10 calls: a host-bound call is measured within ~7 us of its host cost).
WALL_CALLS = 10


def _wall(fn, n: int = WALL_CALLS):
    """``fn`` called ``n`` times back to back (returns the last output, which the suite checks)."""
    def run(i):
        for _ in range(n - 1):
            fn(i)
        return fn(i)
    return run


def _col_major(x: torch.Tensor) -> torch.Tensor:
    """The same values, column-major (the transpose of a contiguous copy)."""
    return x.t().contiguous().t()


def _fresh(fn):
    """``fn`` with the FP8 operand cache emptied first: every call re-makes its operands' copies."""
    from ..kernels.fp8_cache import clear

    def run(i):
        clear()
        return fn(i)
    return run


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


def _prequant_cases(shapes, device, gpu: bool, wall: bool = False) -> list[BenchCase]:
    from ..kernels.fp8_gemm import fp8_gemm
    from ..kernels.fp8_quantize import quantize_fp8

    out = []
    for label in shapes:
        M, N, K = _parse(label)
        for gran in ("tensor", "row"):
            if wall and gran == "tensor":
                continue

            def make(M=M, N=N, K=K, g=gran):
                a = torch.randn(M, K, device=device, dtype=torch.bfloat16)
                w = torch.randn(N, K, device=device, dtype=torch.bfloat16)
                qa, sa = quantize_fp8(a, granularity=g)
                qw, sw = quantize_fp8(w, granularity=g)
                sa = sa.reshape(1) if g == "tensor" else sa
                sb = sw.reshape(1) if g == "tensor" else sw.t()
                # b = w.t(): [K, N] column-major, the layout cuBLASLt FP8 requires; qb_kn: the same values
                # as a contiguous [K, N]; qa_col: a column-major.
                return {"qa": qa, "sa": sa, "qb": qw.t(), "sb": sb, "qb_kn": qw.t().contiguous(),
                        "qa_col": _col_major(qa), "a16": a.half(), "b16": w.half().t().contiguous()}

            def ours(qa="qa", qb="qb"):
                return lambda i: fp8_gemm(i[qa], i[qb], a_scale=i["sa"], b_scale=i["sb"], out_dtype=torch.bfloat16,
                                          check_scales=False)

            systems: dict[str, Any] = {"triton_ops": ours()}
            if gran == "row":
                systems["triton_ops_b_kn"] = ours(qb="qb_kn")
                systems["triton_ops_b_kn_fresh"] = _fresh(ours(qb="qb_kn"))
                systems["triton_ops_a_col"] = ours(qa="qa_col")
            if not wall:
                systems["torch_eager"] = lambda i: torch_dequant_mm(i["qa"], i["sa"], i["qb"], i["sb"])
            if gpu:
                if not wall:
                    cdm = compiled(torch_dequant_mm)
                    systems["torch_compile"] = lambda i, f=cdm: f(i["qa"], i["sa"], i["qb"], i["sb"])
                systems["torch_scaled_mm"] = lambda i: torch._scaled_mm(
                    i["qa"], i["qb"], scale_a=i["sa"] if i["sa"].dim() == 2 else i["sa"].reshape(()),
                    scale_b=i["sb"] if i["sb"].dim() == 2 else i["sb"].reshape(()), out_dtype=torch.bfloat16)
                systems["cublas_fp16"] = lambda i: torch.mm(i["a16"], i["b16"])
            reps = WALL_CALLS if wall else 1
            if wall:
                systems = {k: _wall(f) for k, f in systems.items()}
            out.append(BenchCase(
                op="fp8_gemm_prequant_wall" if wall else "fp8_gemm_prequant",
                shape=f"{M}x{N}x{K} {gran}" + (f" x{reps} calls" if wall else ""), dtype="e4m3->bf16",
                make_inputs=make, systems=systems,
                reference=lambda i: _ref_gemm(i["qa"], i["sa"], i["qb"], i["sb"]),
                bytes_moved=reps * (M * K + K * N + 2 * M * N), flops=reps * 2.0 * M * N * K,
                ceiling="torch_scaled_mm" if gpu else None, unchecked=("cublas_fp16",),
                # bf16 output rounding (2^-9 relative) bounds the error: ~50 dB; 40 dB leaves margin.
                min_sqnr_db=40.0))
    return out


def _auto_cases(shapes, device, gpu: bool, graph: bool = False, wall: bool = False) -> list[BenchCase]:
    """``fp8_gemm(a, b)`` from fp16 (the README's call: ``b`` a contiguous ``[K, N]`` passed again unchanged,
    so its FP8 copy is reused). ``graph``: the same problems timed as CUDA-graph replays (op
    "fp8_gemm_auto_graph"), which removes the host's launch work: the graph row is the GPU time of a whole
    call *including b's quantization* (a captured call never reuses a cached copy: replays must see in-place
    updates of b, see fp8_cache). "triton_ops_fresh_b" re-quantizes b on
    every call (a b that changes between calls); "triton_ops_b_t" passes ``b = w.t()``; "triton_ops_a_col" a
    column-major a; "triton_ops_quant" is the two operand-quantization launches of a fresh b alone."""
    from ..kernels.fp8_gemm import fp8_gemm
    from ..kernels.fp8_quantize import quantize_operands_for_gemm

    out = []
    for label in shapes:
        M, N, K = _parse(label)

        def make(M=M, N=N, K=K):
            a = torch.randn(M, K, device=device, dtype=torch.float16)
            b = torch.randn(K, N, device=device, dtype=torch.float16)
            return {"a": a, "b": b, "b_t": _col_major(b), "a_col": _col_major(a)}

        systems: dict[str, Any] = {"triton_ops": lambda i: fp8_gemm(i["a"], i["b"])}
        if not graph:  # a fresh b cannot be told apart from a reused one inside a graph (no host work)
            systems["triton_ops_fresh_b"] = _fresh(lambda i: fp8_gemm(i["a"], i["b"]))
        systems["triton_ops_b_t"] = lambda i: fp8_gemm(i["a"], i["b_t"])
        systems["triton_ops_a_col"] = lambda i: fp8_gemm(i["a_col"], i["b"])
        if gpu:
            if not graph and not wall:
                systems["triton_ops_quant"] = lambda i: quantize_operands_for_gemm(i["a"], i["b"])[0]
            if not graph:
                systems["torch_eager"] = lambda i: torch_quant_scaled_mm(i["a"], i["b"])
            if not wall:
                cq = compiled(torch_quant_scaled_mm)
                systems["torch_compile"] = lambda i, f=cq: f(i["a"], i["b"])
            systems["cublas_fp16"] = lambda i: torch.mm(i["a"], i["b"])
        else:
            systems["torch_eager"] = lambda i: torch.mm(i["a"].float(), i["b"].float())
        reps = WALL_CALLS if wall else 1
        if wall:
            systems = {k: _wall(f) for k, f in systems.items()}

        def reference(i):
            prev = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                return i["a"].float() @ i["b"].float()
            finally:
                torch.backends.cuda.matmul.allow_tf32 = prev

        op = "fp8_gemm_auto_graph" if graph else "fp8_gemm_auto_wall" if wall else "fp8_gemm_auto"
        out.append(BenchCase(
            op=op, shape=f"{M}x{N}x{K}" + (f" x{reps} calls" if wall else ""),
            dtype="float16 (e4m3 row/col)", make_inputs=make,
            systems=systems, reference=reference, bytes_moved=reps * 2 * (M * K + K * N + M * N),
            flops=reps * 2.0 * M * N * K, ceiling="cublas_fp16" if gpu else None, unchecked=("triton_ops_quant",),
            # per-row x per-column e4m3 on Gaussian data measures 28.5-29 dB (tests/test_fp8_gemm.py); at
            # M <= 64 only b is quantized (~31 dB); 27 dB leaves room for the fp16 output rounding.
            min_sqnr_db=27.0, cuda_graph=graph))
    return out


def _linear_cases(shapes, device, gpu: bool, graph: bool = False, wall: bool = False) -> list[BenchCase]:
    """``FP8Linear`` forward (bf16 activations, e4m3 weights per output channel) as a model calls it: the
    module's FP8 weight is a buffer; "triton_ops_param" holds it as an ``nn.Parameter`` instead (what
    ``nn.Linear`` users and wrappers hold), which must take the same launch plan. Baseline: the bf16
    ``nn.Linear`` it replaces (cuBLAS)."""
    from torch import nn

    from ..kernels.fp8_linear import FP8Linear

    out = []
    for label in shapes:
        M, N, K = _parse(label)

        def make(M=M, N=N, K=K):
            lin = nn.Linear(K, N, device=device, dtype=torch.bfloat16)
            f = FP8Linear.from_linear(lin)
            fp = FP8Linear.from_linear(lin)
            w = fp.weight
            del fp.weight
            fp.weight = nn.Parameter(w, requires_grad=False)  # the same FP8 bytes, held as a Parameter
            return {"x": torch.randn(M, K, device=device, dtype=torch.bfloat16), "lin": lin, "fp8": f,
                    "fp8_param": fp}

        systems: dict[str, Any] = {
            "triton_ops": lambda i: i["fp8"](i["x"]),
            "triton_ops_param": lambda i: i["fp8_param"](i["x"]),
            "torch_bf16_linear": lambda i: i["lin"](i["x"]),
        }
        reps = WALL_CALLS if wall else 1
        if wall:
            systems = {k: _wall(f) for k, f in systems.items()}

        def reference(i):
            f = i["fp8"]
            return i["x"].float() @ f.dequantized_weight().t() + f.bias.float()

        op = "fp8_linear_graph" if graph else "fp8_linear_wall" if wall else "fp8_linear"
        out.append(BenchCase(
            op=op, shape=f"{M}x{N}x{K}" + (f" x{reps} calls" if wall else ""), dtype="bfloat16 x e4m3 weights",
            make_inputs=make, systems=systems, reference=reference,
            bytes_moved=reps * (N * K + 2 * M * K + 2 * M * N), flops=reps * 2.0 * M * N * K,
            ceiling="torch_bf16_linear" if gpu else None, unchecked=("torch_bf16_linear",),
            # against the exactly dequantized weight: M <= 64 only bf16 rounding (> 40 dB); larger M also
            # quantizes x per token (~31 dB on Gaussian data); 27 dB leaves room for bf16 outputs.
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
                    "w16_t": w.t(), "qw_kn": qw.t().contiguous()}

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
            # the same weights as a contiguous [K, N] (read N-major in the kernel, see fp8_gemm)
            "triton_ops_b_kn": lambda i: fp8_weight_only_gemm(i["x"], i["qw_kn"], i["sw"]),
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
PREQUANT_SHAPES = ["1024x4096x4096", "4096x4096x4096", "8192x8192x8192", "16384x11264x4096"]
AUTO_SHAPES = ["1024x4096x4096", "4096x4096x4096", "8192x8192x8192"]
LINEAR_SHAPES = ["16x4096x4096", "1024x4096x4096", "4096x4096x4096"]
DECODE_SHAPES = ["16x14336x4096"]
#: Shapes whose eager calls can be host-bound: timed again back to back (the ``*_wall`` twins).
WALL_SHAPES = ["16x4096x4096", "1024x4096x4096"]


def cases(quick: bool = False, shapes: list[str] | None = None, device: str = "cuda") -> list[BenchCase]:
    """All FP8 benchmark cases. ``quick``: tiny shapes (interpreter-friendly). ``shapes``: keep only cases
    whose shape label contains one of these strings."""
    gpu = device != "cpu" and torch.cuda.is_available()
    if quick:
        qs, ps, aus, ls, ds, ws = ["64x256"], ["64x96x128"], ["48x80x160", "80x96x128"], ["8x64x96", "80x64x96"], \
            ["4x96x128"], ["80x96x128"]
    else:
        qs, ps, aus, ls, ds, ws = QUANT_SHAPES, PREQUANT_SHAPES, AUTO_SHAPES, LINEAR_SHAPES, DECODE_SHAPES, \
            WALL_SHAPES
    wall_p = [s for s in ps if any(w in s for w in ws)] or ps[:1]
    wall_a = [s for s in aus if any(w in s for w in ws)] or aus[:1]
    wall_l = [s for s in ls if any(w in s for w in ws)] or ls[:1]
    out = (_quant_cases(qs, device, gpu) + _prequant_cases(ps, device, gpu) + _auto_cases(aus, device, gpu)
           + _linear_cases(ls, device, gpu) + _decode_cases(ds, device, gpu))
    out += (_prequant_cases(wall_p, device, gpu, wall=True) + _auto_cases(wall_a, device, gpu, wall=True)
            + _linear_cases(wall_l, device, gpu, wall=True))
    if gpu:  # CUDA-graph twins: GPU time without the per-call host work (see _auto_cases)
        out += (_auto_cases(aus, device, gpu, graph=True) + _linear_cases(ls, device, gpu, graph=True)
                + _decode_cases(ds, device, gpu, graph=True))
    return select_shapes(out, shapes)


__all__ = ["cases", "torch_quantize", "torch_quant_scaled_mm", "torch_dequant_mm", "WALL_CALLS"]
