"""What this installation of sgdf_erd was built with."""

import platform

import torch

from ._native import CUDA_COMPILED, ops
from ._version import __version__


def build_info() -> dict:
    """Describe the build: package version, torch it runs on, and whether CUDA kernels are compiled in.

    Keys: ``version``, ``torch`` (the torch running now), ``torch_built_with`` (the torch whose headers the
    library was compiled against), ``torch_min`` (the oldest torch the library runs with: it uses only the
    LibTorch stable ABI targeted at that version, so every later torch loads it), ``stable_abi`` (True),
    ``torch_cuda`` (CUDA version torch was built with, or None), ``cuda`` (bool: CUDA kernels compiled in),
    ``cuda_arch_list`` (as given to the build, e.g. "8.0;9.0"), ``cuda_available`` (a GPU is usable now),
    ``machine``, ``cpu_capability`` (the instruction set of the SGDF CPU kernel in this process: "avx512" where
    the CPU has AVX-512 with BF16 (Zen 4, Sapphire Rapids and later) and the library was built with GCC 11 or
    later, else "avx2", or "generic" off x86-64; ``SGDF_ERD_CPU_CAPABILITY=avx2`` in the environment keeps the AVX2
    kernel; the other CPU kernels are AVX2 builds).
    """
    return {
        "version": __version__,
        "native_version": ops.version(),
        "torch": torch.__version__,
        "torch_built_with": ops.torch_version_built_with(),
        "torch_min": ops.torch_version_targeted(),
        "stable_abi": True,
        "torch_cuda": torch.version.cuda,
        "cuda": CUDA_COMPILED,
        "cuda_arch_list": ops.cuda_arch_list(),
        "cuda_available": torch.cuda.is_available(),
        "machine": platform.machine(),
        "cpu_capability": ops.cpu_capability(),
    }
