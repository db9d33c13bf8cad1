// Launching CUDA kernels through the stable ABI: the current stream of a device (torch's, so work orders with the
// caller's) and the check after a launch. Used by the ERD and NTK CUDA hosts.
#pragma once

#include <cuda_runtime.h>

// aoti_torch_get_current_cuda_stream is declared for CUDA builds only
#ifndef USE_CUDA
#define USE_CUDA
#endif
#include <torch/csrc/inductor/aoti_torch/c/shim.h>

#include <cstdint>

#include "common/stable.h"

namespace sgdf_erd::cuda {

inline cudaStream_t current_stream(int32_t device_index) {
  void* stream = nullptr;
  SGDF_ERD_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream) == AOTI_TORCH_SUCCESS,
                 "sgdf_erd: no current CUDA stream for device ", device_index);
  return static_cast<cudaStream_t>(stream);
}

// Raises RuntimeError naming `op` when the last launch failed (bad configuration, no kernel image for this GPU).
inline void check_launch(const char* op) {
  const cudaError_t status = cudaGetLastError();
  SGDF_ERD_CHECK(status == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

}  // namespace sgdf_erd::cuda
