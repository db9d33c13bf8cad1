#!/usr/bin/env bash
# The GPU benchmarks, shortened to end within 8 minutes on one H100, then their targets:
#
#   bash scripts/gpu_bench.sh OUTDIR            # after scripts/gpu_check.sh (its build is reused when present)
#   bash scripts/gpu_bench.sh --dry-run OUTDIR  # anywhere: each benchmark --quick on the CPU, same time boxes
#
# Stages (seconds; GPU_STAGE_BUDGET_<name> overrides one, 0 skips it):
#   facts                30  GPU, driver, torch (a first import of CUDA torch on a fresh machine)
#   build               140  the extension for this GPU's architecture (incremental: seconds when already built)
#   sgdf                 75  bench_sgdf.py: 1e8 float32 in 1000 tensors (and replayed from CUDA graphs)
#   sgdf_small           35    1e6 in 200 tensors (the launch-bound regime)
#   sgdf_small_2groups   35    the same in two param groups (one grouped kernel call)
#   sgdf_storage         75    --storage: bfloat16 state, stochastic rounding, master weights (1e8 in 1000)
#   erd                  40  bench_erd.py
#   ntk                  40  bench_ntk.py
#   targets              10  benchmarks/targets.py over the results: its verdict lines go into summary.txt
# Fewer rounds than the benchmarks' defaults (medians of 5 interleaved rounds instead of 7-15). OUTDIR ends up with
# summary.txt and logs.tar.gz (every log and results file) only, whatever happens (scripts/gpu_stages.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu_stages.sh

BUDGET=([facts]=30 [build]=140 [sgdf]=75 [sgdf_small]=35 [sgdf_small_2groups]=35 [sgdf_storage]=75 [erd]=40
        [ntk]=40 [targets]=10)

# bench NAME SCRIPT ARGS...: one benchmark, its results files into the logs (so into the tarball)
bench() {
  local script=$2; shift 2
  if [ "$DRY_RUN" = 1 ]; then
    "$PY" "benchmarks/$script" "$@" --device cpu --quick --out "$WORK/logs"
  else
    "$PY" "benchmarks/$script" "$@" --device cuda --out "$WORK/logs"
  fi
}

targets() {
  "$PY" benchmarks/targets.py "$WORK/logs" --device "$([ "$DRY_RUN" = 1 ] && echo cpu || echo cuda)"
}

digest_bench() {  # the benchmark's headline lines
  grep -E '^- |^wrote|composite/fused|batched .*x\)|Error|error' "$2" | sed "s|$WORK/||" | cut -c1-200 | head -8
}
digest_targets() { cat "$2"; }

stages_begin "$OUTDIR" "gpu_bench.sh$([ "$DRY_RUN" = 1 ] && echo ' --dry-run'):"
export WORK
export -f facts find_sanitizer build bench targets

if stage facts digest_facts facts && stage build digest_build build; then
  # the large-model regime (1e8 float32 in ~1000 tensors) and the launch-bound small one (1e6 in 200); --threads:
  # the dry run's CPU sweep of one thread count
  sgdf_args=(--no-compile --rounds 5 --iters 5 --threads 1)
  stage sgdf digest_bench bench sgdf bench_sgdf.py --numel 1e8 --tensors 1000 "${sgdf_args[@]}"
  stage sgdf_small digest_bench bench sgdf bench_sgdf.py --numel 1e6 --tensors 200 "${sgdf_args[@]}" \
    --suffix _small
  # the same in two param groups (as training scripts pass weights with and without decay)
  stage sgdf_small_2groups digest_bench bench sgdf bench_sgdf.py --numel 1e6 --tensors 200 --groups 2 \
    "${sgdf_args[@]}" --suffix _small_2groups
  # bf16 storage options: bytes per parameter and step times (the bf16-state step must not be slower)
  stage sgdf_storage digest_bench bench sgdf bench_sgdf.py --storage --numel 1e8 --tensors 1000 --rounds 3 --iters 5 \
    --threads 1
  stage erd digest_bench bench erd bench_erd.py --repeats 5 --inner 20
  stage ntk digest_bench bench ntk bench_ntk.py --repeats 5
  stage targets digest_targets targets
else
  failed_stage=$STAGE_NAME
  for name in $([ "$failed_stage" = facts ] && echo build) sgdf sgdf_small sgdf_small_2groups sgdf_storage erd ntk \
      targets; do
    skip_stage "$name" "the $failed_stage stage did not pass"
  done
fi
stages_end
