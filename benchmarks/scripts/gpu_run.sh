#!/usr/bin/env bash
# One batched GPU job: tests, host profile, sweeps, benchmarks and tuning, by section.
#
#   bash benchmarks/scripts/gpu_run.sh OUTDIR SECTION...
#   SECTION: tests | liger | host | model | model_compile | profile | rmsnorm_sweep | gmlp_sweep | bench_rmsnorm_rope | bench_gated_mlp | bench_fp8 | tune
#
# Each section writes its log under OUTDIR and prints a short summary last. Sections run in the order given.
# Bench sections keep only the results JSON (the device machine returns at most 8 files); rebuild the
# Markdown, CSV and plots with benchmarks/scripts/combine_results.py.
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
      # --timeout per test so that one hung test is named instead of eating the whole run; -rfE lists
      # every failure and error in the short summary at the end of the log.
      timeout "${TESTS_TIMEOUT:-480}" python3 -m pytest tests -q -n 8 -p no:cacheprovider --ignore=tests/test_compile.py \
        --timeout "${TEST_TIMEOUT:-180}" -rfE -W ignore::DeprecationWarning ${TESTS_ARGS:-} > "$out/gpu_tests.log" 2>&1
      summary+=("tests: $(tail -1 "$out/gpu_tests.log")")
      summary+=("$(grep -E '^(FAILED|ERROR)' "$out/gpu_tests.log" | cut -c1-200 | head -80)")
      ;;
    liger)
      # Liger-Kernel (pure Python + Triton) as a baseline of the training cases, from a wheel carried in .whl/.
      python3 -m pip install -q --no-deps --no-index .whl/liger_kernel-*.whl > "$out/liger.log" 2>&1
      summary+=("liger: $(python3 -c 'import liger_kernel.transformers as m; print("importable")' 2>&1 | tail -1)")
      ;;
    host)
      timeout 240 python3 -m triton_ops.cli bench host --out "$out" > "$out/host.log" 2>&1
      summary+=("$(grep -E '^\|' "$out/host.log" | grep -v -- '---')")
      ;;
    model|model_compile)
      # One process per (model, work): a failing system cannot take the others down with it.
      # model: eager systems of both models; model_compile: the torch.compile systems for the works in
      # MODEL_COMPILE_WORK (each compile takes tens of seconds).
      : > "$out/$section.log"
      if [ "$section" = model ]; then
        works=("prefill 1x2048" "prefill 8x2048" "decode b1 " "decode b8 " "decode b64"); extra=(--quick)
      else
        IFS=';' read -r -a works <<< "${MODEL_COMPILE_WORK:-prefill 1x2048;decode b8 }"; extra=(compile)
      fi
      i=0
      for m in ${MODEL_FAMILIES:-qwen3 llama}; do
        for w in "${works[@]}"; do
          i=$((i + 1))
          timeout 300 python3 -m triton_ops.cli bench model "$m" "$w" "${extra[@]}" --out "$out/${section}_$i" \
            >> "$out/$section.log" 2>&1
        done
      done
      python3 - "$out" "$section" <<'PY'
import glob, json, sys
out, section = sys.argv[1], sys.argv[2]
rows, env = [], None
for f in sorted(glob.glob(f"{out}/{section}_*/*-model.json")):
    d = json.load(open(f)); env = d["env"]; rows += d["rows"]
json.dump({"env": env, "command": f"benchmarks/scripts/gpu_run.sh OUT {section}", "rows": rows},
          open(f"{out}/{section}.json", "w"), indent=1)
from triton_ops.benchmark.model import model_markdown
print(model_markdown(rows))
PY
      rm -rf "$out/${section}"_*
      ;;
    profile)
      timeout 120 python3 benchmarks/scripts/profile_host.py > "$out/profile.log" 2>&1
      summary+=("$(grep -E '^==' "$out/profile.log")")
      ;;
    rmsnorm_sweep)
      timeout 300 python3 benchmarks/scripts/sweep_rmsnorm_rope.py --out "$out" > "$out/rmsnorm_sweep.log" 2>&1
      summary+=("$(tail -70 "$out/rmsnorm_sweep.log")")
      ;;
    gmlp_sweep)
      TRITON_OPS_GATED_MLP_SWEEP=1 timeout 300 python3 -m triton_ops.cli bench gated_mlp \
        --shapes 16384x4096 'decode 128' 'decode 16x' --out "$out/gm" --no-plots \
        --skip torch_compile_max torch_compile --no-progress --no-merge > "$out/gmlp_sweep.log" 2>&1
      summary+=("$(grep -E '^\| .*\*\*triton_ops|cublas|copy \|' "$out/gmlp_sweep.log" | cut -c1-150 | head -60)")
      ;;
    bench_*)
      op=${section#bench_}
      # The FP8 targets are against torch.compile's default mode, cuBLAS and cuBLASLt: max-autotune skipped.
      skip=(); [ "$op" = fp8 ] && skip=(--skip torch_compile_max)
      timeout 480 python3 -m triton_ops.cli bench "$op" --out "$out/r_$op" --no-progress --no-merge \
        --no-plots "${skip[@]}" > "$out/bench_$op.log" 2>&1
      rm -f "$out/r_$op"/*.csv "$out/r_$op"/*.md
      summary+=("$(grep -E '^\|' "$out/bench_$op.log" | grep -v -- '---' | cut -c1-150)")
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
