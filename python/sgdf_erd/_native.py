"""Loads the compiled operators (``torch.ops.sgdf_erd``) and says what the build can serve."""

import torch

try:
    from . import _C  # noqa: F401  (loading the library registers the operators)
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "sgdf_erd's compiled extension is missing. Build it with `pip install --no-build-isolation .` in the "
        "source tree (add -e for development); torch must be installed first."
    ) from exc

ops = torch.ops.sgdf_erd

CUDA_COMPILED: bool = bool(ops.compiled_with_cuda())

_NATIVE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def supports(device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """True when this build has kernels for tensors of this device type and dtype."""
    if dtype not in _NATIVE_DTYPES:
        return False
    if device.type == "cpu":
        return True
    return device.type == "cuda" and CUDA_COMPILED


def require(device: torch.device, what: str) -> None:
    """Raise a clear error when `what` needs kernels this build lacks for `device`."""
    if device.type == "cuda" and not CUDA_COMPILED:
        raise RuntimeError(
            f"{what}: this sgdf_erd build has no CUDA kernels (built against CPU-only torch or without nvcc). "
            "Reinstall with a CUDA build of torch and nvcc on PATH: `pip install --no-build-isolation .`; "
            "sgdf_erd.build_info() shows what was compiled in."
        )
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"{what}: device type '{device.type}' has no sgdf_erd kernels; use cpu or cuda tensors")
