// CPU multi-tensor apply: runs an elementwise functor over lists of same-shaped tensors (one list per operand),
// split into fixed-size element ranges spread over threads (cpu::parallel_over_ranges). Inside a range the functor
// sees Vec<acc_t> lanes. Operands stored in acc_t are walked in place; float16/bfloat16 operands of a float kernel
// are converted in registers as they are loaded (one 16-bit type per range; else, and for the last elements, they
// are staged through float tiles on the stack, cpu/staging.h), so each operand may have its own dtype.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/cpu/operand.h"
#include "common/cpu/staging.h"
#include "common/cpu/vec.h"

namespace sgdf_erd::cpu {

constexpr int64_t kRangeSize = 1 << 15;  // elements per parallel work item
constexpr int64_t kTile = 256;           // elements staged per tile for reduced-precision operands

inline namespace SGDF_ERD_CPU_CAPABILITY {

// fn over `len` elements of arrays of acc_t (in place or staged), Vec<acc_t> lanes at a time (the last ones
// padded). fn is taken by value: a local copy whose address does not escape cannot alias the arrays, so the compiler
// keeps its captured values in registers instead of reloading them after every store.
template <typename acc_t, int Depth, typename Fn>
inline void apply_to_arrays(const std::array<acc_t*, Depth>& work, int64_t len, unsigned write_mask, Fn fn) {
  using V = Vec<acc_t>;
  int64_t i = 0;
  for (; i + V::size() <= len; i += V::size()) {
    std::array<V, Depth> v;
    for (int d = 0; d < Depth; ++d) v[d] = V::loadu(work[d] + i);
    fn(v);
    for (int d = 0; d < Depth; ++d)
      if (write_mask & (1u << d)) v[d].store(work[d] + i);
  }
  if (i < len) {
    // The last elements go through the same vector code, padded with zeros (computed, then dropped): a scalar tail
    // could round differently (where the compiler fuses a multiply-add in one and not in the other), and an
    // element's result must not depend on where its tensor, or a shard of it, starts.
    // (Masked loads and stores: for tensors of a few elements each, copies through a padded buffer cost more than
    // the arithmetic.)
    const auto rest = static_cast<int>(len - i);
    std::array<V, Depth> v;
    for (int d = 0; d < Depth; ++d) v[d] = V::loadu(work[d] + i, rest);
    fn(v);
    for (int d = 0; d < Depth; ++d)
      if (write_mask & (1u << d)) v[d].store(work[d] + i, rest);
  }
}

// apply_elementwise for float arithmetic on operands of any storage dtype, through float tiles.
template <int Depth, typename Fn>
void apply_staged(const std::array<Operand, Depth>& operands, int64_t first_index, int64_t n, unsigned write_mask,
                  const Fn& fn) {
  alignas(64) float staging[Depth][kTile];
  for (int64_t begin = 0; begin < n; begin += kTile) {
    const int64_t len = std::min(kTile, n - begin);
    std::array<float*, Depth> work;
    for (int d = 0; d < Depth; ++d) {
      const Operand& o = operands[d];
      if (o.dtype == ScalarType::Float) {
        work[d] = static_cast<float*>(o.data) + begin;
      } else {  // 16-bit elements
        load_tile(static_cast<const char*>(o.data) + begin * 2, o.dtype, staging[d], len);
        work[d] = staging[d];
      }
    }
    apply_to_arrays<float, Depth>(work, len, write_mask, fn);
    for (int d = 0; d < Depth; ++d) {
      const Operand& o = operands[d];
      if (o.write && o.dtype != ScalarType::Float) {
        store_tile(staging[d], static_cast<char*>(o.data) + begin * 2, o.dtype, len, o.rounding,
                   first_index + begin);
      }
    }
  }
}

// fn over elements [0, n) (n a multiple of the vector size) of float32 operands and the ones in `narrow`, of 16-bit
// type T (bfloat16 or float16), loaded and converted in registers. Results for narrow operands are converted in
// registers too (rounded to nearest), or with kStagedStores, stored into float tiles and converted by store_tile
// (any rounding) after each tile.
template <typename T, bool kStagedStores, int Depth, typename Fn>
void apply_16_bit_loads_in_registers(const std::array<Operand, Depth>& operands, int64_t first_index, int64_t n,
                                     unsigned write_mask, unsigned narrow,
                                     Fn fn) {  // fn by value: see apply_to_arrays
  using V = Vec<float>;
  alignas(64) float staged[kStagedStores ? Depth : 1][kTile];
  for (int64_t begin = 0; begin < n; begin += kTile) {
    const int64_t len = std::min(kTile, n - begin);
    for (int64_t i = 0; i < len; i += V::kSize) {
      std::array<V, Depth> v;
      for (int d = 0; d < Depth; ++d) {
        v[d] = (narrow >> d) & 1u ? load_as(static_cast<const T*>(operands[d].data) + begin + i)
                                  : V::loadu(static_cast<const float*>(operands[d].data) + begin + i);
      }
      fn(v);
      for (int d = 0; d < Depth; ++d) {
        if (!((write_mask >> d) & 1u)) continue;
        if (!((narrow >> d) & 1u)) {
          v[d].store(static_cast<float*>(operands[d].data) + begin + i);
        } else if constexpr (kStagedStores) {
          v[d].store(staged[d] + i);
        } else {
          store_as(static_cast<T*>(operands[d].data) + begin + i, v[d]);
        }
      }
    }
    if constexpr (kStagedStores) {
      for (int d = 0; d < Depth; ++d) {
        const Operand& o = operands[d];
        if (((write_mask & narrow) >> d) & 1u) {
          store_tile(staged[d], static_cast<T*>(o.data) + begin, o.dtype, len, o.rounding, first_index + begin);
        }
      }
    }
  }
}

// Applies fn to the `n` elements of a range of every operand; `first_index` is the range's element index in its
// tensors (the counter of stochastic rounding). fn is called as fn(std::array<Vec<acc_t>, Depth>&). Operands are in
// acc_t, or (acc_t = float only) in float16/bfloat16.
template <typename acc_t, int Depth, typename Fn>
void apply_elementwise(const std::array<Operand, Depth>& operands, int64_t first_index, int64_t n, const Fn& fn) {
  constexpr ScalarType kAccType = std::is_same_v<acc_t, float> ? ScalarType::Float : ScalarType::Double;
  unsigned write_mask = 0;
  bool staged = false;
  for (int d = 0; d < Depth; ++d) {
    if (operands[d].write) write_mask |= 1u << d;
    staged = staged || operands[d].dtype != kAccType;
  }
  if (!staged) {
    std::array<acc_t*, Depth> work;
    for (int d = 0; d < Depth; ++d) work[d] = static_cast<acc_t*>(operands[d].data);
    apply_to_arrays<acc_t, Depth>(work, n, write_mask, fn);
    return;
  }
  if constexpr (std::is_same_v<acc_t, float>) {
    // Operands of one 16-bit type (bfloat16 or float16 training's storage) are converted in registers as they are
    // loaded, so the conversions overlap the kernel's arithmetic; their results too on AVX-512 unless a written
    // 16-bit operand rounds stochastically, else (and on AVX2 and generic builds) through float tiles (with AVX2's
    // 16 registers, converting results in the loop spills; the stochastic rounding's hash needs many registers too).
    // Mixed 16-bit types and the last elements are staged whole: the same results, conversions being elementwise.
    int64_t whole = 0;  // elements done with loads in registers
    unsigned bfloat16 = 0, float16 = 0;
    bool stochastic = false;
    for (int d = 0; d < Depth; ++d) {
      const Operand& o = operands[d];
      if (o.dtype == ScalarType::BFloat16) bfloat16 |= 1u << d;
      if (o.dtype == ScalarType::Half) float16 |= 1u << d;
      stochastic = stochastic || (o.write && o.rounding.stochastic && o.dtype != ScalarType::Float);
    }
    if (!(bfloat16 && float16)) {  // one 16-bit type
      whole = n - n % Vec<float>::kSize;
      // results in registers only on AVX-512 and when no written 16-bit operand rounds stochastically
      auto run = [&](auto staged_stores) {
        constexpr bool kStaged = decltype(staged_stores)::value;
        if (float16) {
          apply_16_bit_loads_in_registers<Half, kStaged, Depth>(operands, first_index, whole, write_mask, float16, fn);
        } else {
          apply_16_bit_loads_in_registers<BFloat16, kStaged, Depth>(operands, first_index, whole, write_mask,
                                                                    bfloat16, fn);
        }
      };
#if defined(SGDF_ERD_VEC_AVX512)
      stochastic ? run(std::true_type{}) : run(std::false_type{});
#else
      (void)stochastic;
      run(std::true_type{});
#endif
      if (whole == n) return;
    }
    std::array<Operand, Depth> rest;
    for (int d = 0; d < Depth; ++d) rest[d] = operands[d].advanced(whole);
    apply_staged<Depth>(rest, first_index + whole, n - whole, write_mask, fn);
  }
}

}  // namespace SGDF_ERD_CPU_CAPABILITY
}  // namespace sgdf_erd::cpu
