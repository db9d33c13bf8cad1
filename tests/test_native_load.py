"""The native library: when it cannot load, `import sgdf_erd` says why (the loader's message, the torch it was built
against and the one running) and how to fix it (each such case imports a copy of the package in a fresh process);
it is one abi3 module that reaches torch only through the stable ABI, and build_info() says so."""

import ctypes
import importlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

import sgdf_erd
from sgdf_erd._native import ops

PACKAGE = os.path.dirname(sgdf_erd.__file__)


def _import_copy(tmp_path, library_bytes):
    """Copy the Python package to tmp_path, with `library_bytes` as its _C library (None: no library), and
    import it in a fresh interpreter; returns that interpreter's stderr."""
    copy = tmp_path / "sgdf_erd"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    if library_bytes is not None:
        (copy / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}").write_bytes(library_bytes)
    (copy / "_built_with.py").write_text('TORCH_VERSION = "2.99.0"\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", "import sgdf_erd"], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode != 0
    return result.stderr


def test_a_library_that_fails_to_load_says_why(tmp_path):
    stderr = _import_copy(tmp_path, b"not a shared library")
    assert "native library failed to load" in stderr
    assert "2.99.0" in stderr and torch.__version__ in stderr  # built for, running
    assert "--force-reinstall" in stderr  # the fix
    # the loader's own message, which names the library file
    assert f"_C{sysconfig.get_config_var('EXT_SUFFIX')}: file too short" in stderr


def test_a_missing_library_names_the_build_command(tmp_path):
    stderr = _import_copy(tmp_path, None)
    assert "compiled extension is missing" in stderr
    assert "pip install --no-build-isolation ." in stderr


def test_build_info_reports_the_stable_abi_build():
    info = sgdf_erd.build_info()
    assert info["stable_abi"] is True
    assert info["torch_min"] == "2.11"  # the stable-ABI target: every torch from it on loads the library
    built = tuple(int(x) for x in info["torch_built_with"].split(".")[:2])
    # any torch from torch_min on may run it (scripts/check_wheel_matrix.sh imports one wheel with several), so
    # the running torch need not be the one it was built with
    assert built >= (2, 11) and info["torch"] == torch.__version__
    assert isinstance(info["cuda"], bool) and info["cuda"] == bool(info["cuda_arch_list"])


def test_the_library_is_a_limited_api_module():
    """One library serves every CPython from 3.10 on: it is named and built for the stable ABI (abi3)."""
    library = importlib.import_module("sgdf_erd._C").__file__
    assert library.endswith(".abi3.so"), library


@pytest.mark.skipif(not torch.cuda.is_available() or sgdf_erd.build_info()["cuda"],
                    reason="needs a GPU with a CPU-only build of sgdf_erd")
def test_cpu_only_build_answers_cuda_tensors_of_a_direct_op_call():
    t = torch.zeros(4, device="cuda")
    step = torch.zeros((), device="cuda")
    with pytest.raises(RuntimeError, match=r"fused_sgdf_: this sgdf_erd build has no CUDA kernels.*SGDF_ERD_CUDA=1"):
        torch.ops.sgdf_erd.fused_sgdf_([t], [t.clone()], [t.clone()], [t.clone()], [], [step], 1e-3, None, 0.9, 0.999,
                                       1e-8, 0.5, 0.0, False, False, False, None, None, [])
    assert torch.equal(t, torch.zeros(4, device="cuda"))


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
def test_the_library_refers_to_torch_only_through_the_stable_abi():
    """Every torch symbol the library needs is in the stable C shim (torch_*, aoti_torch_*): no C++ symbol of c10,
    ATen or torch, which change between torch releases and would tie the library to the torch it was built with."""
    library = importlib.import_module("sgdf_erd._C").__file__
    symbols = subprocess.run(["nm", "-D", "--undefined-only", library], capture_output=True, text=True,
                             check=True).stdout.split()
    unstable = [s for s in symbols if re.match(r"_ZN[KVRO]*(3c10|2at|5torch)", s)]
    assert unstable == []
    assert any(s.startswith(("torch_", "aoti_torch_")) for s in symbols)


SYMBOL_CHECK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                            "check_symbol_versions.py")


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
@pytest.mark.skipif(not os.path.exists(SYMBOL_CHECK), reason="needs the source tree's scripts/")
def test_the_library_needs_no_symbol_version_newer_than_manylinux_2_28():
    """The wheel installs wherever torch's manylinux_2_28 wheels do: no glibc function or libstdc++ symbol of a
    version newer than glibc 2.28 / GCC 8's libstdc++ provide, even when built on a newer system
    (csrc/common/manylinux_compat.h pins or supplies them)."""
    library = importlib.import_module("sgdf_erd._C").__file__
    result = subprocess.run([sys.executable, SYMBOL_CHECK, library], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "highest needed GLIBC_2." in result.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux (libstdc++.so.6)")
def test_library_errors_leave_the_shared_exception_runtime_balanced():
    """An op's error reaches Python as a C++ exception thrown in the library and caught in torch, so both must use
    the process's one libstdc++. A copy linked into the library (-static-libstdc++) would throw from its own
    runtime while torch's catches, leaving the shared runtime's count of exceptions in flight at -1 per error
    (std::uncaught_exceptions(), which destructors consult); csrc/common/manylinux_compat.cpp keeps it shared."""
    uncaught_exceptions = ctypes.CDLL("libstdc++.so.6")._ZSt19uncaught_exceptionsv
    for _ in range(3):
        with pytest.raises(ValueError, match="unknown prediction"):
            ops.erd_weights(torch.ones(3), torch.ones(3), None, None, "nope", "erd", 5.0, 1.0)
    assert uncaught_exceptions() == 0


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
def test_the_library_s_own_libc_single_threaded_always_says_several_threads():
    """libstdc++'s inline reference counting (shared_ptr, locale, COW strings) skips its atomic instructions while
    __libc_single_threaded is nonzero. The library's hidden copy (csrc/common/manylinux_compat.cpp) must read 0
    ("maybe several threads", the atomic path) always: a local zero-initialised (.bss) symbol that is neither
    exported nor taken from glibc. A nonzero copy would race in every multi-threaded process."""
    library = importlib.import_module("sgdf_erd._C").__file__
    own = subprocess.run(["nm", library], capture_output=True, text=True, check=True).stdout.splitlines()
    dynamic = subprocess.run(["nm", "-D", library], capture_output=True, text=True, check=True).stdout.splitlines()
    entries = [line.split()[-2:] for line in own if line.endswith(" __libc_single_threaded")]
    assert entries == [["b", "__libc_single_threaded"]]  # b: local, in .bss, so 0
    assert not any(line.endswith(" __libc_single_threaded") for line in dynamic)
