// Host side of the CUDA sgdf_erd::binned_gram_eigvalsh (compiled only in CUDA builds). The shared preparation
// (binned_gram.h) reads the bin ids back once (the output width depends on the counts) and groups the rows on the
// host; the grouping goes to the device in one copy, the on-chip Jacobi kernel (binned_gram_jacobi.cu) solves the
// bins of Gram order <= its limit, and each larger bin is solved by aten::linalg_eigvalsh (cuSOLVER), called
// through the dispatcher, from a Gram matrix formed in float64 (a big matrix, where a library solver is
// efficient).
#include <torch/csrc/stable/accelerator.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "common/aten_call.h"
#include "ntk/binned_gram.h"
#include "ntk/cuda/binned_gram_jacobi.h"

namespace sgdf_erd::ntk::cuda {
namespace {

using torch::headeronly::ScalarType;

const torch::stable::Device kCpu(torch::headeronly::DeviceType::CPU);

// narrow() of a tensor handle (torch::stable::narrow takes a non-const reference).
Tensor slice(Tensor t, int64_t dim, int64_t start, int64_t length) {
  return torch::stable::narrow(t, dim, start, length);
}

// A bin too big for the on-chip kernel. Its Gram matrix is formed in float64 from the features scaled by a power
// of two (binned_gram.h): TF32, which torch.backends.cuda.matmul.allow_tf32 applies to float32 matmuls, never
// touches it, and no entry overflows. Then linalg_eigvalsh (cuSOLVER) in the features' dtype; the count
// eigenvalues go back to the host (the solver synchronises anyway), are ordered, clamped and unscaled there, and
// are copied into the bin's row.
void solve_with_library(const Tensor& f, const Tensor& order, int64_t start, int64_t count, Tensor row) {
  const Tensor fb = torch::stable::to(call_aten("aten::index_select", "", f, int64_t{0}, slice(order, 0, start, count)),
                                      ScalarType::Double);
  const Tensor max_abs_t = torch::stable::to(torch::stable::amax(call_aten("aten::abs", "", fb), {0, 1}), kCpu);
  const double max_abs = *max_abs_t.const_data_ptr<double>();
  if (!std::isfinite(max_abs)) {
    torch::stable::fill_(row, std::numeric_limits<double>::quiet_NaN());
    return;
  }
  if (max_abs == 0) return;  // all-zero rows: row is pre-zeroed
  const bool is_double = f.scalar_type() == ScalarType::Double;
  const int exponent = is_double ? bin_scale_exponent(max_abs) : bin_scale_exponent(static_cast<float>(max_abs));
  const Tensor scale = torch::stable::full({}, std::ldexp(1.0, -exponent), ScalarType::Double, std::nullopt,
                                           fb.device());
  const Tensor x = call_aten("aten::mul", "Tensor", fb, scale);
  const Tensor xt = torch::stable::transpose(x, 0, 1);
  const Tensor g = count <= f.size(1) ? torch::stable::matmul(x, xt) : torch::stable::matmul(xt, x);
  const Tensor e = torch::stable::to(
      call_aten("aten::linalg_eigvalsh", "", torch::stable::to(g, f.scalar_type()), std::string("L")),
      ScalarType::Double, std::nullopt, kCpu);
  const int64_t m = e.numel();
  const double* ascending = e.const_data_ptr<double>();
  Tensor host = torch::stable::new_zeros(e, {count}, f.scalar_type());
  for (int64_t i = 0; i < m; ++i) {
    const double v = std::ldexp(std::max(ascending[m - 1 - i], 0.0), 2 * exponent);
    if (is_double) {
      host.mutable_data_ptr<double>()[i] = v;
    } else {
      host.mutable_data_ptr<float>()[i] = static_cast<float>(v);
    }
  }
  torch::stable::copy_(row, host);
}

std::tuple<Tensor, Tensor> binned_gram_eigvalsh_cuda(const Tensor& features, const Tensor& bin_ids,
                                                     int64_t num_bins) {
  BinnedGramCall call = prepare_binned_gram(features, bin_ids, num_bins);
  const torch::stable::accelerator::DeviceGuard guard(call.features.get_device_index());
  const torch::stable::Device device = call.features.device();
  const Tensor counts = torch::stable::to(call.counts, device);
  const BinGroups& g = call.groups;
  const int64_t n = call.features.size(0), k = call.features.size(1);
  if (n == 0 || k == 0) return {call.eig, counts};

  // [rows | starts] to the device in one copy
  Tensor host = new_empty_contiguous(call.counts, {n + num_bins}, ScalarType::Long);
  int64_t* h = host.mutable_data_ptr<int64_t>();
  std::copy(g.rows.begin(), g.rows.end(), h);
  std::copy(g.offsets.begin(), g.offsets.end() - 1, h + n);
  const Tensor uploaded = torch::stable::to(host, device);
  const Tensor order = slice(uploaded, 0, 0, n);
  const Tensor starts = slice(uploaded, 0, n, num_bins);

  const int64_t max_dim = jacobi_max_dim(call.features.scalar_type());
  int64_t launch_dim = 0;
  std::vector<int64_t> big;
  for (int64_t b = 0; b < num_bins; ++b) {
    const int64_t m = gram_dim(g.count(b), k);
    if (m > max_dim) {
      big.push_back(b);
    } else {
      launch_dim = std::max(launch_dim, m);
    }
  }
  if (launch_dim > 0) launch_binned_jacobi(call.features, order, starts, counts, max_dim, launch_dim, call.eig);
  for (const int64_t b : big) {
    solve_with_library(call.features, order, g.offsets[b], g.count(b),
                       slice(torch::stable::select(call.eig, 0, b), 0, 0, g.count(b)));
  }
  return {call.eig, counts};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(sgdf_erd, CUDA, m) { m.impl("binned_gram_eigvalsh", TORCH_BOX(&binned_gram_eigvalsh_cuda)); }

}  // namespace sgdf_erd::ntk::cuda
