// Keeps the library within manylinux_2_28 (glibc 2.28, libstdc++ of GCC 8: GLIBCXX_3.4.25, CXXABI_1.3.11) when it is
// built on a newer system, so that its wheel installs wherever torch's own wheels do. setup.py force-includes this
// header into every translation unit (-include), and manylinux_compat.cpp supplies the newer libstdc++ pieces.
//
// glibc gave these functions new default symbol versions without changing what they compute (the new ones only
// drop the SVID error-handling wrapper, or moved from libdl/libpthread into libc); a reference made in a file that
// sees `.symver` binds to the older version, which every glibc from 2.17 on still provides. An entry here that a
// file does not call costs nothing. tests/test_symbol_versions.py and scripts/build_wheel.sh fail when a newer
// version creeps in.
#pragma once

#if defined(__linux__) && defined(__x86_64__) && !defined(__CUDA_ARCH__) && __has_include(<features.h>)
#include <features.h>
#if defined(__GLIBC__)
#define SGDF_ERD_PIN_GLIBC_SYMBOL(name) __asm__(".symver " #name "," #name "@GLIBC_2.2.5")
SGDF_ERD_PIN_GLIBC_SYMBOL(hypot);   // GLIBC_2.35
SGDF_ERD_PIN_GLIBC_SYMBOL(hypotf);  // GLIBC_2.35
SGDF_ERD_PIN_GLIBC_SYMBOL(exp);     // GLIBC_2.29
SGDF_ERD_PIN_GLIBC_SYMBOL(exp2);    // GLIBC_2.29
SGDF_ERD_PIN_GLIBC_SYMBOL(log);     // GLIBC_2.29
SGDF_ERD_PIN_GLIBC_SYMBOL(log2);    // GLIBC_2.29
SGDF_ERD_PIN_GLIBC_SYMBOL(pow);     // GLIBC_2.29
SGDF_ERD_PIN_GLIBC_SYMBOL(dlsym);   // GLIBC_2.34 (torch's stable headers look up newer shims with it)
SGDF_ERD_PIN_GLIBC_SYMBOL(dlopen);  // GLIBC_2.34
SGDF_ERD_PIN_GLIBC_SYMBOL(dlerror); // GLIBC_2.34
#undef SGDF_ERD_PIN_GLIBC_SYMBOL
#endif
#endif
