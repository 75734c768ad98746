"""Triton helpers shared by the GEMM kernels (fp8_gemm, gated_mlp)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grouped_tile_coords(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Grouped tile order: GROUP_M row-tiles sweep the column tiles together, so the tiles of A and of the
    weights they share are reused from L2 instead of being re-read from HBM."""
    width = GROUP_M * num_pid_n
    first_m = (tile // width) * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile % width) % size_m
    pid_n = (tile % width) // size_m
    return pid_m, pid_n
