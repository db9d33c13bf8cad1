// CPU implementation of sgdf_erd::binned_gram_eigvalsh: rows are grouped by bin (stable counting sort), then the
// bins are solved in parallel, largest first, each worker pulling the next bin from a shared counter (one thread
// per bin; skewed bins still balance). Per bin: the smaller of F_b F_b^T and F_b^T F_b (binned_gram.h; formed by
// gram_cpu.h, no BLAS call inside the parallel region) of the bin's features scaled by a power of two (exact; see
// binned_gram.h), scaled again to unit max entry, Householder + QL
// (symmetric_eigvals_cpu.h), sorted descending. Round-off below zero is clamped to 0: a Gram matrix is positive
// semidefinite. A bin holding a non-finite feature gets NaN eigenvalues.
#include <algorithm>
#include <atomic>
#include <functional>
#include <limits>
#include <tuple>
#include <vector>

#include "common/aten_call.h"
#include "common/cpu/parallel.h"
#include "ntk/binned_gram.h"
#include "ntk/gram_cpu.h"
#include "ntk/symmetric_eigvals_cpu.h"

namespace sgdf_erd::ntk {
namespace {

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
bool solve_bin(T* sorted, int64_t k, int64_t offset, int64_t count, T* out, Workspace<T>& ws) {
  const int64_t m = gram_dim(count, k);
  if (m == 0) return true;  // k == 0: all eigenvalues are zero (out is pre-zeroed)
  T* fb = sorted + offset * k;
  T max_abs = 0;
  bool finite = true;
  for (int64_t i = 0; i < count * k; ++i) {
    finite = finite && std::isfinite(fb[i]);
    max_abs = std::max(max_abs, std::abs(fb[i]));
  }
  if (!finite) {
    std::fill(out, out + count, std::numeric_limits<T>::quiet_NaN());
    return true;
  }
  if (max_abs == T(0)) return true;  // all-zero rows
  const int exponent = bin_scale_exponent(max_abs);
  const T factor = std::ldexp(T(1), -exponent);
  for (int64_t i = 0; i < count * k; ++i) fb[i] *= factor;
  form_gram(fb, k, count, m, ws);
  T* g = ws.gram.data();
  T scale = 0;
  for (int64_t i = 0; i < m * m; ++i) scale = std::max(scale, std::abs(g[i]));
  if (scale == T(0)) return true;  // rows that underflowed to zero (subnormal features)
  const T inv = T(1) / scale;  // unit max entry: no underflow inside the reduction
  for (int64_t i = 0; i < m * m; ++i) g[i] *= inv;
  cpu::householder_tridiagonalize(g, m, ws.d.data(), ws.e.data(), ws.p.data());
  if (!cpu::tridiagonal_ql(ws.d.data(), ws.e.data(), m)) return false;
  std::sort(ws.d.begin(), ws.d.begin() + m, std::greater<T>());
  for (int64_t i = 0; i < m; ++i) out[i] = std::ldexp(std::max(ws.d[i], T(0)) * scale, 2 * exponent);
  return true;
}

// Solves every non-empty bin; returns the order of a Gram matrix the QL iteration failed on, or 0.
template <typename T>
int64_t solve_all(const Tensor& sorted, const BinGroups& g, Tensor& eig) {
  const int64_t num_bins = eig.size(0), stride = eig.size(1), k = sorted.size(1);
  T* out = eig.mutable_data_ptr<T>();
  T* rows = sorted.mutable_data_ptr<T>();
  std::vector<int64_t> order(num_bins);  // largest bins first, so the last ones to finish are cheap
  for (int64_t b = 0; b < num_bins; ++b) order[b] = b;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return g.count(a) > g.count(b); });
  int64_t busy = 0;
  while (busy < num_bins && g.count(order[busy]) > 0) ++busy;
  if (busy == 0) return 0;
  const int64_t max_m = gram_dim(g.max_count, k);
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> failed{0};  // no exception may cross the parallel-for's C interface
  const int64_t workers = std::min<int64_t>(busy, sgdf_erd::cpu::num_threads());
  // One task per worker; inside another parallel region this runs inline on the caller's thread.
  sgdf_erd::cpu::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    Workspace<T> ws(max_m);
    for (int64_t w = begin; w < end; ++w) {
      for (int64_t i = next++; i < busy; i = next++) {
        const int64_t b = order[i];
        if (!solve_bin<T>(rows, k, g.offsets[b], g.count(b), out + b * stride, ws)) {
          failed = gram_dim(g.count(b), k);
        }
      }
    }
  });
  return failed;
}

std::tuple<Tensor, Tensor> binned_gram_eigvalsh_cpu(const Tensor& features, const Tensor& bin_ids,
                                                    int64_t num_bins) {
  BinnedGramCall call = prepare_binned_gram(features, bin_ids, num_bins);
  const BinGroups& g = call.groups;
  const int64_t n = static_cast<int64_t>(g.rows.size());
  // Bin-contiguous copy of the features, so that each bin is one dense [count, k] block (scaled in place).
  const Tensor rows = torch::stable::from_blob(const_cast<int64_t*>(g.rows.data()), {n}, {1}, call.counts.device(),
                                               torch::headeronly::ScalarType::Long);
  const Tensor sorted = call_aten("aten::index_select", "", call.features, int64_t{0}, rows);
  const int64_t failed = call.features.scalar_type() == torch::headeronly::ScalarType::Double
                             ? solve_all<double>(sorted, g, call.eig)
                             : solve_all<float>(sorted, g, call.eig);
  SGDF_ERD_CHECK(failed == 0, kOpName, ": the QL eigenvalue iteration did not converge on a ", failed, "x", failed,
                 " Gram matrix; please report this input");
  return {call.eig, call.counts};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(sgdf_erd, CPU, m) { m.impl("binned_gram_eigvalsh", TORCH_BOX(&binned_gram_eigvalsh_cpu)); }

}  // namespace sgdf_erd::ntk
