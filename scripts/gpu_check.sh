#!/usr/bin/env bash
# Everything a GPU machine must confirm, in one command that ends within 8 minutes on one H100:
#
#   bash scripts/gpu_check.sh OUTDIR            # on a machine with an NVIDIA GPU
#   bash scripts/gpu_check.sh --dry-run OUTDIR  # anywhere: each stage's CPU counterpart, same time boxes
#
# For a machine where CUDA torch, pytest, hypothesis and scipy are installed and nothing can be downloaded
# (pytest-xdist and pytest-timeout are used where installed). Stages, most important first, each under its own
# time box (seconds; GPU_STAGE_BUDGET_<name> overrides one, 0 skips it):
#   facts          30  GPU, driver, torch, compute-sanitizer (dry run: the CPU and torch); a first `import torch`
#                      with CUDA on a fresh machine reads GBs of libraries, and a failed facts stage skips all
#   build         140  the extension in place for this GPU's architecture only (dry run: CPU-only, incremental)
#   tests         100  the CUDA tests (`-m cuda`) but the torch.compile ones, SGDF_ERD_REQUIRE_CUDA=1 so none can
#                      pass by skipping, in parallel (pytest-xdist), 60 s per test (dry run: a few CPU tests)
#   memcheck       60  compute-sanitizer over scripts/cuda_sanitizer_workload.py (every kernel variant, each
#   racecheck      50    result compared with the CPU), checking this project's kernels only (initcheck: all);
#   synccheck      30    memcheck without torch's caching allocator (every tensor its own allocation, so overruns
#   initcheck      30    between tensors show). Dry run: skipped, with the reason
#   compile_tests  40  the CUDA tests of torch.compile (dry run: one CPU one)
# A failed build (or no GPU) skips the stages after it. OUTDIR ends up with summary.txt and logs.tar.gz only,
# whatever happens (scripts/gpu_stages.sh); the exit status is non-zero when a stage failed or timed out.
# Environment: PYTHON (default python3), MAX_JOBS (build jobs, default all cores), XDIST_WORKERS (default up to 12).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu_stages.sh

BUDGET=([facts]=30 [build]=140 [tests]=100 [memcheck]=60 [racecheck]=50 [synccheck]=30 [initcheck]=30
        [compile_tests]=40)
# dry run: a few quick CPU tests (the launch-table walk, the CUDA test file's CPU cases)
DRY_RUN_TESTS=${DRY_RUN_TESTS:-"chunk_walk or test_sgdf_cuda"}
KERNEL_FILTER=kns=sgdf_erd  # every kernel of this project is in namespace sgdf_erd (so in its mangled name)

# pytest options that need plugins, where those are installed
pytest_plugin_options() {  # pytest_plugin_options PER_TEST_TIMEOUT
  if "$PY" -c 'import xdist' 2>/dev/null && [ "$DRY_RUN" = 0 ]; then
    local cores
    cores=$(nproc)
    echo "-n ${XDIST_WORKERS:-$((cores > 12 ? 12 : cores))}"
  fi
  if "$PY" -c 'import pytest_timeout' 2>/dev/null; then echo "--timeout $1"; fi
}

pytest_stage() {  # pytest_stage NAME PER_TEST_TIMEOUT MARKERS [-k SELECTION]
  local name=$1 per_test=$2 markers=$3; shift 3
  local require=()
  [ "$DRY_RUN" = 1 ] || require=(env SGDF_ERD_REQUIRE_CUDA=1 SGDF_ERD_BIGMEM=1)
  # shellcheck disable=SC2046  # the plugin options are words
  "${require[@]}" "$PY" -m pytest tests -m "$markers" "$@" -v -rfEs -p no:cacheprovider \
    $(pytest_plugin_options "$per_test") --junitxml="$WORK/logs/$name.xml"
}

tests() {
  if [ "$DRY_RUN" = 1 ]; then
    pytest_stage tests 60 "not cuda and not compile" -k "$DRY_RUN_TESTS"
  else
    pytest_stage tests 60 "cuda and not compile"
  fi
}

compile_tests() {
  # one inductor compile process per pytest-xdist worker, instead of a pool of one per core in each of them
  export TORCHINDUCTOR_COMPILE_THREADS=1
  if [ "$DRY_RUN" = 1 ]; then
    pytest_stage compile_tests 120 "compile and not cuda" -k "checks_before_anything_changes"
  else
    pytest_stage compile_tests 120 "cuda and compile"
  fi
}

# compute-sanitizer TOOL over the workload, with the options this compute-sanitizer has (read from its --help)
sanitizer() {
  local tool=$1 sanitizer help
  sanitizer=$(find_sanitizer)
  help="$WORK/logs/compute_sanitizer_help.txt"
  [ -s "$help" ] || "$sanitizer" --help >"$help" 2>&1
  local options=(--tool "$tool" --error-exitcode 97)
  # this project's kernels only: torch's own are not ours to check, and instrumenting them costs minutes. Not for
  # initcheck: it learns which bytes are initialised from the kernels it instruments, so it must see torch's
  # kernels' writes too (filling the state, random gradients), or our kernels' reads of them would be reported.
  if [ "$tool" = initcheck ]; then
    echo "note: initcheck instruments every kernel (it must see torch's kernels' writes)"
  elif grep -q -- '--kernel-name ' "$help"; then
    options+=(--kernel-name "$KERNEL_FILTER")
  elif grep -q -- '--filter ' "$help"; then
    options+=(--filter "$KERNEL_FILTER")
  else
    echo "note: this compute-sanitizer has no kernel-name filter: every kernel is checked"
  fi
  # CUDA API errors that torch handles itself (probing calls) are not errors of ours
  grep -q -- '--report-api-errors' "$help" && options+=(--report-api-errors no)
  grep -q -- '--target-processes' "$help" && options+=(--target-processes application-only)
  # the target connects when CUDA starts, after Python has imported torch: no 10 s limit (the stage has its own)
  grep -q -- '--launch-timeout' "$help" && options+=(--launch-timeout 0)
  local env=()
  # without the caching allocator every tensor is its own allocation, so memcheck sees overruns between tensors
  [ "$tool" = memcheck ] && env=(PYTORCH_NO_CUDA_MEMORY_CACHING=1)
  echo "+ ${env[*]} $sanitizer ${options[*]} $PY scripts/cuda_sanitizer_workload.py"
  env "${env[@]}" "$sanitizer" "${options[@]}" "$PY" scripts/cuda_sanitizer_workload.py
}

digest_pytest() { "$PY" scripts/gpu_stage_digest.py pytest "$2" "$WORK/logs/$1.xml"; }
digest_sanitizer() { "$PY" scripts/gpu_stage_digest.py sanitizer "$2"; }

stages_begin "$OUTDIR" "gpu_check.sh$([ "$DRY_RUN" = 1 ] && echo ' --dry-run'):"
export WORK KERNEL_FILTER DRY_RUN_TESTS
export -f facts find_sanitizer build pytest_plugin_options pytest_stage tests compile_tests sanitizer

if stage facts digest_facts facts && stage build digest_build build; then
  STAGE_SIGNAL=INT stage tests digest_pytest tests
  for tool in memcheck racecheck synccheck initcheck; do
    if [ "$DRY_RUN" = 1 ]; then
      skip_stage "$tool" "dry run: compute-sanitizer needs a GPU (tests/test_gpu_scripts.py runs the workload CPU against CPU)"
    elif [ -z "$(find_sanitizer)" ]; then
      skip_stage "$tool" "compute-sanitizer not found (PATH, /usr/local/cuda/bin)"
    else
      stage "$tool" digest_sanitizer sanitizer "$tool"
    fi
  done
  STAGE_SIGNAL=INT stage compile_tests digest_pytest compile_tests
else
  failed_stage=$STAGE_NAME
  for name in $([ "$failed_stage" = facts ] && echo build) tests memcheck racecheck synccheck initcheck compile_tests; do
    skip_stage "$name" "the $failed_stage stage did not pass"
  done
fi
stages_end
