"""Fused gated MLP: ``act(x @ Wg^T + bg) * (x @ Wu^T + bu)`` in one GEMM kernel.

Each output tile ``[BLOCK_M, BLOCK_N]`` of ``[M, intermediate]`` keeps two fp32 accumulators, gate and
up, fed from the *same* x tile at every k-step (two ``tl.dot`` per step, one x load), and applies
``act(gate) * up`` in the epilogue. Only the gated ``[M, intermediate]`` result is written: the two
``[M, intermediate]`` projections of the unfused form never reach memory.

Layers:

1. ``_gated_mlp_kernel``: a persistent, grouped-order GEMM. On Hopper it reads tiles through TMA
   tensor descriptors and Triton lowers the dots to wgmma; elsewhere (or when a stride is not 16-byte
   aligned) it uses masked pointer loads, so every size is legal. ``FP8=True`` takes e4m3 x with a
   per-row scale and e4m3 weights with per-output-channel scales, applied in the epilogue.
2. Launcher: validation, flattening, :func:`pick_config` (a pure function of the problem whose
   candidate list is also what :func:`compile_specs` builds), launch.
3. ``torch.library`` custom ops ``triton_ops::fused_gated_mlp`` (+ ``_out`` and ``_fp8`` variants) with
   fake implementations, so the op traces under ``torch.compile(fullgraph=True)``.
4. :func:`fused_gated_mlp` and :class:`FusedGatedMLP`.

Small M (decode) is bound by reading the weights (2 * I * H elements): the heuristics then use one
tile per program, narrow N tiles so there are at least ~2 tiles per SM, small M tiles and deep enough
pipelines that each SM keeps ~100 KB of weight loads in flight.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Optional

import torch
import triton
import triton.language as tl

from ..autotuner import runtime
from ..compile_check import CompileSpec
from ..exceptions import InvalidArgumentError, LayoutError, ShapeError, UnsupportedError
from ..launch import KernelLaunch, PlanCache, mark_written, plan_key, tensor_descriptor, tensor_key
from ..utils import (
    KeepBufferDtypes,
    cdiv,
    device_arch,
    device_capability,
    interpreter_enabled,
    next_power_of_2,
    num_sms,
)
from ..validation import (
    FLOAT_DTYPES,
    check_choice,
    check_dtype,
    check_float_dtype_or_none,
    check_int,
    check_last_dim_contiguous,
    check_module_device,
    check_ndim,
    check_no_overlap,
    check_out,
    check_out_dtype,
    check_runnable_device,
    check_same_device,
    check_same_dtype,
    check_tensor,
    out_apart,
    rows_view,
)
from . import fp8_out as F8
from ._tiles import grouped_tile_coords
from .fp8_linear import quantize_weight
from .fp8_out import _fp8_codes
from .fp8_quantize import (
    FP8_MAX,
    _finite_abs,
    _mark_valid,
    _scale_from_amax,
    check_scale_values,
    fp8_dot_nan,
    rows_step,
)
from .rmsnorm import Disjoint, _rounded

#: Activation names and the constexpr id the kernel switches on.
ACTIVATIONS = {"silu": 0, "gelu": 1, "gelu_tanh": 2}
#: Hugging Face's ``config.hidden_act`` names for the same functions (transformers' ACT2FN): ``swish`` is
#: SiLU; ``gelu_pytorch_tanh`` is ``F.gelu(approximate="tanh")``; ``gelu_new`` is the same tanh formula
#: written out (0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))).
ACTIVATION_ALIASES = {"swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def canonical_activation(name: str) -> str:
    """Our name for an activation given by our name or by a Hugging Face alias (unknown names unchanged)."""
    return ACTIVATION_ALIASES.get(name, name)

_TORCH_TO_TL = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.float8_e4m3fn: "fp8e4nv",
}


# ----------------------------------------------------------------------------------------------------
# 1. Kernel
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _activation(g, ACTIVATION: tl.constexpr):
    """act(g) in fp32. 0: silu, 1: exact (erf) gelu, 2: tanh gelu."""
    if ACTIVATION == 0:
        return g * tl.sigmoid(g)
    elif ACTIVATION == 1:
        return 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476))
    else:
        # 0.5 * g * (1 + tanh(u)) == g * sigmoid(2u): one exp instead of a tanh, no cancellation.
        u = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        return g * tl.sigmoid(2.0 * u)


@triton.jit
def _load_tiles(x, wg, wu, off_m, off_n, k0, M, N, K, stride_xm, stride_wgn, stride_wun,
                USE_TMA: tl.constexpr, ALIGN_IN: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, W_MN: tl.constexpr):
    """The x tile [BLOCK_M, BLOCK_K] and the gate/up weight tiles [BLOCK_N, BLOCK_K] at k0.

    TMA zero-fills out-of-bounds boxes; the pointer path masks rows, columns and the K tail to 0, so the
    padded products add nothing to the accumulators. W_MN: both weights are MN-major (a transposed view
    ``w = G.T``, strides ``(1, s)``; ``stride_wgn`` / ``stride_wun`` are then the K strides), read in place
    by the pointer path; the launcher gives them neither TMA nor ALIGN_IN (their K runs are not contiguous).
    """
    if USE_TMA:
        a = x.load([off_m, k0])
        bg = wg.load([off_n, k0])
        bu = wu.load([off_n, k0])
    else:
        offs_m = off_m + tl.arange(0, BLOCK_M)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        k_rem = K - k0
        # Row offsets in int64: row * stride passes 2^31 for weights of 2^31 elements (e.g. I*H > 2.1e9).
        row_x = offs_m.to(tl.int64) * stride_xm
        row_g = offs_n.to(tl.int64) * stride_wgn
        row_u = offs_n.to(tl.int64) * stride_wun
        if ALIGN_IN > 1:
            # The launcher checked that base pointers, row strides and K are 16-byte multiples. Stating it
            # here lets the loads become 16-byte cp.async copies that Triton pipelines; argument
            # specialisation tells the JIT the same at run time, but an ahead-of-time build (the compile
            # check) sees no argument values and would otherwise get 2-byte, unpipelined loads.
            k_rem = tl.multiple_of(k_rem, ALIGN_IN)
            row_x = tl.multiple_of(row_x, ALIGN_IN)
            row_g = tl.multiple_of(row_g, ALIGN_IN)
            row_u = tl.multiple_of(row_u, ALIGN_IN)
        cols = k0 + offs_k
        px = x + row_x[:, None] + cols[None, :]
        if W_MN:
            pg = wg + offs_n[:, None] + (cols.to(tl.int64) * stride_wgn)[None, :]
            pu = wu + offs_n[:, None] + (cols.to(tl.int64) * stride_wun)[None, :]
        else:
            pg = wg + row_g[:, None] + cols[None, :]
            pu = wu + row_u[:, None] + cols[None, :]
        if ALIGN_IN > 1:
            px = tl.max_contiguous(tl.multiple_of(px, [16, 16]), [1, BLOCK_K])
            pg = tl.max_contiguous(tl.multiple_of(pg, [16, 16]), [1, BLOCK_K])
            pu = tl.max_contiguous(tl.multiple_of(pu, [16, 16]), [1, BLOCK_K])
        k_ok = offs_k < k_rem
        a = tl.load(px, mask=(offs_m < M)[:, None] & k_ok[None, :], other=0.0)
        w_mask = (offs_n < N)[:, None] & k_ok[None, :]
        bg = tl.load(pg, mask=w_mask, other=0.0)
        bu = tl.load(pu, mask=w_mask, other=0.0)
    return a, bg, bu


@triton.jit
def _epilogue(acc_g, acc_u, out, bg_ptr, bu_ptr, xs_ptr, wgs_ptr, wus_ptr, qs_ptr, off_m, off_n, M, N, stride_om,
              stride_qsm,
              ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, FP8: tl.constexpr, USE_TMA: tl.constexpr,
              ALIGN_OUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EXACT_BF16: tl.constexpr,
              OUT_QUANT: tl.constexpr, OUT_BYTES: tl.constexpr):
    """Scales (FP8), bias, act(gate) * up in fp32, one store of the gated tile. EXACT_BF16 (a bf16 output
    under the CPU interpreter, which truncates fp32 -> bf16 casts): round to nearest even first, as the
    GPU's conversion does.

    OUT_QUANT: e4m3 codes of the fp32 tile instead (fp8_out): 1 under the static scale at ``qs_ptr``; 3
    under (1, 128)-block scales, written to ``qs_ptr [M, ceil(N / 128)]`` (``stride_qsm`` per row): the
    tile is BLOCK_N = 128 wide, so each of its rows is one block; 4 the same codes with each block's raw
    ``amax / 448`` written instead (no all-zero fallback), for the per-row step of a per-token output
    (fp8_out._rows_rescale_kernel). OUT_BYTES: the codes as integer-encoded bytes (sm_80)."""
    offs_m = off_m + tl.arange(0, BLOCK_M)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    if FP8:
        sx = tl.load(xs_ptr + offs_m, mask=m_ok, other=0.0)
        sg = tl.load(wgs_ptr + offs_n, mask=n_ok, other=0.0)
        su = tl.load(wus_ptr + offs_n, mask=n_ok, other=0.0)
        acc_g = acc_g * sx[:, None] * sg[None, :]
        acc_u = acc_u * sx[:, None] * su[None, :]
    if HAS_BIAS:
        acc_g += tl.load(bg_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        acc_u += tl.load(bu_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    h = _activation(acc_g, ACTIVATION) * acc_u
    if OUT_QUANT == 1:
        h = _fp8_codes(h, tl.math.div_rn(1.0, tl.load(qs_ptr)), OUT_BYTES)
    elif OUT_QUANT > 1:
        # columns past N hold exact zeros (masked or zero-filled weights, scales and bias): no mask needed
        amax = tl.max(_finite_abs(h), axis=1)
        s = _scale_from_amax(amax, 448.0)
        h = _fp8_codes(h, tl.math.div_rn(tl.full([BLOCK_M], 1.0, tl.float32), s)[:, None], OUT_BYTES)
        if OUT_QUANT == 4:
            s = tl.math.div_rn(amax, 448.0)
        tl.store(qs_ptr + offs_m.to(tl.int64) * stride_qsm + off_n // 128, s, mask=m_ok)
    elif EXACT_BF16:
        h = _rounded(h, tl.bfloat16, True)
    if USE_TMA:
        out.store([off_m, off_n], h.to(out.dtype))
    else:
        row_o = offs_m.to(tl.int64) * stride_om
        n_rem = N - off_n
        if ALIGN_OUT > 1:
            row_o = tl.multiple_of(row_o, ALIGN_OUT)
            n_rem = tl.multiple_of(n_rem, ALIGN_OUT)
        ptrs = out + row_o[:, None] + offs_n[None, :]
        if ALIGN_OUT > 1:
            ptrs = tl.max_contiguous(tl.multiple_of(ptrs, [16, 16]), [1, BLOCK_N])
        n_ok_v = tl.arange(0, BLOCK_N) < n_rem
        tl.store(ptrs, h.to(out.dtype.element_ty), mask=m_ok[:, None] & n_ok_v[None, :])


@triton.jit
def _gated_mlp_kernel(
    x, wg, wu, out,  # pointers, or TMA tensor descriptors when USE_TMA
    bg_ptr, bu_ptr,  # biases [N] (unused unless HAS_BIAS)
    xs_ptr, wgs_ptr, wus_ptr,  # FP8 scales: x per row [M], weights per output channel [N] (unless FP8)
    qs_ptr,  # FP8 output scales (OUT_QUANT; None otherwise)
    M, N, K,
    stride_xm, stride_wgn, stride_wun, stride_om, stride_qsm,
    num_progs,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, FP8: tl.constexpr, USE_TMA: tl.constexpr,
    DOT_PRECISION: tl.constexpr, FLATTEN: tl.constexpr, ALIGN_IN: tl.constexpr, ALIGN_OUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    W_MN: tl.constexpr, EXACT_BF16: tl.constexpr, OUT_QUANT: tl.constexpr, OUT_BYTES: tl.constexpr,
):
    """W_MN: MN-major weights (see ``_load_tiles``). EXACT_BF16: only under Triton's CPU interpreter, where
    bf16 ``tl.dot`` is wrong (off by ~1e10) and fp32 -> bf16 casts truncate: bf16 operands are multiplied
    as fp32 (exact products, fp32 sums as on the GPU's tensor cores) and a bf16 output is rounded to
    nearest even. Off on the GPU, whose code is unchanged by it."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    k_tiles = tl.cdiv(K, BLOCK_K)
    # Persistent loop: with num_progs == number of tiles every program runs one tile (decode); with
    # num_progs == number of SMs each program walks tiles in grouped order. FLATTEN lets Triton
    # pipeline across tile boundaries, so the next tile's loads overlap this tile's epilogue.
    for tile_id in tl.range(pid, num_tiles, num_progs, flatten=FLATTEN):
        pid_m, pid_n = grouped_tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            a, bg, bu = _load_tiles(x, wg, wu, off_m, off_n, ki * BLOCK_K, M, N, K, stride_xm, stride_wgn,
                                    stride_wun, USE_TMA, ALIGN_IN, BLOCK_M, BLOCK_N, BLOCK_K, W_MN)
            if EXACT_BF16:
                if a.dtype == tl.bfloat16:
                    a, bg, bu = a.to(tl.float32), bg.to(tl.float32), bu.to(tl.float32)
            acc_g = fp8_dot_nan(tl.dot(a, bg.T, acc_g, input_precision=DOT_PRECISION), a, bg.T)
            acc_u = fp8_dot_nan(tl.dot(a, bu.T, acc_u, input_precision=DOT_PRECISION), a, bu.T)
        _epilogue(acc_g, acc_u, out, bg_ptr, bu_ptr, xs_ptr, wgs_ptr, wus_ptr, qs_ptr, off_m, off_n, M, N, stride_om,
                  stride_qsm, ACTIVATION, HAS_BIAS, FP8, USE_TMA, ALIGN_OUT, BLOCK_M, BLOCK_N, EXACT_BF16,
                  OUT_QUANT, OUT_BYTES)


# ----------------------------------------------------------------------------------------------------
# 2. Configs and launcher
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatedMLPConfig:
    """One launch configuration. ``block_n`` is the width of *each* of the gate/up accumulators."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    #: True: grid = min(#SMs, #tiles) programs looping over tiles; False: one tile per program.
    persistent: bool = False
    #: TMA tensor descriptors (Hopper); the launcher falls back to pointers when strides forbid it.
    use_tma: bool = False
    #: flatten the tile loop into the k loop for cross-tile pipelining (persistent configs only).
    flatten: bool = False

    def label(self) -> str:
        tag = "tma" if self.use_tma else "ptr"
        p = "P" if self.persistent else "G"
        f = "F" if self.flatten else ""
        return (f"{self.block_m}x{self.block_n}x{self.block_k}_g{self.group_m}_w{self.num_warps}"
                f"_s{self.num_stages}_{p}{f}_{tag}")

    @classmethod
    def from_label(cls, label: str) -> GatedMLPConfig:
        """Inverse of :meth:`label` (``"128x128x64_g8_w8_s3_P_tma"``); the tuning cache stores labels."""
        m = _LABEL_RE.fullmatch(label) if isinstance(label, str) else None
        if m is None:
            raise InvalidArgumentError(f"{label!r} is not a gated MLP config label like "
                                       f"'128x128x64_g8_w8_s3_P_tma'")
        bm, bn, bk, g, w, st = (int(m.group(i)) for i in range(1, 7))
        if any(v & (v - 1) for v in (bm, bn, bk)) or min(bm, bn, bk) < 16 or not (1 <= w <= 16) or st < 1:
            raise InvalidArgumentError(f"{label!r}: tiles must be powers of two >= 16, 1-16 warps, >= 1 stage")
        return cls(bm, bn, bk, group_m=g, num_warps=w, num_stages=st, persistent=m.group(7) == "P",
                   use_tma=m.group(9) == "tma", flatten=m.group(8) == "F")


_LABEL_RE = re.compile(r"(\d+)x(\d+)x(\d+)_g(\d+)_w(\d+)_s(\d+)_(P|G)(F?)_(tma|ptr)")


def _arch_family(arch: int | None) -> int:
    """Map a compute capability (major*10+minor) to the family the heuristics are written for.

    None (CPU interpreter) uses the Hopper family so the default interpreter runs exercise the TMA and
    persistent code. sm_86/87/89 have ~99 KB of shared memory per block (vs 163 KB on sm_80, 227 KB on
    sm_90), hence their own family.
    """
    if arch is None or arch >= 90:
        return 90
    if arch in (86, 87, 89) or arch < 80:
        return 89
    return 80


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "fp32"
    if dtype == torch.float8_e4m3fn:
        return "fp8"
    return "fp16"  # fp16 and bf16 share tile shapes: same element size, same MMA rates


def _decode_configs(family: int, kind: str) -> list[GatedMLPConfig]:
    """Small-M configs: BLOCK_M in {16, 32, 64} x BLOCK_N in {64, 32}.

    Shared memory per stage is (BLOCK_M + 2 * BLOCK_N) * BLOCK_K * elem bytes. Hopper: BLOCK_K = 128
    (fp16) / 256 (fp8) with 3 stages for BLOCK_M <= 32 (ptxas: 74 KB at 16x64, so three CTAs share an
    SM's 228 KB and keep ~6 weight tiles of 16 KB in flight per SM); BLOCK_M=64 uses BLOCK_K=64/128 with
    4 stages (104 KB, two CTAs per SM). sm_80/89: BLOCK_K = 64 (fp16) / 128 (fp8), 3 stages (<= 72 KB,
    fits sm_89's 99 KB).
    """
    tma = family == 90
    out = []
    for bm in (16, 32, 64):
        for bn in (64, 32):
            if family == 90:
                bk = 128 if bm < 64 else 64
                stages = 3 if bm < 64 else 4
            else:
                bk, stages = 64, 3
            if kind == "fp8":
                bk *= 2
            # GROUP_M is irrelevant with one row of tiles; 8 keeps these identical to the mid config on
            # sm_80/89 where the shapes coincide (group 1 also measured 8 bytes of ptxas spills there).
            out.append(GatedMLPConfig(bm, bn, bk, group_m=8, num_warps=4, num_stages=stages, use_tma=tma))
    return out


def _mid_config(family: int, kind: str) -> GatedMLPConfig:
    """64 < M <= 256: still bound by the weight read (arithmetic intensity ~M flop/byte < the ~295 of an
    H100). BLOCK_N=64 doubles the tile count over 128 (224 tiles for I=14336 at M=128, > 132 SMs);
    Hopper: 128x64 tiles, 3 stages of 32 KB plus the TMA store buffer (ptxas: 112 KB), so two CTAs
    share an SM."""
    bk = 128 if kind == "fp8" else 64
    if family == 90:
        return GatedMLPConfig(128, 64, bk, group_m=8, num_warps=4, num_stages=3, use_tma=True)
    return GatedMLPConfig(64, 64, bk, group_m=8, num_warps=4, num_stages=3)


def _wide_mid_config(family: int, kind: str) -> GatedMLPConfig | None:
    """Hopper fp16/bf16, 64 < M <= 128 with >= 0.8 x #SMs tiles of 128 x (2 x 128): one 128-row tile covers
    all of M, so every CTA reads x (1 MB at H=4096) once per 2 x 128 weight rows instead of per 2 x 64 rows,
    halving the L2 traffic that rivals the weight bytes at this M. 8 warps, 4 stages of 48 KB plus the
    32 KB store tile (ptxas: 224 KB, one CTA per SM). H200, M=128 H=4096 I=14336 bf16 (112 tiles):
    0.0671 ms = 86% of copy vs 0.0689 ms (84%) for the 128 x (2 x 64) mid config."""
    if family != 90 or kind != "fp16":
        return None
    return GatedMLPConfig(128, 128, 64, group_m=8, num_warps=8, num_stages=4, use_tma=True)


def _large_configs(family: int, kind: str) -> list[GatedMLPConfig]:
    """Compute-bound M > 256. Hopper: 128 x (2 x 128) outputs per tile, i.e. the 128x256 wgmma tile of a
    plain GEMM, 8 warps (two warpgroups, 128 fp32 accumulator registers per thread), 3 stages of 48 KB
    (fp16 with BLOCK_K=64, or fp8 with BLOCK_K=128) plus the 32 KB TMA store tile (ptxas: 176 KB),
    persistent over the SMs with the nested tile/k loops. H200, M=16384 H=4096 I=14336 bf16: 5.82 ms
    nested vs 6.90 ms with the tile loop flattened into the k loop (FLATTEN) and 6.08 ms with one tile
    per program; the flattened loop stays a kernel option and a sweep candidate only."""
    if family == 90:
        # GROUP_M 16: the 132 tiles in flight span G row-tiles of x (1 MB each at H=4096 fp16) and 132/G
        # column-tiles of the weights (2 MB each), G + 264/G MB of L2 working set, least at G = 16 (33 MB
        # vs 41 MB at G = 8, of a 50 MB L2; FP8 halves both terms, same optimum). H200: 4.77 vs 4.85 ms
        # (I=11264 fp16), 5.79 vs 5.82 ms (I=14336 bf16), 3.28 vs 3.39 ms (FP8) over G = 8.
        bk = 128 if kind == "fp8" else 64
        return [GatedMLPConfig(128, 128, bk, group_m=16, num_warps=8, num_stages=3, persistent=True,
                               use_tma=True)]
    # sm_80/89 (mma.sync, operands staged through registers): 128 x (2 x 128) tiles on 8 warps spill
    # 256+ bytes in ptxas (two 128x128 fp32 accumulators plus operand fragments), 128 x (2 x 64) on 4
    # warps does not. fp16: 4 stages x (128 + 128) x 32 x 2 B = 64 KB (fits sm_89's 99 KB); fp8: 8 warps,
    # BLOCK_K=128, 3 stages (ptxas: 64 KB of shared memory, no spills; 4 warps spill 8 bytes).
    if kind == "fp8":
        return [GatedMLPConfig(128, 64, 128, group_m=8, num_warps=8, num_stages=3, persistent=True)]
    return [GatedMLPConfig(128, 64, 32, group_m=8, num_warps=4, num_stages=4, persistent=True)]


def sweep_configs(arch: int | None, dtype: torch.dtype) -> list[GatedMLPConfig]:
    """Neighbours of the Hopper prefill default that only a measurement can rank: the benchmark sweep times
    them and ``triton-ops tune`` searches them (with :func:`candidate_configs`); the compile check builds
    them. GROUP_M 8 (the previous default) and 32 (L2 working set 40 MB vs 33 MB at 16: predicted slower);
    FP8: one tile per program with 4 stages (4 x 48 KB + 32 KB = 224 KB; for fp16/bf16 the wide mid
    candidate is that tile already). Dropped after two H200 runs
    (all slower than the default at both prefill shapes and FP8): 4 stages persistent (+15%), BLOCK_K x2
    with 2 stages (+33%), GROUP_M 4 (+4%), the flattened tile loop (+17%); at M=128 the 128 x (2 x 64)
    tile on 8 warps or persistent (+3%, +32%).
    """
    family, kind = _arch_family(arch), _kind(dtype)
    if family != 90 or kind not in ("fp16", "fp8"):
        return []
    big = _large_configs(90, kind)[0]
    out = [replace(big, group_m=8), replace(big, group_m=32)]
    if kind == "fp8":
        out.append(replace(big, persistent=False, num_stages=4))
    return out


#: fp32 inputs use exact fp32 dots (``input_precision="ieee"``, FMA, not tensor cores): small tiles keep
#: the two accumulators plus operands in registers (64x64 spills ~240 bytes with unaligned operands).
_FP32_CONFIG = GatedMLPConfig(64, 32, 32, group_m=8, num_warps=4, num_stages=2)


def _unaligned_config(kind: str) -> GatedMLPConfig:
    """Operands whose rows are not 16-byte aligned (odd hidden or intermediate sizes, odd strides) load
    element by element with no cp.async pipelining, so the operand tiles live in registers: a small
    64 x (2 x 32) tile keeps the two accumulators plus operands within 255 registers without spills."""
    return GatedMLPConfig(64, 32, 64 if kind == "fp8" else 32, group_m=8, num_warps=4, num_stages=2)


def candidate_configs(arch: int | None, dtype: torch.dtype) -> list[GatedMLPConfig]:
    """Every config :func:`pick_config` can return for this architecture and dtype (aligned operands;
    :func:`_unaligned_config` covers the rest)."""
    family, kind = _arch_family(arch), _kind(dtype)
    if kind == "fp32":
        return [_FP32_CONFIG]
    wide = _wide_mid_config(family, kind)
    mids = [_mid_config(family, kind)] + ([wide] if wide is not None else [])
    return [*_decode_configs(family, kind), *mids, *_large_configs(family, kind)]


def block_out_config(cfg: GatedMLPConfig, arch: int | None, dtype: torch.dtype,
                     aligned: bool = True) -> GatedMLPConfig:
    """The config of an FP8 output: ``cfg`` (pick_config's choice) made 128 columns wide, so that each output
    tile's rows are whole (1, 128) scale blocks and a block's amax is one row reduction in the epilogue
    (a 64-wide tile would hold half a block, whose other half another program computes). Static scales
    take the same tiles (with 64-wide ones the e4m3 store turned the sm_80/89 x loads into 2-byte
    cp.async copies, which Triton refuses). Pure; 128-wide configs are kept as they are.

    * Hopper, 128-row tiles: 8 warps (two 128 x 128 fp32 accumulators take 128 registers a thread), the
      stages as they were: 3 x 48 KB (+ a 16 KB e4m3 store tile) fits 227 KB.
    * Hopper decode tiles (<= 64 rows): the same BLOCK_K and stages, 8 warps (4 spilled 16-84 B at 16 and
      64 rows in the compile check): 3 stages of (16 + 256) x 128 x 2 B = 70 KB.
    * sm_80/89 (99 KB of shared memory on sm_86/89): at most 64 rows, BLOCK_K halved (>= 32 fp16, 64 e4m3)
      so the stages of (64 + 256) x BLOCK_K fit, 8 warps at 64 rows.
    * operands not 16-byte aligned (staged through registers): 32 x 128 x 32 on 8 warps (4 warps spilled
      120-290 B, and 16 x 128 x 64 with e4m3 operands 10-12 KB, on sm_89/90); aligned fp32 (exact fp32
      dots): 16 x 128 on 4 warps (32 x 128 on 8 spilled 48 B on sm_89).

    Fewer, wider N tiles: at decode (M <= 64) I = 14336 gives 112 tiles instead of 224, fewer than an
    H200's 132 SMs (each then streams ~18% more weight bytes; to be measured).
    """
    kind = _kind(dtype)
    if not aligned:
        return GatedMLPConfig(32, 128, 32, group_m=8, num_warps=8, num_stages=2)
    if kind == "fp32":
        return GatedMLPConfig(16, 128, 32, group_m=8, num_warps=4, num_stages=2)
    if cfg.block_n == 128:
        return cfg
    family = _arch_family(arch)
    if family == 90:
        return replace(cfg, block_n=128, num_warps=8)
    bm = min(cfg.block_m, 64)
    floor = 64 if kind == "fp8" else 32
    return replace(cfg, block_m=bm, block_n=128, block_k=max(floor, cfg.block_k // 2),
                   num_warps=8 if bm == 64 else 4)


def pick_config(M: int, N: int, K: int, dtype: torch.dtype, arch: int | None,
                sms: int = 132, aligned: bool = True) -> GatedMLPConfig:
    """Launch configuration for ``[M, K] x [N, K]^T`` (N = intermediate). Pure: no device queries.

    ``aligned``: every operand's base address, row stride and row length are 16-byte multiples (the
    launcher checks it); otherwise the small unaligned config.

    * fp32: one exact-fp32 config.
    * M <= 64 (decode): BLOCK_M = the next power of two >= M (min 16, the smallest MMA M), BLOCK_N = 64
      unless that leaves fewer tiles than SMs (then 32), one tile per program.
    * M <= 256: the weight-bound mid config, one tile per program; on Hopper (fp16/bf16) with M <= 128
      and at least 0.8 x #SMs tiles of 128 x (2 x 128), the wide mid config.
    * else: the persistent large-tile config.
    """
    family, kind = _arch_family(arch), _kind(dtype)
    if kind == "fp32":
        return _FP32_CONFIG
    if not aligned:
        return _unaligned_config(kind)
    if M <= 64:
        bm = max(16, next_power_of_2(M))
        bn = 64 if cdiv(N, 64) >= sms else 32
        for c in _decode_configs(family, kind):
            if c.block_m == bm and c.block_n == bn:
                return c
    if M <= 256:
        wide = _wide_mid_config(family, kind)
        if wide is not None and M <= wide.block_m and cdiv(N, wide.block_n) * 5 >= sms * 4:
            return wide
        return _mid_config(family, kind)
    return _large_configs(family, kind)[0]


#: kernel_type of the tuning cache (fp16/bf16 share tile configs; the problem key is (M, hidden, inter)).
TUNING_KERNEL_TYPE = "gated_mlp"


def _tuned_config(default: GatedMLPConfig, M: int, N: int, K: int, device: torch.device) -> GatedMLPConfig:
    """The config stored by ``triton-ops tune`` for this problem when tuned configs are switched on
    (:func:`triton_ops.autotuner.runtime.use_tuned_configs`), else ``default``. An entry whose label is not
    a config this kernel can launch (a hand-edited or foreign cache) is ignored with one warning
    (runtime.resolve's allowed= rule) rather than failing the call."""
    if not runtime.tuned_configs_enabled():
        return default
    got = runtime.resolve(TUNING_KERNEL_TYPE, (M, K, N), device, {"config": default.label()},
                          allowed={"config": gated_mlp_config_label})["config"]
    return default if got == default.label() else GatedMLPConfig.from_label(got)


def gated_mlp_config_label(label: object) -> bool:
    """Whether ``label`` names a launchable config (:meth:`GatedMLPConfig.from_label`: a label string,
    power-of-two tiles >= 16, 1-16 warps, >= 1 stage): the rule tuned entries are checked against."""
    try:
        GatedMLPConfig.from_label(label)
    except InvalidArgumentError:
        return False
    return True


def _aligned16(*tensors: torch.Tensor) -> bool:
    """16-byte aligned base addresses, row strides and row lengths, unit last stride (2-D tensors).

    TMA descriptors require it, and it is what lets the pointer path use 16-byte vector loads."""
    for t in tensors:
        es = t.element_size()
        if (t.data_ptr() % 16 or t.stride(-1) != 1 or (t.stride(0) * es) % 16
                or (t.shape[1] * es) % 16):
            return False
    return True


class _Plan:
    """One validated launch on 2-D operands, fixed by the call's signature (see triton_ops/launch.py):
    the config, grid, strides and, on Hopper, the TMA descriptor shapes. Holds no tensors."""

    __slots__ = ("launch", "ints", "descs", "out_shape", "out_dtype", "fp8", "has_bias", "cacheable", "tests")

    def __init__(self, launch, ints, descs, out_shape, out_dtype, fp8, has_bias, cacheable=True):
        self.launch, self.ints, self.descs = launch, ints, descs
        self.out_shape, self.out_dtype, self.fp8, self.has_bias = out_shape, out_dtype, fp8, has_bias
        self.cacheable = cacheable
        # (argument index, rmsnorm.Disjoint) per input a given `out` must stay apart from: they depend on
        # the addresses, which the plan key does not hold, so the eager fast path repeats them per call
        self.tests = ()

    def __call__(self, x, wg, wu, bg=None, bu=None, out=None, xs=None, wgs=None, wus=None):
        """Launch on tensors at the planned addresses (x: the input or its 2-D row view; out: a given
        buffer or None to allocate one). Returns the output."""
        y = out if out is not None else x.new_empty(self.out_shape, dtype=self.out_dtype)
        if self.descs is not None:
            (xsh, xst, xb), (wsh, wgst, wust, wb), (osh, ost, ob) = self.descs
            xa, wga = tensor_descriptor(x, xsh, xst, xb), tensor_descriptor(wg, wsh, wgst, wb)
            wua, oa = tensor_descriptor(wu, wsh, wust, wb), tensor_descriptor(y, osh, ost, ob)
        else:
            xa, wga, wua, oa = x, wg, wu, y
        dummy = y  # never read: the constexpr switches compile those loads away
        self.launch(xa, wga, wua, oa, bg if self.has_bias else dummy, bu if self.has_bias else dummy,
                    xs if self.fp8 else dummy, wgs if self.fp8 else dummy, wus if self.fp8 else dummy,
                    None, *self.ints)
        if out is not None:
            mark_written(out)
        return y


def _make_plan(x2: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, out2: torch.Tensor | None,
               out_shape: tuple[int, ...], out_dtype: torch.dtype, act_id: int, has_bias: bool, fp8: bool,
               config: GatedMLPConfig | None = None, out_quant: int = 0) -> _Plan:
    """Plan the kernel on validated 2-D operands: x2 [M, K], wg/wu [N, K], out2 [M, N] (None: a
    contiguous output of ``out_shape`` allocated per call); M, N, K > 0. ``out_quant``: the epilogue's
    OUT_QUANT (e4m3 output, ``out_dtype`` float8_e4m3fn, ``out2`` None): a :class:`_FP8KernelPlan`."""
    M, K = x2.shape
    N = wg.shape[0]
    arch, sms = device_arch(x2.device), num_sms(x2.device)
    w_mn = _mn_major(wg)  # both weights share a layout (_same_layout)
    in_aligned = _aligned16(x2, wg, wu)  # False for MN-major weights: no TMA, no 16-byte vector hints
    out_es = torch.empty((), dtype=out_dtype).element_size()
    o_stride = out2.stride(0) if out2 is not None else N
    out_aligned = _aligned_out(out2, N, out_es)
    cfg = config
    if cfg is None:
        aligned = in_aligned and out_aligned
        cfg = pick_config(M, N, K, x2.dtype, arch, sms, aligned=aligned)
        # tuned configs were measured with activation-dtype outputs: FP8 outputs keep the heuristic's
        if aligned and _kind(x2.dtype) == "fp16" and not out_quant:
            cfg = _tuned_config(cfg, M, N, K, x2.device)
        if out_quant:
            cfg = block_out_config(cfg, arch, x2.dtype, aligned)
    if out_quant > 1 and cfg.block_n != 128:
        raise InvalidArgumentError(f"config {cfg.label()}: FP8 outputs with block or per-token scales need "
                                   "BLOCK_N = 128 (one scale block per tile row)")
    out_bytes = out_quant > 0 and F8.store_bytes(x2.device)
    # (sm_80, where codes are stored as bytes, has no TMA; the interpreter's Hopper family does)
    use_tma = cfg.use_tma and in_aligned and out_aligned and not out_bytes
    descs = None
    if use_tma:
        bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
        descs = (([M, K], [x2.stride(0), 1], [bm, bk]),
                 ([N, K], [wg.stride(0), 1], [wu.stride(0), 1], [bn, bk]),
                 ([M, N], [o_stride, 1], [bm, bn]))
    num_tiles = cdiv(M, cfg.block_m) * cdiv(N, cfg.block_n)
    grid_size = min(num_tiles, sms) if cfg.persistent else num_tiles
    launch = KernelLaunch(
        _gated_mlp_kernel, (grid_size,),
        dict(ACTIVATION=act_id, HAS_BIAS=has_bias, FP8=fp8, USE_TMA=use_tma,
             DOT_PRECISION="ieee" if x2.dtype == torch.float32 else "tf32",
             FLATTEN=cfg.flatten and cfg.persistent,
             ALIGN_IN=16 // x2.element_size() if in_aligned else 1,
             ALIGN_OUT=16 // out_es if out_aligned else 1,
             BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
             W_MN=w_mn,
             # (an FP8 output of bf16 operands needs only the exact products: its epilogue does not round)
             EXACT_BF16=interpreter_enabled() and (out_dtype == torch.bfloat16 or (
                 out_quant > 0 and x2.dtype == torch.bfloat16)),
             OUT_QUANT=out_quant, OUT_BYTES=out_bytes),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    # MN-major weights pass their K strides (the kernel reads element (n, k) at n + k * stride)
    w_strides = (wg.stride(1), wu.stride(1)) if w_mn else (wg.stride(0), wu.stride(0))
    stride_qsm = cdiv(N, F8.GROUP) if out_quant > 1 else 0  # [M, ceil(N / 128)] block scales
    ints = (M, N, K, x2.stride(0), *w_strides, o_stride, stride_qsm, grid_size)
    if out_quant:
        return _FP8KernelPlan(launch, ints, descs, out_shape, out_dtype, fp8, has_bias, out_bytes=out_bytes)
    return _Plan(launch, ints, descs, out_shape, out_dtype, fp8, has_bias)


class _FP8KernelPlan(_Plan):
    """The kernel writing e4m3 codes (OUT_QUANT > 0): ``qs`` is the output scales' pointer (the static scale,
    or the block scales it writes); on sm_80 the codes go through a uint8 view (OUT_BYTES)."""

    __slots__ = ("out_bytes",)

    def __init__(self, *args, out_bytes: bool = False):
        super().__init__(*args)
        self.out_bytes = out_bytes

    def __call__(self, x, wg, wu, bg=None, bu=None, out=None, xs=None, wgs=None, wus=None, qs=None):
        """Launch on tensors at the planned addresses; returns the new e4m3 ``[..., N]`` codes."""
        y = x.new_empty(self.out_shape, dtype=self.out_dtype)
        if self.descs is not None:
            (xsh, xst, xb), (wsh, wgst, wust, wb), (osh, ost, ob) = self.descs
            xa, wga = tensor_descriptor(x, xsh, xst, xb), tensor_descriptor(wg, wsh, wgst, wb)
            wua, oa = tensor_descriptor(wu, wsh, wust, wb), tensor_descriptor(y, osh, ost, ob)
        else:
            xa, wga, wua, oa = x, wg, wu, (y.view(torch.uint8) if self.out_bytes else y)
        self.launch(xa, wga, wua, oa, bg if self.has_bias else None, bu if self.has_bias else None,
                    xs if self.fp8 else None, wgs if self.fp8 else None, wus if self.fp8 else None, qs, *self.ints)
        return y


def _mn_major(w: torch.Tensor) -> bool:
    """``w [N, K]`` is a transposed view (K not contiguous, N is): ``G.T`` of a contiguous ``[K, N]``."""
    return w.shape[1] > 1 and w.stride(1) != 1 and (w.shape[0] == 1 or w.stride(0) == 1)


def _same_layout(wg: torch.Tensor, wu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights in one layout, as the kernel reads both alike: a K-major / MN-major mix gets a K-major
    copy of the MN-major one (per call: pass both weights in one layout to avoid it)."""
    g, u = _mn_major(wg), _mn_major(wu)
    if g == u:
        return wg, wu
    return (wg.contiguous(), wu) if g else (wg, wu.contiguous())


def _aligned_out(out2: torch.Tensor | None, N: int, es: int) -> bool:
    """The output's base, row stride and row length are 16-byte multiples (a fresh allocation's base is)."""
    if out2 is None:
        return (N * es) % 16 == 0
    return _aligned16(out2)


def _launch(x2: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, out2: torch.Tensor, act_id: int,
            bg: torch.Tensor | None = None, bu: torch.Tensor | None = None,
            x_scale: torch.Tensor | None = None, wg_scale: torch.Tensor | None = None,
            wu_scale: torch.Tensor | None = None, config: GatedMLPConfig | None = None) -> None:
    """Launch on validated 2-D operands: x2 [M, K], wg/wu [N, K], out2 [M, N], through a plan kept per
    signature (the custom ops' path: torch.compile graphs and autograd call the op through it)."""
    key = None
    if config is None:  # explicit configs (tuning runs) are never cached
        key = (tensor_key(x2, wg, wu, out2, bg, bu, x_scale, wg_scale, wu_scale), act_id, runtime.ENABLED)
    plan = _op_plans.get(key) if key is not None else None
    if plan is None:
        plan = _make_plan(x2, wg, wu, out2, tuple(out2.shape), out2.dtype, act_id, bg is not None,
                          x_scale is not None, config)
        if key is not None:
            _op_plans.put(key, plan)
    plan(x2, wg, wu, bg, bu, out2, x_scale, wg_scale, wu_scale)


_op_plans = PlanCache("gated_mlp/op")


def _zero_k_result(M: int, N: int, act: str, bg: torch.Tensor | None, bu: torch.Tensor | None,
                   dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """hidden == 0: both projections are their biases (or 0); no kernel is needed."""
    g = torch.zeros(N, dtype=torch.float32, device=device) if bg is None else bg.float()
    u = torch.zeros(N, dtype=torch.float32, device=device) if bu is None else bu.float()
    return gated_mlp_reference_torch(g[None, :], None, None, act, u_pre=u[None, :]).expand(M, N).to(dtype)


def _run(x: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, out: torch.Tensor, activation: str,
         bg: torch.Tensor | None, bu: torch.Tensor | None, x_scale: torch.Tensor | None = None,
         wg_scale: torch.Tensor | None = None, wu_scale: torch.Tensor | None = None,
         config: GatedMLPConfig | None = None) -> None:
    """Flatten x/out to rows and launch (inputs already validated)."""
    N, K = wg.shape
    M = math.prod(x.shape[:-1])
    if M == 0 or N == 0:
        return
    if K == 0:
        out.copy_(_zero_k_result(M, N, activation, bg, bu, out.dtype, out.device).view(out.shape))
        return
    x2 = rows_view(x)
    out2 = out.view(-1, N) if out.is_contiguous() else None
    if out2 is None and out.dim() == 2:
        out2 = out  # strided rows, contiguous last dim: written in place through stride_om
    target = out2 if out2 is not None else torch.empty((M, N), dtype=out.dtype, device=out.device)
    xs = x_scale.reshape(-1) if x_scale is not None else None
    wg, wu = _same_layout(wg, wu)
    _launch(x2, wg, wu, target, ACTIVATIONS[activation], bg, bu, xs, wg_scale, wu_scale, config)
    if out2 is None:
        out.copy_(target.view(out.shape))


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------


def _validate(x, gate_weight, up_weight, activation, gate_bias=None, up_bias=None,
              allowed=FLOAT_DTYPES) -> None:
    # the FP8 entry point's arguments are x_q / gate_q / up_q: messages name what the caller passed
    nx, ng, nu = ("x", "gate_weight", "up_weight") if allowed == FLOAT_DTYPES else ("x_q", "gate_q", "up_q")
    check_tensor(x, nx)
    check_tensor(gate_weight, ng)
    check_tensor(up_weight, nu)
    if not isinstance(activation, str):
        raise InvalidArgumentError(f"activation must be a string, got {type(activation).__name__}")
    check_choice(activation, "activation", tuple(ACTIVATIONS) + tuple(ACTIVATION_ALIASES))
    check_ndim(x, nx, min_ndim=1)
    check_ndim(gate_weight, ng, 2)
    check_ndim(up_weight, nu, 2)
    if gate_weight.shape != up_weight.shape:
        raise ShapeError(f"{ng} has shape {tuple(gate_weight.shape)} but {nu} has shape "
                         f"{tuple(up_weight.shape)}; both must be [intermediate, hidden]")
    if x.shape[-1] != gate_weight.shape[1]:
        raise ShapeError(f"{nx} has hidden size {x.shape[-1]} (shape {tuple(x.shape)}) but the weights are "
                         f"{tuple(gate_weight.shape)} = [intermediate, hidden]; expected {nx}[..., "
                         f"{gate_weight.shape[1]}]")
    biases = {"gate_bias": gate_bias, "up_bias": up_bias}
    for name, b in biases.items():
        if b is None:
            continue
        check_tensor(b, name)
        if tuple(b.shape) != (gate_weight.shape[0],):
            raise ShapeError(f"{name} has shape {tuple(b.shape)}, expected ({gate_weight.shape[0]},)")
        check_last_dim_contiguous(b, name)
    if (gate_bias is None) != (up_bias is None):
        raise InvalidArgumentError("give both gate_bias and up_bias, or neither")
    check_dtype(x, nx, allowed)
    check_same_dtype({nx: x, ng: gate_weight, nu: up_weight, **biases})
    device = check_same_device({nx: x, ng: gate_weight, nu: up_weight, **biases})
    check_runnable_device(device, nx)
    check_last_dim_contiguous(x, nx)
    for name, w in ((ng, gate_weight), (nu, up_weight)):
        if w.stride(-1) == 1 or w.shape[-1] <= 1 or (allowed == FLOAT_DTYPES and _mn_major(w)):
            continue
        either = (" or MN-major (a transposed view w = G.T of a contiguous [hidden, intermediate] G, strides "
                  "(1, s))") if allowed == FLOAT_DTYPES else ""
        raise LayoutError(f"{name} has shape {tuple(w.shape)} and strides {tuple(w.stride())}; expected a K-major "
                          f"[intermediate, hidden] weight (strides (s, 1), nn.Linear's layout){either}; call "
                          f"{name}.contiguous() first")


def _out_shape(x: torch.Tensor, w: torch.Tensor) -> tuple[int, ...]:
    return (*x.shape[:-1], w.shape[0])


# ----------------------------------------------------------------------------------------------------
# 3. Custom ops
# ----------------------------------------------------------------------------------------------------


@torch.library.custom_op("triton_ops::fused_gated_mlp", mutates_args=())
def _fused_gated_mlp_op(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor,
                        activation: str, gate_bias: Optional[torch.Tensor],
                        up_bias: Optional[torch.Tensor]) -> torch.Tensor:
    out = torch.empty(_out_shape(x, gate_weight), dtype=x.dtype, device=x.device)
    _run(x, gate_weight, up_weight, out, activation, gate_bias, up_bias)
    return out


@_fused_gated_mlp_op.register_fake
def _(x, gate_weight, up_weight, activation, gate_bias, up_bias):
    return x.new_empty(_out_shape(x, gate_weight))


def _activation_and_grad(g: torch.Tensor, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """act(g) and act'(g) in g's dtype (the backward computes in fp32)."""
    if activation == "silu":
        s = torch.sigmoid(g)
        return g * s, s * (1 + g * (1 - s))
    if activation == "gelu":
        cdf = 0.5 * (1 + torch.erf(g * 0.7071067811865476))
        pdf = torch.exp(-0.5 * g * g) * 0.3989422804014327
        return g * cdf, cdf + g * pdf
    c = 0.7978845608028654
    t = torch.tanh(c * (g + 0.044715 * g * g * g))
    return 0.5 * g * (1 + t), 0.5 * (1 + t) + 0.5 * g * (1 - t * t) * c * (1 + 3 * 0.044715 * g * g)


def _setup_context(ctx, inputs, output):
    from .gated_mlp_backward import setup_recompute

    setup_recompute(ctx, inputs, output)


def _backward(ctx, grad_out):
    """G and U recomputed with cuBLAS in the input dtype (the fused forward kept no [M, I] activations),
    dG = dH * up * act'(G) and dU = dH * act(G) in one Triton kernel, then dx = dG Wg + dU Wu,
    dWg = dG^T x, dWu = dU^T x on the tensor cores (gated_mlp_backward.py)."""
    from .gated_mlp_backward import backward_recompute

    return backward_recompute(ctx, grad_out)


_fused_gated_mlp_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("triton_ops::fused_gated_mlp_out", mutates_args=("out",))
def _fused_gated_mlp_out_op(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor,
                            activation: str, gate_bias: Optional[torch.Tensor],
                            up_bias: Optional[torch.Tensor], out: torch.Tensor) -> None:
    _run(x, gate_weight, up_weight, out, activation, gate_bias, up_bias)


@_fused_gated_mlp_out_op.register_fake
def _(x, gate_weight, up_weight, activation, gate_bias, up_bias, out):
    return None


@torch.library.custom_op("triton_ops::fused_gated_mlp_fp8", mutates_args=())
def _fused_gated_mlp_fp8_op(x_q: torch.Tensor, x_scale: torch.Tensor, gate_q: torch.Tensor,
                            gate_scale: torch.Tensor, up_q: torch.Tensor, up_scale: torch.Tensor,
                            activation: str, out_dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(_out_shape(x_q, gate_q), dtype=out_dtype, device=x_q.device)
    _run(x_q, gate_q, up_q, out, activation, None, None, x_scale, gate_scale, up_scale)
    return out


@_fused_gated_mlp_fp8_op.register_fake
def _(x_q, x_scale, gate_q, gate_scale, up_q, up_scale, activation, out_dtype):
    return torch.empty(_out_shape(x_q, gate_q), dtype=out_dtype, device=x_q.device)


# ----------------------------------------------------------------------------------------------------
# 4. Functional API
# ----------------------------------------------------------------------------------------------------


def fused_gated_mlp(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor,
                    activation: str = "silu", *, gate_bias: torch.Tensor | None = None,
                    up_bias: torch.Tensor | None = None, out: torch.Tensor | None = None,
                    recompute: bool | None = None, out_dtype: torch.dtype | None = None,
                    out_scaling: str | None = None, out_scale: torch.Tensor | None = None):
    """``act(x @ gate_weight.T + gate_bias) * (x @ up_weight.T + up_bias)`` in one fused kernel.

    Args:
        x: ``[..., hidden]`` fp16, bf16 or fp32, last dim contiguous (rows may be strided).
        gate_weight, up_weight: ``[intermediate, hidden]`` (the ``nn.Linear`` layout), same dtype as x. A
            transposed view (``w = G.T`` of a contiguous ``[hidden, intermediate]`` ``G``, strides ``(1, s)``)
            is read in place, without a copy, through masked pointer loads (no TMA or 16-byte vector loads,
            so slower than the K-major layout); a weight of each layout costs a K-major copy of the
            transposed one per call.
        activation: ``"silu"`` (SwiGLU), ``"gelu"`` (exact erf, GeGLU) or ``"gelu_tanh"``; Hugging Face's
            names for the same functions (``"swish"``, ``"gelu_pytorch_tanh"``, ``"gelu_new"``) are accepted.
        gate_bias, up_bias: optional ``[intermediate]`` biases (both or neither).
        out: optional ``[..., intermediate]`` output buffer of x's dtype.
        recompute: training only (autograd recording through an input). False: the projections come from
            cuBLAS and are kept for the backward; True: the fused kernel, and the backward recomputes both
            projections (2 x [..., intermediate] less activation memory, two GEMMs more); None:
            ``triton_ops.kernels.gated_mlp_backward.RECOMPUTE`` (False). See docs/perf-notes.md, training.

    Returns:
        ``[..., intermediate]`` in x's dtype. Accumulation and the activation are fp32.

    FP8 output (``out_dtype=torch.float8_e4m3fn``, ``out_scaling``, ``out_scale``): the epilogue quantizes
    the fp32 ``act(gate) * up`` to e4m3 instead of rounding it to x's dtype and returns ``(q, scale)``,
    ready for an FP8 down projection (``fp8_gemm(q, w_down_q.t(), a_scale=scale, b_scale=...)``): 1 byte
    per output written instead of 2, and no quantization pass reading them back. ``out_scaling``:
    ``"block"`` (default: (1, 128) blocks, ``[rows, ceil(intermediate / 128)]``, the layout fp8_gemm's
    block-scaled ``a`` reads; tiles are then 128 columns wide), ``"token"`` (``[..., 1]``: the row amax
    spans every N tile, so a small second pass re-encodes each row under its largest block scale, 2 bytes
    more per output; a code may then be one e4m3 step from a single rounding) or ``"static"``
    (``out_scale``, one fp32 value; implied by passing it). Semantics of :func:`triton_ops.quantize_fp8`:
    ``scale = amax / 448`` over finite values, 1 for an all-zero block; NaN stays NaN, +-inf saturates.
    No autograd and no ``out=`` with an FP8 output.
    """
    if out_dtype is not None:
        return _fp8_out_entry(x, gate_weight, up_weight, activation, gate_bias, up_bias, None, None, None, out,
                              out_dtype, out_scaling, out_scale)
    if out_scaling is not None or out_scale is not None:
        raise InvalidArgumentError("fused_gated_mlp: out_scaling / out_scale apply only to an FP8 output; pass "
                                   "out_dtype=torch.float8_e4m3fn")
    key = plan_key(x, gate_weight, up_weight, gate_bias, up_bias, out)
    if key is not None:
        # Eager call with no autograd or tracing: a repeated signature is one dict hit and a launch.
        key = (key, activation, runtime.ENABLED)
        plan = _plans.get(key)
        # a plan made for a separate `out` re-checks that it still is (a few integer operations per input;
        # overlap depends on addresses, not the key); a failing check takes the validated path, which decides
        if plan is not None and (not plan.tests or out_apart(
                plan.tests, (x, gate_weight, up_weight, gate_bias, up_bias), out)):
            return plan(x, gate_weight, up_weight, gate_bias, up_bias, out)
    _validate(x, gate_weight, up_weight, activation, gate_bias, up_bias)
    activation = canonical_activation(activation)
    if out is not None:
        check_out(out, "out", _out_shape(x, gate_weight), x.dtype, x.device)
        # Every output tile reads whole rows of x and of both weights: an out sharing memory with any input
        # (out=x included), or one whose elements share memory, would be read after it is written.
        check_no_overlap(out, "out", {"x": x, "gate_weight": gate_weight, "up_weight": up_weight,
                                      "gate_bias": gate_bias, "up_bias": up_bias})
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (x, gate_weight, up_weight, gate_bias, up_bias)):
            raise InvalidArgumentError("fused_gated_mlp with out= does not support autograd (an input requires "
                                       "grad); call it without out= to differentiate, or under torch.no_grad()")
    if key is not None:
        plan = _plan_eager(x, gate_weight, up_weight, out, activation, gate_bias is not None, x.dtype)
        if plan is not None:
            args = (x, gate_weight, up_weight, gate_bias, up_bias)
            if out is not None:
                plan.tests = tuple((i, Disjoint(out, t)) for i, t in enumerate(args) if t is not None and t.numel())
            if not plan.tests or out_apart(plan.tests, args, out):
                _plans.put(key, plan)
            return plan(x, gate_weight, up_weight, gate_bias, up_bias, out)
        if out is None:
            out = torch.empty(_out_shape(x, gate_weight), dtype=x.dtype, device=x.device)
        _run(x, gate_weight, up_weight, out, activation, gate_bias, up_bias)
        return out
    if out is not None:
        torch.ops.triton_ops.fused_gated_mlp_out(x, gate_weight, up_weight, activation, gate_bias, up_bias, out)
        return out
    from .gated_mlp_backward import gated_mlp_saving, wants_saving

    if wants_saving(recompute, x, gate_weight, up_weight, gate_bias, up_bias):
        return gated_mlp_saving(x, gate_weight, up_weight, activation, gate_bias, up_bias)
    return torch.ops.triton_ops.fused_gated_mlp(x, gate_weight, up_weight, activation, gate_bias, up_bias)


_plans = PlanCache("gated_mlp")
_plans_fp8 = PlanCache("gated_mlp_fp8")


def _plan_eager(x: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, out: torch.Tensor | None, activation: str,
                has_bias: bool, out_dtype: torch.dtype, fp8: bool = False) -> _Plan | None:
    """A reusable plan for an eager call on the public op's own (validated) arguments, or None where
    the call takes the unplanned path each time: an empty or hidden-0 problem, or an x / out whose rows
    cannot be addressed in place (they are copied per call)."""
    N, K = wg.shape
    M = math.prod(x.shape[:-1])
    if M == 0 or N == 0 or K == 0:
        return None
    x2 = rows_view(x)
    if x2.data_ptr() != x.data_ptr() or _mn_major(wg) != _mn_major(wu):  # a copy per call: never planned
        return None
    out2 = None
    if out is not None:
        if out.is_contiguous():
            out2 = out.view(-1, N)
        elif out.dim() == 2:
            out2 = out
        else:
            return None
    return _make_plan(x2, wg, wu, out2, _out_shape(x, wg), out_dtype, ACTIVATIONS[activation], has_bias, fp8)


_module_fp8_plans = PlanCache("gated_mlp/fp8_module")


def _plan_module_fp8(x: torch.Tensor, wg: torch.Tensor, sg: torch.Tensor, wu: torch.Tensor, su: torch.Tensor,
                     activation: str):
    """The FP8 module's float-input forward for a validated x: ``run(x, wg, sg, wu, su)`` quantizes x per
    token (``_quant_rows_kernel``, as ``quantize_rows_fp8``) into a new e4m3 buffer and launches the gated
    plan on it; None where the call is not planned (empty, rows not addressable in place, no FP8 MMA)."""
    K = x.shape[-1]
    M = math.prod(x.shape[:-1])
    if M == 0 or K == 0 or not (interpreter_enabled() or (device_arch(x.device) or 0) >= 89):
        return None
    x2 = rows_view(x)
    if x2.data_ptr() != x.data_ptr():
        return None
    quant = rows_step(M, K, x2.stride(0), K, 1, FP8_MAX[torch.float8_e4m3fn], None)
    shape, dev = tuple(x.shape), x.device
    gated = _plan_eager(torch.empty(shape, dtype=torch.float8_e4m3fn, device=dev), wg, wu, None, activation, False,
                        x.dtype, fp8=True)
    if gated is None:
        return None

    def run(x, wg, sg, wu, su):
        q = torch.empty(shape, dtype=torch.float8_e4m3fn, device=dev)
        s = torch.empty(M, dtype=torch.float32, device=dev)
        quant(x, q, s)
        return gated(q, wg, wu, None, None, None, s, sg, su)
    return run


def quantize_rows_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token / per-output-channel) e4m3 quantization: ``x ~= q.float() * scale``.

    Returns ``q`` (e4m3, x's shape) and ``scale`` (fp32, ``[..., 1]``): the library's per-channel weight
    quantizer, which runs the Triton kernel where it can and the same math in torch ops on a CPU.
    """
    q, scale = quantize_weight(x.reshape(-1, x.shape[-1]), torch.float8_e4m3fn, "channel")
    return q.reshape(x.shape), scale.reshape(*x.shape[:-1], 1)


def fused_gated_mlp_fp8(x_q: torch.Tensor, x_scale: torch.Tensor, gate_q: torch.Tensor,
                        gate_scale: torch.Tensor, up_q: torch.Tensor, up_scale: torch.Tensor,
                        activation: str = "silu", out_dtype: torch.dtype = torch.bfloat16, *,
                        out_scaling: str | None = None, out_scale: torch.Tensor | None = None):
    """FP8 fused gated MLP on pre-quantized operands.

    ``x_q`` ``[..., hidden]`` e4m3 with ``x_scale`` ``[..., 1]`` (or ``[rows]``) fp32 per row;
    ``gate_q``/``up_q`` ``[intermediate, hidden]`` e4m3 with ``gate_scale``/``up_scale``
    ``[intermediate]`` (or ``[intermediate, 1]``) fp32 per output channel. The scales multiply the fp32
    accumulators in the epilogue, before the activation. Needs FP8 tensor cores (sm_89+) or the
    interpreter.

    ``out_dtype=torch.float8_e4m3fn`` returns ``(q, scale)``: e4m3 codes of the fp32 result for the FP8 down
    projection, with ``out_scaling`` ``"block"`` (default), ``"token"`` or ``"static"`` (``out_scale``), as
    for :func:`fused_gated_mlp`. The chain norm -> FP8 -> gated MLP -> FP8 GEMM then moves every
    activation through memory once, in one byte per element::

        x_q, x_s, h = fused_add_rmsnorm(x, w_norm, residual=h, out_dtype=torch.float8_e4m3fn)
        a_q, a_s = fused_gated_mlp_fp8(x_q, x_s, wg_q, wg_s, wu_q, wu_s, out_dtype=torch.float8_e4m3fn)
        y = fp8_gemm(a_q.reshape(-1, inter), wd_q.t(), a_scale=a_s, b_scale=wd_s.reshape(1, -1))
    """
    if out_dtype == torch.float8_e4m3fn or out_scaling is not None or out_scale is not None:
        return _fp8_out_entry(x_q, gate_q, up_q, activation, None, None, x_scale, gate_scale, up_scale, None,
                              out_dtype, out_scaling, out_scale)
    key = plan_key(x_q, x_scale, gate_q, gate_scale, up_q, up_scale)
    if key is not None:
        key = (key, activation, out_dtype)
        plan = _plans_fp8.get(key)
        if plan is not None:
            return plan(x_q, gate_q, up_q, None, None, None, x_scale, gate_scale, up_scale)
    _check_fp8_operands(x_q, x_scale, gate_q, gate_scale, up_q, up_scale, activation)
    activation = canonical_activation(activation)
    check_out_dtype(out_dtype, FLOAT_DTYPES)
    xs, gs, us = x_scale.reshape(-1).contiguous(), gate_scale.reshape(-1).contiguous(), \
        up_scale.reshape(-1).contiguous()
    if key is not None:
        plan = _plan_eager(x_q, gate_q, up_q, None, activation, False, out_dtype, fp8=True)
        # the kernel reads the scales as flat vectors: the plan is reusable when that needed no copy
        flat = xs.data_ptr() == x_scale.data_ptr() and gs.data_ptr() == gate_scale.data_ptr() and \
            us.data_ptr() == up_scale.data_ptr()
        if plan is not None:
            if flat:
                _plans_fp8.put(key, plan)
            return plan(x_q, gate_q, up_q, None, None, None, xs, gs, us)
        out = torch.empty(_out_shape(x_q, gate_q), dtype=out_dtype, device=x_q.device)
        _run(x_q, gate_q, up_q, out, activation, None, None, xs, gs, us)
        return out
    return torch.ops.triton_ops.fused_gated_mlp_fp8(x_q, xs, gate_q, gs, up_q, us, activation, out_dtype)


# ----------------------------------------------------------------------------------------------------
# FP8 outputs (out_dtype=torch.float8_e4m3fn): act(gate) * up as e4m3 codes for the down projection
# ----------------------------------------------------------------------------------------------------
#: The epilogue's OUT_QUANT for a per-token output: block codes plus each block's raw amax / 448, then the
#: per-row step (fp8_out.rescale_rows_step).
_OUT_RAW_BLOCKS = 4
_SCALING_NAMES = {F8.QUANT_STATIC: "static", F8.QUANT_TOKEN: "token", F8.QUANT_BLOCK: "block"}


class _FP8OutPlan:
    """An FP8-output call: the kernel's plan, the scales it allocates and, per token, the per-row step.

    Per-token scales need the amax of a whole row, which spans all the N tiles of the GEMM: the epilogue
    writes each (1, 128) block's codes under the block's own scale and the blocks' ``amax / 448``
    (4 bytes per 128 outputs), then one small pass takes each row's largest (exactly the row's
    ``amax / 448``: the division is monotonic) and re-encodes the row's codes under it, in place: 2 more
    bytes per output (one read, one write) and a launch. A code whose block is not the row's largest is
    rounded twice (to its block's grid, then to the row's): it may differ from a single rounding of the
    fp32 value by one e4m3 step, and an infinite product saturates to its block's largest value instead
    of the row's.
    """

    __slots__ = ("plan", "quant", "M", "N", "s_shape", "rescale")

    def __init__(self, plan, quant: int, M: int, N: int, out_shape: tuple, device: torch.device):
        self.plan, self.quant, self.M, self.N = plan, quant, M, N
        self.s_shape = F8.scale_shape(quant, out_shape)
        self.rescale = None
        if quant == F8.QUANT_TOKEN:
            self.rescale = F8.rescale_rows_step(M, N, N, cdiv(N, F8.GROUP), F8.store_bytes(device))

    def __call__(self, x, wg, wu, bg, bu, xs, gs, us, out_scale):
        if self.quant == F8.QUANT_STATIC:
            return self.plan(x, wg, wu, bg, bu, None, xs, gs, us, out_scale), out_scale
        blocks = torch.empty(self.M, cdiv(self.N, F8.GROUP), dtype=torch.float32, device=x.device)
        q = self.plan(x, wg, wu, bg, bu, None, xs, gs, us, blocks)
        s = blocks
        if self.rescale is not None:
            s = torch.empty(self.s_shape, dtype=torch.float32, device=x.device)
            self.rescale(q.view(torch.uint8), blocks, s)
        _mark_valid(s)
        return q, s


def _run_fp8_out(x, wg, wu, activation: str, bg, bu, xs, gs, us, out_scale, quant: int, cache_key=None,
                 cache: PlanCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """An FP8-output call on validated operands (float ``x`` and weights, or e4m3 ones with their scales
    ``xs``/``gs``/``us``): ``(q, scale)``. A plan is kept in ``cache`` under ``cache_key`` when the operands
    needed no copy."""
    N, K = wg.shape
    M = math.prod(x.shape[:-1])
    out_shape = _out_shape(x, wg)
    static = quant == F8.QUANT_STATIC
    if M == 0 or N == 0:
        q, s = F8.empty_result(quant, out_shape, x.device)
        return q, (out_scale if static else s)
    if K == 0:  # both projections are their biases: quantized by PyTorch ops, same semantics
        h = _zero_k_result(M, N, activation, bg, bu, torch.float32, x.device).reshape(out_shape)
        return F8.quantize_reference(h, _SCALING_NAMES[quant], out_scale)
    plan = cache.get(cache_key) if cache_key is not None else None
    x2 = rows_view(x)
    wg2, wu2 = _same_layout(wg, wu)
    flat = [None if t is None else t.reshape(-1).contiguous() for t in (xs, gs, us)]
    if plan is None:
        kplan = _make_plan(x2, wg2, wu2, None, out_shape, F8.FP8_OUT_DTYPE, ACTIVATIONS[activation], bg is not None,
                           xs is not None, out_quant=_OUT_RAW_BLOCKS if quant == F8.QUANT_TOKEN else quant)
        plan = _FP8OutPlan(kplan, quant, M, N, out_shape, x.device)
        same = x2.data_ptr() == x.data_ptr() and wg2 is wg and wu2 is wu and all(
            t is None or f.data_ptr() == t.data_ptr() for f, t in zip(flat, (xs, gs, us)))
        if cache_key is not None and same:
            cache.put(cache_key, plan)
    return plan(x2, wg2, wu2, bg, bu, *flat, out_scale)


_plans_fp8_out = PlanCache("gated_mlp/fp8_out")
_op_plans_fp8_out = PlanCache("gated_mlp/fp8_out_op")


@torch.library.custom_op("triton_ops::fused_gated_mlp_fp8_out", mutates_args=())
def _fused_gated_mlp_fp8_out_op(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor,
                                activation: str, gate_bias: Optional[torch.Tensor], up_bias: Optional[torch.Tensor],
                                x_scale: Optional[torch.Tensor], gate_scale: Optional[torch.Tensor],
                                up_scale: Optional[torch.Tensor], out_scale: Optional[torch.Tensor],
                                quant: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 output (either input kind); a static op returns an empty placeholder for the scale (the functional
    API hands back the caller's own: a custom op's outputs may not alias its inputs). No autograd."""
    key = (tensor_key(x, gate_weight, up_weight, gate_bias, up_bias, x_scale, gate_scale, up_scale, out_scale),
           activation, quant)
    q, s = _run_fp8_out(x, gate_weight, up_weight, activation, gate_bias, up_bias, x_scale, gate_scale, up_scale,
                        out_scale, quant, key, _op_plans_fp8_out)
    return q, (x.new_empty(0, dtype=torch.float32) if quant == F8.QUANT_STATIC else s)


@_fused_gated_mlp_fp8_out_op.register_fake
def _(x, gate_weight, up_weight, activation, gate_bias, up_bias, x_scale, gate_scale, up_scale, out_scale, quant):
    shape = _out_shape(x, gate_weight)
    return (x.new_empty(shape, dtype=F8.FP8_OUT_DTYPE),
            x.new_empty(F8.scale_shape(quant, shape), dtype=torch.float32))


def _check_fp8_operands(x_q, x_scale, gate_q, gate_scale, up_q, up_scale, activation) -> None:
    """The e4m3 operands of fused_gated_mlp_fp8 and their per-row / per-channel scales."""
    _validate(x_q, gate_q, up_q, activation, allowed=(torch.float8_e4m3fn,))
    rows = math.prod(x_q.shape[:-1])
    inter = gate_q.shape[0]
    for name, s, n in (("x_scale", x_scale, rows), ("gate_scale", gate_scale, inter),
                       ("up_scale", up_scale, inter)):
        check_tensor(s, name)
        check_dtype(s, name, (torch.float32,))
        if s.numel() != n:
            raise ShapeError(f"{name} has shape {tuple(s.shape)} ({s.numel()} values); expected one scale "
                             f"per {'row of x' if name == 'x_scale' else 'output channel'} ({n})")
    check_same_device({"x_q": x_q, "x_scale": x_scale, "gate_q": gate_q, "gate_scale": gate_scale,
                       "up_q": up_q, "up_scale": up_scale})
    arch = device_arch(x_q.device)
    if arch is not None and arch < 89:
        raise UnsupportedError(f"the FP8 gated MLP needs FP8 tensor cores (sm_89 or newer); this device is "
                               f"sm_{arch}. Use the fp16/bf16 path (FusedGatedMLP without fp8) instead")


def _fp8_out_entry(x, wg, wu, activation, bg, bu, xs, gs, us, out, out_dtype, out_scaling, out_scale):
    """fused_gated_mlp / fused_gated_mlp_fp8 with an FP8 output (``xs`` not None: e4m3 operands)."""
    fp8_in = xs is not None
    key = plan_key(x, wg, wu, bg, bu, xs, gs, us, out_scale)
    if key is not None and out is None:
        # Eager call with no autograd or tracing: a repeated signature is one dict hit and a launch.
        key = (key, activation, out_dtype, out_scaling, runtime.ENABLED)
        plan = _plans_fp8_out.get(key)
        if plan is not None:
            if out_scale is not None:
                check_scale_values(out_scale, "out_scale")
            return plan(x, wg, wu, bg, bu, xs, gs, us, out_scale)
    if fp8_in:
        _check_fp8_operands(x, xs, wg, gs, wu, us, activation)
        act_dtype = out_dtype if out_dtype in FLOAT_DTYPES else torch.bfloat16
    else:
        _validate(x, wg, wu, activation, bg, bu)
        act_dtype = x.dtype
    activation = canonical_activation(activation)
    op = "fused_gated_mlp_fp8" if fp8_in else "fused_gated_mlp"
    quant = F8.resolve_fp8_output(out_dtype, out_scaling, out_scale, act_dtype, x.device, "block", op)
    if not quant:  # an activation-dtype output after all
        if fp8_in:
            return fused_gated_mlp_fp8(x, xs, wg, gs, wu, us, activation, out_dtype=act_dtype)
        return fused_gated_mlp(x, wg, wu, activation, gate_bias=bg, up_bias=bu, out=out)
    if out is not None:
        raise InvalidArgumentError(f"{op}: out= is not supported with an FP8 output (the op allocates the e4m3 "
                                   "codes and their scales)")
    if key is not None:
        return _run_fp8_out(x, wg, wu, activation, bg, bu, xs, gs, us, out_scale, quant, key, _plans_fp8_out)
    q, s = torch.ops.triton_ops.fused_gated_mlp_fp8_out(x, wg, wu, activation, bg, bu, xs, gs, us, out_scale, quant)
    return q, (out_scale if quant == F8.QUANT_STATIC else s)


def gated_mlp_reference_torch(x: torch.Tensor, gate_weight: torch.Tensor | None,
                              up_weight: torch.Tensor | None, activation: str = "silu",
                              gate_bias: torch.Tensor | None = None, up_bias: torch.Tensor | None = None,
                              *, u_pre: torch.Tensor | None = None) -> torch.Tensor:
    """The unfused torch form: two projections, then ``act(gate) * up`` (computes in x's dtype).

    With ``gate_weight=None`` x is taken as the gate pre-activation and ``u_pre`` as the up projection.
    """
    g = x if gate_weight is None else torch.nn.functional.linear(x, gate_weight, gate_bias)
    u = u_pre if up_weight is None else torch.nn.functional.linear(x, up_weight, up_bias)
    if activation == "silu":
        a = torch.nn.functional.silu(g)
    elif activation == "gelu":
        a = torch.nn.functional.gelu(g)
    elif activation == "gelu_tanh":
        a = torch.nn.functional.gelu(g, approximate="tanh")
    else:
        raise InvalidArgumentError(f"activation={activation!r} is not supported; expected one of "
                                   f"{tuple(ACTIVATIONS)}")
    return a * u


# ----------------------------------------------------------------------------------------------------
# Module
# ----------------------------------------------------------------------------------------------------


class FusedGatedMLP(KeepBufferDtypes, torch.nn.Module):
    """``act(x @ Wg^T + bg) * (x @ Wu^T + bu)`` (the gate/up half of a LLaMA-style MLP) as one kernel.

    Storage: one ``weight`` parameter ``[2 * intermediate, hidden]`` holding the gate rows then the up
    rows (one allocation, the layout of the concatenated GEMM; the kernel reads the two halves as
    views with no copy), and with ``bias=True`` one ``bias`` ``[2 * intermediate]`` in the same order.
    :meth:`gate_up_weights` / :meth:`to_hf_state_dict` give the two ``[intermediate, hidden]`` weights
    back; :meth:`from_linear` and :meth:`from_hf_state_dict` build the module from them.

    ``fp8=True`` (or :meth:`to_fp8`) stores e4m3 weights with one fp32 scale per output channel and
    quantizes activations per token at each call; outputs keep the input's dtype.
    """

    # model.half() must not turn the FP8 weight or its fp32 scales into fp16 values.
    _keep_dtype_buffers = ("weight_fp8", "weight_scale")
    #: Training: keep the gate/up projections for the backward (False) or recompute them there (True);
    #: None follows gated_mlp_backward.RECOMPUTE (see fused_gated_mlp's ``recompute``).
    recompute: bool | None = None

    def __init__(self, hidden_dim: int, intermediate_dim: int, activation: str = "silu", bias: bool = False,
                 *, fp8: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        hidden_dim = check_int(hidden_dim, "hidden_dim", min_value=1)
        intermediate_dim = check_int(intermediate_dim, "intermediate_dim", min_value=1)
        check_choice(activation, "activation", tuple(ACTIVATIONS) + tuple(ACTIVATION_ALIASES))
        activation = canonical_activation(activation)
        for name, flag in (("bias", bias), ("fp8", fp8)):
            if not isinstance(flag, bool):
                raise InvalidArgumentError(f"{name} must be a bool, got {flag!r}")
        # refused here, before any allocation: a module that could not run would fail only at its first call
        check_module_device(device)
        check_float_dtype_or_none(dtype)
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.is_fp8 = False
        factory = {"device": device, "dtype": dtype}
        self.weight = torch.nn.Parameter(torch.empty(2 * intermediate_dim, hidden_dim, **factory))
        self.bias = torch.nn.Parameter(torch.empty(2 * intermediate_dim, **factory)) if bias else None
        self.reset_parameters()
        if fp8:
            self.to_fp8()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation, applied to the gate and up halves independently."""
        if self.is_fp8:
            raise UnsupportedError("reset_parameters on an FP8 module; build a new module instead")
        inter = self.intermediate_dim
        bound = 1.0 / math.sqrt(self.hidden_dim)
        with torch.no_grad():
            for half in (self.weight[:inter], self.weight[inter:]):
                torch.nn.init.kaiming_uniform_(half, a=math.sqrt(5))
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    # --- conversions --------------------------------------------------------------------------------

    @classmethod
    def from_weights(cls, gate_weight: torch.Tensor, up_weight: torch.Tensor, activation: str = "silu",
                     gate_bias: torch.Tensor | None = None, up_bias: torch.Tensor | None = None,
                     fp8: bool = False) -> FusedGatedMLP:
        """Build from two ``[intermediate, hidden]`` weights (copied into the packed layout)."""
        check_tensor(gate_weight, "gate_weight")
        check_tensor(up_weight, "up_weight")
        check_ndim(gate_weight, "gate_weight", 2)
        if gate_weight.shape != up_weight.shape:
            raise ShapeError(f"gate_weight has shape {tuple(gate_weight.shape)} but up_weight has shape "
                             f"{tuple(up_weight.shape)}; both must be [intermediate, hidden]")
        if (gate_bias is None) != (up_bias is None):
            raise InvalidArgumentError("give both gate_bias and up_bias, or neither")
        check_same_dtype({"gate_weight": gate_weight, "up_weight": up_weight})
        inter, hidden = gate_weight.shape
        mod = cls(hidden, inter, activation, bias=gate_bias is not None, device=gate_weight.device,
                  dtype=gate_weight.dtype)
        with torch.no_grad():
            mod.weight[:inter].copy_(gate_weight)
            mod.weight[inter:].copy_(up_weight)
            if gate_bias is not None:
                mod.bias[:inter].copy_(gate_bias)
                mod.bias[inter:].copy_(up_bias)
        if fp8:
            mod.to_fp8()
        return mod

    @classmethod
    def from_linear(cls, gate_proj: torch.nn.Linear, up_proj: torch.nn.Linear, activation: str = "silu",
                    fp8: bool = False) -> FusedGatedMLP:
        """Build from two ``nn.Linear(hidden, intermediate)`` layers (``gate_proj``, ``up_proj``)."""
        for name, lin in (("gate_proj", gate_proj), ("up_proj", up_proj)):
            if not isinstance(lin, torch.nn.Linear):
                raise InvalidArgumentError(f"{name} must be an nn.Linear, got {type(lin).__name__}")
        return cls.from_weights(gate_proj.weight.detach(), up_proj.weight.detach(), activation,
                                None if gate_proj.bias is None else gate_proj.bias.detach(),
                                None if up_proj.bias is None else up_proj.bias.detach(), fp8=fp8)

    @classmethod
    def from_hf_state_dict(cls, state_dict: dict[str, torch.Tensor], prefix: str = "",
                           activation: str = "silu", fp8: bool = False) -> FusedGatedMLP:
        """Build from a Hugging Face style MLP state dict: ``{prefix}gate_proj.weight``,
        ``{prefix}up_proj.weight`` (and ``.bias`` when present). ``down_proj`` entries are ignored."""
        keys = [f"{prefix}gate_proj.weight", f"{prefix}up_proj.weight"]
        missing = [k for k in keys if k not in state_dict]
        if missing:
            raise InvalidArgumentError(f"state dict lacks {missing}; it has {sorted(state_dict)[:8]}")
        gb = state_dict.get(f"{prefix}gate_proj.bias")
        ub = state_dict.get(f"{prefix}up_proj.bias")
        return cls.from_weights(state_dict[keys[0]], state_dict[keys[1]], activation, gb, ub, fp8=fp8)

    def gate_up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The gate and up weights ``[intermediate, hidden]`` in the ``nn.Linear`` layout (copies;
        dequantized to fp32 for an FP8 module)."""
        inter = self.intermediate_dim
        if self.is_fp8:
            w = self.weight_fp8.float() * self.weight_scale[:, None]
        else:
            w = self.weight.detach()
        return w[:inter].clone(), w[inter:].clone()

    def to_hf_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """``{prefix}gate_proj.weight``, ``{prefix}up_proj.weight`` (+ biases) in the original layout."""
        g, u = self.gate_up_weights()
        sd = {f"{prefix}gate_proj.weight": g, f"{prefix}up_proj.weight": u}
        if self.bias is not None:
            inter = self.intermediate_dim
            sd[f"{prefix}gate_proj.bias"] = self.bias.detach()[:inter].clone()
            sd[f"{prefix}up_proj.bias"] = self.bias.detach()[inter:].clone()
        return sd

    @torch.no_grad()
    def to_fp8(self) -> FusedGatedMLP:
        """Quantize the weights to e4m3 with one scale per output channel (in place; returns self).

        The fp16/bf16 ``weight`` parameter is replaced by the buffers ``weight_fp8`` and
        ``weight_scale``; the module then runs the FP8 kernel and returns the input's dtype.
        """
        if self.is_fp8:
            return self
        if self.bias is not None:
            raise UnsupportedError("the FP8 gated MLP has no bias path; build the module with bias=False")
        q, scale = quantize_rows_fp8(self.weight.detach().float())
        del self.weight
        self.register_buffer("weight_fp8", q.contiguous())
        self.register_buffer("weight_scale", scale.reshape(-1).contiguous())
        self.is_fp8 = True
        return self

    # --- forward ------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, x_scale: torch.Tensor | None = None, *, out_dtype: torch.dtype | None = None,
                out_scaling: str | None = None, out_scale: torch.Tensor | None = None):
        """``act(x Wg^T + bg) * (x Wu^T + bu)`` in x's dtype. FP8 in and out (the FP8 chain, see
        :func:`fused_gated_mlp_fp8`): an FP8 module also takes e4m3 ``x`` with its per-row ``x_scale`` (e.g.
        from ``fused_add_rmsnorm(..., out_dtype=torch.float8_e4m3fn)``), and ``out_dtype=torch.float8_e4m3fn``
        returns ``(q, scale)`` (``out_scaling`` / ``out_scale`` as for :func:`fused_gated_mlp`)."""
        if x_scale is not None or out_dtype is not None or out_scaling is not None or out_scale is not None:
            return self._forward_fp8_io(x, x_scale, out_dtype, out_scaling, out_scale)
        inter = self.intermediate_dim
        if not self.is_fp8:
            gb = ub = None
            if self.bias is not None:
                gb, ub = self.bias[:inter], self.bias[inter:]
            return fused_gated_mlp(x, self.weight[:inter], self.weight[inter:], self.activation,
                                   gate_bias=gb, up_bias=ub, recompute=self.recompute)
        w, s = self.weight_fp8, self.weight_scale
        key = plan_key(x, w, s)
        if key is not None:
            # eager, no autograd: one plan per signature quantizes x and launches the gated kernel on
            # the weight halves' cached views (host per call on the CPU, launches skipped: 25 -> 10 us)
            key = (key, self.activation, inter)
            plan = _module_fp8_plans.get(key)
            if plan is not None:
                return plan(x, *self._fp8_halves())
        check_tensor(x, "x")
        check_dtype(x, "x", FLOAT_DTYPES)
        if x.shape[-1] != self.hidden_dim:
            raise ShapeError(f"x has hidden size {x.shape[-1]} (shape {tuple(x.shape)}); this module expects "
                             f"{self.hidden_dim}")
        check_same_device({"x": x, "weight_fp8": self.weight_fp8})
        check_runnable_device(x.device, "x")
        check_last_dim_contiguous(x, "x")
        if key is not None:
            plan = _plan_module_fp8(x, *self._fp8_halves(), self.activation)
            if plan is not None:
                return _module_fp8_plans.put(key, plan)(x, *self._fp8_halves())
        x_q, x_scale = quantize_rows_fp8(x)
        w, s = self.weight_fp8, self.weight_scale
        from .gated_mlp_backward import inference_only

        # inference only: a backward through this output raises UnsupportedError (no FP8 gradients)
        return inference_only(fused_gated_mlp_fp8(x_q, x_scale, w[:inter], s[:inter], w[inter:], s[inter:],
                                                  self.activation, out_dtype=x.dtype), x)

    def _fp8_halves(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gate codes, gate scales, up codes, up scales): views of the packed FP8 buffers, kept while the
        buffers are the same objects (a load with assign=True or a device move replaces them)."""
        w, s = self.weight_fp8, self.weight_scale
        cached = self.__dict__.get("_triton_ops_fp8_halves")
        if cached is None or cached[0] is not w or cached[1] is not s:
            i = self.intermediate_dim
            cached = (w, s, w[:i], s[:i], w[i:], s[i:])
            self.__dict__["_triton_ops_fp8_halves"] = cached
        return cached[2:]

    def _forward_fp8_io(self, x, x_scale, out_dtype, out_scaling, out_scale):
        """forward with pre-quantized input or an FP8 output (inference only: no autograd)."""
        inter = self.intermediate_dim
        check_tensor(x, "x")
        if not self.is_fp8:
            if x_scale is not None:
                raise InvalidArgumentError("x_scale is for an FP8 module's e4m3 input; this module is not FP8 "
                                           "(build it with fp8=True or call to_fp8())")
            gb = ub = None
            if self.bias is not None:
                gb, ub = self.bias[:inter], self.bias[inter:]
            return fused_gated_mlp(x, self.weight[:inter], self.weight[inter:], self.activation, gate_bias=gb,
                                   up_bias=ub, out_dtype=out_dtype, out_scaling=out_scaling, out_scale=out_scale)
        if x.dtype == torch.float8_e4m3fn:
            if x_scale is None:
                raise InvalidArgumentError("an e4m3 x needs x_scale, its per-row dequantization scales [..., 1]")
            x_q = x
        else:
            if x_scale is not None:
                raise InvalidArgumentError(f"x_scale is only taken with an e4m3 x; x is {x.dtype} (quantized per "
                                           "row by the module)")
            check_dtype(x, "x", FLOAT_DTYPES)
            x_q, x_scale = quantize_rows_fp8(x)
        if out_dtype is None:
            out_dtype = x.dtype if x.dtype in FLOAT_DTYPES else torch.bfloat16
        w, s = self.weight_fp8, self.weight_scale
        return fused_gated_mlp_fp8(x_q, x_scale, w[:inter], s[:inter], w[inter:], s[inter:], self.activation,
                                   out_dtype=out_dtype, out_scaling=out_scaling, out_scale=out_scale)

    def extra_repr(self) -> str:
        return (f"hidden_dim={self.hidden_dim}, intermediate_dim={self.intermediate_dim}, "
                f"activation={self.activation!r}, bias={self.bias is not None}, fp8={self.is_fp8}")


# ----------------------------------------------------------------------------------------------------
# Compile check
# ----------------------------------------------------------------------------------------------------


def _spec(arch: int, dtype: torch.dtype, cfg: GatedMLPConfig, act: str = "silu", has_bias: bool = False,
          out_dtype: torch.dtype | None = None, aligned: bool = True, w_mn: bool = False,
          out_quant: int = 0) -> CompileSpec:
    fp8 = dtype == torch.float8_e4m3fn
    t = _TORCH_TO_TL[dtype]
    # FP8 outputs (out_quant, the epilogue's OUT_QUANT): e4m3 codes, as bytes on sm_80 (no FP8 conversion)
    out_bytes = bool(out_quant) and arch < 89
    if out_quant:
        out_dtype = torch.float8_e4m3fn
    to = "u8" if out_bytes else _TORCH_TO_TL[out_dtype or dtype]
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    if cfg.use_tma:
        xs, wgs, ous = f"tensordesc<{t}[{bm}, {bk}]>", f"tensordesc<{t}[{bn}, {bk}]>", f"tensordesc<{to}[{bm}, {bn}]>"
    else:
        xs, wgs, ous = f"*{t}", f"*{t}", f"*{to}"
    sig = {
        "x": xs, "wg": wgs, "wu": wgs, "out": ous,
        "bg_ptr": f"*{t}", "bu_ptr": f"*{t}", "xs_ptr": "*fp32", "wgs_ptr": "*fp32", "wus_ptr": "*fp32",
        "M": "i32", "N": "i32", "K": "i32",
        "stride_xm": "i32", "stride_wgn": "i32", "stride_wun": "i32", "stride_om": "i32",
        "num_progs": "i32",
    }
    constexprs = {
        "ACTIVATION": ACTIVATIONS[act], "HAS_BIAS": has_bias, "FP8": fp8, "USE_TMA": cfg.use_tma,
        "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32", "FLATTEN": cfg.flatten and cfg.persistent,
        "ALIGN_IN": 16 // dtype.itemsize if aligned else 1,
        "ALIGN_OUT": 16 // (out_dtype or dtype).itemsize if aligned else 1,
        "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": cfg.group_m,
        "W_MN": w_mn, "EXACT_BF16": False,  # EXACT_BF16 is an interpreter-only switch
        "OUT_QUANT": out_quant, "OUT_BYTES": out_bytes,
    }
    for name in ("ACTIVATION", "HAS_BIAS", "FP8", "USE_TMA", "DOT_PRECISION", "FLATTEN", "ALIGN_IN", "ALIGN_OUT",
                 "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "W_MN", "EXACT_BF16", "OUT_QUANT", "OUT_BYTES"):
        sig[name] = "constexpr"
    # Pointers a launch passes as None (the JIT makes them constexpr None): the FP8-output scales of an
    # activation-dtype output; bias and operand scales an FP8-output launch does not read.
    unused = ["qs_ptr"] if not out_quant else (["bg_ptr", "bu_ptr"] if not has_bias else []) + (
        ["xs_ptr", "wgs_ptr", "wus_ptr"] if not fp8 else [])
    sig["qs_ptr"], sig["stride_qsm"] = "*fp32", "i32"
    for name in unused:
        sig[name] = "constexpr"
        constexprs[name] = None
    sig = {n: sig[n] for n in _gated_mlp_kernel.arg_names}  # declaration order
    must = []
    # wgmma needs a 64-row warpgroup tile: every Hopper config with BLOCK_M >= 64 must use it.
    if arch == 90 and bm >= 64 and dtype != torch.float32:
        must.append(r"wgmma\.mma_async.*e4m3" if fp8 else r"wgmma\.mma_async")
    align = ("" if aligned or cfg.use_tma else " unaligned") + (" mn-major-w" if w_mn else "")
    label = (f"gated_mlp{align} {str(dtype).replace('torch.', '')}->{str(out_dtype or dtype).replace('torch.', '')} "
             f"{act}{' bias' if has_bias else ''} {cfg.label()}"
             + (f" out_quant={out_quant}{' bytes' if out_bytes else ''}" if out_quant else ""))
    return CompileSpec(_gated_mlp_kernel, sig, constexprs, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                       label=label, ptx_must_contain=must)


def compile_specs(arch: int) -> list[CompileSpec]:
    """Every config :func:`pick_config` can choose for ``sm_<arch>`` (80, 89, 90).

    fp16 and bf16: every candidate block config with silu, plus the unaligned-operand config (with and
    without 16-byte alignment, the latter being an aligned input with an odd intermediate size); the
    other activations and the bias path change only the epilogue, so they are built on the large and
    mid configs. fp32: its single config. FP8 (sm_89+): every candidate with bf16 output, fp16 output
    on the large config, and the unaligned config.
    """
    specs: list[CompileSpec] = []
    family = _arch_family(arch)
    for dtype in (torch.float16, torch.bfloat16):
        for cfg in candidate_configs(arch, dtype):
            specs.append(_spec(arch, dtype, cfg))
        un = _unaligned_config("fp16")
        specs.append(_spec(arch, dtype, un, aligned=False))
        specs.append(_spec(arch, dtype, un, aligned=True))
        specs.append(_spec(arch, dtype, un, aligned=False, w_mn=True))  # transposed-view weights
    large = _large_configs(family, "fp16")[0]
    mid = _mid_config(family, "fp16")
    wide = _wide_mid_config(family, "fp16")
    for cfg in (large, mid) + ((wide,) if wide is not None else ()):
        for act in ("gelu", "gelu_tanh"):
            specs.append(_spec(arch, torch.float16, cfg, act=act))
        specs.append(_spec(arch, torch.bfloat16, cfg, has_bias=True))
    specs.append(_spec(arch, torch.float32, _FP32_CONFIG, has_bias=True))
    specs.append(_spec(arch, torch.float32, _FP32_CONFIG, has_bias=True, aligned=False))
    specs.append(_spec(arch, torch.float32, _FP32_CONFIG, aligned=False, w_mn=True))
    for cfg in sweep_configs(arch, torch.float16):
        specs.append(_spec(arch, torch.float16, cfg))
    if arch >= 89:
        fp8 = torch.float8_e4m3fn
        for cfg in candidate_configs(arch, fp8) + sweep_configs(arch, fp8):
            specs.append(_spec(arch, fp8, cfg, out_dtype=torch.bfloat16))
        specs.append(_spec(arch, fp8, _large_configs(family, "fp8")[0], act="gelu", out_dtype=torch.float16))
        specs.append(_spec(arch, fp8, _unaligned_config("fp8"), out_dtype=torch.bfloat16, aligned=False))
    specs.extend(_fp8_out_specs(arch))
    return specs


def _fp8_out_specs(arch: int) -> list[CompileSpec]:
    """FP8 outputs, on the 128-wide configs block_out_config makes of every candidate: (1, 128)-block scales
    on each (fp16; bf16 shares the tiles and is built on the large and mid ones, with bias), the per-token
    variant (raw block amaxes) and static scales on the large and mid ones (they change only where the
    scale comes from); the unaligned and fp32 configs; e4m3 operands likewise on sm_89+ (sm_80 has no
    FP8 MMA)."""
    family = _arch_family(arch)
    block, static, raw = F8.QUANT_BLOCK, F8.QUANT_STATIC, _OUT_RAW_BLOCKS
    specs: list[CompileSpec] = []
    kinds = [(torch.float16, "fp16")] + ([(torch.float8_e4m3fn, "fp8")] if arch >= 89 else [])
    for dtype, kind in kinds:
        wide: dict[GatedMLPConfig, None] = {}
        for cfg in candidate_configs(arch, dtype):
            wide.setdefault(block_out_config(cfg, arch, dtype), None)
        for cfg in wide:
            specs.append(_spec(arch, dtype, cfg, out_quant=block))
        un = block_out_config(_unaligned_config(kind), arch, dtype, aligned=False)
        specs.append(_spec(arch, dtype, un, aligned=False, out_quant=block))
        specs.append(_spec(arch, dtype, un, aligned=False, out_quant=static))
        for cfg in (_large_configs(family, kind)[0], _mid_config(family, kind)):
            cfg = block_out_config(cfg, arch, dtype)
            specs.append(_spec(arch, dtype, cfg, out_quant=raw))
            specs.append(_spec(arch, dtype, cfg, act="gelu_tanh", out_quant=static))
            if kind == "fp16":
                specs.append(_spec(arch, torch.bfloat16, cfg, has_bias=True, out_quant=block))
    fp32 = block_out_config(_FP32_CONFIG, arch, torch.float32)
    specs.append(_spec(arch, torch.float32, fp32, has_bias=True, out_quant=block))
    fp32u = block_out_config(_FP32_CONFIG, arch, torch.float32, aligned=False)
    specs.append(_spec(arch, torch.float32, fp32u, aligned=False, out_quant=raw))
    specs.extend(F8.rescale_compile_specs(arch))  # the per-token step after the raw-block epilogue
    return specs


# ----------------------------------------------------------------------------------------------------
# Tuning entry (``triton-ops tune gated_mlp``)
# ----------------------------------------------------------------------------------------------------


def _tuning_configs(arch: int | None, dtype: torch.dtype) -> list[GatedMLPConfig]:
    seen: dict[GatedMLPConfig, None] = {}
    for c in candidate_configs(arch, dtype) + sweep_configs(arch, dtype):
        seen.setdefault(c, None)
    return list(seen)


def _tuning_valid(shape: tuple[int, ...], configs: list[dict]) -> list[dict]:
    """Skip configs built for the other regime: small-M tiles on prefill problems (16-row tiles re-read
    the weights M/16 times) and persistent 256-wide tiles on decode problems (fewer tiles than SMs)."""
    M = shape[0]
    keep = []
    for c in configs:
        cfg = GatedMLPConfig.from_label(c["config"])
        if M > 256 and cfg.block_m < 64:
            continue
        if M <= 64 and cfg.block_m > max(16, next_power_of_2(M)) * 2:
            continue
        keep.append(c)
    return keep


def tuning_entry():
    """How ``triton-ops tune`` searches this op: problem ``M x hidden x intermediate``, one parameter
    ``config`` whose values are config labels (:meth:`GatedMLPConfig.label`), the default is
    :func:`pick_config`'s choice. With tuned configs switched on, :func:`fused_gated_mlp` (fp16/bf16,
    16-byte aligned operands) launches the stored label for that exact problem."""
    from ..autotuner.entry import TuningEntry
    from ..performance import PerformanceProfile

    cap = device_capability() if torch.cuda.is_available() else None
    arch = None if cap is None else cap[0] * 10 + cap[1]
    labels = [c.label() for c in _tuning_configs(arch, torch.float16)]

    def make_args(shape, device, dtype):
        M, H, Inter = shape
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(M, H, device=device, generator=g).to(dtype)
        wg = (torch.randn(Inter, H, device=device, generator=g) / math.sqrt(max(H, 1))).to(dtype)
        wu = (torch.randn(Inter, H, device=device, generator=g) / math.sqrt(max(H, 1))).to(dtype)
        return (x, wg, wu), {}

    def run(x, wg, wu, config):
        out = torch.empty(x.shape[0], wg.shape[0], dtype=x.dtype, device=x.device)
        _run(x, wg, wu, out, "silu", None, None, config=GatedMLPConfig.from_label(config))
        return out

    def default_config(shape):
        M, H, Inter = shape
        a, sms = (arch, num_sms()) if arch is not None else (None, num_sms("cpu"))
        return {"config": pick_config(M, Inter, H, torch.float16, a, sms).label()}

    def profile(shape, dtype):
        M, H, Inter = shape
        es = torch.empty((), dtype=dtype).element_size()
        # two M x H x I products; x and both weights read once, the gated output written once
        return PerformanceProfile.gemm(M, 2 * Inter, H, dtype=dtype,
                                       bytes_moved=float((M * H + 2 * Inter * H + M * Inter) * es))

    return TuningEntry(
        kernel_type=TUNING_KERNEL_TYPE, config_space={"config": labels}, make_args=make_args, run=run,
        default_config=default_config,
        # the seed's prefill shape, Llama-3-8B prefill and decode
        default_shapes=[(16384, 4096, 11264), (16384, 4096, 14336), (128, 4096, 14336), (16, 4096, 14336)],
        cpu_shapes=[(40, 64, 48), (4, 32, 40)], shape_doc="M x hidden x intermediate", dtype=torch.float16,
        valid_configs=_tuning_valid, profile=profile, rtol=1e-2)


__all__ = [
    "ACTIVATIONS",
    "FusedGatedMLP",
    "GatedMLPConfig",
    "candidate_configs",
    "compile_specs",
    "fused_gated_mlp",
    "fused_gated_mlp_fp8",
    "gated_mlp_reference_torch",
    "pick_config",
    "quantize_rows_fp8",
    "sweep_configs",
    "tuning_entry",
]
