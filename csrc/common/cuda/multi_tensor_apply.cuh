// CUDA multi-tensor apply: one kernel launch covers many tensors. The host packs, per launch, the addresses of
// up to MaxTensors tuples of Depth tensors and a block -> (tensor, chunk) table into a kernel argument (no device
// allocation, so launches can be captured in CUDA graphs); every block then processes one kChunkSize-element chunk.
// Functors hold only the maths: they receive each element's Depth operands in registers, in the arithmetic type,
// whatever each operand's storage type; 16-bit results are stored rounded to nearest or stochastically.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "common/cuda/launch.h"
#include "common/cuda/multi_tensor_chunks.h"
#include "common/random.h"
#include "common/scalar_types.h"
#include "common/stable.h"
#include "common/stochastic_rounding.h"
#include "common/tensor_lists.h"

namespace sgdf_erd::cuda {

template <int Depth>
struct TensorListMetadata {
  static constexpr int kMaxTensors = max_tensors_per_launch<Depth>();
  void* addresses[Depth][kMaxTensors];
  int64_t numel[kMaxTensors];
  const float* scalar[kMaxTensors];  // an optional one-element float tensor per tuple (e.g. its step count)
  uint32_t seed[kMaxTensors];        // an optional 32-bit value per tuple (e.g. the seed of its random numbers)
  int64_t first_index[kMaxTensors];  // an optional element number per tuple (where its random numbers start)
  unsigned char block_to_tensor[kMaxBlocksPerLaunch];
  int32_t block_to_chunk[kMaxBlocksPerLaunch];
};

template <int Depth, typename Functor>
__global__ void __launch_bounds__(kBlockSize)
    multi_tensor_kernel(const __grid_constant__ TensorListMetadata<Depth> meta, Functor functor) {
  functor(meta, meta.block_to_tensor[blockIdx.x], static_cast<int64_t>(meta.block_to_chunk[blockIdx.x]));
}

// Launches functor over lists[d][i] (d < Depth), with scalars[i], seeds[i] and first_indices[i] (each list may be
// empty: null / 0) as the per-tuple scalar, seed and first element number.
template <int Depth, typename Functor>
void multi_tensor_apply(const std::vector<TensorList>& lists, TensorList scalars,
                        const Functor& functor, const std::vector<int64_t>& seeds = {},
                        const std::vector<int64_t>& first_indices = {}) {
  static_assert(sizeof(TensorListMetadata<Depth>) + sizeof(Functor) <= 4096, "kernel arguments exceed 4 KiB");
  SGDF_ERD_CHECK(lists.size() == Depth, "multi_tensor_apply: ", lists.size(), " lists for depth ", Depth);
  const size_t n_tensors = lists[0].size();
  if (n_tensors == 0) return;
  const int32_t device = lists[0][0].get_device_index();
  const torch::stable::accelerator::DeviceGuard guard(device);
  const cudaStream_t stream = current_stream(device);
  constexpr int kMaxTensors = TensorListMetadata<Depth>::kMaxTensors;

  TensorListMetadata<Depth> meta{};
  auto place = [&](size_t t, int entry) {
    for (int d = 0; d < Depth; ++d) meta.addresses[d][entry] = lists[d][t].data_ptr();
    meta.numel[entry] = lists[0][t].numel();
    meta.scalar[entry] = scalars.empty() ? nullptr : static_cast<const float*>(scalars[t].data_ptr());
    meta.seed[entry] = seeds.empty() ? 0u : static_cast<uint32_t>(seeds[t]);
    meta.first_index[entry] = first_indices.empty() ? 0 : first_indices[t];
  };
  auto launch = [&](int blocks) {
    multi_tensor_kernel<Depth><<<blocks, kBlockSize, 0, stream>>>(meta, functor);
    check_launch("multi_tensor_kernel");
  };
  plan_launches<kMaxTensors>(
      n_tensors, [&](size_t t) { return lists[0][t].numel(); }, place, launch, meta.block_to_tensor,
      meta.block_to_chunk);
}

template <typename T>
struct alignas(vector_alignment(sizeof(T))) IlpPack {
  T v[kILP];
};

// kILP elements from index i of an operand stored as T (one vector load), or one element (kILP = 1 tail path).
template <typename T, int N, typename acc_t>
__device__ __forceinline__ void load_elements(const void* base, int64_t i, acc_t (&out)[N]) {
  const T* p = static_cast<const T*>(base) + i;
  if constexpr (N == kILP) {
    const IlpPack<T> pack = *reinterpret_cast<const IlpPack<T>*>(p);
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = static_cast<acc_t>(pack.v[k]);
  } else {
    out[0] = static_cast<acc_t>(*p);
  }
}

// kILP elements (or one) stored from index i; `number` is element i's number for stochastic rounding.
template <typename T, int N, typename acc_t>
__device__ __forceinline__ void store_elements(void* base, int64_t i, const acc_t (&in)[N], bool stochastic,
                                               uint32_t key, int64_t number) {
  T* p = static_cast<T*>(base) + i;
  if constexpr (N == kILP) {
    IlpPack<T> pack;
#pragma unroll
    for (int k = 0; k < N; ++k) pack.v[k] = to_storage<T>(in[k], stochastic, key, number + k);
    *reinterpret_cast<IlpPack<T>*>(p) = pack;
  } else {
    *p = to_storage<T>(in[0], stochastic, key, number);
  }
}

// N consecutive elements of every operand from index i: loaded, op applied to each element's operands, the
// operands in write_mask stored back.
template <typename acc_t, int N, typename... Ts, size_t... D, typename Op>
__device__ __forceinline__ void apply_at(void* const (&ptr)[sizeof...(Ts)], int64_t i, unsigned write_mask,
                                         const StoreRounding<sizeof...(Ts)>& rounding, const Op& op,
                                         std::index_sequence<D...>) {
  constexpr int Depth = sizeof...(Ts);
  acc_t values[Depth][N];
  (load_elements<Ts, N>(ptr[D], i, values[D]), ...);
#pragma unroll
  for (int k = 0; k < N; ++k) {
    acc_t element[Depth];
#pragma unroll
    for (int d = 0; d < Depth; ++d) element[d] = values[d][k];
    op(element);
#pragma unroll
    for (int d = 0; d < Depth; ++d) values[d][k] = element[d];
  }
  ((write_mask >> D & 1u ? store_elements<Ts, N>(ptr[D], i, values[D], rounding.stochastic_mask >> D & 1u,
                                                 rounding.key[D], rounding.first_index + i)
                         : void()),
   ...);
}

// Walks one chunk of one tuple whose operand d is stored as the d-th of Ts: calls op(values) with values[d] the
// element's operands in acc_t, and stores back the operands whose bit is set in write_mask. Where every operand is
// aligned for vector accesses, all but the chunk's last (end - begin) % kILP elements move in vectors of kILP.
template <typename acc_t, typename... Ts, typename Op>
__device__ __forceinline__ void for_each_element(const TensorListMetadata<sizeof...(Ts)>& meta, int tensor,
                                                 int64_t chunk, unsigned write_mask,
                                                 const StoreRounding<sizeof...(Ts)>& rounding, const Op& op) {
  constexpr int Depth = sizeof...(Ts);
  constexpr int64_t kAlignments[Depth] = {vector_alignment(sizeof(Ts))...};
  void* ptr[Depth];
  bool aligned = true;  // chunks start at multiples of kILP elements: the base addresses decide
#pragma unroll
  for (int d = 0; d < Depth; ++d) {
    ptr[d] = meta.addresses[d][tensor];
    aligned = aligned && reinterpret_cast<uintptr_t>(ptr[d]) % kAlignments[d] == 0;
  }
  const auto operands = std::index_sequence_for<Ts...>{};
  walk_chunk(
      chunk_span(meta.numel[tensor], chunk, aligned), threadIdx.x, blockDim.x,
      [&](int64_t i) { apply_at<acc_t, kILP, Ts...>(ptr, i, write_mask, rounding, op, operands); },
      [&](int64_t i) { apply_at<acc_t, 1, Ts...>(ptr, i, write_mask, rounding, op, operands); });
}

}  // namespace sgdf_erd::cuda
