"""Benchmark problems for training: forward + backward in one timed call, with peak memory beside time.

* ``training_rmsnorm_rope`` (8, 2048, 4096) bf16, head_dim 128: :func:`~triton_ops.fused_rmsnorm_rope`
  and its Triton backward against the unfused PyTorch reference in eager mode and under ``torch.compile``
  (default, max-autotune; Inductor compiles the backward too), and Liger-Kernel's RMSNorm followed by its
  RoPE when ``liger_kernel`` is importable (its RoPE rotates q and k together: k is one extra head, 1/32
  more work). The floor is a copy of the bytes the training step must move: x read and y written by the
  forward, x and dy read and dx written by the backward (10 bytes per element in bf16, 671 MB).
* ``training_mlp``: the Qwen3-8B MLP (H = 4096, I = 12288, SwiGLU) at M = 8192 and 16384 tokens bf16:
  :class:`~triton_ops.FusedMLP` in both modes (``triton_ops``: the default, projections kept from the
  forward; ``triton_ops_recompute``: recomputed in the backward) against a Hugging Face style MLP of three
  ``nn.Linear`` in eager mode and compiled, and Liger-Kernel's ``LigerSwiGLUMLP`` (same weights) when
  importable. TFLOPS count the useful work, 18 M H I (forward 6, backward 12), not the recomputation.
  The ceiling ``cublas_6_gemms`` runs the step's six GEMMs alone (gate/up packed) with torch.mm.

Each system's timed call zeroes nothing and allocates its gradients afresh (``.grad = None`` first), as a
training step with ``zero_grad(set_to_none=True)`` does. Its correctness is checked once on the forward
output and every gradient against a float64 reference, each piece scaled by the reference's norm so that
all count equally in the relative L2 error. ``peak_mb`` (GPU only) is the peak memory a call allocates
on top of its inputs: activations saved for the backward, the gradients, workspaces.

``cases(quick=True, device="cpu")`` gives tiny shapes that run through Triton's interpreter. Systems
that need a library which is not importable are left out of the case (``liger_kernel`` is optional).
"""

from __future__ import annotations

from typing import Any

import torch

from ..compute.rope import rope_cos_sin
from ..kernels.mlp import FusedMLP
from ..kernels.rmsnorm_rope import fused_rmsnorm_rope, rmsnorm_rope_reference
from .case import BenchCase, select_shapes
from .timing import compiled, copy_ceiling

# (op, label, dims, dtype)
_FULL = [
    ("rmsnorm_rope", "8x2048x4096 hd128", (8, 2048, 4096, 128), torch.bfloat16),
    ("mlp", "qwen3-8b M=8192", (8192, 4096, 12288), torch.bfloat16),
    ("mlp", "qwen3-8b M=16384", (16384, 4096, 12288), torch.bfloat16),
]
_QUICK = [
    ("rmsnorm_rope", "quick 2x8x256 hd64", (2, 8, 256, 64), torch.bfloat16),
    ("mlp", "quick M=32 64x96", (32, 64, 96), torch.bfloat16),
]
# Relative L2 error of the scaled concatenation (output, gradients) against float64: bf16 rounds the
# output once (~2^-9 relative, 2e-3 in L2) and the gradients after bf16 GEMMs or a row reduction; the
# measured errors on the CPU were 2-4e-3. 2e-2 leaves 5x.
_RTOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-5}


def _liger():
    """The liger_kernel.transformers module, or None when it is not installed (or does not import)."""
    try:
        import liger_kernel.transformers as lk
    except Exception:  # not installed, or built for another torch/triton
        return None
    return lk


def _scaled(pieces: list[torch.Tensor], norms: list[float]) -> torch.Tensor:
    return torch.cat([(p.detach().double() / n).flatten() for p, n in zip(pieces, norms)])


def _set_reference(i: dict[str, Any], pieces: list[torch.Tensor]) -> torch.Tensor:
    norms = [max(torch.linalg.vector_norm(p.double()).item(), 1e-30) for p in pieces]
    i["_norms"] = norms
    return _scaled(pieces, norms)


def _checked(step, grads):
    """The output a system is judged by: its forward output and gradients, scaled like the reference."""
    def run(i):
        y = step(i)
        return _scaled([y] + grads(i), i["_norms"])
    return run


# ----------------------------------------------------------------------------------------------------
# RMSNorm + RoPE
# ----------------------------------------------------------------------------------------------------
def _rmsnorm_rope_case(label: str, dims: tuple, dtype: torch.dtype, device: str) -> BenchCase:
    B, S, H, hd = dims
    n = B * S * H
    es = torch.empty((), dtype=dtype).element_size()
    nbytes = 5 * n * es + 2 * S * hd * es + 2 * H * es  # x, y, dy, dx, x again; tables; weight and its grad

    def make_inputs() -> dict[str, Any]:
        g = torch.Generator(device=device).manual_seed(0)
        cos, sin = rope_cos_sin(torch.arange(S).numpy(), hd)
        return {
            "x": torch.randn(B, S, H, device=device, generator=g).to(dtype).requires_grad_(),
            "w": (1 + 0.1 * torch.randn(H, device=device, generator=g)).to(dtype).requires_grad_(),
            "dy": torch.randn(B, S, H, device=device, generator=g).to(dtype),
            "cos": torch.tensor(cos, dtype=dtype, device=device),
            "sin": torch.tensor(sin, dtype=dtype, device=device),
        }

    def fresh(i):
        i["x"].grad = None
        i["w"].grad = None

    def step_with(fn):
        def step(i):
            fresh(i)
            y = fn(i)
            y.backward(i["dy"])
            return y
        return step

    def ours(i):
        return fused_rmsnorm_rope(i["x"], i["w"], i["cos"], i["sin"], head_dim=hd)

    def eager(i):
        return rmsnorm_rope_reference(i["x"], i["w"], i["cos"], i["sin"], head_dim=hd)

    comp_default = compiled(rmsnorm_rope_reference)
    comp_max = compiled(rmsnorm_rope_reference, "max-autotune")

    def reference(i):
        x = i["x"].detach().double().requires_grad_()
        w = i["w"].detach().double().requires_grad_()
        y = rmsnorm_rope_reference(x, w, i["cos"].double(), i["sin"].double(), head_dim=hd)
        y.backward(i["dy"].double())
        return _set_reference(i, [y, x.grad, w.grad])

    systems: dict[str, Any] = {
        "triton_ops": step_with(ours),
        "torch_eager": step_with(eager),
        "torch_compile": step_with(lambda i: comp_default(i["x"], i["w"], i["cos"], i["sin"], head_dim=hd)),
        "torch_compile_max": step_with(lambda i: comp_max(i["x"], i["w"], i["cos"], i["sin"], head_dim=hd)),
    }
    lk = _liger()
    if lk is not None:
        def liger(i):
            if "liger_norm" not in i:
                norm = lk.LigerRMSNorm(H, eps=1e-6).to(device=device, dtype=dtype)
                with torch.no_grad():
                    norm.weight.copy_(i["w"])
                i["liger_norm"] = norm
                i["liger_k"] = torch.randn(B, 1, S, hd, device=device, dtype=dtype)
                # Liger's RoPE backward rotates the incoming gradient in place: its own copy of dy
                i["liger_dy"] = i["dy"].clone()
            norm = i["liger_norm"]
            i["x"].grad = norm.weight.grad = None
            q = norm(i["x"]).view(B, S, H // hd, hd).transpose(1, 2)
            qo, _ = lk.liger_rotary_pos_emb(q, i["liger_k"], i["cos"][None], i["sin"][None])
            y = qo.transpose(1, 2).reshape(B, S, H)
            y.backward(i["liger_dy"])
            return y

        systems["liger"] = liger

    copy_fn: dict[str, Any] = {}

    def copy(i):
        if "fn" not in copy_fn:
            copy_fn["fn"] = copy_ceiling(nbytes, device)
        return copy_fn["fn"]()

    systems["copy"] = copy

    def grads(i):
        return [i["x"].grad, i["w"].grad]

    extra = {name: _checked(fn, grads) for name, fn in systems.items() if name not in ("copy", "liger")}
    if "liger" in systems:
        extra["liger"] = _checked(systems["liger"], lambda i: [i["x"].grad, i["liger_norm"].weight.grad])
    return BenchCase(
        op="training_rmsnorm_rope", shape=label, dtype=str(dtype).replace("torch.", ""), make_inputs=make_inputs,
        systems=systems, reference=reference, bytes_moved=float(nbytes), ceiling="copy", rtol=_RTOL[dtype],
        unchecked=("copy",), extra=extra, gpu_only=("torch_compile", "torch_compile_max", "copy"),
        size=float(B * S), measure_memory=True)


# ----------------------------------------------------------------------------------------------------
# Gated MLP (whole MLP: gate/up fused, down_proj)
# ----------------------------------------------------------------------------------------------------
class _HFMLP(torch.nn.Module):
    """What Hugging Face's Llama/Qwen MLP computes: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden: int, inter: int, device, dtype, generator: torch.Generator | None = None):
        super().__init__()
        kw = {"bias": False, "device": device, "dtype": dtype}
        self.gate_proj = torch.nn.Linear(hidden, inter, **kw)
        self.up_proj = torch.nn.Linear(hidden, inter, **kw)
        self.down_proj = torch.nn.Linear(inter, hidden, **kw)
        self.act_fn = torch.nn.SiLU()
        if generator is not None:  # Gaussian weights scaled by 1/sqrt(fan_in), drawn from the case's generator
            with torch.no_grad():
                for lin in (self.gate_proj, self.up_proj, self.down_proj):
                    fan_in = lin.weight.shape[1]
                    lin.weight.copy_(torch.randn(lin.weight.shape, device=device, generator=generator) / fan_in ** 0.5)

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def _mlp_case(label: str, dims: tuple, dtype: torch.dtype, device: str) -> BenchCase:
    M, H, inter = dims

    def make_inputs() -> dict[str, Any]:
        g = torch.Generator(device=device).manual_seed(0)
        hf = _HFMLP(H, inter, device, dtype, generator=g)
        fused = FusedMLP.from_hf(hf)  # shares the three Linear layers: one set of weights and gradients
        return {"x": torch.randn(M, H, device=device, generator=g).to(dtype).requires_grad_(),
                "dy": torch.randn(M, H, device=device, generator=g).to(dtype), "hf": hf, "fused": fused}

    def params(i):
        hf = i["hf"]
        return [hf.gate_proj.weight, hf.up_proj.weight, hf.down_proj.weight]

    def step_with(fn):
        def step(i):
            i["x"].grad = None
            for p in params(i):
                p.grad = None
            y = fn(i)
            y.backward(i["dy"])
            return y
        return step

    def ours(recompute):
        def run(i):
            i["fused"].recompute = recompute
            return i["fused"](i["x"])
        return run

    compiled_fns: dict[str, Any] = {}

    def comp(mode):
        def run(i):
            key = (mode, id(i["hf"]))
            if key not in compiled_fns:
                compiled_fns[key] = compiled(i["hf"], mode)
            return compiled_fns[key](i["x"])
        return run

    def reference(i):
        x = i["x"].detach().double().requires_grad_()
        ws = [p.detach().double().requires_grad_() for p in params(i)]
        y = (torch.nn.functional.silu(x @ ws[0].t()) * (x @ ws[1].t())) @ ws[2].t()
        y.backward(i["dy"].double())
        return _set_reference(i, [y, x.grad, *(w.grad for w in ws)])

    systems: dict[str, Any] = {
        "triton_ops": step_with(ours(False)),
        "triton_ops_recompute": step_with(ours(True)),
        "torch_eager": step_with(lambda i: i["hf"](i["x"])),
        "torch_compile": step_with(comp(None)),
        "torch_compile_max": step_with(comp("max-autotune")),
    }
    lk = _liger()
    if lk is not None:
        from types import SimpleNamespace

        def liger(i):
            if "liger" not in i:
                mod = lk.LigerSwiGLUMLP(SimpleNamespace(hidden_size=H, intermediate_size=inter, hidden_act="silu"))
                hf = i["hf"]
                mod.gate_proj, mod.up_proj, mod.down_proj = hf.gate_proj, hf.up_proj, hf.down_proj
                i["liger"] = mod
            return i["liger"](i["x"])

        systems["liger"] = step_with(liger)

    gemm_operands: dict[str, Any] = {}

    def cublas_gemms(i):
        """The six GEMMs of the step alone (gate and up packed as one), in the input dtype, on operands made
        once: forward [G U] = x W_gu^T and y = h W_d^T; backward dh = dy W_d, dW_d = dy^T h,
        dx = [dG dU] W_gu and dW_gu = [dG dU]^T x. No activation, no allocation of gradients beyond the
        GEMM outputs: the floor a fused step is measured against."""
        if not gemm_operands:
            w_gu = torch.cat([i["hf"].gate_proj.weight, i["hf"].up_proj.weight]).detach()
            gemm_operands.update(x=i["x"].detach(), w_gu=w_gu, w_d=i["hf"].down_proj.weight.detach(),
                                 h=torch.randn(M, inter, device=device, dtype=dtype) * 0.1,
                                 d_gu=torch.randn(M, 2 * inter, device=device, dtype=dtype) * 0.1, dy=i["dy"])
        o = gemm_operands
        o["x"] @ o["w_gu"].t()
        o["h"] @ o["w_d"].t()
        o["dy"] @ o["w_d"]
        o["dy"].t() @ o["h"]
        o["d_gu"] @ o["w_gu"]
        return o["d_gu"].t() @ o["x"]

    systems["cublas_6_gemms"] = cublas_gemms

    def grads(i):
        return [i["x"].grad, *(p.grad for p in params(i))]

    extra = {name: _checked(fn, grads) for name, fn in systems.items() if name != "cublas_6_gemms"}
    return BenchCase(
        op="training_mlp", shape=label, dtype=str(dtype).replace("torch.", ""), make_inputs=make_inputs,
        systems=systems, reference=reference, flops=18.0 * M * H * inter, rtol=_RTOL[dtype], extra=extra,
        ceiling="cublas_6_gemms", unchecked=("cublas_6_gemms",),
        gpu_only=("torch_compile", "torch_compile_max", "cublas_6_gemms"), size=float(M), measure_memory=True)


def cases(quick: bool = False, shapes: list[str] | None = None, device: str = "cuda") -> list[BenchCase]:
    table = _QUICK if quick else _FULL
    out = []
    for op, label, dims, dtype in table:
        make = _rmsnorm_rope_case if op == "rmsnorm_rope" else _mlp_case
        out.append(make(label, dims, dtype, device))
    return select_shapes(out, shapes)
