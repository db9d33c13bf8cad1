// Deterministic warp and block reductions for CUDA kernels: butterfly shuffles within each warp, then every thread
// combines the warps' results in warp order. No atomics, so a kernel that reduces this way gives bitwise the same
// result on every run; every thread of the block receives the result.
#pragma once

#include <cuda_runtime.h>

namespace sgdf_erd::cuda {

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

// NaN-ignoring maximum (fmax), as the callers want for max |x| scans.
struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return ::fmax(a, b); }
};

constexpr int kWarpSize = 32;

// Reduction over the 32 lanes of a full warp; every lane gets the result.
template <typename T, typename Op>
__device__ T warp_reduce(T value, Op op) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

// Reduction over a block of Threads threads (a multiple of 32; every thread must call it). `scratch` is shared
// memory for Threads / 32 values; the call may be repeated with the same scratch (it waits for the previous
// call's readers first).
template <int Threads, typename T, typename Op>
__device__ T block_reduce(T value, Op op, T* scratch) {
  static_assert(Threads % kWarpSize == 0 && Threads / kWarpSize <= kWarpSize, "block of whole warps, <= 1024");
  constexpr int kWarps = Threads / kWarpSize;
  value = warp_reduce(value, op);
  __syncthreads();
  if (threadIdx.x % kWarpSize == 0) scratch[threadIdx.x / kWarpSize] = value;
  __syncthreads();
  T total = scratch[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) total = op(total, scratch[w]);
  return total;
}

template <int Threads, typename T>
__device__ T block_sum(T value, T* scratch) {
  return block_reduce<Threads>(value, SumOp{}, scratch);
}

template <int Threads, typename T>
__device__ T block_max(T value, T* scratch) {
  return block_reduce<Threads>(value, MaxOp{}, scratch);
}

// Same, with the block's own static shared scratch (one array per instantiation).
template <int Threads, typename T>
__device__ T block_sum(T value) {
  __shared__ T scratch[Threads / kWarpSize];
  return block_sum<Threads>(value, scratch);
}

}  // namespace sgdf_erd::cuda
