"""Cases of the tensor-parallel tests, run inside every process of a gloo group (see test_tensor_parallel.py).

Each case builds an unsharded module, a copy of it sharded with a triton_ops.parallel style (or a
parallelize_module plan), runs both on the same input and returns checks ``(name, value, op, bound)``
-- e.g. ``("out", max_rel_err, "<=", FP32_RTOL)`` -- that the test asserts in the parent process.
Every rank seeds the same generator, so all ranks build the same modules and inputs, as ranks loading
one checkpoint do.

Tolerances (relative to the largest magnitude of the reference):
* ``FP32_RTOL = 1e-5``: sharded and unsharded fp32 results differ only in the order of fp32 sums (a K
  split into partial sums, a sum of squares split over ranks): a few ulps (6e-8) times sqrt(K) for the
  tiny sizes here, measured <= 1e-6.
* ``FP16_RTOL = 2e-3``: fp16 outputs round each value once (ulp 2^-11 = 4.9e-4 relative); a row-parallel
  sum rounds each partial once more: <= 2 ulps of the output.
* FP8: column-parallel layers compute exactly what the unsharded layer computes (same rows, same scales):
  ``FP32_RTOL``. Row-parallel layers with activation quantization (M > 64) quantize each K-slice with its
  own per-token scale: against the unsharded layer they agree to FP8 quantization noise (SQNR >=
  ``FP8_SQNR_DB`` = 25 dB; e4m3's 3 mantissa bits give ~30 dB per operand), and against the emulation of
  exactly that per-slice quantization to ``FP32_RTOL``.
"""

from __future__ import annotations

import copy
import math
import os
import time
import traceback

FP32_RTOL = 1e-5
FP16_RTOL = 2e-3
FP8_SQNR_DB = 25.0
#: FP8-patched models, sharded vs unsharded: the activations entering each FP8 layer differ by fp32 ulps
#: (summation order of the all-reduces), and now and then such a difference moves a value across an e4m3
#: rounding boundary, changing it by one e4m3 step (2^-3 relative) -- measured 1e-4 of the largest logit
#: through two OLMo2 layers, i.e. an SQNR of ~80 dB; 40 dB still rejects any wrong shard (which gives < 10 dB).
FP8_MODEL_SQNR_DB = 40.0


def _rel(a, b) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _sqnr(a, ref) -> float:
    a, ref = a.detach().float(), ref.detach().float()
    return float(10 * math.log10(ref.pow(2).sum() / (a - ref).pow(2).sum().clamp_min(1e-30)))


def _ctx():
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    n, r = dist.get_world_size(), dist.get_rank()
    mesh = init_device_mesh("cpu", (n,))
    return torch, mesh, n, r


def _chunk(t, n, r, dim=-1):
    return t.chunk(n, dim=dim)[r]


# ----------------------------------------------------------------------------------------------------
def case_gated_mlp(dtype_name="float32"):
    torch, mesh, n, r = _ctx()
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
    from torch.distributed.tensor.parallel import parallelize_module

    from triton_ops import FusedGatedMLP, fused_gated_mlp
    from triton_ops.parallel import GatedMLPColwiseParallel, full_tensor

    dtype = getattr(torch, dtype_name)
    tol = FP32_RTOL if dtype == torch.float32 else FP16_RTOL
    torch.manual_seed(0)
    ref = FusedGatedMLP(40, 24 * n, bias=True, dtype=dtype)
    mod = parallelize_module(copy.deepcopy(ref), mesh, GatedMLPColwiseParallel())
    x = torch.randn(3, 5, 40, dtype=dtype)
    want = ref(x)
    got = mod(x)
    checks = [("out vs unsharded slice", _rel(got, _chunk(want, n, r)), "<=", tol)]
    w = mod.weight
    checks.append(("weight is a DTensor", float(isinstance(w, DTensor)), "==", 1.0))
    checks.append(("full_tensor(weight) is the packed weight", _rel(full_tensor(w), ref.weight), "==", 0.0))
    checks.append(("full_tensor(bias)", _rel(full_tensor(mod.bias), ref.bias), "==", 0.0))
    sd = mod.state_dict()
    checks.append(("state_dict values are DTensors", float(all(isinstance(v, DTensor) for v in sd.values())),
                   "==", 1.0))
    # A plain row shard of the packed weight hands rank 0 all of the gate and rank 1 all of the up rows:
    # its output is wrong, which these checks must be able to see.
    naive = distribute_tensor(ref.weight.detach(), mesh, [Shard(0)]).to_local()
    il = naive.shape[0] // 2
    bad = fused_gated_mlp(x, naive[:il], naive[il:], "silu")
    checks.append(("naive Shard(0) split is detected", _rel(bad, _chunk(ref(x), n, r)), ">=", 0.05))
    # Loading a full checkpoint into a sharded module of another init.
    torch.manual_seed(1)
    other = parallelize_module(FusedGatedMLP(40, 24 * n, bias=True, dtype=dtype), mesh, GatedMLPColwiseParallel())
    pre = _rel(other(x), _chunk(want, n, r))
    other.load_state_dict(ref.state_dict())
    checks.append(("before loading: differs", pre, ">=", 0.05))
    checks.append(("after loading a full checkpoint", _rel(other(x), _chunk(want, n, r)), "<=", tol))
    # use_local_output=False: a Shard(-1) DTensor whose full tensor is the unsharded output
    mod2 = parallelize_module(copy.deepcopy(ref), mesh, GatedMLPColwiseParallel(use_local_output=False))
    y = mod2(x)
    checks.append(("DTensor output full_tensor", _rel(full_tensor(y), want), "<=", tol))
    return checks


def case_gated_mlp_fp8():
    torch, mesh, n, r = _ctx()
    from torch.distributed.tensor.parallel import parallelize_module

    from triton_ops import FusedGatedMLP
    from triton_ops.parallel import GatedMLPColwiseParallel, full_tensor

    torch.manual_seed(0)
    ref = FusedGatedMLP(64, 32 * n, fp8=True)
    mod = parallelize_module(copy.deepcopy(ref), mesh, GatedMLPColwiseParallel())
    x = torch.randn(7, 64)
    want, got = ref(x), mod(x)
    return [
        ("fp8 out vs unsharded slice", _rel(got, _chunk(want, n, r)), "<=", FP32_RTOL),
        ("weight_fp8 full", _rel(full_tensor(mod.weight_fp8).float(), ref.weight_fp8.float()), "==", 0.0),
        ("weight_scale full", _rel(full_tensor(mod.weight_scale), ref.weight_scale), "==", 0.0),
        ("local scales belong to local rows",
         _rel(mod.weight_scale.to_local(), torch.cat([_chunk(h, n, r, 0) for h in ref.weight_scale.chunk(2)])),
         "==", 0.0),
    ]


def case_fp8_linear():
    torch, mesh, n, r = _ctx()
    from torch.distributed.tensor.parallel import parallelize_module

    from triton_ops import FP8Linear
    from triton_ops.parallel import FP8ColwiseParallel, FP8RowwiseParallel

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32 * n, bias=True)
    ref = FP8Linear.from_linear(lin)
    checks = []
    col = parallelize_module(copy.deepcopy(ref), mesh, FP8ColwiseParallel())
    for m in (5, 72):  # weight-only path (M <= 64) and the FP8 x FP8 path with quantized activations
        x = torch.randn(m, 64)
        checks.append((f"colwise M={m}", _rel(col(x), _chunk(ref(x), n, r)), "<=", FP32_RTOL))
    lin2 = torch.nn.Linear(32 * n, 48, bias=True)
    ref2 = FP8Linear.from_linear(lin2)
    for reduce_dtype in (None, torch.float32):
        row = parallelize_module(copy.deepcopy(ref2), mesh, FP8RowwiseParallel(reduce_dtype=reduce_dtype))
        for m in (5, 72):
            x = torch.randn(m, 32 * n)
            got = row(_chunk(x, n, r))
            want = ref2(x)
            # Emulation: each rank's slice through an unsharded FP8Linear of that K-slice (same weight
            # bytes and scales), summed, bias once.
            emu = 0
            for q in range(n):
                part = FP8Linear.from_linear(torch.nn.Linear(32, 48, bias=False))
                part.weight = _chunk(ref2.weight, n, q).contiguous()
                part.weight_scale = ref2.weight_scale.clone()
                emu = emu + part(_chunk(x, n, q)).float()
            emu = emu + ref2.bias.float()
            tag = f"rowwise M={m} reduce={reduce_dtype}"
            checks.append((tag + " vs per-slice emulation", _rel(got, emu), "<=", FP32_RTOL))
            if m <= 64:  # no activation quantization: the unsharded result up to fp32 summation order
                checks.append((tag + " vs unsharded", _rel(got, want), "<=", FP32_RTOL))
            else:
                checks.append((tag + " SQNR vs unsharded (dB)", _sqnr(got, want), ">=", FP8_SQNR_DB))
    return checks


def case_fused_mlp(packed="0"):
    torch, mesh, n, r = _ctx()
    from torch.distributed.tensor.parallel import parallelize_module

    from triton_ops import FusedMLP
    from triton_ops.parallel import FusedMLPParallel, full_tensor

    packed = packed == "1"
    torch.manual_seed(0)
    ref = FusedMLP(48, 16 * n, packed=packed, bias=False)
    mod = parallelize_module(copy.deepcopy(ref), mesh, FusedMLPParallel())
    x = torch.randn(2, 5, 48, requires_grad=True)
    want = ref(x)
    (gw,) = torch.autograd.grad(want.pow(2).sum(), [x])
    x2 = x.detach().clone().requires_grad_(True)
    got = mod(x2)
    got.pow(2).sum().backward()
    checks = [("out", _rel(got, want), "<=", FP32_RTOL),
              ("input grad (all-reduced)", _rel(x2.grad, gw), "<=", FP32_RTOL)]
    ref_grads = dict(zip([k for k, _ in ref.named_parameters()],
                         torch.autograd.grad(ref(x).pow(2).sum(), list(ref.parameters()))))
    for name, p in mod.named_parameters():
        checks.append((f"grad {name}", _rel(full_tensor(p.grad), ref_grads[name]), "<=", FP32_RTOL))
    sd = mod.state_dict()
    checks.append(("state_dict keys", float(sorted(sd) == sorted(ref.state_dict())), "==", 1.0))
    checks.append(("state_dict full tensors", max(_rel(full_tensor(v), ref.state_dict()[k]) for k, v in sd.items()),
                   "==", 0.0))
    # to_fp8 on the sharded module == to_fp8 on the unsharded one, sharded (exact bytes and scales)
    with torch.no_grad():
        fp8_ref = copy.deepcopy(ref).to_fp8()
        mod.to_fp8()
        y8, y8_ref = mod(x.detach()), fp8_ref(x.detach())
    checks.append(("to_fp8 gate_up bytes", _rel(full_tensor(mod.gate_up.weight_fp8).float(),
                                                fp8_ref.gate_up.weight_fp8.float()), "==", 0.0))
    checks.append(("to_fp8 gate_up scales", _rel(full_tensor(mod.gate_up.weight_scale),
                                                 fp8_ref.gate_up.weight_scale), "==", 0.0))
    checks.append(("to_fp8 down bytes (all-reduced amax)", _rel(full_tensor(mod.down_proj.weight).float(),
                                                               fp8_ref.down_proj.weight.float()), "==", 0.0))
    checks.append(("to_fp8 down scales", _rel(full_tensor(mod.down_proj.weight_scale),
                                             fp8_ref.down_proj.weight_scale), "==", 0.0))
    checks.append(("fp8 out (M=10: weight-only down_proj)", _rel(y8, y8_ref), "<=", FP32_RTOL))
    sd8, sd8_ref = mod.state_dict(), fp8_ref.state_dict()
    checks.append(("fp8 state_dict keys are HF keys", float(sorted(sd8) == sorted(sd8_ref)), "==", 1.0))
    checks.append(("fp8 state_dict dequantized weights", max(_rel(full_tensor(v), sd8_ref[k])
                                                             for k, v in sd8.items()), "==", 0.0))
    # Loading Hugging Face weights (full tensors) into the sharded FP8 MLP quantizes this rank's shards.
    torch.manual_seed(3)
    other = FusedMLP(48, 16 * n, packed=packed, bias=False)
    fresh = parallelize_module(copy.deepcopy(other), mesh, FusedMLPParallel())
    fresh.to_fp8()
    fresh.load_state_dict(ref.state_dict())
    with torch.no_grad():
        checks.append(("fp8 after loading HF weights", _rel(fresh(x.detach()), y8_ref), "<=", FP32_RTOL))
    return checks


def case_fused_mlp_fp8_sharded_after():
    """An FP8 FusedMLP quantized unsharded, then sharded (gate_up colwise, down rowwise)."""
    torch, mesh, n, r = _ctx()
    from torch.distributed.tensor.parallel import parallelize_module

    from triton_ops import FusedMLP
    from triton_ops.parallel import FusedMLPParallel, full_tensor

    torch.manual_seed(0)
    ref = FusedMLP(48, 16 * n).to_fp8()
    mod = parallelize_module(copy.deepcopy(ref), mesh, FusedMLPParallel())
    checks = []
    with torch.no_grad():
        for m in (6, 80):
            x = torch.randn(m, 48)
            got, want = mod(x), ref(x)
            if m <= 64:
                checks.append((f"M={m} out", _rel(got, want), "<=", FP32_RTOL))
            else:
                checks.append((f"M={m} SQNR (dB)", _sqnr(got, want), ">=", FP8_SQNR_DB))
    sd, sd_ref = mod.state_dict(), ref.state_dict()
    checks.append(("state_dict", max(_rel(full_tensor(v), sd_ref[k]) for k, v in sd.items()), "==", 0.0))
    return checks


def case_norms():
    torch, mesh, n, r = _ctx()
    import torch.distributed as dist
    from torch.distributed.tensor.parallel import parallelize_module

    from triton_ops import FusedRMSNormRoPE, fused_rmsnorm_rope
    from triton_ops.kernels.sharded_norm import (
        rmsnorm_rope_from_stats,
        rmsnorm_rope_stats_reference,
        row_sum_of_squares,
    )
    from triton_ops.parallel import ShardedRowNormParallel, sharded_qk_rmsnorm_rope, sharded_rmsnorm_rope

    torch.manual_seed(0)
    hd, heads, kv = 16, 4 * n, 2 * n
    checks = []
    ang = torch.arange(12.0)[:, None] * torch.rand(hd // 2)[None]
    ang = torch.cat([ang, ang], -1)
    cos, sin = ang.cos(), ang.sin()
    for dtype, tol in ((torch.float32, FP32_RTOL), (torch.float16, FP16_RTOL)):
        x = torch.randn(2, 6, heads * hd, dtype=dtype)
        w = (1 + 0.2 * torch.randn(heads * hd)).to(dtype)
        want = fused_rmsnorm_rope(x, w, cos, sin, 1e-6, head_dim=hd)
        got = sharded_rmsnorm_rope(_chunk(x, n, r), _chunk(w, n, r), cos, sin, 1e-6, head_dim=hd)
        checks.append((f"sharded_rmsnorm_rope {dtype}", _rel(got, _chunk(want, n, r)), "<=", tol))
        # gptj, partial rotary and position ids through the normalize kernel, statistic given as rstd
        pos = torch.tensor([[5, 3, 1, 0, 2, 9], [0, 1, 2, 3, 4, 5]])
        xs = _chunk(x, n, r)
        ss = row_sum_of_squares(xs)
        dist.all_reduce(ss)
        rstd = torch.rsqrt(ss / (heads * hd) + 1e-6)
        c8, s8 = cos[:, :8].contiguous(), sin[:, :8].contiguous()
        got = rmsnorm_rope_from_stats(xs, _chunk(w, n, r), c8, s8, rstd=rstd, head_dim=hd, position_ids=pos,
                                      rotary_layout="gptj")
        want = rmsnorm_rope_stats_reference(x.float(), w, c8, s8, rstd=rstd, head_dim=hd, position_ids=pos,
                                            rotary_layout="gptj")
        checks.append((f"rstd/gptj/partial/pos {dtype}", _rel(got, _chunk(want, n, r)), "<=", tol))
    # q and k with one all-reduce
    q, k = torch.randn(2, 6, heads * hd), torch.randn(2, 6, kv * hd)
    wq, wk = 1 + 0.2 * torch.randn(heads * hd), 1 + 0.2 * torch.randn(kv * hd)
    qo, ko = sharded_qk_rmsnorm_rope(_chunk(q, n, r), _chunk(k, n, r), _chunk(wq, n, r), _chunk(wk, n, r),
                                     cos, sin, 1e-6, 1e-5, head_dim=hd)
    checks.append(("qk q", _rel(qo, _chunk(fused_rmsnorm_rope(q, wq, cos, sin, 1e-6, head_dim=hd), n, r)), "<=",
                   FP32_RTOL))
    checks.append(("qk k", _rel(ko, _chunk(fused_rmsnorm_rope(k, wk, cos, sin, 1e-5, head_dim=hd), n, r)), "<=",
                   FP32_RTOL))
    # ShardedRowNormParallel on FusedRMSNormRoPE (kernels) and on a PyTorch RMSNorm (HF OLMo2's)
    m = FusedRMSNormRoPE(heads * hd, hd)
    with torch.no_grad():
        m.weight.copy_(wq)
    want = m(q, cos, sin)
    sm = parallelize_module(copy.deepcopy(m), mesh, ShardedRowNormParallel())
    checks.append(("FusedRMSNormRoPE sharded", _rel(sm(_chunk(q, n, r), cos, sin), _chunk(want, n, r)), "<=",
                   FP32_RTOL))
    from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm

    hn = Olmo2RMSNorm(heads * hd, eps=1e-6)
    with torch.no_grad():
        hn.weight.copy_(wq)
    want = hn(q)
    shn = parallelize_module(copy.deepcopy(hn), mesh, ShardedRowNormParallel())
    checks.append(("Olmo2RMSNorm sharded", _rel(shn(_chunk(q, n, r)), _chunk(want, n, r)), "<=", FP32_RTOL))
    return checks


def case_load_full_state_dict():
    """A model mixing torch's ColwiseParallel/RowwiseParallel Linear layers and a sharded FusedMLP loads a
    full checkpoint through load_full_state_dict."""
    torch, mesh, n, r = _ctx()
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from triton_ops import FusedMLP
    from triton_ops.parallel import FusedMLPParallel, load_full_state_dict

    def build(seed):
        torch.manual_seed(seed)
        return torch.nn.ModuleDict({"up": torch.nn.Linear(32, 16 * n), "down": torch.nn.Linear(16 * n, 32),
                                    "mlp": FusedMLP(32, 8 * n)})

    def run(m, x):
        return m["mlp"](m["down"](m["up"](x)))

    plan = {"up": ColwiseParallel(), "down": RowwiseParallel(), "mlp": FusedMLPParallel()}
    ref = build(0)
    x = torch.randn(4, 32)
    with torch.no_grad():
        want = run(ref, x)
        sharded = parallelize_module(build(5), mesh, plan)
        before = _rel(run(sharded, x), want)
        load_full_state_dict(sharded, ref.state_dict())
        after = _rel(run(sharded, x), want)
    return [("before", before, ">=", 0.05), ("after load_full_state_dict", after, "<=", FP32_RTOL)]


# ----------------------------------------------------------------------------------------------------
# Hugging Face models
# ----------------------------------------------------------------------------------------------------
def _hf_config(family: str, n: int):
    import transformers as T

    c = dict(vocab_size=96, hidden_size=64, intermediate_size=32 * n, num_hidden_layers=2, num_attention_heads=4 * n,
             num_key_value_heads=2 * n if n <= 2 else n, max_position_embeddings=64, initializer_range=0.2,
             pad_token_id=0, bos_token_id=None, eos_token_id=None, head_dim=16)
    if family == "llama":
        return T.LlamaConfig(**c, mlp_bias=True)
    if family == "qwen3":
        return T.Qwen3Config(**c)
    if family == "olmo2":
        return T.Olmo2Config(**c)
    raise KeyError(family)


def _hf_model(family: str, n: int):
    import torch
    import transformers as T

    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(_hf_config(family, n), attn_implementation="eager")
    return model.eval()


def case_hf(family: str, fp8: str = "0"):
    torch, mesh, n, r = _ctx()
    from torch.distributed.tensor.parallel import parallelize_module

    from triton_ops import patch_model
    from triton_ops.integrations.hf_tp import tp_plan

    fp8 = fp8 == "1"
    ref = _hf_model(family, n)
    ids = torch.randint(1, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    checks = []
    with torch.no_grad():
        want = ref(ids).logits
        sharded = parallelize_module(copy.deepcopy(ref), mesh, tp_plan(ref))
        # the plan alone (torch's styles + the sharded q/k norm in PyTorch ops) is the unsharded model
        checks.append(("unpatched sharded logits", _rel(sharded(ids).logits, want), "<=", FP32_RTOL))
        ref_p = copy.deepcopy(ref)
        rep_ref = patch_model(ref_p, fp8=fp8)
        rep = patch_model(sharded, fp8=fp8)
        checks.append(("same parts replaced", float(sorted(rep.paths()) == sorted(rep_ref.paths())), "==", 1.0))
        reasons = "; ".join(sorted({p.reason for p in rep.skipped}))
        checks.append((f"as many parts skipped ({reasons})", float(len(rep.skipped)), "==",
                       float(len(rep_ref.skipped))))
        if family == "olmo2":  # q/k norms over the sharded projection: the one-all-reduce fused path ran
            sharded_attn = [p for p in rep.replaced if p.kind == "attention" and "sharded" in p.replacement]
            checks.append(("sharded q/k norm forwards", float(len(sharded_attn)), "==", 2.0))
        got = sharded(ids).logits
        want_p = ref_p(ids).logits
        if fp8:
            checks.append(("FP8 MLPs patched", float(rep.count("mlp")), "==", 2.0))
            checks.append(("patched sharded FP8 logits SQNR vs unsharded patched (dB)", _sqnr(got, want_p), ">=",
                           FP8_MODEL_SQNR_DB))
        else:
            checks.append(("patched sharded logits vs unsharded patched", _rel(got, want_p), "<=", FP32_RTOL))
        if not fp8:
            checks.append(("patched sharded logits vs unpatched", _rel(got, want), "<=", FP32_RTOL))
            # MLP weights stay DTensors (the patch kept the sharding)
            w = sharded.model.layers[0].mlp.gate_proj.weight
            checks.append(("mlp weight still sharded", float(w.to_local().shape[0] * n == w.shape[0]), "==", 1.0))
            out = sharded.generate(ids[:1], max_new_tokens=4, do_sample=False)
            out_ref = ref.generate(ids[:1], max_new_tokens=4, do_sample=False)
            checks.append(("greedy tokens", float(torch.equal(out, out_ref)), "==", 1.0))
    return checks


def case_hf_tp_plan_auto(family: str, ckpt: str):
    """transformers' own tp_plan="auto" loading path (needs accelerate), then patch_model."""
    torch, mesh, n, r = _ctx()
    import transformers as T

    from triton_ops import patch_model

    m = T.AutoModelForCausalLM.from_pretrained(ckpt, tp_plan="auto", dtype=torch.float32,
                                               attn_implementation="eager").eval()
    ref = T.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.randint(1, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(ids).logits
        rep_ref = patch_model(copy.deepcopy(ref))
        rep = patch_model(m)
        got = m(ids).logits
    return [("same parts replaced", float(sorted(rep.paths()) == sorted(rep_ref.paths())), "==", 1.0),
            ("mlp sharded", float(rep.count("mlp") == 2), "==", 1.0),
            ("logits", _rel(got, want), "<=", FP32_RTOL)]


# ----------------------------------------------------------------------------------------------------
# Process entry
# ----------------------------------------------------------------------------------------------------
def worker(rank: int, world: int, init_file: str, out_dir: str, cases: list) -> None:
    """One rank: join the gloo group, run every case, write ``{case: checks or error}`` as JSON."""
    os.environ["TRITON_INTERPRET"] = "1"  # before triton_ops (and triton) are imported
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import json

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {}
    try:
        for name, args in cases:
            t0 = time.perf_counter()
            try:
                checks = globals()[f"case_{name}"](*args)
                results[f"{name}{tuple(args)}"] = {"checks": [list(c) for c in checks],
                                                   "seconds": time.perf_counter() - t0}
            except Exception:
                results[f"{name}{tuple(args)}"] = {"error": traceback.format_exc()}
            dist.barrier()
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        dist.destroy_process_group()
