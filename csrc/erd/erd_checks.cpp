#include "erd/erd_checks.h"

#include <algorithm>
#include <cmath>

namespace sgdf_erd::erd {
namespace {

using torch::headeronly::ScalarType;

bool is_floating(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half || t == ScalarType::BFloat16;
}

// The compute dtype of the per-sample inputs (see SampleInputs).
ScalarType sample_dtype(std::initializer_list<const Tensor*> inputs) {
  for (const Tensor* t : inputs) {
    if (t->defined() && t->scalar_type() == ScalarType::Double) return ScalarType::Double;
  }
  return ScalarType::Float;
}

// torch's promotion among the floating dtypes: equal stays, float64 wins, any other mix is float32.
ScalarType promote_floating(ScalarType a, ScalarType b) {
  if (a == b) return a;
  if (a == ScalarType::Double || b == ScalarType::Double) return ScalarType::Double;
  return ScalarType::Float;
}

WeightParams parse_weight_params(const std::string& prediction, const std::string& weighting, double k, double gamma,
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
    SGDF_ERD_CHECK_VALUE(false, op, ": unknown prediction '", prediction, "'; use one of 'eps', 'x0', 'v', 'flow'");
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
    SGDF_ERD_CHECK_VALUE(false, op, ": unknown weighting '", weighting,
                         "'; use one of 'erd', 'constant', 'min_snr', 'p2', 'debias', or pass your own weights");
  }
  SGDF_ERD_CHECK_VALUE(weights_given == (p.weighting == Weighting::kGiven), op,
                       weights_given ? ": 'weights' were passed, so weighting must be 'given'"
                                     : ": weighting 'given' needs the 'weights' tensor");
  const bool defined = p.weighting == Weighting::kErd || p.weighting == Weighting::kConstant ||
                       p.weighting == Weighting::kGiven ||
                       (p.weighting == Weighting::kMinSnr && p.prediction != Prediction::kFlow) ||
                       (p.weighting != Weighting::kMinSnr && p.prediction == Prediction::kEps);
  SGDF_ERD_CHECK_VALUE(defined, op, ": weighting '", weighting, "' is not defined for prediction '", prediction,
                       "' (min_snr: eps, x0, v; p2 and debias: eps only); use 'erd', 'constant' or a callable");
  SGDF_ERD_CHECK_VALUE(std::isfinite(k) && std::isfinite(gamma), op, ": k and gamma must be finite, got k=", k,
                       ", gamma=", gamma);
  if (p.weighting == Weighting::kMinSnr) SGDF_ERD_CHECK_VALUE(k > 0, op, ": min_snr needs k > 0, got ", k);
  if (p.weighting == Weighting::kP2) {
    SGDF_ERD_CHECK_VALUE(k >= 0, op, ": p2 needs k >= 0, got ", k);
    // (a negative exponent would weight the cleanest samples most, infinitely at sigma = 0)
    SGDF_ERD_CHECK_VALUE(gamma >= 0, op, ": p2 needs gamma >= 0, got ", gamma);
  }
  p.k = k;
  p.gamma = gamma;
  return p;
}

void check_per_sample(const Tensor& t, const char* name, int64_t batch, const torch::stable::Device& device,
                      const char* op) {
  SGDF_ERD_CHECK_TYPE(is_floating(t.scalar_type()), op, ": '", name, "' must be a floating-point tensor, got ",
                      t.scalar_type());
  SGDF_ERD_CHECK_VALUE(has_memory(t), op, ": '", name, "'", kNoMemory);
  SGDF_ERD_CHECK_VALUE(t.dim() == 1 && t.size(0) == batch, op, ": '", name, "' must have shape [", batch,
                       "] (one value per sample), got ", Shape{t.sizes()},
                       "; index your schedule with the batch's timesteps");
  SGDF_ERD_CHECK_VALUE(t.device() == device, op, ": '", name, "' is on ", DeviceName{t.device()},
                       " but the loss operands are on ", DeviceName{device}, "; move it with .to(", DeviceName{device},
                       ")");
}

// Checks shapes ([batch] each), dtypes and devices; on CPU also that sigma >= 0 (on CUDA that check would cost a
// host synchronisation every step, so a negative sigma there yields a NaN weight instead; see cuda/erd_cuda.cu).
// *promoted: the inputs' promoted dtype.
SampleInputs prepare_sample_inputs(const Tensor& alpha, const Tensor& sigma, const std::optional<Tensor>& alpha_prime,
                                   const std::optional<Tensor>& sigma_prime, const std::optional<Tensor>& weights,
                                   const WeightParams& params, int64_t batch, const torch::stable::Device& device,
                                   const char* op, ScalarType* promoted = nullptr) {
  check_per_sample(alpha, "alpha", batch, device, op);
  check_per_sample(sigma, "sigma", batch, device, op);
  ScalarType dtype = promote_floating(alpha.scalar_type(), sigma.scalar_type());
  SGDF_ERD_CHECK_VALUE(alpha_prime.has_value() == sigma_prime.has_value(), op,
                       ": pass both alpha_prime and sigma_prime, or neither (the linear path's -1 and 1)");
  SampleInputs in{alpha, sigma, Tensor(), Tensor(), Tensor()};
  if (alpha_prime.has_value()) {
    SGDF_ERD_CHECK_VALUE(params.prediction == Prediction::kFlow, op,
                         ": alpha_prime/sigma_prime are read by prediction 'flow' only; drop them");
    check_per_sample(*alpha_prime, "alpha_prime", batch, device, op);
    check_per_sample(*sigma_prime, "sigma_prime", batch, device, op);
    dtype = promote_floating(dtype, promote_floating(alpha_prime->scalar_type(), sigma_prime->scalar_type()));
    in.alpha_prime = *alpha_prime;
    in.sigma_prime = *sigma_prime;
  }
  if (weights.has_value()) {
    check_per_sample(*weights, "weights", batch, device, op);
    dtype = promote_floating(dtype, weights->scalar_type());
    in.weights = *weights;
  }
  if (promoted != nullptr) *promoted = dtype;
  const ScalarType compute = sample_dtype({&in.alpha, &in.sigma, &in.alpha_prime, &in.sigma_prime, &in.weights});
  for (Tensor* t : {&in.alpha, &in.sigma, &in.alpha_prime, &in.sigma_prime, &in.weights}) {
    if (!t->defined()) continue;
    if (t->scalar_type() != compute) *t = torch::stable::to(*t, compute);
    if (!t->is_contiguous()) *t = torch::stable::contiguous(*t);
  }
  if (device.type() == torch::headeronly::DeviceType::CPU) {
    // a plain loop over B values: no tensor op on the per-step path
    auto check = [&](const auto* s) {
      for (int64_t i = 0; i < batch; ++i) {
        SGDF_ERD_CHECK_VALUE(!(static_cast<double>(s[i]) < 0.0), op, ": sigma must be >= 0 (x_t = alpha * x0 + ",
                             "sigma * eps); got sigma[", i, "] = ", static_cast<double>(s[i]));
      }
    };
    if (compute == ScalarType::Double) {
      check(in.sigma.const_data_ptr<double>());
    } else {
      check(in.sigma.const_data_ptr<float>());
    }
  }
  return in;
}

// output and target: same shape, dtype and device, floating, at least one dimension, no empty sample.
void check_loss_operands(const Tensor& output, const Tensor& target, const char* op) {
  SGDF_ERD_CHECK_TYPE(is_floating(output.scalar_type()), op, ": 'output' must be floating point, got ",
                      output.scalar_type());
  SGDF_ERD_CHECK_TYPE(output.scalar_type() == target.scalar_type(), op, ": 'output' (", output.scalar_type(),
                      ") and 'target' (", target.scalar_type(), ") must share a dtype");
  bool same_shape = output.dim() == target.dim();
  for (int64_t d = 0; same_shape && d < output.dim(); ++d) same_shape = output.size(d) == target.size(d);
  SGDF_ERD_CHECK_VALUE(same_shape, op, ": 'output' has shape ", Shape{output.sizes()}, " but 'target' has shape ",
                       Shape{target.sizes()}, "; they must match exactly (no broadcasting)");
  SGDF_ERD_CHECK_VALUE(output.device() == target.device(), op, ": 'output' is on ", DeviceName{output.device()},
                       " but 'target' is on ", DeviceName{target.device()});
  SGDF_ERD_CHECK_VALUE(output.dim() >= 1 && output.size(0) >= 1, op,
                       ": 'output' must have a batch dimension with at least one sample, got shape ",
                       Shape{output.sizes()});
  SGDF_ERD_CHECK_VALUE(output.numel() > 0, op, ": every sample is empty (shape ", Shape{output.sizes()},
                       "); the per-sample mean is undefined");
  SGDF_ERD_CHECK_VALUE(has_memory(output), op, ": 'output'", kNoMemory);
  SGDF_ERD_CHECK_VALUE(has_memory(target), op, ": 'target'", kNoMemory);
}

// num_bins in [1, kMaxNumBins] and a finite, non-empty log-SNR range.
void check_bins(int64_t num_bins, double logsnr_min, double logsnr_max, const char* op) {
  SGDF_ERD_CHECK_VALUE(num_bins >= 1 && num_bins <= kMaxNumBins, op, ": num_bins must lie in [1, ", kMaxNumBins,
                       "] (the statistics form a log-SNR histogram of [4, num_bins] float64 sums per step), got ",
                       num_bins);
  SGDF_ERD_CHECK_VALUE(std::isfinite(logsnr_min) && std::isfinite(logsnr_max) && logsnr_min < logsnr_max, op,
                       ": logsnr range must be finite with min < max, got (", logsnr_min, ", ", logsnr_max, ")");
}

// `t`, or its contiguous copy for the kernels. A view with gaps or an expanded one (stride 0) is copied in full, so
// a failure is reported as the copy it is (its size and the allocator's reason), not as the dispatcher's trace.
Tensor as_contiguous(const Tensor& t, const char* name, const char* op) {
  if (t.is_contiguous()) return t;
  try {
    return torch::stable::contiguous(t);
  } catch (const std::exception& e) {
    // the allocator's own words, without the trace and the C shim's "(originally from ...)" that follow them
    std::string reason = e.what();
    reason = reason.substr(0, std::min(reason.find('\n'), reason.find(" (originally from")));
    const double bytes = static_cast<double>(t.numel()) * static_cast<double>(t.element_size());
    throw std::runtime_error(str_cat(
        op, ": '", name, "' ", Shape{t.sizes()}, " (strides ", Shape{t.strides()}, ") is not contiguous, so the ",
        "kernel reads a contiguous copy of it, ", t.numel(), " elements (", bytes, " bytes), and making that copy ",
        "failed: ", reason, ". An expanded view is copied in full: pass 'output' and ",
        "'target' as contiguous tensors that fit in memory."));
  }
}

}  // namespace

WeightsCall prepare_weights(const Tensor& alpha, const Tensor& sigma, const std::optional<Tensor>& alpha_prime,
                            const std::optional<Tensor>& sigma_prime, const std::string& prediction,
                            const std::string& weighting, double k, double gamma) {
  constexpr const char* op = "sgdf_erd::erd_weights";
  WeightsCall call;
  call.params = parse_weight_params(prediction, weighting, k, gamma, false, op);
  SGDF_ERD_CHECK_VALUE(alpha.dim() == 1, op, ": 'alpha' must be 1-D [B], got shape ", Shape{alpha.sizes()});
  ScalarType dtype;
  call.in = prepare_sample_inputs(alpha, sigma, alpha_prime, sigma_prime, std::nullopt, call.params, alpha.size(0),
                                  alpha.device(), op, &dtype);
  call.out = new_empty_contiguous(call.in.alpha, {alpha.size(0)}, dtype);
  return call;
}

LossForwardCall prepare_loss_forward(const Tensor& output, const Tensor& target, const Tensor& alpha,
                                     const Tensor& sigma, const std::optional<Tensor>& alpha_prime,
                                     const std::optional<Tensor>& sigma_prime, const std::optional<Tensor>& weights,
                                     const std::string& prediction, const std::string& weighting, double k,
                                     double gamma, int64_t num_bins, double logsnr_min, double logsnr_max) {
  constexpr const char* op = "sgdf_erd::erd_loss_forward";
  check_loss_operands(output, target, op);
  check_bins(num_bins, logsnr_min, logsnr_max, op);
  LossForwardCall call;
  call.params = parse_weight_params(prediction, weighting, k, gamma, weights.has_value(), op);
  call.batch = output.size(0);
  call.per_sample = output.numel() / call.batch;
  call.in = prepare_sample_inputs(alpha, sigma, alpha_prime, sigma_prime, weights, call.params, call.batch,
                                  output.device(), op);
  call.num_bins = num_bins;
  call.logsnr_min = logsnr_min;
  call.logsnr_max = logsnr_max;
  call.output = as_contiguous(output, "output", op);
  call.target = as_contiguous(target, "target", op);
  const ScalarType acc = accumulate_dtype(output.scalar_type());
  call.loss = new_empty_contiguous(call.output, {}, call.output.scalar_type());
  call.mse = new_empty_contiguous(call.output, {call.batch}, acc);
  call.weight = new_empty_contiguous(call.output, {call.batch}, acc);
  call.bin_sums = new_empty_contiguous(call.output, {kNumBinSums, num_bins}, ScalarType::Double);
  return call;
}

std::vector<Tensor> LossBackwardCall::results() const {
  if (grad_target.defined()) return {grad_output, grad_target};
  return {grad_output};
}

LossBackwardCall prepare_loss_backward(const Tensor& grad, const Tensor& output, const Tensor& target,
                                       const Tensor& weight, bool target_requires_grad) {
  constexpr const char* op = "sgdf_erd::erd_loss_backward";
  check_loss_operands(output, target, op);
  SGDF_ERD_CHECK_VALUE(has_memory(grad), op, ": 'grad'", kNoMemory);
  SGDF_ERD_CHECK_VALUE(has_memory(weight), op, ": 'weight'", kNoMemory);
  SGDF_ERD_CHECK_VALUE(grad.numel() == 1 && grad.device() == output.device(), op,
                       ": 'grad' must be a one-element tensor on ", DeviceName{output.device()}, ", got ", grad.numel(),
                       " elements on ", DeviceName{grad.device()});
  SGDF_ERD_CHECK_VALUE(weight.dim() == 1 && weight.size(0) == output.size(0) && weight.device() == output.device() &&
                           weight.is_contiguous(),
                       op, ": 'weight' must be the forward's contiguous [", output.size(0), "] weight output");
  const ScalarType acc = accumulate_dtype(output.scalar_type());
  SGDF_ERD_CHECK_TYPE(weight.scalar_type() == acc, op, ": 'weight' must be ", acc, " for ",
                      output.scalar_type(), " operands, got ", weight.scalar_type());
  LossBackwardCall call;
  call.grad = grad;
  call.output = as_contiguous(output, "output", op);
  call.target = as_contiguous(target, "target", op);
  call.weight = weight;
  call.batch = output.size(0);
  call.per_sample = output.numel() / call.batch;
  call.grad_output = new_empty_contiguous(call.output, call.output.sizes(), call.output.scalar_type());
  if (target_requires_grad) {
    call.grad_target = new_empty_contiguous(call.target, call.target.sizes(), call.target.scalar_type());
  }
  return call;
}

}  // namespace sgdf_erd::erd
