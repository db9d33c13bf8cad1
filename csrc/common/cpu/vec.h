// A small SIMD vector of float or double lanes for CPU kernels, in place of ATen's Vectorized<T> (not part of the
// stable ABI). With AVX2+FMA+F16C enabled at compile time (setup.py does so on x86-64) it wraps 256-bit
// registers; in a translation unit that includes common/cpu/avx512_target.h first, 512-bit registers (chosen at run
// time, common/cpu/capability.h); otherwise it is a plain lane array of 32 bytes that the compiler vectorises as it
// can. float16/bfloat16 data is computed in float: load_as/store_as convert whole vectors, convert() whole arrays.
//
// Everything here and in the headers built on it (staging.h, multi_tensor_apply.h) lives in an inline namespace
// named after the instruction set, so the AVX2 and AVX-512 builds of one kernel are different functions.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define SGDF_ERD_VEC_AVX2 1
#endif

#if defined(SGDF_ERD_VEC_AVX512)  // set by common/cpu/avx512_target.h
#define SGDF_ERD_CPU_CAPABILITY avx512
#elif defined(SGDF_ERD_VEC_AVX2)
#define SGDF_ERD_CPU_CAPABILITY avx2
#else
#define SGDF_ERD_CPU_CAPABILITY generic
#endif

#include "common/scalar_types.h"

namespace sgdf_erd::cpu {
inline namespace SGDF_ERD_CPU_CAPABILITY {

using sgdf_erd::BFloat16;
using sgdf_erd::Half;
using sgdf_erd::is_reduced_floating_point_v;
using sgdf_erd::opmath_t;

// Lanes of T in 32 bytes. Comparisons (gt, lt) give 1 or 0 per lane, so that they can enter arithmetic.
template <typename T>
struct Vec {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "Vec holds float or double lanes");
  static constexpr int kSize = 32 / sizeof(T);
  static constexpr int size() { return kSize; }
  T lane[kSize];

  Vec() = default;
  Vec(T x) {  // NOLINT(google-explicit-constructor): broadcasts, as scalar operands in formulas need
    for (int i = 0; i < kSize; ++i) lane[i] = x;
  }
  static Vec loadu(const T* p) {
    Vec v;
    std::memcpy(v.lane, p, sizeof(v.lane));
    return v;
  }
  // The first `count` lanes (0 < count < kSize) from p, the others zero; store(p, count) writes only those.
  static Vec loadu(const T* p, int count) {
    Vec v(T(0));
    std::memcpy(v.lane, p, count * sizeof(T));
    return v;
  }
  void store(T* p) const { std::memcpy(p, lane, sizeof(lane)); }
  void store(T* p, int count) const { std::memcpy(p, lane, count * sizeof(T)); }

  template <typename Op>
  Vec map(Op op) const {
    Vec r;
    for (int i = 0; i < kSize; ++i) r.lane[i] = op(lane[i]);
    return r;
  }
  template <typename Op>
  Vec zip(const Vec& b, Op op) const {
    Vec r;
    for (int i = 0; i < kSize; ++i) r.lane[i] = op(lane[i], b.lane[i]);
    return r;
  }
  Vec operator+(const Vec& b) const { return zip(b, [](T x, T y) { return x + y; }); }
  Vec operator-(const Vec& b) const { return zip(b, [](T x, T y) { return x - y; }); }
  Vec operator*(const Vec& b) const { return zip(b, [](T x, T y) { return x * y; }); }
  Vec operator/(const Vec& b) const { return zip(b, [](T x, T y) { return x / y; }); }
  Vec sqrt() const { return map([](T x) { return std::sqrt(x); }); }
  Vec pow(const Vec& e) const { return zip(e, [](T x, T y) { return std::pow(x, y); }); }
  Vec gt(const Vec& b) const { return zip(b, [](T x, T y) { return T(x > y); }); }
  Vec lt(const Vec& b) const { return zip(b, [](T x, T y) { return T(x < y); }); }
  // NaN-propagating, as torch.maximum / torch.minimum
  Vec maximum(const Vec& b) const {
    return zip(b, [](T x, T y) { return std::isnan(x) || std::isnan(y) ? x + y : (x > y ? x : y); });
  }
  Vec minimum(const Vec& b) const {
    return zip(b, [](T x, T y) { return std::isnan(x) || std::isnan(y) ? x + y : (x < y ? x : y); });
  }
  T sum() const {
    T s = 0;
    for (int i = 0; i < kSize; ++i) s += lane[i];
    return s;
  }
};

#if defined(SGDF_ERD_VEC_AVX512)
// 16 float / 8 double lanes. Comparisons give masks; gt/lt/maximum/minimum turn them into the same lane values as
// the AVX2 build (1 or 0; NaN as all-ones bits), so that an elementwise kernel's results do not depend on the
// build (sum() adds its lanes in another order than the AVX2 one).
template <>
struct Vec<float> {
  static constexpr int kSize = 16;
  static constexpr int size() { return kSize; }
  __m512 v;

  Vec() = default;
  Vec(__m512 x) : v(x) {}  // NOLINT(google-explicit-constructor)
  Vec(float x) : v(_mm512_set1_ps(x)) {}  // NOLINT(google-explicit-constructor)
  static Vec loadu(const float* p) { return _mm512_loadu_ps(p); }
  static Vec loadu(const float* p, int count) { return _mm512_maskz_loadu_ps(first_lanes(count), p); }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store(float* p, int count) const { _mm512_mask_storeu_ps(p, first_lanes(count), v); }
  static __mmask16 first_lanes(int count) { return static_cast<__mmask16>((1u << count) - 1); }

  Vec operator+(const Vec& b) const { return _mm512_add_ps(v, b.v); }
  Vec operator-(const Vec& b) const { return _mm512_sub_ps(v, b.v); }
  Vec operator*(const Vec& b) const { return _mm512_mul_ps(v, b.v); }
  Vec operator/(const Vec& b) const { return _mm512_div_ps(v, b.v); }
  Vec sqrt() const { return _mm512_sqrt_ps(v); }
  Vec pow(const Vec& e) const {
    alignas(64) float x[kSize], y[kSize];
    store(x);
    e.store(y);
    for (int i = 0; i < kSize; ++i) x[i] = std::pow(x[i], y[i]);
    return loadu(x);
  }
  Vec gt(const Vec& b) const { return ones_where(_mm512_cmp_ps_mask(v, b.v, _CMP_GT_OQ)); }
  Vec lt(const Vec& b) const { return ones_where(_mm512_cmp_ps_mask(v, b.v, _CMP_LT_OQ)); }
  Vec maximum(const Vec& b) const { return with_nan(_mm512_max_ps(v, b.v), b); }
  Vec minimum(const Vec& b) const { return with_nan(_mm512_min_ps(v, b.v), b); }
  float sum() const { return _mm512_reduce_add_ps(v); }

 private:
  static __m512 ones_where(__mmask16 m) { return _mm512_maskz_mov_ps(m, _mm512_set1_ps(1.f)); }
  __m512 with_nan(__m512 r, const Vec& b) const {  // all-ones bits where either operand is NaN
    return _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(v, b.v, _CMP_UNORD_Q), _mm512_castsi512_ps(_mm512_set1_epi32(-1)));
  }
};

template <>
struct Vec<double> {
  static constexpr int kSize = 8;
  static constexpr int size() { return kSize; }
  __m512d v;

  Vec() = default;
  Vec(__m512d x) : v(x) {}  // NOLINT(google-explicit-constructor)
  Vec(double x) : v(_mm512_set1_pd(x)) {}  // NOLINT(google-explicit-constructor)
  static Vec loadu(const double* p) { return _mm512_loadu_pd(p); }
  static Vec loadu(const double* p, int count) { return _mm512_maskz_loadu_pd(first_lanes(count), p); }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  void store(double* p, int count) const { _mm512_mask_storeu_pd(p, first_lanes(count), v); }
  static __mmask8 first_lanes(int count) { return static_cast<__mmask8>((1u << count) - 1); }

  Vec operator+(const Vec& b) const { return _mm512_add_pd(v, b.v); }
  Vec operator-(const Vec& b) const { return _mm512_sub_pd(v, b.v); }
  Vec operator*(const Vec& b) const { return _mm512_mul_pd(v, b.v); }
  Vec operator/(const Vec& b) const { return _mm512_div_pd(v, b.v); }
  Vec sqrt() const { return _mm512_sqrt_pd(v); }
  Vec pow(const Vec& e) const {
    alignas(64) double x[kSize], y[kSize];
    store(x);
    e.store(y);
    for (int i = 0; i < kSize; ++i) x[i] = std::pow(x[i], y[i]);
    return loadu(x);
  }
  Vec gt(const Vec& b) const { return ones_where(_mm512_cmp_pd_mask(v, b.v, _CMP_GT_OQ)); }
  Vec lt(const Vec& b) const { return ones_where(_mm512_cmp_pd_mask(v, b.v, _CMP_LT_OQ)); }
  Vec maximum(const Vec& b) const { return with_nan(_mm512_max_pd(v, b.v), b); }
  Vec minimum(const Vec& b) const { return with_nan(_mm512_min_pd(v, b.v), b); }
  double sum() const { return _mm512_reduce_add_pd(v); }

 private:
  static __m512d ones_where(__mmask8 m) { return _mm512_maskz_mov_pd(m, _mm512_set1_pd(1.0)); }
  __m512d with_nan(__m512d r, const Vec& b) const {
    return _mm512_mask_mov_pd(r, _mm512_cmp_pd_mask(v, b.v, _CMP_UNORD_Q), _mm512_castsi512_pd(_mm512_set1_epi64(-1)));
  }
};
#elif defined(SGDF_ERD_VEC_AVX2)
template <>
struct Vec<float> {
  static constexpr int kSize = 8;
  static constexpr int size() { return kSize; }
  __m256 v;

  Vec() = default;
  Vec(__m256 x) : v(x) {}  // NOLINT(google-explicit-constructor)
  Vec(float x) : v(_mm256_set1_ps(x)) {}  // NOLINT(google-explicit-constructor)
  static Vec loadu(const float* p) { return _mm256_loadu_ps(p); }
  static Vec loadu(const float* p, int count) { return _mm256_maskload_ps(p, first_lanes(count)); }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void store(float* p, int count) const { _mm256_maskstore_ps(p, first_lanes(count), v); }
  static __m256i first_lanes(int count) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }

  Vec operator+(const Vec& b) const { return _mm256_add_ps(v, b.v); }
  Vec operator-(const Vec& b) const { return _mm256_sub_ps(v, b.v); }
  Vec operator*(const Vec& b) const { return _mm256_mul_ps(v, b.v); }
  Vec operator/(const Vec& b) const { return _mm256_div_ps(v, b.v); }
  Vec sqrt() const { return _mm256_sqrt_ps(v); }
  Vec pow(const Vec& e) const {
    alignas(32) float x[kSize], y[kSize];
    store(x);
    e.store(y);
    for (int i = 0; i < kSize; ++i) x[i] = std::pow(x[i], y[i]);
    return loadu(x);
  }
  Vec gt(const Vec& b) const { return _mm256_and_ps(_mm256_cmp_ps(v, b.v, _CMP_GT_OQ), _mm256_set1_ps(1.f)); }
  Vec lt(const Vec& b) const { return _mm256_and_ps(_mm256_cmp_ps(v, b.v, _CMP_LT_OQ), _mm256_set1_ps(1.f)); }
  Vec maximum(const Vec& b) const {
    const __m256 nan = _mm256_cmp_ps(v, b.v, _CMP_UNORD_Q);
    return _mm256_or_ps(_mm256_max_ps(v, b.v), nan);  // all-ones bits are a NaN
  }
  Vec minimum(const Vec& b) const {
    const __m256 nan = _mm256_cmp_ps(v, b.v, _CMP_UNORD_Q);
    return _mm256_or_ps(_mm256_min_ps(v, b.v), nan);
  }
  float sum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

template <>
struct Vec<double> {
  static constexpr int kSize = 4;
  static constexpr int size() { return kSize; }
  __m256d v;

  Vec() = default;
  Vec(__m256d x) : v(x) {}  // NOLINT(google-explicit-constructor)
  Vec(double x) : v(_mm256_set1_pd(x)) {}  // NOLINT(google-explicit-constructor)
  static Vec loadu(const double* p) { return _mm256_loadu_pd(p); }
  static Vec loadu(const double* p, int count) { return _mm256_maskload_pd(p, first_lanes(count)); }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  void store(double* p, int count) const { _mm256_maskstore_pd(p, first_lanes(count), v); }
  static __m256i first_lanes(int count) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(count), _mm256_setr_epi64x(0, 1, 2, 3));
  }

  Vec operator+(const Vec& b) const { return _mm256_add_pd(v, b.v); }
  Vec operator-(const Vec& b) const { return _mm256_sub_pd(v, b.v); }
  Vec operator*(const Vec& b) const { return _mm256_mul_pd(v, b.v); }
  Vec operator/(const Vec& b) const { return _mm256_div_pd(v, b.v); }
  Vec sqrt() const { return _mm256_sqrt_pd(v); }
  Vec pow(const Vec& e) const {
    alignas(32) double x[kSize], y[kSize];
    store(x);
    e.store(y);
    for (int i = 0; i < kSize; ++i) x[i] = std::pow(x[i], y[i]);
    return loadu(x);
  }
  Vec gt(const Vec& b) const { return _mm256_and_pd(_mm256_cmp_pd(v, b.v, _CMP_GT_OQ), _mm256_set1_pd(1.0)); }
  Vec lt(const Vec& b) const { return _mm256_and_pd(_mm256_cmp_pd(v, b.v, _CMP_LT_OQ), _mm256_set1_pd(1.0)); }
  Vec maximum(const Vec& b) const {
    const __m256d nan = _mm256_cmp_pd(v, b.v, _CMP_UNORD_Q);
    return _mm256_or_pd(_mm256_max_pd(v, b.v), nan);
  }
  Vec minimum(const Vec& b) const {
    const __m256d nan = _mm256_cmp_pd(v, b.v, _CMP_UNORD_Q);
    return _mm256_or_pd(_mm256_min_pd(v, b.v), nan);
  }
  double sum() const {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
};
#endif  // SGDF_ERD_VEC_AVX512 / SGDF_ERD_VEC_AVX2

// a * b + c, fused where the hardware has it
template <typename T>
inline Vec<T> fmadd(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {
#if defined(SGDF_ERD_VEC_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_fmadd_ps(a.v, b.v, c.v);
  } else {
    return _mm512_fmadd_pd(a.v, b.v, c.v);
  }
#elif defined(SGDF_ERD_VEC_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    return _mm256_fmadd_ps(a.v, b.v, c.v);
  } else {
    return _mm256_fmadd_pd(a.v, b.v, c.v);
  }
#else
  return a * b + c;
#endif
}

// One vector of opmath_t<T> from Vec<opmath_t<T>>::size() consecutive T (converted when T is 16-bit), and back.
template <typename T>
inline Vec<opmath_t<T>> load_as(const T* p) {
  if constexpr (!is_reduced_floating_point_v<T>) {
    return Vec<T>::loadu(p);
  } else {
#if defined(SGDF_ERD_VEC_AVX512)
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if constexpr (std::is_same_v<T, Half>) {
      return Vec<float>(_mm512_cvtph_ps(bits));
    } else {
      return Vec<float>(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)));
    }
#elif defined(SGDF_ERD_VEC_AVX2)
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (std::is_same_v<T, Half>) {
      return Vec<float>(_mm256_cvtph_ps(bits));
    } else {  // bfloat16 is the upper half of a float
      return Vec<float>(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16)));
    }
#else
    alignas(32) float x[Vec<float>::kSize];
    for (int i = 0; i < Vec<float>::kSize; ++i) x[i] = static_cast<float>(p[i]);
    return Vec<float>::loadu(x);
#endif
  }
}

#ifdef SGDF_ERD_VEC_AVX2
// bfloat16 bit patterns (one per 32-bit lane) of 8 floats rounded to nearest even, NaN to the canonical quiet NaN
// 0x7fc0 (as BFloat16's own conversion).
inline __m256i bfloat16_bits_to_nearest(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
}

// Stores the low 16 bits of 8 lanes (each < 2^16) as 8 consecutive 16-bit values.
inline void store_low_halves(void* p, __m256i lanes) {
  // packus works per 128-bit half; the permute puts the two halves' results side by side
  const __m128i bits = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(lanes, lanes), 0x08));
  _mm_storeu_si128(static_cast<__m128i*>(p), bits);
}
#endif

#if defined(SGDF_ERD_VEC_AVX512)
// bfloat16 bit patterns of 16 floats rounded to nearest even, NaN to 0x7fc0, as bfloat16_bits_to_nearest. The
// AVX512-BF16 instruction rounds the same way except that it flushes subnormals to zero and keeps NaN payloads, so
// vectors holding either take the integer sequence.
inline __m256i bfloat16_to_nearest(__m512 x) {
  if (!_mm512_fpclass_ps_mask(x, 0xA1)) {  // no lane is a NaN (0x01 quiet, 0x80 signalling) or subnormal (0x20)
    return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x));
  }
  const __m512i u = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7fc0)));
}
#endif

template <typename T>
inline void store_as(T* p, const Vec<opmath_t<T>>& v) {
  if constexpr (!is_reduced_floating_point_v<T>) {
    v.store(p);
  } else {
#if defined(SGDF_ERD_VEC_AVX512)
    if constexpr (std::is_same_v<T, Half>) {
      const __m256i bits = _mm512_cvtps_ph(v.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bits);
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bfloat16_to_nearest(v.v));
    }
#elif defined(SGDF_ERD_VEC_AVX2)
    if constexpr (std::is_same_v<T, Half>) {
      const __m128i bits = _mm256_cvtps_ph(v.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), bits);
    } else {
      store_low_halves(p, bfloat16_bits_to_nearest(v.v));
    }
#else
    alignas(32) float x[Vec<float>::kSize];
    v.store(x);
    for (int i = 0; i < Vec<float>::kSize; ++i) p[i] = static_cast<T>(x[i]);
#endif
  }
}

// dst[0..n) = src[0..n) converted, for staging 16-bit data through float buffers (either direction).
template <typename From, typename To>
inline void convert(const From* src, To* dst, int64_t n) {
  int64_t i = 0;
  constexpr int kStep = Vec<float>::kSize;
  if constexpr (is_reduced_floating_point_v<From> && std::is_same_v<To, float>) {
    for (; i + kStep <= n; i += kStep) load_as(src + i).store(dst + i);
  } else if constexpr (std::is_same_v<From, float> && is_reduced_floating_point_v<To>) {
    for (; i + kStep <= n; i += kStep) store_as(dst + i, Vec<float>::loadu(src + i));
  }
  for (; i < n; ++i) dst[i] = static_cast<To>(static_cast<float>(src[i]));
}

}  // namespace SGDF_ERD_CPU_CAPABILITY
}  // namespace sgdf_erd::cpu
