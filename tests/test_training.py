"""Training: the backward kernels against float64 references, torch.compile of training steps, tiny models.

* RMSNorm+RoPE and RMSNorm backward (Triton kernels): every forward variant against float64 autograd of
  the unfused reference on the same inputs, plus ``torch.autograd.gradcheck`` (fast mode) against finite
  differences of our own forward. The kernels take fp16/bf16/fp32 only, so gradcheck runs in fp32: with a
  step of 1e-2 the central difference carries a truncation error ~eps^2 |f'''| ~ 1e-4 and a rounding error
  ~u |f| / eps ~ 6e-6 (u = 6e-8), hence atol 1e-3, rtol 1e-2.
* Gated MLP backward (cuBLAS GEMMs in the input dtype + a Triton elementwise kernel), both recompute modes.
* ``torch.compile(fullgraph=True)`` of forward + ``loss.backward()`` through every op.
* A tiny Hugging Face Llama and Qwen3 train for 50 steps patched and unpatched: the loss curves agree.

Gradient tolerances (``GRAD_TOL``, of the largest reference gradient), per dtype: the kernels compute in
fp32 and round each gradient once to the dtype. fp32: reductions over <= 160 terms in a different order,
~1e-7 observed, 2e-5 allowed. fp16: half an ulp of the largest element is 2^-11 of it (4.9e-4); 2e-3.
bf16: half an ulp is 2^-8 of it (3.9e-3; 3.3e-3 observed); with round_before_weight the forward also
rounds the normalised row, which can fall on the other side of a tie than the reference's rounding:
two half-ulps, 1.6e-2. The GEMM gradients of the gated MLP (K up to 40 here) are judged by relative L2
error: bf16 operands give ~2^-9 per product and the rounding of G, U and dG, dU: 1e-2 allowed.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from triton_ops import (
    FusedGatedMLP,
    FusedMLP,
    apply_rope,
    fused_add_rmsnorm,
    fused_gated_mlp,
    fused_rmsnorm_rope,
    patch_model,
)
from triton_ops.exceptions import UnsupportedError
from triton_ops.kernels import gated_mlp as G
from triton_ops.kernels import gated_mlp_backward as GB
from triton_ops.kernels import rmsnorm_backward as NB
from triton_ops.kernels import rmsnorm_rope_backward as RB
from triton_ops.kernels.rmsnorm_rope import rmsnorm_rope_reference

from ._rope_helpers import tables
from .conftest import DEVICE

GRAD_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    assert got is not None, f"{what}: no gradient"
    assert not torch.isnan(got).any(), f"{what}: NaN"
    err = (got.double() - want.double()).abs().max().item() / max(want.abs().max().item(), 1e-30)
    assert err <= tol, f"{what}: max error {err:.2e} of the largest gradient (allowed {tol:.1e})"


def _rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(got.double() - want.double()) / torch.linalg.vector_norm(want.double())).item()


# ----------------------------------------------------------------------------------------------------
# RMSNorm + RoPE
# ----------------------------------------------------------------------------------------------------
# (name, hidden, head_dim, rot, per_head, layout, positions, residual, weight_offset, tile_elems)
#   positions: None (token index), "seq" ([S] ids), "bs" ([B, S] ids), "token" (per-token tables)
#   tile_elems: MAX_TILE_ELEMS for the test (small: two-pass row norm / chunked per-head norm)
_RR_CASES = [
    ("row neox", 64, 16, 16, False, "neox", None, False, 0.0, None),
    ("row gptj", 64, 16, 16, False, "gptj", None, False, 0.0, None),
    ("row partial neox, ids [B,S]", 64, 16, 8, False, "neox", "bs", False, 0.0, None),
    ("row partial gptj, residual", 64, 16, 8, False, "gptj", None, True, 0.0, None),
    ("per-head neox, ids [S]", 64, 16, 16, True, "neox", "seq", False, 0.0, None),
    ("per-head gptj partial, offset", 64, 16, 8, True, "gptj", None, False, 1.0, None),
    ("row per-token tables, residual", 64, 16, 16, False, "neox", "token", True, 0.5, None),
    ("two-pass row gptj partial, residual", 96, 16, 8, False, "gptj", "bs", True, 1.0, 64),
    ("chunked per-head neox", 96, 16, 16, True, "neox", None, True, 0.0, 32),
]


def _rr_inputs(hidden, head_dim, rot, per_head, layout, positions, residual, dtype=torch.float32, B=2, S=3):
    x = torch.randn(B, S, hidden, device=DEVICE).to(dtype)
    w = (1 + 0.3 * torch.randn(head_dim if per_head else hidden, device=DEVICE)).to(dtype)
    r = torch.randn(B, S, hidden, device=DEVICE).to(dtype) if residual else None
    pos = None
    if positions == "token":
        cos, sin = tables(B * S, rot, layout, device=DEVICE)
        cos, sin = cos.view(B, S, rot), sin.view(B, S, rot)
    else:
        cos, sin = tables(S + 4, rot, layout, device=DEVICE)
        if positions == "seq":
            pos = torch.tensor([5, 0, 3][:S], device=DEVICE)
        elif positions == "bs":
            pos = torch.randint(0, S + 4, (B, S), device=DEVICE)
    return x, w, r, cos, sin, pos


def _rr_loss(fn, x, w, r, cos, sin, pos, head_dim, rot, layout, offset, gy, gs):
    out = fn(x, w, cos, sin, 1e-6, head_dim=head_dim, position_ids=pos, residual=r, rotary_layout=layout,
             weight_offset=offset, **({"rotary_dim": rot} if fn is fused_rmsnorm_rope and rot < head_dim else {}))
    if r is None:
        return (out.double() * gy).sum()
    y, s = out
    return (y.double() * gy).sum() + (s.double() * gs).sum()


@pytest.mark.parametrize("case", _RR_CASES, ids=[c[0] for c in _RR_CASES])
def test_rmsnorm_rope_backward_matches_float64(case, monkeypatch):
    name, hidden, head_dim, rot, per_head, layout, positions, residual, offset, tile = case
    if tile is not None:
        monkeypatch.setattr(RB, "MAX_TILE_ELEMS", tile)
        RB._plans.clear()  # plans made under the default tile size must not be reused
        cfg = RB.pick_backward_config(hidden, head_dim, rot, per_head)
        assert cfg.N_CHUNKS > 1, "the case must exercise the chunked path"
    torch.manual_seed(1)
    x, w, r, cos, sin, pos = _rr_inputs(hidden, head_dim, rot, per_head, layout, positions, residual)
    gy = torch.randn(x.shape, device=DEVICE, dtype=torch.float64)
    gs = torch.randn(x.shape, device=DEVICE, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, w) + ((r,) if residual else ())]
    lx, lw = leaves[0], leaves[1]
    lr = leaves[2] if residual else None
    got = torch.autograd.grad(_rr_loss(fused_rmsnorm_rope, lx, lw, lr, cos, sin, pos, head_dim, rot, layout, offset,
                                       gy, gs), leaves)
    refs = [t.double().requires_grad_() for t in leaves]
    rr = refs[2] if residual else None
    want = torch.autograd.grad(_rr_loss(rmsnorm_rope_reference, refs[0], refs[1], rr, cos.double(), sin.double(),
                                        pos, head_dim, rot, layout, offset, gy, gs), refs)
    for g, wnt, what in zip(got, want, ("dx", "dweight", "dresidual")):
        _close(g, wnt, GRAD_TOL[torch.float32], f"{name} {what}")
    if tile is not None:
        RB._plans.clear()


@pytest.mark.parametrize("dtype,per_head,layout", [(torch.bfloat16, False, "neox"), (torch.float16, True, "gptj")])
def test_rmsnorm_rope_backward_16bit(dtype, per_head, layout):
    torch.manual_seed(2)
    x, w, r, cos, sin, pos = _rr_inputs(64, 16, 16, per_head, layout, "bs", True, dtype)
    gy = torch.randn(x.shape, device=DEVICE).to(dtype).double()
    gs = torch.randn(x.shape, device=DEVICE).to(dtype).double()
    leaves = [t.clone().requires_grad_() for t in (x, w, r)]
    got = torch.autograd.grad(_rr_loss(fused_rmsnorm_rope, *leaves, cos, sin, pos, 16, 16, layout, 0.0, gy, gs),
                              leaves)
    refs = [t.double().requires_grad_() for t in (x, w, r)]
    want = torch.autograd.grad(_rr_loss(rmsnorm_rope_reference, *refs, cos.double(), sin.double(), pos, 16, 16,
                                        layout, 0.0, gy, gs), refs)
    for g, wnt, what in zip(got, want, ("dx", "dweight", "dresidual")):
        assert g.dtype == dtype
        _close(g, wnt, GRAD_TOL[dtype], f"{dtype} {what}")


def test_rmsnorm_rope_gradcheck():
    torch.manual_seed(3)
    x, w, r, cos, sin, pos = _rr_inputs(32, 16, 8, False, "gptj", "bs", True, B=1)
    leaves = tuple(t.clone().requires_grad_() for t in (x, w, r))

    def fn(x, w, r):
        return fused_rmsnorm_rope(x, w, cos, sin, head_dim=16, rotary_dim=8, position_ids=pos, residual=r,
                                  rotary_layout="gptj", weight_offset=0.5)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gradcheck warns about non-double inputs; see the module docstring
        assert torch.autograd.gradcheck(fn, leaves, eps=1e-2, atol=1e-3, rtol=1e-2, fast_mode=True)


def test_rmsnorm_rope_backward_nan_positions():
    """A position outside the table made the token's output NaN: its gradients are NaN, and so is the
    weight gradient it contributes to; the other tokens' gradients are exact."""
    torch.manual_seed(4)
    x, w, _, cos, sin, _ = _rr_inputs(64, 16, 16, False, "neox", None, False)
    pos = torch.tensor([[0, 9, 2], [1, 2, 3]], device=DEVICE)  # table has S + 4 = 7 rows: 9 is outside
    lx, lw = x.clone().requires_grad_(), w.clone().requires_grad_()
    fused_rmsnorm_rope(lx, lw, cos, sin, head_dim=16, position_ids=pos).sum().backward()
    assert torch.isnan(lx.grad[0, 1]).all()
    assert torch.isnan(lw.grad).all()
    ok = pos < cos.shape[0]
    xr = x.double().requires_grad_()
    rmsnorm_rope_reference(xr[1:], w.double(), cos.double(), sin.double(), head_dim=16,
                           position_ids=pos[1:]).sum().backward()
    _close(lx.grad[1], xr.grad[1], GRAD_TOL[torch.float32], "valid rows")
    assert torch.isfinite(lx.grad[ok]).all()


def test_rmsnorm_rope_backward_partial_needs_and_reference_mode(monkeypatch):
    torch.manual_seed(5)
    x, w, r, cos, sin, _ = _rr_inputs(64, 16, 16, True, "neox", None, True)
    # only the weight requires grad, then only x: each gets its gradient, the other none
    lw = w.clone().requires_grad_()
    y, _ = fused_rmsnorm_rope(x, lw, cos, sin, head_dim=16, residual=r)
    y.square().sum().backward()
    lx = x.clone().requires_grad_()
    y, s = fused_rmsnorm_rope(lx, w, cos, sin, head_dim=16, residual=r)
    (y.square().sum() + s.sum()).backward()
    # the fp32 PyTorch reference backward (kept for tests) agrees with the kernel
    monkeypatch.setattr(RB, "USE_REFERENCE", True)
    lw2, lx2 = w.clone().requires_grad_(), x.clone().requires_grad_()
    y, _ = fused_rmsnorm_rope(x, lw2, cos, sin, head_dim=16, residual=r)
    y.square().sum().backward()
    y, s = fused_rmsnorm_rope(lx2, w, cos, sin, head_dim=16, residual=r)
    (y.square().sum() + s.sum()).backward()
    _close(lw.grad, lw2.grad, 1e-5, "dweight vs reference")
    _close(lx.grad, lx2.grad, 1e-5, "dx vs reference")


def test_backward_configs():
    """Every tile the heuristics pick covers its row, within the register budget the compile check built."""
    for hd, rot in ((64, 64), (128, 64), (80, 80), (512, 512)):
        for hidden in (hd, hd * 32, hd * 40, hd * 112):
            for per_head in (False, True):
                c = RB.pick_backward_config(hidden, hd, rot, per_head)
                assert c.NH_BLOCK * c.N_CHUNKS * hd >= hidden and 1 <= c.num_warps <= 16
                assert rot <= 2 * c.HALF_BLOCK and (c.N_CHUNKS == 1 or hidden // hd > c.NH_BLOCK)
    assert RB.pick_backward_config(4096, 128, 128, False).N_CHUNKS == 1  # Llama/Qwen rows: one pass
    for n_rows in (1, 7, 1 << 20):
        for n_cols in (1, 48, 4096, 5120, 16384):
            c = NB.pick_backward_config(n_rows, n_cols)
            assert n_cols <= c.BLOCK * c.N_CHUNKS and c.ROWS * c.BLOCK <= NB.PACK_ELEMS and 1 <= c.num_warps <= 16


# ----------------------------------------------------------------------------------------------------
# fused_add_rmsnorm
# ----------------------------------------------------------------------------------------------------
# (name, shape, residual, weight_offset, round_before_weight, dtype, max_single_block, eps)
_NORM_CASES = [
    ("plain", (2, 3, 160), False, 0.0, False, torch.float32, None, 1e-6),
    ("residual offset", (2, 3, 160), True, 1.0, False, torch.float32, None, 1e-6),
    ("packed narrow rows, eps 0", (37, 48), True, 0.0, True, torch.float32, None, 0.0),
    ("two-pass rows", (3, 200), True, 0.5, True, torch.float32, 64, 1e-6),
    ("bf16 round_before_weight", (2, 5, 64), True, 0.0, True, torch.bfloat16, None, 1e-6),
    ("fp16 two-pass", (3, 200), False, 0.0, False, torch.float16, 64, 1e-6),
]


@pytest.mark.parametrize("case", _NORM_CASES, ids=[c[0] for c in _NORM_CASES])
def test_add_rmsnorm_backward_matches_float64(case, monkeypatch):
    name, shape, residual, offset, rbw, dtype, max_block, eps = case
    if max_block is not None:
        monkeypatch.setattr(NB, "MAX_SINGLE_BLOCK", max_block)
        NB._plans.clear()
        assert NB.pick_backward_config(4, shape[-1]).N_CHUNKS > 1
    torch.manual_seed(6)
    x = torch.randn(shape, device=DEVICE).to(dtype)
    w = (1 + 0.3 * torch.randn(shape[-1], device=DEVICE)).to(dtype)
    r = torch.randn(shape, device=DEVICE).to(dtype) if residual else None
    gy = torch.randn(shape, device=DEVICE).to(dtype).double()
    gs = torch.randn(shape, device=DEVICE).to(dtype).double()

    def loss(fn, x, w, r):
        out = fn(x, w, eps, residual=r, weight_offset=offset, round_before_weight=rbw)
        if r is None:
            return (out.double() * gy).sum()
        return (out[0].double() * gy).sum() + (out[1].double() * gs).sum()

    leaves = [t.clone().requires_grad_() for t in (x, w) + ((r,) if residual else ())]
    got = torch.autograd.grad(loss(fused_add_rmsnorm, leaves[0], leaves[1], leaves[2] if residual else None), leaves)
    # float64 reference: the rounding of the normalised row (round_before_weight) is the identity for ds
    # (its derivative almost everywhere); d weight uses the rounded value the forward multiplied by.
    refs = [t.double().requires_grad_() for t in leaves]
    s = refs[0] if not residual else refs[0] + refs[2]
    n = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)
    y = n * (offset + refs[1])
    lref = (y * gy).sum() + ((s * gs).sum() if residual else 0)
    want = list(torch.autograd.grad(lref, refs))
    if rbw:
        want[1] = (gy * n.detach().to(dtype).double()).reshape(-1, shape[-1]).sum(0)
    for g, wnt, what in zip(got, want, ("dx", "dweight", "dresidual")):
        _close(g, wnt, GRAD_TOL[dtype], f"{name} {what}")
    if max_block is not None:
        NB._plans.clear()


def test_add_rmsnorm_gradcheck_and_reference_mode(monkeypatch):
    torch.manual_seed(7)
    leaves = tuple(torch.randn(s, device=DEVICE, requires_grad=True) for s in ((3, 40), (40,), (3, 40)))

    def fn(x, w, r):
        return fused_add_rmsnorm(x, w, residual=r, weight_offset=1.0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.autograd.gradcheck(fn, leaves, eps=1e-2, atol=1e-3, rtol=1e-2, fast_mode=True)
    x, w, r = (t.detach() for t in leaves)
    grads = []
    for ref in (False, True):
        monkeypatch.setattr(NB, "USE_REFERENCE", ref)
        ls = [t.clone().requires_grad_() for t in (x, w, r)]
        y, s = fused_add_rmsnorm(*ls[:2], residual=ls[2])
        (y.square().sum() + s.sum()).backward()
        grads.append([t.grad for t in ls])
    for a, b in zip(*grads):
        _close(a, b, 1e-5, "kernel vs reference")


# ----------------------------------------------------------------------------------------------------
# Gated MLP
# ----------------------------------------------------------------------------------------------------
def _mlp_inputs(M=10, H=24, inter=40, bias=False, dtype=torch.float32):
    x = torch.randn(M, H, device=DEVICE).to(dtype)
    wg = (torch.randn(inter, H, device=DEVICE) / H ** 0.5).to(dtype)
    wu = (torch.randn(inter, H, device=DEVICE) / H ** 0.5).to(dtype)
    bg = torch.randn(inter, device=DEVICE).to(dtype) if bias else None
    bu = torch.randn(inter, device=DEVICE).to(dtype) if bias else None
    return x, wg, wu, bg, bu


@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("recompute", [True, False])
def test_gated_mlp_backward_modes(act, recompute):
    torch.manual_seed(8)
    bias = act != "gelu"
    tensors = _mlp_inputs(bias=bias)
    leaves = [t.clone().requires_grad_() if t is not None else None for t in tensors]
    out = fused_gated_mlp(leaves[0], leaves[1], leaves[2], act, gate_bias=leaves[3], up_bias=leaves[4],
                          recompute=recompute)
    dy = torch.randn_like(out)
    out.backward(dy)
    refs = [t.double().requires_grad_() if t is not None else None for t in tensors]
    G.gated_mlp_reference_torch(*refs[:3], act, refs[3], refs[4]).backward(dy.double())
    for got, want, what in zip(leaves, refs, ("dx", "dWg", "dWu", "dbg", "dbu")):
        if got is not None:
            # fp32 GEMMs (exact fp32 in torch on the CPU and by default on the GPU) over K <= 40
            _close(got.grad, want.grad, GRAD_TOL[torch.float32], f"{act} recompute={recompute} {what}")


@pytest.mark.parametrize("recompute", [True, False])
def test_gated_mlp_module_bf16(recompute):
    """FusedGatedMLP's packed weight (one GEMM for dx), bf16 GEMMs, both modes, against float64."""
    torch.manual_seed(9)
    m = FusedGatedMLP(32, 48, device=DEVICE, dtype=torch.bfloat16)
    m.recompute = recompute
    x = torch.randn(2, 5, 32, device=DEVICE).to(torch.bfloat16).requires_grad_()
    out = m(x)
    dy = torch.randn_like(out)
    out.backward(dy)
    assert GB._packed(m.weight[:48], m.weight[48:]) is not None
    w = m.weight.detach().double().requires_grad_()
    xr = x.detach().double().requires_grad_()
    G.gated_mlp_reference_torch(xr, w[:48], w[48:], "silu").backward(dy.double())
    assert x.grad.dtype == torch.bfloat16 and m.weight.grad.dtype == torch.bfloat16
    assert _rel_l2(x.grad, xr.grad) < 1e-2 and _rel_l2(m.weight.grad, w.grad) < 1e-2


def _saved_bytes(fn) -> tuple[int, list, torch.Tensor]:
    """Elements of the tensors autograd saves while ``fn`` runs (weights counted too), their shapes, and
    ``fn``'s output."""
    shapes: list = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(torch.Size(s).numel() for s in shapes), shapes, out


def test_gated_mlp_recompute_saves_no_projections():
    """recompute=True keeps only x (and the weights); recompute=False also keeps [G, U] ([M, 2I])."""
    M, H, inter = 10, 24, 40
    x, wg, wu, _, _ = _mlp_inputs(M, H, inter)
    x.requires_grad_()
    n_rec, shapes_rec, _ = _saved_bytes(lambda: fused_gated_mlp(x, wg, wu, recompute=True))
    n_save, shapes_save, out = _saved_bytes(lambda: fused_gated_mlp(x, wg, wu, recompute=False))
    assert (M, inter) not in shapes_rec and (M, 2 * inter) not in shapes_rec
    assert (M, 2 * inter) in shapes_save and n_save - n_rec == M * 2 * inter  # elements
    out.sum().backward()
    assert x.grad is not None


def test_gated_mlp_fp8_is_inference_only():
    torch.manual_seed(10)
    m = FusedGatedMLP(32, 48, device=DEVICE, fp8=True)
    x = torch.randn(3, 32, device=DEVICE, requires_grad=True)
    out = m(x)  # a forward with autograd recording works (a model run without no_grad)
    with pytest.raises(UnsupportedError, match="inference only"):
        out.sum().backward()
    with torch.no_grad():
        assert m(x).shape == (3, 48)
    # compiled: the forward traces (inference without no_grad keeps working), the backward raises when run
    torch._dynamo.reset()
    out = torch.compile(lambda x: m(x).sum(), fullgraph=True, backend="aot_eager")(x)
    with pytest.raises(UnsupportedError, match="inference only"):
        out.backward()


def test_fused_mlp_backward_matches_hf_modes():
    torch.manual_seed(11)
    mlp = FusedMLP(24, 40, bias=True).to(DEVICE)
    x = torch.randn(2, 3, 24, device=DEVICE)
    grads = {}
    for mode in (True, False):
        mlp.recompute = mode
        xl = x.clone().requires_grad_()
        mlp.zero_grad()
        mlp(xl).square().sum().backward()
        grads[mode] = [xl.grad] + [p.grad.clone() for p in mlp.parameters()]
    ref = copy.deepcopy(mlp).double()
    xr = x.double().requires_grad_()
    ref.zero_grad()
    ref.down_proj(torch.nn.functional.silu(ref.gate_proj(xr)) * ref.up_proj(xr)).square().sum().backward()
    want = [xr.grad] + [p.grad for p in ref.parameters()]
    for mode, got in grads.items():
        for g, w in zip(got, want):
            _close(g, w, 1e-4, f"FusedMLP recompute={mode}")  # fp32 through two GEMM layers


# ----------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True) of a training step
# ----------------------------------------------------------------------------------------------------
def _compiled_step(loss_fn, backend):
    """forward + loss.backward() under torch.compile(fullgraph=True). torch >= 2.13 traces the backward
    call itself (``trace_autograd_ops``); older versions compile the loss and AOTAutograd compiles the
    backward graph that ``loss.backward()`` then runs."""
    torch._dynamo.reset()
    if hasattr(torch._dynamo.config, "trace_autograd_ops"):
        def step(*args):
            loss = loss_fn(*args)
            loss.backward()
            return loss.detach()

        compiled = torch.compile(step, fullgraph=True, backend=backend)

        def run(*args):
            with torch._dynamo.config.patch(trace_autograd_ops=True):
                return compiled(*args)
        return run
    compiled_loss = torch.compile(loss_fn, fullgraph=True, backend=backend)

    def run_old(*args):
        loss = compiled_loss(*args)
        loss.backward()
        return loss.detach()
    return run_old


def _check_compiled_grads(loss_fn, inputs, backend="aot_eager"):
    """Gradients of a compiled training step equal eager ones (same kernels: up to fp32 reordering)."""
    eager = [t.clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
    loss_fn(*eager).backward()
    comp = [t.clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
    _compiled_step(loss_fn, backend)(*comp)
    for a, b in zip(eager, comp):
        if a.is_floating_point():
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)


# aot_eager: AOTAutograd traces forward and backward with fake tensors (register_fake of every custom op
# including the backward ops, no graph breaks under fullgraph=True) without Inductor's C++ builds, which
# take ~10 s per graph on this CPU; the FusedMLP test runs through Inductor itself.
def test_compile_training_rmsnorm_rope():
    torch.manual_seed(12)
    x, w, r, cos, sin, pos = _rr_inputs(64, 16, 16, True, "neox", "bs", True)

    def loss(x, w, r):
        y, s = fused_rmsnorm_rope(x, w, cos, sin, head_dim=16, position_ids=pos, residual=r)
        return y.square().sum() + s.sum()

    _check_compiled_grads(loss, (x, w, r))


def test_compile_training_add_rmsnorm():
    torch.manual_seed(13)

    def loss(x, w, r):
        y, s = fused_add_rmsnorm(x, w, residual=r, round_before_weight=True)
        return y.square().sum() + (s * s).sum()

    _check_compiled_grads(loss, tuple(torch.randn(s, device=DEVICE) for s in ((2, 3, 64), (64,), (2, 3, 64))))


def test_compile_training_apply_rope():
    torch.manual_seed(14)
    cos, sin = tables(5, 16, device=DEVICE)

    def loss(q, k):
        qo, ko = apply_rope(q, k, cos, sin)
        return qo.square().sum() + (ko * 3).sum()

    _check_compiled_grads(loss, (torch.randn(1, 4, 5, 16, device=DEVICE), torch.randn(1, 2, 5, 16, device=DEVICE)))


@pytest.mark.parametrize("recompute", [True, False])
def test_compile_training_gated_mlp(recompute):
    torch.manual_seed(15)

    def loss(x, wg, wu, bg, bu):
        return fused_gated_mlp(x, wg, wu, "gelu_tanh", gate_bias=bg, up_bias=bu, recompute=recompute).square().sum()

    _check_compiled_grads(loss, _mlp_inputs(bias=True))


def test_compile_training_fused_mlp_inductor():
    torch.manual_seed(16)
    mlp = FusedMLP(24, 40).to(DEVICE)
    params = [p.detach().clone() for p in mlp.parameters()]

    def loss(x, wg, wu, wd):
        with torch.nn.utils.stateless._reparametrize_module(mlp, {"gate_proj.weight": wg, "up_proj.weight": wu,
                                                                  "down_proj.weight": wd}):
            return mlp(x).square().sum()

    _check_compiled_grads(loss, (torch.randn(2, 3, 24, device=DEVICE), *params), backend="inductor")


# ----------------------------------------------------------------------------------------------------
# A tiny model trains the same patched and unpatched
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    # Tiny CPU matmuls on a shared 2-core machine: intra-op threads waiting on a busy core cost ~30 ms
    # per op (measured), 1000x the op; one thread keeps the loop at interpreter speed.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(family: str):
    import transformers as T

    c = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=32, pad_token_id=0, bos_token_id=None,
             eos_token_id=None)
    if family == "qwen3":
        return T.Qwen3ForCausalLM(T.Qwen3Config(**c, head_dim=32))
    return T.LlamaForCausalLM(T.LlamaConfig(**c, mlp_bias=True))


def _losses(model, ids, opt_cls, lr, steps=50):
    opt = opt_cls(model.parameters(), lr=lr)
    out = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


# Tolerance of the loss curves, as the largest |patched - unpatched| over 50 steps divided by the first
# loss (~4.1; relative differences of the late, near-zero losses would measure nothing but noise). Both
# runs are fp32 and differ only in evaluation order inside the fused ops (~1e-7 relative per op); measured
# 2.3e-7 (Llama, SGD) and 2.6e-5 (Qwen3, AdamW, which amplifies small differences where its second
# moment is small). 1e-3 leaves 40x; each test also checks that a 1% smaller learning rate moves the
# unpatched curve by more than that (measured 3.1e-3 and 6.2e-2), so a wrong gradient cannot pass.
LOSS_TOL = 1e-3


@pytest.mark.parametrize("family,opt_cls,lr", [("llama", torch.optim.SGD, 0.1), ("qwen3", torch.optim.AdamW, 1e-2)])
def test_tiny_model_trains_like_unpatched(family, opt_cls, lr, one_thread):
    torch.manual_seed(17)
    base = _tiny(family).to(DEVICE).float().train()
    patched = copy.deepcopy(base)
    slower = copy.deepcopy(base)
    report = patch_model(patched)
    assert report.count("norm") and report.count("mlp") and not report.skipped
    ids = torch.randint(1, 64, (1, 6), device=DEVICE)
    want = _losses(base, ids, opt_cls, lr)
    got = _losses(patched, ids, opt_cls, lr)
    assert want[-1] < 0.1 * want[0], "the tiny model must actually train"
    diff = max(abs(a - b) for a, b in zip(got, want)) / want[0]
    assert diff <= LOSS_TOL, f"patched and unpatched loss curves differ by {diff:.2e} of the first loss"
    moved = max(abs(a - b) for a, b in zip(_losses(slower, ids, opt_cls, lr * 0.99), want)) / want[0]
    assert moved > LOSS_TOL, f"the tolerance must catch a 1% change of the step size (moved {moved:.1e})"


# ----------------------------------------------------------------------------------------------------
# `triton-ops bench training` at its quick shapes (what runs on the GPU later, checked here first)
# ----------------------------------------------------------------------------------------------------
def test_training_bench_cases_run_and_agree():
    from triton_ops.benchmark.cases_training import cases
    from triton_ops.benchmark.report import to_markdown
    from triton_ops.benchmark.suite import STATUS_OK, BenchmarkSuite

    all_cases = cases(quick=True, device=DEVICE)
    assert {c.op for c in all_cases} == {"training_rmsnorm_rope", "training_mlp"}
    assert all(c.measure_memory for c in all_cases)
    full = cases(quick=False, device=DEVICE)
    assert {c.shape for c in full} == {"8x2048x4096 hd128", "qwen3-8b M=8192", "qwen3-8b M=16384"}
    suite = BenchmarkSuite(["training"], device=DEVICE, cpu_reps=1)
    rows = [r for c in all_cases for r in suite.run_case(c)]
    bad = [(r["op"], r["system"], r.get("error")) for r in rows if r["status"] not in (STATUS_OK, "skipped")]
    assert not bad, bad
    ran = {(r["op"], r["system"]) for r in rows if r["status"] == STATUS_OK}
    assert {("training_rmsnorm_rope", "triton_ops"), ("training_rmsnorm_rope", "torch_eager"),
            ("training_mlp", "triton_ops"), ("training_mlp", "triton_ops_recompute"),
            ("training_mlp", "torch_eager")} <= ran
    rows[0]["peak_mb"] = 12.5  # the GPU suite adds it; the table shows it beside the time
    assert "peak MB" in to_markdown(rows, {}, cpu_only=True)


def test_backward_strided_inputs_and_expanded_grads():
    """Rows of x strided (a slice of a wider buffer), the incoming gradient expanded (``y.sum()``)."""
    torch.manual_seed(18)
    cos, sin = tables(3, 16, device=DEVICE)
    big = torch.randn(2, 3, 96, device=DEVICE)
    w = torch.randn(64, device=DEVICE)
    for op in ("rmsnorm_rope", "add_rmsnorm"):
        lx = big.clone().requires_grad_()
        lw = w.clone().requires_grad_()
        rx = big.double().requires_grad_()
        rw = w.double().requires_grad_()
        if op == "rmsnorm_rope":
            fused_rmsnorm_rope(lx[..., 16:80], lw, cos, sin, head_dim=16).sum().backward()
            rmsnorm_rope_reference(rx[..., 16:80], rw, cos.double(), sin.double(), head_dim=16).sum().backward()
        else:
            fused_add_rmsnorm(lx[..., 16:80], lw).sum().backward()
            s = rx[..., 16:80]
            (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-6) * rw).sum().backward()
        _close(lx.grad, rx.grad, GRAD_TOL[torch.float32], f"{op} dx")
        _close(lw.grad, rw.grad, GRAD_TOL[torch.float32], f"{op} dweight")


def test_backward_custom_ops_opcheck():
    """Schema and fake implementations of the backward ops and the save-mode forward (AOT tracing of them is
    what the torch.compile tests above exercise)."""
    torch.manual_seed(19)
    cos, sin = tables(4, 16, device=DEVICE)
    s, dy = torch.randn(2, 4, 32, device=DEVICE), torch.randn(2, 4, 32, device=DEVICE)
    w = torch.randn(32, device=DEVICE)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.triton_ops.rmsnorm_rope_backward,
                          (dy, s, w, cos, sin, None, dy, 1e-6, 16, False, 0.0, False, True, True), test_utils=utils)
    torch.library.opcheck(torch.ops.triton_ops.add_rmsnorm_backward, (dy, s, w, None, 1e-6, 0.0, False, True, True),
                          test_utils=utils)
    x, wg, wu, bg, bu = _mlp_inputs(bias=True)
    dh = torch.randn(x.shape[0], wg.shape[0], device=DEVICE)
    torch.library.opcheck(torch.ops.triton_ops.gated_mlp_backward,
                          (dh, x, wg, wu, bg, bu, None, "silu", True, True, True), test_utils=utils)
    torch.library.opcheck(torch.ops.triton_ops.gated_mlp_saving, (x.requires_grad_(), wg, wu, "silu", bg, bu),
                          test_utils=utils + ("test_autograd_registration",))
