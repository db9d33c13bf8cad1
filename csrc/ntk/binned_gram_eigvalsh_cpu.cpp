// CPU implementation of sgdf_erd::binned_gram_eigvalsh: rows are grouped by bin (stable counting sort), then the
// bins are solved in parallel, largest first, each worker pulling the next bin from a shared counter (one thread
// per bin; skewed bins still balance). Per bin: the smaller of F_b F_b^T and F_b^T F_b (binned_gram.h; formed by
// gram_cpu.h, no BLAS call inside the parallel region) of the bin's features scaled by a power of two (exact; see
// binned_gram.h), scaled again to unit max entry, Householder + QL
// (symmetric_eigvals_cpu.h), sorted descending. Round-off below zero is clamped to 0: a Gram matrix is positive
// semidefinite. A bin holding a non-finite feature gets NaN eigenvalues.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <limits>
#include <numeric>
#include <tuple>
#include <vector>

#include "ntk/binned_gram.h"
#include "ntk/gram_cpu.h"
#include "ntk/symmetric_eigvals_cpu.h"

namespace sgdf_erd::ntk {
namespace {

struct Groups {
  std::vector<int64_t> offsets;  // [num_bins + 1]
  std::vector<int64_t> rows;     // row indices, bin by bin, in input order within a bin
  int64_t max_count = 0;
};

Groups group_rows(const at::Tensor& ids, int64_t num_bins) {
  const int64_t n = ids.numel();
  const int64_t* id = ids.const_data_ptr<int64_t>();
  Groups g;
  g.offsets.assign(num_bins + 1, 0);
  int64_t lowest = 0, highest = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = id[i];
    lowest = std::min(lowest, b);
    highest = std::max(highest, b);
    if (b >= 0 && b < num_bins) ++g.offsets[b + 1];
  }
  check_bin_range(lowest, highest, num_bins);
  for (int64_t b = 0; b < num_bins; ++b) {
    g.max_count = std::max(g.max_count, g.offsets[b + 1]);
    g.offsets[b + 1] += g.offsets[b];
  }
  g.rows.resize(n);
  std::vector<int64_t> next(g.offsets.begin(), g.offsets.end() - 1);
  for (int64_t i = 0; i < n; ++i) g.rows[next[id[i]]++] = i;
  return g;
}

template <typename T>
struct Workspace {
  std::vector<T> gram, d, e, p, xt;  // xt: F_b^T, only for bins with more rows than features
  explicit Workspace(int64_t m) : gram(m * m), d(m), e(m), p(m) {}
};

// X X^T with X = F_b (count <= k) or F_b^T (count > k); fb: the bin's [count, k] rows.
template <typename T>
void form_gram(const T* fb, int64_t k, int64_t count, int64_t m, Workspace<T>& ws) {
  if (count <= k) {
    cpu::gram_matrix(fb, m, k, k, ws.gram.data());
    return;
  }
  ws.xt.resize(k * count);
  for (int64_t r = 0; r < count; ++r)
    for (int64_t c = 0; c < k; ++c) ws.xt[c * count + r] = fb[r * k + c];
  cpu::gram_matrix(ws.xt.data(), m, count, count, ws.gram.data());
}

// Solves bin b in place: its rows [offset, offset + count) of the bin-sorted copy are scaled by a power of two
// first (binned_gram.h), so the Gram matrix is finite for any finite features.
template <typename T>
void solve_bin(T* sorted, int64_t k, int64_t offset, int64_t count, T* out, Workspace<T>& ws) {
  const int64_t m = gram_dim(count, k);
  if (m == 0) return;  // k == 0: all eigenvalues are zero (out is pre-zeroed)
  T* fb = sorted + offset * k;
  T max_abs = 0;
  bool finite = true;
  for (int64_t i = 0; i < count * k; ++i) {
    finite = finite && std::isfinite(fb[i]);
    max_abs = std::max(max_abs, std::abs(fb[i]));
  }
  if (!finite) {
    std::fill(out, out + count, std::numeric_limits<T>::quiet_NaN());
    return;
  }
  if (max_abs == T(0)) return;  // all-zero rows
  const int exponent = bin_scale_exponent(max_abs);
  const T factor = std::ldexp(T(1), -exponent);
  for (int64_t i = 0; i < count * k; ++i) fb[i] *= factor;
  form_gram(fb, k, count, m, ws);
  T* g = ws.gram.data();
  T scale = 0;
  for (int64_t i = 0; i < m * m; ++i) scale = std::max(scale, std::abs(g[i]));
  if (scale == T(0)) return;  // rows that underflowed to zero (subnormal features)
  const T inv = T(1) / scale;  // unit max entry: no underflow inside the reduction
  for (int64_t i = 0; i < m * m; ++i) g[i] *= inv;
  cpu::householder_tridiagonalize(g, m, ws.d.data(), ws.e.data(), ws.p.data());
  const bool converged = cpu::tridiagonal_ql(ws.d.data(), ws.e.data(), m);
  TORCH_CHECK(converged, kOpName, ": the QL eigenvalue iteration did not converge on a ", m, "x", m,
              " Gram matrix; please report this input");
  std::sort(ws.d.begin(), ws.d.begin() + m, std::greater<T>());
  for (int64_t i = 0; i < m; ++i) out[i] = std::ldexp(std::max(ws.d[i], T(0)) * scale, 2 * exponent);
}

template <typename T>
void solve_all(at::Tensor& sorted, const Groups& g, int64_t num_bins, at::Tensor& eig) {
  T* out = eig.data_ptr<T>();
  const int64_t stride = eig.size(1);
  std::vector<int64_t> order(num_bins);  // largest bins first, so the last ones to finish are cheap
  std::iota(order.begin(), order.end(), 0);
  auto count = [&](int64_t b) { return g.offsets[b + 1] - g.offsets[b]; };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return count(a) > count(b); });
  int64_t busy = 0;
  while (busy < num_bins && count(order[busy]) > 0) ++busy;
  if (busy == 0) return;
  const int64_t max_m = gram_dim(g.max_count, sorted.size(1));
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(busy, at::get_num_threads());
  // One task per worker; inside another parallel region this runs inline on the caller's thread.
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    Workspace<T> ws(max_m);
    for (int64_t w = begin; w < end; ++w) {
      for (int64_t i = next++; i < busy; i = next++) {
        const int64_t b = order[i];
        solve_bin<T>(sorted.mutable_data_ptr<T>(), sorted.size(1), g.offsets[b], count(b), out + b * stride, ws);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> binned_gram_eigvalsh_cpu(const at::Tensor& features, const at::Tensor& bin_ids,
                                                            int64_t num_bins) {
  check_binned_gram_args(features, bin_ids, num_bins);
  const Groups g = group_rows(bin_ids.to(at::kLong).contiguous(), num_bins);
  at::Tensor eig = at::zeros({num_bins, g.max_count}, features.options());
  at::Tensor counts = at::empty({num_bins}, features.options().dtype(at::kLong));
  int64_t* c = counts.data_ptr<int64_t>();
  for (int64_t b = 0; b < num_bins; ++b) c[b] = g.offsets[b + 1] - g.offsets[b];
  // Bin-contiguous copy of the features, so that each bin is one dense [count, k] block.
  at::Tensor sorted = features.index_select(0, at::from_blob(const_cast<int64_t*>(g.rows.data()),
                                                                   {static_cast<int64_t>(g.rows.size())},
                                                                   bin_ids.options().dtype(at::kLong)))
                                .contiguous();
  AT_DISPATCH_FLOATING_TYPES(sorted.scalar_type(), "binned_gram_eigvalsh_cpu",
                             [&] { solve_all<scalar_t>(sorted, g, num_bins, eig); });
  return {eig, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgdf_erd, CPU, m) { m.impl("binned_gram_eigvalsh", &binned_gram_eigvalsh_cpu); }

}  // namespace sgdf_erd::ntk
