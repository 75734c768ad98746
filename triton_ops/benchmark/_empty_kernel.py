"""An empty Triton kernel: the launch-cost floor ``triton-ops bench host`` measures the ops against.

Triton resolves a kernel's globals (``tl``) from its module, so it lives at module level here."""

import triton
import triton.language as tl


@triton.jit
def empty_kernel(x_ptr, n, BLOCK: tl.constexpr):
    pass
