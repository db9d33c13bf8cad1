// Host side of the CUDA sgdf_erd::binned_gram_eigvalsh (compiled only in CUDA builds): validates bin ids and reads
// the per-bin counts back in one synchronisation (the output width depends on them), groups rows by bin with a
// stable sort, launches the on-chip Jacobi kernel (binned_gram_jacobi.cu) for bins of Gram order <= its limit, and
// solves any larger bin with cuSOLVER through torch.linalg.eigvalsh, one bin at a time (each is then a big
// matrix, where a library solver is efficient), from a Gram matrix formed in float64.
#ifdef SGDF_ERD_WITH_CUDA

#include <ATen/ops/cat.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/linalg_eigvalsh.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "ntk/binned_gram.h"
#include "ntk/binned_gram_cuda.h"

namespace sgdf_erd::ntk::cuda {
namespace {

// A bin too big for the on-chip kernel. Its Gram matrix is formed in float64 from the features scaled by a power
// of two (binned_gram.h): TF32, which torch.backends.cuda.matmul.allow_tf32 applies to float32 matmuls, never
// touches it, and no entry overflows. Then torch.linalg.eigvalsh (cuSOLVER) in the features' dtype.
void solve_with_library(const at::Tensor& f, const at::Tensor& order, int64_t start, int64_t count, at::Tensor row) {
  const at::Tensor fb = f.index_select(0, order.narrow(0, start, count)).to(at::kDouble);
  // one synchronisation per big bin (its eigensolver synchronises anyway)
  const double max_abs = fb.abs().amax().item<double>();
  if (!std::isfinite(max_abs)) {
    row.narrow(0, 0, count).fill_(std::numeric_limits<double>::quiet_NaN());
    return;
  }
  if (max_abs == 0) return;  // all-zero rows: row is pre-zeroed
  const int exponent = f.scalar_type() == at::kDouble ? bin_scale_exponent(max_abs)
                                                       : bin_scale_exponent(static_cast<float>(max_abs));
  const at::Tensor x = fb.mul(std::ldexp(1.0, -exponent));
  const at::Tensor g = count <= f.size(1) ? at::mm(x, x.t()) : at::mm(x.t(), x);
  const double unscale = std::ldexp(1.0, exponent);
  const at::Tensor e = at::linalg_eigvalsh(g.to(f.scalar_type())).to(at::kDouble).flip(0).clamp_min(0);
  row.narrow(0, 0, e.size(0)).copy_(e.mul(unscale).mul_(unscale));
}

std::tuple<at::Tensor, at::Tensor> binned_gram_eigvalsh_cuda(const at::Tensor& features, const at::Tensor& bin_ids,
                                                             int64_t num_bins) {
  check_binned_gram_args(features, bin_ids, num_bins);
  const c10::DeviceGuard guard(features.device());  // generic guard: this file needs no CUDA headers
  const at::Tensor f = features.contiguous();
  const at::Tensor ids = bin_ids.to(at::kLong).contiguous();
  const int64_t n = f.size(0), k = f.size(1);
  if (n == 0) return {at::zeros({num_bins, 0}, f.options()), at::zeros({num_bins}, ids.options())};

  // Counts of the clamped ids are only used once the range check has passed.
  const at::Tensor clamped = ids.clamp(0, num_bins - 1);
  const at::Tensor counts = at::zeros({num_bins}, ids.options()).index_add_(0, clamped, at::ones_like(clamped));
  const at::Tensor host = at::cat({ids.min().reshape({1}), ids.max().reshape({1}), counts}).cpu();
  const int64_t* h = host.const_data_ptr<int64_t>();
  check_bin_range(h[0], h[1], num_bins);
  const int64_t* host_counts = h + 2;
  const int64_t max_count = *std::max_element(host_counts, host_counts + num_bins);

  at::Tensor eig = at::zeros({num_bins, max_count}, f.options());
  if (k == 0) return {eig, counts};
  const at::Tensor order = std::get<1>(at::sort(ids, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  const at::Tensor starts = at::cumsum(counts, 0).sub_(counts);

  const int64_t max_dim = jacobi_max_dim(f.scalar_type());
  int64_t launch_dim = 0;
  std::vector<int64_t> big;
  for (int64_t b = 0; b < num_bins; ++b) {
    const int64_t m = gram_dim(host_counts[b], k);
    if (m > max_dim) {
      big.push_back(b);
    } else {
      launch_dim = std::max(launch_dim, m);
    }
  }
  if (launch_dim > 0) launch_binned_jacobi(f, order, starts, counts, max_dim, launch_dim, eig);
  if (!big.empty()) {
    int64_t start = 0;
    std::vector<int64_t> host_starts(num_bins);
    for (int64_t b = 0; b < num_bins; ++b) {
      host_starts[b] = start;
      start += host_counts[b];
    }
    for (const int64_t b : big) solve_with_library(f, order, host_starts[b], host_counts[b], eig[b]);
  }
  return {eig, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgdf_erd, CUDA, m) { m.impl("binned_gram_eigvalsh", &binned_gram_eigvalsh_cuda); }

}  // namespace sgdf_erd::ntk::cuda

#endif  // SGDF_ERD_WITH_CUDA
