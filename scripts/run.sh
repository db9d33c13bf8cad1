#!/usr/bin/env bash
# One entry point for a fresh machine: makes .venv, installs torch and the test/demo dependencies, builds the
# extension (again only when csrc/ or setup.py changed), then runs what was asked.
#
#   bash scripts/run.sh demo [demo args...]   # the main job: python -m sgdf_erd.demo
#   bash scripts/run.sh test [pytest args...] # the test suite: python -m pytest tests
#   bash scripts/run.sh shell                 # only set up; prints how to activate the environment
#
# Without an NVIDIA GPU (and SGDF_ERD_CUDA not 1) it installs a CPU build of torch and builds CPU-only: CUDA torch
# and CUDA kernels would only cost minutes on a machine that cannot run them. With a GPU, or SGDF_ERD_CUDA=1 (CI),
# a CUDA torch and the CUDA kernels.
#
# Environment: TORCH_SPEC (default torch==2.14.1 for CUDA, torch==2.13.0+cpu for CPU-only; pip looks for a "+cpu"
# build on TORCH_CPU_INDEX, default https://download.pytorch.org/whl/cpu, when its own indexes have none),
# SGDF_ERD_CUDA=0|1 (force CPU-only / require CUDA kernels), TORCH_CUDA_ARCH_LIST (default "8.0;9.0"),
# VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
if [ "${SGDF_ERD_CUDA:-}" != 1 ] && ! { nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }; then
  export SGDF_ERD_CUDA=0
  TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
  echo "== no NVIDIA GPU found: CPU build of torch ($TORCH_SPEC) and CPU-only kernels (SGDF_ERD_CUDA=1 to override)"
fi
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

if ! python -c "import torch" 2>/dev/null; then
  echo "== installing $TORCH_SPEC and dependencies (a CUDA torch is several GB: a few minutes)"
  if ! python -m pip install -q "$TORCH_SPEC" 2>/dev/null; then
    case "$TORCH_SPEC" in
      *+cpu*) python -m pip install -q --extra-index-url "$TORCH_CPU_INDEX" "$TORCH_SPEC" ;;
      *) python -m pip install -q "$TORCH_SPEC" ;;  # again, now showing pip's error
    esac
  fi
fi
echo "== installing the test and demo dependencies"
python -m pip install -q numpy pytest hypothesis scipy scikit-learn matplotlib tqdm ninja setuptools wheel
cmd=${1:-test}
if [ "$cmd" = test ]; then
  # tests/test_integrations.py runs SGDF inside Hugging Face Trainer and Lightning; tests/test_diffusers.py inside
  # diffusers
  python -m pip install -q transformers accelerate diffusers lightning
fi

stamp="$VENV/.sgdf_erd_build_stamp"
want=$( (find csrc -type f -print0 | sort -z | xargs -0 sha1sum; sha1sum setup.py; echo "cuda=${SGDF_ERD_CUDA:-auto}") | sha1sum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! python -c "import sgdf_erd" 2>/dev/null; then
  echo "== building sgdf-erd ($([ "${SGDF_ERD_CUDA:-}" = 0 ] && echo "CPU-only" || echo "the CUDA kernels take several minutes on 2 cores"))"
  MAX_JOBS=${MAX_JOBS:-2} python -m pip install --no-build-isolation -e . -q
  echo "$want" > "$stamp"
fi
python -m sgdf_erd.info

shift || true
echo "== run: $cmd $*"
case "$cmd" in
  demo) exec python -m sgdf_erd.demo "$@" ;;
  test) exec python -m pytest tests -q "$@" ;;
  shell) echo "environment ready: . $VENV/bin/activate" ;;
  *) echo "usage: bash scripts/run.sh demo|test|shell [args...]" >&2; exit 2 ;;
esac
