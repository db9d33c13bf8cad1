// What CUDA host code needs around a kernel launch, through the stable ABI: the device to run on, torch's current
// stream for it, and the check that the launch was accepted.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "common/stable.h"

// Part of torch's stable C shim, but shim.h declares it only under USE_CUDA, whose effect would depend on include
// order; declared here instead (same signature).
extern "C" AOTI_TORCH_EXPORT AOTITorchError aoti_torch_get_current_cuda_stream(int32_t device_index,
                                                                              void** ret_stream);

namespace sgdf_erd::cuda {

// torch's current CUDA stream on the device (the one torch's own kernels and CUDA graph capture use).
inline cudaStream_t current_stream(int32_t device_index) {
  void* stream = nullptr;
  const AOTITorchError err = aoti_torch_get_current_cuda_stream(device_index, &stream);
  SGDF_ERD_CHECK(err == AOTI_TORCH_SUCCESS, "sgdf_erd: could not get the current CUDA stream of device ",
                 device_index);
  return static_cast<cudaStream_t>(stream);
}

// After a <<<...>>> launch: a bad configuration or a missing kernel image (a GPU the build has no code for)
// surfaces here, naming the kernel, rather than at some later synchronisation.
inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  SGDF_ERD_CHECK(err == cudaSuccess, "sgdf_erd: launching ", kernel, " failed: ", cudaGetErrorString(err),
                 (err == cudaErrorNoKernelImageForDevice
                      ? " (this build has no code for this GPU: rebuild with its arch in TORCH_CUDA_ARCH_LIST)"
                      : ""));
}

}  // namespace sgdf_erd::cuda
