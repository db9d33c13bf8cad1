// X X^T for a small row-major X on one CPU thread, vectorised with common/cpu/vec.h. It runs inside the
// bin-parallel region of binned_gram_eigvalsh, where calling BLAS would nest its threads in ours (under a loaded
// machine that oversubscribes the cores by an order of magnitude in time).
#pragma once

#include "common/cpu/vec.h"

#include <algorithm>
#include <cstdint>

namespace sgdf_erd::ntk::cpu {

// Dots of rows r[0..R) with rows c[0..C) over `len` entries: out[a][b] = <r_a, c_b>. R x C accumulators stay in
// registers (R = 2, C = 4: 8 accumulators + 3 operands of the 16 AVX2 registers).
template <typename T, int R, int C>
inline void dot_block(const T* const* r, const T* const* c, int64_t len, T out[R][C]) {
  using Vec = sgdf_erd::cpu::Vec<T>;
  constexpr int64_t W = Vec::size();
  Vec acc[R][C];
  for (int a = 0; a < R; ++a)
    for (int b = 0; b < C; ++b) acc[a][b] = Vec(T(0));
  int64_t l = 0;
  for (; l + W <= len; l += W) {
    Vec rv[R];
    for (int a = 0; a < R; ++a) rv[a] = Vec::loadu(r[a] + l);
    for (int b = 0; b < C; ++b) {
      const Vec cv = Vec::loadu(c[b] + l);
      for (int a = 0; a < R; ++a) acc[a][b] = sgdf_erd::cpu::fmadd(rv[a], cv, acc[a][b]);
    }
  }
  for (int a = 0; a < R; ++a) {
    for (int b = 0; b < C; ++b) {
      T s = acc[a][b].sum();
      for (int64_t t = l; t < len; ++t) s += r[a][t] * c[b][t];
      out[a][b] = s;
    }
  }
}

// g (m x m, row-major) = X X^T, X: m rows of length len, row stride ldx. The upper triangle is computed and
// mirrored, so g is exactly symmetric.
template <typename T>
void gram_matrix(const T* x, int64_t m, int64_t len, int64_t ldx, T* g) {
  for (int64_t i0 = 0; i0 < m; i0 += 2) {
    const int64_t ni = std::min<int64_t>(2, m - i0);
    for (int64_t j0 = i0; j0 < m; j0 += 4) {
      const int64_t nj = std::min<int64_t>(4, m - j0);
      if (ni == 2 && nj == 4) {
        const T* r[2] = {x + i0 * ldx, x + (i0 + 1) * ldx};
        const T* c[4] = {x + j0 * ldx, x + (j0 + 1) * ldx, x + (j0 + 2) * ldx, x + (j0 + 3) * ldx};
        T out[2][4];
        dot_block<T, 2, 4>(r, c, len, out);
        for (int a = 0; a < 2; ++a)
          for (int b = 0; b < 4; ++b)
            if (j0 + b >= i0 + a) g[(i0 + a) * m + j0 + b] = out[a][b];
      } else {
        for (int64_t i = i0; i < i0 + ni; ++i) {
          for (int64_t j = std::max(j0, i); j < j0 + nj; ++j) {
            const T* r[1] = {x + i * ldx};
            const T* c[1] = {x + j * ldx};
            T out[1][1];
            dot_block<T, 1, 1>(r, c, len, out);
            g[i * m + j] = out[0][0];
          }
        }
      }
    }
  }
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < i; ++j) g[i * m + j] = g[j * m + i];
}

}  // namespace sgdf_erd::ntk::cpu
