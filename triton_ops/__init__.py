"""triton-fused-ops: fused Triton kernels for Transformer models."""
__version__ = "0.1.0"
