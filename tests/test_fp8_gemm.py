"""fp8_gemm against the float64 reference (compute/fp8.scaled_gemm) and its accuracy bars.

Accuracy ("<1% accuracy loss", made measurable): on Gaussian data the relative L2 error of the
auto-quantized GEMM (per-row a, per-column b) against the float64 product is ~3.6% (SQNR ~28.8 dB), per
tensor ~4.5% (~27 dB); pre-quantized operands are exact up to fp32 accumulation (< 1e-6). The "<1%"
claim holds for what a model sees: FP8Linear in an MLP keeps cosine similarity >= 0.999 with the fp16
model (tests/test_fp8_linear.py).
"""

from __future__ import annotations

import pytest
import torch

from triton_ops.compute import fp8 as ref
from triton_ops.exceptions import DTypeError, InvalidArgumentError, NumericalError, ShapeError
from triton_ops.kernels.fp8_gemm import CONFIGS, SMALL_M, fp8_gemm, fp8_weight_only_gemm, gemm_config
from triton_ops.kernels.fp8_quantize import quantize_fp8

from .conftest import DEVICE

FP8_INPUT_OPCHECKS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _np(t):
    return t.detach().double().cpu().numpy()


def _fp8_mma_on_gpu() -> bool:
    return DEVICE == "cuda" and torch.cuda.get_device_capability() >= (8, 9)


#: Relative error of a GEMM on identical FP8 inputs against the float64 reference, per accumulator:
#: fp32 accumulation of exact fp8 x fp8 products (the interpreter, the decode path's fp16 MMA) differs
#: by summation order only, ~1e-7. The FP8 tensor cores (sm_89 mma / sm_90 wgmma e4m3) do not keep a
#: full fp32 accumulator: products are aligned and summed with ~13-14 mantissa bits (the DeepSeek-V3
#: report, section 3.3.2, measured ~14 bits on H800), i.e. ~2^-13 = 1.2e-4 relative. Measured on an
#: H200: 1.2e-4 (block scales, one MMA chain per 128-wide K block) to 2.3e-4 (tensor/row scales, one
#: chain over all of K). A wrong scale order would be off by percent, so 1e-3 still catches it.
PREQUANT_RTOL = {"fp32": 1e-5, "fp8_mma": 1e-3}


def _prequant_rtol(path: str) -> float:
    return PREQUANT_RTOL["fp8_mma" if (path != "decode" and _fp8_mma_on_gpu()) else "fp32"]


@pytest.mark.parametrize("M,N,K", [(37, 70, 300), (130, 200, 260), (5, 64, 96)])
def test_auto_from_fp16_sqnr(M, N, K):
    a = torch.randn(M, K, dtype=torch.float16, device=DEVICE)
    b = torch.randn(K, N, dtype=torch.float16, device=DEVICE)
    out = fp8_gemm(a, b)
    assert out.dtype == torch.float16 and out.shape == (M, N)
    # M > 64: per-row a x per-column b, both e4m3: 28.55-28.71 dB over 12 seeds at 130x200x260 (the issue's
    # bar is 28 dB). M <= 64: a stays fp16 (weight-only kernel), only b is e4m3: 30.7-32.7 dB over 12 seeds
    # at 5x64x96 (few outputs, so a wider spread), 31.3-31.9 at 37x70x300; 29 dB is ~3 dB of margin.
    assert ref.sqnr_db(_np(out), _np(a) @ _np(b)) >= (29.0 if M <= SMALL_M else 28.0)


def test_auto_decode_path_and_fp32_inputs():
    a, b = torch.randn(33, 200, device=DEVICE), torch.randn(200, 50, device=DEVICE)
    for path in ("native", "decode"):
        out = fp8_gemm(a, b, _path=path)
        assert out.dtype == torch.float32 and ref.sqnr_db(_np(out), _np(a) @ _np(b)) >= 28.0


@pytest.mark.parametrize("path", ["native", "decode"])
@pytest.mark.parametrize("gran", ["tensor", "row", "block"])
def test_prequantized_matches_reference(path, gran):
    M, N, K = 37, 150, 300
    a, w = torch.randn(M, K, device=DEVICE), torch.randn(N, K, device=DEVICE)
    bias = torch.randn(N, device=DEVICE)
    if gran == "block":
        qa, sa = quantize_fp8(a, granularity="block", block_size=(1, 128))
        qb, sb = quantize_fp8(w.t().contiguous(), granularity="block", block_size=(128, 128))
        kw = dict(a_granularity="block", b_granularity="block", a_block=(1, 128), b_block=(128, 128))
    else:
        qa, sa = quantize_fp8(a, granularity=gran)
        qw, sw = quantize_fp8(w, granularity=gran)
        qb, sb = qw.t(), (sw if gran == "tensor" else sw.t())  # b = w.t(): transposed view, no copy
        kw = dict(a_granularity=gran, b_granularity="column" if gran == "row" else gran)
    out = fp8_gemm(qa, qb, a_scale=sa, b_scale=sb, bias=bias, out_dtype=torch.float32, _path=path)
    want = ref.scaled_gemm(_np(qa), _np(qb), _np(sa), _np(sb), bias=_np(bias), **kw)
    # identical inputs: only the accumulator differs (see PREQUANT_RTOL)
    assert ref.relative_error(_np(out), want) < _prequant_rtol(path)
    x_ref = _np(a) @ _np(w).T + _np(bias)
    assert ref.sqnr_db(_np(out), x_ref) >= (25.0 if gran == "tensor" else 28.0)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_out_dtypes_bias_and_e5m2(out_dtype):
    a, w = torch.randn(20, 96, device=DEVICE), torch.randn(40, 96, device=DEVICE)
    qa, sa = quantize_fp8(a, granularity="row", dtype=torch.float8_e5m2)
    qw, sw = quantize_fp8(w, granularity="row")
    bias = torch.randn(40, device=DEVICE, dtype=torch.float16)
    out = fp8_gemm(qa, qw.t(), a_scale=sa, b_scale=sw.t(), bias=bias, out_dtype=out_dtype)
    assert out.dtype == out_dtype
    want = ref.scaled_gemm(_np(qa), _np(qw).T, _np(sa), _np(sw).T, a_granularity="row", b_granularity="column",
                           bias=_np(bias))
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}[out_dtype]  # output rounding
    assert ref.relative_error(_np(out), want) < tol


def test_leading_dims_and_weight_only():
    x = torch.randn(2, 3, 64, dtype=torch.float16, device=DEVICE)
    w = torch.randn(48, 64, device=DEVICE)
    qw, sw = quantize_fp8(w, granularity="row")
    out = fp8_weight_only_gemm(x, qw.t(), sw.t(), bias=torch.ones(48, device=DEVICE))
    assert out.shape == (2, 3, 48) and out.dtype == torch.float16
    want = _np(x) @ (_np(qw) * _np(sw)).T + 1.0
    assert ref.relative_error(_np(out), want) < 2e-3  # fp16 output rounding
    assert fp8_gemm(x, w.t()).shape == (2, 3, 48)


def test_empty_and_k_zero():
    a = torch.randn(0, 16, device=DEVICE)
    assert fp8_gemm(a, torch.randn(16, 8, device=DEVICE)).shape == (0, 8)
    out = fp8_gemm(torch.randn(4, 0, device=DEVICE), torch.randn(0, 8, device=DEVICE),
                   bias=torch.full((8,), 2.0, device=DEVICE))
    assert torch.equal(out, torch.full((4, 8), 2.0, device=DEVICE))


def test_bad_inputs():
    a, b = torch.randn(8, 32, device=DEVICE), torch.randn(32, 16, device=DEVICE)
    qa, sa = quantize_fp8(a, granularity="row")
    with pytest.raises(ShapeError):
        fp8_gemm(a, torch.randn(31, 16, device=DEVICE))  # K mismatch
    with pytest.raises(DTypeError):
        fp8_gemm(a.to(torch.int32), b)
    with pytest.raises(InvalidArgumentError):
        fp8_gemm(qa, b)  # fp8 a without a_scale
    with pytest.raises(InvalidArgumentError):
        fp8_gemm(a, b, a_scale=sa)  # scale with a float operand
    with pytest.raises(ShapeError):
        fp8_gemm(qa, b, a_scale=torch.ones(7, 1, device=DEVICE))
    with pytest.raises(ShapeError):
        fp8_gemm(a, b, bias=torch.ones(15, device=DEVICE))
    with pytest.raises(InvalidArgumentError):
        fp8_gemm(a, b, out_dtype=torch.int8)
    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(NumericalError):
            fp8_gemm(qa, b, a_scale=torch.full((8, 1), bad, device=DEVICE))
    with pytest.raises(ShapeError):
        fp8_gemm(torch.randn(32, device=DEVICE), b)


def test_gemm_config_is_pure_and_consistent():
    for M, N, K, arch in [(4096, 4096, 4096, 90), (1024, 4096, 4096, 90), (16, 14336, 4096, 90),
                          (4096, 4096, 4096, 89), (4096, 4096, 4096, 80), (64, 128, 128, 80)]:
        cfg = gemm_config(M, N, K, arch)
        assert cfg == gemm_config(M, N, K, arch) and cfg["name"] in CONFIGS
        assert (cfg["BLOCK_M"] <= 64) == (M <= SMALL_M)
    assert gemm_config(4096, 4096, 4096, 90)["name"] == "h_256"
    assert gemm_config(4096, 4096, 4096, 90, out_fp32=True)["name"] == "h_128"
    assert gemm_config(4096, 4096, 4096, 90, block_scaled=True)["BLOCK_K"] == 128
    assert gemm_config(4096, 4096, 4096, 80, block_scaled=True)["BLOCK_K"] == 128


def test_split_k_config():
    # decode shape on 132 SMs: 224 N tiles >= 132 SMs, no split (split-K 3 measured slower on an H200)
    cfg = gemm_config(16, 14336, 4096, 90)
    assert cfg["SPLIT_K"] == 1 and cfg["NUM_PROGS"] == 224
    # 64 N tiles leave SMs idle: K is split so ~4 programs run per SM
    cfg = gemm_config(16, 4096, 4096, 90)
    assert cfg["SPLIT_K"] > 1 and cfg["NUM_PROGS"] == 64 * cfg["SPLIT_K"]
    assert cfg["K_TILES_PER_SPLIT"] * (cfg["SPLIT_K"] - 1) < 4096 // cfg["BLOCK_K"]  # no empty slice
    assert gemm_config(4096, 4096, 4096, 90)["SPLIT_K"] == 1
    assert gemm_config(16, 64, 256, 90)["SPLIT_K"] == 1  # one K step: nothing to split


@pytest.mark.parametrize("weight_only", [True, False])
def test_split_k_matches_reference(weight_only):
    # interpreter: 4 "SMs", 2 N tiles and 4 K steps -> split K = 2 (partials + reduction kernel)
    M, N, K = 3, 96, 1024
    assert gemm_config(M, N, K, 90, sms=4)["SPLIT_K"] == 2
    x = torch.randn(M, K, device=DEVICE, dtype=torch.float16)
    w = torch.randn(N, K, device=DEVICE)
    bias = torch.randn(N, device=DEVICE, dtype=torch.float16)
    qw, sw = quantize_fp8(w, granularity="row")
    if weight_only:
        out = fp8_weight_only_gemm(x, qw.t(), sw.t(), bias=bias)
        want = _np(x) @ (_np(qw) * _np(sw)).T + _np(bias)
        tol = 2e-3  # fp16 output rounding
    else:
        qa, sa = quantize_fp8(x, granularity="row")
        out = fp8_gemm(qa, qw.t(), a_scale=sa, b_scale=sw.t(), bias=bias, out_dtype=torch.float32)
        want = ref.scaled_gemm(_np(qa), _np(qw).T, _np(sa), _np(sw).T, a_granularity="row",
                               b_granularity="column", bias=_np(bias))
        tol = _prequant_rtol("native")
    assert ref.relative_error(_np(out), want) < tol


@pytest.mark.parametrize("transposed_b", [False, True])
def test_operand_quantization_for_gemm(transposed_b):
    from triton_ops.kernels.fp8_quantize import quantize_operands_for_gemm

    M, K, N = 37, 600, 70  # K > 256 rows: three column-amax splits reduced in the quantize pass
    a = torch.randn(M, K, device=DEVICE, dtype=torch.float16) * 3
    b = (torch.randn(N, K, device=DEVICE, dtype=torch.float16).t() if transposed_b else
         torch.randn(K, N, device=DEVICE, dtype=torch.float16))
    qa, sa, qb, sb = quantize_operands_for_gemm(a, b)
    assert qb.shape == (K, N) and qb.stride() == (1, K)  # K-major, the FP8 MMA layout
    assert sa.shape == (M, 1) and sb.shape == (1, N)
    want_qa, want_sa = quantize_fp8(a, granularity="row")
    want_qb, want_sb = quantize_fp8(b.contiguous(), granularity="column")
    torch.testing.assert_close(sa, want_sa, rtol=0, atol=0)
    torch.testing.assert_close(sb, want_sb.reshape(1, N), rtol=0, atol=0)
    assert torch.equal(qa.view(torch.uint8), want_qa.view(torch.uint8))
    assert torch.equal(qb.contiguous().view(torch.uint8), want_qb.view(torch.uint8))


def test_tuned_config_is_used_when_switched_on(tmp_path, monkeypatch):
    from triton_ops.autotuner import runtime as rt
    from triton_ops.autotuner.cache import ConfigCache
    from triton_ops.kernels import fp8_gemm as mod

    monkeypatch.setenv("TRITON_OPS_CACHE_DIR", str(tmp_path))
    M, N, K = 8, 96, 512
    dev = torch.device(DEVICE)
    arch = mod._arch(dev)
    base = mod.tuned_config(M, N, K, arch, dev, sms=4)
    ConfigCache(tmp_path).set("fp8_gemm", (M, N, K), rt.device_key(dev), {"name": "small_64", "GROUP_M": 8,
                                                                           "SPLIT_K": 2})
    try:
        with rt.use_tuned_configs(False):
            assert mod.tuned_config(M, N, K, arch, dev, sms=4) == base  # off: the heuristic
        with rt.use_tuned_configs(True):
            cfg = mod.tuned_config(M, N, K, arch, dev, sms=4)
            assert cfg["name"] == "small_64" and cfg["SPLIT_K"] == 2
            # a stored config this launch cannot use is ignored (block-scaled launches keep BLOCK_K 128)
            assert mod.tuned_config(M, N, K, arch, dev, sms=4, block_scaled=True)["name"] != "small_64"
            x = torch.randn(M, K, device=DEVICE, dtype=torch.float16)
            w = torch.randn(N, K, device=DEVICE)
            qw, sw = quantize_fp8(w, granularity="row")
            out = fp8_weight_only_gemm(x, qw.t(), sw.t())
            want = _np(x) @ (_np(qw) * _np(sw)).T
            assert ref.relative_error(_np(out), want) < 2e-3
    finally:
        rt.use_tuned_configs(None)


def test_tuning_entry():
    from triton_ops.autotuner.configs import generate_configs
    from triton_ops.kernels.fp8_gemm import tuning_entry

    entry = tuning_entry()
    assert entry.kernel_type == "fp8_gemm" and (4096, 4096, 4096) in entry.default_shapes
    shape = entry.cpu_shapes[1]
    default = entry.default_config(shape)
    valid = entry.valid_configs(shape, generate_configs(entry.config_space))
    assert default in valid and len(valid) > 1
    args, kwargs = entry.make_args(shape, DEVICE, entry.dtype)
    ref_out = entry.run(*args, **kwargs, **default)
    other = next(c for c in valid if c["SPLIT_K"] != default["SPLIT_K"])
    out = entry.run(*args, **kwargs, **other)
    assert ref.relative_error(_np(out), _np(ref_out)) < entry.rtol


def test_opcheck_and_compile():
    a, b = torch.randn(8, 64, device=DEVICE), torch.randn(64, 16, device=DEVICE)
    torch.library.opcheck(torch.ops.triton_ops.fp8_gemm.default, (a, b, None, None, None, torch.float32, "auto"))
    qa, sa = quantize_fp8(a, granularity="row")
    torch.library.opcheck(torch.ops.triton_ops.fp8_gemm.default,
                          (qa, b.to(torch.float8_e4m3fn), sa, torch.ones(1, device=DEVICE), None, torch.float32,
                           "auto"), test_utils=FP8_INPUT_OPCHECKS)
    f = torch.compile(lambda a, b: fp8_gemm(a, b) * 2, fullgraph=True)
    torch.testing.assert_close(f(a, b), fp8_gemm(a, b) * 2)


# ---- GPU ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("M,N,K", [(4096, 4096, 4096), (1024, 4096, 4096), (199, 5120, 3584), (16, 14336, 4096)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_auto(M, N, K, dtype):
    a = torch.randn(M, K, device="cuda", dtype=dtype)
    b = torch.randn(K, N, device="cuda", dtype=dtype)
    out = fp8_gemm(a, b)
    want = a.double() @ b.double()
    assert ref.sqnr_db(out.double().cpu().numpy(), want.cpu().numpy()) >= 28.0


@pytest.mark.gpu
@pytest.mark.parametrize("transposed_b", [False, True])
def test_gpu_operand_quantization_matches_quantize_fp8(transposed_b):
    from triton_ops.kernels.fp8_quantize import quantize_operands_for_gemm

    M, K, N = 1024, 4096, 14336  # b: 117 MB of fp16, more than L2, 16 column-amax splits
    a = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    b = (torch.randn(N, K, device="cuda", dtype=torch.bfloat16).t() if transposed_b else
         torch.randn(K, N, device="cuda", dtype=torch.bfloat16))
    qa, sa, qb, sb = quantize_operands_for_gemm(a, b)
    want_qa, want_sa = quantize_fp8(a, granularity="row")
    want_qb, want_sb = quantize_fp8(b, granularity="column")
    assert torch.equal(sa, want_sa) and torch.equal(sb, want_sb.reshape(1, N))
    assert torch.equal(qa.view(torch.uint8), want_qa.view(torch.uint8))
    assert torch.equal(qb.view(torch.uint8), want_qb.view(torch.uint8))
    out = fp8_gemm(a, b)
    assert ref.sqnr_db(out.double().cpu().numpy(), (a.double() @ b.double()).cpu().numpy()) >= 28.0


@pytest.mark.gpu
@pytest.mark.parametrize("gran", ["tensor", "row"])
def test_gpu_prequant_vs_scaled_mm(gran):
    M = N = K = 4096
    a = torch.randn(M, K, device="cuda")
    w = torch.randn(N, K, device="cuda")
    qa, sa = quantize_fp8(a, granularity=gran)
    qw, sw = quantize_fp8(w, granularity=gran)
    sb = sw if gran == "tensor" else sw.t()
    out = fp8_gemm(qa, qw.t(), a_scale=sa, b_scale=sb, out_dtype=torch.bfloat16)
    want = torch._scaled_mm(qa, qw.t(), scale_a=sa.reshape(()) if gran == "tensor" else sa,
                            scale_b=sb.reshape(()) if gran == "tensor" else sb, out_dtype=torch.bfloat16)
    # both round an fp32 accumulation to bf16 (2^-9 relative)
    assert ref.relative_error(out.float().cpu().numpy(), want.float().cpu().numpy()) < 5e-3


@pytest.mark.gpu
def test_gpu_weight_only_bf16_and_block():
    x = torch.randn(48, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(14336, 4096, device="cuda", dtype=torch.bfloat16)
    qw, sw = quantize_fp8(w, granularity="row")
    out = fp8_weight_only_gemm(x, qw.t(), sw.t())
    want = x.float() @ (qw.float() * sw).t()
    assert ref.relative_error(out.float().cpu().numpy(), want.cpu().numpy()) < 1e-2
    a = torch.randn(1000, 4096, device="cuda")
    qa, sa = quantize_fp8(a, granularity="block", block_size=(1, 128))
    qb, sb = quantize_fp8(w.float().t().contiguous(), granularity="block", block_size=(128, 128))
    out = fp8_gemm(qa, qb, a_scale=sa, b_scale=sb, out_dtype=torch.float32)
    want = ref.scaled_gemm(qa.float().cpu().numpy(), qb.float().cpu().numpy(), sa.cpu().numpy(), sb.cpu().numpy(),
                           a_granularity="block", b_granularity="block", a_block=(1, 128), b_block=(128, 128))
    assert ref.relative_error(out.cpu().numpy(), want) < _prequant_rtol("auto")
    # the same operands through the decode path (fp16 MMA, fp32 accumulation) agree to fp32 precision:
    # the scale handling is shared, so this pins any difference on the FP8 accumulator
    out_dec = fp8_gemm(qa, qb, a_scale=sa, b_scale=sb, out_dtype=torch.float32, _path="decode")
    assert ref.relative_error(out_dec.cpu().numpy(), want) < PREQUANT_RTOL["fp32"]


def test_direct_launch_matches_custom_op():
    # plain eager calls skip the custom-op dispatcher; the result is the op's, bit for bit
    from triton_ops.validation import direct_launch_ok

    x = torch.randn(5, 96, device=DEVICE, dtype=torch.float16)
    w = torch.randn(40, 96, device=DEVICE)
    qw, sw = quantize_fp8(w, granularity="row")
    assert direct_launch_ok(x, qw, None)
    assert not direct_launch_ok(torch.randn(2, requires_grad=True))
    direct = fp8_weight_only_gemm(x, qw.t(), sw.t())
    via_op = torch.ops.triton_ops.fp8_weight_only_gemm(x, qw.t(), sw.t(), None, torch.float16)
    assert torch.equal(direct, via_op)
    direct = fp8_gemm(x, w.t().to(torch.float16))
    via_op = torch.ops.triton_ops.fp8_gemm(x, w.t().to(torch.float16), None, None, None, torch.float16, "auto")
    assert torch.equal(direct, via_op)
