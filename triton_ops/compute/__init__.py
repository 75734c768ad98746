"""NumPy reference implementations of all of the library's math. Importable with no GPU and no Triton.

* :mod:`.rmsnorm`: RMSNorm (row or per-head, residual add, weight offset)
* :mod:`.rope`: rotary embedding tables and application (neox / gptj, partial rotary, positions), and
  RMSNorm followed by RoPE
* :mod:`.gated_mlp`: SiLU, exact and tanh GELU, the gated MLP
* :mod:`.fp8`: e4m3fn / e5m2 encode/decode, scales per tensor/row/column/block, scaled GEMM, SQNR
"""

from . import fp8, gated_mlp, rmsnorm, rope

__all__ = ["fp8", "gated_mlp", "rmsnorm", "rope"]
