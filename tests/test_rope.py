"""apply_rope in Triton's interpreter (CPU) or on the GPU, against the float64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import triton_ops
from tests._rope_helpers import assert_close, tables
from triton_ops.compute.rope import apply_rope as np_apply_rope
from triton_ops.exceptions import (
    DeviceError,
    DTypeError,
    InvalidArgumentError,
    LayoutError,
    ShapeError,
    TritonOpsError,
)
from triton_ops.kernels import rope as rope_mod
from triton_ops.kernels.rope import TILE_ELEMS, apply_rope, pick_config, rope_reference
from triton_ops.launch import plan_counts

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _ref(x, cos, sin, pos=None, layout="neox", bshd=False):
    """float64 NumPy reference. x: [b, h, s, d] (bshd=False) or [b, s, h, d], or 3-D without b; cos/sin:
    full-width [rows, rot] tables; pos: table row per token ([s] or [b, s]), default the token's index."""
    x4 = x.unsqueeze(0) if x.dim() == 3 else x
    if not bshd:
        x4 = x4.transpose(1, 2)
    b, s, h, d = x4.shape
    flat = x4.detach().double().cpu().reshape(b, s, h * d).numpy()
    p = np.broadcast_to(np.arange(s), (b, s)) if pos is None else np.broadcast_to(pos.cpu().numpy(), (b, s))
    y = np_apply_rope(flat, cos.double().cpu().numpy(), sin.double().cpu().numpy(), head_dim=d, layout=layout,
                      position_ids=p)
    y = torch.from_numpy(y).reshape(b, s, h, d)
    if not bshd:
        y = y.transpose(1, 2)
    return y[0] if x.dim() == 3 else y


def _half(t, layout):
    """The one-value-per-pair table of a full-width one."""
    return (t[:, : t.shape[1] // 2] if layout == "neox" else t[:, ::2]).contiguous()


def _qk(b, s, hq, hk, d, dtype, device, bshd=False, seed=0):
    """q and k as the model makes them: [b, s, h, d] projections, transposed to [b, h, s, d] for bhsd."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, s, hq, d, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(b, s, hk, d, generator=g).to(device=device, dtype=dtype)
    return (q, k) if bshd else (q.transpose(1, 2), k.transpose(1, 2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["neox", "gptj"])
@pytest.mark.parametrize("head_dim", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("bshd", [False, True])
def test_matches_reference(device, dtype, layout, head_dim, bshd):
    q, k = _qk(2, 3, 4, 2, head_dim, dtype, device, bshd, seed=head_dim)  # GQA: 4 q heads, 2 k heads
    cos, sin = tables(5, head_dim, layout, device=device)
    qo, ko = apply_rope(q, k, cos, sin, rotary_layout=layout, qk_layout="bshd" if bshd else "bhsd")
    assert qo.shape == q.shape and ko.shape == k.shape and qo.dtype == dtype
    assert qo.stride() == q.stride()  # the output keeps q's dim order (here a transposed [b, s, h, d])
    assert_close(qo, _ref(q, cos, sin, layout=layout, bshd=bshd), dtype, "q")
    assert_close(ko, _ref(k, cos, sin, layout=layout, bshd=bshd), dtype, "k")


@pytest.mark.parametrize("n_tokens", [1, 3, 199])
def test_odd_token_counts_and_mqa(device, n_tokens):
    q, k = _qk(1, n_tokens, 5, 1, 64, torch.float16, device, bshd=True, seed=n_tokens)  # MQA: one k head
    cos, sin = tables(n_tokens, 64, device=device)
    qo, ko = apply_rope(q[0], k[0], cos, sin, qk_layout="bshd")  # 3-D [tokens, heads, d]
    assert_close(qo, _ref(q[0], cos, sin, bshd=True), torch.float16, "q")
    assert_close(ko, _ref(k[0], cos, sin, bshd=True), torch.float16, "k")


@pytest.mark.parametrize("table_dtype", ["fp32", "act"])
def test_table_shapes(device, table_dtype):
    dtype = torch.bfloat16
    q, k = _qk(2, 4, 4, 2, 64, dtype, device, seed=1)
    cos, sin = tables(10, 64, device=device)
    if table_dtype == "act":
        cos, sin = cos.to(dtype), sin.to(dtype)
    pos = torch.tensor([[3, 1, 4, 1], [5, 9, 2, 6]], device=device)
    want_seq = (_ref(q, cos, sin), _ref(k, cos, sin))
    want_pos = (_ref(q, cos, sin, pos), _ref(k, cos, sin, pos))
    cases = [
        ((cos, sin), want_seq),  # [rows, d]
        ((cos[None, :4], sin[None, :4]), want_seq),  # HF batch-1 [1, s, d], broadcast over the batch
        ((cos[pos], sin[pos]), want_pos),  # HF per-token [b, s, d]
        ((cos[pos].unsqueeze(1), sin[pos].unsqueeze(1)), want_pos),  # [b, 1, s, d]
        ((cos[None], sin[None], pos), want_pos),  # [1, rows, d] indexed by position_ids
    ]
    for (c, s, *p), (wq, wk) in cases:
        qo, ko = apply_rope(q, k, c, s, position_ids=p[0] if p else None)
        assert_close(qo, wq, dtype, f"q with tables {tuple(c.shape)}")
        assert_close(ko, wk, dtype, f"k with tables {tuple(c.shape)}")
    with pytest.raises(ShapeError, match="seq=4"):  # a 3-D table is per-token: its seq must be q's
        apply_rope(q, k, cos[None], sin[None])


def test_position_ids(device):
    q, k = _qk(2, 3, 2, 2, 64, torch.float32, device, seed=2)
    cos, sin = tables(4096, 64, device=device)
    for pos in (torch.tensor([7, 0, 4095], device=device), torch.tensor([[1, 2, 3], [4000, 17, 9]], device=device),
                torch.tensor([[5, 6, 7]], device=device, dtype=torch.int32)):
        qo, ko = apply_rope(q, k, cos, sin, position_ids=pos)
        p = pos[0] if pos.dim() == 2 and pos.shape[0] == 1 else pos
        assert_close(qo, _ref(q, cos, sin, p), torch.float32, f"q, position_ids {tuple(pos.shape)}")
        assert_close(ko, _ref(k, cos, sin, p), torch.float32, f"k, position_ids {tuple(pos.shape)}")
    # decode: one new token per sequence deep in the cache
    qd, kd = _qk(4, 1, 8, 2, 128, torch.float16, device, seed=3)
    cos, sin = tables(2048, 128, device=device)
    pos = torch.tensor([[2047], [0], [1000], [5]], device=device)
    qo, ko = apply_rope(qd, kd, cos, sin, position_ids=pos)
    assert_close(qo, _ref(qd, cos, sin, pos), torch.float16, "q")
    assert_close(ko, _ref(kd, cos, sin, pos), torch.float16, "k")


def test_out_of_range_position_gives_nan_for_that_token_only(device):
    q, k = _qk(1, 3, 2, 1, 64, torch.float32, device, bshd=True)
    cos, sin = tables(8, 32, device=device)
    qo, ko = apply_rope(q, k, cos, sin, position_ids=torch.tensor([1, 8, -1], device=device), rotary_dim=32,
                        qk_layout="bshd")
    for t in (qo, ko):
        assert torch.isnan(t[0, 1]).all() and torch.isnan(t[0, 2]).all()  # pass-through channels too
        assert not torch.isnan(t[0, 0]).any()


@pytest.mark.parametrize("layout,head_dim,rot", [("neox", 64, 32), ("neox", 128, 64), ("gptj", 256, 64),
                                                 ("gptj", 80, 40)])
def test_partial_rotary(device, layout, head_dim, rot):
    q, k = _qk(2, 3, 3, 1, head_dim, torch.float16, device, seed=rot)
    cos, sin = tables(3, rot, layout, device=device)
    qo, ko = apply_rope(q, k, cos, sin, rotary_layout=layout, rotary_dim=rot)
    assert_close(qo, _ref(q, cos, sin, layout=layout), torch.float16, "q")
    assert_close(ko, _ref(k, cos, sin, layout=layout), torch.float16, "k")
    assert torch.equal(qo[..., rot:], q[..., rot:])  # pass-through channels copied exactly
    # the same with one value per pair
    qh, kh = apply_rope(q, k, _half(cos, layout), _half(sin, layout), rotary_layout=layout, rotary_dim=rot,
                        half_width_tables=True)
    assert torch.equal(qh, qo) and torch.equal(kh, ko)


def test_narrow_table_is_ambiguous_without_rotary_dim(device):
    q, k = _qk(1, 2, 2, 2, 64, torch.float32, device)
    cos, sin = tables(2, 32, device=device)
    with pytest.raises(ShapeError, match="rotary_dim=32"):
        apply_rope(q, k, cos, sin)
    a = apply_rope(q, k, cos, sin, rotary_dim=32)[0]
    b = apply_rope(q, k, _half(tables(2, 64)[0], "neox").to(device), _half(tables(2, 64)[1], "neox").to(device),
                   half_width_tables=True)[0]
    assert_close(a, _ref(q, cos, sin), torch.float32)
    assert_close(b, _ref(q, *tables(2, 64, device=device)), torch.float32)
    with pytest.raises(ShapeError, match="needs 64"):
        apply_rope(q, k, *tables(2, 32, device=device), rotary_dim=64)


@pytest.mark.parametrize("layout", ["neox", "gptj"])
def test_half_width_tables_full_rotation(device, layout):
    q, k = _qk(2, 3, 4, 2, 96, torch.bfloat16, device, seed=4)
    cos, sin = tables(3, 96, layout, device=device)
    full = apply_rope(q, k, cos, sin, rotary_layout=layout)
    half = apply_rope(q, k, _half(cos, layout), _half(sin, layout), rotary_layout=layout, half_width_tables=True)
    assert torch.equal(full[0], half[0]) and torch.equal(full[1], half[1])
    assert_close(half[0], _ref(q, cos, sin, layout=layout), torch.bfloat16)


def test_empty_inputs(device):
    cos, sin = tables(4, 64, device=device)
    q, k = _qk(2, 0, 4, 2, 64, torch.float32, device)
    qo, ko = apply_rope(q, k, cos, sin)
    assert qo.shape == q.shape and ko.shape == k.shape
    q, k = _qk(2, 3, 4, 1, 64, torch.float32, device)
    qo, ko = apply_rope(q[:, :0], k, cos, sin)  # no q heads: k is still rotated
    assert qo.shape == (2, 0, 3, 64)
    assert_close(ko, _ref(k, cos, sin), torch.float32)


def test_k_none_rotates_q_only(device):
    q, _ = _qk(2, 3, 4, 1, 64, torch.float32, device)
    cos, sin = tables(3, 64, device=device)
    qo, ko = apply_rope(q, None, cos, sin)
    assert ko is None
    assert_close(qo, _ref(q, cos, sin), torch.float32)


@pytest.mark.parametrize("rot", [64, 32])
def test_inplace_on_fused_qkv_views(device, rot):
    # vLLM-style: q, k, v are column slices of one projection output, rotated in place.
    b, s, hq, hk, d = 2, 3, 4, 2, 64
    qkv = torch.randn(b, s, (hq + 2 * hk) * d, device=device, dtype=torch.float16)
    orig = qkv.clone()
    q = qkv[..., : hq * d].view(b, s, hq, d)
    k = qkv[..., hq * d: (hq + hk) * d].view(b, s, hk, d)
    cos, sin = tables(3, rot, device=device)
    want_q = apply_rope(q, k, cos, sin, rotary_dim=rot, qk_layout="bshd")
    qo, ko = apply_rope(q, k, cos, sin, rotary_dim=rot, inplace=True, qk_layout="bshd")
    assert qo is q and ko is k
    assert torch.equal(q, want_q[0]) and torch.equal(k, want_q[1])
    assert torch.equal(qkv[..., (hq + hk) * d:], orig[..., (hq + hk) * d:])  # v untouched
    assert torch.equal(q[..., rot:], orig[..., : hq * d].view(b, s, hq, d)[..., rot:])  # pass channels too


def test_inplace_rejects_overlap(device):
    q, k = _qk(1, 2, 2, 2, 64, torch.float32, device, bshd=True)
    cos, sin = tables(2, 64, device=device)
    with pytest.raises(InvalidArgumentError, match="overlaps"):
        apply_rope(q, q, cos, sin, inplace=True, qk_layout="bshd")
    buf = torch.randn(8 * 64, device=device)
    # planned with disjoint q and k, then the same signature with k overlapping q: validated again, rejected
    apply_rope(buf[:128].view(1, 2, 1, 64), buf[256:384].view(1, 2, 1, 64), cos, sin, inplace=True,
               qk_layout="bshd")
    with pytest.raises(InvalidArgumentError, match="overlaps"):
        apply_rope(buf[:128].view(1, 2, 1, 64), buf[64:192].view(1, 2, 1, 64), cos, sin, inplace=True,
                   qk_layout="bshd")
    with pytest.raises(LayoutError, match="share one address"):
        apply_rope(torch.randn(1, 1, 1, 64, device=device).expand(1, 2, 1, 64), None, cos, sin, inplace=True,
                   qk_layout="bshd")


@pytest.mark.parametrize("backward", [False, True])
def test_every_output_element_is_written(device, backward):
    # Poisoned output buffers through the launcher the public function and the custom ops share: partial
    # rotary (copied pass channels), GQA, gptj.
    q, k = _qk(2, 3, 3, 1, 80, torch.float32, device, seed=6)
    cos, sin = tables(3, 48, "gptj", device=device)
    qo = torch.full_like(q, float("nan"))
    ko = torch.full_like(k, float("nan"))
    rope_mod._launch(q, k, cos, sin, None, True, 48, False, False, backward, False, qo, ko)
    assert not torch.isnan(qo).any() and not torch.isnan(ko).any()
    want = rope_reference(q.double(), k.double(), cos.double(), sin.double(), rotary_layout="gptj", rotary_dim=48,
                          transpose=backward)
    assert_close(qo, want[0], torch.float32)
    assert_close(ko, want[1], torch.float32)


def test_plan_reuse_and_revalidation(device):
    q, k = _qk(1, 3, 2, 1, 64, torch.float16, device, seed=7)
    cos, sin = tables(3, 64, device=device)
    apply_rope(q, k, cos, sin)
    n = plan_counts()["rope"]
    qo, ko = apply_rope(q, k, cos, sin)
    assert plan_counts()["rope"] == n
    assert_close(qo, _ref(q, cos, sin), torch.float16)
    with pytest.raises(ShapeError):  # another signature: validated in full, not planned
        apply_rope(q, k, *tables(2, 64, device=device))
    with pytest.raises(DTypeError):
        apply_rope(q, k.float(), cos, sin)
    assert plan_counts()["rope"] == n


def _bad(d):
    q = torch.randn(1, 2, 3, 64, device=d)
    return q, torch.randn(1, 1, 3, 64, device=d), *tables(3, 64, device=d)


@pytest.mark.parametrize("call,exc", [
    (lambda d: apply_rope(*_bad(d), rotary_layout="llama"), InvalidArgumentError),
    (lambda d: apply_rope(*_bad(d), qk_layout="sbhd"), InvalidArgumentError),
    (lambda d: apply_rope(_bad(d)[0], _bad(d)[1].half(), *_bad(d)[2:]), DTypeError),
    (lambda d: apply_rope(_bad(d)[0].long(), None, *_bad(d)[2:]), DTypeError),
    (lambda d: apply_rope(_bad(d)[0], torch.randn(2, 1, 3, 64, device=d), *_bad(d)[2:]), ShapeError),  # batch
    (lambda d: apply_rope(_bad(d)[0], torch.randn(1, 1, 4, 64, device=d), *_bad(d)[2:]), ShapeError),  # seq
    (lambda d: apply_rope(torch.randn(1, 2, 3, 4, 64, device=d), None, *_bad(d)[2:]), ShapeError),  # 5-D
    (lambda d: apply_rope(torch.randn(1, 1, 3, 1024, device=d), None, *tables(3, 1024, device=d)), ShapeError),
    (lambda d: apply_rope(*_bad(d), position_ids=torch.zeros(4, dtype=torch.long, device=d)), ShapeError),
    (lambda d: apply_rope(*_bad(d), position_ids=torch.zeros(3, device=d)), DTypeError),
    (lambda d: apply_rope(*_bad(d)[:2], *tables(2, 64, device=d)), ShapeError),  # too few rows
    (lambda d: apply_rope(*_bad(d)[:2], *[t[[0, 1, 2]].expand(2, 3, 64) for t in tables(3, 64, device=d)]),
     ShapeError),  # per-token tables for 2 sequences, q has 1
    (lambda d: apply_rope(*_bad(d)[:2], *[t[None].expand(1, 3, 64) for t in tables(3, 64, device=d)],
                          position_ids=None, rotary_dim=66), ShapeError),  # rotary_dim > head_dim
    (lambda d: apply_rope(*_bad(d), rotary_dim=31), ShapeError),
    (lambda d: apply_rope(*_bad(d), rotary_dim=32.0), InvalidArgumentError),
    (lambda d: apply_rope(*_bad(d)[:2], *tables(3, 128, device=d)), ShapeError),  # table wider than head_dim
    (lambda d: apply_rope(*_bad(d)[:3], tables(3, 32, device=d)[1]), ShapeError),  # cos/sin shapes differ
    (lambda d: apply_rope(*_bad(d)[:2], *[t.half() for t in tables(3, 64, device=d)]), DTypeError),
    (lambda d: apply_rope(torch.randn(1, 2, 64, 3, device=d).transpose(-1, -2), None, *_bad(d)[2:]), LayoutError),
    (lambda d: apply_rope(*_bad(d), inplace=1), InvalidArgumentError),
    (lambda d: apply_rope(*_bad(d)[:2], *[t[:, None].expand(3, 2, 64) for t in tables(3, 64, device=d)]),
     ShapeError),  # 3-D tables whose batch (3) is not q's (1)
    (lambda d: apply_rope(*_bad(d)[:2], *[t[None, None].expand(1, 2, 3, 64) for t in tables(3, 64, device=d)]),
     ShapeError),  # 4-D tables with a heads dim of 2
])
def test_bad_input_raises_clear_errors(device, call, exc):
    with pytest.raises(exc) as info:
        call(device)
    assert isinstance(info.value, TritonOpsError)
    assert str(info.value)


def test_wrong_qk_layout_is_caught_by_tables(device):
    # a [b, s, h, d] tensor passed with the default bhsd reads as 5 heads of seq 4: HF-style [1, 5, d] tables
    # do not fit, and the error says so instead of rotating by the wrong positions
    q = torch.randn(1, 5, 4, 64, device=device)
    cos, sin = tables(5, 64, device=device)
    with pytest.raises(ShapeError, match="qk_layout"):
        apply_rope(q, None, cos[None], sin[None])
    qo, _ = apply_rope(q, None, cos[None], sin[None], qk_layout="bshd")
    assert_close(qo, _ref(q, cos, sin, bshd=True), torch.float32)


def test_cpu_tensor_without_interpreter_is_a_device_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, cos, sin = _bad("cpu")
    with pytest.raises(DeviceError, match="TRITON_INTERPRET=1"):
        apply_rope(q, k, cos, sin)


def test_matches_hugging_face_apply_rotary_pos_emb(device):
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    rotary = LlamaRotaryEmbedding(cfg).to(device)
    q, k = _qk(2, 5, 4, 2, 64, torch.float32, device, seed=8)
    pos = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]], device=device)
    cos, sin = rotary(q, pos)  # [b, s, d]
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    got_q, got_k = apply_rope(q, k, cos, sin)
    # fp32 both ways; HF rounds q*cos and rotate_half(q)*sin separately: a few fp32 ulps apart
    torch.testing.assert_close(got_q, want_q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_k, want_k, rtol=1e-5, atol=1e-6)


def test_opcheck(device):
    q, k = _qk(2, 3, 2, 1, 64, torch.float32, device)
    cos, sin = tables(4, 32, "gptj", device=device)
    pos = torch.tensor([3, 0, 1], device=device)
    torch.library.opcheck(torch.ops.triton_ops.rope.default, (q, k, cos, sin, pos, True, 32, False, False, False))
    torch.library.opcheck(torch.ops.triton_ops.rope_q.default,
                          (q, _half(cos, "gptj"), _half(sin, "gptj"), None, True, 32, True, False, True))
    torch.library.opcheck(torch.ops.triton_ops.rope_.default,
                          (q.clone(), k.clone(), cos, sin, pos, True, 32, False, False))


def test_torch_compile_fullgraph(device):
    q, k = _qk(2, 3, 4, 2, 64, torch.float32, device, seed=9)
    cos, sin = tables(3, 64, device=device)

    @torch.compile(fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    def attn_prologue(q, k, cos, sin, qi, ki):
        qo, ko = apply_rope(q, k, cos, sin)
        apply_rope(qi, ki, cos, sin, inplace=True)
        return qo * 2, ko

    qi, ki = q.clone(), k.clone()
    qo, ko = attn_prologue(q, k, cos, sin, qi, ki)
    assert_close(qo / 2, _ref(q, cos, sin), torch.float32)
    assert_close(ko, _ref(k, cos, sin), torch.float32)
    assert torch.equal(qi, qo / 2) and torch.equal(ki, ko)


@pytest.mark.parametrize("layout,rot,with_pos,bshd", [("neox", 64, False, False), ("gptj", 32, True, True)])
def test_backward_matches_float64_autograd(device, layout, rot, with_pos, bshd):
    q, k = _qk(2, 3, 4, 2, 64, torch.float32, device, bshd, seed=10)
    q, k = q.requires_grad_(), k.requires_grad_()
    cos, sin = tables(6, rot, layout, device=device)
    pos = torch.tensor([[5, 0, 2], [1, 1, 3]], device=device) if with_pos else None
    kw = dict(rotary_layout=layout, rotary_dim=rot, position_ids=pos, qk_layout="bshd" if bshd else "bhsd")
    qo, ko = apply_rope(q, k, cos, sin, **kw)
    gq, gk = torch.randn_like(qo), torch.randn_like(ko)
    got = torch.autograd.grad((qo * gq).sum() + (ko * gk).sum(), (q, k))
    q2, k2 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()

    def ref_rot(x):  # independent float64 torch rotation, differentiated by autograd
        x4 = x if bshd else x.transpose(1, 2)
        p = torch.arange(3, device=device).expand(2, 3) if pos is None else pos
        c, s = cos.double()[p][:, :, None], sin.double()[p][:, :, None]
        xr, xp = x4[..., :rot], x4[..., rot:]
        if layout == "neox":
            partner = torch.cat([-xr[..., rot // 2:], xr[..., : rot // 2]], -1)
        else:
            partner = torch.stack([-xr[..., 1::2], xr[..., 0::2]], -1).flatten(-2)
        y = torch.cat([xr * c + partner * s, xp], -1)
        return y if bshd else y.transpose(1, 2)

    want = torch.autograd.grad((ref_rot(q2) * gq.double()).sum() + (ref_rot(k2) * gk.double()).sum(), (q2, k2))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)  # fp32 rotation: a few ulps


def test_backward_q_only_unused_output_and_table_grads(device):
    q, k = _qk(1, 3, 2, 1, 64, torch.float32, device, seed=11)
    q, k = q.requires_grad_(), k.requires_grad_()
    cos, sin = tables(3, 64, device=device)
    cos, sin = cos.clone().requires_grad_(), sin.clone().requires_grad_()
    qo, ko = apply_rope(q, k, cos, sin)
    qo.square().sum().backward()  # k_out unused: k gets a zero gradient
    assert torch.equal(k.grad, torch.zeros_like(k))
    q2 = q.detach().double().requires_grad_()
    c2, s2 = cos.detach().double().requires_grad_(), sin.detach().double().requires_grad_()
    x4 = q2.transpose(1, 2)
    partner = torch.cat([-x4[..., 32:], x4[..., :32]], -1)
    (x4 * c2[:, None] + partner * s2[:, None]).square().sum().backward()
    torch.testing.assert_close(q.grad.double(), q2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cos.grad.double(), c2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sin.grad.double(), s2.grad, rtol=1e-5, atol=1e-5)
    qa = q.detach().clone().requires_grad_()
    qo, none = apply_rope(qa, None, cos.detach(), sin.detach())
    qo.sum().backward()  # expanded ones as the incoming gradient (stride 0)
    assert none is None and torch.isfinite(qa.grad).all() and qa.grad.abs().sum() > 0
    with pytest.raises(InvalidArgumentError, match="inplace"):
        apply_rope(qa, None, cos, sin, inplace=True)


@given(hq=st.integers(1, 6), hk=st.integers(0, 3), half_rot=st.integers(1, 12), extra=st.integers(0, 5),
       seq=st.integers(1, 5), layout=st.sampled_from(["neox", "gptj"]), bshd=st.booleans(),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_property_any_size(hq, hk, half_rot, extra, seq, layout, bshd, dtype, seed):
    """Any head counts, even rotary dims with any pass-through width, either dim order."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rot = 2 * half_rot
    d = rot + extra
    q, k = _qk(2, seq, hq, max(hk, 1), d, dtype, device, bshd, seed)
    k = k if hk else None
    cos, sin = tables(seq, rot, layout, device=device)
    qo, ko = apply_rope(q, k, cos, sin, rotary_layout=layout, rotary_dim=rot, qk_layout="bshd" if bshd else "bhsd")
    assert_close(qo, _ref(q, cos, sin, layout=layout, bshd=bshd), dtype, "q")
    if k is not None:
        assert_close(ko, _ref(k, cos, sin, layout=layout, bshd=bshd), dtype, "k")


def test_pick_config_is_pure_and_bounded():
    for hq, hk, d, rot in ((32, 8, 128, 128), (40, 40, 128, 128), (64, 8, 128, 64), (16, 16, 256, 64),
                           (32, 32, 80, 80), (1, 1, 512, 512), (28, 4, 128, 128)):
        for tokens in (1, 7, 16384):
            for copy in (True, False):
                cfg = pick_config(tokens, hq, hk, d, rot, copy)
                assert cfg == pick_config(tokens, hq, hk, d, rot, copy)
                per_head = 2 * cfg.HALF_BLOCK + (cfg.PASS_BLOCK if copy and d > rot else 0)
                assert cfg.HB * per_head <= max(TILE_ELEMS, per_head)
                assert rot <= 2 * cfg.HALF_BLOCK and (not copy or d - rot <= cfg.PASS_BLOCK)
                assert cfg.num_warps in (1, 2, 4, 8)
    assert pick_config(16384, 32, 8, 128).HB == 8  # 40 heads: 5 full blocks of 8, not 2 of 32
    assert pick_config(1, 32, 8, 128).HB == 1  # a decode step spreads over 40 programs


def test_exported():
    assert triton_ops.apply_rope is apply_rope


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,s,hq,hk,d", [(1, 4096, 32, 8, 128), (64, 1, 32, 8, 128), (4, 1024, 40, 40, 80),
                                         (2, 2048, 16, 16, 256)])
def test_gpu_model_shapes(dtype, b, s, hq, hk, d):
    q, k = _qk(b, s, hq, hk, d, dtype, "cuda")
    cos, sin = tables(s, d, device="cuda")
    qo, ko = apply_rope(q, k, cos, sin)
    want = rope_reference(q, k, cos, sin)
    assert_close(qo, want[0].double(), dtype)
    assert_close(ko, want[1].double(), dtype)
    q2, k2 = q.clone(), k.clone()
    apply_rope(q2, k2, cos, sin, inplace=True)
    assert torch.equal(q2, qo) and torch.equal(k2, ko)
