#include "erd/erd_checks.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

namespace sgdf_erd::erd {

WeightParams parse_weight_params(c10::string_view prediction, c10::string_view weighting, double k, double gamma,
                                 bool weights_given, const char* op) {
  WeightParams p{};
  if (prediction == "eps") {
    p.prediction = Prediction::kEps;
  } else if (prediction == "x0") {
    p.prediction = Prediction::kX0;
  } else if (prediction == "v") {
    p.prediction = Prediction::kV;
  } else if (prediction == "flow") {
    p.prediction = Prediction::kFlow;
  } else {
    TORCH_CHECK_VALUE(false, op, ": unknown prediction '", std::string(prediction),
                      "'; use one of 'eps', 'x0', 'v', 'flow'");
  }
  if (weighting == "erd") {
    p.weighting = Weighting::kErd;
  } else if (weighting == "constant") {
    p.weighting = Weighting::kConstant;
  } else if (weighting == "min_snr") {
    p.weighting = Weighting::kMinSnr;
  } else if (weighting == "p2") {
    p.weighting = Weighting::kP2;
  } else if (weighting == "debias") {
    p.weighting = Weighting::kDebias;
  } else if (weighting == "given") {
    p.weighting = Weighting::kGiven;
  } else {
    TORCH_CHECK_VALUE(false, op, ": unknown weighting '", std::string(weighting),
                      "'; use one of 'erd', 'constant', 'min_snr', 'p2', 'debias', or pass your own weights");
  }
  TORCH_CHECK_VALUE(weights_given == (p.weighting == Weighting::kGiven), op,
                    weights_given ? ": 'weights' were passed, so weighting must be 'given'"
                                  : ": weighting 'given' needs the 'weights' tensor");
  const bool defined = p.weighting == Weighting::kErd || p.weighting == Weighting::kConstant ||
                       p.weighting == Weighting::kGiven ||
                       (p.weighting == Weighting::kMinSnr && p.prediction != Prediction::kFlow) ||
                       (p.weighting != Weighting::kMinSnr && p.prediction == Prediction::kEps);
  TORCH_CHECK_VALUE(defined, op, ": weighting '", std::string(weighting), "' is not defined for prediction '",
                    std::string(prediction), "' (min_snr: eps, x0, v; p2 and debias: eps only); use 'erd', "
                    "'constant' or a callable");
  TORCH_CHECK_VALUE(std::isfinite(k) && std::isfinite(gamma), op, ": k and gamma must be finite, got k=", k,
                    ", gamma=", gamma);
  if (p.weighting == Weighting::kMinSnr) TORCH_CHECK_VALUE(k > 0, op, ": min_snr needs k > 0, got ", k);
  if (p.weighting == Weighting::kP2) TORCH_CHECK_VALUE(k >= 0, op, ": p2 needs k >= 0, got ", k);
  p.k = k;
  p.gamma = gamma;
  return p;
}

namespace {

at::Tensor check_per_sample(const at::Tensor& t, const char* name, int64_t batch, const at::Device& device,
                            const char* op) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": '", name,
                   "' must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == batch, op, ": '", name, "' must have shape [", batch,
                    "] (one value per sample), got ", t.sizes(), "; index your schedule with the batch's timesteps");
  TORCH_CHECK_VALUE(t.device() == device, op, ": '", name, "' is on ", t.device(), " but the loss operands are on ",
                    device, "; move it with .to(", device, ")");
  return t;
}

}  // namespace

SampleInputs prepare_sample_inputs(const at::Tensor& alpha, const at::Tensor& sigma,
                                   const std::optional<at::Tensor>& alpha_prime,
                                   const std::optional<at::Tensor>& sigma_prime,
                                   const std::optional<at::Tensor>& weights, const WeightParams& params,
                                   int64_t batch, const at::Device& device, const char* op) {
  SampleInputs in;
  in.alpha = check_per_sample(alpha, "alpha", batch, device, op);
  in.sigma = check_per_sample(sigma, "sigma", batch, device, op);
  at::ScalarType dtype = at::promote_types(alpha.scalar_type(), sigma.scalar_type());
  TORCH_CHECK_VALUE(alpha_prime.has_value() == sigma_prime.has_value(), op,
                    ": pass both alpha_prime and sigma_prime, or neither (the linear path's -1 and 1)");
  if (alpha_prime.has_value()) {
    TORCH_CHECK_VALUE(params.prediction == Prediction::kFlow, op,
                      ": alpha_prime/sigma_prime are read by prediction 'flow' only; drop them");
    in.alpha_prime = check_per_sample(*alpha_prime, "alpha_prime", batch, device, op);
    in.sigma_prime = check_per_sample(*sigma_prime, "sigma_prime", batch, device, op);
    dtype = at::promote_types(dtype, at::promote_types(alpha_prime->scalar_type(), sigma_prime->scalar_type()));
  }
  if (weights.has_value()) {
    in.weights = check_per_sample(*weights, "weights", batch, device, op);
    dtype = at::promote_types(dtype, weights->scalar_type());
  }
  for (at::Tensor* t : {&in.alpha, &in.sigma, &in.alpha_prime, &in.sigma_prime, &in.weights}) {
    if (t->defined()) *t = t->to(dtype).contiguous();
  }
  if (device.is_cpu()) {
    // a plain loop: B values, and no tensor ops on the per-step path
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.sigma.scalar_type(), "erd_check_sigma", [&] {
      const scalar_t* s = in.sigma.const_data_ptr<scalar_t>();
      for (int64_t i = 0; i < batch; ++i) {
        TORCH_CHECK_VALUE(!(static_cast<double>(s[i]) < 0.0), op, ": sigma must be >= 0 (x_t = alpha * x0 + ",
                          "sigma * eps); got sigma[", i, "] = ", static_cast<double>(s[i]));
      }
    });
  }
  return in;
}

void check_loss_operands(const at::Tensor& output, const at::Tensor& target, const char* op) {
  TORCH_CHECK_TYPE(at::isFloatingType(output.scalar_type()), op, ": 'output' must be floating point, got ",
                   output.scalar_type());
  TORCH_CHECK_TYPE(output.scalar_type() == target.scalar_type(), op, ": 'output' (", output.scalar_type(),
                   ") and 'target' (", target.scalar_type(), ") must share a dtype");
  TORCH_CHECK_VALUE(output.sizes() == target.sizes(), op, ": 'output' has shape ", output.sizes(),
                    " but 'target' has shape ", target.sizes(), "; they must match exactly (no broadcasting)");
  TORCH_CHECK_VALUE(output.device() == target.device(), op, ": 'output' is on ", output.device(),
                    " but 'target' is on ", target.device());
  TORCH_CHECK_VALUE(output.dim() >= 1 && output.size(0) >= 1, op,
                    ": 'output' must have a batch dimension with at least one sample, got shape ", output.sizes());
  TORCH_CHECK_VALUE(output.numel() > 0, op, ": every sample is empty (shape ", output.sizes(),
                    "); the per-sample mean is undefined");
}

void check_bins(int64_t num_bins, double logsnr_min, double logsnr_max, const char* op) {
  TORCH_CHECK_VALUE(num_bins >= 1 && num_bins <= kMaxNumBins, op, ": num_bins must lie in [1, ", kMaxNumBins,
                    "] (the statistics form a log-SNR histogram of [4, num_bins] float64 sums per step), got ",
                    num_bins);
  TORCH_CHECK_VALUE(std::isfinite(logsnr_min) && std::isfinite(logsnr_max) && logsnr_min < logsnr_max, op,
                    ": logsnr range must be finite with min < max, got (", logsnr_min, ", ", logsnr_max, ")");
}

void check_backward_operands(const at::Tensor& grad, const at::Tensor& output, const at::Tensor& target,
                             const at::Tensor& weight, const char* op) {
  check_loss_operands(output, target, op);
  TORCH_CHECK_VALUE(grad.numel() == 1 && grad.device() == output.device(), op,
                    ": 'grad' must be a one-element tensor on ", output.device(), ", got ", grad.numel(),
                    " elements on ", grad.device());
  TORCH_CHECK_VALUE(weight.dim() == 1 && weight.size(0) == output.size(0) && weight.device() == output.device() &&
                        weight.is_contiguous(),
                    op, ": 'weight' must be the forward's contiguous [", output.size(0), "] weight output");
  const auto acc = output.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_TYPE(weight.scalar_type() == acc, op, ": 'weight' must be ", acc, " for ", output.scalar_type(),
                   " operands, got ", weight.scalar_type());
}

}  // namespace sgdf_erd::erd
