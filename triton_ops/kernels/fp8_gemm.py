"""FP8 GEMM: ``out = (a * a_scale) @ (b * b_scale) + bias`` with fp32 accumulation.

One Triton kernel, ``_fp8_gemm_kernel``, covers every path; constexpr switches pick the variant:

* **native FP8** (sm_89 Ada, sm_90 Hopper): fp8 operands go straight into ``tl.dot`` (``wgmma ... e4m3`` on
  Hopper when the tile has >= 64 rows, ``mma ... e4m3`` on Ada), persistent grid (one program per SM, two
  for block-scaled tiles, walking tiles in grouped order so neighbouring programs share A rows / B columns
  in L2); on sm_90 the large and the block-scaled tiles read their K-major operands through TMA
  descriptors (``CONFIG_TMA``: 1.9% faster at 8192^3, 1.46x for block scales with two programs per SM).
* **weight-only** (sm_80 at every M; small M everywhere): B holds FP8 converted in registers to fp16/bf16,
  then an fp16/bf16 dot: by the hardware conversion on sm_89+, from the bits (read as uint8: Triton refuses
  the fp8 types on sm_80) with shifts and masks on sm_80. Weight bytes are halved against fp16, and
  small-M (decode) GEMMs read the weights once at near copy speed without quantizing the activations.

Operand layouts. ``a [M, K]`` and ``b [K, N]`` may have any strides (``b = w.t()`` of an ``[N, K]``
weight, a contiguous ``[K, N]``, a column-major ``a``, slices). Two facts decide what runs:

* The K-loop builds its tile pointers from row/column indices. Out-of-range rows and columns are clamped
  to a valid one (unmasked loads keep the pipeline's loads vectorised) -- but only along a dimension that
  is not the contiguous one: a clamped index (``where(n < N, n, 0)``) has no provable contiguity, so when
  N (or M) *is* the contiguous dimension Triton falls back to one-byte, uncoalesced loads (a warp touching
  32 rows for 32 bytes), cannot pipeline them with cp.async and spills (sm_90, 128x256 tile: 11.7 KB of
  spills, ptxas). That was the 50-290x cliff of a contiguous ``[K, N]`` FP8 ``b``. ``A_MN`` / ``B_MN``
  select masked, unclamped indices along a contiguous M / N: 16-byte vector loads, cp.async pipelining.
* FP8 MMA reads both operands K-major from shared memory (wgmma takes MN-major B only for 16-bit
  types; Ada's ``mma ... e4m3`` fragments are K-packed too). For an MN-major FP8 operand Triton 3.6
  transposes each tile through registers with byte-wide shared-memory stores (sm_90: no cp.async for B,
  128 ``st.shared.b8`` per thread per K step next to 4 wgmma; sm_89: 64 ``ld.shared.b8`` + 48 ``prmt``
  per thread per K step instead of 4 ``ldmatrix``), so on the native path such an operand is first copied
  K-major by ``_transpose_kernel`` (16-byte loads and stores, the transpose in shared memory): 2 bytes
  per element (16 MB read + 16 MB written for a 4096x4096 weight, ~9 us at 3.6 TB/s, 8% of that GEMM).
  A ``b`` passed again unchanged reuses its copy (``fp8_cache.operand_cache``), so a weight pays it once.
  The 16-bit dots (weight-only, decoded operands) take either layout in the kernel.

Scales: a per tensor (``[]``/``[1]``), per row (``[M, 1]``) or per (1, 128) block (``[M, ceil(K/128)]``);
b per tensor, per column (``[1, N]``) or per (128, 128) block (``[ceil(K/128), ceil(N/128)]``). Row/column
scales are applied once in the epilogue; block scales multiply each K step's partial product (the K step
is then fixed at 128). The kernels read every scale through ``_checked``: a scale that is not finite and
positive turns the outputs it touches into NaN, so a bad scale never gives a finite wrong result, even
where the host check is off (``check_scales=False``, torch.compile, CUDA graphs).

From fp16/bf16/fp32 inputs (``fp8_gemm(a, b)``), dynamic scaling: b per column (its FP8 copy, K-major, is
kept while b is unchanged: a weight is quantized once), and a per row in one pass for M > 64 on sm_89+;
for M <= 64, and on sm_80, a is not quantized at all (the weight-only kernel: fp16/bf16 activations times
the FP8 b), which is both faster at decode sizes and closer to the float product.

Why a's quantization stays a separate pass (docs/perf-notes.md, "fp8"): quantizing the A tile inside the
GEMM's K-loop reads a as 16-bit from L2 once per column tile (N / BLOCK_N times: 16x at N = 4096, 512 MB
of L2 traffic at 4096^3 next to the ~0.1 ms GEMM, ~5 TB/s, at the L2's limit), converts every element
N / BLOCK_N times, and needs per-(1, 128) block scales (a per-row amax needs the whole row first). The
separate pass reads a once (2 B + 1 B written per element, ~13 us at 4096^3) and leaves the GEMM at the
cuBLASLt-class rate; what it costs at small sizes is one more launch, which launch plans make cheap.

Small M (decode, M <= 64) streams the weights: one 16/32/64-row tile, 64 output columns per program; on
sm_89+ the fp8 weights are converted by the hardware (``HW_CVT``; the bit decode's integer ops bounded the
weight streaming). K is split only when the N tiles are fewer than the SMs, for ~4 programs per SM (fp32
partials summed by ``_splitk_reduce_kernel``, which also runs the epilogue). Launch configs come from
``gemm_config`` or, when tuned configs are switched on, from the tuning cache (``triton-ops tune
fp8_gemm``, see ``tuning_entry``).

Host cost: every eager call goes through a launch plan (``triton_ops.launch``): validation, the operand
layout decisions, config choice and tuned-config lookup happen once per input signature; a repeated call
allocates its outputs, looks up cached operand copies and launches compiled kernels directly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..autotuner import runtime as _rt
from ..exceptions import InvalidArgumentError, ShapeError
from ..launch import KernelLaunch, PlanCache, plan_key, tensor_descriptor
from ..utils import cdiv, device_arch, interpreter_enabled, num_sms
from ..validation import (
    FLOAT_DTYPES,
    FP8_DTYPES,
    check_dtype,
    check_out_dtype,
    check_runnable_device,
    check_same_device,
    check_tensor,
)
from ._tiles import grouped_tile_coords
from .fp8_cache import capturing, operand_cache
from .fp8_quantize import (
    FP8_MAX,
    SOFT_ROUND,
    _on_sm80,
    _quantize_torch,
    _same_memory,
    check_scale_values,
    cols_step,
    fp8_dot_nan,
    fp8_to,
    gemm_prep_step,
    rows_step,
)

# ---------------------------------------------------------------------------------------------------
# Layer 1: kernels
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _decode_fp8_bits(bits, E5M2: tl.constexpr, TY: tl.constexpr):
    """FP8 bit patterns (uint8) -> fp16 (then TY), exact, with no FP8 instruction (works on sm_80).

    e5m2 is the top byte of an fp16. For e4m3, ``(bits & 0x7F) << 7`` read as fp16 is the value divided
    by 2^8 for normals and subnormals alike (fp16 exponent bias 15 vs 7); the launcher folds the 2^8
    back into the epilogue scale. The e4m3 NaN code (0x7F / 0xFF) becomes NaN (one compare and select
    more per element), so a NaN in a quantized operand reaches the outputs it touches, as on sm_89+.
    """
    b = bits.to(tl.uint16)
    if E5M2:
        h = (b << 8).to(tl.float16, bitcast=True)
    else:
        h = (((b & 0x7F) << 7) | ((b & 0x80) << 8)).to(tl.float16, bitcast=True)
        h = tl.where((b & 0x7F) == 0x7F, float("nan"), h)
    return h.to(TY)


@triton.jit
def _checked(s):
    """A dequantization scale as the GEMM uses it: NaN unless finite and > 0 (NaN fails both compares),
    so every output an invalid scale touches is NaN instead of a finite wrong value. One select per row,
    column or block scale: free next to the tile's MMAs, and no host sync."""
    return tl.where((s > 0.0) & (s < float("inf")), s, float("nan"))


@triton.jit
def _to_out(acc, TY: tl.constexpr):
    """fp32 -> output dtype. Under the interpreter fp32 -> bf16 casts truncate; round to nearest even in
    the bits first there (the GPU's cvt.rn already does)."""
    if SOFT_ROUND:
        if TY == tl.bfloat16:
            bits = acc.to(tl.uint32, bitcast=True)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
            acc = tl.where(acc != acc, acc, rounded)
    return acc.to(TY)


@triton.jit
def _epilogue(acc, rm_c, rn_c, as_ptr, bs_ptr, bias_ptr, stride_asm, stride_bsn, out_factor,
              A_SCALE: tl.constexpr, B_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """fp32 tile -> per-tensor / per-row / per-column scales, decode factor, bias (still fp32)."""
    acc = acc * out_factor
    if A_SCALE == 0:
        acc = acc * _checked(tl.load(as_ptr))
    elif A_SCALE == 1:
        acc = acc * _checked(tl.load(as_ptr + rm_c * stride_asm))[:, None]
    if B_SCALE == 0:
        acc = acc * _checked(tl.load(bs_ptr))
    elif B_SCALE == 1:
        acc = acc * _checked(tl.load(bs_ptr + rn_c * stride_bsn))[None, :]
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
                     HW_CVT: tl.constexpr, A_MN: tl.constexpr, B_MN: tl.constexpr, USE_TMA: tl.constexpr):
    """Persistent tiled GEMM. Scale modes (A_SCALE / B_SCALE): 0 one scale, 1 per row of a / per column
    of b, 2 per (1, BLOCK_K) block of a / per (BLOCK_K, 128) block of b (BLOCK_K == 128), 3 (a only) none.
    *_DECODE: the operand holds FP8 bits (uint8) decoded to DOT_TY in registers; otherwise it feeds
    ``tl.dot`` as loaded (fp8 on sm_89+), or, with B_DECODE, converted to DOT_TY (weight-only: fp16/bf16
    activations; fp32 under the interpreter, whose bf16 dot is wrong). ``out_factor`` folds the decode's
    power of two into the epilogue. HW_CVT (sm_89+): the decoded operand is loaded with its fp8 type and
    converted by the hardware (``cvt.rn.f16x2.e4m3x2``, two elements per instruction) instead of the ~6
    integer ops per element of the bit decode, which bound the decode GEMM's weight streaming.
    A_MN / B_MN: a is M-contiguous / b is N-contiguous; rows / columns are then masked instead of clamped
    (see the module doc: a clamped contiguous index costs vectorisation and coalescing).
    SPLIT_K > 1: work item = (tile, K slice of ``k_tiles_per_split`` K steps); the raw fp32 partial goes
    to ``ws[split, M, N]`` and ``_splitk_reduce_kernel`` sums the slices and runs the epilogue.
    USE_TMA (native FP8, K-major operands, SPLIT_K == 1): a_ptr / b_ptr are TMA descriptors of a [M, K] and
    of b's K-major storage [N, K]; out-of-bounds boxes read as zero."""
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
        # loads along M and N keep the pipeline's loads vectorised; the store masks them out. Not along
        # a contiguous M / N (A_MN / B_MN): there the clamp would hide the contiguity.
        rm_c = tl.where(mmask, rm, 0)
        rn_c = tl.where(nmask, rn, 0)
        if not USE_TMA:
            if A_MN:
                a_ptrs = a_ptr + rm[:, None] * stride_am + offs_k[None, :] * stride_ak
            else:
                a_ptrs = a_ptr + rm_c[:, None] * stride_am + offs_k[None, :] * stride_ak
            if B_MN:
                b_ptrs = b_ptr + offs_k[:, None] * stride_bk + rn[None, :] * stride_bn
            else:
                b_ptrs = b_ptr + offs_k[:, None] * stride_bk + rn_c[None, :] * stride_bn
            if SPLIT_K > 1:
                a_ptrs += kt0 * BLOCK_K * stride_ak
                b_ptrs += kt0 * BLOCK_K * stride_bk
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for kt in range(kt0, kt1):
            kmask = offs_k < K - kt * BLOCK_K
            if A_MN:
                amask = mmask[:, None] & kmask[None, :]
            else:
                amask = kmask[None, :]
            if B_MN:
                bmask = kmask[:, None] & nmask[None, :]
            else:
                bmask = kmask[:, None]
            if USE_TMA:
                a = a_ptr.load([pid_m * BLOCK_M, kt * BLOCK_K])
                b = b_ptr.load([pid_n * BLOCK_N, kt * BLOCK_K]).T
            elif A_DECODE:
                if HW_CVT:
                    a = fp8_to(tl.load(a_ptrs, mask=amask, other=0.0), DOT_TY)
                else:
                    a = _decode_fp8_bits(tl.load(a_ptrs, mask=amask, other=0), A_E5M2, DOT_TY)
            elif B_DECODE:
                a = tl.load(a_ptrs, mask=amask, other=0.0).to(DOT_TY)
            else:
                a = tl.load(a_ptrs, mask=amask, other=0.0)
            if USE_TMA:
                pass
            elif B_DECODE:
                if HW_CVT:
                    b = fp8_to(tl.load(b_ptrs, mask=bmask, other=0.0), DOT_TY)
                else:
                    b = _decode_fp8_bits(tl.load(b_ptrs, mask=bmask, other=0), B_E5M2, DOT_TY)
            else:
                b = tl.load(b_ptrs, mask=bmask, other=0.0)
            if A_SCALE == 2 or B_SCALE == 2:
                part = fp8_dot_nan(tl.dot(a, b), a, b)
                if A_SCALE == 2:
                    sa = _checked(tl.load(as_ptr + rm_c * stride_asm + kt * stride_ask))
                    part = part * sa[:, None]
                if B_SCALE == 2:
                    sb = _checked(tl.load(bs_ptr + kt * stride_bsk + (rn_c // 128) * stride_bsn))
                    part = part * sb[None, :]
                acc += part
            else:
                acc = fp8_dot_nan(tl.dot(a, b, acc), a, b)
            if not USE_TMA:
                a_ptrs += BLOCK_K * stride_ak
                b_ptrs += BLOCK_K * stride_bk
        if SPLIT_K > 1:
            w_ptrs = ws_ptr + (split.to(tl.int64) * M + rm[:, None]) * N + rn[None, :]
            tl.store(w_ptrs, acc, mask=mmask[:, None] & nmask[None, :])
        else:
            acc = _epilogue(acc, rm_c, rn_c, as_ptr, bs_ptr, bias_ptr, stride_asm, stride_bsn, out_factor,
                            A_SCALE, B_SCALE, HAS_BIAS)
            c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
            tl.store(c_ptrs, _to_out(acc, c_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


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
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn, _to_out(acc, c_ptr.dtype.element_ty),
             mask=omask)


@triton.jit
def _transpose_kernel(x_ptr, y_ptr, R, C, stride_xr, stride_xc, stride_yr, stride_yc, BLOCK_R: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    """``y[r, c] = x[r, c]`` for any strides: the K-major copy of an MN-major FP8 operand. Triton gives the
    load a layout contiguous along x's unit stride and the store one contiguous along y's, and moves the
    tile between them through shared memory: 16-byte global loads and stores on both sides (ptxas, sm_90,
    128x128 bytes over 8 warps: 4 ``ld.global.v4`` + 4 ``st.global.v4`` per thread)."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = (r < R)[:, None] & (c < C)[None, :]
    v = tl.load(x_ptr + r[:, None] * stride_xr + c[None, :] * stride_xc, mask=m)
    tl.store(y_ptr + r[:, None] * stride_yr + c[None, :] * stride_yc, v, mask=m)


# ---------------------------------------------------------------------------------------------------
# Layer 2: configs
# ---------------------------------------------------------------------------------------------------

#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per name. Shared memory per stage for fp8 operands
#: is (BM + BN) * BK bytes: 48 KB for "h_256" (3 stages = 144 KB of the H100's 227 KB).
CONFIGS = {
    # Hopper, native FP8: 128x256 accumulator = 128 fp32 registers/thread over 8 warps (two warpgroups).
    # 3 stages with TMA (CONFIG_TMA) beat 4: 872.6 vs 883.4 us at 8192^3 (H200, sweep_fp8.py configs).
    "h_256": (128, 256, 128, 8, 3),
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
    # Block-scaled (K step fixed at 128 by the scale groups): every K step's product is scaled before it
    # is added, so the wgmma chain waits each step; one warpgroup owns a 64x128 tile and two programs share
    # an SM (CONFIG_CTAS_PER_SM: 214 registers x 128 threads, 2 x ~80 KB of shared memory at 3 stages), so
    # one's MMAs run while the other rescales.
    "h_blk": (64, 128, 128, 4, 3),
    "blk_ada": (64, 128, 128, 4, 3),
    "amp_blk": (64, 128, 128, 8, 3),  # both operands decoded: 4 warps spilled 100 B on sm_80
}
#: Configs whose K-major operands are read through TMA descriptors on sm_90 (when K % 16 == 0 and the rows
#: are 16-byte aligned; otherwise the same tiles through pointers), and persistent programs per SM.
#: Measured on an H200 (benchmarks/scripts/sweep_fp8.py, sections configs and blockscaled, graph replays):
#: h_256 + TMA, 3 stages: 872.6 us at 8192^3 per row (pointers, 4 stages: 889.7; cuBLASLt 922.7), 1494.7 at
#: 16384x4096x14336 (1515.8; cuBLASLt 1640.3). h_blk + TMA, 2 per SM, 3 stages, a per (1, 128) block: b per
#: column 2454 us at 16384x4096x14336 (one per SM, pointers, 4 stages: 3594), b per (128, 128) block 2910
#: (3902); 1408 / 1670 us at 8192^3 (2028 / 2198). 3 per SM (2 stages) was slower (2638 / 4824), as were
#: 4 stages (2606 / 3026) and 128x128 over 8 warps (2507 / 9844). A warp-specialised variant
#: (``tl.range(warp_specialize=True)``, a TMA producer warp group) ran at 3976 us and one of its tile shapes
#: hung the GPU, so it is not used.
CONFIG_TMA = {"h_256": True, "h_blk": True}
CONFIG_CTAS_PER_SM = {"h_blk": 2}
#: M at or below this takes the small-M configs (and, from float activations, the weight-only kernel).
SMALL_M = 64
#: Split-K of the small-M configs: aim for this many programs per SM (each streams its weight slice
#: through a 3-4 stage cp.async pipeline; ~3 resident per SM keep ~150 KB of weights in flight per SM).
SMALL_PROGS_PER_SM = 4
MAX_SPLIT_K = 8
#: Cache family of tuned configs (``triton-ops tune fp8_gemm``), keyed by (M, N, K).
KERNEL_TYPE = "fp8_gemm"
#: Tile and warps of ``_transpose_kernel`` (16 KB of fp8 per program, 64 bytes per thread).
TRANSPOSE_BLOCK = (128, 128, 8)
#: Weight-only path, FP8 ``b`` not K-major (a contiguous ``[K, N]`` weight): False reads it in place (the
#: fp16 dot takes MN-major operands; the sm_90/89 mma.sync configs then gather each B fragment with byte
#: loads from shared memory, 161 ``ld.shared`` per thread and K step against 33 + 8 ``ldmatrix``, ptxas),
#: True copies it K-major once per unchanged weight (the operand cache; a second copy of the weight's
#: bytes while it lives). Not measured yet: benchmarks/scripts/sweep_fp8.py times both.
WEIGHT_ONLY_KMAJOR_COPY = False
#: Native FP8 path, an operand that is not K-major: "copy" (the default: one K-major copy, see the module
#: doc), "inkernel" (masked MN-major tiles, transposed by Triton through registers) or "clamp" (the kernel
#: as it was before A_MN / B_MN: clamped indices along the contiguous dimension, one-byte uncoalesced loads).
#: The last two exist to be measured against the first (benchmarks/scripts/sweep_fp8.py).
NATIVE_MN_POLICY = "copy"
#: Native FP8 path on sm_90: read the K-major operands of every config through TMA descriptors (True), not
#: only those of CONFIG_TMA (a measurement knob: the tests check the TMA reads of every tile give the same bits).
NATIVE_TMA = False


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
                   split_k: int | None = None, ctas_per_sm: int | None = None, tma: bool | None = None) -> dict:
    """The launch config of CONFIGS[name] for one problem. ``ctas_per_sm``: persistent programs per SM
    (default CONFIG_CTAS_PER_SM); ``tma``: read the K-major operands through TMA descriptors on sm_90
    (default CONFIG_TMA or ``NATIVE_TMA``)."""
    if ctas_per_sm is None:
        ctas_per_sm = CONFIG_CTAS_PER_SM.get(name, 1)
    if tma is None:
        tma = NATIVE_TMA or CONFIG_TMA.get(name, False)
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
            "NUM_PROGS": max(1, min(items, sms * ctas_per_sm) if persistent else items),
            # loop flattening of the persistent loop assumes a fixed inner trip count
            "FLATTEN": persistent and arch >= 90 and split_k == 1,
            "TMA": bool(tma)}


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
    cfg = gemm_config(M, N, K, arch, weight_only=weight_only, block_scaled=block_scaled, sms=sms,
                      out_fp32=out_fp32)
    if block_scaled or not _rt.ENABLED:
        return cfg
    default = {"name": cfg["name"], "GROUP_M": cfg["GROUP_M"], "SPLIT_K": cfg["SPLIT_K"]}
    # a value this launch cannot take (a hand-edited or foreign cache: another arch's config, GROUP_M 0,
    # SPLIT_K 9) makes resolve ignore the whole entry with one warning, and the heuristic's config runs
    want = _rt.resolve(KERNEL_TYPE, (M, N, K), device, default,
                       allowed={"name": config_names(arch, weight_only=weight_only, out_fp32=out_fp32),
                                "GROUP_M": _rt.tuned_int(1, 64), "SPLIT_K": _rt.tuned_int(1, MAX_SPLIT_K)})
    if want == default:
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
    if mode in (0, _NO_SCALE):
        return 0, 0
    if mode == 1:
        st = s.stride(0) if (row_like or s.dim() == 1) else s.stride(-1)
        return (st, 0) if row_like else (0, st)
    return s.stride(0), s.stride(1)


#: A_SCALE mode "no scale for a" (weight-only: the activations are not quantized).
_NO_SCALE = 3
#: Tile of the split-K reduction (fp32 partials: 16 x 64 x 4 B = 4 KB per slice and program; 224 programs
#: for the 16 x 14336 decode output, so the 2.8 MB of partials are read by every SM at once).
REDUCE_BLOCK = (16, 64)


# ---------------------------------------------------------------------------------------------------
# Layer 2b: launch plans
# ---------------------------------------------------------------------------------------------------
#
# ``_plan_gemm`` turns one validated call into ``run(a, b, a_scale, b_scale, bias) -> out``: every decision
# that depends only on the call's signature (path, layouts, copies, scale modes, config, grid, strides) is
# taken here once; ``run`` allocates, fetches or makes the operand copies and launches. ``run`` reads its
# tensors only as base addresses (and, for the operand cache, as identities), so it may be given any
# tensors with the planned signature -- FP8Linear passes its ``[N, K]`` weight for the planned ``w.t()``.

#: Operand-cache tags: a float b quantized per column and stored K-major (``(qbt [N, K], sb [1, N])``),
#: and an FP8 b copied K-major (``bt [N, K]``).
_TAG_QUANT = "e4m3-col-kmajor"
_TAG_KMAJOR = "kmajor"
_E4M3 = torch.float8_e4m3fn


def _gemm_step(M: int, N: int, K: int, a_st, b_st, c_st, sa_st, sb_st, a_mode: int, b_mode: int,
               has_bias: bool, *, a_decode: bool, b_decode: bool, a_e5: bool, b_e5: bool, hw_cvt: bool, dot_ty,
               factor: float, cfg: dict, device: torch.device, clamp: bool = False, use_tma: bool = False):
    """The GEMM launch (and split-K reduction) of a plan: ``run(a, b, out, sa, sb, bias)``. ``clamp``:
    never mask along a contiguous M / N (the old kernel, for measurements only). ``use_tma``: read a and
    b (K-major, 16-byte aligned rows) through TMA descriptors (the config's ``TMA``)."""
    if 2 in (a_mode, b_mode) and cfg["BLOCK_K"] != 128:
        raise InvalidArgumentError(f"config {cfg['name']!r} has BLOCK_K={cfg['BLOCK_K']}; block-scaled operands "
                                   "need BLOCK_K == 128")
    a_mn = a_st[0] == 1 and a_st[1] != 1 and M > 1 and not clamp
    b_mn = b_st[1] == 1 and b_st[0] != 1 and N > 1 and not clamp
    split = cfg["SPLIT_K"]
    gemm = KernelLaunch(_fp8_gemm_kernel, (cfg["NUM_PROGS"],), dict(
        A_SCALE=a_mode, B_SCALE=b_mode, HAS_BIAS=has_bias, A_DECODE=a_decode, B_DECODE=b_decode, A_E5M2=a_e5,
        B_E5M2=b_e5, DOT_TY=dot_ty, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        GROUP_M=cfg["GROUP_M"], FLATTEN=cfg["FLATTEN"], SPLIT_K=split, HW_CVT=hw_cvt, A_MN=a_mn, B_MN=b_mn,
        USE_TMA=use_tma), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    ints = (M, N, K, a_st[0], a_st[1], b_st[0], b_st[1], c_st[0], c_st[1], sa_st[0], sa_st[1], sb_st[0],
            sb_st[1], float(factor), cfg["NUM_PROGS"], cfg["K_TILES_PER_SPLIT"])
    # Pointers a launch never reads are passed as None (a's scale on the weight-only path, the bias when
    # there is none, the split-K workspace without split-K): Triton specialises None away, and Triton's C
    # launcher spends a data_ptr() call and a cuPointerGetAttribute driver call on every tensor it is given.
    no_sa = a_mode == _NO_SCALE
    if use_tma:
        a_desc = ([M, K], [a_st[0], 1], [cfg["BLOCK_M"], cfg["BLOCK_K"]])
        b_desc = ([N, K], [b_st[1], 1], [cfg["BLOCK_N"], cfg["BLOCK_K"]])

        def run_tma(a, b, out, sa, sb, bias):
            gemm(tensor_descriptor(a, *a_desc), tensor_descriptor(b, *b_desc), out, None if no_sa else sa, sb,
                 bias, None, *ints)
        return run_tma
    if split == 1:
        def run(a, b, out, sa, sb, bias):
            gemm(a, b, out, None if no_sa else sa, sb, bias, None, *ints)
        return run
    rbm, rbn = REDUCE_BLOCK
    reduce = KernelLaunch(_splitk_reduce_kernel, (cdiv(M, rbm), cdiv(N, rbn)),
                          dict(SPLIT=split, A_SCALE=a_mode, B_SCALE=b_mode, HAS_BIAS=has_bias, BLOCK_M=rbm,
                               BLOCK_N=rbn), num_warps=4)
    rints = (M, N, c_st[0], c_st[1], sa_st[0], sb_st[1], float(factor))

    def run_split(a, b, out, sa, sb, bias):
        ws = torch.empty(split, M, N, dtype=torch.float32, device=device)
        sa_arg = None if no_sa else sa
        gemm(a, b, None, sa_arg, sb, bias, ws, *ints)
        reduce(ws, out, sa_arg, sb, bias, *rints)
    return run_split


def _copy_step(R: int, C: int, x_st, y_st, y_shape: tuple, dtype: torch.dtype, device: torch.device):
    """``run(x) -> y``: ``y`` a new ``y_shape`` tensor holding x's ``[R, C]`` elements at strides ``y_st``
    (``_transpose_kernel``; the K-major copy of an MN-major FP8 operand)."""
    br, bc, warps = TRANSPOSE_BLOCK
    launch = KernelLaunch(_transpose_kernel, (cdiv(R, br), cdiv(C, bc)), dict(BLOCK_R=br, BLOCK_C=bc),
                          num_warps=warps)
    ints = (R, C, x_st[0], x_st[1], y_st[0], y_st[1])

    def run(x):
        y = torch.empty(y_shape, dtype=dtype, device=device)
        launch(x, y, *ints)
        return y
    return run


def kmajor_copy(b: torch.Tensor) -> torch.Tensor:
    """A ``[K, N]`` FP8 ``b`` (any strides) as the ``[K, N]`` view of a contiguous ``[N, K]`` (K-major),
    the layout FP8 MMA reads; one pass of ``_transpose_kernel``. The native path makes it (once per
    unchanged b) for every b that is not K-major."""
    K, N = b.shape
    return _copy_step(K, N, b.stride(), (1, K), (N, K), b.dtype, b.device)(b).t()


def _cached(b: torch.Tensor, tag: str, make):
    """``make(b)``, reused while b is unchanged (not while a CUDA graph is captured, see fp8_cache)."""
    if capturing():
        return make(b)
    hit = operand_cache.get(b, tag)
    if hit is None:
        hit = make(b)
        parts = hit if isinstance(hit, tuple) else (hit,)
        operand_cache.put(b, tag, hit, sum(t.numel() * t.element_size() for t in parts))
    return hit


def _scale_arg(s: torch.Tensor, mode: int, row_like: bool):
    """(convert to fp32 per call?, strides of what the kernel reads) for a user scale."""
    conv = s.dtype != torch.float32
    return conv, _scale_strides(s.to(torch.float32) if conv else s, mode, row_like)


def _plan_gemm(a: torch.Tensor, b: torch.Tensor, a_scale, b_scale, bias, out_dtype: torch.dtype, path: str,
               config: dict | None = None, *, weight_only: bool = False):
    """Plan ``fp8_gemm`` / ``fp8_weight_only_gemm`` for validated inputs (see the section comment)."""
    lead = tuple(a.shape[:-1])
    K = a.shape[-1]
    N = b.shape[1]
    M = 1
    for d in lead:
        M *= d
    dev = a.device
    out_shape = lead + (N,)
    has_bias = bias is not None
    if M == 0 or N == 0:
        return lambda a, b, sa, sb, bias: torch.empty(out_shape, dtype=out_dtype, device=dev)
    if K == 0:
        def run_k0(a, b, sa, sb, bias):
            out = torch.zeros(out_shape, dtype=out_dtype, device=dev)
            if bias is not None:
                out += bias.to(out_dtype)
            return out
        return run_k0
    arch = _arch(dev)
    sms = num_sms(dev)
    sm80 = _on_sm80(dev)
    fmax = FP8_MAX[_E4M3]
    groups = cdiv(K, 128)
    a_float, b_float = a.dtype in FLOAT_DTYPES, b.dtype in FLOAT_DTYPES
    a_mode = _scale_mode(a_scale, M, groups, "a_scale", True) if a_scale is not None else 1
    b_mode = _scale_mode(b_scale, N, groups, "b_scale", False) if b_scale is not None else 1
    if not weight_only:
        # Float activations at decode sizes (and on sm_80, which has no FP8 MMA) are not quantized: the
        # weight-only kernel streams b's FP8 bytes next to an fp16/bf16 dot (FP8Linear's decode path).
        weight_only = path == "auto" and a_float and (M <= SMALL_M or arch < 89) and b_mode != 2
    a2 = a.reshape(M, K)
    a_direct = _same_memory(a2, a)
    a_st = a2.stride()
    b_st = b.stride()
    a_kmajor = a_st[1] == 1 or K == 1
    b_kmajor = b_st[0] == 1 or K == 1
    out_st = (N, 1)
    out_fp32 = out_dtype == torch.float32

    def a_view(a):
        return a if a_direct else a.reshape(M, K)

    # ---- b: the FP8 tensor the kernel reads, its strides and scale ----------------------------------
    def quantize_b(b):
        qbt = torch.empty(N, K, dtype=_E4M3, device=dev)
        sb = torch.empty(1, N, dtype=torch.float32, device=dev)
        if sm80:
            sb.copy_(_quantize_torch(b, _E4M3, "column", None, None, qbt.t())[1].reshape(1, N))
        elif b_kmajor:  # b = w.t(): per column of b is per row of w
            quant_b_rows(b, qbt, sb)
        else:
            quant_b_cols(b, qbt, sb)
        return qbt, sb

    if b_float:
        quant_b_rows = rows_step(N, K, b_st[1], K, 1, fmax, None) if (b_kmajor and not sm80) else None
        quant_b_cols = cols_step(K, N, b_st, (1, K), fmax, dev) if not (b_kmajor or sm80) else None
        b_kst, sb_st, b_mode = (1, K), (0, 1), 1
    else:
        conv_sb, sb_st = _scale_arg(b_scale, b_mode, False)
        native = arch >= 89 and path != "decode" and not weight_only
        b_copy = not b_kmajor and ((native and NATIVE_MN_POLICY == "copy") or
                                   (weight_only and WEIGHT_ONLY_KMAJOR_COPY))
        if b_copy:
            make_kmajor = _copy_step(K, N, b_st, (1, K), (N, K), b.dtype, dev)
        b_kst = (1, K) if b_copy else b_st

    # ---- weight-only: float a, FP8 b decoded in registers --------------------------------------------
    if weight_only:
        # fp32 activations are cast to bf16 A tiles (fp32 ones would double the stages' shared memory): bf16
        # keeps fp32's range (fp16 overflowed to inf above 65504) and its 8-bit mantissa sits far below the
        # e4m3 weights' 4 bits
        cast_a = a.dtype == torch.float32
        a16 = torch.bfloat16 if cast_a else a.dtype
        dot = tl.float16 if a16 == torch.float16 else (tl.float32 if interpreter_enabled() else tl.bfloat16)
        hw = arch >= 89
        b_e5 = (not b_float) and b.dtype == torch.float8_e5m2
        factor = 1.0 if (hw or b_e5) else 256.0
        cfg = config or tuned_config(M, N, K, arch, dev, weight_only=True, sms=sms, out_fp32=out_fp32)
        core = _gemm_step(M, N, K, (K, 1) if cast_a else a_st, b_kst, out_st, (0, 0), sb_st, _NO_SCALE, b_mode,
                          has_bias, a_decode=False, b_decode=True, a_e5=False, b_e5=b_e5, hw_cvt=hw, dot_ty=dot,
                          factor=factor, cfg=cfg, device=dev)

        def run_weight_only(a, b, a_scale, b_scale, bias):
            x = a.to(torch.bfloat16, memory_format=torch.contiguous_format) if cast_a else a_view(a)
            if b_float:
                qb, sb = _cached(b, _TAG_QUANT, quantize_b)
            else:
                qb = _cached(b, _TAG_KMAJOR, make_kmajor) if b_copy else b
                sb = b_scale.to(torch.float32) if conv_sb else b_scale
            if not hw:
                qb = qb.view(torch.uint8)
            out = torch.empty(out_shape, dtype=out_dtype, device=dev)
            core(x, qb, out, sb, sb, bias)
            return out
        return run_weight_only

    # ---- native FP8 MMA (sm_89+) or both operands decoded (sm_80, path="decode") ---------------------
    decode = path == "decode" or arch < 89
    if a_float:
        a_kst, sa_st, a_mode = (K, 1), (1, 0), 1
        a_rows_ok = a_kmajor and not sm80
        if sm80:
            quant_a = None
        elif a_kmajor:
            quant_a = rows_step(M, K, a_st[0], K, 1, fmax, None)
        elif a_st[0] == 1:  # column-major a: per row of a = per column of a.t(), written K-major
            quant_a = cols_step(K, M, (a_st[1], a_st[0]), (1, K), fmax, dev)
        else:  # neither dimension contiguous: one contiguous copy per call, then rows
            quant_a = rows_step(M, K, K, K, 1, fmax, None)
        # A new row-major b next to a K-contiguous a: a's rows and b's column amaxes share launch 1.
        fused_prep = gemm_prep_step(M, K, a_st[0], N, b_st, dev) if (b_float and a_rows_ok and not b_kmajor) \
            else None
    else:
        conv_sa, sa_st = _scale_arg(a_scale, a_mode, True)
        a_copy = not decode and not a_kmajor and NATIVE_MN_POLICY == "copy"
        if a_copy:
            make_a = _copy_step(M, K, a_st, (K, 1), (M, K), a.dtype, dev)
        a_kst = (K, 1) if a_copy else a_st
    a_e5 = (not a_float) and a.dtype == torch.float8_e5m2
    b_e5 = (not b_float) and b.dtype == torch.float8_e5m2
    factor = 1.0
    if decode:
        factor *= 1.0 if a_e5 else 256.0
        factor *= 1.0 if b_e5 else 256.0
    block_scaled = 2 in (a_mode, b_mode)
    cfg = config or tuned_config(M, N, K, arch, dev, weight_only=decode, block_scaled=block_scaled, sms=sms,
                                 out_fp32=out_fp32)
    # TMA: K-major operands with 16-byte rows (fp8: K % 16 == 0); the plan key fixes the bases' alignment.
    tma = (cfg.get("TMA", NATIVE_TMA) and not decode and arch >= 90 and cfg["SPLIT_K"] == 1 and a_kst[1] == 1
           and b_kst[0] == 1 and a_kst[0] % 16 == 0 and b_kst[1] % 16 == 0 and K % 16 == 0)
    core = _gemm_step(M, N, K, a_kst, b_kst, out_st, sa_st, sb_st, a_mode, b_mode, has_bias, a_decode=decode,
                      b_decode=decode, a_e5=a_e5, b_e5=b_e5, hw_cvt=False, dot_ty=tl.float16, factor=factor,
                      cfg=cfg, device=dev, clamp=NATIVE_MN_POLICY == "clamp" and not decode, use_tma=tma)

    def run(a, b, a_scale, b_scale, bias):
        qb = sb = None
        if b_float:
            keep = not capturing()
            hit = operand_cache.get(b, _TAG_QUANT) if keep else None
            if hit is not None:
                qb, sb = hit
        if a_float:
            qa = torch.empty(M, K, dtype=_E4M3, device=dev)
            sa = torch.empty(M, 1, dtype=torch.float32, device=dev)
            if b_float and qb is None and fused_prep is not None:
                qb = torch.empty(N, K, dtype=_E4M3, device=dev)
                sb = torch.empty(1, N, dtype=torch.float32, device=dev)
                fused_prep(a_view(a), b, qa, sa, qb, sb)
                if keep:
                    operand_cache.put(b, _TAG_QUANT, (qb, sb), qb.numel() + 4 * N)
            elif sm80:
                qa, sa = _quantize_torch(a_view(a), _E4M3, "row", None, None, qa)
            elif a_rows_ok or a_st[0] == 1:
                quant_a(a_view(a) if a_rows_ok else a, qa, sa)
            else:
                quant_a(a_view(a).contiguous(), qa, sa)
        else:
            qa = make_a(a_view(a)) if a_copy else a_view(a)
            sa = a_scale.to(torch.float32) if conv_sa else a_scale
        if b_float:
            if qb is None:
                qb, sb = quantize_b(b)
                if keep:
                    operand_cache.put(b, _TAG_QUANT, (qb, sb), qb.numel() + 4 * N)
        else:
            qb = _cached(b, _TAG_KMAJOR, make_kmajor) if b_copy else b
            sb = b_scale.to(torch.float32) if conv_sb else b_scale
        if decode:
            qa, qb = qa.view(torch.uint8), qb.view(torch.uint8)
        out = torch.empty(out_shape, dtype=out_dtype, device=dev)
        core(qa, qb, out, sa, sb, bias)
        return out
    return run


def _gemm_impl(a: torch.Tensor, b: torch.Tensor, a_scale, b_scale, bias, out_dtype: torch.dtype,
               path: str, config: dict | None = None) -> torch.Tensor:
    """Launcher (inputs validated), planned for this one call. ``path``: "auto", or "native" / "decode" to
    force a variant (tests). ``config``: a full config dict (as from gemm_config) instead of the heuristic
    (tuning)."""
    return _plan_gemm(a, b, a_scale, b_scale, bias, out_dtype, path, config)(a, b, a_scale, b_scale, bias)


def _weight_only_impl(x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor, bias, out_dtype,
                      config: dict | None = None) -> torch.Tensor:
    """``x [.., K]`` fp16/bf16/fp32 times FP8 ``w_t [K, N]`` (decoded in registers) times per-column/tensor
    scales."""
    return _plan_gemm(x, w_t, None, w_scale, bias, out_dtype, "auto", config, weight_only=True)(
        x, w_t, None, w_scale, bias)


# ---------------------------------------------------------------------------------------------------
# Layer 3: custom ops
# ---------------------------------------------------------------------------------------------------

_gemm_plans = PlanCache("fp8_gemm")
_weight_only_plans = PlanCache("fp8_weight_only_gemm")


def _planned(cache: PlanCache, key, build):
    """The cached plan for ``key`` (built on a miss), or a fresh one when the call has no key."""
    if key is None:
        return build()
    plan = cache.get(key)
    if plan is None:
        plan = cache.put(key, build())
    return plan


@torch.library.custom_op("triton_ops::fp8_gemm", mutates_args=())
def _fp8_gemm_op(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor | None, b_scale: torch.Tensor | None,
                 bias: torch.Tensor | None, out_dtype: torch.dtype, path: str) -> torch.Tensor:
    # Called with real tensors (eager autograd / compiled graphs): plans apply here too.
    key = plan_key(a, b, a_scale, b_scale, bias)
    plan = _planned(_gemm_plans, key and (key, out_dtype, path, _rt.ENABLED),
                    lambda: _plan_gemm(a, b, a_scale, b_scale, bias, out_dtype, path))
    return plan(a, b, a_scale, b_scale, bias)


@_fp8_gemm_op.register_fake
def _(a, b, a_scale, b_scale, bias, out_dtype, path):
    return a.new_empty(*a.shape[:-1], b.shape[1], dtype=out_dtype)


@torch.library.custom_op("triton_ops::fp8_weight_only_gemm", mutates_args=())
def _fp8_weight_only_op(x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                        out_dtype: torch.dtype) -> torch.Tensor:
    key = plan_key(x, w_t, w_scale, bias)
    plan = _planned(_weight_only_plans, key and (key, out_dtype, _rt.ENABLED),
                    lambda: _plan_gemm(x, w_t, None, w_scale, bias, out_dtype, "auto", weight_only=True))
    return plan(x, w_t, None, w_scale, bias)


@_fp8_weight_only_op.register_fake
def _(x, w_t, w_scale, bias, out_dtype):
    return x.new_empty(*x.shape[:-1], w_t.shape[1], dtype=out_dtype)


# ---------------------------------------------------------------------------------------------------
# Layer 4: functional API
# ---------------------------------------------------------------------------------------------------

_OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_operands(a, b, bias, out_dtype, names=("a", "b")):
    na, nb = names  # fp8_weight_only_gemm's operands are x and w_t: messages name what the caller passed
    check_tensor(a, na)
    check_tensor(b, nb)
    check_dtype(a, na, FLOAT_DTYPES + FP8_DTYPES)
    check_dtype(b, nb, FLOAT_DTYPES + FP8_DTYPES)
    if a.dim() < 2:
        raise ShapeError(f"{na} must be [M, K] (or [..., K]), got shape {tuple(a.shape)}")
    if b.dim() != 2:
        raise ShapeError(f"{nb} must be [K, N] (a weight w [N, K] is passed as w.t()), got shape {tuple(b.shape)}")
    if a.shape[-1] != b.shape[0]:
        raise ShapeError(f"inner dims differ: {na} is {tuple(a.shape)} (K={a.shape[-1]}) but {nb} is "
                         f"{tuple(b.shape)} (K={b.shape[0]}); {na} @ {nb} needs {na} [M, K] and {nb} [K, N]")
    if out_dtype is not None:
        check_out_dtype(out_dtype, _OUT_DTYPES)
    if bias is not None:
        check_tensor(bias, "bias")
        check_dtype(bias, "bias", FLOAT_DTYPES)
        if tuple(bias.shape) != (b.shape[1],):
            raise ShapeError(f"bias has shape {tuple(bias.shape)}, expected ({b.shape[1]},)")


def _check_scales(a_scale, b_scale) -> None:
    if a_scale is not None:
        check_scale_values(a_scale, "a_scale")
    if b_scale is not None:
        check_scale_values(b_scale, "b_scale")


def fp8_gemm(a: torch.Tensor, b: torch.Tensor, *, a_scale: torch.Tensor | None = None,
             b_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
             out_dtype: torch.dtype | None = None, check_scales: bool = True,
             _path: str = "auto") -> torch.Tensor:
    """``a @ b`` in FP8 with fp32 accumulation; ``a [M, K]`` (or ``[..., K]``), ``b [K, N]``, any strides.

    (The FP8 tensor cores of sm_89/sm_90 add products inside an MMA with ~14 mantissa bits, not 24: on
    identical FP8 operands the result differs from an exact fp32 sum by ~1e-4 relative, far below the
    e4m3 quantization error of ~3e-2.)

    * fp16/bf16/fp32 operands are quantized automatically to e4m3 (dynamic: b per column, a per row).
      A float ``b`` passed again unchanged (same tensor or view base, same version counter) reuses its FP8
      copy (see ``fp8_cache``), so a weight is quantized once. For M <= 64 (and on sm_80) float activations
      are not quantized: fp16/bf16 ``a`` times the FP8 ``b`` (fp32 ``a`` through bf16, which keeps its
      range), closer to the float product than e4m3 x e4m3.
    * FP8 operands (e4m3fn or e5m2) come with their dequantization scales (``x ~= q.float() * scale``):
      ``a_scale`` ``[]``/``[1]``, ``[M, 1]`` or ``[M, ceil(K/128)]`` (1x128 blocks); ``b_scale`` ``[]``/``[1]``,
      ``[1, N]`` or ``[ceil(K/128), ceil(N/128)]`` (128x128 blocks).
    * Any layout of ``a`` and ``b`` runs at the speed of the K-major one: an FP8 operand that is not
      K-major (e.g. a contiguous ``[K, N]`` ``b``) is copied K-major in one pass first (FP8 MMA reads
      K-major operands only); for ``b`` that copy is kept while b is unchanged.
    * ``bias [N]`` and the output dtype (fp16/bf16/fp32; default: a's dtype for float a, bf16 for FP8 a)
      are applied in the epilogue.
    * ``check_scales`` verifies given scales are finite and positive and raises ``NumericalError``
      otherwise: one host sync the first time a scale tensor (or a new version of it) is seen; scales
      produced by ``quantize_fp8`` and ones already checked cost nothing. Skipped under torch.compile and
      CUDA-graph capture. Whatever this flag, the kernel writes NaN wherever an invalid scale is used.
    """
    key = plan_key(a, b, a_scale, b_scale, bias)
    if key is not None:
        key = (key, out_dtype, _path, _rt.ENABLED)
        plan = _gemm_plans.get(key)
        if plan is not None:
            if check_scales:
                _check_scales(a_scale, b_scale)
            return plan(a, b, a_scale, b_scale, bias)
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
        _check_scales(a_scale, b_scale)
    resolved = out_dtype if out_dtype is not None else (a.dtype if a.dtype in FLOAT_DTYPES else torch.bfloat16)
    if key is not None:
        # Plain eager call: plan once per signature, launch directly (no custom-op dispatcher).
        plan = _gemm_plans.put(key, _plan_gemm(a, b, a_scale, b_scale, bias, resolved, _path))
        return plan(a, b, a_scale, b_scale, bias)
    return _fp8_gemm_op(a, b, a_scale, b_scale, bias, resolved, _path)


def fp8_weight_only_gemm(x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor, *,
                         bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x @ dequant(w_t)``: fp16/bf16/fp32 activations, FP8 weights ``w_t [K, N]`` (``w.t()`` of an
    ``[N, K]`` weight, or a contiguous ``[K, N]``: both run at the same speed) decoded inside the kernel;
    ``w_scale`` per tensor or per column ``[1, N]``.

    Works on every GPU from sm_80 (no FP8 instruction is used); the small-M (decode) path of FP8Linear.
    The kernel writes NaN wherever ``w_scale`` is not finite and positive, and a NaN in ``x`` or a NaN code
    in ``w_t`` gives NaN in the outputs it touches. fp32 ``x`` is rounded to bf16 (its range kept).
    """
    key = plan_key(x, w_t, w_scale, bias)
    if key is not None:
        key = (key, out_dtype, _rt.ENABLED)
        plan = _weight_only_plans.get(key)
        if plan is not None:
            return plan(x, w_t, None, w_scale, bias)
    _check_operands(x, w_t, bias, out_dtype, names=("x", "w_t"))
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
    resolved = out_dtype if out_dtype is not None else x.dtype
    if key is not None:
        plan = _weight_only_plans.put(key, _plan_gemm(x, w_t, None, w_scale, bias, resolved, "auto",
                                                      weight_only=True))
        return plan(x, w_t, None, w_scale, bias)
    return _fp8_weight_only_op(x, w_t, w_scale, bias, resolved)


# ---------------------------------------------------------------------------------------------------
# Compile specs and tuning entry (in fp8_build.py: this file passed ~1,000 lines)
# ---------------------------------------------------------------------------------------------------


def compile_specs(arch: int) -> list:
    """Every config the launchers can pick on ``arch`` (see fp8_build.gemm_compile_specs)."""
    from .fp8_build import gemm_compile_specs

    return gemm_compile_specs(arch)


def tuning_entry():
    """The GEMM kernel's tuning entry for ``triton-ops tune fp8_gemm`` (see fp8_build.gemm_tuning_entry)."""
    from .fp8_build import gemm_tuning_entry

    return gemm_tuning_entry()


__all__ = ["fp8_gemm", "fp8_weight_only_gemm", "gemm_config", "tuned_config", "config_names", "CONFIGS",
           "compile_specs", "tuning_entry", "kmajor_copy"]
