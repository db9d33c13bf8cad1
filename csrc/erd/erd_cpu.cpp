// CPU implementation of the ERD ops: the per-sample sums of squared errors in parallel over fixed element chunks
// (vectorised, float32 accumulation; float64 for float64), then a serial B-sized pass for weights, loss and
// per-bin sums. Chunk boundaries do not depend on the thread count, and every sum runs in a fixed order, so the
// results are bitwise reproducible.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "erd/erd_checks.h"
#include "erd/erd_math.h"

namespace sgdf_erd::erd {
namespace {

constexpr int64_t kChunk = 1 << 14;  // elements per parallel work item

// Loads and stores of one ATen vector of scalar_t as Parts vectors of acc_t (two float vectors per
// float16/bfloat16 vector).
template <typename scalar_t, typename = void>
struct VecIO {
  using Acc = at::vec::Vectorized<scalar_t>;
  static constexpr int kParts = 1;
  static constexpr int64_t kStep = Acc::size();
  static void load(const scalar_t* p, Acc* v) { v[0] = Acc::loadu(p); }
  static void store(scalar_t* p, const Acc* v) { v[0].store(p); }
};

template <typename scalar_t>
struct VecIO<scalar_t, std::enable_if_t<at::vec::is_reduced_floating_point_v<scalar_t>>> {
  using Acc = at::vec::Vectorized<float>;
  static constexpr int kParts = 2;
  static constexpr int64_t kStep = at::vec::Vectorized<scalar_t>::size();
  static void load(const scalar_t* p, Acc* v) {
    std::tie(v[0], v[1]) = at::vec::convert_to_float<scalar_t>(at::vec::Vectorized<scalar_t>::loadu(p));
  }
  static void store(scalar_t* p, const Acc* v) { at::vec::convert_from_float<scalar_t>(v[0], v[1]).store(p); }
};

// sum_j (o_j - t_j)^2 over n elements in acc_t, with kUnroll independent vector accumulators.
template <typename scalar_t, typename acc_t>
acc_t sum_squared_difference(const scalar_t* o, const scalar_t* t, int64_t n) {
  using IO = VecIO<scalar_t>;
  using Acc = typename IO::Acc;
  constexpr int kUnroll = 4 / IO::kParts;
  constexpr int kAcc = kUnroll * IO::kParts;
  Acc acc[kAcc];
  for (auto& a : acc) a = Acc(acc_t(0));
  int64_t j = 0;
  for (; j + kUnroll * IO::kStep <= n; j += kUnroll * IO::kStep) {
    for (int u = 0; u < kUnroll; ++u) {
      Acc vo[IO::kParts], vt[IO::kParts];
      IO::load(o + j + u * IO::kStep, vo);
      IO::load(t + j + u * IO::kStep, vt);
      for (int q = 0; q < IO::kParts; ++q) {
        const Acc d = vo[q] - vt[q];
        acc[u * IO::kParts + q] = at::vec::fmadd(d, d, acc[u * IO::kParts + q]);
      }
    }
  }
  for (int a = 1; a < kAcc; ++a) acc[0] = acc[0] + acc[a];
  alignas(64) acc_t lanes[Acc::size()];
  acc[0].store(lanes);
  acc_t sum = 0;
  for (int64_t l = 0; l < Acc::size(); ++l) sum += lanes[l];
  for (; j < n; ++j) {
    const acc_t d = static_cast<acc_t>(o[j]) - static_cast<acc_t>(t[j]);
    sum += d * d;
  }
  return sum;
}

// go_j = coef * (o_j - t_j), and gt_j = -go_j when gt is given.
template <typename scalar_t, typename acc_t>
void scaled_difference(const scalar_t* o, const scalar_t* t, scalar_t* go, scalar_t* gt, acc_t coef, int64_t n) {
  using IO = VecIO<scalar_t>;
  using Acc = typename IO::Acc;
  const Acc c(coef), neg_c(-coef);
  int64_t j = 0;
  for (; j + IO::kStep <= n; j += IO::kStep) {
    Acc vo[IO::kParts], vt[IO::kParts], r[IO::kParts];
    IO::load(o + j, vo);
    IO::load(t + j, vt);
    for (int q = 0; q < IO::kParts; ++q) r[q] = (vo[q] - vt[q]) * c;
    IO::store(go + j, r);
    if (gt != nullptr) {
      for (int q = 0; q < IO::kParts; ++q) r[q] = (vo[q] - vt[q]) * neg_c;
      IO::store(gt + j, r);
    }
  }
  for (; j < n; ++j) {
    const acc_t d = static_cast<acc_t>(o[j]) - static_cast<acc_t>(t[j]);
    go[j] = static_cast<scalar_t>(d * coef);
    if (gt != nullptr) gt[j] = static_cast<scalar_t>(d * -coef);
  }
}

// Calls fn(sample, element_begin, element_end) for every kChunk-range of every sample, in parallel.
template <typename Fn>
void parallel_over_chunks(int64_t batch, int64_t numel_per_sample, const Fn& fn) {
  const int64_t chunks = (numel_per_sample + kChunk - 1) / kChunk;
  at::parallel_for(0, batch * chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo; w < hi; ++w) {
      const int64_t b = w / chunks, begin = (w % chunks) * kChunk;
      fn(b, w, begin, std::min(numel_per_sample, begin + kChunk));
    }
  });
}

// Per-sample values as double, whatever their dtype.
template <typename T>
double value_at(const at::Tensor& t, int64_t i, double fallback) {
  return t.defined() ? static_cast<double>(t.const_data_ptr<T>()[i]) : fallback;
}

at::Tensor weights_cpu(const at::Tensor& alpha, const at::Tensor& sigma, const std::optional<at::Tensor>& alpha_prime,
                       const std::optional<at::Tensor>& sigma_prime, c10::string_view prediction,
                       c10::string_view weighting, double k, double gamma) {
  constexpr const char* op = "sgdf_erd::erd_weights";
  const WeightParams params = parse_weight_params(prediction, weighting, k, gamma, false, op);
  TORCH_CHECK_VALUE(alpha.dim() == 1, op, ": 'alpha' must be 1-D [B], got shape ", alpha.sizes());
  const SampleInputs in = prepare_sample_inputs(alpha, sigma, alpha_prime, sigma_prime, std::nullopt, params,
                                                alpha.size(0), alpha.device(), op);
  at::Tensor out = at::empty_like(in.alpha);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.alpha.scalar_type(), "erd_weights_cpu", [&] {
    scalar_t* w = out.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < out.numel(); ++i) {
      w[i] = static_cast<scalar_t>(sample_weight(value_at<scalar_t>(in.alpha, i, 0), value_at<scalar_t>(in.sigma, i, 0),
                                                 value_at<scalar_t>(in.alpha_prime, i, -1.0),
                                                 value_at<scalar_t>(in.sigma_prime, i, 1.0), params));
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> loss_forward_cpu(
    const at::Tensor& output_in, const at::Tensor& target_in, const at::Tensor& alpha, const at::Tensor& sigma,
    const std::optional<at::Tensor>& alpha_prime, const std::optional<at::Tensor>& sigma_prime,
    const std::optional<at::Tensor>& weights, c10::string_view prediction, c10::string_view weighting, double k,
    double gamma, int64_t num_bins, double logsnr_min, double logsnr_max) {
  constexpr const char* op = "sgdf_erd::erd_loss_forward";
  check_loss_operands(output_in, target_in, op);
  check_bins(num_bins, logsnr_min, logsnr_max, op);
  const WeightParams params = parse_weight_params(prediction, weighting, k, gamma, weights.has_value(), op);
  const int64_t batch = output_in.size(0);
  const int64_t per_sample = output_in.numel() / batch;
  const SampleInputs in = prepare_sample_inputs(alpha, sigma, alpha_prime, sigma_prime, weights, params, batch,
                                                output_in.device(), op);
  const at::Tensor output = output_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const auto acc_dtype = output.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor mse = at::empty({batch}, output.options().dtype(acc_dtype));
  at::Tensor weight = at::empty({batch}, output.options().dtype(acc_dtype));
  at::Tensor loss = at::empty({}, output.options());
  at::Tensor bin_sums = at::zeros({kNumBinSums, num_bins}, output.options().dtype(at::kDouble));
  const int64_t chunks = (per_sample + kChunk - 1) / kChunk;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "erd_loss_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* o = output.const_data_ptr<scalar_t>();
    const scalar_t* t = target.const_data_ptr<scalar_t>();
    std::vector<acc_t> partial(batch * chunks);
    parallel_over_chunks(batch, per_sample, [&](int64_t b, int64_t work, int64_t begin, int64_t end) {
      const int64_t base = b * per_sample;
      partial[work] = sum_squared_difference<scalar_t, acc_t>(o + base + begin, t + base + begin, end - begin);
    });

    acc_t* mse_out = mse.mutable_data_ptr<acc_t>();
    acc_t* weight_out = weight.mutable_data_ptr<acc_t>();
    double* sums = bin_sums.mutable_data_ptr<double>();
    double total = 0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.alpha.scalar_type(), "erd_loss_tail_cpu", [&] {
      using param_t = scalar_t;
      for (int64_t b = 0; b < batch; ++b) {
        double sq = 0;
        for (int64_t c = 0; c < chunks; ++c) sq += static_cast<double>(partial[b * chunks + c]);
        const double m = sq / static_cast<double>(per_sample);
        const double a = value_at<param_t>(in.alpha, b, 0), s = value_at<param_t>(in.sigma, b, 0);
        const double w = params.weighting == Weighting::kGiven
                             ? value_at<param_t>(in.weights, b, 0)
                             : sample_weight(a, s, value_at<param_t>(in.alpha_prime, b, -1.0),
                                             value_at<param_t>(in.sigma_prime, b, 1.0), params);
        mse_out[b] = static_cast<acc_t>(m);
        weight_out[b] = static_cast<acc_t>(w);
        const double l = m * w;
        total += l;
        const int64_t bin = statistics_bin(m, l, a, s, logsnr_min, logsnr_max, num_bins);
        if (bin < 0) continue;
        sums[0 * num_bins + bin] += 1.0;
        sums[1 * num_bins + bin] += m;
        sums[2 * num_bins + bin] += m * m;
        sums[3 * num_bins + bin] += l;
      }
    });
    loss.fill_(total / static_cast<double>(batch));
  });
  return {loss, mse, weight, bin_sums};
}

std::vector<at::Tensor> loss_backward_cpu(const at::Tensor& grad, const at::Tensor& output_in,
                                          const at::Tensor& target_in, const at::Tensor& weight,
                                          bool target_requires_grad) {
  constexpr const char* op = "sgdf_erd::erd_loss_backward";
  check_backward_operands(grad, output_in, target_in, weight, op);
  const at::Tensor output = output_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const int64_t batch = output.size(0);
  const int64_t per_sample = output.numel() / batch;
  const double g = grad.item<double>();
  at::Tensor grad_output = at::empty_like(output);
  at::Tensor grad_target = target_requires_grad ? at::empty_like(target) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "erd_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* o = output.const_data_ptr<scalar_t>();
    const scalar_t* t = target.const_data_ptr<scalar_t>();
    scalar_t* go = grad_output.mutable_data_ptr<scalar_t>();
    scalar_t* gt = target_requires_grad ? grad_target.mutable_data_ptr<scalar_t>() : nullptr;
    const acc_t* w = weight.const_data_ptr<acc_t>();
    parallel_over_chunks(batch, per_sample, [&](int64_t b, int64_t, int64_t begin, int64_t end) {
      const int64_t off = b * per_sample + begin;
      const auto coef = static_cast<acc_t>(grad_coefficient(g, static_cast<double>(w[b]), per_sample, batch));
      scaled_difference<scalar_t, acc_t>(o + off, t + off, go + off, gt ? gt + off : nullptr, coef, end - begin);
    });
  });
  if (target_requires_grad) return {grad_output, grad_target};
  return {grad_output};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgdf_erd, CPU, m) {
  m.impl("erd_weights", &weights_cpu);
  m.impl("erd_loss_forward", &loss_forward_cpu);
  m.impl("erd_loss_backward", &loss_backward_cpu);
}

}  // namespace sgdf_erd::erd
