#!/usr/bin/env bash
# One entry point for a fresh machine: makes .venv, installs torch and the test/demo dependencies, builds the
# extension (again only when csrc/ or setup.py changed), then runs what was asked.
#
#   bash scripts/run.sh demo [demo args...]   # the main job: python -m sgdf_erd.demo
#   bash scripts/run.sh test [pytest args...] # the test suite: python -m pytest tests
#   bash scripts/run.sh shell                 # only set up; prints how to activate the environment
#
# Environment: TORCH_SPEC (default torch==2.14.1, a CUDA build, so the CUDA kernels compile where nvcc exists;
# torch==2.13.0 is a fast CPU-only choice), SGDF_ERD_CUDA=0|1 (force CPU-only / require CUDA kernels),
# TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

if ! python -c "import torch" 2>/dev/null; then
  echo "== installing $TORCH_SPEC and dependencies (a CUDA torch is several GB: a few minutes)"
  python -m pip install -q "$TORCH_SPEC"
fi
python -m pip install -q numpy pytest hypothesis scipy scikit-learn matplotlib tqdm ninja setuptools wheel
cmd=${1:-test}
if [ "$cmd" = test ]; then
  # tests/test_integrations.py runs SGDF inside Hugging Face Trainer; tests/test_diffusers.py inside diffusers
  python -m pip install -q transformers accelerate diffusers
fi

stamp="$VENV/.sgdf_erd_build_stamp"
want=$( (find csrc -type f -print0 | sort -z | xargs -0 sha1sum; sha1sum setup.py; echo "cuda=${SGDF_ERD_CUDA:-auto}") | sha1sum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! python -c "import sgdf_erd" 2>/dev/null; then
  echo "== building sgdf-erd (the CUDA kernels take several minutes on 2 cores)"
  MAX_JOBS=${MAX_JOBS:-2} python -m pip install --no-build-isolation -e . -q
  echo "$want" > "$stamp"
fi
python -m sgdf_erd.info

shift || true
case "$cmd" in
  demo) exec python -m sgdf_erd.demo "$@" ;;
  test) exec python -m pytest tests -q "$@" ;;
  shell) echo "environment ready: . $VENV/bin/activate" ;;
  *) echo "usage: bash scripts/run.sh demo|test|shell [args...]" >&2; exit 2 ;;
esac
