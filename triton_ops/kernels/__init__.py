"""Triton kernels, one module per op family (kernel, launcher, custom op, module wrapper)."""
