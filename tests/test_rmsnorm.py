"""fused_add_rmsnorm in Triton's interpreter (CPU) or on the GPU, against float64 references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import triton_ops
from tests._rope_helpers import assert_close
from triton_ops.compute.rmsnorm import rmsnorm as np_rmsnorm
from triton_ops.exceptions import (
    DeviceError,
    DTypeError,
    InvalidArgumentError,
    LayoutError,
    NumericalError,
    ShapeError,
    TritonOpsError,
)
from triton_ops.kernels.rmsnorm import (
    MAX_SINGLE_BLOCK,
    FusedAddRMSNorm,
    add_rmsnorm_reference,
    fused_add_rmsnorm,
    pick_config,
)
from triton_ops.launch import plan_counts

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _ref(x, w, eps=1e-6, residual=None, offset=0.0):
    """float64 reference on the same rounded inputs. The sum is the unfused ``x + residual`` in x's dtype
    (torch rounds it to nearest-even once, as the GPU does)."""
    s = x if residual is None else x + residual
    y = np_rmsnorm(s.detach().double().cpu().numpy(), w.detach().double().cpu().numpy(), eps, weight_offset=offset)
    return torch.from_numpy(y), s


def _rand(*shape, dtype=torch.float32, device="cpu", scale=1.0):
    return (torch.randn(*shape) * scale).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(1, 64), (3, 199), (199, 128), (2, 896), (3, 5120), (2, 9000)])
@pytest.mark.parametrize("residual", [False, True])
def test_matches_reference(device, dtype, rows, hidden, residual):
    torch.manual_seed(rows * 7 + hidden)
    x = _rand(rows, hidden, dtype=dtype, device=device, scale=3.0)
    w = _rand(hidden, dtype=dtype, device=device)
    r = _rand(rows, hidden, dtype=dtype, device=device) if residual else None
    got = fused_add_rmsnorm(x, w, 1e-5, residual=r)
    ref, s = _ref(x, w, 1e-5, r)
    if residual:
        y, s_got = got
        # The sum is bit-exact with the unfused add. In bf16 this also shows the interpreter path rounds to
        # nearest-even: a truncating conversion is 1 ulp low in about half of random sums.
        assert s_got.dtype == dtype and torch.equal(s_got, s)
    else:
        y = got
    assert y.shape == x.shape and y.dtype == dtype
    assert_close(y, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp32_weight_with_half_activations(device, dtype):
    x = _rand(5, 320, dtype=dtype, device=device)
    w = _rand(320, device=device)  # fp32 weight, the usual mixed-precision checkpoint
    r = _rand(5, 320, dtype=dtype, device=device)
    y, s = fused_add_rmsnorm(x, w, residual=r, weight_offset=0.5)
    assert y.dtype == dtype
    assert_close(y, _ref(x, w, residual=r, offset=0.5)[0], dtype)


def test_chunked_two_pass_rows(device):
    # 3 * 4096 + 5 channels exceed one register tile: three full chunks and a 5-wide ragged one.
    hidden = 3 * 4096 + 5
    cfg = pick_config(2, hidden, 2, True)
    assert cfg.N_CHUNKS == 4 and cfg.ROWS == 1
    x = _rand(2, hidden, dtype=torch.float16, device=device)
    r = _rand(2, hidden, dtype=torch.float16, device=device)
    w = _rand(hidden, dtype=torch.float16, device=device)
    y, s = fused_add_rmsnorm(x, w, residual=r)
    ref, s_ref = _ref(x, w, residual=r)
    assert torch.equal(s, s_ref)
    assert_close(y, ref, torch.float16)
    assert_close(fused_add_rmsnorm(x, w), _ref(x, w)[0], torch.float16)


def test_packed_rows_ragged_tail(device):
    # Narrow rows are packed several per program; 199 is not a multiple of the pack, so the tail is masked.
    assert pick_config(199, 64, 4, n_sms=4).ROWS > 1
    x = _rand(199, 64, device=device)
    w = _rand(64, device=device)
    assert_close(fused_add_rmsnorm(x, w), _ref(x, w)[0], torch.float32)


@pytest.mark.parametrize("hidden", [256, 9000])  # single tile, chunked
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_in_place_vllm_convention(device, hidden, dtype):
    torch.manual_seed(hidden)
    x = _rand(3, 2, hidden, dtype=dtype, device=device)
    r = _rand(3, 2, hidden, dtype=dtype, device=device)
    w = _rand(hidden, dtype=dtype, device=device)
    y_ref, s_ref = fused_add_rmsnorm(x, w, residual=r)
    xi, ri = x.clone(), r.clone()
    y, s = fused_add_rmsnorm(xi, w, residual=ri, out=xi, residual_out=ri)
    assert y is xi and s is ri
    assert torch.equal(xi, y_ref) and torch.equal(ri, s_ref)
    # swapped roles (the sum into x's buffer, the output into residual's) are exact aliases too
    xi, ri = x.clone(), r.clone()
    fused_add_rmsnorm(xi, w, residual=ri, out=ri, residual_out=xi)
    assert torch.equal(ri, y_ref) and torch.equal(xi, s_ref)
    # no residual: out=x
    xi = x.clone()
    fused_add_rmsnorm(xi, w, out=xi)
    assert torch.equal(xi, fused_add_rmsnorm(x, w))


def test_out_buffers_poisoned_and_strided(device):
    x = _rand(4, 3, 160, device=device)
    r = _rand(4, 3, 160, device=device)
    w = _rand(160, device=device)
    big = torch.full((4, 3, 400), float("nan"), device=device)
    out = big[:, :, 200:360]  # strided rows inside a NaN-poisoned buffer
    ro = torch.full_like(x, float("nan"))
    y, s = fused_add_rmsnorm(x, w, residual=r, out=out, residual_out=ro)
    assert y is out and s is ro
    ref, s_ref = _ref(x, w, residual=r)
    assert_close(out, ref, torch.float32)
    assert torch.equal(ro, s_ref)
    assert torch.isnan(big[:, :, :200]).all() and torch.isnan(big[:, :, 360:]).all()  # nothing written outside


def test_strided_and_noncollapsible_inputs(device):
    big = _rand(2, 6, 512, dtype=torch.float16, device=device)
    x = big[:, 1:5, 128:384]  # row stride 512
    r = _rand(4, 2, 256, dtype=torch.float16, device=device).transpose(0, 1)  # [2, 4, 256], leading dims permuted
    w = _rand(256, dtype=torch.float16, device=device)
    y, s = fused_add_rmsnorm(x, w, residual=r)
    ref, s_ref = _ref(x, w, residual=r)
    assert torch.equal(s, s_ref)
    assert_close(y, ref, torch.float16)
    xt = _rand(4, 2, 3, 96, device=device).transpose(0, 1)  # [2, 4, 3, 96]: leading dims do not collapse
    n = plan_counts()["add_rmsnorm"]
    for _ in range(2):  # the second call must not reuse a plan made for the first call's internal copy
        assert_close(fused_add_rmsnorm(xt, w.float()[:96]), _ref(xt, w.float()[:96])[0], torch.float32)
    assert plan_counts()["add_rmsnorm"] == n


def test_leading_dims_1d_and_4d(device):
    w = _rand(72, device=device)
    x1 = _rand(72, device=device)
    assert fused_add_rmsnorm(x1, w).shape == (72,)
    assert_close(fused_add_rmsnorm(x1, w), _ref(x1, w)[0], torch.float32)
    x4 = _rand(2, 3, 4, 72, device=device)  # e.g. a per-head norm on [b, s, heads, head_dim]
    assert_close(fused_add_rmsnorm(x4, w), _ref(x4, w)[0], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matches_hugging_face_modules(device, dtype):
    transformers = pytest.importorskip("transformers")
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    del transformers
    torch.manual_seed(5)
    x = _rand(3, 7, 384, dtype=dtype, device=device, scale=2.0)
    llama = LlamaRMSNorm(384, eps=1e-5).to(device=device, dtype=dtype)
    with torch.no_grad():
        llama.weight.normal_()
    ours = FusedAddRMSNorm(384, eps=1e-5, round_before_weight=True, device=device, dtype=dtype)
    ours.load_state_dict(llama.state_dict())  # the same state_dict key
    with torch.no_grad():
        want, got = llama(x), ours(x)
    # Llama's order: normalise in fp32, round to the input dtype, multiply by the weight and round. The only
    # difference left is the fp32 reduction order of the mean square, which can move a value across a
    # rounding boundary: at most 1 ulp of the output dtype, on a small share of elements.
    ulp = torch.finfo(dtype).eps * want.float().abs().clamp_min(torch.finfo(dtype).tiny)
    assert ((got.float() - want.float()).abs() <= ulp * 1.01).all()
    assert (got == want).float().mean() > 0.95

    gemma = GemmaRMSNorm(384, eps=1e-6).to(device=device, dtype=dtype)
    with torch.no_grad():
        gemma.weight.normal_(std=0.1)
    g_ours = FusedAddRMSNorm(384, eps=1e-6, weight_offset=1.0, device=device, dtype=dtype)
    g_ours.load_state_dict(gemma.state_dict())
    with torch.no_grad():
        want, got = gemma(x), g_ours(x)
    ulp = torch.finfo(dtype).eps * want.float().abs().clamp_min(torch.finfo(dtype).tiny)
    assert ((got.float() - want.float()).abs() <= ulp * 1.01).all()


def test_round_before_weight_rounds_once_more(device):
    # The flag changes the result (a test that cannot fail otherwise): fp32 multiply then one rounding
    # differs from round-then-multiply on some elements.
    torch.manual_seed(9)
    x = _rand(16, 256, dtype=torch.bfloat16, device=device)
    w = _rand(256, dtype=torch.bfloat16, device=device)
    a = fused_add_rmsnorm(x, w)
    b = fused_add_rmsnorm(x, w, round_before_weight=True)
    assert not torch.equal(a, b)
    want = add_rmsnorm_reference(x, w, round_before_weight=True).float()
    # same two roundings as the reference; only the fp32 reduction order differs: within 1 bf16 ulp
    assert ((b.float() - want).abs() <= torch.finfo(torch.bfloat16).eps * want.abs() * 1.01).all()


def test_interleaved_out_buffer_is_allowed_overlap_is_not(device):
    # x and out as the two halves of each row of one buffer: interleaved, disjoint, allowed.
    buf = _rand(5, 256, device=device)
    x, out = buf[:, :128], buf[:, 128:]
    w = _rand(128, device=device)
    ref = _ref(x.clone(), w)[0]
    fused_add_rmsnorm(x, w, out=out)
    assert_close(out, ref, torch.float32)
    # shifted by 64 channels: partial overlap
    with pytest.raises(InvalidArgumentError, match="overlaps x"):
        fused_add_rmsnorm(buf[:, :128], w, out=buf[:, 64:192])
    r = _rand(5, 128, device=device)
    with pytest.raises(InvalidArgumentError, match="overlaps"):
        fused_add_rmsnorm(x, w, residual=r, out=out, residual_out=out)  # both outputs in one buffer
    with pytest.raises(InvalidArgumentError, match="overlaps weight"):
        fused_add_rmsnorm(w.view(1, 128), w, out=w.view(1, 128))
    with pytest.raises(LayoutError, match="share one address"):
        fused_add_rmsnorm(x, w, out=torch.empty(128, device=device).expand(5, 128))


def test_plan_reuse_and_revalidation(device):
    x = _rand(3, 200, device=device)
    w = _rand(200, device=device)
    r = _rand(3, 200, device=device)
    before = plan_counts().get("add_rmsnorm", 0)
    fused_add_rmsnorm(x, w, residual=r)
    after_first = plan_counts()["add_rmsnorm"]
    y, s = fused_add_rmsnorm(x, w, residual=r)  # same signature: the plan is reused
    assert plan_counts()["add_rmsnorm"] == after_first <= before + 1
    assert_close(y, _ref(x, w, residual=r)[0], torch.float32)
    wp = torch.nn.Parameter(w.clone())
    with torch.no_grad():
        fused_add_rmsnorm(x, wp, residual=r)  # a Parameter takes the same fast path
    assert plan_counts()["add_rmsnorm"] == after_first
    with pytest.raises(ShapeError):  # a new signature with a bad weight is validated, not planned
        fused_add_rmsnorm(x, _rand(199, device=device), residual=r)
    with pytest.raises(DTypeError):
        fused_add_rmsnorm(x, w, residual=r.half())
    # same signature as a planned disjoint call, but now the output overlaps x: validated again, rejected
    buf = _rand(8 * 64, device=device)
    fused_add_rmsnorm(buf[:256].view(4, 64), w[:64], out=buf[256:].view(4, 64))
    with pytest.raises(InvalidArgumentError, match="overlaps"):
        fused_add_rmsnorm(buf[64:320].view(4, 64), w[:64], out=buf[256:].view(4, 64))


def test_nan_row_stays_in_its_row_and_empty_input(device):
    x = _rand(3, 96, device=device)
    x[1, 7] = float("nan")
    y = fused_add_rmsnorm(x, _rand(96, device=device))
    assert torch.isnan(y[1]).all() and not torch.isnan(y[0]).any() and not torch.isnan(y[2]).any()
    e = torch.empty(0, 96, device=device)
    assert fused_add_rmsnorm(e, _rand(96, device=device)).shape == (0, 96)
    y, s = fused_add_rmsnorm(e, _rand(96, device=device), residual=e)
    assert y.shape == s.shape == (0, 96)


def test_module(device):
    m = FusedAddRMSNorm(128, eps=1e-5, device=device)
    assert list(m.state_dict()) == ["weight"] and torch.equal(m.weight, torch.ones(128, device=device))
    with torch.no_grad():
        m.weight.normal_()
        x, r = _rand(2, 3, 128, device=device), _rand(2, 3, 128, device=device)
        assert_close(m(x), _ref(x, m.weight, 1e-5)[0], torch.float32)
        y, s = m(x, r)
    assert_close(y, _ref(x, m.weight, 1e-5, r)[0], torch.float32)
    assert FusedAddRMSNorm(64, weight_offset=1.0).weight.abs().sum() == 0  # Gemma-style weights start at 0
    assert "eps=1e-05" in repr(m)
    with pytest.raises(ShapeError):
        FusedAddRMSNorm(0)


def _bad(d):
    x = torch.randn(2, 128, device=d)
    w = torch.ones(128, device=d)
    return x, w


@pytest.mark.parametrize("call,exc", [
    (lambda d: fused_add_rmsnorm(_bad(d)[0], torch.ones(96, device=d)), ShapeError),
    (lambda d: fused_add_rmsnorm(_bad(d)[0].bfloat16(), torch.ones(128, device=d).half()), DTypeError),
    (lambda d: fused_add_rmsnorm(_bad(d)[0].long(), torch.ones(128, device=d)), DTypeError),
    (lambda d: fused_add_rmsnorm(*_bad(d), residual=torch.randn(2, 64, device=d)), ShapeError),
    (lambda d: fused_add_rmsnorm(*_bad(d), residual=torch.randn(2, 128, device=d).half()), DTypeError),
    (lambda d: fused_add_rmsnorm(*_bad(d), residual_out=torch.empty(2, 128, device=d)), InvalidArgumentError),
    (lambda d: fused_add_rmsnorm(*_bad(d), eps=float("nan")), NumericalError),
    (lambda d: fused_add_rmsnorm(*_bad(d), eps=-1.0), NumericalError),
    (lambda d: fused_add_rmsnorm(*_bad(d), weight_offset=float("inf")), NumericalError),
    (lambda d: fused_add_rmsnorm(*_bad(d), out=torch.empty(2, 127, device=d)), ShapeError),
    (lambda d: fused_add_rmsnorm(*_bad(d), out=torch.empty(2, 128, device=d).half()), DTypeError),
    (lambda d: fused_add_rmsnorm(torch.randn(128, 2, device=d).t(), torch.ones(128, device=d)), LayoutError),
    (lambda d: fused_add_rmsnorm(*_bad(d), out=torch.empty(128, 2, device=d).t()), LayoutError),
    (lambda d: fused_add_rmsnorm(*_bad(d), round_before_weight=1), InvalidArgumentError),
    (lambda d: fused_add_rmsnorm("x", torch.ones(128, device=d)), InvalidArgumentError),
    (lambda d: fused_add_rmsnorm(torch.tensor(1.0, device=d), torch.ones(1, device=d)), ShapeError),
])
def test_bad_input_raises_clear_errors(device, call, exc):
    with pytest.raises(exc) as info:
        call(device)
    assert isinstance(info.value, TritonOpsError)
    assert str(info.value)


def test_cpu_tensor_without_interpreter_is_a_device_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(DeviceError, match="TRITON_INTERPRET=1"):
        fused_add_rmsnorm(torch.randn(2, 64), torch.ones(64))


def test_opcheck(device):
    x = _rand(2, 3, 96, device=device)
    r = _rand(2, 3, 96, device=device)
    w = _rand(96, device=device)
    torch.library.opcheck(torch.ops.triton_ops.rmsnorm.default, (x, w, 1e-6, 0.0, False))
    torch.library.opcheck(torch.ops.triton_ops.add_rmsnorm.default, (x, r, w.half().float(), 1e-5, 1.0, True))
    torch.library.opcheck(torch.ops.triton_ops.add_rmsnorm_out.default,
                          (x, r, w, torch.empty_like(x), torch.empty_like(x), 1e-6, 0.0, False))


def test_torch_compile_fullgraph(device):
    x, r = _rand(2, 3, 128, device=device), _rand(2, 3, 128, device=device)
    w = _rand(128, device=device)

    @torch.compile(fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    def block(x, w, r, xi, ri):
        y, s = fused_add_rmsnorm(x, w, residual=r)
        fused_add_rmsnorm(xi, w, residual=ri, out=xi, residual_out=ri)  # vLLM's in-place convention
        return y * 2, fused_add_rmsnorm(s, w)

    xi, ri = x.clone(), r.clone()
    y2, z = block(x, w, r, xi, ri)
    ref, s = _ref(x, w, residual=r)
    assert_close(y2 / 2, ref, torch.float32)
    assert_close(z, _ref(s, w)[0], torch.float32)
    assert torch.equal(xi, y2 / 2) and torch.equal(ri, s)


@pytest.mark.parametrize("residual,offset,rbw", [(False, 0.0, False), (True, 1.0, False), (True, 0.0, True)])
def test_backward_matches_float64_autograd(device, residual, offset, rbw):
    torch.manual_seed(3)
    x = _rand(2, 3, 160, device=device).requires_grad_()
    w = _rand(160, device=device).requires_grad_()
    r = _rand(2, 3, 160, device=device).requires_grad_() if residual else None
    out = fused_add_rmsnorm(x, w, 1e-5, residual=r, weight_offset=offset, round_before_weight=rbw)
    y, s = out if residual else (out, None)
    g = torch.randn_like(y)
    loss = (y * g).sum() + ((s * s).sum() if residual else 0)
    leaves = [t for t in (x, w, r) if t is not None]
    got = torch.autograd.grad(loss, leaves)
    # float64 autograd of the unfused reference (fp32 rounding of the normalised x is the identity there)
    x2, w2 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    r2 = r.detach().double().requires_grad_() if residual else None
    s2 = x2 if r2 is None else x2 + r2
    y2 = s2 * torch.rsqrt(s2.pow(2).mean(-1, keepdim=True) + 1e-5) * (offset + w2)
    loss2 = (y2 * g.double()).sum() + ((s2 * s2).sum() if residual else 0)
    want = torch.autograd.grad(loss2, [t for t in (x2, w2, r2) if t is not None])
    for a, b in zip(got, want):
        # fp32 forward and backward against float64: ~1e-6 relative per op over rows of 160
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_module_trains_and_parameter_path(device):
    m = FusedAddRMSNorm(64, device=device)
    x = _rand(4, 64, device=device).requires_grad_()
    r = _rand(4, 64, device=device)
    y, s = m(x, r)
    (y.square().mean() + s.mean()).backward()
    assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(InvalidArgumentError, match="autograd"):
        fused_add_rmsnorm(x, m.weight, out=torch.empty(4, 64, device=device))


@given(rows=st.integers(1, 9), hidden=st.integers(1, 300), residual=st.booleans(),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_property_any_size(rows, hidden, residual, dtype, seed):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=g).to(device=device, dtype=dtype)
    w = torch.randn(hidden, generator=g).to(device=device, dtype=dtype)
    r = torch.randn(rows, hidden, generator=g).to(device=device, dtype=dtype) if residual else None
    out = fused_add_rmsnorm(x, w, residual=r)
    y = out[0] if residual else out
    assert_close(y, _ref(x, w, residual=r)[0], dtype)


def test_pick_config_is_pure_and_bounded():
    for hidden in (1, 64, 199, 2048, 4096, 5120, 8192, 8193, 14336, 16384, 65536):
        for itemsize in (2, 4):
            for res in (False, True):
                cfg = pick_config(16384, hidden, itemsize, res)
                assert cfg == pick_config(16384, hidden, itemsize, res)
                assert hidden <= cfg.BLOCK * cfg.N_CHUNKS
                assert cfg.N_CHUNKS == 1 or (cfg.ROWS == 1 and hidden > MAX_SINGLE_BLOCK)
                assert cfg.num_warps in (1, 2, 4, 8, 16)
                assert max(4096, cfg.BLOCK) >= cfg.ROWS * cfg.BLOCK
    assert pick_config(1, 4096).ROWS == 1  # decode: never packs a lone row
    assert pick_config(1 << 20, 128, n_sms=132).ROWS > 1


def test_exported():
    assert triton_ops.fused_add_rmsnorm is fused_add_rmsnorm and triton_ops.FusedAddRMSNorm is FusedAddRMSNorm


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,hidden", [(1, 4096), (4096, 4096), (2048, 5120), (1024, 8192), (257, 16384)])
def test_gpu_large_shapes(dtype, rows, hidden):
    x = torch.randn(rows, hidden, device="cuda", dtype=dtype)
    r = torch.randn(rows, hidden, device="cuda", dtype=dtype)
    w = torch.randn(hidden, device="cuda", dtype=torch.float32)
    y, s = fused_add_rmsnorm(x, w, residual=r)
    assert torch.equal(s, x + r)
    assert_close(y, _ref(x, w, residual=r)[0], dtype)
    xi, ri = x.clone(), r.clone()
    fused_add_rmsnorm(xi, w, residual=ri, out=xi, residual_out=ri)
    assert torch.equal(xi, y) and torch.equal(ri, s)


def test_disjoint_test_is_sound_on_random_views():
    """The overlap test the output checks use never calls overlapping views disjoint (brute force over the
    element addresses), and does recognise interleaved column slices."""
    from triton_ops.kernels.rmsnorm import Disjoint

    g = torch.Generator().manual_seed(0)
    base = torch.zeros(6, 5, 24)

    def view():
        i0 = int(torch.randint(0, 3, (1,), generator=g))
        j0, j1 = sorted(int(v) for v in torch.randint(0, 25, (2,), generator=g))
        v = base[i0:i0 + 3, 1:4, j0:max(j1, j0 + 1)]
        return v.transpose(0, 1) if bool(torch.randint(0, 2, (1,), generator=g)) else v

    def addrs(t):
        idx = torch.arange(base.numel()).view(base.shape).as_strided(t.shape, t.stride(),
                                                                     t.storage_offset())
        return set(idx.flatten().tolist())

    recognised = 0
    for _ in range(300):
        a, b = view(), view()
        overlap = bool(addrs(a) & addrs(b))
        disjoint = Disjoint(a, b)(a.data_ptr(), b.data_ptr())
        assert not (overlap and disjoint), (a.shape, a.stride(), a.storage_offset(), b.shape, b.stride())
        recognised += disjoint and not overlap and Disjoint(a, b).ext_a > 0 and abs(
            a.data_ptr() - b.data_ptr()) < Disjoint(a, b).ext_a
    assert recognised > 0  # interleaved disjoint views exist among the samples and are accepted
