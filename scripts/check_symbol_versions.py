"""Checks that native libraries need no glibc, libstdc++ or libgcc symbol version newer than manylinux_2_28 allows,
so that a wheel built on a newer system still installs where torch's own (manylinux_2_28) wheels do.

    python scripts/check_symbol_versions.py LIBRARY.so [...]

Prints, per library, the highest version it needs of each family (from `objdump -T`, binutils) and every symbol
above the limit; exits 1 when there is one. scripts/build_wheel.sh runs it on the wheel's library and
tests/test_native_load.py on the in-tree build. csrc/common/manylinux_compat.{h,cpp} is what keeps the library
within the limits.
"""

import re
import subprocess
import sys

# manylinux_2_28's highest allowed version per family on x86_64 (auditwheel's policy: glibc 2.28 and GCC 8's
# libstdc++ as RHEL 8 ships it). Non-numeric versions (CXXABI_TM_1, CXXABI_FLOAT128) are allowed in every policy.
LIMITS = {"GLIBC": (2, 28), "GLIBCXX": (3, 4, 24), "CXXABI": (1, 3, 11), "GCC": (7, 0, 0)}
VERSIONED = re.compile(r"\((GLIBC|GLIBCXX|CXXABI|GCC)_([0-9.]+)\)\s+(\S+)$")


def needed_versions(library):
    """(family, version tuple, symbol) for each undefined dynamic symbol of `library` that has a version."""
    listing = subprocess.run(["objdump", "-T", library], capture_output=True, text=True, check=True).stdout
    found = []
    for line in listing.splitlines():
        match = VERSIONED.search(line)
        if match and "*UND*" in line:
            family, version, symbol = match.groups()
            found.append((family, tuple(int(x) for x in version.split(".")), symbol))
    return found


def dotted(version):
    return ".".join(map(str, version))


def main(libraries):
    failed = False
    for library in libraries:
        found = needed_versions(library)
        highest = {}
        for family, version, _ in found:
            highest[family] = max(highest.get(family, version), version)
        print(f"{library}: highest needed " + ", ".join(
            f"{family}_{dotted(highest[family])}" for family in LIMITS if family in highest))
        for family, version, symbol in sorted(found):
            if version > LIMITS[family]:
                failed = True
                print(f"  {family}_{dotted(version)} > manylinux_2_28's {family}_{dotted(LIMITS[family])}: {symbol}")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
