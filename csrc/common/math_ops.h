// Elementwise helpers with one name for every arithmetic type a kernel runs on: float/double on the CUDA device
// and in scalar CPU tails, and cpu::Vec<float/double> in CPU vector loops. A kernel's maths is written once, as a
// template over the value type, against these names.
#pragma once

#include <torch/headeronly/macros/Macros.h>

#include <cmath>

#ifndef __CUDACC__
#include "common/cpu/vec.h"
#endif

// For a kernel's per-element maths: inlined into the loop that calls it, whatever the compiler's size heuristics say
// (GCC kept SGDF's filtered_update a call per vector, its lanes passed through memory: the CPU step took ~2x its
// time in cache).
#ifdef __CUDACC__
#define SGDF_ERD_INLINE __forceinline__
#else
#define SGDF_ERD_INLINE inline __attribute__((always_inline))
// the same for a lambda: [=](auto& v) SGDF_ERD_INLINE_LAMBDA { ... }
#define SGDF_ERD_INLINE_LAMBDA __attribute__((always_inline))
#endif

namespace sgdf_erd {

C10_HOST_DEVICE inline float op_sqrt(float x) { return ::sqrtf(x); }
C10_HOST_DEVICE inline double op_sqrt(double x) { return ::sqrt(x); }
C10_HOST_DEVICE inline float op_pow(float x, float y) { return ::powf(x, y); }
C10_HOST_DEVICE inline double op_pow(double x, double y) { return ::pow(x, y); }
// sign with sign(0) = 0, as torch.sign
C10_HOST_DEVICE inline float op_sign(float x) { return static_cast<float>((x > 0.f) - (x < 0.f)); }
C10_HOST_DEVICE inline double op_sign(double x) { return static_cast<double>((x > 0.0) - (x < 0.0)); }

#ifndef __CUDACC__
template <typename T>
inline cpu::Vec<T> op_sqrt(const cpu::Vec<T>& x) { return x.sqrt(); }
template <typename T>
inline cpu::Vec<T> op_pow(const cpu::Vec<T>& x, T y) { return x.pow(cpu::Vec<T>(y)); }
template <typename T>
inline cpu::Vec<T> op_sign(const cpu::Vec<T>& x) {
  const cpu::Vec<T> zero(T(0));
  return x.gt(zero) - x.lt(zero);  // gt/lt give 1 or 0 per lane
}
#endif

}  // namespace sgdf_erd
