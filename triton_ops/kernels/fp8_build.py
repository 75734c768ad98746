"""Compile specs and the tuning entry of the FP8 kernels (fp8_quantize.py, fp8_gemm.py).

Split from the kernel files when they passed ~1,000 lines; they stay the modules the compile check and
``triton-ops tune`` ask (their ``compile_specs`` / ``tuning_entry`` call into this module). Every spec here
is a configuration the launchers' heuristics (or a measurement knob of fp8_gemm) can pick.
"""

from __future__ import annotations

import torch
import triton.language as tl

from ..compile_check import CompileSpec
from ..launch import PlanCache, plan_key
from ..utils import cdiv, num_sms
from .fp8_gemm import (
    _NO_SCALE,
    CONFIGS,
    KERNEL_TYPE,
    REDUCE_BLOCK,
    TRANSPOSE_BLOCK,
    _arch,
    _finish_config,
    _fp8_gemm_kernel,
    _plan_gemm,
    _splitk_reduce_kernel,
    _transpose_kernel,
    config_names,
    gemm_config,
)
from .fp8_quantize import (
    COL_AMAX,
    COL_MAX_SPLITS,
    COL_QUANT,
    FP8_MAX,
    MAX_PARTIALS,
    ROW_BLOCKS,
    TILE_CONFIGS,
    _amax_cols_kernel,
    _amax_rows_kernel,
    _finalize_cols_kernel,
    _gemm_prep_kernel,
    _quant_block_kernel,
    _quant_cols_kernel,
    _quant_rows_kernel,
    _scale_tile_kernel,
    block_config,
    row_config,
)

_TUNING_PLANS = PlanCache("fp8_gemm_tuning")

# ---------------------------------------------------------------------------------------------------
# Compile specs: every config the launchers above can pick (sm_89 / sm_90; sm_80 uses PyTorch ops)
# ---------------------------------------------------------------------------------------------------

_TT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
       torch.float8_e4m3fn: "fp8e4nv", torch.float8_e5m2: "fp8e5"}


#: Arguments Triton's JIT marks 16-divisible at run time for aligned tensors with sizes that are multiples of
#: 16 (the shapes that matter: hidden sizes, weight dims). Without them the ahead-of-time build assumes
#: unaligned pointers and strides: no vectorised loads, one 64-bit address per element, and the 8-warp
#: tiles spill (8 B in scale_tile, 100 B in amax_rows on sm_90) where the run-time build does not.
_ALIGNED = {
    "rows": ("x_ptr", "q_ptr", "s_ptr", "K", "stride_xm", "stride_qm"),
    "block": ("x_ptr", "q_ptr", "s_ptr", "amax_ptr", "K", "stride_xm", "stride_qm"),
    "amax_rows": ("x_ptr", "part_ptr", "C", "stride_r"),
    "scale_tile": ("x_ptr", "y_ptr", "s_ptr", "C", "stride_xr", "stride_yr", "stride_yc"),
    "amax_cols": ("x_ptr", "part_ptr", "C", "stride_r"),
    "finalize": ("part_ptr", "s_ptr", "C"),
    "prep": ("a_ptr", "qa_ptr", "sa_ptr", "K", "stride_am", "stride_qam", "b_ptr", "part_ptr", "N", "stride_bk"),
    "quant_cols": ("x_ptr", "q_ptr", "part_ptr", "s_ptr", "C", "stride_xr", "stride_xc", "stride_qr", "stride_qc"),
}


#: Type of the ``ub`` argument of the quantize kernels per UB mode (0: unused, a float 0.0 is passed).
_UB_TYPE = {0: "fp32", 1: "*fp32", 2: "fp32"}


def quantize_compile_specs(arch: int) -> list[CompileSpec]:
    if arch < 89:
        return []
    specs: list[CompileSpec] = []
    # Every block config with bf16 -> e4m3 (the hot path), plus each other in/out dtype once.
    dtype_pairs = [(torch.bfloat16, torch.float8_e4m3fn), (torch.float16, torch.float8_e4m3fn),
                   (torch.float32, torch.float8_e5m2)]
    for bi, (din, dout) in enumerate(dtype_pairs):
        ti, to = _TT[din], _TT[dout]
        fmax = FP8_MAX[dout]
        blocks = ROW_BLOCKS if bi == 0 else (4096,)
        # per row (None), power-of-two (1, g) groups (the tile reshaped) and other g (lanes masked); the
        # amax bound (UB 1: a tensor, 2: a float) on the bf16 per-row and (1, 128) configs
        groups = (None, 16, 32, 64, 128, 100, 1000) if bi == 0 else (None, 128)
        for block_k in blocks:
            for group in groups:
                cfg = row_config(block_k, group)
                for single in ({cfg["SINGLE"], False} if group is None else {True}):
                    for ub in (0, 1, 2) if bi == 0 and group in (None, 128) and block_k == 4096 else (0,):
                        specs.append(CompileSpec(
                            _quant_rows_kernel,
                            {"x_ptr": f"*{ti}", "q_ptr": f"*{to}", "s_ptr": "*fp32", "ub": _UB_TYPE[ub], "M": "i32",
                             "K": "i32", "stride_xm": "i64", "stride_qm": "i64", "stride_sm": "i64",
                             "FMAX": "constexpr", "GROUP": "constexpr", "GP": "constexpr", "ROWS": "constexpr",
                             "BLOCK_K": "constexpr", "SINGLE": "constexpr", "UB": "constexpr"},
                            {"FMAX": fmax, "GROUP": group or cfg["BLOCK_K"], "GP": cfg["GP"], "ROWS": cfg["ROWS"],
                             "BLOCK_K": cfg["BLOCK_K"], "SINGLE": single, "UB": ub},
                            num_warps=cfg["num_warps"],
                            label=f"quant_rows {ti}->{to} K{cfg['BLOCK_K']} g{group} s{single} ub{ub}",
                            aligned=_ALIGNED["rows"]))
        # (bm, bk) blocks: one-tile blocks (PHASE 0, power-of-two or masked), a looping program per block
        # (1), row splits of tall blocks (2, 3); shapes chosen by block_config from (M, K, bm, bk)
        block_cases = ((4096, 4096, 128, 128),) if bi else (
            (4096, 4096, 128, 128), (4096, 4096, 16, 128), (4096, 4096, 64, 256), (4096, 4096, 4, 256),
            (4096, 4096, 3, 100), (64, 4096, -1, 128), (8192, 8192, 300, 300), (8192, 4096, -1, 128),
            (4, 20000, 1, 10000))
        for M, K, bm, bk in block_cases:
            cfg = block_config(M, K, bm, bk, 132)
            for phase in (2, 3) if cfg["PHASE"] == 2 else (cfg["PHASE"],):
                for ub in (0, 1, 2) if bi == 0 and (bm, bk) == (128, 128) else (0,):
                    # n_split == 1 (phases 0 and 1) is specialised by the JIT, as here
                    one = {"n_split": 1} if phase < 2 else {}
                    specs.append(CompileSpec(
                        _quant_block_kernel,
                        {"x_ptr": f"*{ti}", "q_ptr": f"*{to}", "s_ptr": "*fp32",
                         "amax_ptr": "*i32" if phase > 1 else "*fp32", "ub": _UB_TYPE[ub], "M": "i32", "K": "i32",
                         "stride_xm": "i64", "stride_qm": "i64", "stride_sm": "i64",
                         "n_split": "constexpr" if one else "i32", "rows_per_split": "i32", "FMAX": "constexpr",
                         "BM": "constexpr", "BK": "constexpr", "TILE_M": "constexpr", "TILE_K": "constexpr",
                         "PHASE": "constexpr", "UB": "constexpr"},
                        {**one, "FMAX": fmax, "BM": bm, "BK": bk, "TILE_M": cfg["TILE_M"], "TILE_K": cfg["TILE_K"],
                         "PHASE": phase, "UB": ub}, num_warps=cfg["num_warps"],
                        label=f"quant_block {ti}->{to} {bm}x{bk} p{phase} ub{ub}", aligned=_ALIGNED["block"]))
        for name, (br, bc, warps) in TILE_CONFIGS.items():
            if name == "square":
                continue  # transposed outputs go through _quant_cols_kernel; no launcher picks "square"
            specs.append(CompileSpec(
                _amax_rows_kernel,
                {"x_ptr": f"*{ti}", "part_ptr": "*fp32", "R": "i32", "C": "i32", "stride_r": "i64",
                 "rows_per_prog": "i32", "BLOCK_R": "constexpr", "BLOCK_C": "constexpr"},
                {"BLOCK_R": br, "BLOCK_C": bc}, num_warps=warps, label=f"amax_rows {ti} {name}",
                aligned=_ALIGNED["amax_rows"]))
            for mode in range(5):
                for dq in (False, True):
                    src, dst = (to, ti) if dq else (ti, to)
                    const_strides = {"stride_xc": 1, "stride_yc": 1}
                    sig = {"x_ptr": f"*{src}", "y_ptr": f"*{dst}", "s_ptr": "*fp32", "R": "i32", "C": "i32",
                           "stride_xr": "i64", "stride_xc": "i64", "stride_yr": "i64", "stride_yc": "i64",
                           "stride_sr": "i64", "stride_sc": "i64", "n_part": "i32", "FMAX": "constexpr",
                           "MODE": "constexpr", "DEQUANT": "constexpr", "REVERSE": "constexpr", "BM": "constexpr",
                           "BK": "constexpr", "BLOCK_R": "constexpr", "BLOCK_C": "constexpr",
                           "BLOCK_P": "constexpr"}
                    for k in const_strides:
                        sig[k] = "constexpr"
                    specs.append(CompileSpec(
                        _scale_tile_kernel, sig,
                        {**const_strides, "FMAX": fmax, "MODE": mode, "DEQUANT": dq, "REVERSE": mode == 1, "BM": 128,
                         "BK": 128, "BLOCK_R": br, "BLOCK_C": bc, "BLOCK_P": MAX_PARTIALS},
                        num_warps=warps, label=f"scale_tile {src}->{dst} m{mode} {name}",
                        aligned=tuple(a for a in _ALIGNED["scale_tile"] if a not in const_strides)))
        for bc in (128, 64):
            specs.append(CompileSpec(
                _amax_cols_kernel,
                {"x_ptr": f"*{ti}", "part_ptr": "*fp32", "R": "i32", "C": "i32", "stride_r": "i64",
                 "stride_c": "i64", "rows_per_split": "i32", "BLOCK_R": "constexpr", "BLOCK_C": "constexpr"},
                {"BLOCK_R": 32, "BLOCK_C": bc}, num_warps=4, label=f"amax_cols {ti} {bc}",
                aligned=_ALIGNED["amax_cols"]))
        br, bc, warps, _ = COL_QUANT
        # column quantization: row-major x -> row-major q, column-major x (w.t()) -> row-major q, and
        # (-> e4m3, for fp8_gemm's b) row-major x -> K-major q
        layouts = [({"stride_xc": 1, "stride_qc": 1}, to, fmax), ({"stride_xr": 1, "stride_qc": 1}, to, fmax),
                   ({"stride_xc": 1, "stride_qr": 1}, "fp8e4nv", 448.0)]
        for const_strides, qo, qmax in layouts:
            sig = {"x_ptr": f"*{ti}", "q_ptr": f"*{qo}", "part_ptr": "*fp32", "s_ptr": "*fp32", "R": "i32",
                   "C": "i32", "stride_xr": "i64", "stride_xc": "i64", "stride_qr": "i64", "stride_qc": "i64",
                   "n_split": "i32", "rows_per_prog": "i32", "FMAX": "constexpr", "BLOCK_R": "constexpr",
                   "BLOCK_C": "constexpr", "BLOCK_P": "constexpr", "REVERSE": "constexpr"}
            for k in const_strides:
                sig[k] = "constexpr"
            specs.append(CompileSpec(
                _quant_cols_kernel, sig,
                {**const_strides, "FMAX": qmax, "BLOCK_R": br, "BLOCK_C": bc, "BLOCK_P": COL_MAX_SPLITS,
                 "REVERSE": True},
                num_warps=warps, label=f"quant_cols {ti}->{qo} {'/'.join(const_strides)}=1",
                aligned=tuple(a for a in _ALIGNED["quant_cols"] if a not in const_strides)))
        # fp8_gemm(a, b) from float inputs: a's rows + b's column amax, every row config for bf16
        for block_k in ROW_BLOCKS if bi == 0 else (4096,):
            cfg = row_config(block_k)
            for single in {cfg["SINGLE"], False}:
                specs.append(CompileSpec(
                    _gemm_prep_kernel,
                    {"a_ptr": f"*{ti}", "qa_ptr": "*fp8e4nv", "sa_ptr": "*fp32", "M": "i32", "K": "i32",
                     "stride_am": "i64", "stride_qam": "i64", "n_a": "i32", "b_ptr": f"*{ti}",
                     "part_ptr": "*fp32", "N": "i32", "stride_bk": "i64", "stride_bn": "constexpr",
                     "rows_per_split": "i32", "n_cb": "i32", "FMAX": "constexpr", "ROWS": "constexpr",
                     "BLOCK_K": "constexpr", "SINGLE": "constexpr", "CB_R": "constexpr", "CB_C": "constexpr"},
                    {"stride_bn": 1, "FMAX": 448.0, "ROWS": cfg["ROWS"], "BLOCK_K": cfg["BLOCK_K"],
                     "SINGLE": single, "CB_R": COL_AMAX[0], "CB_C": COL_AMAX[1]},
                    num_warps=cfg["num_warps"], label=f"gemm_prep {ti} K{block_k} s{single}",
                    aligned=_ALIGNED["prep"]))
    specs.append(CompileSpec(
        _finalize_cols_kernel,
        {"part_ptr": "*fp32", "s_ptr": "*fp32", "SPLIT": "i32", "C": "i32", "FMAX": "constexpr",
         "BLOCK_S": "constexpr", "BLOCK_C": "constexpr"},
        {"FMAX": 448.0, "BLOCK_S": 64, "BLOCK_C": 128}, num_warps=4, label="finalize_cols",
        aligned=_ALIGNED["finalize"]))
    return specs



# ---------------------------------------------------------------------------------------------------
# Autotuner integration (``triton-ops tune fp8_gemm``)
# ---------------------------------------------------------------------------------------------------


def _device_arch_sms(device) -> tuple[int, int]:
    dev = torch.device(device)
    return _arch(dev), num_sms(dev)


def gemm_tuning_entry():
    """The GEMM kernel's tuning entry: config name (tile shape, warps, stages), GROUP_M and SPLIT_K per
    (M, N, K), timed on pre-quantized e4m3 operands (a per row, b = w.t() per column, bf16 out): the
    quantization passes do not depend on the config. The stored winner is used by every fp8_gemm /
    fp8_weight_only_gemm launch of that (M, N, K) when tuned configs are switched on, if it is valid
    for that launch (e.g. no fp32-output 128x256 tile, no FP8 tile on the weight-only path)."""
    from ..autotuner.entry import TuningEntry
    from ..performance import PerformanceProfile

    names = [n for n in CONFIGS if n not in ("h_blk", "blk_ada", "amp_blk")]

    def make_args(shape, device, dtype):
        from .fp8_quantize import quantize_fp8

        M, N, K = shape
        a = torch.randn(M, K, device=device, dtype=torch.float32)
        w = torch.randn(N, K, device=device, dtype=torch.float32)
        qa, sa = quantize_fp8(a, granularity="row")
        qw, sw = quantize_fp8(w, granularity="row")
        return (qa, qw.t(), sa, sw.t()), {}

    plans = _TUNING_PLANS

    def run(qa, qb, sa, sb, *, name, GROUP_M, SPLIT_K):
        # one plan per (signature, candidate): the timed call is the launch, as in a user's repeated call
        key = (plan_key(qa, qb, sa, sb), name, GROUP_M, SPLIT_K)
        plan = plans.get(key)
        if plan is None:
            M, K = qa.shape
            N = qb.shape[1]
            arch, sms = _device_arch_sms(qa.device)
            cfg = _finish_config(name, M, N, K, arch, sms, group_m=GROUP_M, split_k=SPLIT_K)
            plan = _plan_gemm(qa, qb, sa, sb, None, torch.bfloat16, "auto", cfg)
            if key[0] is not None:
                plans.put(key, plan)
        return plan(qa, qb, sa, sb, None)

    def default_config(shape):
        M, N, K = shape
        arch, sms = _device_arch_sms("cuda" if torch.cuda.is_available() else "cpu")
        cfg = gemm_config(M, N, K, arch, sms=sms)
        return {"name": cfg["name"], "GROUP_M": cfg["GROUP_M"], "SPLIT_K": cfg["SPLIT_K"]}

    def valid_configs(shape, configs):
        M, N, K = shape
        arch, _ = _device_arch_sms("cuda" if torch.cuda.is_available() else "cpu")
        ok = set(config_names(arch))
        out = []
        for c in configs:
            small = c["name"].startswith("small")
            if c["name"] not in ok or (small and M > CONFIGS[c["name"]][0] * 4):
                continue  # a 16-row tile for thousands of rows re-reads b hundreds of times
            if small and c["GROUP_M"] != 8:
                continue  # one M tile: grouping changes nothing
            if c["SPLIT_K"] > max(1, cdiv(K, CONFIGS[c["name"]][2]) // 2):
                continue
            out.append(c)
        return out

    return TuningEntry(
        kernel_type=KERNEL_TYPE,
        config_space={"name": names, "GROUP_M": [8, 16], "SPLIT_K": [1, 2, 4, 8]},
        make_args=make_args, run=run, default_config=default_config,
        # the seed's benchmark shape first, then the other GEMM and decode shapes
        default_shapes=[(4096, 4096, 4096), (1024, 4096, 4096), (8192, 8192, 8192), (16, 14336, 4096)],
        cpu_shapes=[(32, 64, 128), (8, 96, 512)],
        shape_doc="M x N x K (a [M, K] @ b [K, N])", dtype=torch.float8_e4m3fn, valid_configs=valid_configs,
        profile=lambda shape, dtype: PerformanceProfile.gemm(*shape, dtype=torch.float8_e4m3fn,
                                                             out_dtype=torch.bfloat16),
        # bf16 output rounding (2^-9) and the FP8 accumulator's order: candidates agree to ~1e-3
        rtol=1e-2)


# ---------------------------------------------------------------------------------------------------
# Compile specs: every config gemm_config can pick, per architecture
# ---------------------------------------------------------------------------------------------------

_SIG_BASE = {
    "a_ptr": None, "b_ptr": None, "c_ptr": "*bf16", "as_ptr": "*fp32", "bs_ptr": "*fp32", "bias_ptr": "*bf16",
    "ws_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "stride_am": "i64", "stride_ak": "i64",
    "stride_bk": "i64", "stride_bn": "i64", "stride_cm": "i64", "stride_cn": "constexpr", "stride_asm": "i64",
    "stride_ask": "i64", "stride_bsk": "i64", "stride_bsn": "i64", "out_factor": "fp32", "NUM_PROGS": "i32",
    "k_tiles_per_split": "i32",
}
_CONSTEXPR_NAMES = ("A_SCALE", "B_SCALE", "HAS_BIAS", "A_DECODE", "B_DECODE", "A_E5M2", "B_E5M2", "DOT_TY",
                    "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "FLATTEN", "SPLIT_K", "HW_CVT", "A_MN", "B_MN",
                    "USE_TMA")


def _spec(name: str, arch: int, *, a_ty: str, b_ty: str, a_decode: bool, b_decode: bool, a_mode: int, b_mode: int,
          bias: bool, dot_ty=tl.float16, flatten: bool = False, out_ty: str = "bf16",
          must: list[str] | None = None, split_k: int = 1, hw_cvt: bool = False, a_mn: bool = False,
          b_mn: bool = False, tma: bool = False) -> CompileSpec:
    bm, bn, bk, warps, stages = CONFIGS[name]
    sig = dict(_SIG_BASE)
    sig["a_ptr"], sig["b_ptr"], sig["c_ptr"] = f"*{a_ty}", f"*{b_ty}", f"*{out_ty}"
    for n in _CONSTEXPR_NAMES:
        sig[n] = "constexpr"
    # Unit strides are what the JIT specialises at run time: K-contiguous a and K-major b, or M-contiguous a
    # (A_MN) / N-contiguous b (B_MN); row-major out.
    unit = ["stride_am" if a_mn else "stride_ak", "stride_bn" if b_mn else "stride_bk", "stride_cn"]
    for n in unit:
        sig[n] = "constexpr"
    const = {n: 1 for n in unit}
    const.update({"A_SCALE": a_mode, "B_SCALE": b_mode, "HAS_BIAS": bias, "A_DECODE": a_decode,
                  "B_DECODE": b_decode, "A_E5M2": False, "B_E5M2": False, "DOT_TY": dot_ty, "BLOCK_M": bm,
                  "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "FLATTEN": flatten, "SPLIT_K": split_k,
                  "HW_CVT": hw_cvt, "A_MN": a_mn, "B_MN": b_mn, "USE_TMA": tma})
    if tma:
        sig["a_ptr"], sig["b_ptr"] = f"tensordesc<{a_ty}[{bm}, {bk}]>", f"tensordesc<{b_ty}[{bn}, {bk}]>"
    # The pointers a launch never reads arrive as None (fp8_gemm._gemm_step), which the JIT specialises to a
    # constexpr None: the same here.
    unused = (["bias_ptr"] if not bias else []) + (["ws_ptr"] if split_k == 1 else ["c_ptr"]) + \
        (["as_ptr"] if a_mode == _NO_SCALE else [])
    for n in unused:
        sig[n] = "constexpr"
        const[n] = None
    layout = ("a:M-major " if a_mn else "") + ("b:N-major " if b_mn else "") + ("TMA " if tma else "")
    aligned = tuple(n for n in _ALIGNED_ARGS + ("stride_ak", "stride_bk", "stride_am", "stride_bn")
                    if n not in unit and n not in unused and not (tma and n in ("a_ptr", "b_ptr")))
    return CompileSpec(_fp8_gemm_kernel, sig, const, num_warps=warps, num_stages=stages,
                       label=f"fp8_gemm {name} {layout}a{a_ty}{'(dec)' if a_decode else ''} b{b_ty}"
                             f"{'(dec)' if b_decode else ''} s{a_mode}{b_mode} bias{int(bias)} ->{out_ty}"
                             f" split{split_k}{' cvt' if hw_cvt else ''}",
                       ptx_must_contain=must or [], aligned=aligned)


def gemm_compile_specs(arch: int) -> list[CompileSpec]:
    specs: list[CompileSpec] = []
    wgmma = [r"wgmma\.mma_async\S*\.e4m3\.e4m3"]
    if arch >= 89:
        big = ["h_256", "h_128"] if arch >= 90 else ["ada_128"]
        blk = "h_blk" if arch >= 90 else "blk_ada"
        must = wgmma if arch >= 90 else [r"mma\S*e4m3"]
        for name in big:
            for a_mode, b_mode, bias, out in ((0, 0, False, "bf16"), (1, 1, True, "fp16"), (1, 1, False, "fp32")):
                if name == "h_256" and out == "fp32":
                    continue  # gemm_config never pairs them (shared memory)
                specs.append(_spec(name, arch, a_ty="fp8e4nv", b_ty="fp8e4nv", a_decode=False, b_decode=False,
                                   a_mode=a_mode, b_mode=b_mode, bias=bias, flatten=arch >= 90, out_ty=out,
                                   must=must))
        specs.append(_spec(blk, arch, a_ty="fp8e4nv", b_ty="fp8e4nv", a_decode=False, b_decode=False, a_mode=2,
                           b_mode=2, bias=False, flatten=arch >= 90, must=must))
        if arch >= 90:  # TMA reads: the default of h_256 and h_blk (CONFIG_TMA), NATIVE_TMA for h_128
            for name in big:
                for a_mode, b_mode, bias, out in ((0, 0, False, "bf16"), (1, 1, True, "bf16")):
                    specs.append(_spec(name, arch, a_ty="fp8e4nv", b_ty="fp8e4nv", a_decode=False, b_decode=False,
                                       a_mode=a_mode, b_mode=b_mode, bias=bias, flatten=True, out_ty=out, must=must,
                                       tma=True))
            for a_mode, b_mode in ((2, 1), (2, 2), (1, 2)):
                specs.append(_spec(blk, arch, a_ty="fp8e4nv", b_ty="fp8e4nv", a_decode=False, b_decode=False,
                                   a_mode=a_mode, b_mode=b_mode, bias=False, flatten=True, must=must, tma=True))
        for name in ("small_16", "small_16_n32", "small_32", "small_64"):
            for split in (1, 2):  # the small configs split K when N alone gives too few programs
                specs.append(_spec(name, arch, a_ty="fp8e4nv", b_ty="fp8e4nv", a_decode=False, b_decode=False,
                                   a_mode=1, b_mode=1, bias=True, split_k=split))
    # Weight-only (small M on every arch; every M on sm_80) and the sm_80 all-decoded path. sm_89+ converts
    # the fp8 weights with the hardware instruction (HW_CVT), sm_80 decodes the bits.
    hw = arch >= 89
    for name in ("small_16", "small_16_n32", "small_32", "small_64"):
        for a_ty, dot in (("fp16", tl.float16), ("bf16", tl.bfloat16)):
            for split in (1, 2):
                specs.append(_spec(name, arch, a_ty=a_ty, b_ty="fp8e4nv" if hw else "u8", a_decode=False,
                                   b_decode=True, a_mode=_NO_SCALE, b_mode=1, bias=True, dot_ty=dot, out_ty=a_ty,
                                   split_k=split, hw_cvt=hw))
    if arch < 89:
        for a_ty, dot in (("fp16", tl.float16), ("bf16", tl.bfloat16)):
            specs.append(_spec("amp_128", arch, a_ty=a_ty, b_ty="u8", a_decode=False, b_decode=True,
                               a_mode=_NO_SCALE, b_mode=1, bias=True, dot_ty=dot, out_ty=a_ty))
        for a_mode, b_mode, name in ((1, 1, "amp_128"), (2, 2, "amp_blk")):
            specs.append(_spec(name, arch, a_ty="u8", b_ty="u8", a_decode=True, b_decode=True, a_mode=a_mode,
                               b_mode=b_mode, bias=False))
    # Other operand layouts, read in the kernel (16-bit dots take MN-major operands): a contiguous [K, N]
    # FP8 weight (B_MN) and a column-major activation (A_MN) on the weight-only path, both on sm_80's
    # all-decoded path. (The native FP8 path copies MN-major operands K-major first: _transpose_kernel.)
    wo_b = "fp8e4nv" if hw else "u8"
    for name, a_ty, dot, split in (("small_16", "fp16", tl.float16, 1), ("small_32", "fp16", tl.float16, 1),
                                   ("small_64", "fp16", tl.float16, 1), ("small_16", "bf16", tl.bfloat16, 2),
                                   ("small_16_n32", "fp16", tl.float16, 1)):
        specs.append(_spec(name, arch, a_ty=a_ty, b_ty=wo_b, a_decode=False, b_decode=True, a_mode=_NO_SCALE,
                           b_mode=1, bias=True, dot_ty=dot, out_ty=a_ty, split_k=split, hw_cvt=hw, b_mn=True))
    specs.append(_spec("small_16", arch, a_ty="fp16", b_ty=wo_b, a_decode=False, b_decode=True, a_mode=_NO_SCALE,
                       b_mode=1, bias=False, out_ty="fp16", hw_cvt=hw, a_mn=True))
    if arch < 89:
        specs.append(_spec("amp_128", arch, a_ty="fp16", b_ty="u8", a_decode=False, b_decode=True,
                           a_mode=_NO_SCALE, b_mode=1, bias=True, out_ty="fp16", b_mn=True))
        for a_mn, b_mn in ((False, True), (True, False)):
            specs.append(_spec("amp_128", arch, a_ty="u8", b_ty="u8", a_decode=True, b_decode=True, a_mode=1,
                               b_mode=1, bias=False, a_mn=a_mn, b_mn=b_mn))
    else:
        br, bc, warps = TRANSPOSE_BLOCK
        for ty in ("fp8e4nv", "fp8e5"):
            # [K, N] row-major -> K-major (b), and [M, K] column-major -> row-major (a)
            for src_unit, dst_unit in (("stride_xc", "stride_yr"), ("stride_xr", "stride_yc")):
                sig = {"x_ptr": f"*{ty}", "y_ptr": f"*{ty}", "R": "i32", "C": "i32", "stride_xr": "i64",
                       "stride_xc": "i64", "stride_yr": "i64", "stride_yc": "i64", "BLOCK_R": "constexpr",
                       "BLOCK_C": "constexpr"}
                sig[src_unit] = sig[dst_unit] = "constexpr"
                specs.append(CompileSpec(
                    _transpose_kernel, sig, {src_unit: 1, dst_unit: 1, "BLOCK_R": br, "BLOCK_C": bc},
                    num_warps=warps, label=f"fp8_gemm kmajor_copy {ty} {src_unit}=1 -> {dst_unit}=1",
                    aligned=tuple(n for n in ("x_ptr", "y_ptr", "R", "C", "stride_xr", "stride_xc", "stride_yr",
                                              "stride_yc") if n not in (src_unit, dst_unit))))
    # The split-K reduction + epilogue, for each scale mode pair the split small configs meet.
    rbm, rbn = REDUCE_BLOCK
    for a_mode, b_mode, out in ((1, 1, "bf16"), (0, 0, "bf16"), (_NO_SCALE, 1, "fp16"), (_NO_SCALE, 0, "bf16")):
        specs.append(CompileSpec(
            _splitk_reduce_kernel,
            {"ws_ptr": "*fp32", "c_ptr": f"*{out}", "as_ptr": "constexpr" if a_mode == _NO_SCALE else "*fp32",
             "bs_ptr": "*fp32", "bias_ptr": f"*{out}",
             "M": "i32", "N": "i32", "stride_cm": "i64", "stride_cn": "constexpr", "stride_asm": "i64",
             "stride_bsn": "i64", "out_factor": "fp32", "SPLIT": "constexpr", "A_SCALE": "constexpr",
             "B_SCALE": "constexpr", "HAS_BIAS": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr"},
            {"stride_cn": 1, "SPLIT": 4, "A_SCALE": a_mode, "B_SCALE": b_mode, "HAS_BIAS": True, "BLOCK_M": rbm,
             "BLOCK_N": rbn, **({"as_ptr": None} if a_mode == _NO_SCALE else {})}, num_warps=4,
            label=f"fp8_gemm splitk_reduce s{a_mode}{b_mode} ->{out}",
            aligned=("ws_ptr", "c_ptr", "N", "stride_cm")))
    return specs


#: Arguments Triton's JIT marks 16-divisible at run time for aligned torch tensors (pointers, sizes; the
#: non-unit strides are added per spec). Without them in the ahead-of-time build the loads are not vectorised,
#: the software pipeline collapses to one stage and the 128x256 tile spills (30 of 39 specs did), which never
#: happens at run time.
_ALIGNED_ARGS = ("a_ptr", "b_ptr", "c_ptr", "stride_cm", "M", "N", "K")


__all__ = ["quantize_compile_specs", "gemm_compile_specs", "gemm_tuning_entry"]
