"""fused_rmsnorm_rope on the GPU at real model shapes (`pytest -m gpu`)."""

from __future__ import annotations

import pytest
import torch

from tests._rope_helpers import assert_close, tables
from triton_ops.kernels.rmsnorm_rope import fused_rmsnorm_rope, rmsnorm_rope_reference

pytestmark = pytest.mark.gpu


def _ref64(x, w, cos, sin, **kw):
    return rmsnorm_rope_reference(x.double(), w.double(), cos.double(), sin.double(), **kw)


@pytest.mark.parametrize("shape,head_dim,dtype", [
    ((8, 2048, 4096), 64, torch.float16),
    ((8, 2048, 4096), 128, torch.bfloat16),
    ((1, 32768, 4096), 128, torch.bfloat16),
    ((2, 1000, 5120), 128, torch.float16),
    ((3, 333, 3584), 128, torch.bfloat16),
    ((1, 64, 14336), 128, torch.float16),  # chunked rows
    ((4, 77, 2560), 80, torch.float16),
    ((4, 77, 3072), 96, torch.bfloat16),
    ((2, 50, 4096), 256, torch.float32),
])
def test_model_shapes(shape, head_dim, dtype):
    torch.manual_seed(0)
    x = torch.randn(shape, device="cuda", dtype=dtype)
    w = torch.randn(shape[-1], device="cuda", dtype=dtype)
    cos, sin = tables(shape[1], head_dim, device="cuda")
    out = fused_rmsnorm_rope(x, w, cos, sin, head_dim=head_dim)
    assert_close(out, _ref64(x, w, cos, sin, head_dim=head_dim), dtype)


@pytest.mark.parametrize("layout", ["neox", "gptj"])
def test_residual_positions_gpu(layout):
    x = torch.randn(4, 512, 4096, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(x)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    cos, sin = tables(8192, 128, layout, device="cuda")
    pos = torch.randint(0, 8192, (4, 512), device="cuda")
    out, s = fused_rmsnorm_rope(x, w, cos, sin, residual=r, position_ids=pos, rotary_layout=layout)
    torch.testing.assert_close(s, x + r, rtol=0, atol=0)  # one bf16 rounding, exactly as the unfused add
    assert_close(out, _ref64(x + r, w, cos, sin, position_ids=pos, rotary_layout=layout), torch.bfloat16)


def test_qk_norm_gpu():
    x = torch.randn(16384, 32 * 128, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(128, device="cuda", dtype=torch.bfloat16)
    cos, sin = tables(16384, 128, device="cuda")
    out = fused_rmsnorm_rope(x, w, cos, sin)
    assert_close(out, _ref64(x, w, cos, sin), torch.bfloat16)


def test_int64_offsets_beyond_2_31_elements():
    # 2^31 + 4096*1024 fp16 elements (4.3 GB): row offsets exceed int32 in the last rows.
    rows = (2**31) // 4096 + 1024
    x = torch.empty(rows, 4096, device="cuda", dtype=torch.float16)
    x[-2048:].normal_()
    x[:-2048].fill_(1.0)
    w = torch.randn(4096, device="cuda", dtype=torch.float16)
    cos, sin = tables(1, 128, device="cuda")
    pos = torch.zeros(rows, dtype=torch.long, device="cuda")
    out = fused_rmsnorm_rope(x, w, cos, sin, position_ids=pos)
    tail = slice(rows - 2048, rows)
    assert_close(out[tail], _ref64(x[tail], w, cos, sin, position_ids=pos[tail]), torch.float16)
    del x, out
    torch.cuda.empty_cache()


def test_cuda_graph_capture():
    x = torch.randn(8, 1, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    cos, sin = tables(4096, 128, device="cuda")
    pos = torch.randint(0, 4096, (8, 1), device="cuda")
    fused_rmsnorm_rope(x, w, cos, sin, position_ids=pos)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fused_rmsnorm_rope(x, w, cos, sin, position_ids=pos)
    x.normal_()
    g.replay()
    torch.cuda.synchronize()
    assert_close(out, _ref64(x, w, cos, sin, position_ids=pos), torch.bfloat16)


def test_torch_compile_inductor_gpu():
    x = torch.randn(2, 128, 4096, device="cuda", dtype=torch.float16)
    w = torch.randn(4096, device="cuda", dtype=torch.float16)
    cos, sin = tables(128, 64, device="cuda")
    f = torch.compile(lambda x: fused_rmsnorm_rope(x, w, cos, sin) * 2, fullgraph=True)
    assert_close(f(x) / 2, _ref64(x, w, cos, sin), torch.float16)
