// Prints what csrc/common/random.h and stochastic_rounding.h compute, for tests/test_sgdf_lowprec.py to compare
// with the Python paths. Input (stdin): seed step stream count first, then lines "dtype x_bits u_bits" (dtype 0:
// bfloat16, 1: float16; bits as unsigned integers). Output: the bits of the key's uniforms of elements first ..
// first + count - 1, one a line, then the rounded bit patterns, one a line.
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "common/random.h"
#include "common/stochastic_rounding.h"

static float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

static uint32_t to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

int main() {
  unsigned seed, step, stream, count;
  unsigned long long first;
  if (std::scanf("%u %u %u %u %llu", &seed, &step, &stream, &count, &first) != 5) return 1;
  const uint32_t key = sgdf_erd::random::tensor_key(seed, step, stream);
  for (unsigned i = 0; i < count; ++i) std::printf("%u\n", to_bits(sgdf_erd::random::uniform(key, first + i)));
  unsigned dtype, x_bits, u_bits;
  while (std::scanf("%u %u %u", &dtype, &x_bits, &u_bits) == 3) {
    const float x = from_bits(x_bits), u = from_bits(u_bits);
    const unsigned out = dtype == 0 ? sgdf_erd::stochastic_round<c10::BFloat16>(x, u).x
                                    : sgdf_erd::stochastic_round<c10::Half>(x, u).x;
    std::printf("%u\n", out);
  }
  return 0;
}
