// The entry points of sgdf_erd::fused_sgdf_ and sgdf_erd::fused_sgdf_grouped_ (their schemas' signatures), shared by
// the CPU and CUDA files: each checks every argument before anything is written, then hands each checked call (or
// param group) to that device's step.
#pragma once

#include <optional>
#include <string>
#include <vector>

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

template <StepFn Step>
void fused_sgdf(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_vars, TensorList updates,
                TensorList steps, double lr, std::optional<Tensor> lr_tensor, double beta1, double beta2, double eps,
                double gamma, double weight_decay, bool decoupled_weight_decay, bool sign, bool maximize,
                std::optional<Tensor> grad_scale, std::optional<Tensor> found_inf, TensorList master_params,
                std::vector<int64_t> rounding_seeds, std::vector<int64_t> rounding_offsets,
                std::optional<TensorList> exp_avg_sqs, std::string preconditioner) {
  const Preconditioner mode = parse_preconditioner(preconditioner, "sgdf_erd::fused_sgdf_");
  Step(make_fused_args(params, grads, exp_avgs, exp_vars, updates, steps, lr, lr_tensor, beta1, beta2, eps, gamma,
                       weight_decay, decoupled_weight_decay, sign, maximize, grad_scale, found_inf, master_params,
                       rounding_seeds, rounding_offsets, exp_avg_sqs ? *exp_avg_sqs : kNoExpAvgSqs, mode));
}

template <StepFn Step>
void fused_sgdf_grouped(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_vars,
                        TensorList steps, TensorList master_params, std::vector<int64_t> rounding_seeds,
                        std::vector<int64_t> group_sizes, std::vector<double> lr,
                        std::vector<std::optional<Tensor>> lr_tensor,
                        std::vector<double> beta1, std::vector<double> beta2, std::vector<double> eps,
                        std::vector<double> gamma, std::vector<double> weight_decay,
                        std::vector<bool> decoupled_weight_decay, std::vector<bool> sign, std::vector<bool> maximize,
                        std::vector<bool> master_weights, std::vector<bool> stochastic_rounding,
                        std::optional<Tensor> grad_scale, std::optional<Tensor> found_inf,
                        std::optional<TensorList> exp_avg_sqs, std::string preconditioner) {
  const Preconditioner mode = parse_preconditioner(preconditioner, "sgdf_erd::fused_sgdf_grouped_");
  TensorList no_exp_avg_sqs;
  const GroupedArgs args = make_grouped_args(
      params, grads, exp_avgs, exp_vars, steps, master_params, rounding_seeds,
      {group_sizes, lr, lr_tensor, beta1, beta2, eps, gamma, weight_decay, decoupled_weight_decay, sign, maximize,
       master_weights, stochastic_rounding},
      grad_scale, found_inf, exp_avg_sqs ? *exp_avg_sqs : no_exp_avg_sqs, mode);
  for (const FusedArgs& a : args.groups) Step(a);
}

}  // namespace sgdf_erd::sgdf
