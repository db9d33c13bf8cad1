// Argument checks and preparation of the ERD ops, shared by the CPU and CUDA kernels (bodies in erd_checks.cpp,
// so nvcc never compiles them): each prepare_* checks every argument, brings the operands into the layout the
// kernels read and allocates the outputs, so a backend's entry point only launches its kernels. Bad input
// raises ValueError/TypeError naming the argument, before anything is allocated or written.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "common/scalar_types.h"
#include "common/stable.h"
#include "erd/erd_math.h"

namespace sgdf_erd::erd {

using torch::stable::Tensor;

// The per-sample inputs of a launch ([batch] each), contiguous, on the operands' device, in one compute dtype:
// float64 when any of them is float64, else float32 (float16/bfloat16 schedules convert exactly). Optional ones
// are undefined when absent.
struct SampleInputs {
  Tensor alpha, sigma, alpha_prime, sigma_prime, weights;
};

// erd_weights: the weights out[i] = sample_weight(alpha[i], sigma[i], ...), in the inputs' promoted dtype.
struct WeightsCall {
  WeightParams params;
  SampleInputs in;
  Tensor out;  // [batch], uninitialised
};

WeightsCall prepare_weights(const Tensor& alpha, const Tensor& sigma, const std::optional<Tensor>& alpha_prime,
                            const std::optional<Tensor>& sigma_prime, const std::string& prediction,
                            const std::string& weighting, double k, double gamma);

// erd_loss_forward: operands [batch, ...] flattened to [batch, per_sample], contiguous.
struct LossForwardCall {
  WeightParams params;
  SampleInputs in;
  Tensor output, target;
  int64_t batch, per_sample;
  int64_t num_bins;
  double logsnr_min, logsnr_max;
  // outputs, uninitialised: loss [] in the operands' dtype; mse and weight [batch] in the accumulation dtype
  // (float64 for float64 operands, else float32); bin_sums [kNumBinSums, num_bins] float64
  Tensor loss, mse, weight, bin_sums;
};

LossForwardCall prepare_loss_forward(const Tensor& output, const Tensor& target, const Tensor& alpha,
                                     const Tensor& sigma, const std::optional<Tensor>& alpha_prime,
                                     const std::optional<Tensor>& sigma_prime, const std::optional<Tensor>& weights,
                                     const std::string& prediction, const std::string& weighting, double k,
                                     double gamma, int64_t num_bins, double logsnr_min, double logsnr_max);

// erd_loss_backward: grad_output (and grad_target) = +-coef_i * (output - target).
struct LossBackwardCall {
  Tensor grad;  // one element, as passed
  Tensor output, target, weight;
  int64_t batch, per_sample;
  Tensor grad_output, grad_target;  // uninitialised; grad_target undefined unless requested
  std::vector<Tensor> results() const;
};

LossBackwardCall prepare_loss_backward(const Tensor& grad, const Tensor& output, const Tensor& target,
                                       const Tensor& weight, bool target_requires_grad);

// Most statistics bins a loss accepts: a log-SNR histogram needs far fewer, and every step allocates and reduces
// [4, num_bins] float64 sums (python/sgdf_erd/erd/loss.py states the same bound).
constexpr int64_t kMaxNumBins = int64_t{1} << 16;

// Calls fn(param_t{}) for the compute dtype of the per-sample inputs (float32 or float64; see SampleInputs).
template <typename Fn>
void dispatch_sample_dtype(const SampleInputs& in, const Fn& fn) {
  if (in.alpha.scalar_type() == torch::headeronly::ScalarType::Double) {
    fn(double{});
  } else {
    fn(float{});
  }
}

// The accumulation dtype of per-sample sums for operands of `dtype`.
inline torch::headeronly::ScalarType accumulate_dtype(torch::headeronly::ScalarType dtype) {
  using torch::headeronly::ScalarType;
  return dtype == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

}  // namespace sgdf_erd::erd
