"""The FP8 numerics contract on every path (interpreter and GPU alike):

* a NaN in an input (a float NaN, or the e4m3 NaN code 0x7F / 0xFF in an FP8 operand) gives NaN in exactly
  the output rows / columns it touches: the native FP8 GEMM, block-scaled, weight-only (decode sizes), the
  all-decoded sm_80 path, the FP8 gated MLP and dequantization;
* FP8Linear keeps the range of fp32 activations on its weight-only path (|x| ~ 1e5 is finite);
* FP8Linear is inference only: weight, scales and bias are buffers, and a backward through it raises
  UnsupportedError naming the layer;
* ``out_dtype`` that is not a supported torch.dtype (``"bfloat16"``, ``torch.int8``, ``3``) raises the same
  InvalidArgumentError from fp8_gemm, fused_gated_mlp_fp8 and dequantize_fp8.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import triton_ops as to
from triton_ops import FP8Linear, InvalidArgumentError, UnsupportedError, fp8_gemm, quantize_fp8

from .conftest import DEVICE

E4M3 = torch.float8_e4m3fn
K, N = 256, 128
ROW, COL = 3, 7  # the poisoned row of a and column of b


def _nan_code(q: torch.Tensor, i: int, j: int, code: int = 0x7F) -> torch.Tensor:
    q = q.clone()
    q.view(torch.uint8)[i, j] = code
    return q


def _expect_row_nan(out: torch.Tensor, row: int) -> None:
    assert out[row].isnan().all(), "the poisoned row must be NaN everywhere"
    others = torch.cat([out[:row], out[row + 1:]])
    assert others.isfinite().all(), "no other row may be touched"


def _expect_col_nan(out: torch.Tensor, col: int) -> None:
    assert out[:, col].isnan().all(), "the poisoned column must be NaN everywhere"
    assert torch.cat([out[:, :col], out[:, col + 1:]], dim=1).isfinite().all(), "no other column may be touched"


@pytest.mark.parametrize("M", [8, 96])  # weight-only (decode sizes) and native FP8 GEMM
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_nan_in_float_operands(M, dtype):
    g = torch.Generator().manual_seed(M)
    a = torch.randn(M, K, generator=g).to(DEVICE, dtype)
    b = torch.randn(K, N, generator=g).to(DEVICE, dtype)
    a_nan = a.clone()
    a_nan[ROW, 5] = float("nan")
    _expect_row_nan(fp8_gemm(a_nan, b).float(), ROW)
    b_nan = b.clone()
    b_nan[11, COL] = float("nan")
    _expect_col_nan(fp8_gemm(a, b_nan).float(), COL)


@pytest.mark.parametrize("code", [0x7F, 0xFF])
@pytest.mark.parametrize("M", [8, 96])
@pytest.mark.parametrize("path", ["auto", "decode"])  # "decode": the all-decoded (sm_80) kernel
def test_nan_code_in_fp8_operands(code, M, path):
    g = torch.Generator().manual_seed(code + M)
    qa, sa = quantize_fp8(torch.randn(M, K, generator=g).to(DEVICE), granularity="row")
    qw, sw = quantize_fp8(torch.randn(N, K, generator=g).to(DEVICE), granularity="row")
    out = fp8_gemm(_nan_code(qa, ROW, 5, code), qw.t(), a_scale=sa, b_scale=sw.t(), out_dtype=torch.float32,
                   _path=path)
    _expect_row_nan(out, ROW)
    out = fp8_gemm(qa, _nan_code(qw, COL, 9, code).t(), a_scale=sa, b_scale=sw.t(), out_dtype=torch.float32,
                   _path=path)
    _expect_col_nan(out, COL)


def test_nan_code_block_scaled_and_weight_only():
    g = torch.Generator().manual_seed(5)
    M = 96
    qa, sa = quantize_fp8(torch.randn(M, K, generator=g).to(DEVICE), granularity="block", block_size=(1, 128))
    qw, sw = quantize_fp8(torch.randn(N, K, generator=g).to(DEVICE), granularity="block", block_size=(128, 128))
    out = fp8_gemm(_nan_code(qa, ROW, 200), qw.t(), a_scale=sa, b_scale=sw.t(), out_dtype=torch.float32)
    _expect_row_nan(out, ROW)
    # the weight-only kernel (FP8Linear's decode path) on a NaN weight code
    qr, sr = quantize_fp8(torch.randn(N, K, generator=g).to(DEVICE), granularity="row")
    x = torch.randn(4, K, generator=g).to(DEVICE, torch.float16)
    _expect_col_nan(to.fp8_weight_only_gemm(x, _nan_code(qr, COL, 3).t(), sr.t()).float(), COL)


def test_nan_code_gated_mlp_and_dequantize():
    g = torch.Generator().manual_seed(9)
    M, H, inter = 64, 128, 128
    xq, xs = quantize_fp8(torch.randn(M, H, generator=g).to(DEVICE), granularity="row")
    wq, ws = quantize_fp8(torch.randn(2 * inter, H, generator=g).to(DEVICE), granularity="row")
    out = to.fused_gated_mlp_fp8(_nan_code(xq, ROW, 17), xs, wq[:inter], ws[:inter].reshape(-1), wq[inter:],
                                 ws[inter:].reshape(-1)).float()
    _expect_row_nan(out, ROW)
    deq = to.dequantize_fp8(_nan_code(xq, ROW, 17), xs)
    assert deq[ROW, 17].isnan() and deq.isnan().sum() == 1


@pytest.mark.parametrize("M", [4, 96])
def test_fp8_linear_keeps_fp32_range(M):
    g = torch.Generator().manual_seed(M)
    lin = nn.Linear(K, N, bias=False).to(DEVICE)
    f = FP8Linear.from_linear(lin)
    x = (torch.randn(M, K, generator=g) * 1e5).to(DEVICE)  # finite in fp32, inf in fp16
    with torch.no_grad():
        y = f(x)
        want = x.double() @ f.dequantized_weight(torch.float64).t()
    assert y.dtype == torch.float32 and y.isfinite().all()
    # e4m3 activations (M=96) or bf16-rounded ones (M=4) times the e4m3 weight: a few percent at most
    assert ((y.double() - want).norm() / want.norm()).item() < 5e-2


def test_fp8_linear_is_inference_only():
    lin = nn.Linear(K, N).to(DEVICE)
    f = FP8Linear.from_linear(lin)
    assert list(f.parameters()) == [] and set(dict(f.named_buffers())) == {"weight", "weight_scale", "bias"}
    assert set(f.state_dict()) == {"weight", "weight_scale", "bias"}
    fresh = FP8Linear(K, N, device=DEVICE, dtype=torch.float32)
    assert list(fresh.parameters()) == [] and not fresh.bias.requires_grad
    fresh.load_state_dict(f.state_dict())
    assert torch.equal(fresh.bias, f.bias)
    x = torch.randn(96, K, device=DEVICE, requires_grad=True)
    y = f(x)  # the forward runs under grad mode (frozen-layer inference inside a training script)
    with torch.no_grad():
        assert torch.equal(y.detach(), f(x))
    assert y.requires_grad
    with pytest.raises(UnsupportedError, match="FP8Linear is inference only"):
        y.sum().backward()
    assert f.half().bias.dtype == torch.float16  # model casts still reach the bias buffer


@pytest.mark.parametrize("bad", ["bfloat16", torch.int8, 3])
def test_out_dtype_errors_are_the_same(bad):
    g = torch.Generator().manual_seed(1)
    xq, xs = quantize_fp8(torch.randn(8, K, generator=g).to(DEVICE), granularity="row")
    wq, ws = quantize_fp8(torch.randn(2 * N, K, generator=g).to(DEVICE), granularity="row")
    calls = {
        "fp8_gemm": lambda: fp8_gemm(xq, wq[:N].t(), a_scale=xs, b_scale=ws[:N].t(), out_dtype=bad),
        "fused_gated_mlp_fp8": lambda: to.fused_gated_mlp_fp8(xq, xs, wq[:N], ws[:N].reshape(-1), wq[N:],
                                                              ws[N:].reshape(-1), out_dtype=bad),
        "dequantize_fp8": lambda: to.dequantize_fp8(xq, xs, out_dtype=bad),
    }
    messages = set()
    for call in calls.values():
        with pytest.raises(InvalidArgumentError, match="is not supported; expected one of") as info:
            call()
        messages.add(str(info.value))
    assert len(messages) == 1, messages

