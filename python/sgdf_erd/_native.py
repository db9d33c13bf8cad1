"""Loads the compiled operators (``torch.ops.sgdf_erd``) and says what the build can serve."""

import importlib
import os
import types
import warnings

import torch

from ._kernel_errors import raising_marked_types


def _load_error(exc: ImportError) -> ImportError:
    """An ImportError that says why the native library did not load and what fixes it."""
    if isinstance(exc, ModuleNotFoundError) and exc.name == f"{__package__}._C":
        return ImportError(
            "sgdf_erd's compiled extension is missing (no _C library beside the Python files). Build it with "
            "`pip install --no-build-isolation .` in the source tree (add -e for development); torch must be "
            "installed first.")
    try:
        from ._built_with import TORCH_VERSION as built_with
    except ImportError:
        built_with = "an unrecorded version"
    try:
        from ._built_with import TORCH_MIN as torch_min
    except ImportError:
        torch_min = "an unrecorded version"
    return ImportError(
        f"sgdf_erd's native library failed to load: {exc}. It was built against torch {built_with} and runs with "
        f"torch {torch_min} or later (LibTorch stable ABI); this Python runs torch {torch.__version__}. With an "
        f"older torch, upgrade it (pip install 'torch>={torch_min}'); otherwise the library itself is damaged or "
        "built for another platform: rebuild it with `pip install --no-build-isolation --force-reinstall --no-deps .` "
        "in the source tree.")


try:
    importlib.import_module(f"{__package__}._C")  # loading the library registers the operators
except ImportError as exc:
    raise _load_error(exc) from exc


def _operators(namespace: str) -> types.ModuleType:
    """torch.ops.<namespace> with every operator's errors raised as the Python type they mean (_kernel_errors.py). Each
    attribute calls the op; its ``.default`` and other overloads are the real ``OpOverload`` objects (for
    opcheck, torch.library registrations and torch.compile)."""
    packets = getattr(torch.ops, namespace)
    operators = types.ModuleType(f"{__package__}.ops")
    for qualified in torch._C._dispatch_get_all_op_names():
        if not qualified.startswith(namespace + "::"):
            continue
        name = qualified.split("::", 1)[1].split(".", 1)[0]
        packet = getattr(packets, name)
        call = raising_marked_types(packet)
        for overload in packet.overloads():
            setattr(call, overload, getattr(packet, overload))
        setattr(operators, name, call)
    return operators


ops = _operators("sgdf_erd")

CPU_CAPABILITY_VARIABLE = "SGDF_ERD_CPU_CAPABILITY"
_CPU_CAPABILITIES = ("avx2", "avx512")


def _check_cpu_capability_request() -> None:
    """The native library reads SGDF_ERD_CPU_CAPABILITY itself and acts only on "avx2" (keep the AVX2 kernels on an
    AVX-512 CPU; "avx512" is its default where it can); a value it cannot honour would pass in silence, so it is
    answered here."""
    requested = os.environ.get(CPU_CAPABILITY_VARIABLE)
    if requested is None:
        return
    running = ops.cpu_capability()
    if requested not in _CPU_CAPABILITIES:
        warnings.warn(f"{CPU_CAPABILITY_VARIABLE}={requested!r} is not one of {_CPU_CAPABILITIES} and is ignored: "
                      f"the CPU kernels run with {running!r}. Set it to 'avx2' to keep the AVX2 kernels on a CPU "
                      "with AVX-512, or unset it.", RuntimeWarning)
    elif requested == "avx512" and running != "avx512":
        warnings.warn(f"{CPU_CAPABILITY_VARIABLE}=avx512, but the CPU kernels run with {running!r}: AVX-512 kernels "
                      "need a CPU with AVX-512 F/BW/VL/DQ and BF16 (Zen 4, Sapphire Rapids and later) and a build "
                      "with GCC 11 or later on x86-64.", RuntimeWarning)


_check_cpu_capability_request()

CUDA_COMPILED: bool = bool(ops.compiled_with_cuda())

_CUDA_MISSING = (
    "this sgdf_erd build has no CUDA kernels (it was compiled without CUDA: no NVIDIA GPU or nvcc at build time, "
    "or SGDF_ERD_CUDA=0). Rebuild with the CUDA toolkit on PATH and SGDF_ERD_CUDA=1: "
    "`SGDF_ERD_CUDA=1 pip install --no-build-isolation --force-reinstall --no-deps .` in the source tree; "
    "sgdf_erd.build_info() shows what was compiled in.")


def _register_cuda_stubs() -> "torch.library.Library":
    """A CPU-only build answers CUDA tensors given to any of its operators (also called directly through
    torch.ops.sgdf_erd) with an error that names the fix, instead of the dispatcher's generic "could not run"."""
    library = torch.library.Library("sgdf_erd", "IMPL")
    names = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("sgdf_erd::")}
    for name in sorted(names):
        schema = getattr(ops, name).default._schema
        if not any(isinstance(a.type, (torch.TensorType, torch.OptionalType, torch.ListType))
                   for a in schema.arguments):
            continue  # build facts: no tensor, no device

        def stub(*args, _name=name, **kwargs):
            raise RuntimeError(f"sgdf_erd::{_name}: {_CUDA_MISSING}")

        library.impl(name, stub, "CUDA")
    return library


if not CUDA_COMPILED:
    _cuda_stubs = _register_cuda_stubs()  # kept alive: the registrations last as long as the Library object

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
        raise RuntimeError(f"{what}: {_CUDA_MISSING}")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"{what}: device type '{device.type}' has no sgdf_erd kernels; use cpu or cuda tensors")
