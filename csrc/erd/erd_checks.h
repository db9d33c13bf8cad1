// Argument parsing and checks for the ERD ops, shared by the CPU and CUDA implementations (bodies in
// erd_checks.cpp, so nvcc never compiles them). Bad input raises ValueError/TypeError naming the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

#include "erd/erd_math.h"

namespace sgdf_erd::erd {

// Parses prediction/weighting names and rejects pairs the spec does not define (Min-SNR, P2 and debias exist
// for the predictions listed in erd_math.h only). weights_given: the caller passes its own weights, which
// requires weighting == "given".
WeightParams parse_weight_params(c10::string_view prediction, c10::string_view weighting, double k, double gamma,
                                 bool weights_given, const char* op);

// The B-sized inputs of a launch, contiguous, on `device`, all in one floating dtype (alpha's, or the promoted
// one when they differ). Optional ones are undefined when absent.
struct SampleInputs {
  at::Tensor alpha, sigma, alpha_prime, sigma_prime, weights;
};

// Checks shapes ([batch] each) and devices; on CPU also that sigma >= 0 (on CUDA that check would cost a host
// synchronisation every step, so a negative sigma there yields a NaN weight instead; see erd_cuda.cu).
SampleInputs prepare_sample_inputs(const at::Tensor& alpha, const at::Tensor& sigma,
                                   const std::optional<at::Tensor>& alpha_prime,
                                   const std::optional<at::Tensor>& sigma_prime,
                                   const std::optional<at::Tensor>& weights, const WeightParams& params,
                                   int64_t batch, const at::Device& device, const char* op);

// output and target: same shape, dtype and device, floating, at least one dimension, no empty sample.
void check_loss_operands(const at::Tensor& output, const at::Tensor& target, const char* op);

// Most statistics bins a loss accepts: a log-SNR histogram needs far fewer, and every step allocates and reduces
// [4, num_bins] float64 sums (python/sgdf_erd/erd/loss.py states the same bound).
constexpr int64_t kMaxNumBins = int64_t{1} << 16;

// num_bins in [1, kMaxNumBins] and a finite, non-empty log-SNR range.
void check_bins(int64_t num_bins, double logsnr_min, double logsnr_max, const char* op);

// grad (a one-element tensor on output's device), and weight ([batch], the forward's weight output).
void check_backward_operands(const at::Tensor& grad, const at::Tensor& output, const at::Tensor& target,
                             const at::Tensor& weight, const char* op);

}  // namespace sgdf_erd::erd
