"""Every public op of triton_ops, once per case, on odd shapes and layouts: a driver for compute-sanitizer.

    compute-sanitizer --tool memcheck --leak-check no python benchmarks/scripts/memcheck_ops.py
    TRITON_INTERPRET=1 python benchmarks/scripts/memcheck_ops.py --quick      # CPU smoke test

Each call is followed by a device synchronization and prints ``ok <op> <case>``; a call that raises prints
``FAIL <op> <case>: <error>`` with its traceback and the run goes on. The last line is
``memcheck_ops: N calls`` (with the failures, if any), and the exit status is 1 when any call raised.

Cases favour what out-of-bounds accesses hide behind: sizes that are not multiples of a tile (hidden 1,
199, 4097, 9000; M = 1, 17, 33, 300, 1000; H and I not multiples of 16), rows wider than one register tile
(the chunked paths), strided rows and transposed views, leading dims that do not collapse, partial rotary
and half-width tables, GQA, position ids and per-token tables, in-place writes, FP8 outputs of every
scaling, empty inputs, and the backward kernels (``.backward()`` through the autograd-recording paths).
``--quick`` shrinks the row counts and GEMM sizes for Triton's interpreter; ``--only`` keeps the ops whose
name contains one of the given words; ``--list`` prints the cases without running them.

The GPU shapes are small (the sanitizer slows kernels 10-100x); most of a first run is Triton compiling the
few hundred kernel variants the cases reach. Running the script once without the sanitizer fills Triton's
cache, so the sanitized run then spends its time in the kernels.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Iterator

import torch

if not torch.cuda.is_available():
    # Triton reads the flag when the kernels are defined: set it before triton_ops is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton_ops as T  # noqa: E402
from triton_ops.kernels import sharded_norm as SN  # noqa: E402
from triton_ops.kernels.fp8_quantize import scale_shape  # noqa: E402

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
DTYPES = (F16, BF16, F32)
_DT = {F16: "fp16", BF16: "bf16", F32: "fp32", E4M3: "e4m3", E5M2: "e5m2"}

Case = tuple[str, str, Callable[[], object]]


def _size(shape: tuple) -> tuple[int, ...]:
    """``(2, 3)`` or ``((2, 3),)`` as ``(2, 3)``; ``()`` or ``((),)`` as ``()`` (a 0-d tensor)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        return tuple(shape[0])
    return tuple(shape)


class Env:
    """Device, sizes and tensor factories of one run."""

    def __init__(self, device: str, quick: bool, seed: int = 0):
        self.device = torch.device(device)
        self.quick = quick
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        # rows of the row kernels (tokens): prime-ish counts so no grid divides them evenly
        self.rows = 3 if quick else 37
        self.seq = 3 if quick else 13
        self.batch = 2

    def randn(self, *shape, dtype=F32, scale: float = 1.0, requires_grad: bool = False) -> torch.Tensor:
        t = (torch.randn(_size(shape), generator=self.gen) * scale).to(dtype).to(self.device)
        return t.requires_grad_(requires_grad) if requires_grad else t

    def rand(self, *shape, dtype=F32, lo: float = 0.5, hi: float = 1.5) -> torch.Tensor:
        return (torch.rand(_size(shape), generator=self.gen) * (hi - lo) + lo).to(dtype).to(self.device)

    def tables(self, rows: int, width: int, dtype=F32) -> tuple[torch.Tensor, torch.Tensor]:
        angle = torch.rand(rows, width, generator=self.gen) * 6.28
        return angle.cos().to(dtype).to(self.device), angle.sin().to(dtype).to(self.device)

    def positions(self, *shape, high: int) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=self.gen).to(self.device)

    def fp8(self, *shape, dtype=E4M3) -> torch.Tensor:
        return (torch.randn(_size(shape), generator=self.gen) * 4).to(dtype).to(self.device)

    def scale(self, *shape) -> torch.Tensor:
        return self.rand(*shape, lo=0.01, hi=0.05)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _backward(out) -> None:
    """Sum of every floating output, differentiated (each output's backward kernel runs)."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    loss = sum(o.float().sum() for o in outs if isinstance(o, torch.Tensor) and o.requires_grad)
    loss.backward()


# ---------------------------------------------------------------------------------------------------- norms


def rmsnorm_cases(e: Env) -> Iterator[Case]:
    op = "fused_add_rmsnorm"
    n = e.rows
    for hidden in (1, 199, 4097, 9000):
        for dt in DTYPES:
            for res in (False, True):
                def call(hidden=hidden, dt=dt, res=res):
                    x, w = e.randn(n, hidden, dtype=dt), e.rand(hidden, dtype=dt)
                    r = e.randn(n, hidden, dtype=dt) if res else None
                    return T.fused_add_rmsnorm(x, w, residual=r)
                yield op, f"h={hidden} {_DT[dt]} res={int(res)}", call
    for hidden in (199, 9000):
        yield op, f"h={hidden} bf16 x fp32 weight res=1", lambda h=hidden: T.fused_add_rmsnorm(
            e.randn(n, h, dtype=BF16), e.rand(h), residual=e.randn(n, h, dtype=BF16))
        yield op, f"h={hidden} fp16 x fp32 weight rbw offset=1", lambda h=hidden: T.fused_add_rmsnorm(
            e.randn(n, h, dtype=F16), e.rand(h), weight_offset=1.0, round_before_weight=True)

    def strided(h, res):
        # rows of wider buffers: x, residual, out and residual_out with four different row strides
        x = e.randn(n, h + 40, dtype=BF16)[:, 8:8 + h]
        r = e.randn(n, h + 24, dtype=BF16)[:, :h] if res else None
        out = torch.empty(n, h + 56, dtype=BF16, device=e.device)[:, 16:16 + h]
        ro = torch.empty(n, 2 * h, dtype=BF16, device=e.device)[:, h:] if res else None
        return T.fused_add_rmsnorm(x, e.rand(h, dtype=BF16), residual=r, out=out, residual_out=ro)
    for h in (199, 4097, 9000):
        for res in (False, True):
            yield op, f"h={h} strided rows out= res={int(res)}", lambda h=h, res=res: strided(h, res)

    def not_collapsing(h):
        x = e.randn(e.seq, e.batch, h, dtype=F16).transpose(0, 1)  # [b, s, h] with strides (h, b*h, 1)
        return T.fused_add_rmsnorm(x, e.rand(h, dtype=F16), residual=e.randn(e.seq, e.batch, h, dtype=F16)
                                   .transpose(0, 1))
    yield op, "h=199 leading dims that do not collapse", lambda: not_collapsing(199)

    def in_place(h):
        x, r = e.randn(e.batch, e.seq, h, dtype=BF16), e.randn(e.batch, e.seq, h, dtype=BF16)
        return T.fused_add_rmsnorm(x, e.rand(h, dtype=BF16), residual=r, out=x, residual_out=r)
    for h in (199, 9000):
        yield op, f"h={h} in place (out=x, residual_out=residual)", lambda h=h: in_place(h)
    packed = 300 if e.quick else 4099
    yield op, f"h=64 rows={packed} (packed rows)", lambda: T.fused_add_rmsnorm(
        e.randn(packed, 64, dtype=F16), e.rand(64, dtype=F16), residual=e.randn(packed, 64, dtype=F16))
    yield op, "h=4 rows=33 1-D weight, 3-D x", lambda: T.fused_add_rmsnorm(e.randn(3, 11, 4), e.rand(4))
    yield op, "empty x", lambda: T.fused_add_rmsnorm(e.randn(0, 199, dtype=F16), e.rand(199, dtype=F16),
                                                   residual=e.randn(0, 199, dtype=F16))

    # FP8 outputs: token / block / static scales, with and without a residual, one tile and chunked rows
    for h in (1, 199, 4097, 9000):
        for scaling in ("token", "block", "static"):
            for res in (False, True):
                dt = BF16 if res else F16

                def fp8(h=h, scaling=scaling, res=res, dt=dt):
                    x = e.randn(n, h, dtype=dt)
                    r = e.randn(n, h, dtype=dt) if res else None
                    w = e.rand(h) if dt == BF16 else e.rand(h, dtype=dt)
                    kw = {"out_scale": e.scale(1)} if scaling == "static" else {"out_scaling": scaling}
                    return T.fused_add_rmsnorm(x, w, residual=r, out_dtype=E4M3, **kw)
                yield op, f"fp8 {scaling} h={h} {_DT[dt]} res={int(res)}", fp8

    def fp8_strided(h, scaling):
        x = e.randn(n, h + 72, dtype=BF16)[:, 40:40 + h]
        r = e.randn(n, h + 8, dtype=BF16)[:, 8:]
        ro = torch.empty(n, h + 16, dtype=BF16, device=e.device)[:, :h]
        return T.fused_add_rmsnorm(x, e.rand(h, dtype=BF16), residual=r, residual_out=ro, out_dtype=E4M3,
                                   out_scaling=scaling)
    for h in (199, 9000):
        for scaling in ("token", "block"):
            yield op, f"fp8 {scaling} h={h} strided rows residual_out=", lambda h=h, s=scaling: fp8_strided(h, s)
    yield op, "fp8 token empty x", lambda: T.fused_add_rmsnorm(e.randn(0, 64, dtype=F16), e.rand(64, dtype=F16),
                                                             out_dtype=E4M3)

    # backward (the norm backward kernel): one tile and chunked rows
    for h in (1, 199, 4097, 9000):
        for res in (False, True):
            dt = BF16 if h % 2 else F32

            def bwd(h=h, res=res, dt=dt):
                x = e.randn(n, h, dtype=dt, requires_grad=True)
                w = e.rand(h).requires_grad_(True)
                r = e.randn(n, h, dtype=dt, requires_grad=True) if res else None
                _backward(T.fused_add_rmsnorm(x, w, residual=r))
            yield op + ".backward", f"h={h} {_DT[dt]} fp32 weight res={int(res)}", bwd

    def bwd_strided(h):
        x = e.randn(e.batch, e.seq, h + 24, dtype=BF16)[..., 4:4 + h].requires_grad_(True)
        w = e.rand(h, dtype=BF16).requires_grad_(True)
        _backward(T.fused_add_rmsnorm(x, w, round_before_weight=True, weight_offset=1.0))
    yield op + ".backward", "h=4097 strided rows rbw offset=1", lambda: bwd_strided(4097)
    yield op + ".backward", "h=199 weight only", lambda: _backward(T.fused_add_rmsnorm(
        e.randn(n, 199), e.rand(199).requires_grad_(True)))

    mod = T.FusedAddRMSNorm(199, device=e.device, dtype=BF16)
    yield "FusedAddRMSNorm", "h=199 bf16 res=1", lambda: mod(e.randn(n, 199, dtype=BF16),
                                                             e.randn(n, 199, dtype=BF16))
    yield "FusedAddRMSNorm", "h=199 bf16 fp8 block", lambda: mod(e.randn(n, 199, dtype=BF16), out_dtype=E4M3,
                                                                out_scaling="block")


# ----------------------------------------------------------------------------------------------------- rope


def rope_cases(e: Env) -> Iterator[Case]:
    op = "apply_rope"
    b, s = e.batch, e.seq

    def qk(layout, hq, hk, d, dt=BF16, grad=False):
        if layout == "bshd":
            q, k = e.randn(b, s, hq, d, dtype=dt), e.randn(b, s, hk, d, dtype=dt) if hk else None
        else:
            q, k = e.randn(b, hq, s, d, dtype=dt), e.randn(b, hk, s, d, dtype=dt) if hk else None
        if grad:
            q.requires_grad_(True)
            if k is not None:
                k.requires_grad_(True)
        return q, k

    for layout in ("bshd", "bhsd"):
        for d, rot, hq, hk in ((64, 64, 4, 4), (128, 128, 8, 2), (80, 80, 6, 1), (256, 64, 4, 2), (96, 32, 3, 3)):
            for gptj in (False, True):
                def call(layout=layout, d=d, rot=rot, hq=hq, hk=hk, gptj=gptj):
                    q, k = qk(layout, hq, hk, d)
                    cos, sin = e.tables(s, rot)
                    return T.apply_rope(q, k, cos, sin, rotary_dim=rot if rot < d else None, qk_layout=layout,
                                        rotary_layout="gptj" if gptj else "neox")
                name = f"{layout} d={d} rot={rot} hq={hq} hk={hk} {'gptj' if gptj else 'neox'}"
                yield op, name, call

    def half_width(layout, d, rot, pos):
        q, k = qk(layout, 4, 2, d, dt=F16)
        cos, sin = e.tables(s + 5, rot // 2)
        p = None
        if pos == "seq":
            p = e.positions(s, high=s + 5)
        elif pos == "batch":
            p = e.positions(b, s, high=s + 5)
        return T.apply_rope(q, k, cos, sin, rotary_dim=rot, half_width_tables=True, position_ids=p,
                            qk_layout=layout)
    for layout in ("bshd", "bhsd"):
        for d, rot in ((128, 128), (128, 64)):
            for pos in (None, "seq", "batch"):
                yield op, f"{layout} d={d} rot={rot} half-width tables positions={pos}", \
                    lambda layout=layout, d=d, rot=rot, pos=pos: half_width(layout, d, rot, pos)

    def per_token(layout, four_d):
        q, k = qk(layout, 4, 2, 64)
        cos, sin = e.tables(b * s, 64)
        cos, sin = cos.view(b, s, 64), sin.view(b, s, 64)
        if four_d:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return T.apply_rope(q, k, cos, sin, qk_layout=layout)
    for layout in ("bshd", "bhsd"):
        yield op, f"{layout} per-token tables [b, s, w]", lambda layout=layout: per_token(layout, False)
    yield op, "bhsd per-token tables [b, 1, s, w]", lambda: per_token("bhsd", True)

    def fused_qkv(inplace, gptj):
        # q, k (GQA) as column slices of one fused projection [b, s, (hq + 2 hk) d]; bhsd as transposed views
        hq, hk, d, rot = 8, 2, 128, 64
        qkv = e.randn(b, s, (hq + 2 * hk) * d, dtype=BF16)
        q = qkv[..., :hq * d].view(b, s, hq, d).transpose(1, 2)
        k = qkv[..., hq * d:(hq + hk) * d].view(b, s, hk, d).transpose(1, 2)
        cos, sin = e.tables(s + 3, rot)
        return T.apply_rope(q, k, cos, sin, rotary_dim=rot, inplace=inplace, position_ids=e.positions(
            s, high=s + 3), rotary_layout="gptj" if gptj else "neox")
    for inplace in (False, True):
        for gptj in (False, True):
            yield op, f"fused qkv views bhsd partial GQA inplace={int(inplace)} {'gptj' if gptj else 'neox'}", \
                lambda inplace=inplace, gptj=gptj: fused_qkv(inplace, gptj)

    def in_place(layout, hk):
        q, k = qk(layout, 4, hk, 64, dt=F32)
        cos, sin = e.tables(s, 64, dtype=F32)
        return T.apply_rope(q, k, cos, sin, inplace=True, qk_layout=layout)
    for layout in ("bshd", "bhsd"):
        yield op, f"{layout} in place", lambda layout=layout: in_place(layout, 2)
    yield op, "bshd in place, k=None", lambda: in_place("bshd", 0)
    yield op, "bhsd k=None fp16 tables", lambda: T.apply_rope(qk("bhsd", 3, 0, 64, dt=F16)[0], None,
                                                              *e.tables(s, 64, dtype=F16))
    yield op, "3-D bshd [tokens, h, d] positions", lambda: T.apply_rope(
        e.randn(b * s, 4, 64), e.randn(b * s, 1, 64), *e.tables(40, 64), qk_layout="bshd",
        position_ids=e.positions(b * s, high=40))
    yield op, "empty seq", lambda: T.apply_rope(e.randn(b, 0, 4, 64), e.randn(b, 0, 2, 64), *e.tables(4, 64),
                                                qk_layout="bshd")

    for layout in ("bshd", "bhsd"):
        for d, rot, gptj in ((64, 64, False), (128, 64, True), (80, 80, False)):
            def bwd(layout=layout, d=d, rot=rot, gptj=gptj):
                q, k = qk(layout, 4, 2, d, grad=True)
                cos, sin = e.tables(s, rot)
                _backward(T.apply_rope(q, k, cos, sin, rotary_dim=rot, qk_layout=layout,
                                       rotary_layout="gptj" if gptj else "neox"))
            yield op + ".backward", f"{layout} d={d} rot={rot} {'gptj' if gptj else 'neox'}", bwd
    yield op + ".backward", "bhsd half-width positions", lambda: _backward(T.apply_rope(
        *qk("bhsd", 4, 2, 128, grad=True), *e.tables(s + 2, 32), rotary_dim=64, half_width_tables=True,
        position_ids=e.positions(b, s, high=s + 2)))


# ------------------------------------------------------------------------------------------- rmsnorm + rope


def rmsnorm_rope_cases(e: Env) -> Iterator[Case]:
    op = "fused_rmsnorm_rope"
    b, s = e.batch, e.seq

    # (hidden, head_dim, rotary_dim): one tile, chunked rows (hidden 9000 = 125 heads of 72), partial rotary
    shapes = ((128, 64, None), (640, 128, 64), (960, 80, None), (9000, 72, None), (9600, 64, 32), (512, 256, 128))
    for hidden, d, rot in shapes:
        for per_head in (False, True):
            for res in (False, True):
                dt = BF16 if res else F16

                def call(hidden=hidden, d=d, rot=rot, per_head=per_head, res=res, dt=dt):
                    x = e.randn(b, s, hidden, dtype=dt)
                    w = e.rand(d if per_head else hidden)
                    r = e.randn(b, s, hidden, dtype=dt) if res else None
                    cos, sin = e.tables(s, rot or d)
                    return T.fused_rmsnorm_rope(x, w, cos, sin, head_dim=d, rotary_dim=rot, residual=r)
                name = f"h={hidden} d={d} rot={rot or d} {'per-head' if per_head else 'row'} {_DT[dt]} res={int(res)}"
                yield op, name, call

    def variant(hidden, d, *, gptj=False, pos=None, half=False, per_token=False, strided=False, out=None,
                dt=BF16, offset=0.0, rot=None):
        x = e.randn(b, s, hidden + (24 if strided else 0), dtype=dt)
        if strided:
            x = x[..., 8:8 + hidden]
        r = rot or d
        width = r // 2 if half else r
        rows = b * s if per_token else s + 4
        cos, sin = e.tables(rows, width, dtype=dt)
        if per_token:
            cos, sin = cos.view(b, s, width), sin.view(b, s, width)
        p = None
        if pos == "seq":
            p = e.positions(s, high=rows)
        elif pos == "batch":
            p = e.positions(b, s, high=rows)
        o = None
        if out == "x":
            o = x
        elif out == "new":
            o = torch.empty(b, s, hidden, dtype=dt, device=e.device)
        return T.fused_rmsnorm_rope(x, e.rand(hidden), cos, sin, head_dim=d, rotary_dim=rot, position_ids=p,
                                    half_width_tables=half, rotary_layout="gptj" if gptj else "neox", out=o,
                                    weight_offset=offset)
    yield op, "h=640 d=128 gptj positions [s]", lambda: variant(640, 128, gptj=True, pos="seq")
    yield op, "h=640 d=128 positions [b, s]", lambda: variant(640, 128, pos="batch")
    yield op, "h=640 d=128 rot=64 half-width tables gptj", lambda: variant(640, 128, rot=64, half=True, gptj=True)
    yield op, "h=9000 d=72 half-width tables positions", lambda: variant(9000, 72, half=True, pos="batch")
    yield op, "h=640 d=128 per-token tables", lambda: variant(640, 128, per_token=True)
    yield op, "h=960 d=80 strided rows out=", lambda: variant(960, 80, strided=True, out="new")
    yield op, "h=9000 d=72 strided rows", lambda: variant(9000, 72, strided=True, dt=F16)
    yield op, "h=640 d=128 in place out=x offset=1", lambda: variant(640, 128, out="x", offset=1.0)
    yield op, "h=9000 d=72 in place out=x", lambda: variant(9000, 72, out="x", dt=F32)
    packed = 400 if e.quick else 3001
    yield op, f"h=128 d=64 rows={packed} (packed rows)", lambda: T.fused_rmsnorm_rope(
        e.randn(packed, 128, dtype=F16), e.rand(128, dtype=F16), *e.tables(packed, 64))
    yield op, "h=128 d=64 2-D x, 1-D x", lambda: (
        T.fused_rmsnorm_rope(e.randn(5, 128), e.rand(128), *e.tables(5, 64)),
        T.fused_rmsnorm_rope(e.randn(128), e.rand(128), *e.tables(1, 64)))
    yield op, "empty x", lambda: T.fused_rmsnorm_rope(e.randn(b, 0, 128), e.rand(128), *e.tables(4, 64))

    # FP8 outputs (block scales need head_dim dividing 128 or a multiple of it)
    fp8_shapes = ((640, 128, None, False), (640, 128, 64, True), (9600, 64, None, False), (9000, 72, None, False),
                  (512, 256, None, True), (960, 80, None, False))
    for hidden, d, rot, per_head in fp8_shapes:
        for scaling in ("token", "block", "static"):
            if scaling == "block" and d % 128 and 128 % d:
                continue
            for res in (False, True):
                def fp8(hidden=hidden, d=d, rot=rot, per_head=per_head, scaling=scaling, res=res):
                    x = e.randn(b, s, hidden, dtype=BF16)
                    r = e.randn(b, s, hidden, dtype=BF16) if res else None
                    kw = {"out_scale": e.scale(1)} if scaling == "static" else {"out_scaling": scaling}
                    return T.fused_rmsnorm_rope(x, e.rand(d if per_head else hidden), *e.tables(s, rot or d),
                                                head_dim=d, rotary_dim=rot, residual=r, out_dtype=E4M3, **kw)
                name = (f"fp8 {scaling} h={hidden} d={d} rot={rot or d} {'per-head' if per_head else 'row'} "
                        f"res={int(res)}")
                yield op, name, fp8

    def fp8_variant(scaling):
        x = e.randn(b, s, 664, dtype=F16)[..., 24:]
        cos, sin = e.tables(s + 2, 32, dtype=F16)
        return T.fused_rmsnorm_rope(x, e.rand(640, dtype=F16), cos, sin, head_dim=128, rotary_dim=64,
                                    half_width_tables=True, position_ids=e.positions(b, s, high=s + 2),
                                    rotary_layout="gptj", out_dtype=E4M3, out_scaling=scaling)
    for scaling in ("token", "block"):
        yield op, f"fp8 {scaling} strided rows half-width gptj positions", lambda sc=scaling: fp8_variant(sc)

    # backward (rmsnorm_rope_backward): row and per-head norms, residual, partial rotary, chunked rows
    bwd_shapes = ((128, 64, None, False, False), (640, 128, 64, True, False), (640, 128, None, False, True),
                  (960, 80, None, True, True), (9000, 72, None, False, False), (9000, 72, None, True, True),
                  (9600, 64, 32, True, False))
    for hidden, d, rot, res, gptj in bwd_shapes:
        for per_head in (False, True):
            def bwd(hidden=hidden, d=d, rot=rot, res=res, gptj=gptj, per_head=per_head):
                dt = BF16 if res else F32
                x = e.randn(b, s, hidden, dtype=dt, requires_grad=True)
                w = e.rand(d if per_head else hidden).requires_grad_(True)
                r = e.randn(b, s, hidden, dtype=dt, requires_grad=True) if res else None
                _backward(T.fused_rmsnorm_rope(x, w, *e.tables(s, rot or d), head_dim=d, rotary_dim=rot,
                                               residual=r, rotary_layout="gptj" if gptj else "neox"))
            name = (f"h={hidden} d={d} rot={rot or d} {'per-head' if per_head else 'row'} res={int(res)} "
                    f"{'gptj' if gptj else 'neox'}")
            yield op + ".backward", name, bwd

    def bwd_positions():
        x = e.randn(b, s, 664, dtype=BF16)[..., 16:656].requires_grad_(True)
        w = e.rand(128, dtype=BF16).requires_grad_(True)
        cos, sin = e.tables(s + 3, 64)
        _backward(T.fused_rmsnorm_rope(x, w, cos, sin, head_dim=128, rotary_dim=64,
                                       position_ids=e.positions(b, s, high=s + 3), weight_offset=1.0))
    yield op + ".backward", "h=640 d=128 rot=64 per-head strided rows positions offset=1", bwd_positions

    mod = T.FusedRMSNormRoPE(640, 128, per_head=True, device=e.device, dtype=BF16)
    yield "FusedRMSNormRoPE", "h=640 d=128 per-head bf16", lambda: mod(e.randn(b, s, 640, dtype=BF16),
                                                                       *e.tables(s, 128))
    yield "FusedRMSNormRoPE", "h=640 d=128 per-head fp8 token", lambda: mod(
        e.randn(b, s, 640, dtype=BF16), *e.tables(s, 128), out_dtype=E4M3)


# ---------------------------------------------------------------------------------------------- sharded norm


def sharded_norm_cases(e: Env) -> Iterator[Case]:
    b, s = e.batch, e.seq
    for h in (1, 199, 4097, 9000):
        for dt in (F16, F32):
            yield "row_sum_of_squares", f"h={h} {_DT[dt]}", lambda h=h, dt=dt: SN.row_sum_of_squares(
                e.randn(b, s, h, dtype=dt))
    yield "row_sum_of_squares", "h=199 strided rows out=buf[1]", lambda: SN.row_sum_of_squares(
        e.randn(b, s, 240, dtype=BF16)[..., 20:219], out=torch.empty(2, b * s, device=e.device)[1])

    def from_stats(h, d, rot, mode, *, gptj=False, pos=None, per_token=False, strided=False, out=False, dt=BF16):
        x = e.randn(b, s, h + (40 if strided else 0), dtype=dt)
        if strided:
            x = x[..., 16:16 + h]
        rows = b * s if per_token else s + 3
        cos, sin = e.tables(rows, rot)
        if per_token:
            cos, sin = cos.view(b, s, rot), sin.view(b, s, rot)
        p = None if pos is None else (e.positions(s, high=rows) if pos == "seq" else e.positions(b, s, high=rows))
        o = torch.empty(b, s, h, dtype=dt, device=e.device) if out else None
        kw = {"rstd": e.rand(b, s)} if mode == "rstd" else {
            "sum_of_squares": SN.row_sum_of_squares(x) * 2, "n_total": 2 * h}
        return SN.rmsnorm_rope_from_stats(x, e.rand(h), cos, sin, head_dim=d, position_ids=p, out=o,
                                          rotary_layout="gptj" if gptj else "neox", **kw)
    op = "rmsnorm_rope_from_stats"
    for h, d, rot in ((256, 64, 64), (640, 128, 64), (960, 80, 80), (9000, 72, 72)):
        for mode in ("sum_of_squares", "rstd"):
            yield op, f"h={h} d={d} rot={rot} {mode}", lambda h=h, d=d, rot=rot, m=mode: from_stats(h, d, rot, m)
    yield op, "h=640 d=128 gptj positions [s]", lambda: from_stats(640, 128, 128, "rstd", gptj=True, pos="seq")
    yield op, "h=640 d=128 positions [b, s] out=", lambda: from_stats(640, 128, 64, "sum_of_squares", pos="batch",
                                                                       out=True)
    yield op, "h=640 d=128 per-token tables", lambda: from_stats(640, 128, 128, "rstd", per_token=True)
    yield op, "h=9000 d=72 strided rows fp16", lambda: from_stats(9000, 72, 72, "sum_of_squares", strided=True,
                                                                  dt=F16)


def sharded_rmsnorm_rope_case(e: Env) -> Iterator[Case]:
    """The sharded op through a one-rank gloo group (the collective is a no-op; both kernels run)."""
    import torch.distributed as dist

    def call():
        if not dist.is_initialized():
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        x = e.randn(e.batch, e.seq, 640, dtype=BF16)
        return T.sharded_rmsnorm_rope(x, e.rand(640), *e.tables(e.seq, 128), head_dim=128)
    if dist.is_available():
        yield "sharded_rmsnorm_rope", "h=640 d=128 world=1", call


# ----------------------------------------------------------------------------------------------- gated MLP


def gated_mlp_cases(e: Env) -> Iterator[Case]:
    op = "fused_gated_mlp"
    Ms = (1, 17, 300) if not e.quick else (1, 17, 70)
    # (H, inter): multiples of 16, and odd ones (not multiples of 16, not of 8)
    HIs = ((256, 512), (200, 344), (100, 36)) if not e.quick else ((64, 48), (40, 36), (20, 12))

    def wts(inter, H, dt, transposed=False, grad=False):
        """gate and up weights [inter, H]; transposed: MN-major views w = G.T of a contiguous [H, inter]."""
        if transposed:
            return tuple(e.randn(H, inter, dtype=dt, scale=0.1).t() for _ in range(2))
        return tuple(e.randn(inter, H, dtype=dt, scale=0.1, requires_grad=grad) for _ in range(2))

    for M in Ms:
        for H, inter in HIs:
            for dt in DTYPES:
                yield op, f"M={M} H={H} I={inter} {_DT[dt]}", lambda M=M, H=H, inter=inter, dt=dt: \
                    T.fused_gated_mlp(e.randn(M, H, dtype=dt), *wts(inter, H, dt))
    H, inter = HIs[1]
    for act in ("gelu", "gelu_tanh"):
        yield op, f"M=17 H={H} I={inter} bf16 {act} biases", lambda act=act: T.fused_gated_mlp(
            e.randn(17, H, dtype=BF16), *wts(inter, H, BF16), act, gate_bias=e.randn(inter, dtype=BF16),
            up_bias=e.randn(inter, dtype=BF16))

    def layouts(M, H, inter, transposed, strided, out):
        x = e.randn(M, H + 24, dtype=F16)[:, 8:8 + H] if strided else e.randn(3, M, H, dtype=F16)
        o = torch.empty(*x.shape[:-1], inter, dtype=F16, device=e.device) if out else None
        return T.fused_gated_mlp(x, *wts(inter, H, F16, transposed), out=o)
    for M in Ms:
        for H, inter in HIs[:2]:
            yield op, f"M={M} H={H} I={inter} fp16 transposed weights", lambda M=M, H=H, inter=inter: layouts(
                M, H, inter, True, False, False)
            yield op, f"M={M} H={H} I={inter} fp16 strided rows out=", lambda M=M, H=H, inter=inter: layouts(
                M, H, inter, False, True, True)
        yield op, f"3-D x [3, {M}, {HIs[0][0]}] out=", lambda M=M: layouts(M, *HIs[0], False, False, True)

    # the FP8 output epilogue: (1, 128) blocks, per-token (with the re-encoding pass) and static scales
    for M in Ms:
        for H, inter in HIs:
            for scaling in ("block", "token", "static"):
                def fp8_out(M=M, H=H, inter=inter, scaling=scaling):
                    kw = {"out_scale": e.scale(1)} if scaling == "static" else {"out_scaling": scaling}
                    return T.fused_gated_mlp(e.randn(M, H, dtype=BF16), *wts(inter, H, BF16), out_dtype=E4M3, **kw)
                yield op, f"fp8 out {scaling} M={M} H={H} I={inter} bf16", fp8_out
    yield op, f"fp8 out block M=17 H={H} I={inter} fp16 transposed weights biases", lambda: T.fused_gated_mlp(
        e.randn(17, H, dtype=F16), *wts(inter, H, F16, True), gate_bias=e.randn(inter, dtype=F16),
        up_bias=e.randn(inter, dtype=F16), out_dtype=E4M3)

    # the FP8 kernel on pre-quantized operands (e4m3 rows need 16-byte rows: H a multiple of 16)
    op8 = "fused_gated_mlp_fp8"
    fp8_HIs = ((256, 512), (208, 344), (48, 40)) if not e.quick else ((64, 48), (48, 40), (32, 12))
    for M in Ms:
        for H, inter in fp8_HIs:
            for out in (BF16, E4M3):
                def gm8(M=M, H=H, inter=inter, out=out):
                    xq, xs = e.fp8(M, H), e.scale(M, 1)
                    args = (xq, xs, e.fp8(inter, H), e.scale(inter), e.fp8(inter, H), e.scale(inter))
                    return T.fused_gated_mlp_fp8(*args, out_dtype=out)
                yield op8, f"M={M} H={H} I={inter} out={_DT[out]}", gm8
    H8, inter8 = fp8_HIs[1]
    for scaling in ("token", "static"):
        yield op8, f"M=17 H={H8} I={inter8} fp8 out {scaling}", lambda sc=scaling: T.fused_gated_mlp_fp8(
            e.fp8(17, H8), e.scale(17), e.fp8(inter8, H8), e.scale(inter8, 1), e.fp8(inter8, H8), e.scale(inter8, 1),
            out_dtype=E4M3, **({"out_scale": e.scale(1)} if sc == "static" else {"out_scaling": sc}))

    # modules (built inside the calls: building an FP8 one runs the quantization kernels)
    def module(fp8: bool, bias: bool = False):
        return T.FusedGatedMLP(H8 if fp8 else H, inter8 if fp8 else inter, bias=bias, fp8=fp8, device=e.device,
                               dtype=BF16)
    yield "FusedGatedMLP", f"H={H} I={inter} bias bf16 3-D x", lambda: module(False, True)(
        e.randn(2, 17, H, dtype=BF16))
    yield "FusedGatedMLP", f"H={H} I={inter} bf16 fp8 out", lambda: module(False)(
        e.randn(17, H, dtype=BF16), out_dtype=E4M3)
    yield "FusedGatedMLP", f"fp8 H={H8} I={inter8} bf16 x", lambda: module(True)(e.randn(17, H8, dtype=BF16))
    yield "FusedGatedMLP", f"fp8 H={H8} I={inter8} e4m3 x with x_scale, fp8 out", lambda: module(True)(
        e.fp8(17, H8), e.scale(17, 1), out_dtype=E4M3)

    # backward: both save modes of the gated MLP (recompute False keeps the cuBLAS projections and runs the
    # elementwise kernels; True recomputes them in the backward)
    for recompute in (False, True):
        for M in Ms:
            for H_, inter_ in HIs[:2]:
                def bwd(recompute=recompute, M=M, H_=H_, inter_=inter_):
                    x = e.randn(M, H_, dtype=BF16, requires_grad=True)
                    _backward(T.fused_gated_mlp(x, *wts(inter_, H_, BF16, grad=True), recompute=recompute))
                yield op + ".backward", f"recompute={int(recompute)} M={M} H={H_} I={inter_} bf16", bwd
        yield op + ".backward", f"recompute={int(recompute)} M=17 H={H} I={inter} fp32 gelu biases", \
            lambda recompute=recompute: _backward(T.fused_gated_mlp(
                e.randn(17, H, requires_grad=True), *wts(inter, H, F32, grad=True), "gelu",
                gate_bias=e.randn(inter, requires_grad=True), up_bias=e.randn(inter, requires_grad=True),
                recompute=recompute))

    for packed in (False, True):
        for recompute in (False, True):
            def mlp_bwd(packed=packed, recompute=recompute):
                m = T.FusedMLP(H, inter, bias=not packed, packed=packed, device=e.device, dtype=BF16)
                m.recompute = recompute
                _backward(m(e.randn(2, 9, H, dtype=BF16, requires_grad=True)))
            yield "FusedMLP.backward", f"H={H} I={inter} packed={int(packed)} recompute={int(recompute)}", mlp_bwd
    def mlp(fp8: bool, M: int):
        m = T.FusedMLP(H8, inter8, device=e.device, dtype=BF16)
        return (m.to_fp8() if fp8 else m)(e.randn(M, H8, dtype=BF16))
    for M in Ms:
        yield "FusedMLP", f"M={M} H={H8} I={inter8} bf16", lambda M=M: mlp(False, M)
        yield "FusedMLP", f"M={M} H={H8} I={inter8} to_fp8", lambda M=M: mlp(True, M)

    def fp8_chain(M):
        # norm -> e4m3 per-token codes -> FP8 MLP (gated epilogue writes (1, 128) block codes -> FP8 down GEMM)
        m = T.FusedMLP(H8, inter8, device=e.device, dtype=BF16).to_fp8()
        q, scale, _ = T.fused_add_rmsnorm(e.randn(M, H8, dtype=BF16), e.rand(H8, dtype=BF16),
                                          residual=e.randn(M, H8, dtype=BF16), out_dtype=E4M3, out_scaling="token")
        return m(q, scale)
    for M in Ms:
        yield "FusedMLP", f"fp8 chain M={M} H={H8} I={inter8}: norm e4m3 out -> FP8 MLP", lambda M=M: fp8_chain(M)


# ------------------------------------------------------------------------------------------------------ FP8


def quantize_cases(e: Env) -> Iterator[Case]:
    op = "quantize_fp8"
    rows = e.rows
    grans = (("tensor", None), ("row", None), ("column", None), ("block", (1, 128)), ("block", (128, 128)))
    for K in (1, 199, 4097, 9000):
        for gran, blk in grans:
            for fmt in (E4M3, E5M2):
                dt = BF16 if fmt == E4M3 else F32
                gname = gran if blk is None else f"block{blk[0]}x{blk[1]}"
                yield op, f"{gname} K={K} {_DT[dt]} -> {_DT[fmt]}", lambda K=K, g=gran, b=blk, f=fmt, dt=dt: \
                    T.quantize_fp8(e.randn(rows, K, dtype=dt), dtype=f, granularity=g, block_size=b)
    M130 = 130 if e.quick else 1000
    for gran, blk in grans:
        gname = gran if blk is None else f"block{blk[0]}x{blk[1]}"

        def static(gran=gran, blk=blk):
            x = e.randn(M130, 300, dtype=F16)
            shape = scale_shape(tuple(x.shape), gran, blk)
            return T.quantize_fp8(x, granularity=gran, block_size=blk, scale=e.scale(*shape))
        yield op, f"static {gname} M={M130} K=300 fp16", static

        def strided(gran=gran, blk=blk):
            return T.quantize_fp8(e.randn(M130, 340, dtype=BF16)[:, 20:320], granularity=gran, block_size=blk)
        yield op, f"{gname} M={M130} strided rows", strided

        def transposed(gran=gran, blk=blk):
            return T.quantize_fp8(e.randn(300, M130, dtype=F32).t(), granularity=gran, block_size=blk)
        yield op, f"{gname} transposed view [{M130}, 300]", transposed
        yield op, f"{gname} 3-D x", lambda gran=gran, blk=blk: T.quantize_fp8(
            e.randn(2, 65, 200, dtype=F16), granularity=gran, block_size=blk)
    yield op, "row 1-D x", lambda: T.quantize_fp8(e.randn(777), granularity="row")
    yield op, "tensor 0-d x", lambda: T.quantize_fp8(e.randn(()))
    yield op, "row empty x", lambda: T.quantize_fp8(e.randn(0, 64), granularity="row")
    yield "FP8Quantizer", "row K=199", lambda: T.FP8Quantizer()(e.randn(rows, 199, dtype=BF16))

    op = "dequantize_fp8"
    for K in (1, 199, 9000):
        for gran, blk in grans:
            for out in DTYPES:
                def deq(K=K, gran=gran, blk=blk, out=out):
                    q, s = T.quantize_fp8(e.randn(rows, K), granularity=gran, block_size=blk)
                    return T.dequantize_fp8(q, s, out_dtype=out, granularity=gran, block_size=blk)
                gname = gran if blk is None else f"block{blk[0]}x{blk[1]}"
                yield op, f"{gname} K={K} -> {_DT[out]}", deq
    yield op, "e5m2 row 3-D strided", lambda: T.dequantize_fp8(
        e.fp8(2, 9, 240, dtype=E5M2)[..., 16:216], e.scale(2, 9, 1), out_dtype=BF16)
    yield op, "tensor scale [1] transposed q", lambda: T.dequantize_fp8(e.fp8(300, 77).t(), e.scale(1))


def gemm_cases(e: Env) -> Iterator[Case]:
    op = "fp8_gemm"
    Ms = (1, 33, 1000) if not e.quick else (1, 33, 130)
    # (K, N): K a multiple of 128, of 16 only, and of neither (the unaligned path)
    KNs = ((256, 384), (208, 200), (100, 72)) if not e.quick else ((128, 64), (80, 48), (40, 24))

    def a_of(M, K, layout, dt=BF16):
        return e.randn(M, K, dtype=dt) if layout == "row" else e.randn(K, M, dtype=dt).t()

    def b_of(K, N, layout, dt=BF16):
        return e.randn(K, N, dtype=dt, scale=0.1) if layout == "row" else e.randn(N, K, dtype=dt, scale=0.1).t()

    for M in Ms:
        for K, N in KNs:
            for la in ("row", "col"):
                for lb in ("row", "kmajor"):
                    yield op, f"float M={M} K={K} N={N} a={la} b={lb}", lambda M=M, K=K, N=N, la=la, lb=lb: \
                        T.fp8_gemm(a_of(M, K, la), b_of(K, N, lb))
            yield op, f"float M={M} K={K} N={N} fp16 bias out=fp32", lambda M=M, K=K, N=N: T.fp8_gemm(
                e.randn(M, K, dtype=F16), b_of(K, N, "kmajor", F16), bias=e.randn(N, dtype=F16), out_dtype=F32)

    def fp8_ab(M, K, N, la, lb, a_mode, b_mode, bias=False):
        qa = e.fp8(M, K) if la == "row" else e.fp8(K, M).t()
        qb = e.fp8(K, N) if lb == "row" else e.fp8(N, K).t()
        sa = {"tensor": e.scale(()), "row": e.scale(M, 1), "block": e.scale(M, -(-K // 128))}[a_mode]
        sb = {"tensor": e.scale(1), "col": e.scale(1, N), "block": e.scale(-(-K // 128), -(-N // 128))}[b_mode]
        return T.fp8_gemm(qa, qb, a_scale=sa, b_scale=sb, bias=e.randn(N, dtype=BF16) if bias else None)
    for M in Ms:
        for K, N in KNs:
            for la, lb in (("row", "kmajor"), ("col", "row"), ("row", "row"), ("col", "kmajor")):
                yield op, f"fp8 M={M} K={K} N={N} a={la} b={lb} row/col scales", \
                    lambda M=M, K=K, N=N, la=la, lb=lb: fp8_ab(M, K, N, la, lb, "row", "col")
            yield op, f"fp8 M={M} K={K} N={N} tensor scales bias", lambda M=M, K=K, N=N: fp8_ab(
                M, K, N, "row", "kmajor", "tensor", "tensor", bias=True)
            yield op, f"fp8 M={M} K={K} N={N} block scales", lambda M=M, K=K, N=N: fp8_ab(
                M, K, N, "row", "kmajor", "block", "block")
            yield op, f"fp8 M={M} K={K} N={N} block scales a=col b=row bias", lambda M=M, K=K, N=N: fp8_ab(
                M, K, N, "col", "row", "block", "block", bias=True)
    K, N = KNs[1]
    yield op, f"e5m2 a x e4m3 b M=33 K={K} N={N}", lambda: T.fp8_gemm(
        e.fp8(33, K, dtype=E5M2), e.fp8(N, K).t(), a_scale=e.scale(33, 1), b_scale=e.scale(1, N), out_dtype=F16)
    yield op, f"3-D a [2, 17, {K}] N={N}", lambda: T.fp8_gemm(e.randn(2, 17, K, dtype=BF16), b_of(K, N, "kmajor"))
    yield op, f"quantize_fp8 operands, block (1, 128) x (128, 128) M={Ms[-1]} K=300 N=200", \
        lambda: _block_gemm(e, Ms[-1], 300, 200)

    op = "fp8_weight_only_gemm"
    for M in Ms:
        for K, N in KNs:
            for lw in ("wt", "contiguous"):
                for scale in ("tensor", "col"):
                    def wo(M=M, K=K, N=N, lw=lw, scale=scale):
                        w_t = e.fp8(N, K).t() if lw == "wt" else e.fp8(K, N)
                        s = e.scale(1) if scale == "tensor" else e.scale(1, N)
                        return T.fp8_weight_only_gemm(e.randn(M, K, dtype=F16), w_t, s, bias=e.randn(N, dtype=F16))
                    yield op, f"M={M} K={K} N={N} w={lw} scale={scale}", wo

    for M in Ms:
        for K, N in KNs:
            for gran in ("channel", "tensor"):
                def lin(M=M, K=K, N=N, gran=gran):
                    layer = T.FP8Linear(K, N, bias=gran == "channel", device=e.device, dtype=BF16,
                                        weight_granularity=gran)
                    return layer(e.randn(M, K, dtype=BF16))
                yield "FP8Linear", f"M={M} in={K} out={N} weight={gran}", lin
            for xs in ("token", "block"):
                def lin8(M=M, K=K, N=N, xs=xs):
                    layer = T.FP8Linear(K, N, device=e.device, dtype=BF16)
                    scale = e.scale(M, 1) if xs == "token" else e.scale(M, -(-K // 128))
                    return layer(e.fp8(M, K), scale, out_dtype=F16 if xs == "block" else None)
                yield "FP8Linear", f"M={M} in={K} out={N} e4m3 x, {xs} x_scale", lin8
    K, N = KNs[0]
    yield "FP8Linear", f"1-D x, 3-D x in={K} out={N} fp16", lambda: _linear_shapes(e, K, N)
    yield "FP8Linear", f"from_linear in={K} out={N} x requires grad", lambda: T.FP8Linear.from_linear(
        torch.nn.Linear(K, N, device=e.device, dtype=BF16))(e.randn(9, K, dtype=BF16, requires_grad=True))
    yield "convert_to_fp8_linear", f"Sequential in={K} out={N}", lambda: T.convert_to_fp8_linear(
        torch.nn.Sequential(torch.nn.Linear(K, N), torch.nn.Linear(N, K)).to(e.device, BF16))(
        e.randn(5, K, dtype=BF16))


def _block_gemm(e: Env, M: int, K: int, N: int):
    """The block-scaled chain: a in (1, 128) blocks, a K-major b in (128, 128) blocks, both from quantize_fp8."""
    qa, sa = T.quantize_fp8(e.randn(M, K, dtype=BF16), granularity="block", block_size=(1, 128))
    qbt, sbt = T.quantize_fp8(e.randn(N, K, dtype=BF16), granularity="block", block_size=(128, 128))
    return T.fp8_gemm(qa, qbt.t(), a_scale=sa, b_scale=sbt.t())


def _linear_shapes(e: Env, K: int, N: int):
    layer = T.FP8Linear(K, N, device=e.device, dtype=F16)
    return layer(e.randn(K, dtype=F16)), layer(e.randn(2, 7, K, dtype=F16))


# ----------------------------------------------------------------------------------------------------- driver

FAMILIES = (rmsnorm_cases, rope_cases, rmsnorm_rope_cases, sharded_norm_cases, sharded_rmsnorm_rope_case,
            gated_mlp_cases, quantize_cases, gemm_cases)


def all_cases(e: Env) -> list[Case]:
    cases = []
    for family in FAMILIES:
        cases.extend(family(e))
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes (Triton's interpreter on the CPU)")
    ap.add_argument("--device", default=None, help="cuda (default when a GPU is present) or cpu")
    ap.add_argument("--only", nargs="*", default=None, help="run the ops whose name contains one of these")
    ap.add_argument("--list", action="store_true", help="print the cases and exit")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cpu") and os.environ.get("TRITON_INTERPRET") != "1":
        print("memcheck_ops: the CPU needs Triton's interpreter: set TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    e = Env(device, args.quick, args.seed)
    cases = all_cases(e)
    if args.only:
        cases = [c for c in cases if any(w in c[0] for w in args.only)]
    if args.list:
        for op, case, _ in cases:
            print(op, case)
        print(f"memcheck_ops: {len(cases)} cases")
        return 0
    failed = []
    for op, case, fn in cases:
        try:
            fn()
            e.sync()
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the run goes on
            failed.append((op, case))
            print(f"FAIL {op} {case}: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()
            continue
        print(f"ok {op} {case}", flush=True)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    line = f"memcheck_ops: {len(cases)} calls"
    if failed:
        names = [f"{op} {case}" for op, case in failed]
        line += f", {len(failed)} failed: " + "; ".join(names[:20]) + ("; ..." if len(names) > 20 else "")
    print(line, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
