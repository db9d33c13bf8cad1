// sgdf_erd::binned_gram_eigvalsh: shared argument checks and the one sizing rule of its CPU and CUDA kernels.
//
// For bin b with rows F_b ([c_b, k]) the op returns the eigenvalues of the c_b x c_b Gram matrix F_b F_b^T. Its
// nonzero eigenvalues are those of the k x k matrix F_b^T F_b, so both kernels decompose whichever is smaller
// (gram_dim = min(c_b, k)) and report the remaining c_b - gram_dim eigenvalues as exact zeros.
//
// Both first scale each bin's features by a power of two (bin_scale_exponent), which is exact: finite features of
// any magnitude (float32 near 3e19, whose squares overflow) then give a finite Gram matrix, and the eigenvalues
// scale back by the square of that power; only an eigenvalue beyond the dtype's range comes out as inf.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace sgdf_erd::ntk {

constexpr const char* kOpName = "sgdf_erd::binned_gram_eigvalsh";

// Most bins the op accepts: each bin is a row of the output (and a thread block on CUDA), so a huge num_bins
// would only allocate; python/sgdf_erd/ops.py states the same bound.
constexpr int64_t kMaxNumBins = int64_t{1} << 24;

inline void check_binned_gram_args(const at::Tensor& features, const at::Tensor& bin_ids, int64_t num_bins) {
  TORCH_CHECK_VALUE(num_bins >= 1 && num_bins <= kMaxNumBins, kOpName, ": 'num_bins' must lie in [1, ",
                    kMaxNumBins, "] (each bin is a row of the output), got ", num_bins);
  TORCH_CHECK_VALUE(features.dim() == 2, kOpName, ": 'features' must be 2-D [n, k], got shape ", features.sizes());
  TORCH_CHECK_TYPE(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble, kOpName,
                   ": 'features' must be float32 or float64, got ", features.scalar_type(),
                   "; convert with .float() or .double()");
  TORCH_CHECK_VALUE(bin_ids.dim() == 1, kOpName, ": 'bin_ids' must be 1-D [n], got shape ", bin_ids.sizes());
  TORCH_CHECK_TYPE(at::isIntegralType(bin_ids.scalar_type(), /*includeBool=*/false), kOpName,
                   ": 'bin_ids' must be an integer tensor, got ", bin_ids.scalar_type(), "; convert with .long()");
  TORCH_CHECK_VALUE(bin_ids.size(0) == features.size(0), kOpName, ": 'bin_ids' has ", bin_ids.size(0),
                    " entries but 'features' has ", features.size(0), " rows; pass one bin id per row");
  TORCH_CHECK(bin_ids.device() == features.device(), kOpName, ": 'bin_ids' is on ", bin_ids.device(),
              " but 'features' is on ", features.device(), "; move them to one device");
  TORCH_CHECK(features.layout() == at::kStrided && bin_ids.layout() == at::kStrided, kOpName,
              ": sparse tensors are not supported; pass dense tensors");
}

inline void check_bin_range(int64_t lowest, int64_t highest, int64_t num_bins) {
  TORCH_CHECK_VALUE(lowest >= 0 && highest < num_bins, kOpName, ": 'bin_ids' must lie in [0, num_bins) = [0, ",
                    num_bins, "), found values in [", lowest, ", ", highest, "]");
}

// Order of the matrix a bin's eigenvalues are computed from (see the file comment).
inline int64_t gram_dim(int64_t count, int64_t k) { return std::min(count, k); }

// e such that a bin whose largest |feature| is max_abs (finite, > 0) is scaled by 2^-e to a largest entry in
// [0.5, 1), clamped so that 2^-e and 2^e are both normal numbers of T (the top and the subnormal binade land in
// [0.5, 2) and below 0.5). The bin's eigenvalues are those of the scaled features times 2^(2e).
template <typename T>
C10_HOST_DEVICE inline int bin_scale_exponent(T max_abs) {
  int e = 0;
  (void)frexp(max_abs, &e);
  constexpr int lowest = std::numeric_limits<T>::min_exponent, highest = std::numeric_limits<T>::max_exponent - 1;
  return e < lowest ? lowest : (e > highest ? highest : e);
}

}  // namespace sgdf_erd::ntk
