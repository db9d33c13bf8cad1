// Argument checks for the fused SGDF op, shared by its CPU and CUDA implementations.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "common/tensor_lists.h"

namespace sgdf_erd::sgdf {

inline void check_fused_args(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                             at::TensorList exp_vars, at::TensorList updates, at::TensorList steps,
                             const std::optional<at::Tensor>& lr_tensor,
                             const std::optional<at::Tensor>& grad_scale,
                             const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "sgdf_erd::fused_sgdf_";
  std::vector<at::TensorList> lists{params, grads, exp_avgs, exp_vars};
  std::vector<std::string> names{"params", "grads", "exp_avgs", "exp_vars"};
  if (!updates.empty()) {
    lists.push_back(updates);
    names.push_back("updates");
  }
  check_tensor_lists(lists, names, op);
  TORCH_CHECK(steps.size() == params.size(), op, ": 'steps' has ", steps.size(), " tensors for ", params.size(),
              " params; pass one step tensor per parameter");
  if (params.empty()) return;
  const auto device = params[0].device();
  const auto dtype = params[0].scalar_type();
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(params[i].device() == device && params[i].scalar_type() == dtype, op,
                ": all params of one call must share device and dtype; got ", params[i].device(), "/",
                params[i].scalar_type(), " and ", device, "/", dtype, " (the Python optimizer groups them)");
    TORCH_CHECK(steps[i].numel() == 1 && steps[i].scalar_type() == at::kFloat && steps[i].device() == device, op,
                ": 'steps[", i, "]' must be a one-element float32 tensor on ", device, ", got ",
                steps[i].scalar_type(), " on ", steps[i].device());
  }
  auto check_scalar = [&](const std::optional<at::Tensor>& t, const char* name) {
    if (!t.has_value()) return;
    TORCH_CHECK(t->numel() == 1 && t->scalar_type() == at::kFloat && t->device() == device, op, ": '", name,
                "' must be a one-element float32 tensor on ", device, ", got ", t->numel(), " elements of ",
                t->scalar_type(), " on ", t->device());
  };
  check_scalar(lr_tensor, "lr");
  check_scalar(grad_scale, "grad_scale");
  check_scalar(found_inf, "found_inf");
}

// Which operands a launch writes back: p always, the gradient only when it is unscaled in place, the two
// states, and the update buffer in orthogonalisation mode.
enum Operand : unsigned { kParam = 0, kGrad = 1, kExpAvg = 2, kExpVar = 3, kUpdate = 4 };

inline unsigned write_mask(bool unscale_grads, bool write_updates) {
  unsigned mask = (1u << kParam) | (1u << kExpAvg) | (1u << kExpVar);
  if (unscale_grads) mask |= 1u << kGrad;
  if (write_updates) mask |= 1u << kUpdate;
  return mask;
}

}  // namespace sgdf_erd::sgdf
