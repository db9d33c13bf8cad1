// CUDA multi-tensor apply: one kernel launch covers many tensors. The host packs, per launch, the addresses of
// up to MaxTensors tuples of Depth tensors and a block -> (tensor, chunk) table into a kernel argument (no device
// allocation, so launches can be captured in CUDA graphs); every block then processes one kChunkSize-element chunk.
// Functors hold only the maths: they receive each element's Depth operands in registers.
#pragma once

#include <cstdint>
#include <vector>

#include "common/cuda/launch.h"
#include "common/stable.h"

namespace sgdf_erd::cuda {

constexpr int kBlockSize = 512;
constexpr int kILP = 4;                    // elements per thread per iteration (one 16-byte load for fp32)
constexpr int64_t kChunkSize = 65536;      // elements per block
constexpr int kMaxBlocksPerLaunch = 320;

// Kernel-argument budget is 4 KiB; the tensor count shrinks as the depth grows.
template <int Depth>
constexpr int max_tensors_per_launch() {
  return Depth == 1 ? 96 : Depth <= 4 ? 36 : 30;
}

template <int Depth>
struct TensorListMetadata {
  static constexpr int kMaxTensors = max_tensors_per_launch<Depth>();
  void* addresses[Depth][kMaxTensors];
  int64_t numel[kMaxTensors];
  const float* scalar[kMaxTensors];  // an optional one-element float tensor per tuple (e.g. its step count)
  unsigned char block_to_tensor[kMaxBlocksPerLaunch];
  int32_t block_to_chunk[kMaxBlocksPerLaunch];
};

template <int Depth, typename Functor>
__global__ void __launch_bounds__(kBlockSize)
    multi_tensor_kernel(const __grid_constant__ TensorListMetadata<Depth> meta, Functor functor) {
  functor(meta, meta.block_to_tensor[blockIdx.x], static_cast<int64_t>(meta.block_to_chunk[blockIdx.x]));
}

// Launches functor over lists[d][i] (d < Depth), with scalars[i] (or none) as the per-tuple scalar.
template <int Depth, typename Functor>
void multi_tensor_apply(const std::vector<const std::vector<Tensor>*>& lists, const std::vector<Tensor>& scalars,
                        const Functor& functor) {
  static_assert(sizeof(TensorListMetadata<Depth>) + sizeof(Functor) <= 4096, "kernel arguments exceed 4 KiB");
  SGDF_ERD_CHECK(lists.size() == Depth, "multi_tensor_apply: ", lists.size(), " lists for depth ", Depth);
  const size_t n_tensors = lists[0]->size();
  if (n_tensors == 0) return;
  const int32_t device = (*lists[0])[0].get_device_index();
  const torch::stable::accelerator::DeviceGuard guard(device);
  const cudaStream_t stream = current_stream(device);
  constexpr int kMaxTensors = TensorListMetadata<Depth>::kMaxTensors;

  TensorListMetadata<Depth> meta{};
  int loaded_tensors = 0;
  int loaded_blocks = 0;
  auto launch = [&] {
    multi_tensor_kernel<Depth><<<loaded_blocks, kBlockSize, 0, stream>>>(meta, functor);
    check_launch("multi_tensor_kernel");
    loaded_blocks = 0;
  };
  for (size_t t = 0; t < n_tensors; ++t) {
    const int64_t numel = (*lists[0])[t].numel();
    if (numel == 0) continue;
    for (int d = 0; d < Depth; ++d) meta.addresses[d][loaded_tensors] = (*lists[d])[t].data_ptr();
    meta.numel[loaded_tensors] = numel;
    meta.scalar[loaded_tensors] = scalars.empty() ? nullptr : static_cast<const float*>(scalars[t].const_data_ptr());
    const int64_t chunks = (numel + kChunkSize - 1) / kChunkSize;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      meta.block_to_tensor[loaded_blocks] = static_cast<unsigned char>(loaded_tensors);
      meta.block_to_chunk[loaded_blocks] = static_cast<int32_t>(chunk);
      ++loaded_blocks;
      const bool last_chunk = chunk == chunks - 1;
      if (loaded_blocks == kMaxBlocksPerLaunch || (last_chunk && loaded_tensors + 1 == kMaxTensors)) {
        launch();
        if (last_chunk) {
          loaded_tensors = -1;  // the tuple is finished: start the next launch with an empty table
        } else {
          // the tuple continues into the next launch: keep it as entry 0
          for (int d = 0; d < Depth; ++d) meta.addresses[d][0] = meta.addresses[d][loaded_tensors];
          meta.numel[0] = meta.numel[loaded_tensors];
          meta.scalar[0] = meta.scalar[loaded_tensors];
          loaded_tensors = 0;
          continue;
        }
      }
    }
    ++loaded_tensors;
  }
  if (loaded_blocks > 0) launch();
}

// Walks one chunk of one tuple: loads the Depth operands of each element into registers (16-byte vector loads when
// every operand is aligned), calls op(values) with values[d] of type scalar_t, and stores back the operands whose
// bit is set in write_mask.
template <typename scalar_t, int Depth, typename Op>
__device__ __forceinline__ void for_each_element(const TensorListMetadata<Depth>& meta, int tensor, int64_t chunk,
                                                 unsigned write_mask, const Op& op) {
  const int64_t begin = chunk * kChunkSize;
  const int64_t len = min(kChunkSize, meta.numel[tensor] - begin);
  scalar_t* ptr[Depth];
  bool aligned = len % kILP == 0;
  for (int d = 0; d < Depth; ++d) {
    ptr[d] = static_cast<scalar_t*>(meta.addresses[d][tensor]) + begin;
    aligned = aligned && reinterpret_cast<uintptr_t>(ptr[d]) % (kILP * sizeof(scalar_t)) == 0;
  }
  struct alignas(kILP * sizeof(scalar_t)) Pack {
    scalar_t v[kILP];
  };
  if (aligned) {
    for (int64_t i = threadIdx.x * kILP; i < len; i += static_cast<int64_t>(blockDim.x) * kILP) {
      Pack packs[Depth];
      for (int d = 0; d < Depth; ++d) packs[d] = *reinterpret_cast<const Pack*>(ptr[d] + i);
#pragma unroll
      for (int k = 0; k < kILP; ++k) {
        scalar_t values[Depth];
        for (int d = 0; d < Depth; ++d) values[d] = packs[d].v[k];
        op(values);
        for (int d = 0; d < Depth; ++d) packs[d].v[k] = values[d];
      }
      for (int d = 0; d < Depth; ++d)
        if (write_mask & (1u << d)) *reinterpret_cast<Pack*>(ptr[d] + i) = packs[d];
    }
  } else {
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
      scalar_t values[Depth];
      for (int d = 0; d < Depth; ++d) values[d] = ptr[d][i];
      op(values);
      for (int d = 0; d < Depth; ++d)
        if (write_mask & (1u << d)) ptr[d][i] = values[d];
    }
  }
}

}  // namespace sgdf_erd::cuda
