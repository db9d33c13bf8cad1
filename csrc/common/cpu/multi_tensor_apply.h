// CPU multi-tensor apply: runs an elementwise functor over lists of same-shaped tensors (one list per operand),
// split into fixed-size element ranges that at::parallel_for spreads over threads, so many small tensors and a
// few huge ones balance alike. Inside a range the functor sees Vectorized<acc_t> lanes; float16/bfloat16 operands
// are staged through float tiles on the stack.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/core/Tensor.h>
#include <c10/util/irange.h>

#include <array>
#include <type_traits>
#include <vector>

namespace sgdf_erd::cpu {

constexpr int64_t kRangeSize = 1 << 15;  // elements per parallel work item
constexpr int64_t kTile = 256;           // elements staged per tile for reduced-precision operands

// Calls fn(tensor_index, begin, end) for every kRangeSize-element range of every tensor, in parallel.
template <typename Fn>
void parallel_over_ranges(const std::vector<int64_t>& numels, const Fn& fn) {
  std::vector<std::pair<int64_t, int64_t>> work;  // (tensor, begin)
  for (const auto t : c10::irange(numels.size())) {
    for (int64_t begin = 0; begin < numels[t]; begin += kRangeSize) work.emplace_back(t, begin);
  }
  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo; w < hi; ++w) {
      const auto [t, begin] = work[w];
      fn(t, begin, std::min(numels[t], begin + kRangeSize));
    }
  });
}

// Applies fn to `n` elements at ptr[0..Depth). fn is called as fn(std::array<V, Depth>&) with V either
// Vectorized<acc_t> or acc_t (for the tail); operands whose bit is set in write_mask are stored back.
template <typename scalar_t, typename acc_t, int Depth, typename Fn>
void apply_elementwise(std::array<scalar_t*, Depth> ptr, int64_t n, unsigned write_mask, const Fn& fn) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr bool kStaged = !std::is_same_v<scalar_t, acc_t>;
  constexpr int64_t kStep = Vec::size();
  alignas(64) acc_t staging[kStaged ? Depth : 1][kStaged ? kTile : 1];

  for (int64_t tile_begin = 0; tile_begin < n; tile_begin += (kStaged ? kTile : n)) {
    const int64_t len = kStaged ? std::min(kTile, n - tile_begin) : n;
    std::array<acc_t*, Depth> work;
    for (int d = 0; d < Depth; ++d) {
      if constexpr (kStaged) {
        at::vec::convert(ptr[d] + tile_begin, staging[d], len);
        work[d] = staging[d];
      } else {
        work[d] = reinterpret_cast<acc_t*>(ptr[d] + tile_begin);
      }
    }
    int64_t i = 0;
    for (; i + kStep <= len; i += kStep) {
      std::array<Vec, Depth> v;
      for (int d = 0; d < Depth; ++d) v[d] = Vec::loadu(work[d] + i);
      fn(v);
      for (int d = 0; d < Depth; ++d)
        if (write_mask & (1u << d)) v[d].store(work[d] + i);
    }
    for (; i < len; ++i) {
      std::array<acc_t, Depth> v;
      for (int d = 0; d < Depth; ++d) v[d] = work[d][i];
      fn(v);
      for (int d = 0; d < Depth; ++d)
        if (write_mask & (1u << d)) work[d][i] = v[d];
    }
    if constexpr (kStaged) {
      for (int d = 0; d < Depth; ++d)
        if (write_mask & (1u << d)) at::vec::convert(staging[d], ptr[d] + tile_begin, len);
    }
  }
}

}  // namespace sgdf_erd::cpu
