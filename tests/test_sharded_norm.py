"""The statistics and normalize+rope kernels of a row norm split across ranks, in one process.

With the full row on one rank (``n_total`` = the row width) the two kernels compute RMSNorm+RoPE, so
they are checked against :func:`~triton_ops.fused_rmsnorm_rope` and the fp32 reference. Tolerances:
fp32 1e-5 relative (fp32 sums in another order), fp16 2e-3 and bf16 1.6e-2 (one rounding of the output:
2^-11 and 2^-8 relative ulps, two of them allowed). The multi-rank use is in test_tensor_parallel.py.
"""

from __future__ import annotations

import pytest
import torch

from triton_ops import InvalidArgumentError, ShapeError, fused_rmsnorm_rope
from triton_ops.kernels.sharded_norm import (
    pick_norm_config,
    rmsnorm_rope_from_stats,
    rmsnorm_rope_stats_reference,
    row_sum_of_squares,
)

from .conftest import DEVICE


@pytest.fixture(autouse=True)
def _on_device():
    """Every tensor these tests make lives on the test device (the GPU where there is one)."""
    with torch.device(DEVICE):
        yield


TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _tables(rows, rot):
    ang = torch.arange(float(rows))[:, None] * torch.rand(rot // 2)[None]
    ang = torch.cat([ang, ang], -1)
    return ang.cos(), ang.sin()


def _rel(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 64), (2, 3, 199), (5, 3584)])
def test_row_sum_of_squares(dtype, shape):
    x = torch.randn(shape, dtype=dtype)
    got = row_sum_of_squares(x)
    want = x.double().pow(2).sum(-1)
    assert got.dtype == torch.float32 and got.shape == x.shape[:-1]
    # fp32 accumulation of up to 3584 squares: ~sqrt(n) ulps
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)


def test_row_sum_of_squares_strided_rows_and_out_buffer():
    base = torch.randn(4, 7, 96)
    x = base[:, :, 16:80]  # strided rows, contiguous last dim
    buf = torch.full((2, 28), float("nan"))
    row_sum_of_squares(x, out=buf[1])
    torch.testing.assert_close(buf[1], x.pow(2).sum(-1).reshape(-1), rtol=1e-5, atol=0)
    assert torch.isnan(buf[0]).all()  # the other half untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim,heads,layout", [(64, 3, "neox"), (80, 2, "gptj"), (128, 1, "neox")])
def test_from_stats_equals_fused_on_one_rank(dtype, head_dim, heads, layout):
    x = torch.randn(2, 5, heads * head_dim, dtype=dtype)
    w = (1 + 0.2 * torch.randn(heads * head_dim)).to(dtype)
    cos, sin = _tables(8, head_dim)
    ss = row_sum_of_squares(x)
    got = rmsnorm_rope_from_stats(x, w, cos, sin, sum_of_squares=ss, n_total=x.shape[-1], head_dim=head_dim,
                                  rotary_layout=layout, eps=1e-6)
    want = fused_rmsnorm_rope(x, w, cos, sin, 1e-6, head_dim=head_dim, rotary_layout=layout)
    assert _rel(got, want) <= TOL[dtype]
    ref = rmsnorm_rope_stats_reference(x, w, cos, sin, sum_of_squares=ss, n_total=x.shape[-1], head_dim=head_dim,
                                       rotary_layout=layout)
    assert _rel(got, ref) <= TOL[dtype]
    again = rmsnorm_rope_from_stats(x, w, cos, sin, sum_of_squares=ss, n_total=x.shape[-1], head_dim=head_dim,
                                    rotary_layout=layout, eps=1e-6)  # the planned fast path
    assert torch.equal(again, got)


def test_rstd_partial_rotary_positions_and_per_token_tables():
    x = torch.randn(2, 4, 3 * 32)
    w = 1 + 0.2 * torch.randn(96)
    rstd = torch.rand(2, 4) + 0.5  # any statistic: the kernel uses it as given
    cos, sin = _tables(10, 16)
    pos = torch.tensor([[9, 0, 3, 3], [1, 2, 5, 7]])
    got = rmsnorm_rope_from_stats(x, w, cos, sin, rstd=rstd, head_dim=32, position_ids=pos)
    want = rmsnorm_rope_stats_reference(x, w, cos, sin, rstd=rstd, head_dim=32, position_ids=pos)
    assert _rel(got, want) <= 1e-5
    c3, s3 = cos[pos], sin[pos]  # per-token [b, s, rot] tables, as Hugging Face passes them
    got3 = rmsnorm_rope_from_stats(x, w, c3, s3, rstd=rstd, head_dim=32)
    assert _rel(got3, want) <= 1e-5


def test_out_of_range_position_gives_nan_and_out_buffer_is_written():
    x = torch.randn(1, 3, 64)
    cos, sin = _tables(4, 64)
    out = torch.full_like(x, 123.0)
    rmsnorm_rope_from_stats(x, torch.ones(64), cos, sin, rstd=torch.ones(1, 3), position_ids=torch.tensor([0, 4, 1]),
                            out=out)
    assert torch.isnan(out[0, 1]).all() and not torch.isnan(out[0, [0, 2]]).any()
    assert not (out == 123.0).any()


def test_empty_input():
    x = torch.randn(0, 3, 64)
    assert row_sum_of_squares(x).shape == (0, 3)
    cos, sin = _tables(4, 64)
    y = rmsnorm_rope_from_stats(x, torch.ones(64), cos, sin, rstd=torch.ones(0, 3))
    assert y.shape == x.shape


def test_errors():
    x = torch.randn(2, 3, 64)
    cos, sin = _tables(4, 64)
    ss = row_sum_of_squares(x)
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        rmsnorm_rope_from_stats(x, torch.ones(64), cos, sin)
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        rmsnorm_rope_from_stats(x, torch.ones(64), cos, sin, rstd=ss, sum_of_squares=ss)
    with pytest.raises(InvalidArgumentError, match="n_total"):
        rmsnorm_rope_from_stats(x, torch.ones(64), cos, sin, sum_of_squares=ss, n_total=32)
    with pytest.raises(ShapeError, match="weight"):
        rmsnorm_rope_from_stats(x, torch.ones(128), cos, sin, sum_of_squares=ss, n_total=128)
    with pytest.raises(ShapeError, match="one per row"):
        rmsnorm_rope_from_stats(x, torch.ones(64), cos, sin, rstd=torch.ones(3, 2).t())
    with pytest.raises(ShapeError, match="one per row"):
        row_sum_of_squares(x, out=torch.empty(5))


def test_custom_ops_opcheck_and_compile():
    x = torch.randn(2, 3, 64)
    cos, sin = _tables(4, 64)
    ss = row_sum_of_squares(x)
    w = torch.ones(64)
    torch.library.opcheck(torch.ops.triton_ops.row_sum_of_squares.default, (x,))
    torch.library.opcheck(torch.ops.triton_ops.rmsnorm_rope_from_stats.default,
                          (x, w, cos, sin, None, ss, 1e-6, 1 / 64, 64, False, 0.0, False, False))

    def f(x, w, cos, sin):
        s = row_sum_of_squares(x)
        return rmsnorm_rope_from_stats(x, w, cos, sin, sum_of_squares=s, n_total=64)

    got = torch.compile(f, fullgraph=True, backend="eager")(x, w, cos, sin)
    assert _rel(got, f(x, w, cos, sin)) <= 1e-6


def test_configs_are_pure_and_cover_heads():
    a = pick_norm_config(16384, 2048, 128, 128, 2)
    assert a == pick_norm_config(16384, 2048, 128, 128, 2)
    assert a.NH_BLOCK * a.N_CHUNKS >= 2048 // 128
