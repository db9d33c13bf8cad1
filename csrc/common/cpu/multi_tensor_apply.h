// CPU multi-tensor apply: runs an elementwise functor over lists of same-shaped tensors (one list per operand),
// split into fixed-size element ranges spread over threads (cpu::parallel_over_ranges). Inside a range the functor
// sees Vec<acc_t> lanes; float16/bfloat16 operands are staged through float tiles on the stack.
#pragma once

#include <array>
#include <cstdint>
#include <type_traits>

#include "common/cpu/parallel.h"
#include "common/cpu/vec.h"

namespace sgdf_erd::cpu {

constexpr int64_t kRangeSize = 1 << 15;  // elements per parallel work item
constexpr int64_t kTile = 256;           // elements staged per tile for reduced-precision operands

// Applies fn to `n` elements at ptr[0..Depth). fn is called as fn(std::array<V, Depth>&) with V either
// Vec<acc_t> or acc_t (for the tail); operands whose bit is set in write_mask are stored back.
template <typename scalar_t, typename acc_t, int Depth, typename Fn>
void apply_elementwise(std::array<scalar_t*, Depth> ptr, int64_t n, unsigned write_mask, const Fn& fn) {
  using V = Vec<acc_t>;
  constexpr bool kStaged = !std::is_same_v<scalar_t, acc_t>;
  constexpr int64_t kStep = V::size();
  alignas(64) acc_t staging[kStaged ? Depth : 1][kStaged ? kTile : 1];

  for (int64_t tile_begin = 0; tile_begin < n; tile_begin += (kStaged ? kTile : n)) {
    const int64_t len = kStaged ? std::min(kTile, n - tile_begin) : n;
    std::array<acc_t*, Depth> work;
    for (int d = 0; d < Depth; ++d) {
      if constexpr (kStaged) {
        convert(ptr[d] + tile_begin, staging[d], len);
        work[d] = staging[d];
      } else {
        work[d] = reinterpret_cast<acc_t*>(ptr[d] + tile_begin);
      }
    }
    int64_t i = 0;
    for (; i + kStep <= len; i += kStep) {
      std::array<V, Depth> v;
      for (int d = 0; d < Depth; ++d) v[d] = V::loadu(work[d] + i);
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
        if (write_mask & (1u << d)) convert(staging[d], ptr[d] + tile_begin, len);
    }
  }
}

}  // namespace sgdf_erd::cpu
