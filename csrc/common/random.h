// Counter-based uniform random numbers for stochastic rounding: a pure function of (seed, step, stream, element
// index), so kernels need no generator state. The seed is drawn once per parameter from torch's generator when its
// state is created (so it follows torch.manual_seed) and the step is the step count the kernel reads on the device:
// no host sync, and every replay of a captured CUDA graph draws new numbers. The Python paths compute the same
// numbers (python/sgdf_erd/optim/counter_random.py).
#pragma once

#include <cstdint>

#include <torch/headeronly/macros/Macros.h>

namespace sgdf_erd::random {

// Streams: which stored tensor of a parameter is being rounded (independent draws for each).
enum Stream : uint32_t { kParamStream = 0, kExpAvgStream = 1, kExpVarStream = 2, kExpAvgSqStream = 3 };

// A 32-bit xor-shift / multiply hash (a full-avalanche mixer; multipliers below 2^31 so that the Python twin can
// compute it exactly in int64).
C10_HOST_DEVICE inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x21F0AAADu;
  x ^= x >> 15;
  x *= 0x735A2D97u;
  return x ^ (x >> 15);
}

// Once per tensor and stored tensor: the key of (seed, step, stream). `step` is the step being taken (1, 2, ...).
C10_HOST_DEVICE inline uint32_t tensor_key(uint32_t seed, uint32_t step, uint32_t stream) {
  return mix32(mix32(mix32(seed) ^ step) ^ stream);
}

// The key of the upper 32 bits of an element index (constant over 2^32 consecutive elements, so vector code
// computes it once per run of lanes).
C10_HOST_DEVICE inline uint32_t upper_index_key(uint32_t key, uint32_t index_high) {
  constexpr uint32_t kSecondKey = 0x68E31DA4u;
  return mix32(key ^ kSecondKey) + index_high;
}

// 32 random bits for element `index` (in memory order) of the tensor with `key`. Two rounds, so that the numbers
// of different keys are not one permutation of each other.
C10_HOST_DEVICE inline uint32_t index_hash(uint32_t key, uint64_t index) {
  const uint32_t low = static_cast<uint32_t>(index);
  const uint32_t high = static_cast<uint32_t>(index >> 32);
  return mix32(mix32(low ^ key) ^ upper_index_key(key, high));
}

// A uniform number in [0, 1), a multiple of 2^-24: the top 24 bits of index_hash.
C10_HOST_DEVICE inline float uniform(uint32_t key, uint64_t index) {
  return static_cast<float>(index_hash(key, index) >> 8) * 5.9604644775390625e-08f;  // 2^-24
}

}  // namespace sgdf_erd::random
