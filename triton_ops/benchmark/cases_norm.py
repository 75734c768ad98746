"""Benchmark problems for the row ops of a decoder block: residual add + RMSNorm, RoPE, their FP8 outputs,
and the FP8 MLP block they feed (``triton-ops bench norm``).

Op names start with ``norm_`` because the suite selects a family's cases by that prefix (``bench norm``
runs them all; ``bench norm_fp8`` runs ``norm_fp8`` and ``norm_fp8_mlp_block``). Every ratio of the
targets below comes from one run.

* ``norm_add_rmsnorm``: :func:`~triton_ops.fused_add_rmsnorm` with ``residual=`` at (16384, 4096) and
  (32768, 8192) bf16, returning ``(y, x + r)``. Baselines: ``torch_eager`` (``s = x + r``,
  ``y = s * rsqrt(mean(s.float()^2) + eps) * w`` rounded once), the same formula under ``torch_compile`` /
  ``torch_compile_max``, ``liger`` (a torch add, then ``LigerRMSNorm``: the add is *not* fused, it is the
  library's norm after an unfused add) when ``liger_kernel`` imports, and ``copy``, a device copy of the
  bytes (x, r and the weight read, y and the new residual written). Target: >= 0.93x ``copy``, faster than
  both compile modes.
* ``norm_apply_rope``: :func:`~triton_ops.apply_rope` on q ``[b, s, 32, 128]`` and k ``[b, s, 8, 128]`` bf16
  in the token-major ``qk_layout="bshd"``, at a prefill of one sequence of 16384 tokens (b=1, s=16384,
  table rows 0..16383 in order) and at decode batches 1, 8 and 64 (s=1, ``position_ids`` into a
  4096-row table; timed as CUDA-graph replays over 8 rotating input sets). Every system is timed out of
  place except ``liger``, whose RoPE has no out-of-place mode (it rotates the ``[b, s, h, d]`` storage
  behind the transposed views it is given), and ``triton_ops_inplace`` (``inplace=True``). In-place
  systems rotate their inputs again on every timed call (the values stay bounded: a rotation keeps norms);
  their correctness is checked on fresh copies. ``torch_eager`` / ``torch_compile`` /
  ``torch_compile_max`` run Hugging Face's ``apply_rotary_pos_emb`` (transformers' Llama; when
  transformers is not installed, the same four lines copied here) on ``[b, h, s, d]`` transposed views of
  q and k, with the tables' rows gathered by ``position_ids`` inside the timed call at decode (what
  ``cos[position_ids]`` costs HF's rotary embedding, without its trigonometry). ``copy``: q and k read and
  written plus the table rows read. Target: >= 0.9x ``copy`` at 16384 tokens; faster than torch.compile of
  HF's function.
* ``norm_fp8``: ``fused_add_rmsnorm(..., out_dtype=torch.float8_e4m3fn)`` with ``out_scaling="token"``
  and ``"block"`` (1x128) at (16384, 4096) bf16 with a residual. Baselines: ``torch_eager`` /
  ``torch_compile`` / ``torch_compile_max`` of norm + quantize written in PyTorch (amax per token or per
  1x128 block, ``scale = amax / 448``, ``q = (y / scale).clamp(-448, 448).to(e4m3)``); ``unfused`` = the
  bf16 ``fused_add_rmsnorm`` then :func:`~triton_ops.quantize_fp8` (``"row"`` or ``"block"`` (1, 128));
  ``copy`` of x and r read, the codes (1 byte each), the scales and the new residual written. Checked: the
  dequantized codes against the fp64 norm by SQNR (e4m3 gives ~31 dB on Gaussian data; 28 dB required),
  and the new residual within 1e-2 relative L2 error of the exact sum. Target: >= 0.9x ``copy`` and
  >= 1.2x ``torch_compile`` of norm + quantize.
* ``norm_fp8_mlp_block``: RMSNorm -> FP8 -> gated-MLP GEMM -> FP8 -> down GEMM at H=4096, I=14336,
  M=2048 and 16384, bf16 activations, weights quantized once (e4m3, one scale per output channel)
  outside the timed region. ``triton_ops`` is the FP8 chain: ``fused_add_rmsnorm`` writing e4m3 with
  per-token scales (the FP8 gated kernel takes one scale per row of its input),
  :class:`~triton_ops.FusedGatedMLP` (fp8) writing h in bf16, then the down projection's
  :class:`~triton_ops.FP8Linear` (h quantized per token, row-scaled GEMM). ``triton_ops_block_epilogue``
  has the gated epilogue write h as e4m3 with 1x128 block scales instead, read by a block-scaled
  :func:`~triton_ops.fp8_gemm` (no quantize pass, slower GEMM: see ``FusedMLP.forward``).
  ``triton_ops_patched`` is what ``patch_model(model, fp8=True)`` runs: the bf16 norm, then
  ``FusedMLP.to_fp8()`` (activations quantized per token inside the gated kernel's call
  and inside FP8Linear). Baselines: ``hf_bf16_eager`` = a PyTorch RMSNorm (Hugging Face's Llama order)
  and an HF MLP of three bf16 ``nn.Linear`` with SiLU; ``unfused_fp8_eager`` / ``unfused_fp8_compile`` =
  PyTorch norm, per-token quantize, ``torch._scaled_mm`` over the packed gate/up e4m3 weights (row-wise
  scales: ``scale_a [M, 1]``, ``scale_b [1, N]``, bf16 out), SiLU * up, per-token quantize,
  ``torch._scaled_mm`` down (the same e4m3 weights as ``triton_ops``). Checked against an fp32 reference of
  the unquantized bf16 block by SQNR >= 20 dB (the FP8 chain measures ~24 dB: four e4m3 roundings, see
  tests/test_fp8_outputs.py, which requires > 22 dB at M=2048). TFLOPS count 6 M H I. Target: >= 1.6x
  ``hf_bf16_eager`` and >= 1.15x ``unfused_fp8_compile``.

``cases(quick=True, device="cpu")`` gives tiny shapes that run through Triton's interpreter. torch.compile
and ``copy`` systems are GPU-only. ``unfused_fp8_eager`` runs on the CPU too (torch has a CPU
``_scaled_mm``), which checks there the formula ``unfused_fp8_compile`` compiles. Systems needing a library
that is not importable (``liger_kernel``) are left out of the case.
"""

from __future__ import annotations

from typing import Any

import torch

from ..compute.rope import rope_cos_sin
from ..exceptions import CorrectnessError
from ..kernels.fp8_gemm import fp8_gemm
from ..kernels.fp8_quantize import quantize_fp8
from ..kernels.mlp import FusedMLP
from ..kernels.rmsnorm import fused_add_rmsnorm
from ..kernels.rope import apply_rope, rope_reference
from .case import BenchCase, relative_error, select_shapes
from .cases_fp8 import torch_quantize
from .cases_training import _HFMLP, _liger
from .timing import compiled, copy_ceiling

E4M3 = torch.float8_e4m3fn
FMAX = 448.0
EPS = 1e-6
#: Block width of the "block" FP8 scaling (1 x 128, the a_scale layout of fp8_gemm's block-scaled path).
QBLOCK = 128
#: Relative L2 error of the new residual ``x + r`` allowed against the exact sum: one bf16 rounding is
#: ~1.5e-3; a wrong or missing sum is off by O(1).
RESIDUAL_RTOL = 1e-2
#: Rows of the cos/sin table the decode cases index (a KV cache of 4096 positions).
DECODE_TABLE_ROWS = 4096
#: Input sets the decode RoPE cases rotate through: one set (<= 2.7 MB at batch 64) would stay in L2.
DECODE_ROTATE = 8

# (label, rows, hidden)
_ADD_FULL = [("16384x4096", 16384, 4096), ("32768x8192", 32768, 8192)]
_ADD_QUICK = [("quick 64x256", 64, 256), ("quick 16x1024", 16, 1024)]
# (label, batch, seq, q heads, k heads, head_dim, table rows or None (= seq, rows in order))
_ROPE_FULL = [
    ("prefill 1x16384 q32 k8 hd128", 1, 16384, 32, 8, 128, None),
    ("decode b=1 q32 k8 hd128", 1, 1, 32, 8, 128, DECODE_TABLE_ROWS),
    ("decode b=8 q32 k8 hd128", 8, 1, 32, 8, 128, DECODE_TABLE_ROWS),
    ("decode b=64 q32 k8 hd128", 64, 1, 32, 8, 128, DECODE_TABLE_ROWS),
]
_ROPE_QUICK = [
    ("quick prefill 1x16 q4 k2 hd64", 1, 16, 4, 2, 64, None),
    ("quick decode b=3 q4 k2 hd64", 3, 1, 4, 2, 64, 32),
]
# (label, rows, hidden, scaling)
_FP8_FULL = [("16384x4096 token", 16384, 4096, "token"), ("16384x4096 block", 16384, 4096, "block")]
_FP8_QUICK = [("quick 32x256 token", 32, 256, "token"), ("quick 32x256 block", 32, 256, "block")]
# (label, M, H, I)
_MLP_FULL = [("M=2048 4096x14336", 2048, 4096, 14336), ("M=16384 4096x14336", 16384, 4096, 14336)]
# M = 80 > 64: FP8Linear then quantizes its activations (at M <= 64 it multiplies bf16 by FP8 weights)
_MLP_QUICK = [("quick M=80 128x256", 80, 128, 256)]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _lazy_copy(nbytes: float, device: str):
    """The copy ceiling as a system, its buffers made at the first timed call (never for a CPU run)."""
    state: dict[str, Any] = {}

    def copy(i):
        if "fn" not in state:
            state["fn"] = copy_ceiling(int(nbytes), device)
        return state["fn"]()

    return copy


def _check_residual(s: torch.Tensor, i: dict[str, Any]) -> None:
    """Raise when the new residual stream is not ``x + r`` (the check of the second output, which the
    suite's comparison of the first one does not see)."""
    err = relative_error(s, i["x"].double() + i["r"].double())
    if not err <= RESIDUAL_RTOL:
        raise CorrectnessError(f"new residual x + r: relative L2 error {err:.3g} above {RESIDUAL_RTOL:g}")


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q.float() * scale`` for per-token ``[..., 1]`` or 1x128 block ``[rows, ceil(hidden / 128)]``
    scales (fp32)."""
    qf = q.float()
    if scale.shape[-1] == 1:
        return qf * scale.float()
    hidden = q.shape[-1]
    s = scale.float().reshape(*q.shape[:-1], -1).repeat_interleave(QBLOCK, dim=-1)[..., :hidden]
    return qf * s


def checked_add_norm(fn):
    """The output a residual-norm system is judged by: ``y`` (``fn`` returns ``(y, s)``), after its new
    residual ``s`` was checked."""
    def run(i):
        y, s = fn(i)
        _check_residual(s, i)
        return y
    return run


def checked_norm_fp8(fn):
    """``fn`` returns ``(q, scale, s)``: the dequantized codes, after the new residual was checked."""
    def run(i):
        q, scale, s = fn(i)
        _check_residual(s, i)
        return dequantize(q, scale)
    return run


# ----------------------------------------------------------------------------------------------------
# Residual add + RMSNorm
# ----------------------------------------------------------------------------------------------------
def torch_add_rmsnorm(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor, eps: float = EPS):
    """What a PyTorch user writes: the add in the activations' dtype, the norm in fp32, one rounding."""
    s = x + r
    sf = s.float()
    y = sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps) * w.float()
    return y.to(x.dtype), s


def _norm_reference(i: dict[str, Any]) -> torch.Tensor:
    # float64 on the device: exact next to every system's bf16 rounding
    s = i["x"].double() + i["r"].double()
    return s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + EPS) * i["w"].double()


def _norm_inputs(rows: int, hidden: int, dtype: torch.dtype, device: str, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator(device=device).manual_seed(seed)
    return {"x": torch.randn(rows, hidden, device=device, dtype=dtype, generator=g),
            "r": torch.randn(rows, hidden, device=device, dtype=dtype, generator=g),
            "w": (1 + 0.1 * torch.randn(hidden, device=device, generator=g)).to(dtype)}


def _add_rmsnorm_case(label: str, rows: int, hidden: int, device: str) -> BenchCase:
    dtype = torch.bfloat16
    es = dtype.itemsize
    nbytes = 4 * rows * hidden * es + hidden * es  # x, r read; y, s written; the weight read

    comp_default = compiled(torch_add_rmsnorm)
    comp_max = compiled(torch_add_rmsnorm, "max-autotune")
    systems: dict[str, Any] = {
        "triton_ops": lambda i: fused_add_rmsnorm(i["x"], i["w"], EPS, residual=i["r"]),
        "torch_eager": lambda i: torch_add_rmsnorm(i["x"], i["r"], i["w"]),
        "torch_compile": lambda i: comp_default(i["x"], i["r"], i["w"]),
        "torch_compile_max": lambda i: comp_max(i["x"], i["r"], i["w"]),
    }
    lk = _liger()
    if lk is not None:
        def liger(i):
            if "liger_norm" not in i:
                norm = lk.LigerRMSNorm(hidden, eps=EPS).to(device=device, dtype=dtype)
                with torch.no_grad():
                    norm.weight.copy_(i["w"])
                norm.requires_grad_(False)
                i["liger_norm"] = norm
            s = i["x"] + i["r"]  # unfused: Liger's RMSNorm has no residual input
            return i["liger_norm"](s), s

        systems["liger"] = liger
    systems["copy"] = _lazy_copy(nbytes, device)
    extra = {name: checked_add_norm(fn) for name, fn in systems.items() if name != "copy"}
    return BenchCase(
        op="norm_add_rmsnorm", shape=label, dtype=_dtype_name(dtype),
        make_inputs=lambda: _norm_inputs(rows, hidden, dtype, device), systems=systems,
        reference=_norm_reference, bytes_moved=float(nbytes), ceiling="copy",
        # y rounded once to bf16 (~2e-3 relative L2) after the bf16 sum (~1.5e-3); Liger rounds once more
        # before the weight (HF's order); 1e-2 leaves 3x
        rtol=1e-2, unchecked=("copy",), extra=extra, gpu_only=("torch_compile", "torch_compile_max", "copy"),
        size=float(rows))


# ----------------------------------------------------------------------------------------------------
# RoPE
# ----------------------------------------------------------------------------------------------------
def _hf_apply_rotary_pos_emb():
    """Hugging Face's ``apply_rotary_pos_emb`` (transformers' Llama), or the same math when transformers
    is not installed."""
    try:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    except Exception:  # transformers is a dev dependency only
        def rotate_half(x):
            x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
            return torch.cat((-x2, x1), dim=-1)

        def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
            cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
            return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)

    return apply_rotary_pos_emb


def _hf_tables(cos, sin, pos):
    """The ``[b, s, d]`` tables HF's attention receives: rows gathered by ``position_ids`` (decode) or the
    table's first rows in order (prefill, a view)."""
    if pos is None:
        return cos[None], sin[None]
    return cos[pos], sin[pos]


def _bshd_flat(qo: torch.Tensor, ko: torch.Tensor, bhsd: bool = False) -> torch.Tensor:
    """q and k outputs as one flat vector in the ``[b, s, h, d]`` order (HF and Liger return ``[b, h, s, d]``)."""
    if bhsd:
        qo, ko = qo.transpose(1, 2), ko.transpose(1, 2)
    return torch.cat([qo.reshape(-1), ko.reshape(-1)])


def _rope_case(label: str, batch: int, seq: int, hq: int, hk: int, hd: int, table_rows: int | None,
               device: str) -> BenchCase:
    dtype = torch.bfloat16
    es = dtype.itemsize
    decode = table_rows is not None
    rows = table_rows if decode else seq
    tokens = batch * seq
    # q and k read and written once, the cos and sin rows the tokens use read once (+ the position ids)
    nbytes = 2 * tokens * (hq + hk) * hd * es + 2 * min(tokens, rows) * hd * es + (tokens * 8 if decode else 0)
    hf_rope = _hf_apply_rotary_pos_emb()

    def make_inputs() -> dict[str, Any]:
        g = torch.Generator(device=device).manual_seed(0)
        cos, sin = rope_cos_sin(torch.arange(rows).numpy(), hd)
        inp: dict[str, Any] = {
            "q": torch.randn(batch, seq, hq, hd, device=device, dtype=dtype, generator=g),
            "k": torch.randn(batch, seq, hk, hd, device=device, dtype=dtype, generator=g),
            # in q's dtype, as Hugging Face's rotary embeddings return them
            "cos": torch.tensor(cos, dtype=dtype, device=device),
            "sin": torch.tensor(sin, dtype=dtype, device=device),
            "pos": None,
        }
        if decode:
            inp["pos"] = torch.randint(0, rows, (batch, seq), device=device, generator=g)
        return inp

    def ours(inplace: bool):
        def run(i):
            return apply_rope(i["q"], i["k"], i["cos"], i["sin"], position_ids=i["pos"], qk_layout="bshd",
                              inplace=inplace)
        return run

    def hf(q, k, cos, sin, pos):
        c, s = _hf_tables(cos, sin, pos)
        return hf_rope(q.transpose(1, 2), k.transpose(1, 2), c, s)

    comp_default = compiled(hf)
    comp_max = compiled(hf, "max-autotune")
    args = lambda i: (i["q"], i["k"], i["cos"], i["sin"], i["pos"])
    systems: dict[str, Any] = {
        "triton_ops": ours(False),
        "triton_ops_inplace": ours(True),
        "torch_eager": lambda i: hf(*args(i)),
        "torch_compile": lambda i: comp_default(*args(i)),
        "torch_compile_max": lambda i: comp_max(*args(i)),
    }
    extra: dict[str, Any] = {
        "triton_ops": lambda i: _bshd_flat(*ours(False)(i)),
        # in place: checked on copies, so the inputs every other system is checked on stay unrotated
        "triton_ops_inplace": lambda i: _bshd_flat(*ours(True)(dict(i, q=i["q"].clone(), k=i["k"].clone()))),
        "torch_eager": lambda i: _bshd_flat(*hf(*args(i)), bhsd=True),
        "torch_compile": lambda i: _bshd_flat(*comp_default(*args(i)), bhsd=True),
        "torch_compile_max": lambda i: _bshd_flat(*comp_max(*args(i)), bhsd=True),
    }
    lk = _liger()
    if lk is not None:
        def liger(i):
            c, s = _hf_tables(i["cos"], i["sin"], i["pos"])
            # rotates the [b, s, h, d] storage behind the views in place (its only mode)
            return lk.liger_rotary_pos_emb(i["q"].transpose(1, 2), i["k"].transpose(1, 2), c, s)

        systems["liger"] = liger
        extra["liger"] = lambda i: _bshd_flat(*liger(dict(i, q=i["q"].clone(), k=i["k"].clone())), bhsd=True)
    systems["copy"] = _lazy_copy(nbytes, device)

    def reference(i):
        qo, ko = rope_reference(i["q"].double(), i["k"].double(), i["cos"].double(), i["sin"].double(),
                                position_ids=i["pos"], qk_layout="bshd")
        return _bshd_flat(qo, ko)

    return BenchCase(
        op="norm_apply_rope", shape=label, dtype=_dtype_name(dtype), make_inputs=make_inputs, systems=systems,
        reference=reference, bytes_moved=float(nbytes), ceiling="copy",
        # one rounding of the fp32 rotation (~2e-3 relative L2); HF's bf16 arithmetic rounds three times
        # (two products and their sum), ~4e-3; 1e-2 leaves room
        rtol=1e-2, unchecked=("copy",), extra=extra, gpu_only=("torch_compile", "torch_compile_max", "copy"),
        # decode launches take a few microseconds: CUDA-graph replays, as a serving engine runs them
        cuda_graph=decode, rotate_inputs=DECODE_ROTATE if decode else 1, size=float(tokens))


# ----------------------------------------------------------------------------------------------------
# Residual add + RMSNorm with an FP8 output
# ----------------------------------------------------------------------------------------------------
def torch_add_rmsnorm_fp8(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor, block: int = 0, eps: float = EPS):
    """Norm + quantize in PyTorch: ``(q, scale, s)`` with one scale per token (``block=0``) or per 1 x
    ``block`` group of a row (the hidden size a multiple of ``block``); the fp32 norm is quantized, not its
    bf16 rounding."""
    s = x + r
    sf = s.float()
    y = sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps) * w.float()
    yg = y.view(*y.shape[:-1], y.shape[-1] // block, block) if block else y
    scale = (yg.abs().amax(-1, keepdim=True) / FMAX).clamp_min(1e-12)
    q = (yg / scale).clamp(-FMAX, FMAX).to(E4M3)
    if block:
        return q.view(y.shape), scale.squeeze(-1), s
    return q, scale, s


def _norm_fp8_case(label: str, rows: int, hidden: int, scaling: str, device: str) -> BenchCase:
    dtype = torch.bfloat16
    es = dtype.itemsize
    block = QBLOCK if scaling == "block" else 0
    n_scales = rows * -(-hidden // QBLOCK) if block else rows
    # x, r and the weight read; e4m3 codes (1 byte), their fp32 scales and the new residual written
    nbytes = 2 * rows * hidden * es + rows * hidden + 4 * n_scales + rows * hidden * es + hidden * es
    gran = "block" if block else "row"
    bsize = (1, QBLOCK) if block else None

    def unfused(i):
        y, s = fused_add_rmsnorm(i["x"], i["w"], EPS, residual=i["r"])
        q, scale = quantize_fp8(y, granularity=gran, block_size=bsize)
        return q, scale, s

    comp_default = compiled(torch_add_rmsnorm_fp8)
    comp_max = compiled(torch_add_rmsnorm_fp8, "max-autotune")
    systems: dict[str, Any] = {
        "triton_ops": lambda i: fused_add_rmsnorm(i["x"], i["w"], EPS, residual=i["r"], out_dtype=E4M3,
                                                  out_scaling=scaling),
        "unfused": unfused,
        "torch_eager": lambda i: torch_add_rmsnorm_fp8(i["x"], i["r"], i["w"], block),
        "torch_compile": lambda i: comp_default(i["x"], i["r"], i["w"], block),
        "torch_compile_max": lambda i: comp_max(i["x"], i["r"], i["w"], block),
        "copy": _lazy_copy(nbytes, device),
    }
    extra = {name: checked_norm_fp8(fn) for name, fn in systems.items() if name != "copy"}
    return BenchCase(
        op="norm_fp8", shape=label, dtype=f"{_dtype_name(dtype)}->e4m3 {scaling}",
        make_inputs=lambda: _norm_inputs(rows, hidden, dtype, device), systems=systems,
        reference=_norm_reference, bytes_moved=float(nbytes), ceiling="copy",
        # e4m3 on Gaussian data: ~31 dB per token, ~33 dB per block (smaller groups); ``unfused`` rounds
        # to bf16 first (~50 dB below the signal, no visible loss). 28 dB leaves room; a wrong scale or
        # layout is below 10 dB
        min_sqnr_db=28.0, unchecked=("copy",), extra=extra,
        gpu_only=("torch_compile", "torch_compile_max", "copy"), size=float(rows))


# ----------------------------------------------------------------------------------------------------
# FP8 MLP block: norm -> FP8 -> gated MLP -> FP8 -> down projection
# ----------------------------------------------------------------------------------------------------
def torch_rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Hugging Face's Llama RMSNorm: fp32 statistics, rounded to x's dtype before the weight."""
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def torch_fp8_mlp_block(x, w_norm, wgu_q, wgu_s, wd_q, wd_s, eps: float = EPS) -> torch.Tensor:
    """The FP8 block in PyTorch ops: fp32 norm, per-token quantize, ``_scaled_mm`` over the packed gate/up
    e4m3 weights ``[2I, H]`` (row-wise scales, bf16 out), SiLU * up, per-token quantize, ``_scaled_mm`` down.
    The weights' scales are ``[1, N]`` fp32; cuBLASLt wants the second operand column-major: ``w.t()``."""
    xf = x.float()
    n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w_norm.float()
    nq, ns = torch_quantize(n, "row")
    gu = torch._scaled_mm(nq, wgu_q.t(), scale_a=ns, scale_b=wgu_s, out_dtype=x.dtype)
    inter = gu.shape[-1] // 2
    h = torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]
    hq, hs = torch_quantize(h, "row")
    return torch._scaled_mm(hq, wd_q.t(), scale_a=hs, scale_b=wd_s, out_dtype=x.dtype)


def _mlp_block_case(label: str, M: int, H: int, inter: int, device: str) -> BenchCase:
    dtype = torch.bfloat16

    def make_inputs() -> dict[str, Any]:
        g = torch.Generator(device=device).manual_seed(0)
        hf = _HFMLP(H, inter, device, dtype, generator=g)
        hf.requires_grad_(False)  # inference: no autograd graph in the timed calls
        # What patch_model(fp8=True) installs; quantizes the weights once, here, outside the timed region.
        # The chain below runs on the same e4m3 weights and scales.
        fp8 = FusedMLP.from_hf(hf).to_fp8()
        gu, down = fp8.gate_up, fp8.down_proj
        return {
            "x": torch.randn(M, H, device=device, dtype=dtype, generator=g),
            "w_norm": (1 + 0.1 * torch.randn(H, device=device, generator=g)).to(dtype),
            "hf": hf, "fp8_mlp": fp8, "gu": gu,
            # the down projection's e4m3 [H, I] weight as fp8_gemm's b = w.t() (K-major, no copy)
            "wd_t": down.weight.t(), "wd_s": down.weight_scale.reshape(1, -1),
            "wgu_q": gu.weight_fp8, "wgu_s": gu.weight_scale.reshape(1, -1), "wd_q": down.weight,
        }

    def chain(i):
        # per-token scales: the FP8 gated kernel takes one scale per row of its input; h in bf16, quantized
        # per token by the down projection (row-scaled GEMM, see FusedMLP.forward)
        xq, xs = fused_add_rmsnorm(i["x"], i["w_norm"], EPS, out_dtype=E4M3, out_scaling="token")
        return i["fp8_mlp"].down_proj(i["gu"](xq, xs, out_dtype=i["x"].dtype))

    def block_chain(i):
        # h as e4m3 with (1, 128) block scales from the gated epilogue: no quantize pass, block-scaled GEMM
        xq, xs = fused_add_rmsnorm(i["x"], i["w_norm"], EPS, out_dtype=E4M3, out_scaling="token")
        aq, a_s = i["gu"](xq, xs, out_dtype=E4M3, out_scaling="block")
        return fp8_gemm(aq, i["wd_t"], a_scale=a_s, b_scale=i["wd_s"], out_dtype=i["x"].dtype)

    def patched(i):
        return i["fp8_mlp"](fused_add_rmsnorm(i["x"], i["w_norm"], EPS))

    fp8_args = lambda i: (i["x"], i["w_norm"], i["wgu_q"], i["wgu_s"], i["wd_q"], i["wd_s"])
    comp = compiled(torch_fp8_mlp_block)
    systems: dict[str, Any] = {
        "triton_ops": chain,
        "triton_ops_patched": patched,
        "triton_ops_block_epilogue": block_chain,
        "hf_bf16_eager": lambda i: i["hf"](torch_rmsnorm(i["x"], i["w_norm"])),
        "unfused_fp8_eager": lambda i: torch_fp8_mlp_block(*fp8_args(i)),
        "unfused_fp8_compile": lambda i: comp(*fp8_args(i)),
    }

    def reference(i):
        # fp32 (no TF32) of the unquantized bf16 block: its 24-bit mantissa sits far below the FP8 error
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            xf = i["x"].float()
            n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS) * i["w_norm"].float()
            hf = i["hf"]
            g, u = n @ hf.gate_proj.weight.float().t(), n @ hf.up_proj.weight.float().t()
            return (torch.nn.functional.silu(g) * u) @ hf.down_proj.weight.float().t()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev

    return BenchCase(
        op="norm_fp8_mlp_block", shape=label, dtype=f"{_dtype_name(dtype)} (e4m3 weights)",
        make_inputs=make_inputs, systems=systems, reference=reference, flops=6.0 * M * H * inter,
        # four e4m3 roundings (norm output, weights, gated product): ~24 dB on Gaussian data
        # (tests/test_fp8_outputs.py); bf16 systems reach ~45 dB
        min_sqnr_db=20.0, gpu_only=("unfused_fp8_compile",), size=float(M))


def cases(quick: bool = False, shapes: list[str] | None = None, device: str = "cuda") -> list[BenchCase]:
    out = [_add_rmsnorm_case(*row, device=device) for row in (_ADD_QUICK if quick else _ADD_FULL)]
    out += [_rope_case(*row, device=device) for row in (_ROPE_QUICK if quick else _ROPE_FULL)]
    out += [_norm_fp8_case(*row, device=device) for row in (_FP8_QUICK if quick else _FP8_FULL)]
    out += [_mlp_block_case(*row, device=device) for row in (_MLP_QUICK if quick else _MLP_FULL)]
    return select_shapes(out, shapes)


__all__ = ["cases", "torch_add_rmsnorm", "torch_add_rmsnorm_fp8", "torch_rmsnorm", "torch_fp8_mlp_block",
           "dequantize", "checked_add_norm", "checked_norm_fp8"]
