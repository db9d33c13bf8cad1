"""What this installation of sgdf_erd was built with."""

import platform

import torch

from ._native import CUDA_COMPILED, ops
from ._version import __version__


def build_info() -> dict:
    """Describe the build: package version, torch it runs on, and whether CUDA kernels are compiled in.

    Keys: ``version``, ``torch``, ``torch_cuda`` (CUDA version torch was built with, or None), ``cuda``
    (bool: CUDA kernels compiled in), ``cuda_arch_list`` (as given to the build, e.g. "8.0;9.0"),
    ``cuda_available`` (a GPU is usable now), ``machine``.
    """
    return {
        "version": __version__,
        "native_version": ops.version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda": CUDA_COMPILED,
        "cuda_arch_list": ops.cuda_arch_list(),
        "cuda_available": torch.cuda.is_available(),
        "machine": platform.machine(),
    }
