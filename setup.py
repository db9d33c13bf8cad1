"""Build script for sgdf-erd.

The single source of truth for what is compiled is the folder layout: every ``*.cpp`` under ``csrc/`` outside
``cuda/`` folders is built into ``sgdf_erd._C``; CUDA builds add everything in ``cuda/`` folders (``*.cpp`` host
files and ``*.cu`` kernels). CMakeLists.txt asks this file (``--cmake-config``) for the sources and flags. Flags
live in :func:`compile_flags` only.

The library uses only the LibTorch stable ABI (targeting torch 2.11, see csrc/common/stable.h) and the CPython
limited API (3.10+), so one build loads into every torch from 2.11 on and every CPython from 3.10 on.

Environment knobs
  SGDF_ERD_CUDA=0|1       force a CPU-only build (0) or fail loudly when CUDA cannot be built (1); default: build
                          CUDA kernels only where they can run: torch has CUDA, nvcc is found and an NVIDIA GPU is
                          present (nvidia-smi lists one). CI and wheel builds set 1.
  TORCH_CUDA_ARCH_LIST    CUDA architectures (default "8.0;9.0", i.e. sm_80 and sm_90).
  SGDF_ERD_CPU_ISA        x86-64 only: "avx2" (default: AVX2+FMA+F16C kernels, plus AVX-512 builds of the SGDF
                          kernel that run where the CPU has AVX-512, see csrc/common/cpu/capability.h) or
                          "generic".
  MAX_JOBS                parallel compile jobs (torch's ninja builder reads it).
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup



def _find_cuda_toolkit():
    """torch takes CUDA_HOME as the parent of `which nvcc`; where nvcc on PATH is a wrapper or a link outside the
    toolkit (e.g. /usr/local/bin/nvcc), that folder has no CUDA headers or libcudart. Pick a folder that has them."""
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates += ["/usr/local/cuda"]
    for root in candidates:
        if os.path.exists(os.path.join(root, "include", "cuda_runtime.h")) and os.path.exists(
                os.path.join(root, "bin", "nvcc")):
            return root
    return None


if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and _find_cuda_toolkit():
    os.environ["CUDA_HOME"] = _find_cuda_toolkit()

try:
    import torch  # noqa: E402
except ImportError:
    sys.exit("sgdf-erd compiles against the installed torch: install torch first (pip install torch), then build "
             "with `pip install --no-build-isolation .` so the build sees it")
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
DEFAULT_CUDA_ARCHS = "8.0;9.0"
# The stable ABI is forward compatible: a library built against these headers and targeting this torch loads into
# that torch and every later one. csrc/common/stable.h defines the same default.
TARGET_TORCH = (2, 11)
MIN_PYTHON_HEX = "0x030A0000"  # Py_LIMITED_API: CPython 3.10


def read_version():
    with open(os.path.join(ROOT, "python", "sgdf_erd", "_version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def nvidia_gpu_present():
    """An NVIDIA GPU on this machine (its device node, or nvidia-smi listing one)."""
    if os.path.exists("/dev/nvidia0"):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def want_cuda():
    forced = os.environ.get("SGDF_ERD_CUDA")
    possible = torch.version.cuda is not None and CUDA_HOME is not None and os.path.exists(
        os.path.join(CUDA_HOME, "bin", "nvcc"))
    if forced == "0":
        return False
    if forced == "1":
        if not possible:
            sys.exit("SGDF_ERD_CUDA=1 but CUDA kernels cannot be built: install a CUDA build of torch and the CUDA "
                     f"toolkit (nvcc), or set CUDA_HOME (torch.version.cuda={torch.version.cuda}, "
                     f"CUDA_HOME={CUDA_HOME})")
        return True
    # Unset: compiling CUDA kernels takes minutes per file; skip them where no GPU could run them.
    return possible and nvidia_gpu_present()


def definitions(with_cuda, arch_list):
    """Preprocessor definitions, as name -> value (None for a bare flag)."""
    major, minor = TARGET_TORCH
    defs = {
        "SGDF_ERD_VERSION": f'"{read_version()}"',
        # Only the stable ABI of torch TARGET_TORCH: newer stable features are hidden and torch's non-stable headers
        # (ATen, c10) refuse to compile, so nothing else can creep in.
        "TORCH_TARGET_VERSION": f"0x{major:02x}{minor:02x}000000000000",
        "Py_LIMITED_API": MIN_PYTHON_HEX,
    }
    if with_cuda:
        defs.update({"SGDF_ERD_WITH_CUDA": None, "SGDF_ERD_CUDA_ARCHS": f'"{arch_list}"'})
    return defs


def cpu_isa_avx2():
    return platform.machine() in ("x86_64", "AMD64") and os.environ.get("SGDF_ERD_CPU_ISA", "avx2") == "avx2"


def compile_flags(with_cuda, arch_list):
    defines = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in definitions(with_cuda, arch_list).items()]
    # hidden visibility: only PyInit__C is exported, so no symbol of ours can clash with torch's or another
    # extension's (and the stable ABI's hidden-visibility types may be members of ours)
    # manylinux_compat.h pins glibc functions to their pre-2.28 symbol versions in every file (manylinux_2_28 wheel)
    compat = ["-include", os.path.join(CSRC, "common", "manylinux_compat.h")]
    cxx = ["-O3", "-Wno-unknown-pragmas", "-fvisibility=hidden"] + compat
    cxx += ["-mavx2", "-mfma", "-mf16c"] if cpu_isa_avx2() else []
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-Xcompiler=-fvisibility=hidden"] + compat
    return {"cxx": cxx + defines, "nvcc": nvcc + defines}


def link_flags():
    """--as-needed: the library records only the torch libraries it refers to (the stable C shim in torch_cpu).
    No OpenMP: CPU kernels run on torch's own thread pool through torch::stable::parallel_for."""
    return ["-Wl,--as-needed"]


def _in_cuda_folder(path):
    return "cuda" in path.split(os.sep)[:-1]


def _builds_avx512(path):
    """A unit built for AVX-512 (csrc/common/cpu/avx512_target.h), next to the baseline build of its kernels."""
    return path.endswith("_avx512.cpp")


def link_order(sources):
    """AVX-512 units last: where they and a baseline unit both compile an inline function of a shared header, the
    linker keeps the first copy, which must be the baseline one (it runs on every CPU)."""
    return sorted(sources, key=_builds_avx512)  # stable: keeps the order within each kind


def cpu_sources():
    """Every .cpp outside cuda/ folders: built in every build."""
    return sorted(p for p in glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True) if not _in_cuda_folder(p))


def cuda_sources():
    """Everything in cuda/ folders (.cpp host files, .cu kernels), and any other .cu: built in CUDA builds only."""
    files = glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True) + glob.glob(
        os.path.join("csrc", "**", "*.cu"), recursive=True)
    return sorted(p for p in files if _in_cuda_folder(p) or p.endswith(".cu"))


def print_cmake_config():
    """`python setup.py --cmake-config`: what CMakeLists.txt builds (CPU sources, flags), one `KEY=a;b` a line."""
    defs = definitions(False, "")
    print("SOURCES=" + ";".join(link_order(cpu_sources())))
    print("CXX_FLAGS=" + ";".join(f for f in compile_flags(False, "")["cxx"] if not f.startswith("-D")))
    print("DEFINITIONS=" + ";".join(k if v is None else f"{k}={v}" for k, v in defs.items()))
    print("LINK_FLAGS=" + ";".join(link_flags()))


def record_torch_version():
    """python/sgdf_erd/_built_with.py: the torch this build compiles against and the oldest it runs with, so that a
    library that fails to load can say so (sgdf_erd/_native.py)."""
    with open(os.path.join(ROOT, "python", "sgdf_erd", "_built_with.py"), "w") as f:
        f.write("# Written by setup.py at build time: the torch the native library was compiled against.\n"
                f'TORCH_VERSION = "{torch.__version__}"\n'
                "# The oldest torch it runs with (its stable-ABI target); every later torch loads it too.\n"
                f'TORCH_MIN = "{TARGET_TORCH[0]}.{TARGET_TORCH[1]}"\n')


def make_extension():
    record_torch_version()
    with_cuda = want_cuda()
    sources = cpu_sources()
    include_dirs = [CSRC]
    arch_list = ""
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        arch_list = os.environ["TORCH_CUDA_ARCH_LIST"]
        sources += cuda_sources()
        # the toolkit's own headers first: torch's nvidia-* pip packages also ship partial copies of them (only the
        # CUDA runtime's are needed: the stable ABI pulls in none of torch's CUDA library headers)
        include_dirs += [os.path.join(CUDA_HOME, "include")]
    builder = CUDAExtension if with_cuda else CppExtension
    print(f"sgdf-erd: building {'CPU+CUDA (archs ' + arch_list + ')' if with_cuda else 'CPU-only'} "
          f"from {len(sources)} sources", flush=True)
    # py_limited_api tags the module abi3 (torch also defines Py_LIMITED_API, to the same 3.10).
    extension = builder(name="sgdf_erd._C", sources=link_order(sources), include_dirs=include_dirs, py_limited_api=True,
                        extra_compile_args=compile_flags(with_cuda, arch_list), extra_link_args=link_flags())
    # Only what the stable ABI needs, instead of all of torch's libraries: its C shim (torch_cpu), and in CUDA
    # builds the CUDA part of the shim (the current stream) and the CUDA runtime.
    extension.libraries = ["torch_cpu"] + (["torch_cuda", "cudart"] if with_cuda else [])
    return extension


if len(sys.argv) > 1 and sys.argv[1] == "--cmake-config":
    print_cmake_config()
    sys.exit(0)

setup(
    name="sgdf-erd",
    version=read_version(),
    description="Fused SGDF optimizer and ERD diffusion loss for PyTorch (C++/CUDA kernels)",
    long_description=open(os.path.join(ROOT, "README.md")).read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
    # The stable ABI is forward compatible: the oldest torch targeted (TARGET_TORCH) and every later one.
    install_requires=[f"torch>={TARGET_TORCH[0]}.{TARGET_TORCH[1]}", "numpy"],
    extras_require={
        "test": ["pytest", "hypothesis", "scipy", "mpmath"],
        "demo": ["scikit-learn", "scipy", "matplotlib", "pillow", "tqdm"],
    },
)
