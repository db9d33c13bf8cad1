// Interface between the host side of the CUDA binned_gram_eigvalsh (binned_gram_eigvalsh_cuda.cpp: grouping,
// one synchronisation for the counts, fallback for big bins) and its kernel (binned_gram_jacobi.cu).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace sgdf_erd::ntk::cuda {

// Largest Gram order (<= 128) whose on-chip solve fits the current device's shared memory for this dtype.
int64_t jacobi_max_dim(at::ScalarType dtype);

// One block per bin: bins whose Gram order min(count, k) lies in [1, max_dim] get their eigenvalues (descending,
// clamped at 0, NaN for non-finite input) written to eig[bin, :]; other bins are left untouched. `launch_dim` is
// the largest such order present (sizes shared memory). features [n, k] contiguous; order [n] int64 row indices
// grouped by bin; starts, counts [num_bins] int64; eig [num_bins, >= max count] pre-zeroed; all on one device.
void launch_binned_jacobi(const at::Tensor& features, const at::Tensor& order, const at::Tensor& starts,
                          const at::Tensor& counts, int64_t max_dim, int64_t launch_dim, at::Tensor& eig);

}  // namespace sgdf_erd::ntk::cuda
