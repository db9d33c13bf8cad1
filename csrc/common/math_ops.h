// Elementwise helpers with one name for every arithmetic type a kernel runs on: float/double on the CUDA device
// and in scalar CPU tails, and cpu::Vec<float/double> in CPU vector loops. A kernel's maths is written once, as a
// template over the value type, against these names.
#pragma once

#include <torch/headeronly/macros/Macros.h>

#include <cmath>

#ifndef __CUDACC__
#include "common/cpu/vec.h"
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
