#!/usr/bin/env bash
# Builds the CPU library with AddressSanitizer + UndefinedBehaviorSanitizer (CMake, -DSGDF_ERD_SANITIZE=ON) and runs
# the CPU tests against it; any sanitizer report fails the run.
#
#   bash scripts/sanitize_cpu.sh                  # the whole CPU suite (slow: sanitized kernels, many minutes)
#   bash scripts/sanitize_cpu.sh tests/test_sgdf.py -x   # pytest arguments pass through
#
# Needs torch, pytest and hypothesis in the active Python (bash scripts/run.sh shell sets that up) and cmake.
# The sanitized library goes to build/sanitize/; the installed or in-place build is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
build=build/sanitize

cmake -S . -B "$build" -DSGDF_ERD_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPython_EXECUTABLE="$(command -v "$PY")" \
  -DCMAKE_PREFIX_PATH="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')" >/dev/null
cmake --build "$build" -j "${MAX_JOBS:-2}"

# A copy of the Python package with the sanitized library in place of the normal one, first on sys.path.
overlay="$build/python"
rm -rf "$overlay" && mkdir -p "$overlay"
cp -r python/sgdf_erd "$overlay/"
find "$overlay" -name '_C*.so' -delete
cp "$build/_C.abi3.so" "$overlay/sgdf_erd/_C.abi3.so"  # the stable-ABI module name CMakeLists.txt gives it

# Python itself is not built with ASan, so the runtime must be loaded first; libstdc++ must come with it, or ASan's
# C++ exception interceptors fail to resolve when torch throws.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
# Python and torch keep memory until exit on purpose: leak reports would be noise.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH="$PWD/$overlay:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import sgdf_erd, sys; print("testing", sgdf_erd.__file__)' | grep -q "$overlay" \
  || { echo "sanitize_cpu.sh: the sanitized package is not the one imported" >&2; exit 1; }
# the demo test trains for minutes; it adds no native code paths beyond the other tests
exec "$PY" -m pytest "${@:-tests}" -q -p no:cacheprovider --deselect tests/test_demo.py
