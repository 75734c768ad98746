"""Launch plans (triton_ops/launch.py): one plan per signature, exact errors for any other signature,
Parameters on the fast path, autograd and tracing through the custom ops, plans dropped with tuning."""

from __future__ import annotations

import pytest
import torch

import triton_ops as T
from triton_ops import launch
from triton_ops.kernels import gated_mlp as gm
from triton_ops.kernels import rmsnorm_rope as rr
from triton_ops.kernels.rmsnorm_rope import rmsnorm_rope_reference

from ._rope_helpers import tables


@pytest.fixture(autouse=True)
def _fresh_plans():
    launch.clear_plans()
    yield
    launch.clear_plans()


def _rope_inputs(device, rows=3, hidden=128, hd=64, dtype=torch.float32):
    x = torch.randn(1, rows, hidden, device=device, dtype=dtype)
    w = (1 + 0.1 * torch.randn(hidden, device=device)).to(dtype)
    cos, sin = tables(rows + 5, hd, dtype=dtype, device=device)
    return x, w, cos, sin


def test_plan_key_rules(device):
    x = torch.randn(4, 8, device=device)
    p = torch.nn.Parameter(torch.randn(8, device=device))
    assert launch.plan_key(x, None) is not None
    with torch.no_grad():
        assert launch.plan_key(x, p) is not None  # Parameters take the fast path in inference
    assert launch.plan_key(x, p) is None  # grad mode + requires_grad: the custom op records autograd
    # different strides or alignment give different keys
    assert launch.plan_key(x) != launch.plan_key(x.t())
    assert launch.plan_key(x[:, :4]) != launch.plan_key(x.reshape(-1)[1:5].view(1, 4))


def test_repeated_signature_reuses_one_plan(device):
    x, w, cos, sin = _rope_inputs(device)
    y1 = T.fused_rmsnorm_rope(x, w, cos, sin)
    assert launch.plan_counts()["rmsnorm_rope"] == 1
    x2 = torch.randn_like(x)  # new data, same signature: the plan is reused and the result is x2's
    y2 = T.fused_rmsnorm_rope(x2, w, cos, sin)
    assert launch.plan_counts()["rmsnorm_rope"] == 1
    torch.testing.assert_close(y1, rmsnorm_rope_reference(x, w, cos, sin), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y2, rmsnorm_rope_reference(x2, w, cos, sin), rtol=1e-5, atol=1e-5)
    assert not torch.equal(y1, y2)


def test_parameter_weights_take_the_fast_path(device):
    x, w, cos, sin = _rope_inputs(device)
    m = T.FusedRMSNormRoPE(128, 64, device=device)
    with torch.no_grad():
        m.weight.copy_(w)
        y = m(x, cos, sin)
        m(x, cos, sin)
    assert launch.plan_counts()["rmsnorm_rope"] == 1
    torch.testing.assert_close(y, rmsnorm_rope_reference(x, w, cos, sin), rtol=1e-5, atol=1e-5)


def test_other_signature_is_validated_in_full(device):
    x, w, cos, sin = _rope_inputs(device)
    T.fused_rmsnorm_rope(x, w, cos, sin)
    with pytest.raises(T.ShapeError):
        T.fused_rmsnorm_rope(x, w[:100], cos, sin)  # wrong weight size: a new signature, so validated
    with pytest.raises(T.DTypeError):
        T.fused_rmsnorm_rope(x, w.half(), cos, sin)
    with pytest.raises(T.ShapeError):
        T.fused_rmsnorm_rope(x, w, cos, sin, head_dim=48)  # a scalar in the key
    assert launch.plan_counts()["rmsnorm_rope"] == 1


def test_unhashable_scalar_is_a_miss_not_a_crash(device):
    x, w, cos, sin = _rope_inputs(device)
    with pytest.raises(T.TritonOpsError):
        T.fused_rmsnorm_rope(x, w, cos, sin, eps=[1e-6])


def test_autograd_records_a_node_and_no_fast_path_plan(device):
    x, w, cos, sin = _rope_inputs(device)
    x.requires_grad_(True)
    y = T.fused_rmsnorm_rope(x, w, cos, sin)
    assert y.grad_fn is not None
    assert launch.plan_counts()["rmsnorm_rope"] == 0
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("with_residual", [False, True])
def test_eager_autograd_equals_the_custom_op(device, with_residual):
    """Eager training calls record launch.EagerAutograd (the custom op's implementation and registered
    autograd formula without its dispatch layers): outputs and every gradient equal the custom op's, bit
    for bit; a double backward still refuses (the backward kernel has no derivative)."""
    x, w, cos, sin = _rope_inputs(device)
    r = torch.randn_like(x)
    dy = torch.randn_like(x)
    got, want = [], []
    for out, eager in ((got, True), (want, False)):
        xs, ws, rs = (t.clone().requires_grad_(True) for t in (x, w, r))
        if eager:
            res = T.fused_rmsnorm_rope(xs, ws, cos, sin, residual=rs if with_residual else None)
        elif with_residual:
            res = torch.ops.triton_ops.add_rmsnorm_rope(xs, rs, ws, cos, sin, None, 1e-6, 64, False, 0.0, False)
        else:
            res = torch.ops.triton_ops.rmsnorm_rope(xs, ws, cos, sin, None, 1e-6, 64, False, 0.0, False)
        y = res[0] if with_residual else res
        if eager:
            assert type(y.grad_fn).__name__.startswith("EagerAutograd")
        loss = (y * dy).sum() + (res[1].square().sum() if with_residual else 0)
        loss.backward()
        out += [y.detach(), xs.grad, ws.grad] + ([rs.grad] if with_residual else [])
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    xs = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(T.fused_rmsnorm_rope(xs, w, cos, sin).square().sum(), xs, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def _train_repeatedly(call, leaves, cache, times=3):
    """Run ``call(*leaf copies) -> (outputs, loss)`` ``times`` times as eager training steps: the first
    is checked in full, the others replay its entry in ``cache`` (one entry). Returns each step's outputs
    and leaf gradients; asserts they are equal to the first step's, bit for bit, and that every output was
    recorded by launch.EagerAutograd."""
    results = []
    for _ in range(times):
        leaves_ = [None if t is None else t.clone().requires_grad_(True) for t in leaves]
        outs, loss = call(*leaves_)
        assert all(type(o.grad_fn).__name__.startswith("EagerAutograd") for o in outs)
        loss.backward()
        results.append([o.detach() for o in outs] + [t.grad for t in leaves_ if t is not None])
    assert len(cache._plans) == 1
    for later in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], later))
    return results[0]


@pytest.mark.parametrize("case", ["plain", "residual", "hf_tables", "per_token_tables", "positions_1xS"])
def test_repeated_training_call_replays_what_the_checks_resolved(device, case):
    """An eager training call of a repeated signature skips the checks and records EagerAutograd with what
    they resolved (head_dim, eps; the tables and positions viewed again as the checks view them): outputs
    and gradients equal the first, fully checked call, bit for bit, for each way the tables and positions
    are passed."""
    B, S, hidden, hd = 2, 3, 128, 64
    x = torch.randn(B, S, hidden, device=device)
    w = 1 + 0.1 * torch.randn(hidden, device=device)
    cos, sin = tables(S + 5, hd, device=device)
    r = torch.randn_like(x) if case == "residual" else None
    pos = None
    if case == "hf_tables":
        cos, sin = cos[None, :S], sin[None, :S]  # Hugging Face's [1, seq, rot]
    elif case == "per_token_tables":
        idx = torch.tensor([[0, 2, 4], [1, 3, 5]], device=device)
        cos, sin = cos[idx], sin[idx]  # [batch, seq, rot]
    elif case == "positions_1xS":
        pos = torch.tensor([[4, 0, 7]], device=device)  # [1, seq], row 0 used for every batch
    dy = torch.randn_like(x)

    def step(xs, ws, rs):
        res = T.fused_rmsnorm_rope(xs, ws, cos, sin, position_ids=pos, residual=rs)
        if rs is None:
            return [res], (res * dy).sum()
        return [res[0]], (res[0] * dy).sum() + res[1].square().sum()

    first = _train_repeatedly(step, [x, w, r], rr._grad_calls)
    with torch.no_grad():  # and they equal the planned inference call
        want = T.fused_rmsnorm_rope(x, w, cos, sin, position_ids=pos, residual=r)
    assert torch.equal(first[0], want[0] if r is not None else want)


@pytest.mark.parametrize("with_residual", [False, True])
def test_repeated_add_rmsnorm_training_call_is_replayed(device, with_residual):
    from triton_ops.kernels import rmsnorm as rn

    x = torch.randn(2, 3, 96, device=device)
    w = 1 + 0.1 * torch.randn(96, device=device)
    r = torch.randn_like(x) if with_residual else None
    dy = torch.randn_like(x)

    def step(xs, ws, rs):
        res = T.fused_add_rmsnorm(xs, ws, 1e-5, residual=rs, weight_offset=1.0)
        if rs is None:
            return [res], (res * dy).sum()
        return [res[0]], (res[0] * dy).sum() + res[1].square().sum()

    first = _train_repeatedly(step, [x, w, r], rn._grad_calls)
    with torch.no_grad():
        want = T.fused_add_rmsnorm(x, w, 1e-5, residual=r, weight_offset=1.0)
    assert torch.equal(first[0], want[0] if r is not None else want)
    with pytest.raises(T.DeviceError, match="meta"):
        T.fused_add_rmsnorm(x.to("meta").requires_grad_(True), w.to("meta"), 1e-5, weight_offset=1.0,
                            residual=None if r is None else r.to("meta"))


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("with_k", [False, True])
def test_repeated_apply_rope_training_call_is_replayed(device, layout, with_k):
    from triton_ops.kernels import rope as rp

    shape_q, shape_k = ((2, 4, 3, 64), (2, 2, 3, 64)) if layout == "bhsd" else ((2, 3, 4, 64), (2, 3, 2, 64))
    q, k = torch.randn(shape_q, device=device), torch.randn(shape_k, device=device)
    c, s = tables(3, 32, device=device)  # partial rotary: 32 of 64 channels
    dq, dk = torch.randn_like(q), torch.randn_like(k)

    def step(qs, ks):
        yq, yk = T.apply_rope(qs, ks, c, s, rotary_dim=32, qk_layout=layout)
        if ks is None:
            return [yq], (yq * dq).sum()
        return [yq, yk], (yq * dq).sum() + (yk * dk).sum()

    first = _train_repeatedly(step, [q, k if with_k else None], rp._grad_calls)
    with torch.no_grad():
        want = T.apply_rope(q, k if with_k else None, c, s, rotary_dim=32, qk_layout=layout)
    assert torch.equal(first[0], want[0])


def test_training_call_entry_is_not_found_by_a_meta_tensor(device):
    x, w, cos, sin = _rope_inputs(device)
    xs = x.clone().requires_grad_(True)
    T.fused_rmsnorm_rope(xs, w, cos, sin)
    with pytest.raises(T.DeviceError, match="meta"):
        T.fused_rmsnorm_rope(xs.detach().to("meta").requires_grad_(True), w.to("meta"), cos.to("meta"),
                             sin.to("meta"))


def test_out_buffer_signature_and_in_place(device):
    x, w, cos, sin = _rope_inputs(device)
    ref = rmsnorm_rope_reference(x, w, cos, sin)
    out = torch.full_like(x, float("nan"))
    T.fused_rmsnorm_rope(x, w, cos, sin, out=out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out2 = torch.full_like(x, float("nan"))  # a different out buffer, same signature: the plan writes it
    T.fused_rmsnorm_rope(x, w, cos, sin, out=out2)
    torch.testing.assert_close(out2, ref, rtol=1e-5, atol=1e-5)


def test_gated_mlp_plans_with_parameters_and_new_data(device):
    x = torch.randn(5, 64, device=device)
    lin_g = torch.nn.Linear(64, 96, bias=False, device=device)
    lin_u = torch.nn.Linear(64, 96, bias=False, device=device)
    with torch.no_grad():
        y1 = T.fused_gated_mlp(x, lin_g.weight, lin_u.weight)
        x2 = torch.randn_like(x)
        y2 = T.fused_gated_mlp(x2, lin_g.weight, lin_u.weight)
        ref2 = gm.gated_mlp_reference_torch(x2.double(), lin_g.weight.double(), lin_u.weight.double())
    assert launch.plan_counts()["gated_mlp"] == 1
    torch.testing.assert_close(y2.double(), ref2, rtol=2e-5, atol=2e-5)
    assert not torch.equal(y1, y2)


def test_hf_activation_names(device):
    x = torch.randn(3, 32, device=device)
    wg, wu = torch.randn(48, 32, device=device), torch.randn(48, 32, device=device)
    for alias, ours in gm.ACTIVATION_ALIASES.items():
        torch.testing.assert_close(T.fused_gated_mlp(x, wg, wu, alias), T.fused_gated_mlp(x, wg, wu, ours))


def test_switching_tuned_configs_drops_plans(device):
    x, w, cos, sin = _rope_inputs(device)
    T.fused_rmsnorm_rope(x, w, cos, sin)
    assert launch.plan_counts()["rmsnorm_rope"] == 1
    with T.use_tuned_configs(True):
        assert launch.plan_counts()["rmsnorm_rope"] == 0
    assert launch.plan_counts()["rmsnorm_rope"] == 0


def test_host_only_skips_launches(device):
    x, w, cos, sin = _rope_inputs(device)
    out = torch.full_like(x, float("nan"))
    with launch.host_only():
        T.fused_rmsnorm_rope(x, w, cos, sin, out=out)
    assert torch.isnan(out).all()  # nothing was launched
    T.fused_rmsnorm_rope(x, w, cos, sin, out=out)
    assert not torch.isnan(out).any()


def test_plan_cache_is_bounded():
    c = launch.PlanCache("test_bounded")
    for i in range(launch.PlanCache.MAX_PLANS + 5):
        c.put(("k", i), object())
    assert len(c) <= launch.PlanCache.MAX_PLANS
    assert c.get(["unhashable"]) is None


def test_plans_hold_no_tensors(device):
    x, w, cos, sin = _rope_inputs(device)
    T.fused_rmsnorm_rope(x, w, cos, sin)
    plan = next(iter(rr._plans._plans.values()))
    held = [getattr(plan, s) for s in plan.__slots__] + list(plan.ints)
    assert not any(isinstance(v, torch.Tensor) for v in held)


def test_inputs_copied_for_the_launch_are_never_planned(device):
    # leading dims that cannot be flattened: the op copies x, so a plan made for the copy's strides must
    # not be reused with the caller's tensor
    hd = 64
    xt = torch.randn(4, 2, 3, 128, device=device).transpose(0, 1)
    w = 1 + 0.1 * torch.randn(128, device=device)
    cos, sin = tables(3, hd, device=device)
    a = T.fused_rmsnorm_rope(xt, w, cos, sin)
    b = T.fused_rmsnorm_rope(xt, w, cos, sin)
    ref = rmsnorm_rope_reference(xt, w, cos, sin)
    torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b, ref, rtol=1e-5, atol=1e-5)
    assert launch.plan_counts()["rmsnorm_rope"] == 0


def test_direct_writes_bump_the_version_counter(device):
    # a buffer written through a direct launch must look changed to anything keyed on its version (the
    # FP8 operand cache reuses an FP8 copy of `b` while b._version is unchanged)
    x, w, cos, sin = _rope_inputs(device)
    out = torch.empty_like(x)
    for _ in range(2):  # first call plans, second takes the plan
        v = out._version
        T.fused_rmsnorm_rope(x, w, cos, sin, out=out)
        assert out._version > v
    y = torch.empty(5, 96, device=device)
    xg = torch.randn(5, 64, device=device)
    wg, wu = torch.randn(96, 64, device=device), torch.randn(96, 64, device=device)
    for _ in range(2):
        v = y._version
        T.fused_gated_mlp(xg, wg, wu, out=y)
        assert y._version > v
    xr, res, wr = torch.randn(4, 64, device=device), torch.randn(4, 64, device=device), torch.ones(64, device=device)
    o, ro = torch.empty_like(xr), torch.empty_like(xr)
    for _ in range(2):
        v, vr = o._version, ro._version
        T.fused_add_rmsnorm(xr, wr, residual=res, out=o, residual_out=ro)
        assert o._version > v and ro._version > vr
    q = torch.randn(1, 2, 3, 64, device=device)
    k = torch.randn(1, 1, 3, 64, device=device)
    c, s = tables(3, 64, device=device)
    for _ in range(2):
        vq, vk = q._version, k._version
        T.apply_rope(q, k, c, s, inplace=True)
        assert q._version > vq and k._version > vk


def test_interpreter_numpy_failure_names_the_fix():
    """Triton's interpreter with numpy >= 2.3 fails inside persistent kernels with an opaque TypeError;
    the launcher re-raises it as UnsupportedError saying what to install. Other errors pass unchanged."""

    class InterpreterError(Exception):  # the name Triton's interpreter error has
        pass

    opaque = InterpreterError("TypeError('only 0-dimensional arrays can be converted to Python scalars')")
    with pytest.raises(T.UnsupportedError, match="numpy < 2.3") as info:
        launch._explain_interpreter_failure(opaque)
    assert info.value.__cause__ is opaque
    launch._explain_interpreter_failure(InterpreterError("something else"))  # not ours to explain
    launch._explain_interpreter_failure(TypeError("only 0-dimensional arrays"))


@pytest.mark.parametrize("with_residual", [False, True])
def test_eager_autograd_equals_the_custom_op_for_add_rmsnorm(device, with_residual):
    """fused_add_rmsnorm's eager training path (launch.EagerAutograd) against its custom op: equal outputs
    and gradients, bit for bit."""
    x = torch.randn(3, 200, device=device)
    w = 1 + 0.1 * torch.randn(200, device=device)
    r = torch.randn_like(x)
    dy = torch.randn_like(x)
    got, want = [], []
    for out, eager in ((got, True), (want, False)):
        xs, ws, rs = (t.clone().requires_grad_(True) for t in (x, w, r))
        if eager:
            res = T.fused_add_rmsnorm(xs, ws, 1e-6, residual=rs if with_residual else None)
        elif with_residual:
            res = torch.ops.triton_ops.add_rmsnorm(xs, rs, ws, 1e-6, 0.0, False)
        else:
            res = torch.ops.triton_ops.rmsnorm(xs, ws, 1e-6, 0.0, False)
        y = res[0] if with_residual else res
        assert type(y.grad_fn).__name__.startswith("EagerAutograd") == eager
        ((y * dy).sum() + (res[1].square().sum() if with_residual else 0)).backward()
        out += [y.detach(), xs.grad, ws.grad] + ([rs.grad] if with_residual else [])
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_eager_autograd_equals_the_custom_op_for_apply_rope(device):
    """apply_rope's eager training path against its custom op: equal outputs and gradients, bit for bit,
    and a double backward (the rotation is linear, its backward the op again) agrees too."""
    q = torch.randn(2, 5, 4, 64, device=device)
    k = torch.randn(2, 5, 2, 64, device=device)
    cos, sin = tables(5, 64, device=device)
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    got, want = [], []
    for out, eager in ((got, True), (want, False)):
        qs, ks = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
        if eager:
            qo, ko = T.apply_rope(qs, ks, cos, sin, qk_layout="bshd")
        else:
            qo, ko = torch.ops.triton_ops.rope(qs, ks, cos, sin, None, False, 64, False, True, False)
        assert type(qo.grad_fn).__name__.startswith("EagerAutograd") == eager
        (dq,) = torch.autograd.grad((qo * qo * gq).sum() + (ko * gk).sum(), qs, create_graph=True)
        (ddq,) = torch.autograd.grad(dq.square().sum(), qs)
        out += [qo.detach(), ko.detach(), dq.detach(), ddq]
    for a, b in zip(got, want):
        assert torch.equal(a, b)
