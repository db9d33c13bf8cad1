// CPU parallel loops on torch's intra-op thread pool, through the stable ABI (torch::stable::parallel_for, torch
// 2.10+): the library needs no OpenMP of its own, and torch.set_num_threads governs it as it does torch's kernels.
#pragma once

#include "common/stable.h"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace sgdf_erd::cpu {

// Calls fn(lo, hi) on sub-ranges of [begin, end) in parallel, each at least grain_size long (except the last).
// Inside another parallel region it runs inline on the calling thread. fn must not throw: check arguments first.
template <typename Fn>
void parallel_for(int64_t begin, int64_t end, int64_t grain_size, const Fn& fn) {
  if (begin >= end) return;
  torch::stable::parallel_for(begin, end, grain_size, fn);
}

inline int64_t num_threads() { return static_cast<int64_t>(torch::stable::get_num_threads()); }

// Calls fn(item, begin, end) for every range of at most range_size elements of every item (a tensor, a sample)
// of the given sizes, spread over threads one range per work item, so many small items and a few huge ones
// balance alike.
template <typename Fn>
void parallel_over_ranges(const std::vector<int64_t>& numels, int64_t range_size, const Fn& fn) {
  std::vector<std::pair<int64_t, int64_t>> work;  // (item, begin)
  for (size_t t = 0; t < numels.size(); ++t) {
    for (int64_t begin = 0; begin < numels[t]; begin += range_size) work.emplace_back(t, begin);
  }
  parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo; w < hi; ++w) {
      const auto [t, begin] = work[w];
      fn(t, begin, std::min(numels[t], begin + range_size));
    }
  });
}

}  // namespace sgdf_erd::cpu
