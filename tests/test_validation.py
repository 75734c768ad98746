"""Shared input contracts (triton_ops.validation): messages, int checks, out= overlap, device arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from triton_ops import validation as v
from triton_ops.exceptions import (
    DeviceError,
    DTypeError,
    InvalidArgumentError,
    LayoutError,
    ShapeError,
    TritonOpsError,
)

from .conftest import DEVICE

# ---------------------------------------------------------------------------------------------- dtype, device


def test_check_dtype_names_each_allowed_dtype_once():
    x = torch.zeros(2, dtype=torch.float16)
    with pytest.raises(DTypeError) as exc:
        v.check_dtype(x, "x", (torch.float32, torch.float, torch.float32, torch.bfloat16))
    msg = str(exc.value)
    assert msg.endswith("expected one of: float32, bfloat16"), msg
    assert "has dtype float16" in msg
    v.check_dtype(x, "x", (torch.float16, torch.half))  # aliases of the given dtype pass


@pytest.mark.parametrize("interp", [True, False])
def test_runnable_device_messages(monkeypatch, interp):
    monkeypatch.setenv("TRITON_INTERPRET", "1" if interp else "0")
    v.check_runnable_device(torch.device("cuda", 0))  # never raises for CUDA: the launch decides
    if interp:
        v.check_runnable_device(torch.device("cpu"))
    else:
        with pytest.raises(DeviceError, match="set TRITON_INTERPRET=1"):
            v.check_runnable_device(torch.device("cpu"), "x")
    for dev in (torch.device("meta"), torch.empty(1, device="meta").device):
        with pytest.raises(DeviceError, match="x is a meta tensor.*no data") as exc:
            v.check_runnable_device(dev, "x")
        # the advice fits the case: no "set TRITON_INTERPRET=1" when it is already set
        assert ("TRITON_INTERPRET=1 set" in str(exc.value)) is (not interp)
        assert ("interpreter is on" in str(exc.value)) is interp
    with pytest.raises(DeviceError, match="x is on mps, where Triton kernels cannot run") as exc:
        v.check_runnable_device(torch.device("mps"), "x")
    assert ("TRITON_INTERPRET=1 set" in str(exc.value)) is (not interp)


def test_check_device_available():
    assert v.check_device_available("cpu") == torch.device("cpu")
    assert v.check_device_available(torch.device("cpu")) == torch.device("cpu")
    assert v.check_device_available(" cpu ") == torch.device("cpu")
    for bad, match in (("gpu", "not a device name"), ("", "not a device name"), ("cuda:x", "not a device name"),
                       ("meta", "CUDA devices or the CPU"), ("mps", "CUDA devices or the CPU")):
        with pytest.raises(DeviceError, match=match) as exc:
            v.check_device_available(bad, "--device")
        assert repr(bad) in str(exc.value)
        assert isinstance(exc.value, RuntimeError)  # a DeviceError is also what a Python user catches
    with pytest.raises(InvalidArgumentError, match="got int"):
        v.check_device_available(0)
    if not torch.cuda.is_available():
        for dev in ("cuda", "cuda:0", torch.device("cuda", 3)):
            with pytest.raises(DeviceError, match="no CUDA GPU is available"):
                v.check_device_available(dev)
    else:
        n = torch.cuda.device_count()
        assert v.check_device_available("cuda").type == "cuda"
        with pytest.raises(DeviceError, match=f"has {n} CUDA device"):
            v.check_device_available(f"cuda:{n}")


# ---------------------------------------------------------------------------------------------- ints


@pytest.mark.parametrize("value", [0, 7, -3, 2 ** 70, np.int64(5), np.int32(-2), np.uint8(200),
                                   torch.tensor(4), torch.tensor([9], dtype=torch.int32)])
def test_check_int_accepts_integers(value):
    got = v.check_int(value, "n")
    assert type(got) is int and got == int(value)


@pytest.mark.parametrize("value, given", [
    (True, "bool True"), (np.bool_(False), "False"), (4.5, "float 4.5"), (64.0, "float 64.0"),
    (np.float64(2.0), "float64 np.float64(2.0)"), ("8", "str '8'"), (None, "NoneType None"), ([1], "list [1]"),
    (torch.tensor(2.0), "Tensor"), (torch.tensor([1, 2]), "Tensor"), (torch.tensor(True), "Tensor"),
    (1 + 0j, "complex"),
])
def test_check_int_refuses_everything_else(value, given):
    with pytest.raises(InvalidArgumentError, match="n must be an int, got") as exc:
        v.check_int(value, "n")
    assert given in str(exc.value)
    with pytest.raises(ShapeError):  # the caller picks the error class; it stays a TritonOpsError
        v.check_int(value, "n", error=ShapeError)


def test_check_int_bounds():
    assert v.check_int(3, "n", min_value=3, max_value=3) == 3
    with pytest.raises(InvalidArgumentError, match="n must be >= 1, got 0"):
        v.check_int(0, "n", min_value=1)
    with pytest.raises(ShapeError, match="n must be <= 8, got 9"):
        v.check_int(np.int16(9), "n", max_value=8, error=ShapeError)


def test_check_is_tensor_or_none():
    t = torch.zeros(1)
    assert v.check_is_tensor_or_none(t, "bias") is t
    assert v.check_is_tensor_or_none(None, "bias") is None
    for bad in (0, [1.0], np.zeros(1), "t"):
        want = f"bias must be a torch.Tensor or None, got {type(bad).__name__}"
        with pytest.raises(InvalidArgumentError, match=want):
            v.check_is_tensor_or_none(bad, "bias")


# ---------------------------------------------------------------------------------------------- out= overlap


def _bytes(t: torch.Tensor) -> set[int]:
    """Ground truth, the slow way: every byte address an element of ``t`` occupies."""
    es = t.element_size()
    return {t.data_ptr() + (sum(i * st for i, st in zip(idx, t.stride()))) * es + b
            for idx in np.ndindex(*t.shape) for b in range(es)}


def _layouts():
    base = torch.randn(6, 8)
    yield "separate", torch.empty(6, 8), base
    yield "self", base, base
    yield "shifted", base.view(-1)[1:1 + 40].view(5, 8), base.view(-1)[:40].view(5, 8)
    yield "halves", base[:3], base[3:]
    yield "row slices", base[1:4], base[2:5]
    yield "transposed self", base.t(), base.t()
    yield "transposed", base.t()[:4], base[:4]
    yield "column halves", base[:, :4], base[:, 4:]  # spans intersect, elements do not
    yield "column overlap", base[:, :5], base[:, 3:]
    yield "every other", base[:, ::2], base[:, 1::2]
    yield "every other, shifted", base[:, ::2], base[:, 2::2]
    yield "bytes of the floats", base.view(torch.uint8)[:, 1::4], base[:, :1]
    yield "bytes beside", base.view(torch.uint8)[:, 4:8], base[:, :1]


@pytest.mark.parametrize("label, out, x", list(_layouts()), ids=[t[0] for t in _layouts()])
def test_no_overlap_is_exact(label, out, x):
    """Refused exactly when some byte belongs to both (exact in-place aside, when allowed)."""
    exact = out.data_ptr() == x.data_ptr() and out.shape == x.shape and out.stride() == x.stride() \
        and out.dtype == x.dtype
    truth = bool(_bytes(out) & _bytes(x)) and not exact
    try:
        v.check_no_overlap(out, "out", {"x": x}, allow_exact_alias=True)
        ours = False
    except InvalidArgumentError:
        ours = True
    assert ours == truth, label


def test_no_overlap_refuses_what_torch_refuses():
    """Where torch's own out= ops decide (dense tensors), they and check_no_overlap agree."""
    base = torch.randn(6, 8)
    for out, x in ((base[1:4], base[2:5]), (base[:3], base[3:]), (base.view(-1)[1:41].view(5, 8), base[:5])):
        try:
            torch.neg(x, out=out)
            torch_refuses = False
        except RuntimeError as exc:
            assert "memory location" in str(exc), exc
            torch_refuses = True
        try:
            v.check_no_overlap(out, "out", {"x": x})
            ours = False
        except InvalidArgumentError:
            ours = True
        assert ours == torch_refuses


def test_no_overlap_messages_and_options():
    x = torch.randn(4, 8)
    v.check_no_overlap(None, "out", {"x": x})
    v.check_no_overlap(torch.empty(4, 8), "out", {"x": x, "bias": None})
    with pytest.raises(InvalidArgumentError, match=r"out \(shape \(4, 8\), strides \(0, 1\)\) has elements that share"):
        v.check_no_overlap(torch.empty(8).expand(4, 8), "out", {"x": x})
    with pytest.raises(InvalidArgumentError, match="out is the same memory as x; this op cannot write"):
        v.check_no_overlap(x, "out", {"x": x})
    v.check_no_overlap(x, "out", {"x": x}, allow_exact_alias=True)
    with pytest.raises(InvalidArgumentError, match=r"partially overlaps weight \(shape \(8,\)"):
        v.check_no_overlap(x[1:3], "out", {"x": torch.randn(2, 8), "weight": x.view(-1)[20:28]},
                           allow_exact_alias=True)
    # same address, other dtype or shape: not the exact alias an in-place op can take
    with pytest.raises(InvalidArgumentError, match="partially overlaps"):
        v.check_no_overlap(x.view(torch.int32), "out", {"x": x}, allow_exact_alias=True)
    with pytest.raises(InvalidArgumentError, match="partially overlaps"):
        v.check_no_overlap(x.view(8, 4), "out", {"x": x}, allow_exact_alias=True)
    # empty tensors touch no memory; meta tensors have none
    v.check_no_overlap(x[:0], "out", {"x": x})
    v.check_no_overlap(torch.empty(4, 8, device="meta"), "out", {"x": torch.empty(4, 8, device="meta")})
    with pytest.raises(InvalidArgumentError, match="out must be a torch.Tensor"):
        v.check_no_overlap([1.0], "out", {"x": x})


def test_internal_overlap_beyond_torchs_own_check():
    """Layouts torch calls "too hard" are decided exactly: overlapping as_strided views are refused,
    non-overlapping ones (even when the stride order does not show it) are accepted."""
    buf = torch.empty(64)
    overlapping = buf.as_strided((3, 3), (1, 1))  # [i, j] and [i + 1, j - 1] are one element
    assert torch._debug_has_internal_overlap(overlapping) == 2
    with pytest.raises(InvalidArgumentError, match="share memory"):
        v.check_no_overlap(overlapping, "out", {})
    interleaved = buf.as_strided((2, 3), (3, 2))  # offsets 0 2 4 3 5 7: distinct
    assert torch._debug_has_internal_overlap(interleaved) == 2
    v.check_no_overlap(interleaved, "out", {})
    v.check_no_overlap(buf.as_strided((4, 4), (8, 2)), "out", {})  # gaps, no overlap


def test_all_errors_are_library_errors():
    for fn in (lambda: v.check_int("1", "n"), lambda: v.check_is_tensor_or_none(1, "t"),
               lambda: v.check_no_overlap(torch.empty(1).expand(2), "out", {}),
               lambda: v.check_device_available("gpu")):
        with pytest.raises(TritonOpsError):
            fn()


def test_views_too_large_to_enumerate_are_refused(monkeypatch):
    base = torch.randn(6, 8)
    flat = torch.randn(512)
    # rows every 96 and every 128 elements: no common row period, only enumeration tells them apart
    x, out = flat.as_strided((2, 32), (96, 1), 0), flat.as_strided((2, 32), (128, 1), 32)
    v.check_no_overlap(out, "out", {"x": x})
    v.check_no_overlap(base[:, :4], "out", {"x": base[:, 4:]})
    monkeypatch.setattr(v, "_MAX_ENUMERATED", 8)  # as if they were huge: refuse rather than guess
    with pytest.raises(InvalidArgumentError, match="partially overlaps"):
        v.check_no_overlap(out, "out", {"x": x})
    v.check_no_overlap(base[:3], "out", {"x": base[3:]})  # disjoint spans need no enumeration
    # nor do column slices with one row period (q and k of a fused QKV buffer): decided at any size
    v.check_no_overlap(base[:, :4], "out", {"x": base[:, 4:]})


# ------------------------------------------------------------------- several written buffers (check_writes)


@pytest.mark.parametrize("label, out, x", list(_layouts()), ids=[t[0] for t in _layouts()])
def test_check_writes_is_exact(label, out, x):
    """check_writes decides overlap as check_no_overlap does (exact in-place allowed where listed), and
    hands back one address test per pair it accepted apart."""
    exact = v.same_view(out, x)
    truth = bool(_bytes(out) & _bytes(x)) and not exact
    try:
        tests = v.check_writes({"out": out}, {"x": x}, {("out", "x")})
        ours = False
    except InvalidArgumentError as exc:
        assert "overlaps x" in str(exc) and "it may be exactly x" in str(exc)
        ours = True
    assert ours == truth, label
    if not ours:
        assert [(a, b) for a, b, _ in tests] == ([] if exact else [("out", "x")])
        if tests:  # a test never calls overlapping addresses apart
            assert not (v.writes_apart([(0, 1, tests[0][2])], (out, x)) and _bytes(out) & _bytes(x))


def test_check_writes_between_outputs_and_self_overlap():
    x = torch.randn(4, 8)
    buf = torch.empty(4, 16)
    v.check_writes({"out": buf[:, :8], "residual_out": buf[:, 8:]}, {"x": x}, set())
    with pytest.raises(InvalidArgumentError, match="out .* overlaps residual_out"):
        v.check_writes({"out": buf[:, :8], "residual_out": buf[:, 4:12]}, {"x": x}, set())
    with pytest.raises(LayoutError, match="several elements share one address"):
        v.check_writes({"out": torch.empty(8).expand(4, 8)}, {"x": x}, set())
    # empty and missing buffers are skipped; meta tensors have no addresses to compare
    assert v.check_writes({"out": x[:0], "residual_out": None}, {"x": x}, set()) == []
    meta = torch.empty(4, 8, device="meta")
    assert v.check_writes({"out": meta}, {"x": meta}, set()) == []


def test_check_no_self_overlap_is_exact():
    buf = torch.empty(64)
    with pytest.raises(LayoutError, match="share one address"):
        v.check_no_self_overlap(torch.empty(1, 8).expand(4, 8), "out")
    with pytest.raises(LayoutError, match="share one address"):
        v.check_no_self_overlap(buf.as_strided((3, 3), (1, 1)), "out")
    v.check_no_self_overlap(buf.as_strided((2, 3), (3, 2)), "out")  # offsets 0 2 4 3 5 7: distinct
    v.check_no_self_overlap(buf.as_strided((4, 4), (8, 2)), "out")
    v.check_no_self_overlap(buf[:0], "out")


def test_row_and_rotary_kernels_use_the_validation_checks():
    """One overlap mechanism: the names the kernels import are validation's own objects."""
    from triton_ops.kernels import rmsnorm

    assert rmsnorm.Disjoint is v.Disjoint and rmsnorm.check_writes is v.check_writes
    assert rmsnorm.same_view is v.same_view and rmsnorm.check_no_self_overlap is v.check_no_self_overlap


def test_output_apart_only_by_the_exact_check_is_accepted_and_rechecked():
    """x rows every 96 floats, out rows every 128 from float 32: their spans intersect and no row period
    covers both (the per-call address test cannot tell), but no element is shared. Accepted, computed,
    revalidated on the next call; the same signature moved onto x is refused."""
    from triton_ops.kernels.rmsnorm import add_rmsnorm_reference, fused_add_rmsnorm

    torch.manual_seed(0)
    buf = torch.randn(512, device=DEVICE)
    x = buf.as_strided((2, 32), (96, 1), 0)
    w = torch.randn(32, device=DEVICE)
    for _ in range(2):
        out = buf.as_strided((2, 32), (128, 1), 32)
        out.fill_(float("nan"))
        want = add_rmsnorm_reference(x.clone(), w)
        got = fused_add_rmsnorm(x, w, out=out)
        assert got is out
        # fp32 kernel against the fp32 PyTorch reference: the row's sum of squares is reduced in another
        # order and rsqrt rounds differently, a few ulp of the result; 1e-5 leaves room, a NaN (an
        # unwritten element of the prefilled out) fails it
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="overlaps x"):
        fused_add_rmsnorm(x, w, out=buf.as_strided((2, 32), (128, 1), 96))


# ------------------------------------------------------- plan keys: a refused scalar never finds a plan


def _fp8_rr_call(**kw):
    from triton_ops.kernels.rmsnorm_rope import fused_rmsnorm_rope

    torch.manual_seed(1)
    x = torch.randn(1, 3, 128, device=DEVICE)
    w = torch.randn(128, device=DEVICE)
    cos, sin = torch.rand(8, 64, device=DEVICE), torch.rand(8, 64, device=DEVICE)
    if kw.get("half_width_tables"):
        cos, sin = cos[:, :32].contiguous(), sin[:, :32].contiguous()
    return fused_rmsnorm_rope(x, w, cos, sin, out_dtype=torch.float8_e4m3fn, **kw)


@pytest.mark.parametrize("scaling", ["token", "block"])
@pytest.mark.parametrize("good, bad", [
    ({"head_dim": 64}, {"head_dim": 64.0}),
    ({"rotary_dim": 64}, {"rotary_dim": 64.0}),
    ({"head_dim": 64, "rotary_dim": 64}, {"head_dim": np.float64(64), "rotary_dim": 64}),
    ({"half_width_tables": True}, {"half_width_tables": 1}),
    ({"eps": 1}, {"eps": True}),
    ({"weight_offset": 1}, {"weight_offset": True}),
], ids=["head_dim", "rotary_dim", "head_dim-np-float", "half_width_tables", "eps", "weight_offset"])
def test_fp8_output_plans_refuse_what_a_first_call_refuses(good, bad, scaling):
    """The FP8-output fast path of fused_rmsnorm_rope keys its plans on the scalars as given: 64.0 == 64
    and True == 1 as dict keys, so a refused value must not reach the key. After valid calls have planned
    the signature, the refused one raises what it raised on a first call."""
    from triton_ops.launch import plan_counts

    with pytest.raises(TritonOpsError) as first:
        _fp8_rr_call(out_scaling=scaling, **bad)
    for _ in range(2):
        q, s = _fp8_rr_call(out_scaling=scaling, **good)
        assert q.dtype == torch.float8_e4m3fn
    if not good.get("half_width_tables"):  # widened tables are copies: those calls are never planned
        assert plan_counts().get("rmsnorm_rope/fp8", 0) >= 1
    with pytest.raises(type(first.value)) as again:
        _fp8_rr_call(out_scaling=scaling, **bad)
    assert str(again.value) == str(first.value)
