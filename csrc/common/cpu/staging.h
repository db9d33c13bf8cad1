// Float tiles staged from and to 16-bit storage, for CPU kernels that compute in float on operands of several
// dtypes (chosen at run time, so one instantiation of a kernel's vector loop serves every dtype combination).
// Loads convert exactly; stores round to nearest or stochastically, with the bits csrc/common/stochastic_rounding.h
// defines (bfloat16 vectorised here, float16 element by element).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/cpu/operand.h"
#include "common/cpu/vec.h"
#include "common/random.h"
#include "common/scalar_types.h"
#include "common/stochastic_rounding.h"

namespace sgdf_erd::cpu {
inline namespace SGDF_ERD_CPU_CAPABILITY {

using torch::headeronly::ScalarType;

// dst[0..n) = src[0..n) as float; src holds float32, bfloat16 or float16 (the kernel's checks ensure it).
inline void load_tile(const void* src, ScalarType dtype, float* dst, int64_t n) {
  switch (dtype) {
    case ScalarType::BFloat16: convert(static_cast<const BFloat16*>(src), dst, n); break;
    case ScalarType::Half: convert(static_cast<const Half*>(src), dst, n); break;
    default: std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); break;
  }
}

#if defined(SGDF_ERD_VEC_AVX512)
inline __m512i mix32(__m512i x) {  // random::mix32 on 16 lanes
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x21F0AAAD));
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x735A2D97));
  return _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
}

// bfloat16_bits_stochastic (below) on 16 lanes, the bit patterns packed to 16 bits.
inline __m256i bfloat16_stochastic(__m512 x, uint32_t key, uint64_t index) {
  const __m512i lanes = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(index))),
                                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const uint32_t upper = random::upper_index_key(key, static_cast<uint32_t>(index >> 32));
  const __m512i hash = mix32(_mm512_xor_si512(mix32(_mm512_xor_si512(lanes, _mm512_set1_epi32(static_cast<int>(key)))),
                                              _mm512_set1_epi32(static_cast<int>(upper))));
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i below = _mm512_and_si512(bits, _mm512_set1_epi32(0xFFFF));
  const __mmask16 up = _mm512_cmpgt_epi32_mask(below, _mm512_srli_epi32(hash, 16));
  const __m512i truncated = _mm512_srli_epi32(bits, 16);
  const __m512i rounded = _mm512_mask_add_epi32(truncated, up, truncated, _mm512_set1_epi32(1));
  const __m512i magnitude = _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFFFF));
  const __mmask16 to_nearest = _mm512_cmpgt_epi32_mask(magnitude, _mm512_set1_epi32(0x7F7EFFFF));
  if (!to_nearest) return _mm512_cvtepi32_epi16(rounded);
  const __m256i nearest = bfloat16_to_nearest(x);
  return _mm256_mask_mov_epi16(_mm512_cvtepi32_epi16(rounded), to_nearest, nearest);
}

// One vector of src stochastically rounded into out (elements index .. of the tensor with `key`).
inline void store_bfloat16_stochastic(const float* src, BFloat16* out, uint32_t key, uint64_t index) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), bfloat16_stochastic(_mm512_loadu_ps(src), key, index));
}
#endif

#ifdef SGDF_ERD_VEC_AVX2
inline __m256i mix32(__m256i x) {  // random::mix32 on 8 lanes
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x21F0AAAD));
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x735A2D97));
  return _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
}

// 8 floats stochastically rounded to bfloat16 bit patterns (one per lane), elements index .. index + 7 of the
// tensor with `key`. For a finite |x| below bfloat16's largest finite value, stochastic_round's up-probability is
// (low 16 bits of x) / 2^16 and its test `uniform < p` is `(index_hash >> 16) < low 16 bits`: rounding up adds one
// to the truncated pattern. Larger magnitudes, infinities and NaN round to nearest, as stochastic_round does.
inline __m256i bfloat16_bits_stochastic(__m256 x, uint32_t key, uint64_t index) {
  const uint32_t low = static_cast<uint32_t>(index);
  const __m256i lanes = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(low)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const uint32_t upper = random::upper_index_key(key, static_cast<uint32_t>(index >> 32));
  const __m256i hash = mix32(_mm256_xor_si256(mix32(_mm256_xor_si256(lanes, _mm256_set1_epi32(static_cast<int>(key)))),
                                              _mm256_set1_epi32(static_cast<int>(upper))));
  const __m256i bits = _mm256_castps_si256(x);
  const __m256i below = _mm256_and_si256(bits, _mm256_set1_epi32(0xFFFF));  // what truncation drops
  const __m256i up = _mm256_cmpgt_epi32(below, _mm256_srli_epi32(hash, 16));  // -1 where rounding up
  const __m256i rounded = _mm256_sub_epi32(_mm256_srli_epi32(bits, 16), up);
  const __m256i magnitude = _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i to_nearest = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7F7EFFFF));
  if (_mm256_testz_si256(to_nearest, to_nearest)) return rounded;  // the usual case: every lane finite and in range
  return _mm256_blendv_epi8(rounded, bfloat16_bits_to_nearest(x), to_nearest);
}

#if !defined(SGDF_ERD_VEC_AVX512)
// One vector of src stochastically rounded into out (elements index .. of the tensor with `key`).
inline void store_bfloat16_stochastic(const float* src, BFloat16* out, uint32_t key, uint64_t index) {
  store_low_halves(out, bfloat16_bits_stochastic(_mm256_loadu_ps(src), key, index));
}
#endif
#endif

// dst[0..n) = src[0..n) in dst's dtype (float32, bfloat16 or float16); `first_index` is src[0]'s element index in
// its tensor (the counter of the stochastic rounding).
inline void store_tile(const float* src, void* dst, ScalarType dtype, int64_t n, const Rounding& rounding,
                       int64_t first_index) {
  if (dtype == ScalarType::Float) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  } else if (!rounding.stochastic) {
    if (dtype == ScalarType::BFloat16) {
      convert(src, static_cast<BFloat16*>(dst), n);
    } else {
      convert(src, static_cast<Half*>(dst), n);
    }
  } else if (dtype == ScalarType::BFloat16) {
    auto* out = static_cast<BFloat16*>(dst);
    int64_t i = 0;
#if defined(SGDF_ERD_VEC_AVX512) || defined(SGDF_ERD_VEC_AVX2)
    constexpr int kLanes = Vec<float>::kSize;
    for (; i + kLanes <= n; i += kLanes) {
      const auto index = static_cast<uint64_t>(first_index + i);
      if ((index >> 32) != ((index + kLanes - 1) >> 32)) break;  // lanes straddle 2^32: the scalar loop takes them
      store_bfloat16_stochastic(src + i, out + i, rounding.key, index);
    }
#endif
    for (; i < n; ++i) {
      out[i] = to_storage<BFloat16>(src[i], true, rounding.key, first_index + i);
    }
  } else {
    auto* out = static_cast<Half*>(dst);
    for (int64_t i = 0; i < n; ++i) {
      out[i] = to_storage<Half>(src[i], true, rounding.key, first_index + i);
    }
  }
}

}  // namespace SGDF_ERD_CPU_CAPABILITY
}  // namespace sgdf_erd::cpu
