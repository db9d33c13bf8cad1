"""The CPU kernels' instruction-set builds. SGDF's CPU kernel is built twice, for AVX2 and for AVX-512 (chosen once
per process where the CPU has AVX-512 with BF16; SGDF_ERD_CPU_CAPABILITY=avx2 keeps AVX2). The two must agree bit
for bit on every storage configuration and option, with NaN, infinities and subnormals (the AVX-512 bfloat16
conversion flushes subnormals and keeps NaN payloads, so the kernel must route those around it); then the rest of the
suite, which runs one of them, vouches for both. And no AVX-512 instruction may reach code that runs on CPUs without
it."""

import importlib
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import sgdf_erd
from sgdf_erd._native import ops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPABILITY = sgdf_erd.build_info()["cpu_capability"]


def _env(capability):
    env = {k: v for k, v in os.environ.items() if k != "SGDF_ERD_CPU_CAPABILITY"}
    if capability is not None:
        env["SGDF_ERD_CPU_CAPABILITY"] = capability
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(sgdf_erd.__file__)), REPO] + sys.path)
    return env


def _python(code, capability):
    return subprocess.run([sys.executable, "-c", code], env=_env(capability), capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_build_info_names_the_capability_in_use():
    assert CAPABILITY in ("generic", "avx2", "avx512")
    assert CAPABILITY == ops.cpu_capability()


def _capability(request):
    """The capability a fresh process runs with SGDF_ERD_CPU_CAPABILITY=request (None: unset), and its stderr."""
    result = _python("import sgdf_erd; print(sgdf_erd.build_info()['cpu_capability'])", request)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), result.stderr


def test_avx2_can_be_requested():
    capability, stderr = _capability("avx2")
    assert capability == ("generic" if CAPABILITY == "generic" else "avx2")
    assert "Warning" not in stderr


def test_an_unknown_request_warns_and_changes_nothing():
    default, _ = _capability(None)
    capability, stderr = _capability("avx9000")
    assert capability == default
    assert "SGDF_ERD_CPU_CAPABILITY='avx9000' is not one of" in stderr and "'avx2'" in stderr


def test_an_avx512_request_that_cannot_be_met_warns():
    default, _ = _capability(None)
    capability, stderr = _capability("avx512")
    assert capability == default
    assert ("SGDF_ERD_CPU_CAPABILITY=avx512, but" in stderr) == (default != "avx512")


def test_avx512_and_avx2_kernels_agree_bit_for_bit(tmp_path):
    default, _ = _capability(None)
    if default != "avx512":
        pytest.skip(f"compares the AVX-512 and AVX2 kernels: needs a CPU with AVX-512 and BF16 and a GCC 11+ build "
                    f"(here the default is {default!r})")
    results = {}
    for capability in ("avx2", None):
        out = tmp_path / f"{capability}.pt"
        run = subprocess.run([sys.executable, "-m", "tests.sgdf_capability_worker", str(out)], env=_env(capability),
                             capture_output=True, text=True, timeout=600, cwd=REPO)
        assert run.returncode == 0, run.stderr
        results[capability] = torch.load(out)
    avx2, avx512 = results["avx2"], results[None]
    assert (avx2.pop("capability"), avx512.pop("capability")) == ("avx2", "avx512")
    assert avx2.keys() == avx512.keys() and len(avx2) > 100

    def bits(t):  # NaN payloads and signed zeros count
        return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])

    differing = []
    for case in avx2:
        a, b = avx2[case], avx512[case]
        tensors_a = a["params"] + [t for s in a["state"] for _, t in sorted(s.items())]
        tensors_b = b["params"] + [t for s in b["state"] for _, t in sorted(s.items())]
        assert len(tensors_a) == len(tensors_b)
        if not all(torch.equal(bits(x), bits(y)) for x, y in zip(tensors_a, tensors_b)):
            differing.append(case)
    assert not differing, f"{len(differing)} cases differ, e.g. {differing[:5]}"


# EVEX-encoded instructions (every AVX-512 instruction; 0x62 opens one in 64-bit code, after at most an address-size
# or segment prefix) and registers only AVX-512 has.
_EVEX_BYTES = re.compile(r"^((67|2e|3e|26|36|64|65) )?62 ")
_AVX512_REGISTERS = re.compile(r"%zmm|%k[0-7]\b|%[xy]mm(1[6-9]|2[0-9]|3[01])\b")


@pytest.mark.skipif(shutil.which("objdump") is None or CAPABILITY == "generic",
                    reason="needs objdump and an x86-64 build of sgdf_erd")
def test_no_avx512_instruction_outside_the_avx512_kernels():
    """Shared headers' inline functions are compiled by the AVX-512 unit too; the linker must keep the baseline
    copies (setup.py links that unit last), or a CPU without AVX-512 would die on an illegal instruction."""
    library = importlib.import_module("sgdf_erd._C").__file__
    listing = subprocess.run(["objdump", "-d", "-C", library], capture_output=True, text=True, check=True).stdout
    function, offenders, avx512_functions = None, set(), set()
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        if _EVEX_BYTES.match(fields[1].strip()) or _AVX512_REGISTERS.search(fields[2]):
            if "::avx512::" in function or function.startswith("sgdf_erd::sgdf::avx512_step_range_kernels"):
                avx512_functions.add(function)
            else:
                offenders.add(function)
    assert not offenders, f"AVX-512 instructions in code every CPU runs: {sorted(offenders)[:5]}"
    # the scan sees the AVX-512 kernels, where the build has them (GCC 11 or later)
    assert bool(avx512_functions) == ("sgdf_erd::sgdf::avx512::step_range" in listing)
    if CAPABILITY == "avx512":
        assert avx512_functions
    # An AVX-512 function may call none of our functions built for every CPU: the linker keeps one copy of each,
    # and the compiler may have assumed the registers its own copy (built under the AVX-512 target) leaves alone.
    calls_out = set()
    function = None
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
        elif function in avx512_functions and "\tcall " in line:
            callee = re.search(r"<(.*)>", line)
            if callee and callee.group(1).startswith("sgdf_erd::") and "::avx512::" not in callee.group(1):
                calls_out.add(callee.group(1))
    assert not calls_out, f"AVX-512 kernels call shared functions: {sorted(calls_out)[:5]}"
