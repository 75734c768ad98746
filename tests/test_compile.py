"""Compile checks with no GPU: every config the launch heuristics can pick builds for sm_80, sm_89 and
sm_90 with Triton's own ptxas, without register spills (and with wgmma where a module asks for it).

The build runs in a subprocess with the interpreter off, because Triton fixes at decoration time whether
a kernel is compiled or interpreted, and this test process has the interpreter on when there is no GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from triton_ops.compile_check import KERNEL_MODULES


@pytest.mark.parametrize("module", KERNEL_MODULES)
def test_kernel_module_compiles_for_all_archs(module):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "triton_ops.compile_check", "--module", module,
                           "--arch", "80", "89", "90"], env=env, capture_output=True, text=True, timeout=1800)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert "skipped" not in proc.stdout, tail  # every listed kernel module exists and defines compile_specs
    assert proc.returncode == 0, tail
    assert " 0 failed" in proc.stdout, tail
