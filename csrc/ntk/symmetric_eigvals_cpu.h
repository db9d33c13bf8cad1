// Eigenvalues of a small dense symmetric matrix on one CPU thread: Householder reduction to tridiagonal form, then
// implicit QL with Wilkinson-type shifts (the EISPACK tred/tql pair, eigenvalues only). ~(4/3) n^3 flops, against
// ~10 sweeps x 2 n^3 for Jacobi, and no tensor or LAPACK call per matrix, so thousands of small bins cost little.
// Inner loops are unit-stride axpy updates that the compiler vectorises.
#pragma once

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <limits>

namespace sgdf_erd::ntk::cpu {

// a: n x n row-major, full symmetric storage; destroyed. Writes diagonal d[n] and off-diagonal e[n] (e[i] couples
// i and i+1; e[n-1] = 0). p: scratch of n.
template <typename T>
void householder_tridiagonalize(T* a, int64_t n, T* d, T* e, T* p) {
  for (int64_t k = 0; k + 2 < n; ++k) {
    T* row = a + k * n;
    d[k] = row[k];
    T* v = row + k + 1;  // column k below the diagonal (= row k right of it); becomes the Householder vector
    const int64_t len = n - k - 1;
    T tail = 0;
    for (int64_t j = 1; j < len; ++j) tail += v[j] * v[j];
    if (tail == T(0)) {  // column already tridiagonal
      e[k] = v[0];
      continue;
    }
    const T sigma = std::sqrt(v[0] * v[0] + tail);
    const T alpha = v[0] >= T(0) ? -sigma : sigma;
    const T beta = T(1) / (sigma * (sigma + std::abs(v[0])));  // 2 / (v^T v)
    v[0] -= alpha;
    e[k] = alpha;
    // Trailing block S = a[k+1:, k+1:]: p = beta S v, w = p - (beta p.v / 2) v, S -= v w^T + w v^T.
    T* s = a + (k + 1) * n + (k + 1);
    for (int64_t i = 0; i < len; ++i) p[i] = 0;
    for (int64_t j = 0; j < len; ++j) {
      const T vj = v[j];
      const T* sj = s + j * n;  // row j of S = column j by symmetry
      for (int64_t i = 0; i < len; ++i) p[i] += vj * sj[i];
    }
    T pv = 0;
    for (int64_t i = 0; i < len; ++i) {
      p[i] *= beta;
      pv += p[i] * v[i];
    }
    const T half = beta * pv / T(2);
    for (int64_t i = 0; i < len; ++i) p[i] -= half * v[i];
    for (int64_t i = 0; i < len; ++i) {
      T* si = s + i * n;
      const T vi = v[i], wi = p[i];
      for (int64_t j = 0; j < len; ++j) si[j] -= vi * p[j] + wi * v[j];
    }
  }
  if (n >= 2) {
    d[n - 2] = a[(n - 2) * n + (n - 2)];
    e[n - 2] = a[(n - 2) * n + (n - 1)];
  }
  d[n - 1] = a[(n - 1) * n + (n - 1)];
  e[n - 1] = 0;
}

// Eigenvalues (unsorted, into d) of the symmetric tridiagonal (d, e), entries of order 1 (scale the matrix first);
// e is destroyed. Returns false if some
// eigenvalue needed more than kMaxIter QL sweeps (not seen in practice; NaN input ends that way).
template <typename T>
bool tridiagonal_ql(T* d, T* e, int64_t n) {
  constexpr int kMaxIter = 60;
  constexpr T eps = std::numeric_limits<T>::epsilon();
  // An off-diagonal element is negligible below eps times its diagonal neighbours or eps times the matrix norm
  // (EISPACK tql1's absolute test). The local test alone never passes on a strongly graded spectrum: eigenvalues
  // far below eps * ||T|| carry absolute round-off of that size, so they cannot converge to relative accuracy.
  T norm = 0;
  for (int64_t i = 0; i < n; ++i) norm = std::max(norm, std::abs(d[i]) + std::abs(e[i]));
  const T floor = eps * norm;
  for (int64_t l = 0; l < n; ++l) {
    int iter = 0;
    int64_t m;
    do {
      for (m = l; m < n - 1; ++m) {  // find a negligible off-diagonal element: the matrix splits there
        const T dd = std::abs(d[m]) + std::abs(d[m + 1]);
        if (std::abs(e[m]) <= std::max(eps * dd, floor)) break;
      }
      if (m == l) break;
      if (++iter > kMaxIter) return false;
      T g = (d[l + 1] - d[l]) / (T(2) * e[l]);
      T r = std::hypot(g, T(1));
      g = d[m] - d[l] + e[l] / (g + std::copysign(r, g));  // shift from the trailing 2x2 (Wilkinson)
      T s = 1, c = 1, p = 0;
      int64_t i = m - 1;
      bool underflow = false;
      for (; i >= l; --i) {  // chase the bulge from m up to l with Givens rotations
        const T f = s * e[i];
        const T b = c * e[i];
        r = std::sqrt(f * f + g * g);  // no hypot: entries are O(1) after the caller's scaling
        e[i + 1] = r;
        if (r == T(0)) {  // recover from underflow: deflate and restart
          d[i + 1] -= p;
          e[m] = 0;
          underflow = true;
          break;
        }
        const T inv_r = T(1) / r;
        s = f * inv_r;
        c = g * inv_r;
        g = d[i + 1] - p;
        r = (d[i] - g) * s + T(2) * c * b;
        p = s * r;
        d[i + 1] = g + p;
        g = c * r - b;
      }
      if (underflow) continue;
      d[l] -= p;
      e[l] = g;
      e[m] = 0;
    } while (true);
  }
  return true;
}

}  // namespace sgdf_erd::ntk::cpu
