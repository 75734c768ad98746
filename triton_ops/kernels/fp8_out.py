"""FP8 (e4m3fn) outputs written by other kernels' epilogues: the norms and the gated MLP.

An op asked for ``out_dtype=torch.float8_e4m3fn`` quantizes its fp32 result in registers, before anything
is rounded to the activation dtype, and writes 1 byte per element plus fp32 scales, instead of writing a
2-byte activation for a separate ``quantize_fp8`` pass to read again. The semantics are exactly those of
:func:`triton_ops.quantize_fp8` (and of its NumPy reference ``triton_ops.compute.fp8``) applied to that fp32
result:

* scales are dequantization multipliers, ``y ~= q.float() * scale``; dynamic scales map the group's amax to
  448 (``scale = amax / 448``, rounded to nearest);
* the amax ignores NaN and +-inf; an all-zero (or all non-finite) group gets scale 1, and scales are never
  below 2^-126;
* ``q = round_nearest_even(y * fp32(1 / scale))`` saturated to +-448; NaN stays NaN (code 0x7F).

Scalings (``out_scaling``), the same names on every op:

* ``"static"``: one given fp32 scale (``out_scale``, one element), e.g. a checkpoint's ``input_scale``;
* ``"token"``: one dynamic scale per row, shape ``[*lead, 1]`` (``quantize_fp8(y, granularity="row")``);
* ``"block"``: dynamic (1, 128) blocks along the last dim, ``[rows, ceil(n / 128)]`` fp32 (``quantize_fp8(y,
  granularity="block", block_size=(1, 128))``); a ragged last block holds fewer values. This is the
  ``a_scale`` layout ``fp8_gemm``'s block-scaled path reads.

sm_80 has no FP8 conversion instruction (Triton refuses the fp8e4nv type there): kernels built with
``OUT_BYTES`` encode the e4m3 bits with integer operations (:func:`_e4m3_bits`) and store them through a
uint8 view of the output, so the fused outputs work on Ampere too. sm_89+ use the hardware conversion.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..exceptions import DTypeError, InvalidArgumentError, ShapeError, UnsupportedError
from ..utils import cdiv
from .fp8_quantize import _on_sm80, _to_fp8, check_scale_values

#: ``out_scaling`` choices, the same on every op with an FP8 output.
OUT_SCALINGS = ("static", "token", "block")
#: Kernel constexpr ``QUANT``: 0 no quantization (activation-dtype output).
QUANT_NONE, QUANT_STATIC, QUANT_TOKEN, QUANT_BLOCK = 0, 1, 2, 3
_MODE_IDS = {"static": QUANT_STATIC, "token": QUANT_TOKEN, "block": QUANT_BLOCK}
#: Width of a scale block along the last dim (the (1, 128) blocks of fp8_gemm's block-scaled ``a``).
GROUP = 128
#: Largest finite e4m3fn value.
E4M3_MAX = 448.0
FP8_OUT_DTYPE = torch.float8_e4m3fn

#: Tests set this to build the integer-encoding (sm_80) path under the interpreter too; plans bake the
#: choice in, so switch it only with ``triton_ops.launch.clear_plans()``.
FORCE_BYTES = False


# ----------------------------------------------------------------------------------------------------
# jit helpers
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _e4m3_bits(v):
    """fp32 ``v`` with ``|v| <= 448`` (or NaN) -> its e4m3fn code as uint8, round to nearest even, with
    integer and plain fp32 operations only (no FP8 type: builds on sm_80).

    Normals (``|v| >= 2^-6``): the fp32 bits rounded to 3 mantissa bits (ties to even), the exponent rebased
    from 127 to 7 -- a rounding carry moves into the exponent, as it should. Subnormals: ``|v| * 2^9`` is
    below 8, and adding 2^23 rounds it to the integer code (0..8; 8 is the smallest normal's code, so the
    two ranges meet). -0.0 keeps its sign bit (0x80); NaN becomes 0x7F, the code the conversions write.
    """
    u = v.to(tl.uint32, bitcast=True)
    sign = (u >> 24) & 0x80
    a = u & 0x7FFFFFFF
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - (120 << 3)
    mag = a.to(tl.float32, bitcast=True)
    sub = ((mag * 512.0 + 8388608.0).to(tl.uint32, bitcast=True) - 0x4B000000)
    code = tl.where(a >= 0x3C800000, normal, sub) | sign
    code = tl.where(v != v, 0x7F, code)
    return code.to(tl.uint8)


@triton.jit
def _e4m3_value(bits):
    """e4m3fn codes (uint8) -> fp32 values, exactly, with integer operations (NaN codes -> NaN)."""
    b = bits.to(tl.uint32)
    e = (b >> 3) & 0xF
    m = b & 0x7
    # normal: exponent rebased from 7 to 127; subnormal (e == 0): m * 2^-9
    normal = ((e + 120) << 23 | (m << 20)).to(tl.float32, bitcast=True)
    mag = tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal)
    val = tl.where((b & 0x80) != 0, -mag, mag)
    return tl.where((b & 0x7F) == 0x7F, float("nan"), val)


@triton.jit
def _fp8_codes(y, inv, OUT_BYTES: tl.constexpr):
    """fp32 ``y`` scaled by ``inv``, saturated to +-448 and rounded to e4m3: fp8e4nv values, or their bits as
    uint8 with OUT_BYTES (sm_80). Same arithmetic as quantize_fp8 (``y * inv`` in fp32, then the cast)."""
    if OUT_BYTES:
        v = y * inv
        v = tl.where(v > 448.0, 448.0, v)
        v = tl.where(v < -448.0, -448.0, v)
        return _e4m3_bits(v)
    else:
        return _to_fp8(y, inv, 448.0, tl.float8e4nv)


@triton.jit
def _rows_rescale_kernel(q_ptr, raw_ptr, s_ptr, M, N, n_groups, stride_qm, stride_rm,
                         ROWS: tl.constexpr, BLOCK_G: tl.constexpr, CHUNK: tl.constexpr,
                         OUT_BYTES: tl.constexpr):
    """Block-scaled codes -> per-row codes, in place: the second step of a per-token FP8 output whose rows
    span several programs of the producing kernel (the gated MLP's N tiles).

    ``raw [M, n_groups]`` holds each (1, 128) block's ``amax / 448`` without the all-zero fallback (so the
    row's maximum of them is exactly ``amax_row / 448``: the division is monotonic); ``q [M, N]`` (uint8
    view) holds each block's codes under the block's safe scale. Each program writes the row scales of
    ROWS rows and re-encodes their codes under them, CHUNK columns (CHUNK // 128 blocks) at a time.
    """
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    row_ok = rows < M
    g = tl.arange(0, BLOCK_G)[None, :]
    raw = tl.load(raw_ptr + rows * stride_rm + g, mask=row_ok & (g < n_groups), other=0.0)
    rmax = tl.max(raw, axis=1)[:, None]
    s_row = tl.maximum(tl.where(rmax > 0.0, rmax, 1.0), 1.1754943508222875e-38)
    tl.store(s_ptr + rows, s_row, mask=row_ok)
    inv_row = tl.math.div_rn(1.0, s_row)
    NG: tl.constexpr = CHUNK // 128
    cols = tl.arange(0, CHUNK)[None, :]
    gg = tl.arange(0, NG)[None, :]
    for c0 in range(0, N, CHUNK):
        m = row_ok & (c0 + cols < N)
        bits = tl.load(q_ptr + rows * stride_qm + c0 + cols, mask=m, other=0)
        rb = tl.load(raw_ptr + rows * stride_rm + c0 // 128 + gg, mask=row_ok & (c0 // 128 + gg < n_groups),
                     other=0.0)
        sb = tl.maximum(tl.where(rb > 0.0, rb, 1.0), 1.1754943508222875e-38)
        # value in units of the row scale: code * (block scale / row scale), in fp32
        f = sb * inv_row
        v = tl.reshape(_e4m3_value(bits), [ROWS, NG, 128]) * f[:, :, None]
        q = tl.reshape(_fp8_codes(v, 1.0, OUT_BYTES), [ROWS, CHUNK])
        if not OUT_BYTES:
            q = q.to(tl.uint8, bitcast=True)
        tl.store(q_ptr + rows * stride_qm + c0 + cols, q, mask=m)


# ----------------------------------------------------------------------------------------------------
# Host side: the argument contract shared by every op
# ----------------------------------------------------------------------------------------------------
def store_bytes(device: torch.device) -> bool:
    """True where the kernels must encode e4m3 with integer operations (sm_80-class GPUs; tests)."""
    return FORCE_BYTES or _on_sm80(device)


def resolve_fp8_output(out_dtype, out_scaling, out_scale, act_dtype: torch.dtype, device: torch.device,
                       default_scaling: str, op: str) -> int:
    """Check ``out_dtype`` / ``out_scaling`` / ``out_scale`` and return the kernel's QUANT mode (0: an
    activation-dtype output). Raises TritonOpsError subclasses with what was given and what is expected."""
    if out_dtype is None or out_dtype == act_dtype:
        if out_scaling is not None or out_scale is not None:
            raise InvalidArgumentError(f"{op}: out_scaling / out_scale apply only to an FP8 output; pass "
                                       "out_dtype=torch.float8_e4m3fn")
        return QUANT_NONE
    if out_dtype == torch.float8_e5m2:
        raise UnsupportedError(f"{op}: FP8 outputs are e4m3fn only (the activation format of FP8 GEMMs); "
                               "got out_dtype=torch.float8_e5m2")
    if out_dtype != FP8_OUT_DTYPE:
        raise DTypeError(f"{op}: out_dtype={out_dtype!r} is not supported; expected None (the input's dtype "
                         f"{act_dtype}) or torch.float8_e4m3fn")
    scaling = out_scaling if out_scaling is not None else ("static" if out_scale is not None else default_scaling)
    if scaling not in OUT_SCALINGS:
        raise InvalidArgumentError(f"{op}: out_scaling={scaling!r} is not supported; expected one of "
                                   f"{OUT_SCALINGS}")
    if scaling == "static":
        if out_scale is None:
            raise InvalidArgumentError(f"{op}: out_scaling='static' needs out_scale, a one-element fp32 tensor "
                                       "(the dequantization scale: y ~= q.float() * out_scale)")
        if not isinstance(out_scale, torch.Tensor):
            raise InvalidArgumentError(f"{op}: out_scale must be a tensor, got {type(out_scale).__name__}")
        if out_scale.dtype != torch.float32:
            raise DTypeError(f"{op}: out_scale has dtype {out_scale.dtype}; expected torch.float32")
        if out_scale.numel() != 1:
            raise ShapeError(f"{op}: out_scale has shape {tuple(out_scale.shape)}; a static scale is one value "
                             "(shape [] or [1])")
        if out_scale.device != device:
            from ..exceptions import DeviceError

            raise DeviceError(f"{op}: out_scale is on {out_scale.device} but the input is on {device}")
        check_scale_values(out_scale, "out_scale")
    elif out_scale is not None:
        raise InvalidArgumentError(f"{op}: out_scale is only used with out_scaling='static' (got "
                                   f"out_scaling={scaling!r}, whose scales are computed)")
    return _MODE_IDS[scaling]


def scale_shape(mode: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the dynamic scales for an output of ``shape`` (``()`` placeholder for static)."""
    if mode == QUANT_TOKEN:
        return (*shape[:-1], 1)
    if mode == QUANT_BLOCK:
        rows = 1
        for d in shape[:-1]:
            rows *= d
        return (rows, cdiv(shape[-1], GROUP))
    return (0,)


def empty_result(mode: int, shape: tuple[int, ...], device: torch.device):
    """``(q, scales)`` of an empty problem: scales of an empty (or zero-width) group are 1, as quantize_fp8's."""
    q = torch.empty(shape, dtype=FP8_OUT_DTYPE, device=device)
    return q, torch.ones(scale_shape(mode, shape), dtype=torch.float32, device=device)


def quantize_reference(y: torch.Tensor, out_scaling: str, out_scale: torch.Tensor | None = None):
    """The unfused second step in PyTorch ops: ``y`` (the fp32 result) quantized as the fused output is,
    ``(q, scale)`` with quantize_fp8's semantics (the baseline the benchmarks compile and time)."""
    from .fp8_quantize import _quantize_torch

    q = torch.empty(y.shape, dtype=FP8_OUT_DTYPE, device=y.device)
    if out_scaling == "static":
        q, _ = _quantize_torch(y, FP8_OUT_DTYPE, "tensor", None, out_scale, q)
        return q, out_scale
    if out_scaling == "token":
        return _quantize_torch(y, FP8_OUT_DTYPE, "row", None, None, q)
    return _quantize_torch(y, FP8_OUT_DTYPE, "block", (1, GROUP), None, q)


def rescale_rows_step(M: int, N: int, stride_qm: int, n_groups: int, out_bytes: bool):
    """The per-row step of a per-token output produced block by block: ``run(q_u8, raw, s)`` with ``q_u8``
    the uint8 view of the codes ``[M, N]``, ``raw [M, n_groups]`` the blocks' unclamped ``amax / 448`` and
    ``s [M, 1]`` the row scales it writes. One read and one write of each code (2 bytes per element) plus
    4 bytes per 128 elements of ``raw``."""
    from ..launch import KernelLaunch
    from ..utils import next_power_of_2

    rows, chunk = 2, 1024
    launch = KernelLaunch(_rows_rescale_kernel, (cdiv(M, rows),),
                          dict(ROWS=rows, BLOCK_G=max(2, next_power_of_2(n_groups)), CHUNK=chunk,
                               OUT_BYTES=out_bytes), num_warps=4)
    ints = (M, N, n_groups, stride_qm, n_groups)

    def run(q_u8, raw, s):
        launch(q_u8, raw, s, *ints)
    return run


def rescale_compile_specs(arch: int) -> list:
    """The per-row step at the block counts of I = 256, 5120, 14336 and 32768 (one load of the row's block
    amaxes each: BLOCK_G 2 to 256), as store_bytes picks it on ``arch`` (integer encoding below sm_89)."""
    from ..compile_check import CompileSpec

    specs = []
    out_bytes = arch < 89
    for n_groups in (2, 40, 112, 256):
        sig = {"q_ptr": "*u8", "raw_ptr": "*fp32", "s_ptr": "*fp32", "M": "i32", "N": "i32",
               "n_groups": "i32", "stride_qm": "i32", "stride_rm": "i32"}
        const = dict(ROWS=2, BLOCK_G=max(2, 1 << (n_groups - 1).bit_length()), CHUNK=1024, OUT_BYTES=out_bytes)
        sig.update({k: "constexpr" for k in const})
        specs.append(CompileSpec(_rows_rescale_kernel, sig, const, num_warps=4, num_stages=1,
                                 aligned=("q_ptr", "raw_ptr", "s_ptr", "N", "stride_qm"),
                                 label=f"fp8_rows_rescale groups={n_groups} bytes={int(out_bytes)}"))
    return specs


__all__ = ["OUT_SCALINGS", "GROUP", "E4M3_MAX", "resolve_fp8_output", "scale_shape", "store_bytes",
           "empty_result", "rescale_rows_step", "quantize_reference"]
