// Whether this build has AVX-512 kernels besides its baseline ones (see common/cpu/avx512_target.h): GCC 11 or
// later (for the AVX512-BF16 target) on x86-64, in a build whose baseline is AVX2. Defines no instruction set.
#pragma once

#if defined(__x86_64__) && defined(__AVX2__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define SGDF_ERD_AVX512_KERNELS 1
#endif
