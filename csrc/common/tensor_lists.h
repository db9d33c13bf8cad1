// Checks shared by every multi-tensor op: the lists line up, and each tuple of tensors can be walked as one flat
// buffer. Errors name the argument and the fix.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <string>
#include <vector>

namespace sgdf_erd {

// lists[0] is the reference (the parameters); every other list must match it tensor by tensor.
inline void check_tensor_lists(const std::vector<at::TensorList>& lists, const std::vector<std::string>& names,
                               const char* op) {
  const auto n = lists[0].size();
  for (const auto l : c10::irange(lists.size())) {
    TORCH_CHECK(lists[l].size() == n, op, ": '", names[l], "' has ", lists[l].size(), " tensors but '", names[0],
                "' has ", n, "; pass one entry per parameter");
  }
  for (const auto i : c10::irange(n)) {
    const at::Tensor& ref = lists[0][i];
    TORCH_CHECK(ref.layout() == at::kStrided, op, ": '", names[0], "[", i, "]' is ", ref.layout(),
                "; sparse tensors are not supported, use a dense optimizer path");
    TORCH_CHECK(ref.is_non_overlapping_and_dense(), op, ": '", names[0], "[", i,
                "]' is not dense (it is a view with gaps or overlaps); use foreach=True instead of fused");
    for (const auto l : c10::irange(size_t{1}, lists.size())) {
      const at::Tensor& t = lists[l][i];
      TORCH_CHECK(t.layout() == at::kStrided, op, ": '", names[l], "[", i, "]' is ", t.layout(),
                  "; sparse gradients are not supported");
      TORCH_CHECK(t.device() == ref.device(), op, ": '", names[l], "[", i, "]' is on ", t.device(), " but '",
                  names[0], "[", i, "]' is on ", ref.device(), "; move them to one device");
      TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": '", names[l], "[", i, "]' is ", t.scalar_type(),
                  " but '", names[0], "[", i, "]' is ", ref.scalar_type(), "; they must share a dtype");
      TORCH_CHECK(t.sizes() == ref.sizes() && t.strides() == ref.strides(), op, ": '", names[l], "[", i,
                  "]' has shape/strides ", t.sizes(), "/", t.strides(), " but '", names[0], "[", i, "]' has ",
                  ref.sizes(), "/", ref.strides(), "; they must have the same memory layout");
    }
  }
}

}  // namespace sgdf_erd
