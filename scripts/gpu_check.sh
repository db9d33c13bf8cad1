#!/usr/bin/env bash
# Everything a GPU machine must confirm, in one command (target: under 9 minutes on one H100):
#
#   bash scripts/gpu_check.sh OUTDIR
#
# For a machine with an NVIDIA GPU where CUDA torch, pytest, hypothesis, scipy and scikit-learn are installed and
# nothing can be downloaded. It builds the extension in place for this GPU's architecture only, prints build_info,
# runs the whole test suite with CUDA required (SGDF_ERD_REQUIRE_CUDA=1: a test that would skip for want of a GPU
# fails instead), runs compute-sanitizer memcheck / racecheck / synccheck / initcheck over a short workload of every
# kernel (scripts/cuda_sanitizer_workload.py), then the three benchmarks on CUDA, writing their results files into
# OUTDIR, and ends with a one-screen summary. Every step runs even after an earlier one failed (so one run shows all
# problems), except that a failed build stops it; the exit status is non-zero when anything failed.
# Environment: PYTHON (default python3), MAX_JOBS (default: all cores), SKIP_BENCH=1 (tests and sanitizers only).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS
declare -a summary
failed=0

note() { summary+=("$(printf '%-12s %s' "$1" "$2")"); }
elapsed() { echo "$((SECONDS - start))s"; }

echo "== GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt" || {
  echo "gpu_check.sh: nvidia-smi found no GPU" >&2; exit 1; }
arch=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())') || exit 1

echo "== build (sm_${arch/./} only) $(elapsed)"
if ! SGDF_ERD_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  echo "gpu_check.sh: the build failed (full log: $OUT/build.log)" >&2
  exit 1
fi
"$PY" -m sgdf_erd.info | tee "$OUT/build_info.json"

echo "== tests $(elapsed)"
# SGDF_ERD_BIGMEM=1: the tensor over 2^31 elements (~17 GB of GPU memory) runs too
SGDF_ERD_REQUIRE_CUDA=1 SGDF_ERD_BIGMEM=1 "$PY" -m pytest tests -q -rs -p no:cacheprovider \
  --junitxml="$OUT/tests.xml" 2>&1 | tee "$OUT/tests.log"
status=${PIPESTATUS[0]}
counts=$(grep -E '(passed|failed|error).* in [0-9.]+s' "$OUT/tests.log" | tail -1 | tr -d '=')
gpu_skips=$(grep -ciE 'SKIPPED.*(GPU|CUDA)' "$OUT/tests.log")
note tests "${counts:-no summary line} ($gpu_skips skipped for want of a GPU; two-GPU tests may skip on one GPU)"
[ "$status" -eq 0 ] || failed=1

echo "== compute-sanitizer $(elapsed)"
for tool in memcheck racecheck synccheck initcheck; do
  extra=()
  [ "$tool" = initcheck ] && extra=(--track-unused-memory no)
  # without the caching allocator every tensor is its own allocation, so memcheck sees overruns between tensors
  PYTORCH_NO_CUDA_MEMORY_CACHING=$([ "$tool" = memcheck ] && echo 1 || echo 0) \
    compute-sanitizer --tool "$tool" --error-exitcode 97 "${extra[@]}" \
    "$PY" scripts/cuda_sanitizer_workload.py >"$OUT/sanitizer_$tool.log" 2>&1
  status=$?
  errors=$(grep -oE 'ERROR SUMMARY: [0-9]+' "$OUT/sanitizer_$tool.log" | grep -oE '[0-9]+$' | tail -1)
  note "$tool" "${errors:-?} errors (exit $status; $OUT/sanitizer_$tool.log)"
  if [ "$status" -ne 0 ] || [ "${errors:-1}" != 0 ]; then failed=1; tail -20 "$OUT/sanitizer_$tool.log"; fi
done

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  echo "== benchmarks $(elapsed)"
  bench() {
    local name=$1; shift
    if "$PY" "$@" 2>&1 | tee "$OUT/bench_$name.log"; then :; else failed=1; note "$name" "benchmark failed"; fi
  }
  # the large-model regime (1e8 float32 in ~1000 tensors) and the launch-bound small one (1e6 in 200)
  bench sgdf benchmarks/bench_sgdf.py --device cuda --numel 1e8 --tensors 1000 --no-compile --out "$OUT"
  bench sgdf_small benchmarks/bench_sgdf.py --device cuda --numel 1e6 --tensors 200 --no-compile --suffix _small \
    --out "$OUT"
  # the same in two param groups (as training scripts pass weights with and without decay)
  bench sgdf_small_2groups benchmarks/bench_sgdf.py --device cuda --numel 1e6 --tensors 200 --groups 2 --no-compile \
    --suffix _small_2groups --out "$OUT"
  # bf16 storage options: bytes per parameter and step times (the bf16-state step must not be slower)
  bench sgdf_storage benchmarks/bench_sgdf.py --device cuda --storage --numel 1e8 --tensors 1000 --out "$OUT"
  bench erd benchmarks/bench_erd.py --device cuda --repeats 11 --out "$OUT"
  bench ntk benchmarks/bench_ntk.py --device cuda --out "$OUT"
  echo "== targets $(elapsed)"
  "$PY" benchmarks/targets.py "$OUT" | tee "$OUT/targets.txt"
  case ${PIPESTATUS[0]} in
    0) note targets "all met ($OUT/targets.txt)" ;;
    *) note targets "MISSED or missing: see $OUT/targets.txt"; failed=1 ;;
  esac
fi

echo
echo "== summary ($(elapsed), $(head -1 "$OUT/gpu.txt"))"
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "gpu_check.sh: FAILED (logs in $OUT)" >&2
  exit 1
fi
echo "gpu_check.sh: all passed"
