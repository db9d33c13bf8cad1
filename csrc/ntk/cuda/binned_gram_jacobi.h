// Interface between the host side of the CUDA binned_gram_eigvalsh (binned_gram_eigvalsh_cuda.cpp: grouping
// upload, fallback for big bins) and its kernel (binned_gram_jacobi.cu).
#pragma once

#include <cstdint>

#include "common/stable.h"

namespace sgdf_erd::ntk::cuda {

// Largest Gram order (<= 128) whose on-chip solve fits the current device's shared memory for this dtype.
int64_t jacobi_max_dim(torch::headeronly::ScalarType dtype);

// One block per bin: bins whose Gram order min(count, k) lies in [1, max_dim] get their eigenvalues (descending,
// clamped at 0, NaN for non-finite input) written to eig[bin, :]; other bins are left untouched. `launch_dim` is
// the largest such order present (sizes shared memory). features [n, k] contiguous; order [n] int64 row indices
// grouped by bin; starts, counts [num_bins] int64; eig [num_bins, >= max count] pre-zeroed; all on one device,
// which is current.
void launch_binned_jacobi(const torch::stable::Tensor& features, const torch::stable::Tensor& order,
                          const torch::stable::Tensor& starts, const torch::stable::Tensor& counts, int64_t max_dim,
                          int64_t launch_dim, torch::stable::Tensor& eig);

}  // namespace sgdf_erd::ntk::cuda
