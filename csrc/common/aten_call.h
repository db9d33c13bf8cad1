// Calling an aten operator that has no torch::stable wrapper in the oldest torch the library targets (2.11):
// through the dispatcher by name, so the library still uses only the stable C shim.
#pragma once

#include <array>

#include "common/stable.h"

namespace sgdf_erd {

// Runs `name.overload` on args (converted to StableIValues in schema order) and returns its first output.
template <typename... Args>
torch::stable::Tensor call_aten(const char* name, const char* overload, const Args&... args) {
  std::array<StableIValue, sizeof...(Args)> stack{torch::stable::detail::from(args)...};
  SGDF_ERD_CHECK(torch_call_dispatcher(name, overload, stack.data(), TORCH_ABI_VERSION) == AOTI_TORCH_SUCCESS,
                 "sgdf_erd: the call of ", name, " failed");
  return torch::stable::detail::to<torch::stable::Tensor>(stack[0]);
}

}  // namespace sgdf_erd
