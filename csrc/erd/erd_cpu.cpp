// CPU implementation of the ERD ops: the per-sample sums of squared errors in parallel over fixed element chunks
// (vectorised, float32 accumulation; float64 for float64), then a serial B-sized pass for weights, loss and
// per-bin sums. Chunk boundaries do not depend on the thread count, and every sum runs in a fixed order, so the
// results are bitwise reproducible.
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/cpu/parallel.h"
#include "common/cpu/vec.h"
#include "erd/erd_checks.h"
#include "erd/erd_math.h"

namespace sgdf_erd::erd {
namespace {

using torch::headeronly::ScalarType;

constexpr int64_t kChunk = 1 << 14;  // elements per parallel work item

using cpu::fmadd;
using cpu::load_as;
using cpu::store_as;
using cpu::Vec;

// sum_j (o_j - t_j)^2 over n elements in acc_t, with kUnroll independent vector accumulators.
template <typename scalar_t, typename acc_t>
acc_t sum_squared_difference(const scalar_t* o, const scalar_t* t, int64_t n) {
  using V = Vec<acc_t>;
  constexpr int kUnroll = 4;
  constexpr int64_t kStep = V::size();
  V acc[kUnroll];
  for (auto& a : acc) a = V(acc_t(0));
  int64_t j = 0;
  for (; j + kUnroll * kStep <= n; j += kUnroll * kStep) {
    for (int u = 0; u < kUnroll; ++u) {
      const V d = load_as(o + j + u * kStep) - load_as(t + j + u * kStep);
      acc[u] = fmadd(d, d, acc[u]);
    }
  }
  acc_t sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])).sum();
  for (; j < n; ++j) {
    const acc_t d = static_cast<acc_t>(o[j]) - static_cast<acc_t>(t[j]);
    sum += d * d;
  }
  return sum;
}

// go_j = coef * (o_j - t_j), and gt_j = -go_j when gt is given.
template <typename scalar_t, typename acc_t>
void scaled_difference(const scalar_t* o, const scalar_t* t, scalar_t* go, scalar_t* gt, acc_t coef, int64_t n) {
  using V = Vec<acc_t>;
  constexpr int64_t kStep = V::size();
  const V c(coef), neg_c(-coef);
  int64_t j = 0;
  for (; j + kStep <= n; j += kStep) {
    const V d = load_as(o + j) - load_as(t + j);
    store_as(go + j, d * c);
    if (gt != nullptr) store_as(gt + j, d * neg_c);
  }
  for (; j < n; ++j) {
    const acc_t d = static_cast<acc_t>(o[j]) - static_cast<acc_t>(t[j]);
    go[j] = static_cast<scalar_t>(d * coef);
    if (gt != nullptr) gt[j] = static_cast<scalar_t>(d * -coef);
  }
}

// Calls fn(sample, work_item, element_begin, element_end) for every kChunk-range of every sample, in parallel;
// work items are numbered sample by sample.
template <typename Fn>
void parallel_over_chunks(int64_t batch, int64_t numel_per_sample, const Fn& fn) {
  const int64_t chunks = (numel_per_sample + kChunk - 1) / kChunk;
  cpu::parallel_over_ranges(std::vector<int64_t>(batch, numel_per_sample), kChunk, [&](int64_t b, int64_t begin,
                                                                                      int64_t end) {
    fn(b, b * chunks + begin / kChunk, begin, end);
  });
}

// Per-sample values as double (the optional ones fall back to the linear path's derivatives).
template <typename param_t>
struct SampleValues {
  const param_t *alpha, *sigma, *alpha_prime, *sigma_prime, *weights;
  explicit SampleValues(const SampleInputs& in)
      : alpha(ptr(in.alpha)), sigma(ptr(in.sigma)), alpha_prime(ptr(in.alpha_prime)),
        sigma_prime(ptr(in.sigma_prime)), weights(ptr(in.weights)) {}
  double weight(int64_t i, const WeightParams& params) const {
    if (weights != nullptr) return static_cast<double>(weights[i]);
    return sample_weight(alpha[i], sigma[i], alpha_prime ? alpha_prime[i] : -1.0,
                         sigma_prime ? sigma_prime[i] : 1.0, params);
  }
  static const param_t* ptr(const Tensor& t) { return t.defined() ? t.const_data_ptr<param_t>() : nullptr; }
};

Tensor weights_cpu(const Tensor& alpha, const Tensor& sigma, const std::optional<Tensor>& alpha_prime,
                   const std::optional<Tensor>& sigma_prime, std::string prediction, std::string weighting, double k,
                   double gamma) {
  const WeightsCall call = prepare_weights(alpha, sigma, alpha_prime, sigma_prime, prediction, weighting, k, gamma);
  dispatch_sample_dtype(call.in, [&](auto param) {
    const SampleValues<decltype(param)> v(call.in);
    dispatch_floating(call.out.scalar_type(), [&](auto tag) {
      using scalar_t = decltype(tag);
      scalar_t* w = call.out.mutable_data_ptr<scalar_t>();
      for (int64_t i = 0; i < call.out.numel(); ++i) w[i] = static_cast<scalar_t>(v.weight(i, call.params));
    });
  });
  return call.out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> loss_forward_cpu(
    const Tensor& output, const Tensor& target, const Tensor& alpha, const Tensor& sigma,
    const std::optional<Tensor>& alpha_prime, const std::optional<Tensor>& sigma_prime,
    const std::optional<Tensor>& weights, std::string prediction, std::string weighting, double k, double gamma,
    int64_t num_bins, double logsnr_min, double logsnr_max) {
  const LossForwardCall call = prepare_loss_forward(output, target, alpha, sigma, alpha_prime, sigma_prime, weights,
                                                    prediction, weighting, k, gamma, num_bins, logsnr_min,
                                                    logsnr_max);
  const int64_t batch = call.batch, per_sample = call.per_sample;
  const int64_t chunks = (per_sample + kChunk - 1) / kChunk;
  dispatch_floating(call.output.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = acc_type<scalar_t>;
    const scalar_t* o = call.output.const_data_ptr<scalar_t>();
    const scalar_t* t = call.target.const_data_ptr<scalar_t>();
    std::vector<acc_t> partial(batch * chunks);
    parallel_over_chunks(batch, per_sample, [&](int64_t b, int64_t work, int64_t begin, int64_t end) {
      const int64_t base = b * per_sample;
      partial[work] = sum_squared_difference<scalar_t, acc_t>(o + base + begin, t + base + begin, end - begin);
    });

    acc_t* mse_out = call.mse.mutable_data_ptr<acc_t>();
    acc_t* weight_out = call.weight.mutable_data_ptr<acc_t>();
    double* sums = call.bin_sums.mutable_data_ptr<double>();
    std::fill(sums, sums + kNumBinSums * num_bins, 0.0);
    double total = 0;
    dispatch_sample_dtype(call.in, [&](auto param) {
      const SampleValues<decltype(param)> v(call.in);
      for (int64_t b = 0; b < batch; ++b) {
        double sq = 0;
        for (int64_t c = 0; c < chunks; ++c) sq += static_cast<double>(partial[b * chunks + c]);
        const double m = sq / static_cast<double>(per_sample);
        const double w = v.weight(b, call.params);
        mse_out[b] = static_cast<acc_t>(m);
        weight_out[b] = static_cast<acc_t>(w);
        const double l = m * w;
        total += l;
        const int64_t bin = statistics_bin(m, l, v.alpha[b], v.sigma[b], logsnr_min, logsnr_max, num_bins);
        if (bin < 0) continue;
        sums[0 * num_bins + bin] += 1.0;
        sums[1 * num_bins + bin] += m;
        sums[2 * num_bins + bin] += m * m;
        sums[3 * num_bins + bin] += l;
      }
    });
    *call.loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(total / static_cast<double>(batch));
  });
  return {call.loss, call.mse, call.weight, call.bin_sums};
}

std::vector<Tensor> loss_backward_cpu(const Tensor& grad, const Tensor& output, const Tensor& target,
                                      const Tensor& weight, bool target_requires_grad) {
  const LossBackwardCall call = prepare_loss_backward(grad, output, target, weight, target_requires_grad);
  const int64_t batch = call.batch, per_sample = call.per_sample;
  double g = 0;
  dispatch_floating(call.grad.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    g = static_cast<double>(*call.grad.const_data_ptr<scalar_t>());
  });
  dispatch_floating(call.output.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = acc_type<scalar_t>;
    const scalar_t* o = call.output.const_data_ptr<scalar_t>();
    const scalar_t* t = call.target.const_data_ptr<scalar_t>();
    scalar_t* go = call.grad_output.mutable_data_ptr<scalar_t>();
    scalar_t* gt = call.grad_target.defined() ? call.grad_target.mutable_data_ptr<scalar_t>() : nullptr;
    const acc_t* w = call.weight.const_data_ptr<acc_t>();
    parallel_over_chunks(batch, per_sample, [&](int64_t b, int64_t, int64_t begin, int64_t end) {
      const int64_t off = b * per_sample + begin;
      const auto coef = static_cast<acc_t>(grad_coefficient(g, static_cast<double>(w[b]), per_sample, batch));
      scaled_difference<scalar_t, acc_t>(o + off, t + off, go + off, gt ? gt + off : nullptr, coef, end - begin);
    });
  });
  return call.results();
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(sgdf_erd, CPU, m) {
  m.impl("erd_weights", TORCH_BOX(&weights_cpu));
  m.impl("erd_loss_forward", TORCH_BOX(&loss_forward_cpu));
  m.impl("erd_loss_backward", TORCH_BOX(&loss_backward_cpu));
}

}  // namespace sgdf_erd::erd
