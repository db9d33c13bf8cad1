// Included first by a translation unit whose CPU kernels are built for AVX-512 (F, BW, VL, DQ and BF16: Zen 4,
// Sapphire Rapids and later), next to the baseline (AVX2) build of the same kernels; common/cpu/capability.h
// chooses between them at run time. Where SGDF_ERD_AVX512_KERNELS is not defined (other compilers, builds without
// AVX2) the unit builds no kernel (only empty tables) and the baseline kernels run everywhere.
//
// The standard and torch headers the kernels use, and our helpers that are the same for every instruction set, are
// included here first, for the baseline instruction set: their inline functions (of which the linker keeps one copy
// for all units) and the unit's load-time initialisation hold no AVX-512 instruction, and every copy is the same
// code. Then the pragma enables AVX-512 for what follows, up to SGDF_ERD_END_AVX512 at the end of the unit, and
// the macro makes common/cpu/vec.h use 512-bit registers; everything built on vec.h has its own names per
// instruction set (its inline namespace). setup.py links AVX-512 units last all the same, and
// tests/test_sgdf_cpu_capability.py checks that no AVX-512 instruction is outside the AVX-512 kernels and that
// these call none of our shared functions.
#pragma once

#include "common/cpu/isa.h"

#if defined(SGDF_ERD_AVX512_KERNELS)
#include <immintrin.h>  // declares every instruction set's intrinsics, each under its own target

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/macros/Macros.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

// our own helpers that are the same for every instruction set, likewise
#include "common/cpu/operand.h"
#include "common/random.h"
#include "common/scalar_types.h"
#include "common/stochastic_rounding.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
// GCC 12 warns inside its own AVX-512 intrinsics (their deliberately undefined operands), not about our code
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define SGDF_ERD_VEC_AVX512 1
#define SGDF_ERD_END_AVX512 _Pragma("GCC pop_options")
#else
#define SGDF_ERD_END_AVX512
#endif
