// sgdf_erd::binned_gram_eigvalsh: shared argument checks and the one sizing rule of its CPU and CUDA kernels.
//
// For bin b with rows F_b ([c_b, k]) the op returns the eigenvalues of the c_b x c_b Gram matrix F_b F_b^T. Its
// nonzero eigenvalues are those of the k x k matrix F_b^T F_b, so both kernels decompose whichever is smaller
// (gram_dim = min(c_b, k)) and report the remaining c_b - gram_dim eigenvalues as exact zeros.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

namespace sgdf_erd::ntk {

constexpr const char* kOpName = "sgdf_erd::binned_gram_eigvalsh";

inline void check_binned_gram_args(const at::Tensor& features, const at::Tensor& bin_ids, int64_t num_bins) {
  TORCH_CHECK_VALUE(num_bins >= 1, kOpName, ": 'num_bins' must be >= 1, got ", num_bins);
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

}  // namespace sgdf_erd::ntk
