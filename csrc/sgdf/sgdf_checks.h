// Argument checks for the fused SGDF op, shared by its CPU and CUDA implementations. They run before anything is
// written, so a call that raises leaves every input as it was.
#pragma once

#include <optional>
#include <utility>
#include <vector>

#include "common/stable.h"
#include "common/tensor_lists.h"
#include "sgdf/sgdf_math.h"

namespace sgdf_erd::sgdf {

// The optimizer's own rules (SGDF's documented ranges), so the op refuses what SGDF refuses. Each condition is
// written so that NaN fails it.
inline void check_hyperparameters(double lr, const Hyper<double>& h, const char* op) {
  SGDF_ERD_CHECK(lr >= 0.0, op, ": invalid lr=", lr, "; the learning rate must be >= 0 (and not NaN)");
  SGDF_ERD_CHECK(h.beta1 >= 0.0 && h.beta1 < 1.0, op, ": invalid beta1=", h.beta1, "; it must be in [0, 1)");
  SGDF_ERD_CHECK(h.beta2 >= 0.0 && h.beta2 < 1.0, op, ": invalid beta2=", h.beta2, "; it must be in [0, 1)");
  SGDF_ERD_CHECK(h.eps >= 0.0, op, ": invalid eps=", h.eps, "; it must be >= 0");
  SGDF_ERD_CHECK(h.gamma > 0.0, op, ": invalid gamma=", h.gamma, "; it must be > 0 (0.5 is the release default)");
  SGDF_ERD_CHECK(h.weight_decay >= 0.0, op, ": invalid weight_decay=", h.weight_decay, "; it must be >= 0");
}

// The value of a one-element float32 CPU tensor (checked by the caller): a plain read, no synchronisation.
inline float cpu_scalar(const Tensor& t) { return *static_cast<const float*>(t.const_data_ptr()); }

inline void check_fused_args(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
                             const TensorList& exp_vars, const TensorList& updates, const TensorList& steps,
                             double lr, const std::optional<Tensor>& lr_tensor, const Hyper<double>& hyper,
                             const std::optional<Tensor>& grad_scale, const std::optional<Tensor>& found_inf) {
  constexpr const char* op = "sgdf_erd::fused_sgdf_";
  check_hyperparameters(lr, hyper, op);
  std::vector<const TensorList*> lists{&params, &grads, &exp_avgs, &exp_vars};
  std::vector<const char*> names{"params", "grads", "exp_avgs", "exp_vars"};
  if (!updates.empty()) {
    lists.push_back(&updates);
    names.push_back("updates");
  }
  check_tensor_lists(lists, names, op);
  SGDF_ERD_CHECK(steps.size() == params.size(), op, ": 'steps' has ", steps.size(), " tensors for ", params.size(),
                 " params; pass one step tensor per parameter");
  if (params.empty()) return;
  const auto device = params[0].device();
  const auto dtype = params[0].scalar_type();
  SGDF_ERD_CHECK(dtype == ScalarType::Float || dtype == ScalarType::Double || dtype == ScalarType::Half ||
                     dtype == ScalarType::BFloat16,
                 op, ": params are ", dtype, "; the fused kernels take float32, float64, float16 and bfloat16 "
                 "(complex parameters as torch.view_as_real views)");
  auto is_one_float_on_device = [&](const Tensor& t) {
    return t.layout() == Layout::Strided && t.numel() == 1 && t.scalar_type() == ScalarType::Float &&
           t.device() == device;
  };
  for (size_t i = 0; i < params.size(); ++i) {
    SGDF_ERD_CHECK(params[i].device() == device && params[i].scalar_type() == dtype, op,
                   ": all params of one call must share device and dtype; got ", DeviceName(params[i].device()), "/",
                   params[i].scalar_type(), " and ", DeviceName(device), "/", dtype,
                   " (the Python optimizer groups them)");
    SGDF_ERD_CHECK(is_one_float_on_device(steps[i]), op, ": 'steps[", i,
                   "]' must be a one-element float32 tensor on ", DeviceName(device), ", got ", steps[i].numel(),
                   " elements of ", steps[i].scalar_type(), " on ", DeviceName(steps[i].device()));
  }
  auto check_scalar = [&](const std::optional<Tensor>& t, const char* name) {
    if (!t.has_value()) return;
    SGDF_ERD_CHECK(is_one_float_on_device(*t), op, ": '", name, "' must be a one-element float32 tensor on ",
                   DeviceName(device), ", got ", t->numel(), " elements of ", t->scalar_type(), " on ",
                   DeviceName(t->device()));
  };
  check_scalar(lr_tensor, "lr_tensor");
  check_scalar(grad_scale, "grad_scale");
  check_scalar(found_inf, "found_inf");
  // A CPU lr tensor is read for free; reading a CUDA one would need a host synchronisation, so there its value is
  // the caller's to check.
  if (lr_tensor.has_value() && lr_tensor->is_cpu()) {
    const float value = cpu_scalar(*lr_tensor);
    SGDF_ERD_CHECK(value >= 0.f, op, ": invalid lr_tensor=", value,
                   "; the learning rate must be >= 0 (and not NaN)");
  }

  std::vector<MemoryOperand> operands;
  operands.reserve(params.size() * (lists.size() + 1) + 3);
  for (size_t l = 0; l < lists.size(); ++l) add_operands(operands, *lists[l], names[l]);
  add_operands(operands, steps, "steps");
  for (const auto& [t, name] : {std::pair{&lr_tensor, "lr_tensor"}, std::pair{&grad_scale, "grad_scale"},
                                std::pair{&found_inf, "found_inf"}}) {
    if (t->has_value()) operands.push_back({&t->value(), name, -1, false});  // only read
  }
  check_no_shared_memory(operands, op);
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
