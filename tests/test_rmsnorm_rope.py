"""fused_rmsnorm_rope in Triton's interpreter (CPU) or on the GPU, against compute/ and torch references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests._rope_helpers import assert_close, tables
from triton_ops.compute.rope import rmsnorm_rope as np_rmsnorm_rope
from triton_ops.exceptions import (
    DeviceError,
    DTypeError,
    InvalidArgumentError,
    LayoutError,
    NumericalError,
    ShapeError,
    TritonOpsError,
)
from triton_ops.kernels.rmsnorm_rope import (
    FusedRMSNormRoPE,
    fused_rmsnorm_rope,
    pick_config,
    rmsnorm_rope_reference,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _np(t):
    return None if t is None else t.detach().double().cpu().numpy()


def _ref(x, w, cos, sin, *, head_dim=None, pos=None, residual=None, layout="neox", offset=0.0, eps=1e-6):
    """float64 reference on the same rounded inputs; a residual sum is rounded to x's dtype first, as the
    unfused `x + residual` of a model in that dtype is."""
    s = x if residual is None else (x + residual)
    pos_np = None if pos is None else pos.cpu().numpy()
    y = np_rmsnorm_rope(_np(s), _np(w), _np(cos), _np(sin), eps, head_dim=head_dim, position_ids=pos_np,
                        layout=layout, weight_offset=offset)
    return y, s


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["neox", "gptj"])
@pytest.mark.parametrize("head_dim,rot,n_heads",
                         [(64, 64, 3), (80, 80, 2), (96, 96, 2), (128, 64, 2), (16, 8, 5)])
def test_matches_reference(device, dtype, layout, head_dim, rot, n_heads):
    torch.manual_seed(head_dim + n_heads)
    x = torch.randn(2, 5, n_heads * head_dim, device=device, dtype=dtype)
    w = torch.randn(n_heads * head_dim, device=device, dtype=dtype)
    cos, sin = tables(9, rot, layout, device=device)
    # partial rotary (tables narrower than a head) is asked for explicitly
    out = fused_rmsnorm_rope(x, w, cos, sin, head_dim=head_dim, rotary_layout=layout,
                             rotary_dim=rot if rot != head_dim else None)
    ref, _ = _ref(x, w, cos, sin, head_dim=head_dim, layout=layout)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close(out, ref, dtype)
    # and the independent torch reference agrees with the NumPy one
    assert_close(rmsnorm_rope_reference(x.float(), w.float(), cos, sin, head_dim=head_dim, rotary_layout=layout),
                 ref, torch.float32)


def test_seed_quick_start_call(device):
    """001's call: x [batch, seq, hidden], weight [hidden], cos/sin [seq, head_dim] in x's dtype."""
    x = torch.randn(2, 16, 256, device=device, dtype=torch.float16)
    w = torch.randn(256, device=device, dtype=torch.float16)
    cos, sin = tables(16, 64, dtype=torch.float16, device=device)
    out = fused_rmsnorm_rope(x, w, cos, sin)
    assert_close(out, _ref(x, w, cos, sin)[0], torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_residual_weight_offset_positions(device, dtype):
    torch.manual_seed(1)
    x = torch.randn(3, 4, 192, device=device, dtype=dtype)
    r = torch.randn(3, 4, 192, device=device, dtype=dtype)
    w = torch.randn(192, device=device, dtype=dtype) * 0.1
    cos, sin = tables(40, 64, device=device)
    pos = torch.randint(0, 40, (3, 4), device=device)
    out, summed = fused_rmsnorm_rope(x, w, cos, sin, 1e-5, position_ids=pos, residual=r, weight_offset=1.0)
    ref, s = _ref(x, w, cos, sin, pos=pos, residual=r, offset=1.0, eps=1e-5)
    torch.testing.assert_close(summed, s, rtol=0, atol=0)  # the same rounding as an unfused add
    assert_close(out, ref, dtype)


def test_position_ids_1d_and_decode(device):
    # Decoding: one new token per sequence at positions deep in a long cache.
    x = torch.randn(4, 1, 128, device=device)
    w = torch.randn(128, device=device)
    cos, sin = tables(4096, 64, device=device)
    pos = torch.tensor([[4095], [17], [0], [2048]], device=device)
    out = fused_rmsnorm_rope(x, w, cos, sin, position_ids=pos)
    assert_close(out, _ref(x, w, cos, sin, pos=pos)[0], torch.float32)
    pos1 = torch.tensor([9, 3, 7], device=device)
    x2 = torch.randn(2, 3, 128, device=device)
    out2 = fused_rmsnorm_rope(x2, w, cos, sin, position_ids=pos1)
    assert_close(out2, _ref(x2, w, cos, sin, pos=pos1)[0], torch.float32)


def test_per_token_tables(device):
    # Hugging Face rotary_emb(x, position_ids) returns cos/sin of shape [batch, seq, rot].
    x = torch.randn(2, 3, 128, device=device)
    w = torch.randn(128, device=device)
    cos, sin = tables(20, 64, device=device)
    pos = torch.tensor([[1, 5, 9], [19, 0, 2]], device=device)
    out = fused_rmsnorm_rope(x, w, cos[pos], sin[pos])
    assert_close(out, _ref(x, w, cos, sin, pos=pos)[0], torch.float32)
    out1 = fused_rmsnorm_rope(x[:1], w, cos[:3].unsqueeze(0), sin[:3].unsqueeze(0))  # [1, seq, rot]
    assert_close(out1, _ref(x[:1], w, cos, sin)[0], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_per_head_qk_norm(device, dtype):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 4 * 32, device=device, dtype=dtype) * torch.tensor([1.0, 5.0, 0.2, 3.0]).repeat_interleave(
        32).to(device=device, dtype=dtype)
    w = torch.randn(32, device=device, dtype=dtype)
    cos, sin = tables(3, 32, "gptj", device=device)
    out = fused_rmsnorm_rope(x, w, cos, sin, rotary_layout="gptj")
    assert_close(out, _ref(x, w, cos, sin, layout="gptj")[0], dtype)


def test_strided_rows_and_noncollapsible_leading_dims(device):
    big = torch.randn(2, 6, 512, device=device, dtype=torch.float16)
    x = big[:, 1:5, 128:384]  # row stride 512, not contiguous
    w = torch.randn(256, device=device, dtype=torch.float16)
    cos, sin = tables(4, 64, device=device)
    assert_close(fused_rmsnorm_rope(x, w, cos, sin), _ref(x, w, cos, sin)[0], torch.float16)
    xt = torch.randn(4, 2, 3, 256, device=device).transpose(0, 1)  # [2, 4, 3, 256], leading dims permuted
    out = fused_rmsnorm_rope(xt, w.float(), cos, sin)
    assert_close(out, _ref(xt, w.float(), cos, sin)[0], torch.float32)


def test_out_buffer_poisoned_is_fully_written(device):
    x = torch.randn(3, 7, 160, device=device)
    w = torch.randn(160, device=device)
    cos, sin = tables(7, 80, device=device)
    out = torch.full_like(x, float("nan"))
    res = fused_rmsnorm_rope(x, w, cos, sin, out=out)
    assert res is out
    assert_close(out, _ref(x, w, cos, sin)[0], torch.float32)


def test_chunked_wide_rows(device):
    # 8320 fp16 channels exceed one 16 KB register tile: two passes over chunks of heads (the last one ragged).
    hidden = 130 * 64
    assert pick_config(2, hidden, 64, 64, 2).N_CHUNKS > 1
    x = torch.randn(1, 2, hidden, device=device, dtype=torch.float16)
    w = torch.randn(hidden, device=device, dtype=torch.float16)
    r = torch.randn_like(x)
    cos, sin = tables(2, 64, device=device)
    out, _ = fused_rmsnorm_rope(x, w, cos, sin, residual=r)
    assert_close(out, _ref(x, w, cos, sin, residual=r)[0], torch.float16)


def test_packed_rows(device):
    # Narrow rows are packed several per program; the last program's tail must be masked.
    assert pick_config(150, 128, 64, 64, 2, n_sms=4).ROWS_PER_PROG > 1
    x = torch.randn(3, 50, 128, device=device)
    w = torch.randn(128, device=device)
    cos, sin = tables(50, 64, device=device)
    assert_close(fused_rmsnorm_rope(x, w, cos, sin), _ref(x, w, cos, sin)[0], torch.float32)


def test_out_of_range_position_gives_nan_for_that_token_only(device):
    x = torch.randn(1, 3, 64, device=device)
    w = torch.ones(64, device=device)
    cos, sin = tables(8, 64, device=device)
    out = fused_rmsnorm_rope(x, w, cos, sin, position_ids=torch.tensor([1, 8, -1], device=device))
    assert torch.isnan(out[0, 1]).all() and torch.isnan(out[0, 2]).all()
    assert not torch.isnan(out[0, 0]).any()


def test_nan_in_gives_nan_out(device):
    x = torch.randn(2, 128, device=device)
    x[1, 5] = float("nan")
    cos, sin = tables(2, 64, device=device)
    out = fused_rmsnorm_rope(x, torch.ones(128, device=device), cos, sin)
    assert torch.isnan(out[1]).all() and not torch.isnan(out[0]).any()


def test_empty_input(device):
    x = torch.randn(0, 4, 128, device=device)
    cos, sin = tables(4, 64, device=device)
    out = fused_rmsnorm_rope(x, torch.ones(128, device=device), cos, sin)
    assert out.shape == (0, 4, 128)


def test_module(device):
    m = FusedRMSNormRoPE(256, 64, eps=1e-5).to(device)
    with torch.no_grad():
        m.weight.normal_()
    x = torch.randn(2, 3, 256, device=device)
    cos, sin = tables(3, 64, device=device)
    assert_close(m(x, cos, sin), _ref(x, m.weight, cos, sin, eps=1e-5)[0], torch.float32)
    qk = FusedRMSNormRoPE(256, 64, per_head=True, weight_offset=1.0).to(device)
    assert qk.weight.shape == (64,)
    assert_close(qk(x, cos, sin), _ref(x, qk.weight, cos, sin, offset=1.0)[0], torch.float32)
    assert "head_dim=64" in repr(m)


@pytest.mark.parametrize("call,exc", [
    (lambda d: fused_rmsnorm_rope(torch.randn(2, 100, device=d), torch.ones(100, device=d),
                                  *tables(2, 64, device=d)), ShapeError),  # hidden % head_dim
    (lambda d: fused_rmsnorm_rope(torch.randn(2, 126, device=d), torch.ones(126, device=d),
                                  *tables(2, 64, device=d), head_dim=63), ShapeError),  # odd head_dim
    (lambda d: fused_rmsnorm_rope(torch.randn(2, 128, device=d), torch.ones(128, device=d),
                                  *tables(2, 64, device=d), head_dim=32), ShapeError),  # rot > head_dim
    (lambda d: fused_rmsnorm_rope(torch.randn(2, 128, device=d), torch.ones(64, device=d).half(),
                                  *tables(2, 64, device=d)), DTypeError),  # weight dtype
    (lambda d: fused_rmsnorm_rope(torch.randn(2, 128, device=d).long(), torch.ones(128, device=d),
                                  *tables(2, 64, device=d)), DTypeError),
    (lambda d: fused_rmsnorm_rope(torch.randn(2, 128, device=d), torch.ones(96, device=d),
                                  *tables(2, 64, device=d)), ShapeError),  # weight shape
    (lambda d: fused_rmsnorm_rope(torch.randn(5, 128, device=d), torch.ones(128, device=d),
                                  *tables(4, 64, device=d)), ShapeError),  # too few table rows
    (lambda d: fused_rmsnorm_rope(torch.randn(2, 128, device=d), torch.ones(128, device=d),
                                  *tables(2, 64, device=d), rotary_layout="llama"), InvalidArgumentError),
    (lambda d: fused_rmsnorm_rope(torch.randn(128, 2, device=d).t(), torch.ones(128, device=d),
                                  *tables(2, 64, device=d)), LayoutError),
    (lambda d: fused_rmsnorm_rope(torch.randn(2, 128, device=d), torch.ones(128, device=d),
                                  *tables(2, 64, device=d), eps=float("nan")), NumericalError),
    (lambda d: fused_rmsnorm_rope(torch.randn(2, 128, device=d), torch.ones(128, device=d),
                                  *tables(2, 64, device=d), position_ids=torch.zeros(3, dtype=torch.long,
                                                                                     device=d)), ShapeError),
    (lambda d: fused_rmsnorm_rope(torch.randn(2, 128, device=d), torch.ones(128, device=d),
                                  *tables(2, 64, device=d), position_ids=torch.zeros(2, device=d)), DTypeError),
    (lambda d: fused_rmsnorm_rope(torch.randn(2, 128, device=d), torch.ones(128, device=d),
                                  *tables(2, 64, device=d), residual=torch.randn(2, 64, device=d)), ShapeError),
    (lambda d: fused_rmsnorm_rope(torch.randn(2, 128, device=d), torch.ones(128, device=d),
                                  tables(2, 64, device=d)[0], tables(2, 32, device=d)[1]), ShapeError),
])
def test_bad_input_raises_clear_errors(device, call, exc):
    with pytest.raises(exc) as info:
        call(device)
    assert isinstance(info.value, TritonOpsError)
    assert str(info.value)


def test_cpu_tensor_without_interpreter_is_a_device_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cos, sin = tables(2, 64)
    with pytest.raises(DeviceError, match="TRITON_INTERPRET=1"):
        fused_rmsnorm_rope(torch.randn(2, 64), torch.ones(64), cos, sin)


def test_mixed_devices_error():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU to have two devices")
    cos, sin = tables(2, 64)
    with pytest.raises(DeviceError):
        fused_rmsnorm_rope(torch.randn(2, 64, device="cuda"), torch.ones(64), cos, sin)


def test_opcheck(device):
    x = torch.randn(2, 3, 128, device=device)
    w = torch.randn(128, device=device)
    cos, sin = tables(3, 64, device=device)
    pos = torch.tensor([2, 0, 1], device=device)
    torch.library.opcheck(torch.ops.triton_ops.rmsnorm_rope.default, (x, w, cos, sin, pos, 1e-6, 64, False, 0.0,
                                                                      False))
    torch.library.opcheck(torch.ops.triton_ops.add_rmsnorm_rope.default,
                          (x, torch.randn_like(x), w, cos, sin, None, 1e-6, 64, True, 1.0, False))


def test_torch_compile_fullgraph(device):
    x = torch.randn(2, 3, 128, device=device)
    w = torch.randn(128, device=device)
    cos, sin = tables(3, 64, device=device)

    @torch.compile(fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    def block(x, w, cos, sin, r):
        y, s = fused_rmsnorm_rope(x, w, cos, sin, residual=r)
        return y * 2, s

    r = torch.randn_like(x)
    y, s = block(x, w, cos, sin, r)
    ref, s_ref = _ref(x, w, cos, sin, residual=r)
    assert_close(y / 2, ref, torch.float32)
    torch.testing.assert_close(s, s_ref)


@given(
    n_heads=st.integers(1, 5),
    half_rot=st.integers(1, 20),
    extra=st.integers(0, 3),
    rows=st.integers(1, 9),
    layout=st.sampled_from(["neox", "gptj"]),
    per_head=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    seed=st.integers(0, 2**16),
)
def test_property_any_size(n_heads, half_rot, extra, rows, layout, per_head, dtype, seed):
    """Any even head_dim, partial rotary, any head count and row count agree with the reference."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(seed)
    rot = 2 * half_rot
    head_dim = rot + 2 * extra
    hidden = n_heads * head_dim
    x = torch.randn(rows, hidden, generator=g).to(device=device, dtype=dtype)
    w = torch.randn(head_dim if per_head else hidden, generator=g).to(device=device, dtype=dtype)
    cos, sin = tables(rows, rot, layout, device=device)
    if per_head and head_dim == hidden:
        per_head = False
    out = fused_rmsnorm_rope(x, w, cos, sin, head_dim=head_dim, rotary_layout=layout, rotary_dim=rot)
    assert_close(out, _ref(x, w, cos, sin, head_dim=head_dim, layout=layout)[0], dtype)


def test_pick_config_is_pure_and_bounded():
    for hidden, hd, rot in ((4096, 64, 64), (4096, 128, 128), (14336, 128, 128), (5120, 128, 64), (3584, 128, 128),
                            (81920, 512, 512), (2560, 80, 80)):
        for itemsize in (2, 4):
            cfg = pick_config(16384, hidden, hd, rot, itemsize)
            assert cfg == pick_config(16384, hidden, hd, rot, itemsize)
            per_head = 2 * cfg.HALF_BLOCK + (cfg.PASS_BLOCK if rot < hd else 0)
            assert cfg.NH_BLOCK * per_head * itemsize <= 16384 or cfg.NH_BLOCK == 1
            assert cfg.NH_BLOCK * cfg.N_CHUNKS * hd >= hidden
            assert rot <= 2 * cfg.HALF_BLOCK and hd - rot <= cfg.PASS_BLOCK
            assert 1 <= cfg.num_warps <= 16
    assert np.all([pick_config(r, 4096, 128).ROWS_PER_PROG == 1 for r in (1, 64, 16384)])


@pytest.mark.parametrize("residual", [False, True])
def test_backward_matches_autograd_of_reference(device, residual):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 128, device=device, dtype=torch.float64 if device == "cpu" else torch.float32)
    x = x.float().requires_grad_()
    w = torch.randn(128, device=device).requires_grad_()
    r = torch.randn(2, 3, 128, device=device).requires_grad_() if residual else None
    cos, sin = tables(5, 64, "gptj", device=device)
    pos = torch.tensor([4, 0, 2], device=device)
    kw = dict(position_ids=pos, rotary_layout="gptj", weight_offset=0.5)
    out = fused_rmsnorm_rope(x, w, cos, sin, residual=r, **kw)
    y, s = out if residual else (out, None)
    g = torch.randn_like(y)
    loss = (y * g).sum() + ((s * s).sum() if residual else 0)
    grads = torch.autograd.grad(loss, [t for t in (x, w, r) if t is not None])
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    r2 = r.detach().clone().requires_grad_() if residual else None
    s2 = x2 if r2 is None else x2 + r2
    y2 = rmsnorm_rope_reference(s2, w2, cos, sin, **kw)
    loss2 = (y2 * g).sum() + ((s2 * s2).sum() if residual else 0)
    want = torch.autograd.grad(loss2, [t for t in (x2, w2, r2) if t is not None])
    for got, ref in zip(grads, want):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_module_trains(device):
    m = FusedRMSNormRoPE(128, 64).to(device)
    x = torch.randn(2, 3, 128, device=device, requires_grad=True)
    cos, sin = tables(3, 64, device=device)
    m(x, cos, sin).square().mean().backward()
    assert m.weight.grad is not None and torch.isfinite(m.weight.grad).all() and m.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
