#!/usr/bin/env bash
# Builds sgdf-erd from source against the oldest torch it supports (setup.py's TARGET_TORCH, torch 2.11: C++17 and
# older stable headers; the GPU machine's torch too) and runs the op tests with that build. Wheels are built against
# a newer torch, so without this a source build there (pip install from source, scripts/gpu_check.sh) could fail
# to compile unnoticed. Builds from a copy of the tree: setup.py writes python/sgdf_erd/_built_with.py in place.
#
#   bash scripts/check_oldest_torch_build.sh   # CPU kernels; SGDF_ERD_CUDA=1 also compiles the CUDA ones
#
# Environment: OLDEST_TORCH_SPEC (default torch==2.11.0), OLDEST_TORCH_VENV (default build/venv-oldest-torch),
# SGDF_ERD_CUDA (0), TORCH_CUDA_ARCH_LIST (9.0: one architecture is enough to compile every kernel), MAX_JOBS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
SPEC=${OLDEST_TORCH_SPEC:-torch==2.11.0}
VENV=${OLDEST_TORCH_VENV:-build/venv-oldest-torch}
WORK=build/oldest-torch
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
VENV=$(cd "$VENV" && pwd)
echo "== $SPEC in $VENV"
"$VENV/bin/python" -m pip install -q "$SPEC" numpy pytest hypothesis scipy setuptools ninja
rm -rf "$WORK" && mkdir -p "$WORK/src"
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$WORK/src"
echo "== building against $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') (SGDF_ERD_CUDA=${SGDF_ERD_CUDA:-0})"
(cd "$WORK/src" && PATH="$VENV/bin:$PATH" SGDF_ERD_CUDA=${SGDF_ERD_CUDA:-0} \
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" setup.py -q build_ext --inplace)
echo "== op tests with that build"
(cd "$WORK/src" && PYTHONPATH="$PWD/python" "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_sgdf_op.py tests/test_erd_loss.py tests/test_ntk_op.py tests/test_native_load.py)
