// Stochastic rounding of a float32 result into bfloat16 / float16 storage (python/sgdf_erd/optim/
// stochastic_rounding.py is the same function on tensors).
//
// |x| between the neighbouring representable magnitudes lo <= |x| <= hi becomes hi with probability
// p = (|x| - lo) / (hi - lo), else lo, keeping the sign: the expected stored value is x, so updates far below half a
// spacing still move a parameter on average. |x| - lo and hi - lo are exact in float32, so p is, and a uniform u that
// is a multiple of 2^-24 gives `u < p` probability exactly p (to 2^-24 of a spacing below float16's smallest
// subnormal). Subnormals need no special case: their bit patterns are consecutive and evenly spaced. NaN stays NaN
// and a value that overflows to nearest still does. Only the header-only torch types are used, so the stable-ABI
// kernels can include this.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "common/random.h"

namespace sgdf_erd {

// T: c10::BFloat16 or c10::Half. u: uniform in [0, 1) (random::uniform).
template <typename T>
C10_HOST_DEVICE inline T stochastic_round(float x, float u) {
  const float magnitude = ::fabsf(x);
  const T nearest(magnitude);  // to nearest, ties to even
  const float nearest_value = static_cast<float>(nearest);
  // (x != x: NaN; comparisons rather than isnan/isinf, which host and device spell differently)
  if (x != x || magnitude == nearest_value || nearest_value > 3.40282347e+38f) {
    return T(x);  // exact, overflowing or NaN: as rounding to nearest
  }
  // the other neighbour is one bit pattern up or down from the nearest magnitude, towards |x|
  const uint16_t other_bits = magnitude > nearest_value ? static_cast<uint16_t>(nearest.x + 1)
                                                        : static_cast<uint16_t>(nearest.x - 1);
  const float other = static_cast<float>(T(other_bits, T::from_bits()));
  const float lo = ::fminf(nearest_value, other);
  const float hi = ::fmaxf(nearest_value, other);
  const float up_probability = (magnitude - lo) / (hi - lo);  // hi = inf (above the largest finite): 0
  return T(::copysignf(u < up_probability ? hi : lo, x));    // exact: lo and hi are representable
}

// How a multi-tensor kernel stores its Depth operands' results: stochastically for the 16-bit operands whose bit is
// set, with the random numbers of key[d] (random::tensor_key) and each element's index in its tensor; else to
// nearest. Shared by the CPU and CUDA walks.
template <int Depth>
struct StoreRounding {
  unsigned stochastic_mask = 0;
  uint32_t key[Depth] = {};
  int64_t first_index = 0;  // the number of the walk's element 0 (a shard: its position in the whole tensor)

  C10_HOST_DEVICE void set_stochastic(int operand, uint32_t operand_key) {
    stochastic_mask |= 1u << operand;
    key[operand] = operand_key;
  }
};

// x stored as T: stochastically with element `index`'s number of `key` when `stochastic` and T is bfloat16 /
// float16, else to nearest.
template <typename T, typename acc_t>
C10_HOST_DEVICE inline T to_storage(acc_t x, bool stochastic, uint32_t key, int64_t index) {
  if constexpr (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>) {
    if (stochastic) return stochastic_round<T>(static_cast<float>(x), random::uniform(key, static_cast<uint64_t>(index)));
  }
  return static_cast<T>(x);
}

}  // namespace sgdf_erd
