#!/usr/bin/env bash
# One batched GPU job: tests, probes, sweeps, benchmarks and tuning, by section.
#
#   bash benchmarks/scripts/gpu_run.sh OUTDIR tests|probe|gmlp_sweep|fp8|bench|tune ...
#
# Each section writes its log under OUTDIR and prints a short summary last. Sections run in the order given.
set -uo pipefail
out=${1:?usage: gpu_run.sh OUTDIR SECTION...}
shift
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-.}:. PYTHONUNBUFFERED=1
summary=()
for section in "$@"; do
  start=$(date +%s)
  case $section in
    tests)
      timeout 330 python3 -m pytest tests -q -p no:cacheprovider --ignore=tests/test_compile.py --maxfail=40 \
        -W ignore::DeprecationWarning > "$out/gpu_tests.log" 2>&1
      summary+=("tests: $(tail -1 "$out/gpu_tests.log")")
      summary+=("$(grep -E '^(FAILED|ERROR)' "$out/gpu_tests.log" | cut -c1-160 | head -25)")
      ;;
    profile)
      timeout 120 python3 benchmarks/scripts/profile_host.py > "$out/profile.log" 2>&1
      summary+=("$(grep -E '^==' "$out/profile.log")")
      ;;
    tests_fp8)
      timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_fp8_gemm.py tests/test_fp8_quantize.py \
        tests/test_fp8_linear.py tests/test_compute_fp8.py "tests/test_gated_mlp.py::test_compile_check_sm90" \
        -W ignore::DeprecationWarning > "$out/gpu_tests_fp8.log" 2>&1
      summary+=("tests_fp8: $(tail -1 "$out/gpu_tests_fp8.log")")
      summary+=("$(grep -E '^(FAILED|ERROR)' "$out/gpu_tests_fp8.log" | cut -c1-160 | head -25)")
      ;;
    probe)
      timeout 120 python3 benchmarks/scripts/probe_rmsnorm_rope.py > "$out/probe.log" 2>&1
      summary+=("$(cat "$out/probe.log" | tail -5)")
      ;;
    gmlp_sweep)
      TRITON_OPS_GATED_MLP_SWEEP=1 timeout 300 python3 -m triton_ops.cli bench gated_mlp \
        --shapes 16384x4096 'decode 128' 'decode 16x' --out "$out/gm" --no-plots \
        --skip torch_compile_max torch_compile --no-progress --no-merge > "$out/gmlp_sweep.log" 2>&1
      summary+=("$(grep -E '^\| .*\*\*triton_ops|cublas|copy \|' "$out/gmlp_sweep.log" | cut -c1-150 | head -60)")
      ;;
    fp8)
      timeout 300 python3 -m triton_ops.cli bench fp8 --out "$out/fp8" --no-plots --skip torch_compile_max \
        --no-progress --no-merge > "$out/fp8_bench.log" 2>&1
      summary+=("$(grep -E '^\|' "$out/fp8_bench.log" | cut -c1-170 | head -80)")
      ;;
    bench_rmsnorm|bench_gated_mlp)
      op=${section#bench_}; [ "$op" = rmsnorm ] && op=rmsnorm_rope
      timeout 480 python3 -m triton_ops.cli bench "$op" --out "$out/r_$op" --no-progress --no-merge \
        --no-plots > "$out/bench_$op.log" 2>&1
      rm -f "$out/r_$op"/*.csv "$out/r_$op"/*.md  # rebuilt from the JSON here; at most 8 files come back
      summary+=("$(grep -E '^\| .*(triton_ops\*\*|compile|copy |cublas)' "$out/bench_$op.log" | cut -c1-150)")
      ;;
    bench_fp8)
      # The FP8 targets are against torch.compile's default mode, cuBLAS and cuBLASLt: max-autotune skipped.
      timeout 300 python3 -m triton_ops.cli bench fp8 --out "$out/r_fp8" --no-progress --no-merge \
        --skip torch_compile_max --no-plots > "$out/bench_fp8.log" 2>&1
      rm -f "$out/r_fp8"/*.csv "$out/r_fp8"/*.md
      summary+=("$(grep -E '^\|' "$out/bench_fp8.log" | grep -v -- '---' | cut -c1-150)")
      ;;
    tune)
      timeout 300 python3 -m triton_ops.cli tune --shapes rmsnorm_rope=8x2048x4096x64 gated_mlp=16384x4096x11264 \
        fp8_gemm=4096x4096x4096 --max-configs 12 --time-budget 40 --cache-dir /tmp/tt-tune --out "$out/tune" \
        --no-progress > "$out/tune.log" 2>&1
      rm -f "$out/tune"/*.md
      summary+=("$(tail -20 "$out/tune.log")")
      ;;
    *) echo "unknown section $section"; exit 2 ;;
  esac
  summary+=("[$section took $(( $(date +%s) - start )) s]")
done
printf '%s\n' "${summary[@]}"
