// sgdf_erd::binned_gram_eigvalsh: the argument checks, grouping of rows by bin and output allocation shared by its
// CPU and CUDA kernels (bodies in binned_gram.cpp), and the one sizing and scaling rule of their per-bin solves.
//
// For bin b with rows F_b ([c_b, k]) the op returns the eigenvalues of the c_b x c_b Gram matrix F_b F_b^T. Its
// nonzero eigenvalues are those of the k x k matrix F_b^T F_b, so both kernels decompose whichever is smaller
// (gram_dim = min(c_b, k)) and report the remaining c_b - gram_dim eigenvalues as exact zeros.
//
// Both first scale each bin's features by a power of two (bin_scale_exponent), which is exact: finite features of
// any magnitude (float32 near 3e19, whose squares overflow) then give a finite Gram matrix, and the eigenvalues
// scale back by the square of that power; only an eigenvalue beyond the dtype's range comes out as inf.
#pragma once

#include <torch/headeronly/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/stable.h"

namespace sgdf_erd::ntk {

using torch::stable::Tensor;

constexpr const char* kOpName = "sgdf_erd::binned_gram_eigvalsh";

// Most bins the op accepts: each bin is a row of the output (and a thread block on CUDA), so a huge num_bins
// would only allocate; python/sgdf_erd/ops/ntk.py states the same bound.
constexpr int64_t kMaxNumBins = int64_t{1} << 24;

// Rows grouped by bin (a stable counting sort on the host): bin b holds rows[offsets[b] .. offsets[b + 1]), in
// input order.
struct BinGroups {
  std::vector<int64_t> offsets;  // [num_bins + 1]
  std::vector<int64_t> rows;     // [n]
  int64_t max_count = 0;

  int64_t count(int64_t bin) const { return offsets[bin + 1] - offsets[bin]; }
};

// Everything a backend needs: the checked, contiguous features on their device, the grouping, and the outputs.
struct BinnedGramCall {
  Tensor features;   // [n, k] contiguous
  BinGroups groups;  // on the host: reading the bin ids is the op's one synchronisation on CUDA
  Tensor eig;        // [num_bins, max_count] zeros, features' dtype and device: empty bins and padding stay 0
  Tensor counts;     // [num_bins] int64 on the CPU (a CUDA call moves it to the device)
};

// Checks every argument (ValueError/TypeError naming it) and groups the rows by bin.
BinnedGramCall prepare_binned_gram(const Tensor& features, const Tensor& bin_ids, int64_t num_bins);

// Order of the matrix a bin's eigenvalues are computed from (see the file comment).
inline int64_t gram_dim(int64_t count, int64_t k) { return count < k ? count : k; }

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
