// CUDA implementation of the ERD ops.
//
// Forward: kernel 1 gives every (sample, 8192-element chunk) one block that reduces sum (o - t)^2 in acc_t
// (float32; float64 for float64) with 16-byte loads; kernel 2, one block, turns the B x chunks partial sums into
// per-sample MSE, weights, the batch loss and the per-bin sums. Both reduce in a fixed order (warp shuffles and
// shared memory, no atomics), so results are bitwise reproducible. Backward: one block per (sample, chunk)
// writes coef_i * (o - t) (and its negation for the target).
//
// A negative sigma is not checked here: that would synchronise with the host every step. It gives a NaN weight
// (so a NaN loss) and the sample stays out of the statistics.
#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/cuda/block_reduce.cuh"
#include "common/cuda/vector_access.cuh"
#include "common/cuda/launch.h"
#include "erd/erd_checks.h"
#include "erd/erd_math.h"

namespace sgdf_erd::erd {
namespace {

constexpr int kThreads = 256;        // threads of the element kernels
constexpr int kUnroll = 4;           // 16-byte loads in flight per thread and operand
constexpr int64_t kChunk = 8192;     // elements per block
constexpr int kTailThreads = 512;    // threads of the one-block per-sample kernel

using sgdf_erd::cuda::load_pack;
using sgdf_erd::cuda::Pack16;
using sgdf_erd::cuda::pack_size;
using sgdf_erd::cuda::store_pack;
using torch::headeronly::ScalarType;

template <typename scalar_t, typename acc_t, bool kPacked>
__global__ void __launch_bounds__(kThreads)
    squared_error_kernel(const scalar_t* __restrict__ output, const scalar_t* __restrict__ target,
                         acc_t* __restrict__ partial, int64_t per_sample, int64_t chunks) {
  const int64_t work = blockIdx.x;
  const int64_t chunk = work % chunks;
  const int64_t begin = (work / chunks) * per_sample + chunk * kChunk;
  const int64_t len = per_sample - chunk * kChunk < kChunk ? per_sample - chunk * kChunk : kChunk;
  acc_t acc = acc_t(0);
  if constexpr (kPacked) {
    constexpr int V = pack_size<scalar_t>();
    using P = Pack16<scalar_t>;
    const int64_t packs = len / V;
    for (int64_t base = threadIdx.x; base < packs; base += int64_t(kThreads) * kUnroll) {
      P a[kUnroll], b[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = base + int64_t(u) * kThreads;
        if (i < packs) {
          a[u] = load_pack(output + begin, i);
          b[u] = load_pack(target + begin, i);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (base + int64_t(u) * kThreads < packs) {
#pragma unroll
          for (int k = 0; k < V; ++k) {
            const acc_t d = static_cast<acc_t>(a[u].v[k]) - static_cast<acc_t>(b[u].v[k]);
            acc += d * d;
          }
        }
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < len; i += kThreads) {
      const acc_t d = static_cast<acc_t>(output[begin + i]) - static_cast<acc_t>(target[begin + i]);
      acc += d * d;
    }
  }
  acc = sgdf_erd::cuda::block_sum<kThreads>(acc);
  if (threadIdx.x == 0) partial[work] = acc;
}

// The B-sized inputs of the tail, in param_t (float or double).
template <typename param_t>
struct SamplePtrs {
  const param_t* alpha;
  const param_t* sigma;
  const param_t* alpha_prime;  // nullptr: -1 (linear path)
  const param_t* sigma_prime;  // nullptr: 1
  const param_t* weights;      // nullptr: computed from params
};

template <typename param_t>
__device__ double weight_of(const SamplePtrs<param_t>& in, const WeightParams& params, int64_t i) {
  const double s = static_cast<double>(in.sigma[i]);
  if (s < 0.0) return NAN;  // see the file comment
  if (in.weights != nullptr) return static_cast<double>(in.weights[i]);
  return sample_weight(static_cast<double>(in.alpha[i]), s,
                       in.alpha_prime ? static_cast<double>(in.alpha_prime[i]) : -1.0,
                       in.sigma_prime ? static_cast<double>(in.sigma_prime[i]) : 1.0, params);
}

template <typename param_t, typename out_t>
__global__ void weights_kernel(SamplePtrs<param_t> in, WeightParams params, out_t* out, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = static_cast<out_t>(weight_of(in, params, i));
}

// One block. Samples are taken in tiles of kTailThreads; for the per-bin sums, "pair" p = (quantity, bin,
// segment of the tile) is owned by one thread, which adds the tile's matching samples into scratch[p] in order.
// Segments then combine in order. loss_out gets mean_i w_i * mse_i.
template <typename scalar_t, typename acc_t, typename param_t>
__global__ void __launch_bounds__(kTailThreads)
    finalize_kernel(const acc_t* __restrict__ partial, int64_t chunks, int64_t batch, int64_t per_sample,
                    SamplePtrs<param_t> in, WeightParams params, double lo, double hi, int64_t num_bins,
                    int64_t segments, acc_t* __restrict__ mse_out, acc_t* __restrict__ weight_out,
                    scalar_t* __restrict__ loss_out, double* __restrict__ bin_sums, double* __restrict__ scratch) {
  __shared__ int64_t s_bin[kTailThreads];
  __shared__ double s_mse[kTailThreads];
  __shared__ double s_loss[kTailThreads];
  const int64_t pairs = kNumBinSums * num_bins * segments;
  for (int64_t p = threadIdx.x; p < pairs; p += kTailThreads) scratch[p] = 0.0;

  double loss_acc = 0.0;
  for (int64_t tile = 0; tile < batch; tile += kTailThreads) {
    const int64_t i = tile + threadIdx.x;
    int64_t bin = -1;
    double m = 0.0, l = 0.0;
    if (i < batch) {
      double sq = 0.0;
      for (int64_t c = 0; c < chunks; ++c) sq += static_cast<double>(partial[i * chunks + c]);
      m = sq / static_cast<double>(per_sample);
      const double w = weight_of(in, params, i);
      mse_out[i] = static_cast<acc_t>(m);
      weight_out[i] = static_cast<acc_t>(w);
      l = m * w;
      loss_acc += l;
      // a negative sigma has a NaN weight, so the statistics leave it out
      bin = statistics_bin(m, l, static_cast<double>(in.alpha[i]), static_cast<double>(in.sigma[i]), lo, hi,
                           num_bins);
    }
    s_bin[threadIdx.x] = bin;
    s_mse[threadIdx.x] = m;
    s_loss[threadIdx.x] = l;
    __syncthreads();
    for (int64_t p = threadIdx.x; p < pairs; p += kTailThreads) {
      const int64_t quantity = p / (num_bins * segments);
      const int64_t b = (p / segments) % num_bins;
      const int64_t seg = p % segments;
      const int64_t j_begin = seg * kTailThreads / segments, j_end = (seg + 1) * kTailThreads / segments;
      double sum = 0.0;
      for (int64_t j = j_begin; j < j_end; ++j) {
        if (s_bin[j] != b) continue;
        const double v = quantity == 0 ? 1.0 : quantity == 1 ? s_mse[j] : quantity == 2 ? s_mse[j] * s_mse[j]
                                                                                        : s_loss[j];
        sum += v;
      }
      scratch[p] += sum;
    }
    __syncthreads();
  }
  loss_acc = sgdf_erd::cuda::block_sum<kTailThreads>(loss_acc);
  if (threadIdx.x == 0) loss_out[0] = static_cast<scalar_t>(loss_acc / static_cast<double>(batch));
  __syncthreads();
  for (int64_t q = threadIdx.x; q < kNumBinSums * num_bins; q += kTailThreads) {
    double sum = 0.0;
    for (int64_t seg = 0; seg < segments; ++seg) sum += scratch[q * segments + seg];
    bin_sums[q] = sum;
  }
}

template <typename scalar_t, typename acc_t, bool kPacked, bool kTarget>
__global__ void __launch_bounds__(kThreads)
    grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ output,
                const scalar_t* __restrict__ target, const acc_t* __restrict__ weight,
                scalar_t* __restrict__ grad_output, scalar_t* __restrict__ grad_target, int64_t batch,
                int64_t per_sample, int64_t chunks) {
  const int64_t work = blockIdx.x;
  const int64_t sample = work / chunks, chunk = work % chunks;
  const int64_t begin = sample * per_sample + chunk * kChunk;
  const int64_t len = per_sample - chunk * kChunk < kChunk ? per_sample - chunk * kChunk : kChunk;
  const acc_t coef = static_cast<acc_t>(grad_coefficient(static_cast<double>(grad[0]),
                                                         static_cast<double>(weight[sample]), per_sample, batch));
  if constexpr (kPacked) {
    constexpr int V = pack_size<scalar_t>();
    using P = Pack16<scalar_t>;
    for (int64_t i = threadIdx.x; i < len / V; i += kThreads) {
      const P a = load_pack(output + begin, i), b = load_pack(target + begin, i);
      P go, gt;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const acc_t d = static_cast<acc_t>(a.v[k]) - static_cast<acc_t>(b.v[k]);
        go.v[k] = static_cast<scalar_t>(d * coef);
        if constexpr (kTarget) gt.v[k] = static_cast<scalar_t>(d * -coef);
      }
      store_pack(grad_output + begin, i, go);
      if constexpr (kTarget) store_pack(grad_target + begin, i, gt);
    }
  } else {
    for (int64_t i = threadIdx.x; i < len; i += kThreads) {
      const acc_t d = static_cast<acc_t>(output[begin + i]) - static_cast<acc_t>(target[begin + i]);
      grad_output[begin + i] = static_cast<scalar_t>(d * coef);
      if constexpr (kTarget) grad_target[begin + i] = static_cast<scalar_t>(d * -coef);
    }
  }
}

template <typename param_t>
SamplePtrs<param_t> sample_ptrs(const SampleInputs& in) {
  auto ptr = [](const Tensor& t) { return t.defined() ? t.const_data_ptr<param_t>() : nullptr; };
  return {ptr(in.alpha), ptr(in.sigma), ptr(in.alpha_prime), ptr(in.sigma_prime), ptr(in.weights)};
}

unsigned int grid_size(int64_t blocks, const char* op) {
  SGDF_ERD_CHECK_VALUE(blocks <= int64_t(0x7fffffff), op, ": the input needs ", blocks,
                       " blocks, more than one CUDA launch holds; split the batch");
  return static_cast<unsigned int>(blocks);
}

Tensor weights_cuda(const Tensor& alpha, const Tensor& sigma, const std::optional<Tensor>& alpha_prime,
                    const std::optional<Tensor>& sigma_prime, std::string prediction, std::string weighting,
                    double k, double gamma) {
  const WeightsCall call = prepare_weights(alpha, sigma, alpha_prime, sigma_prime, prediction, weighting, k, gamma);
  const int64_t n = call.out.numel();
  if (n == 0) return call.out;
  const torch::stable::accelerator::DeviceGuard guard(call.out.get_device_index());
  const cudaStream_t stream = sgdf_erd::cuda::current_stream(call.out.get_device_index());
  const unsigned int blocks = grid_size((n + 255) / 256, "sgdf_erd::erd_weights");
  dispatch_sample_dtype(call.in, [&](auto param) {
    using param_t = decltype(param);
    dispatch_floating_types(call.out.scalar_type(), "sgdf_erd::erd_weights", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      weights_kernel<param_t, scalar_t><<<blocks, 256, 0, stream>>>(sample_ptrs<param_t>(call.in), call.params,
                                                                    call.out.mutable_data_ptr<scalar_t>(), n);
    });
  });
  sgdf_erd::cuda::check_launch("sgdf_erd::erd_weights");
  return call.out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> loss_forward_cuda(
    const Tensor& output, const Tensor& target, const Tensor& alpha, const Tensor& sigma,
    const std::optional<Tensor>& alpha_prime, const std::optional<Tensor>& sigma_prime,
    const std::optional<Tensor>& weights, std::string prediction, std::string weighting, double k, double gamma,
    int64_t num_bins, double logsnr_min, double logsnr_max) {
  constexpr const char* op = "sgdf_erd::erd_loss_forward";
  LossForwardCall call = prepare_loss_forward(output, target, alpha, sigma, alpha_prime, sigma_prime, weights,
                                              prediction, weighting, k, gamma, num_bins, logsnr_min, logsnr_max);
  const torch::stable::accelerator::DeviceGuard guard(call.output.get_device_index());
  const cudaStream_t stream = sgdf_erd::cuda::current_stream(call.output.get_device_index());
  const int64_t chunks = (call.per_sample + kChunk - 1) / kChunk;
  const int64_t segments = std::max<int64_t>(1, kTailThreads / (kNumBinSums * num_bins));
  const Tensor partial = new_empty_contiguous(call.output, {call.batch * chunks}, call.mse.scalar_type());
  const Tensor scratch = new_empty_contiguous(call.output, {kNumBinSums * num_bins * segments}, ScalarType::Double);
  const unsigned int blocks = grid_size(call.batch * chunks, op);
  dispatch_floating_types(call.output.scalar_type(), "sgdf_erd::erd_loss_forward", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* o = call.output.const_data_ptr<scalar_t>();
    const scalar_t* t = call.target.const_data_ptr<scalar_t>();
    acc_t* part = partial.mutable_data_ptr<acc_t>();
    if (sgdf_erd::cuda::can_use_packs<scalar_t>({o, t}, call.per_sample)) {
      squared_error_kernel<scalar_t, acc_t, true><<<blocks, kThreads, 0, stream>>>(o, t, part, call.per_sample, chunks);
    } else {
      squared_error_kernel<scalar_t, acc_t, false><<<blocks, kThreads, 0, stream>>>(o, t, part, call.per_sample,
                                                                                    chunks);
    }
    dispatch_sample_dtype(call.in, [&](auto param) {
      using param_t = decltype(param);
      finalize_kernel<scalar_t, acc_t, param_t><<<1, kTailThreads, 0, stream>>>(
          part, chunks, call.batch, call.per_sample, sample_ptrs<param_t>(call.in), call.params, call.logsnr_min,
          call.logsnr_max, num_bins, segments, call.mse.mutable_data_ptr<acc_t>(),
          call.weight.mutable_data_ptr<acc_t>(), call.loss.mutable_data_ptr<scalar_t>(),
          call.bin_sums.mutable_data_ptr<double>(), scratch.mutable_data_ptr<double>());
    });
  });
  sgdf_erd::cuda::check_launch(op);
  return {call.loss, call.mse, call.weight, call.bin_sums};
}

template <typename scalar_t, typename acc_t, bool kPacked, bool kTarget>
void launch_grad(const LossBackwardCall& call, const scalar_t* grad, unsigned int blocks, int64_t chunks,
                 cudaStream_t stream) {
  grad_kernel<scalar_t, acc_t, kPacked, kTarget><<<blocks, kThreads, 0, stream>>>(
      grad, call.output.const_data_ptr<scalar_t>(), call.target.const_data_ptr<scalar_t>(),
      call.weight.const_data_ptr<acc_t>(), call.grad_output.mutable_data_ptr<scalar_t>(),
      kTarget ? call.grad_target.mutable_data_ptr<scalar_t>() : nullptr, call.batch, call.per_sample, chunks);
}

std::vector<Tensor> loss_backward_cuda(const Tensor& grad, const Tensor& output, const Tensor& target,
                                       const Tensor& weight, bool target_requires_grad) {
  constexpr const char* op = "sgdf_erd::erd_loss_backward";
  const LossBackwardCall call = prepare_loss_backward(grad, output, target, weight, target_requires_grad);
  const torch::stable::accelerator::DeviceGuard guard(call.output.get_device_index());
  const cudaStream_t stream = sgdf_erd::cuda::current_stream(call.output.get_device_index());
  // the kernel reads grad on the device, in the operands' dtype (no host synchronisation)
  const Tensor g = call.grad.scalar_type() == call.output.scalar_type()
                       ? call.grad
                       : torch::stable::to(call.grad, call.output.scalar_type());
  const int64_t chunks = (call.per_sample + kChunk - 1) / kChunk;
  const unsigned int blocks = grid_size(call.batch * chunks, op);
  const bool with_target = call.grad_target.defined();
  dispatch_floating_types(call.output.scalar_type(), "sgdf_erd::erd_loss_backward", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const bool packed = sgdf_erd::cuda::can_use_packs<scalar_t>(
        {call.output.const_data_ptr(), call.target.const_data_ptr(), call.grad_output.const_data_ptr(),
         with_target ? call.grad_target.const_data_ptr() : nullptr},
        call.per_sample);
    if (packed && with_target) {
      launch_grad<scalar_t, acc_t, true, true>(call, gp, blocks, chunks, stream);
    } else if (packed) {
      launch_grad<scalar_t, acc_t, true, false>(call, gp, blocks, chunks, stream);
    } else if (with_target) {
      launch_grad<scalar_t, acc_t, false, true>(call, gp, blocks, chunks, stream);
    } else {
      launch_grad<scalar_t, acc_t, false, false>(call, gp, blocks, chunks, stream);
    }
  });
  sgdf_erd::cuda::check_launch(op);
  return call.results();
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(sgdf_erd, CUDA, m) {
  m.impl("erd_weights", TORCH_BOX(&weights_cuda));
  m.impl("erd_loss_forward", TORCH_BOX(&loss_forward_cuda));
  m.impl("erd_loss_backward", TORCH_BOX(&loss_backward_cuda));
}

}  // namespace sgdf_erd::erd
