// The entry points of sgdf_erd::fused_sgdf_ and sgdf_erd::fused_sgdf_grouped_ (their schemas' signatures), shared by
// the CPU and CUDA files: each checks every argument before anything is written, then hands each checked call (or
// param group) to that device's step.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/boxing.h"
#include "common/stable.h"
#include "sgdf/sgdf_checks.h"
#include "sgdf/sgdf_grouped_args.h"

namespace sgdf_erd::sgdf {

using StepFn = void (*)(const FusedArgs&);

// The schemas' `preconditioner`: "none" (SGDF), or AdaSGDF's "second_moment" / "variance".
inline Preconditioner parse_preconditioner(const std::string& name, const char* op) {
  if (name == "none") return Preconditioner::kNone;
  if (name == "second_moment") return Preconditioner::kSecondMoment;
  SGDF_ERD_CHECK_VALUE(name == "variance", op, ": invalid preconditioner='", name,
                       "'; it must be 'none' (SGDF), 'second_moment' or 'variance' (AdaSGDF)");
  return Preconditioner::kVariance;
}

// Registered with SGDF_ERD_BOX (common/boxing.h), which unboxes the lists as TensorHandles and keeps every argument
// for the call: they are taken by reference.
template <StepFn Step>
void fused_sgdf(const TensorHandles& params, const TensorHandles& grads, const TensorHandles& exp_avgs,
                const TensorHandles& exp_vars, const TensorHandles& updates, const TensorHandles& steps, double lr,
                const std::optional<Tensor>& lr_tensor, double beta1, double beta2, double eps, double gamma,
                double weight_decay, bool decoupled_weight_decay, bool sign, bool maximize,
                const std::optional<Tensor>& grad_scale, const std::optional<Tensor>& found_inf,
                const TensorHandles& master_params, const std::vector<int64_t>& rounding_seeds,
                const std::vector<int64_t>& rounding_offsets, const std::optional<TensorHandles>& exp_avg_sqs,
                const std::string& preconditioner) {
  const Preconditioner mode = parse_preconditioner(preconditioner, "sgdf_erd::fused_sgdf_");
  Step(make_fused_args(params, grads, exp_avgs, exp_vars, updates, steps, lr, lr_tensor, beta1, beta2, eps, gamma,
                       weight_decay, decoupled_weight_decay, sign, maximize, grad_scale, found_inf, master_params,
                       rounding_seeds, rounding_offsets, exp_avg_sqs ? TensorList(*exp_avg_sqs) : TensorList(), mode));
}

template <StepFn Step>
void fused_sgdf_grouped(const TensorHandles& params, const TensorHandles& grads, const TensorHandles& exp_avgs,
                        const TensorHandles& exp_vars, const TensorHandles& steps,
                        const TensorHandles& master_params, const std::vector<int64_t>& rounding_seeds,
                        const std::vector<int64_t>& group_sizes, const std::vector<double>& lr,
                        const std::vector<std::optional<Tensor>>& lr_tensor, const std::vector<double>& beta1,
                        const std::vector<double>& beta2, const std::vector<double>& eps,
                        const std::vector<double>& gamma, const std::vector<double>& weight_decay,
                        const std::vector<bool>& decoupled_weight_decay, const std::vector<bool>& sign,
                        const std::vector<bool>& maximize, const std::vector<bool>& master_weights,
                        const std::vector<bool>& stochastic_rounding, const std::optional<Tensor>& grad_scale,
                        const std::optional<Tensor>& found_inf, const std::optional<TensorHandles>& exp_avg_sqs,
                        const std::string& preconditioner, const std::vector<bool>& check_only) {
  const Preconditioner mode = parse_preconditioner(preconditioner, "sgdf_erd::fused_sgdf_grouped_");
  const GroupedArgs args = make_grouped_args(
      params, grads, exp_avgs, exp_vars, steps, master_params, rounding_seeds,
      {group_sizes, lr, lr_tensor, beta1, beta2, eps, gamma, weight_decay, decoupled_weight_decay, sign, maximize,
       master_weights, stochastic_rounding, check_only},
      grad_scale, found_inf, exp_avg_sqs ? TensorList(*exp_avg_sqs) : TensorList(), mode);
  for (size_t g = 0; g < args.groups.size(); ++g) {
    if (!args.check_only(g)) Step(args.groups[g]);
  }
}

}  // namespace sgdf_erd::sgdf
