"""FP8 GEMM: ``out = (a * a_scale) @ (b * b_scale) + bias`` with fp32 accumulation.

One Triton kernel, ``_fp8_gemm_kernel``, covers every path; constexpr switches pick the variant:

* **native FP8** (sm_89 Ada, sm_90 Hopper): fp8 operands go straight into ``tl.dot`` (``wgmma ... e4m3`` on
  Hopper when the tile has >= 64 rows, ``mma ... e4m3`` on Ada), persistent grid (one program per SM
  walking tiles in grouped order so neighbouring programs share A rows / B columns in L2).
* **weight-only** (sm_80, and small M everywhere): B holds FP8 converted in registers to fp16/bf16, then an
  fp16/bf16 dot: by the hardware conversion on sm_89+, from the bits (read as uint8: Triton refuses the fp8
  types on sm_80) with shifts and masks on sm_80.
  Weight bytes are halved against fp16, so FP8Linear saves memory on Ampere too, and small-M (decode)
  GEMMs read the weights once at near copy speed without quantizing the activations.

Scales: a per tensor (``[]``/``[1]``), per row (``[M, 1]``) or per (1, 128) block (``[M, ceil(K/128)]``);
b per tensor, per column (``[1, N]``) or per (128, 128) block (``[ceil(K/128), ceil(N/128)]``). Row/column
scales are applied once in the epilogue; block scales multiply each K step's partial product (the K step
is then fixed at 128).

From fp16/bf16/fp32 inputs (``fp8_gemm(a, b)``) the quantization is per row for a and per column for b,
dynamic. Bytes per element, the choice made on paper (M = N = K = 4096, fp16, H100 copy ~2.9 TB/s):

* fused quantize-in-the-GEMM (fp16 tiles loaded and converted in registers) re-converts every A element
  N/BLOCK_N times and every B element M/BLOCK_M times: ~0.8 G conversions at ~2.5 ALU ops each, ~70 us of
  ALU work competing with a ~110 us GEMM; with on-the-fly per-tile amax it would be several times that.
* separate passes convert each element once: two launches (``quantize_operands_for_gemm``): a per row in
  one pass fused with b's column-amax partials (read 2 B + write 1 B for a, read 2 B for b), then b's
  scales reduced and b quantized K-major (the layout FP8 wgmma wants), bottom-up so most of its second
  read hits L2: ~100-128 MB at 4096^3, ~30 us, then a pure FP8 GEMM at full tensor-core rate.

The separate passes win on paper and keep the GEMM at the cuBLASLt-class rate, so that is the path
(docs/perf-notes.md, "fp8", has the numbers).

Small M (decode, M <= 64) streams the weights: one 16/32/64-row tile, 64 output columns per program; on
sm_89+ the fp8 weights are converted by the hardware (``HW_CVT``; the bit decode's integer ops bounded the
weight streaming). K is split only when the N tiles are fewer than the SMs, for ~4 programs per SM (fp32
partials summed by ``_splitk_reduce_kernel``, which also runs the epilogue). Launch configs come from
``gemm_config`` or, when tuned configs are switched on, from the tuning cache (``triton-ops tune
fp8_gemm``, see ``tuning_entry``).

Weights may be given transposed (``b = w.t()`` with ``w [N, K]`` contiguous) at no cost: the kernel takes
any strides; K-major B (``stride_bk == 1``) is the fast layout for FP8 on Hopper.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..compile_check import CompileSpec
from ..exceptions import InvalidArgumentError, ShapeError
from ..utils import cdiv, device_arch, num_sms
from ..validation import (
    FLOAT_DTYPES,
    FP8_DTYPES,
    check_dtype,
    check_runnable_device,
    check_same_device,
    check_tensor,
    direct_launch_ok,
)
from ._tiles import grouped_tile_coords
from .fp8_quantize import _quantize_impl, check_scale_values, quantize_operands_for_gemm

# ---------------------------------------------------------------------------------------------------
# Layer 1: kernel
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _decode_fp8_bits(bits, E5M2: tl.constexpr, TY: tl.constexpr):
    """FP8 bit patterns (uint8) -> fp16 (then TY), exact, with no FP8 instruction (works on sm_80).

    e5m2 is the top byte of an fp16. For e4m3, ``(bits & 0x7F) << 7`` read as fp16 is the value divided
    by 2^8 for normals and subnormals alike (fp16 exponent bias 15 vs 7); the launcher folds the 2^8
    back into the epilogue scale. The e4m3 NaN code decodes to a finite value: quantized weights never
    hold NaN (quantization saturates).
    """
    b = bits.to(tl.uint16)
    if E5M2:
        h = (b << 8).to(tl.float16, bitcast=True)
    else:
        h = (((b & 0x7F) << 7) | ((b & 0x80) << 8)).to(tl.float16, bitcast=True)
    return h.to(TY)


@triton.jit
def _epilogue(acc, rm_c, rn_c, as_ptr, bs_ptr, bias_ptr, stride_asm, stride_bsn, out_factor,
              A_SCALE: tl.constexpr, B_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """fp32 tile -> per-tensor / per-row / per-column scales, decode factor, bias (still fp32)."""
    acc = acc * out_factor
    if A_SCALE == 0:
        acc = acc * tl.load(as_ptr)
    elif A_SCALE == 1:
        acc = acc * tl.load(as_ptr + rm_c * stride_asm)[:, None]
    if B_SCALE == 0:
        acc = acc * tl.load(bs_ptr)
    elif B_SCALE == 1:
        acc = acc * tl.load(bs_ptr + rn_c * stride_bsn)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + rn_c).to(tl.float32)[None, :]
    return acc


@triton.jit
def _fp8_gemm_kernel(a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr, bias_ptr, ws_ptr, M, N, K,
                     stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                     stride_asm, stride_ask, stride_bsk, stride_bsn, out_factor, NUM_PROGS, k_tiles_per_split,
                     A_SCALE: tl.constexpr, B_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                     A_DECODE: tl.constexpr, B_DECODE: tl.constexpr, A_E5M2: tl.constexpr,
                     B_E5M2: tl.constexpr, DOT_TY: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr, FLATTEN: tl.constexpr, SPLIT_K: tl.constexpr,
                     HW_CVT: tl.constexpr = False):
    """Persistent tiled GEMM. Scale modes (A_SCALE / B_SCALE): 0 one scale, 1 per row of a / per column
    of b, 2 per (1, BLOCK_K) block of a / per (BLOCK_K, 128) block of b (BLOCK_K == 128).
    *_DECODE: the operand holds FP8 bits (uint8) decoded to DOT_TY in registers; otherwise it feeds
    ``tl.dot`` as loaded (fp8 on sm_89+, or fp16/bf16 for the weight-only path). ``out_factor`` folds
    the decode's power of two into the epilogue. HW_CVT (sm_89+): the decoded operand is loaded with its
    fp8 type and converted by the hardware (``cvt.rn.f16x2.e4m3x2``, two elements per instruction) instead
    of the ~6 integer ops per element of the bit decode, which bound the decode GEMM's weight streaming.
    SPLIT_K > 1: work item = (tile, K slice of ``k_tiles_per_split`` K steps); the raw fp32 partial goes
    to ``ws[split, M, N]`` and ``_splitk_reduce_kernel`` sums the slices and runs the epilogue."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    k_tiles = tl.cdiv(K, BLOCK_K)
    offs_k = tl.arange(0, BLOCK_K)
    for item in tl.range(pid, num_tiles * SPLIT_K, NUM_PROGS, flatten=FLATTEN):
        if SPLIT_K > 1:
            tile = item // SPLIT_K
            split = item % SPLIT_K
            kt0 = split * k_tiles_per_split
            kt1 = tl.minimum(kt0 + k_tiles_per_split, k_tiles)
        else:
            tile = item
            kt0 = 0
            kt1 = k_tiles
        pid_m, pid_n = grouped_tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
        rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        mmask = rm < M
        nmask = rn < N
        # Clamp out-of-range rows/cols to a valid one instead of masking the loads on M/N: unmasked
        # loads along M and N keep the pipeline's loads vectorised; the store masks them out.
        rm_c = tl.where(mmask, rm, 0)
        rn_c = tl.where(nmask, rn, 0)
        a_ptrs = a_ptr + rm_c[:, None] * stride_am + offs_k[None, :] * stride_ak
        b_ptrs = b_ptr + offs_k[:, None] * stride_bk + rn_c[None, :] * stride_bn
        if SPLIT_K > 1:
            a_ptrs += kt0 * BLOCK_K * stride_ak
            b_ptrs += kt0 * BLOCK_K * stride_bk
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for kt in range(kt0, kt1):
            kmask = offs_k < K - kt * BLOCK_K
            if A_DECODE:
                if HW_CVT:
                    a = tl.load(a_ptrs, mask=kmask[None, :], other=0.0).to(DOT_TY)
                else:
                    a = _decode_fp8_bits(tl.load(a_ptrs, mask=kmask[None, :], other=0), A_E5M2, DOT_TY)
            else:
                a = tl.load(a_ptrs, mask=kmask[None, :], other=0.0)
            if B_DECODE:
                if HW_CVT:
                    b = tl.load(b_ptrs, mask=kmask[:, None], other=0.0).to(DOT_TY)
                else:
                    b = _decode_fp8_bits(tl.load(b_ptrs, mask=kmask[:, None], other=0), B_E5M2, DOT_TY)
            else:
                b = tl.load(b_ptrs, mask=kmask[:, None], other=0.0)
            if A_SCALE == 2 or B_SCALE == 2:
                part = tl.dot(a, b)
                if A_SCALE == 2:
                    sa = tl.load(as_ptr + rm_c * stride_asm + kt * stride_ask)
                    part = part * sa[:, None]
                if B_SCALE == 2:
                    sb = tl.load(bs_ptr + kt * stride_bsk + (rn_c // 128) * stride_bsn)
                    part = part * sb[None, :]
                acc += part
            else:
                acc = tl.dot(a, b, acc)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
        if SPLIT_K > 1:
            w_ptrs = ws_ptr + (split.to(tl.int64) * M + rm[:, None]) * N + rn[None, :]
            tl.store(w_ptrs, acc, mask=mmask[:, None] & nmask[None, :])
        else:
            acc = _epilogue(acc, rm_c, rn_c, as_ptr, bs_ptr, bias_ptr, stride_asm, stride_bsn, out_factor,
                            A_SCALE, B_SCALE, HAS_BIAS)
            c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
            tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


@triton.jit
def _splitk_reduce_kernel(ws_ptr, c_ptr, as_ptr, bs_ptr, bias_ptr, M, N, stride_cm, stride_cn, stride_asm,
                          stride_bsn, out_factor, SPLIT: tl.constexpr, A_SCALE: tl.constexpr,
                          B_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    """Sum the SPLIT fp32 partials of a split-K GEMM, then the shared epilogue (scales, bias, cast)."""
    rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = rm < M
    nmask = rn < N
    omask = mmask[:, None] & nmask[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for sp in range(SPLIT):
        acc += tl.load(ws_ptr + (sp * M + rm[:, None]) * N + rn[None, :], mask=omask, other=0.0)
    acc = _epilogue(acc, tl.where(mmask, rm, 0), tl.where(nmask, rn, 0), as_ptr, bs_ptr, bias_ptr, stride_asm,
                    stride_bsn, out_factor, A_SCALE, B_SCALE, HAS_BIAS)
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn, acc.to(c_ptr.dtype.element_ty), mask=omask)


# ---------------------------------------------------------------------------------------------------
# Layer 2: configs and launcher
# ---------------------------------------------------------------------------------------------------

#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per name. Shared memory per stage for fp8 operands
#: is (BM + BN) * BK bytes: 48 KB for "h_256" (4 stages = 192 KB of the H100's 227 KB).
CONFIGS = {
    # Hopper, native FP8: 128x256 accumulator = 128 fp32 registers/thread over 8 warps (two warpgroups).
    "h_256": (128, 256, 128, 8, 4),
    "h_128": (128, 128, 128, 8, 4),  # fewer tiles than SMs with 128x256, or block-scaled b
    # Ada (sm_89, ~99 KB shared memory per block): 16 KB/stage for fp8 at 128x128x64.
    "ada_128": (128, 128, 64, 8, 4),
    # Ampere weight-only / both decoded: fp16 A 128x64 (16 KB) + uint8 B 64x128 (8 KB) per stage.
    "amp_128": (128, 128, 64, 8, 4),
    # Small M (decode): one M tile, narrow N tiles so N/64 programs cover the SMs; deep K for bytes in flight.
    "small_16": (16, 64, 256, 4, 4),
    "small_32": (32, 64, 256, 4, 4),
    "small_64": (64, 64, 128, 4, 4),
    # Candidate for M <= 16: half-width tiles, 448 programs for N=14336 (3 resident per SM at 64 KB of
    # shared memory) instead of 224 on 132 SMs; costs twice the L2 reads of the activations.
    "small_16_n32": (16, 32, 256, 4, 4),
    # Block-scaled (K step fixed at 128 by the scale groups): the per-step partial product doubles the
    # accumulator registers, so one warpgroup owns a 64x128 tile (128x128 over 8 warps spilled 1.5 KB).
    "h_blk": (64, 128, 128, 4, 4),
    "blk_ada": (64, 128, 128, 4, 3),
    "amp_blk": (64, 128, 128, 8, 3),  # both operands decoded: 4 warps spilled 100 B on sm_80
}
#: M at or below this takes the small-M configs.
SMALL_M = 64
#: Split-K of the small-M configs: aim for this many programs per SM (each streams its weight slice
#: through a 3-4 stage cp.async pipeline; ~3 resident per SM keep ~150 KB of weights in flight per SM).
SMALL_PROGS_PER_SM = 4
MAX_SPLIT_K = 8
#: Cache family of tuned configs (``triton-ops tune fp8_gemm``), keyed by (M, N, K).
KERNEL_TYPE = "fp8_gemm"


def config_names(arch: int, *, weight_only: bool = False, block_scaled: bool = False,
                 out_fp32: bool = False) -> list[str]:
    """Every config a launch of this kind may use on ``arch`` (the tuning space; block-scaled launches keep
    the heuristic's BLOCK_K == 128 config)."""
    if block_scaled:
        return ["h_blk"] if (arch >= 90 and not weight_only) else ["blk_ada"] if (arch >= 89 and not weight_only) \
            else ["amp_blk"]
    small = ["small_16", "small_16_n32", "small_32", "small_64"]
    if weight_only or arch < 89:
        return ["amp_128"] + small
    if arch >= 90:
        return (["h_128"] if out_fp32 else ["h_256", "h_128"]) + ["ada_128"] + small
    return ["ada_128"] + small


def _small_split(tiles: int, k_tiles: int, sms: int) -> int:
    """Split-K for the weight-streaming small-M configs, only when N/BLOCK_N tiles leave SMs idle (fewer
    tiles than SMs); then ~4 programs per SM, each at least two K steps long. At M=16, N=14336 (224 tiles,
    132 SMs) split-K 3 measured 29.7 us against 25.6 us without (CUDA graphs, H200): the partials' 2.8 MB
    round trip and the reduction launch cost more than the uneven SM load, so enough tiles means no split."""
    if k_tiles < 4 or tiles >= sms:
        return 1
    return max(1, min(cdiv(SMALL_PROGS_PER_SM * sms, tiles), k_tiles // 2, MAX_SPLIT_K))


def _finish_config(name: str, M: int, N: int, K: int, arch: int, sms: int, *, group_m: int = 8,
                   split_k: int | None = None) -> dict:
    bm, bn, bk, warps, stages = CONFIGS[name]
    tiles = cdiv(M, bm) * cdiv(N, bn)
    k_tiles = max(1, cdiv(K, bk))
    small = name.startswith("small")
    if split_k is None:
        split_k = _small_split(tiles, k_tiles, sms) if small else 1
    split_k = max(1, min(int(split_k), k_tiles))
    per = cdiv(k_tiles, split_k)
    split_k = cdiv(k_tiles, per)  # no empty K slices
    persistent = not small
    items = tiles * split_k
    return {"name": name, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages,
            "GROUP_M": int(group_m), "SPLIT_K": split_k, "K_TILES_PER_SPLIT": per,
            "NUM_PROGS": max(1, min(items, sms) if persistent else items),
            # loop flattening of the persistent loop assumes a fixed inner trip count
            "FLATTEN": persistent and arch >= 90 and split_k == 1}


def gemm_config(M: int, N: int, K: int, arch: int, *, weight_only: bool = False, block_scaled: bool = False,
                sms: int = 132, out_fp32: bool = False) -> dict:
    """Pure function of the problem -> kernel config (name, block sizes, warps, stages, split-K, grid)."""
    if M <= SMALL_M and not block_scaled:
        name = "small_16" if M <= 16 else "small_32" if M <= 32 else "small_64"
    elif arch >= 90 and not weight_only:
        tiles_256 = cdiv(M, 128) * cdiv(N, 256)
        # fp32 output: the 128x256 epilogue staging (128 KB) plus 4 stages needs 320 KB > 227 KB.
        name = "h_blk" if block_scaled else "h_128" if (tiles_256 < sms or out_fp32) else "h_256"
    elif arch >= 89 and not weight_only:
        name = "blk_ada" if block_scaled else "ada_128"
    else:
        name = "amp_blk" if block_scaled else "amp_128"
    return _finish_config(name, M, N, K, arch, sms)


def tuned_config(M: int, N: int, K: int, arch: int, device, *, weight_only: bool = False,
                 block_scaled: bool = False, sms: int = 132, out_fp32: bool = False) -> dict:
    """The heuristic's config, or the one ``triton-ops tune`` stored for (M, N, K) when tuned configs are
    switched on (``triton_ops.use_tuned_configs()`` / ``TRITON_OPS_USE_TUNED=1``) and it is valid here."""
    from ..autotuner import runtime

    cfg = gemm_config(M, N, K, arch, weight_only=weight_only, block_scaled=block_scaled, sms=sms,
                      out_fp32=out_fp32)
    if block_scaled or not runtime.ENABLED:
        return cfg
    default = {"name": cfg["name"], "GROUP_M": cfg["GROUP_M"], "SPLIT_K": cfg["SPLIT_K"]}
    want = runtime.resolve(KERNEL_TYPE, (M, N, K), device, default)
    if want == default or want["name"] not in config_names(arch, weight_only=weight_only, out_fp32=out_fp32):
        return cfg
    return _finish_config(want["name"], M, N, K, arch, sms, group_m=want["GROUP_M"], split_k=want["SPLIT_K"])


def _arch(device: torch.device) -> int:
    """Compute capability as an int (90, 89, 80); the interpreter runs the Hopper path."""
    arch = device_arch(device)
    return 90 if arch is None else arch


def _scale_mode(s: torch.Tensor, rows: int, groups: int, name: str, row_like: bool) -> int:
    """0 tensor, 1 row/column, 2 block. ``rows``: M for a / N for b; ``groups``: ceil(K/128)."""
    if s.numel() == 1:
        return 0
    if row_like and (tuple(s.shape) in ((rows, 1), (rows,))):
        return 1
    if not row_like and (tuple(s.shape) in ((1, rows), (rows,))):
        return 1
    if row_like and tuple(s.shape) == (rows, groups):
        return 2
    if not row_like and tuple(s.shape) == (groups, cdiv(rows, 128)):
        return 2
    want = (f"[] or [1] (tensor), [{rows}, 1] (row) or [{rows}, {groups}] ((1, 128) blocks)" if row_like else
            f"[] or [1] (tensor), [1, {rows}] (column) or [{groups}, {cdiv(rows, 128)}] ((128, 128) blocks)")
    raise ShapeError(f"{name} has shape {tuple(s.shape)}; expected {want}")


def _scale_strides(s: torch.Tensor, mode: int, row_like: bool) -> tuple[int, int]:
    if mode in (0, 3):
        return 0, 0
    if mode == 1:
        st = s.stride(0) if (row_like or s.dim() == 1) else s.stride(-1)
        return (st, 0) if row_like else (0, st)
    return s.stride(0), s.stride(1)


#: A_SCALE mode "no scale for a" (weight-only: the activations are not quantized).
_NO_SCALE = 3


def _launch(a2: torch.Tensor, b: torch.Tensor, a_s: torch.Tensor, b_s: torch.Tensor, bias, out: torch.Tensor,
            a_mode: int, b_mode: int, *, a_decode: bool, b_decode: bool, weight_only: bool, arch: int,
            config: dict | None = None):
    M, K = a2.shape
    N = b.shape[1]
    block_scaled = 2 in (a_mode, b_mode)
    if config is None:
        config = tuned_config(M, N, K, arch, a2.device, weight_only=weight_only or a_decode,
                              block_scaled=block_scaled, sms=num_sms(a2.device), out_fp32=out.dtype == torch.float32)
    cfg = config
    if block_scaled and cfg["BLOCK_K"] != 128:
        raise AssertionError("block-scaled configs must use BLOCK_K == 128")  # config table invariant
    factor = 1.0
    a_e5 = a2.dtype == torch.float8_e5m2
    b_e5 = b.dtype == torch.float8_e5m2
    # Weight-only on sm_89+: hardware fp8 -> fp16 conversion (exact), no power-of-two factor.
    hw_cvt = weight_only and arch >= 89
    if hw_cvt:
        a_decode_bits = b_decode_bits = False
    else:
        a_decode_bits, b_decode_bits = a_decode, b_decode
    if a_decode_bits:
        factor *= 1.0 if a_e5 else 256.0
        a2 = a2.view(torch.uint8)
    if b_decode_bits:
        factor *= 1.0 if b_e5 else 256.0
        b = b.view(torch.uint8)
    dot_ty = tl.bfloat16 if (a2.dtype == torch.bfloat16) else tl.float16
    sam, sak = _scale_strides(a_s, a_mode, True)
    sbk, sbn = _scale_strides(b_s, b_mode, False)
    split = cfg["SPLIT_K"]
    ws = torch.empty(split, M, N, dtype=torch.float32, device=out.device) if split > 1 else out
    has_bias = bias is not None
    bias_arg = bias if has_bias else a_s
    _fp8_gemm_kernel[(cfg["NUM_PROGS"],)](
        a2, b, out, a_s, b_s, bias_arg, ws, M, N, K,
        a2.stride(0), a2.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        sam, sak, sbk, sbn, factor, cfg["NUM_PROGS"], cfg["K_TILES_PER_SPLIT"],
        A_SCALE=a_mode, B_SCALE=b_mode, HAS_BIAS=has_bias, A_DECODE=a_decode, B_DECODE=b_decode,
        A_E5M2=a_e5, B_E5M2=b_e5, DOT_TY=dot_ty, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"], FLATTEN=cfg["FLATTEN"], SPLIT_K=split, HW_CVT=hw_cvt,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if split > 1:
        rbm, rbn = REDUCE_BLOCK
        _splitk_reduce_kernel[(cdiv(M, rbm), cdiv(N, rbn))](
            ws, out, a_s, b_s, bias_arg, M, N, out.stride(0), out.stride(1), sam, sbn, factor, SPLIT=split,
            A_SCALE=a_mode, B_SCALE=b_mode, HAS_BIAS=has_bias, BLOCK_M=rbm, BLOCK_N=rbn, num_warps=4)
    return out


#: Tile of the split-K reduction (fp32 partials: 16 x 64 x 4 B = 4 KB per slice and program; 224 programs
#: for the 16 x 14336 decode output, so the 2.8 MB of partials are read by every SM at once).
REDUCE_BLOCK = (16, 64)


def _flatten_and_allocate(a: torch.Tensor, N: int, bias, out_dtype: torch.dtype):
    """``a [..., K]`` as ``[M, K]`` and the ``[M, N]`` output. ``trivial`` is True when nothing is left to
    launch: an empty output, or K == 0 (the output is then just the bias, or zeros)."""
    lead = a.shape[:-1]
    K = a.shape[-1]
    M = 1
    for d in lead:
        M *= d
    a2 = a.reshape(M, K)
    out = torch.empty(M, N, dtype=out_dtype, device=a.device)
    trivial = M == 0 or N == 0 or K == 0
    if K == 0 and M and N:
        out.zero_()
        if bias is not None:
            out += bias.to(out_dtype)
    return lead, M, K, N, a2, out, trivial


def _gemm_impl(a: torch.Tensor, b: torch.Tensor, a_scale, b_scale, bias, out_dtype: torch.dtype,
               path: str, config: dict | None = None) -> torch.Tensor:
    """Launcher (inputs validated). ``path``: "auto", or "native" / "decode" to force a variant (tests).
    ``config``: a full config dict (as from gemm_config) instead of the heuristic (tuning)."""
    lead, M, K, N, a2, out, trivial = _flatten_and_allocate(a, b.shape[1], bias, out_dtype)
    if trivial:
        return out.reshape(*lead, N)
    arch = _arch(a.device)
    decode = path == "decode" or (path == "auto" and arch < 89)
    if a.dtype in FLOAT_DTYPES and b.dtype in FLOAT_DTYPES:
        # a per row and b per column, two launches (see quantize_operands_for_gemm)
        a2, a_scale, b, b_scale = quantize_operands_for_gemm(a2, b)
        a_mode = b_mode = 1
    else:
        if a.dtype in FLOAT_DTYPES:
            a2, a_scale = _quantize_impl(a2, "e4m3fn", "row", 1, 1, None)
        if b.dtype in FLOAT_DTYPES:
            b, b_scale = _quantize_impl(b, "e4m3fn", "column", 1, 1, None, transpose_out=True)
        a_mode = _scale_mode(a_scale, M, cdiv(K, 128), "a_scale", True)
        b_mode = _scale_mode(b_scale, N, cdiv(K, 128), "b_scale", False)
    a_s = a_scale if a_scale.dtype == torch.float32 else a_scale.to(torch.float32)
    b_s = b_scale if b_scale.dtype == torch.float32 else b_scale.to(torch.float32)
    _launch(a2, b, a_s, b_s, bias, out, a_mode, b_mode, a_decode=decode, b_decode=decode, weight_only=False,
            arch=arch, config=config)
    return out.reshape(*lead, N)


def _weight_only_impl(x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor, bias, out_dtype,
                      config: dict | None = None) -> torch.Tensor:
    """``x [.., K]`` fp16/bf16 times FP8 ``w_t [K, N]`` (decoded in registers) times per-column/tensor scales."""
    lead, M, K, N, x2, out, trivial = _flatten_and_allocate(x, w_t.shape[1], bias, out_dtype)
    if trivial:
        return out.reshape(*lead, N)
    if x2.dtype == torch.float32:
        x2 = x2.to(torch.float16)  # the tensor-core dot takes fp16/bf16; weights carry 4 significant bits
    b_mode = _scale_mode(w_scale, N, cdiv(K, 128), "w_scale", False)
    w_s = w_scale if w_scale.dtype == torch.float32 else w_scale.to(torch.float32)
    _launch(x2, w_t, w_s, w_s, bias, out, _NO_SCALE, b_mode, a_decode=False, b_decode=True, weight_only=True,
            arch=_arch(x.device), config=config)
    return out.reshape(*lead, N)


# ---------------------------------------------------------------------------------------------------
# Layer 3: custom ops
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op("triton_ops::fp8_gemm", mutates_args=())
def _fp8_gemm_op(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor | None, b_scale: torch.Tensor | None,
                 bias: torch.Tensor | None, out_dtype: torch.dtype, path: str) -> torch.Tensor:
    return _gemm_impl(a, b, a_scale, b_scale, bias, out_dtype, path)


@_fp8_gemm_op.register_fake
def _(a, b, a_scale, b_scale, bias, out_dtype, path):
    return a.new_empty(*a.shape[:-1], b.shape[1], dtype=out_dtype)


@torch.library.custom_op("triton_ops::fp8_weight_only_gemm", mutates_args=())
def _fp8_weight_only_op(x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                        out_dtype: torch.dtype) -> torch.Tensor:
    return _weight_only_impl(x, w_t, w_scale, bias, out_dtype)


@_fp8_weight_only_op.register_fake
def _(x, w_t, w_scale, bias, out_dtype):
    return x.new_empty(*x.shape[:-1], w_t.shape[1], dtype=out_dtype)


# ---------------------------------------------------------------------------------------------------
# Layer 4: functional API
# ---------------------------------------------------------------------------------------------------

_OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_operands(a, b, bias, out_dtype):
    check_tensor(a, "a")
    check_tensor(b, "b")
    check_dtype(a, "a", FLOAT_DTYPES + FP8_DTYPES)
    check_dtype(b, "b", FLOAT_DTYPES + FP8_DTYPES)
    if a.dim() < 2:
        raise ShapeError(f"a must be [M, K] (or [..., K]), got shape {tuple(a.shape)}")
    if b.dim() != 2:
        raise ShapeError(f"b must be [K, N] (a weight w [N, K] is passed as w.t()), got shape {tuple(b.shape)}")
    if a.shape[-1] != b.shape[0]:
        raise ShapeError(f"inner dims differ: a is {tuple(a.shape)} (K={a.shape[-1]}) but b is {tuple(b.shape)} "
                         f"(K={b.shape[0]}); a @ b needs a [M, K] and b [K, N]")
    if out_dtype is not None and out_dtype not in _OUT_DTYPES:
        raise InvalidArgumentError(f"out_dtype={out_dtype!r} is not supported; expected float16, bfloat16 or "
                                   "float32")
    if bias is not None:
        check_tensor(bias, "bias")
        check_dtype(bias, "bias", FLOAT_DTYPES)
        if tuple(bias.shape) != (b.shape[1],):
            raise ShapeError(f"bias has shape {tuple(bias.shape)}, expected ({b.shape[1]},)")


def fp8_gemm(a: torch.Tensor, b: torch.Tensor, *, a_scale: torch.Tensor | None = None,
             b_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
             out_dtype: torch.dtype | None = None, check_scales: bool = True,
             _path: str = "auto") -> torch.Tensor:
    """``a @ b`` in FP8 with fp32 accumulation; ``a [M, K]`` (or ``[..., K]``), ``b [K, N]``.

    (The FP8 tensor cores of sm_89/sm_90 add products inside an MMA with ~14 mantissa bits, not 24: on
    identical FP8 operands the result differs from an exact fp32 sum by ~1e-4 relative, far below the
    e4m3 quantization error of ~3e-2.)

    * fp16/bf16/fp32 operands are quantized automatically to e4m3 (dynamic: a per row, b per column).
    * FP8 operands (e4m3fn or e5m2) come with their dequantization scales (``x ~= q.float() * scale``):
      ``a_scale`` ``[]``/``[1]``, ``[M, 1]`` or ``[M, ceil(K/128)]`` (1x128 blocks); ``b_scale`` ``[]``/``[1]``,
      ``[1, N]`` or ``[ceil(K/128), ceil(N/128)]`` (128x128 blocks).
    * ``bias [N]`` and the output dtype (fp16/bf16/fp32; default: a's dtype for float a, bf16 for FP8 a)
      are applied in the epilogue. ``b`` may be a transposed view (``w.t()``): no copy is made.
    * ``check_scales`` verifies given scales are finite and positive (one host sync; skipped under
      torch.compile and CUDA-graph capture). Pass False on hot paths whose scales come from quantize_fp8.
    """
    _check_operands(a, b, bias, out_dtype)
    tensors = {"a": a, "b": b, "a_scale": a_scale, "b_scale": b_scale, "bias": bias}
    for name, t in (("a_scale", a_scale), ("b_scale", b_scale)):
        if t is not None:
            check_tensor(t, name)
            check_dtype(t, name, FLOAT_DTYPES)
    check_same_device(tensors)
    for name, x, s in (("a", a, a_scale), ("b", b, b_scale)):
        if x.dtype in FP8_DTYPES and s is None:
            raise InvalidArgumentError(f"{name} is {x.dtype} and needs {name}_scale (its dequantization scale)")
        if x.dtype in FLOAT_DTYPES and s is not None:
            raise InvalidArgumentError(f"{name}_scale is only accepted with an FP8 {name}; {name} is {x.dtype} "
                                       f"and is quantized automatically (or quantize it with quantize_fp8 first)")
    M = 1
    for d in a.shape[:-1]:
        M *= d
    K, N = b.shape
    if a_scale is not None:
        _scale_mode(a_scale, M, cdiv(K, 128), "a_scale", True)
    if b_scale is not None:
        _scale_mode(b_scale, N, cdiv(K, 128), "b_scale", False)
    if _path not in ("auto", "native", "decode"):
        raise InvalidArgumentError(f"_path={_path!r}; expected 'auto', 'native' or 'decode'")
    check_runnable_device(a.device, "a")
    if check_scales:
        for name, s in (("a_scale", a_scale), ("b_scale", b_scale)):
            if s is not None:
                check_scale_values(s, name)
    if out_dtype is None:
        out_dtype = a.dtype if a.dtype in FLOAT_DTYPES else torch.bfloat16
    if direct_launch_ok(a, b, a_scale, b_scale, bias):
        return _gemm_impl(a, b, a_scale, b_scale, bias, out_dtype, _path)
    return _fp8_gemm_op(a, b, a_scale, b_scale, bias, out_dtype, _path)


def fp8_weight_only_gemm(x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor, *,
                         bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x @ dequant(w_t)``: fp16/bf16/fp32 activations, FP8 weights ``w_t [K, N]`` (usually ``w.t()`` of an
    ``[N, K]`` weight) decoded inside the kernel; ``w_scale`` per tensor or per column ``[1, N]``.

    Works on every GPU from sm_80 (no FP8 instruction is used); the small-M (decode) path of FP8Linear.
    """
    _check_operands(x, w_t, bias, out_dtype)
    check_dtype(x, "x", FLOAT_DTYPES)
    check_dtype(w_t, "w_t", FP8_DTYPES)
    check_tensor(w_scale, "w_scale")
    check_dtype(w_scale, "w_scale", FLOAT_DTYPES)
    check_same_device({"x": x, "w_t": w_t, "w_scale": w_scale, "bias": bias})
    mode = _scale_mode(w_scale, w_t.shape[1], cdiv(w_t.shape[0], 128), "w_scale", False)
    if mode == 2:
        raise ShapeError(f"w_scale has shape {tuple(w_scale.shape)}; the weight-only path takes a per-tensor or "
                         f"per-column scale ([1, {w_t.shape[1]}])")
    check_runnable_device(x.device, "x")
    if out_dtype is None:
        out_dtype = x.dtype
    if direct_launch_ok(x, w_t, w_scale, bias):
        return _weight_only_impl(x, w_t, w_scale, bias, out_dtype)
    return _fp8_weight_only_op(x, w_t, w_scale, bias, out_dtype)


# ---------------------------------------------------------------------------------------------------
# Autotuner integration (``triton-ops tune fp8_gemm``)
# ---------------------------------------------------------------------------------------------------


def _device_arch_sms(device) -> tuple[int, int]:
    dev = torch.device(device)
    return _arch(dev), num_sms(dev)


def tuning_entry():
    """The GEMM kernel's tuning entry: config name (tile shape, warps, stages), GROUP_M and SPLIT_K per
    (M, N, K), timed on pre-quantized e4m3 operands (a per row, b = w.t() per column, bf16 out): the
    quantization passes do not depend on the config. The stored winner is used by every fp8_gemm /
    fp8_weight_only_gemm launch of that (M, N, K) when tuned configs are switched on, if it is valid
    for that launch (e.g. no fp32-output 128x256 tile, no FP8 tile on the weight-only path)."""
    from ..autotuner.entry import TuningEntry
    from ..performance import PerformanceProfile

    names = [n for n in CONFIGS if n not in ("h_blk", "blk_ada", "amp_blk")]

    def make_args(shape, device, dtype):
        from .fp8_quantize import quantize_fp8

        M, N, K = shape
        a = torch.randn(M, K, device=device, dtype=torch.float32)
        w = torch.randn(N, K, device=device, dtype=torch.float32)
        qa, sa = quantize_fp8(a, granularity="row")
        qw, sw = quantize_fp8(w, granularity="row")
        return (qa, qw.t(), sa, sw.t()), {}

    def run(qa, qb, sa, sb, *, name, GROUP_M, SPLIT_K):
        M, K = qa.shape
        N = qb.shape[1]
        arch, sms = _device_arch_sms(qa.device)
        cfg = _finish_config(name, M, N, K, arch, sms, group_m=GROUP_M, split_k=SPLIT_K)
        return _gemm_impl(qa, qb, sa, sb, None, torch.bfloat16, "auto", config=cfg)

    def default_config(shape):
        M, N, K = shape
        arch, sms = _device_arch_sms("cuda" if torch.cuda.is_available() else "cpu")
        cfg = gemm_config(M, N, K, arch, sms=sms)
        return {"name": cfg["name"], "GROUP_M": cfg["GROUP_M"], "SPLIT_K": cfg["SPLIT_K"]}

    def valid_configs(shape, configs):
        M, N, K = shape
        arch, _ = _device_arch_sms("cuda" if torch.cuda.is_available() else "cpu")
        ok = set(config_names(arch))
        out = []
        for c in configs:
            small = c["name"].startswith("small")
            if c["name"] not in ok or (small and M > CONFIGS[c["name"]][0] * 4):
                continue  # a 16-row tile for thousands of rows re-reads b hundreds of times
            if small and c["GROUP_M"] != 8:
                continue  # one M tile: grouping changes nothing
            if c["SPLIT_K"] > max(1, cdiv(K, CONFIGS[c["name"]][2]) // 2):
                continue
            out.append(c)
        return out

    return TuningEntry(
        kernel_type=KERNEL_TYPE,
        config_space={"name": names, "GROUP_M": [8, 16], "SPLIT_K": [1, 2, 4, 8]},
        make_args=make_args, run=run, default_config=default_config,
        # the seed's benchmark shape first, then the other GEMM and decode shapes
        default_shapes=[(4096, 4096, 4096), (1024, 4096, 4096), (8192, 8192, 8192), (16, 14336, 4096)],
        cpu_shapes=[(32, 64, 128), (8, 96, 512)],
        shape_doc="M x N x K (a [M, K] @ b [K, N])", dtype=torch.float8_e4m3fn, valid_configs=valid_configs,
        profile=lambda shape, dtype: PerformanceProfile.gemm(*shape, dtype=torch.float8_e4m3fn,
                                                             out_dtype=torch.bfloat16),
        # bf16 output rounding (2^-9) and the FP8 accumulator's order: candidates agree to ~1e-3
        rtol=1e-2)


# ---------------------------------------------------------------------------------------------------
# Compile specs: every config gemm_config can pick, per architecture
# ---------------------------------------------------------------------------------------------------

_SIG_BASE = {
    "a_ptr": None, "b_ptr": None, "c_ptr": "*bf16", "as_ptr": "*fp32", "bs_ptr": "*fp32", "bias_ptr": "*bf16",
    "ws_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "stride_am": "i64", "stride_ak": "constexpr",
    "stride_bk": "constexpr",
    "stride_bn": "i64", "stride_cm": "i64", "stride_cn": "constexpr", "stride_asm": "i64", "stride_ask": "i64",
    "stride_bsk": "i64", "stride_bsn": "i64", "out_factor": "fp32", "NUM_PROGS": "i32", "k_tiles_per_split": "i32",
}
_CONSTEXPR_NAMES = ("A_SCALE", "B_SCALE", "HAS_BIAS", "A_DECODE", "B_DECODE", "A_E5M2", "B_E5M2", "DOT_TY",
                    "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "FLATTEN", "SPLIT_K", "HW_CVT")


def _spec(name: str, arch: int, *, a_ty: str, b_ty: str, a_decode: bool, b_decode: bool, a_mode: int, b_mode: int,
          bias: bool, dot_ty=tl.float16, flatten: bool = False, out_ty: str = "bf16",
          must: list[str] | None = None, split_k: int = 1, hw_cvt: bool = False) -> CompileSpec:
    bm, bn, bk, warps, stages = CONFIGS[name]
    sig = dict(_SIG_BASE)
    sig["a_ptr"], sig["b_ptr"], sig["c_ptr"] = f"*{a_ty}", f"*{b_ty}", f"*{out_ty}"
    for n in _CONSTEXPR_NAMES:
        sig[n] = "constexpr"
    # Unit strides are what the JIT specialises at run time (K-contiguous a, K-major b, row-major out).
    const = {"stride_ak": 1, "stride_bk": 1, "stride_cn": 1, "A_SCALE": a_mode, "B_SCALE": b_mode,
             "HAS_BIAS": bias, "A_DECODE": a_decode, "B_DECODE": b_decode, "A_E5M2": False, "B_E5M2": False,
             "DOT_TY": dot_ty, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "FLATTEN": flatten,
             "SPLIT_K": split_k, "HW_CVT": hw_cvt}
    return CompileSpec(_fp8_gemm_kernel, sig, const, num_warps=warps, num_stages=stages,
                       label=f"fp8_gemm {name} a{a_ty}{'(dec)' if a_decode else ''} b{b_ty}"
                             f"{'(dec)' if b_decode else ''} s{a_mode}{b_mode} bias{int(bias)} ->{out_ty}"
                             f" split{split_k}{' cvt' if hw_cvt else ''}",
                       ptx_must_contain=must or [], aligned=_ALIGNED_ARGS)


def compile_specs(arch: int) -> list[CompileSpec]:
    specs: list[CompileSpec] = []
    wgmma = [r"wgmma\.mma_async\S*\.e4m3\.e4m3"]
    if arch >= 89:
        big = ["h_256", "h_128"] if arch >= 90 else ["ada_128"]
        blk = "h_blk" if arch >= 90 else "blk_ada"
        must = wgmma if arch >= 90 else [r"mma\S*e4m3"]
        for name in big:
            for a_mode, b_mode, bias, out in ((0, 0, False, "bf16"), (1, 1, True, "fp16"), (1, 1, False, "fp32")):
                if name == "h_256" and out == "fp32":
                    continue  # gemm_config never pairs them (shared memory)
                specs.append(_spec(name, arch, a_ty="fp8e4nv", b_ty="fp8e4nv", a_decode=False, b_decode=False,
                                   a_mode=a_mode, b_mode=b_mode, bias=bias, flatten=arch >= 90, out_ty=out,
                                   must=must))
        specs.append(_spec(blk, arch, a_ty="fp8e4nv", b_ty="fp8e4nv", a_decode=False, b_decode=False, a_mode=2,
                           b_mode=2, bias=False, flatten=arch >= 90, must=must))
        for name in ("small_16", "small_16_n32", "small_32", "small_64"):
            for split in (1, 2):  # the small configs split K when N alone gives too few programs
                specs.append(_spec(name, arch, a_ty="fp8e4nv", b_ty="fp8e4nv", a_decode=False, b_decode=False,
                                   a_mode=1, b_mode=1, bias=True, split_k=split))
    # Weight-only (small M on every arch; every M on sm_80) and the sm_80 all-decoded path. sm_89+ converts
    # the fp8 weights with the hardware instruction (HW_CVT), sm_80 decodes the bits.
    hw = arch >= 89
    for name in ("small_16", "small_16_n32", "small_32", "small_64"):
        for a_ty, dot in (("fp16", tl.float16), ("bf16", tl.bfloat16)):
            for split in (1, 2):
                specs.append(_spec(name, arch, a_ty=a_ty, b_ty="fp8e4nv" if hw else "u8", a_decode=False,
                                   b_decode=True, a_mode=_NO_SCALE, b_mode=1, bias=True, dot_ty=dot, out_ty=a_ty,
                                   split_k=split, hw_cvt=hw))
    if arch < 89:
        for a_ty, dot in (("fp16", tl.float16), ("bf16", tl.bfloat16)):
            specs.append(_spec("amp_128", arch, a_ty=a_ty, b_ty="u8", a_decode=False, b_decode=True,
                               a_mode=_NO_SCALE, b_mode=1, bias=True, dot_ty=dot, out_ty=a_ty))
        for a_mode, b_mode, name in ((1, 1, "amp_128"), (2, 2, "amp_blk")):
            specs.append(_spec(name, arch, a_ty="u8", b_ty="u8", a_decode=True, b_decode=True, a_mode=a_mode,
                               b_mode=b_mode, bias=False))
    # The split-K reduction + epilogue, for each scale mode pair the split small configs meet.
    rbm, rbn = REDUCE_BLOCK
    for a_mode, b_mode, out in ((1, 1, "bf16"), (0, 0, "bf16"), (_NO_SCALE, 1, "fp16"), (_NO_SCALE, 0, "bf16")):
        specs.append(CompileSpec(
            _splitk_reduce_kernel,
            {"ws_ptr": "*fp32", "c_ptr": f"*{out}", "as_ptr": "*fp32", "bs_ptr": "*fp32", "bias_ptr": f"*{out}",
             "M": "i32", "N": "i32", "stride_cm": "i64", "stride_cn": "constexpr", "stride_asm": "i64",
             "stride_bsn": "i64", "out_factor": "fp32", "SPLIT": "constexpr", "A_SCALE": "constexpr",
             "B_SCALE": "constexpr", "HAS_BIAS": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr"},
            {"stride_cn": 1, "SPLIT": 4, "A_SCALE": a_mode, "B_SCALE": b_mode, "HAS_BIAS": True, "BLOCK_M": rbm,
             "BLOCK_N": rbn}, num_warps=4, label=f"fp8_gemm splitk_reduce s{a_mode}{b_mode} ->{out}",
            aligned=("ws_ptr", "c_ptr", "N", "stride_cm")))
    return specs


#: Arguments Triton's JIT marks 16-divisible at run time for aligned torch tensors (pointers, row strides,
#: K). Without them in the ahead-of-time build the loads are not vectorised, the software pipeline collapses to
#: one stage and the 128x256 tile spills (30 of 39 specs did), which never happens at run time.
_ALIGNED_ARGS = ("a_ptr", "b_ptr", "c_ptr", "stride_am", "stride_bn", "stride_cm", "M", "N", "K")


__all__ = ["fp8_gemm", "fp8_weight_only_gemm", "gemm_config", "tuned_config", "config_names", "CONFIGS",
           "compile_specs", "tuning_entry"]
