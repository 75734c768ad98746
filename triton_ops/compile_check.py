"""Ahead-of-time compile checks that need no GPU.

Each kernel module exposes ``compile_specs(arch: int) -> list[CompileSpec]``: every configuration its
launch heuristics can pick for that architecture (80, 89 or 90). This module builds each one with
``triton.compile(..., target=GPUTarget("cuda", arch, 32))``, runs Triton's bundled ``ptxas -v`` over the
PTX and reports registers, spills and warnings, and can assert on instructions in the PTX (for example
``wgmma`` with e4m3 operands on sm_90).

Run it as ``python -m triton_ops.compile_check [--arch 80 89 90]``. It must run with the interpreter
off (``TRITON_INTERPRET`` unset), because Triton decides at decoration time whether a kernel is
compiled or interpreted; the test suite starts it in a subprocess for that reason.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

#: Kernel modules that take part in the compile check. A module listed here that does not exist yet
#: (or has no ``compile_specs``) is skipped with a note, never silently.
KERNEL_MODULES = (
    "triton_ops.kernels.rmsnorm_rope",
    "triton_ops.kernels.rmsnorm",
    "triton_ops.kernels.rope",
    "triton_ops.kernels.fp8_quantize",
    "triton_ops.kernels.fp8_gemm",
    "triton_ops.kernels.gated_mlp",
    "triton_ops.kernels.rmsnorm_rope_backward",
    "triton_ops.kernels.rmsnorm_backward",
    "triton_ops.kernels.gated_mlp_backward",
    "triton_ops.kernels.sharded_norm",
)


@dataclass
class CompileSpec:
    """One kernel configuration to build ahead of time."""

    kernel: Any  # a triton JITFunction
    signature: dict[str, str]  # argument name -> Triton type ("*fp16", "i32", "fp32", "constexpr", ...)
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3
    label: str = ""
    #: regexes that must occur in the PTX (e.g. r"wgmma\.mma_async.*e4m3")
    ptx_must_contain: list[str] = field(default_factory=list)
    #: allow register spills for this spec (only with a comment at the spec saying why)
    allow_spills: bool = False
    #: arguments assumed divisible by 16, as Triton's JIT specializes them at run time for aligned tensors
    #: (pointers, row strides, sizes). Without this the AOT build sees unaligned pointers: loads are not
    #: vectorised, software pipelining collapses and large GEMM tiles spill although they do not at run time.
    aligned: tuple[str, ...] = ()


@dataclass
class CompileReport:
    label: str
    arch: int
    ok: bool
    registers: int | None = None
    spill_bytes: int = 0
    stack_bytes: int = 0
    shared_bytes: int | None = None
    warnings: list[str] = field(default_factory=list)
    error: str = ""


def _ptxas() -> str:
    """The ptxas Triton itself compiles with (its bundled one, or TRITON_PTXAS_PATH), so the PTX version it
    emits is one this ptxas accepts."""
    try:
        from triton.knobs import nvidia

        return nvidia.ptxas.path
    except (ImportError, AttributeError):  # older Triton: the bundled binary
        import triton

        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


_REG = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_STACK = re.compile(r"(\d+) bytes stack frame")


def build(spec: CompileSpec, arch: int) -> CompileReport:
    """Compile one spec for ``sm_<arch>`` and inspect the result with ptxas."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    label = spec.label or spec.kernel.__name__
    try:
        names = list(spec.signature)
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in spec.aligned
                 if n in spec.signature and spec.signature[n] != "constexpr"}
        src = ASTSource(spec.kernel, spec.signature, spec.constexprs, attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    except Exception as exc:  # report every failure, keep going with the other specs
        return CompileReport(label, arch, False, error=f"{type(exc).__name__}: {str(exc)[:2000]}")
    ptx = compiled.asm["ptx"]
    report = CompileReport(label, arch, True, shared_bytes=compiled.metadata.shared)
    for pattern in spec.ptx_must_contain:
        if not re.search(pattern, ptx):
            report.ok = False
            report.error += f"PTX lacks /{pattern}/. "
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        gpu = "sm_90a" if arch == 90 else f"sm_{arch}"
        proc = subprocess.run([_ptxas(), "-v", f"--gpu-name={gpu}", path, "-o", os.path.join(d, "k.o")],
                              capture_output=True, text=True)
    out = proc.stderr + proc.stdout
    if proc.returncode != 0:
        report.ok = False
        report.error += f"ptxas failed: {out[-1500:]}"
        return report
    if m := _REG.search(out):
        report.registers = int(m.group(1))
    if m := _SPILL.search(out):
        report.spill_bytes = int(m.group(1)) + int(m.group(2))
    if m := _STACK.search(out):
        report.stack_bytes = int(m.group(1))
    report.warnings = [ln.strip() for ln in out.splitlines() if "warning" in ln.lower()]
    if report.spill_bytes and not spec.allow_spills:
        report.ok = False
        report.error += f"{report.spill_bytes} bytes of register spills. "
    if any("C7511" in w or "serialized" in w for w in report.warnings):
        report.ok = False
        report.error += "wgmma serialized for lack of registers (ptxas C7511). "
    return report


def collect(arch: int, modules: tuple[str, ...] = KERNEL_MODULES) -> tuple[list[CompileSpec], list[str]]:
    specs: list[CompileSpec] = []
    notes: list[str] = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                notes.append(f"{name}: not present, skipped")
                continue
            raise
        fn = getattr(mod, "compile_specs", None)
        if fn is None:
            notes.append(f"{name}: defines no compile_specs, skipped")
            continue
        specs.extend(fn(arch))
    return specs, notes


def run(archs: tuple[int, ...] = (80, 89, 90), modules: tuple[str, ...] = KERNEL_MODULES,
        jobs: int | None = None) -> tuple[list[CompileReport], list[str]]:
    reports: list[CompileReport] = []
    notes: list[str] = []
    work = []
    for arch in archs:
        specs, n = collect(arch, modules)
        notes.extend(f"sm_{arch}: {x}" for x in n)
        work.extend((s, arch) for s in specs)
    # Triton's compile holds the GIL for the Python front end but spends most of its time in MLIR and
    # ptxas, which release it: a small thread pool roughly halves the wall time on 2 cores.
    with ThreadPoolExecutor(max_workers=jobs or min(4, os.cpu_count() or 1)) as pool:
        reports = list(pool.map(lambda sa: build(*sa), work))
    return reports, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build every kernel config for GPU targets, no GPU needed.")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 89, 90])
    parser.add_argument("--module", nargs="+", default=list(KERNEL_MODULES))
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_check: unset TRITON_INTERPRET (kernels must be JIT functions, not interpreted)")
        return 2
    reports, notes = run(tuple(args.arch), tuple(args.module), args.jobs)
    for n in notes:
        print("note:", n)
    failed = 0
    for r in reports:
        status = "ok  " if r.ok else "FAIL"
        print(f"{status} sm_{r.arch} {r.label:60s} regs={r.registers} spill={r.spill_bytes} "
              f"stack={r.stack_bytes} smem={r.shared_bytes} {r.error}")
        failed += not r.ok
    print(f"{len(reports) - failed} passed, {failed} failed")
    return 1 if failed or not reports else 0


if __name__ == "__main__":
    sys.exit(main())
