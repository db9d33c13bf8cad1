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
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "erd/erd_checks.h"
#include "erd/erd_math.h"

namespace sgdf_erd::erd {
namespace {

constexpr int kThreads = 256;        // threads of the element kernels
constexpr int kUnroll = 4;           // 16-byte loads in flight per thread and operand
constexpr int64_t kChunk = 8192;     // elements per block
constexpr int kTailThreads = 512;    // threads of the one-block per-sample kernel

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename scalar_t>
constexpr int pack_size() {
  return 16 / static_cast<int>(sizeof(scalar_t));
}

// Deterministic block sum: shuffles within warps, then warp 0 over the warps' sums. Result valid in thread 0.
template <typename T, int Threads>
__device__ T block_sum(T value) {
  constexpr int kWarps = Threads / 32;
  __shared__ T warp_sums[kWarps];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  value = T(0);
  if (warp == 0) {
    value = lane < kWarps ? warp_sums[lane] : T(0);
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  return value;
}

// True when both operands can be read (and written) in 16-byte packs: aligned bases, and every sample and
// chunk starting on a pack boundary.
template <typename scalar_t>
bool can_pack(std::initializer_list<const void*> ptrs, int64_t per_sample) {
  for (const void* p : ptrs) {
    if (p != nullptr && reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
  }
  return per_sample % pack_size<scalar_t>() == 0;
}

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
    using P = Pack<scalar_t, V>;
    const P* po = reinterpret_cast<const P*>(output + begin);
    const P* pt = reinterpret_cast<const P*>(target + begin);
    const int64_t packs = len / V;
    for (int64_t base = threadIdx.x; base < packs; base += int64_t(kThreads) * kUnroll) {
      P a[kUnroll], b[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = base + int64_t(u) * kThreads;
        if (i < packs) {
          a[u] = po[i];
          b[u] = pt[i];
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
  acc = block_sum<acc_t, kThreads>(acc);
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

template <typename param_t>
__global__ void weights_kernel(SamplePtrs<param_t> in, WeightParams params, param_t* out, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = static_cast<param_t>(weight_of(in, params, i));
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
  loss_acc = block_sum<double, kTailThreads>(loss_acc);
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
    using P = Pack<scalar_t, V>;
    const P* po = reinterpret_cast<const P*>(output + begin);
    const P* pt = reinterpret_cast<const P*>(target + begin);
    P* pgo = reinterpret_cast<P*>(grad_output + begin);
    P* pgt = reinterpret_cast<P*>(grad_target + begin);
    for (int64_t i = threadIdx.x; i < len / V; i += kThreads) {
      const P a = po[i], b = pt[i];
      P go, gt;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const acc_t d = static_cast<acc_t>(a.v[k]) - static_cast<acc_t>(b.v[k]);
        go.v[k] = static_cast<scalar_t>(d * coef);
        if constexpr (kTarget) gt.v[k] = static_cast<scalar_t>(d * -coef);
      }
      pgo[i] = go;
      if constexpr (kTarget) pgt[i] = gt;
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
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<param_t>() : nullptr; };
  return {ptr(in.alpha), ptr(in.sigma), ptr(in.alpha_prime), ptr(in.sigma_prime), ptr(in.weights)};
}

unsigned int grid_size(int64_t blocks, const char* op) {
  TORCH_CHECK(blocks <= int64_t(0x7fffffff), op, ": the input needs ", blocks,
              " blocks, more than one CUDA launch holds; split the batch");
  return static_cast<unsigned int>(blocks);
}

struct TailArgs {
  int64_t chunks, batch, per_sample;
  WeightParams params;
  double lo, hi;
  int64_t num_bins, segments;
};

template <typename scalar_t, typename acc_t, typename param_t>
void launch_finalize(const acc_t* partial, const SampleInputs& in, const TailArgs& a, at::Tensor& mse,
                     at::Tensor& weight, at::Tensor& loss, at::Tensor& bin_sums, at::Tensor& scratch,
                     cudaStream_t stream) {
  finalize_kernel<scalar_t, acc_t, param_t><<<1, kTailThreads, 0, stream>>>(
      partial, a.chunks, a.batch, a.per_sample, sample_ptrs<param_t>(in), a.params, a.lo, a.hi, a.num_bins,
      a.segments, mse.mutable_data_ptr<acc_t>(), weight.mutable_data_ptr<acc_t>(), loss.mutable_data_ptr<scalar_t>(),
      bin_sums.mutable_data_ptr<double>(), scratch.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor weights_cuda(const at::Tensor& alpha, const at::Tensor& sigma,
                        const std::optional<at::Tensor>& alpha_prime, const std::optional<at::Tensor>& sigma_prime,
                        c10::string_view prediction, c10::string_view weighting, double k, double gamma) {
  constexpr const char* op = "sgdf_erd::erd_weights";
  const WeightParams params = parse_weight_params(prediction, weighting, k, gamma, false, op);
  TORCH_CHECK_VALUE(alpha.dim() == 1, op, ": 'alpha' must be 1-D [B], got shape ", alpha.sizes());
  const c10::cuda::CUDAGuard guard(alpha.device());
  const SampleInputs in = prepare_sample_inputs(alpha, sigma, alpha_prime, sigma_prime, std::nullopt, params,
                                                alpha.size(0), alpha.device(), op);
  at::Tensor out = in.alpha.new_empty(in.alpha.sizes());
  const int64_t n = out.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.alpha.scalar_type(), "erd_weights_cuda", [&] {
    const int64_t blocks = grid_size((n + 255) / 256, op);
    weights_kernel<scalar_t><<<blocks, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        sample_ptrs<scalar_t>(in), params, out.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> loss_forward_cuda(
    const at::Tensor& output_in, const at::Tensor& target_in, const at::Tensor& alpha, const at::Tensor& sigma,
    const std::optional<at::Tensor>& alpha_prime, const std::optional<at::Tensor>& sigma_prime,
    const std::optional<at::Tensor>& weights, c10::string_view prediction, c10::string_view weighting, double k,
    double gamma, int64_t num_bins, double logsnr_min, double logsnr_max) {
  constexpr const char* op = "sgdf_erd::erd_loss_forward";
  check_loss_operands(output_in, target_in, op);
  check_bins(num_bins, logsnr_min, logsnr_max, op);
  const WeightParams params = parse_weight_params(prediction, weighting, k, gamma, weights.has_value(), op);
  const c10::cuda::CUDAGuard guard(output_in.device());
  const int64_t batch = output_in.size(0);
  const int64_t per_sample = output_in.numel() / batch;
  SampleInputs in = prepare_sample_inputs(alpha, sigma, alpha_prime, sigma_prime, weights, params, batch,
                                          output_in.device(), op);
  if (in.alpha.scalar_type() != at::kDouble && in.alpha.scalar_type() != at::kFloat) {
    // float16/bfloat16 schedules: the tail reads float (fewer kernel instantiations)
    for (at::Tensor* t : {&in.alpha, &in.sigma, &in.alpha_prime, &in.sigma_prime, &in.weights}) {
      if (t->defined()) *t = t->to(at::kFloat);
    }
  }
  const at::Tensor output = output_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const auto acc_dtype = output.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t chunks = (per_sample + kChunk - 1) / kChunk;
  const int64_t segments = std::max<int64_t>(1, kTailThreads / (kNumBinSums * num_bins));
  at::Tensor mse = output.new_empty({batch}, output.options().dtype(acc_dtype));
  at::Tensor weight = output.new_empty({batch}, output.options().dtype(acc_dtype));
  at::Tensor loss = output.new_empty({}, output.options());
  at::Tensor bin_sums = output.new_empty({kNumBinSums, num_bins}, output.options().dtype(at::kDouble));
  at::Tensor partial = output.new_empty({batch * chunks}, output.options().dtype(acc_dtype));
  at::Tensor scratch = output.new_empty({kNumBinSums * num_bins * segments}, output.options().dtype(at::kDouble));
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "erd_loss_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* o = output.const_data_ptr<scalar_t>();
    const scalar_t* t = target.const_data_ptr<scalar_t>();
    acc_t* part = partial.mutable_data_ptr<acc_t>();
    const int64_t blocks = grid_size(batch * chunks, op);
    if (can_pack<scalar_t>({o, t}, per_sample)) {
      squared_error_kernel<scalar_t, acc_t, true><<<blocks, kThreads, 0, stream>>>(o, t, part, per_sample, chunks);
    } else {
      squared_error_kernel<scalar_t, acc_t, false><<<blocks, kThreads, 0, stream>>>(o, t, part, per_sample, chunks);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const TailArgs args{chunks, batch, per_sample, params, logsnr_min, logsnr_max, num_bins, segments};
    if (in.alpha.scalar_type() == at::kDouble) {
      launch_finalize<scalar_t, acc_t, double>(part, in, args, mse, weight, loss, bin_sums, scratch, stream);
    } else {
      launch_finalize<scalar_t, acc_t, float>(part, in, args, mse, weight, loss, bin_sums, scratch, stream);
    }
  });
  return {loss, mse, weight, bin_sums};
}

template <typename scalar_t, typename acc_t>
struct GradArgs {
  const scalar_t* grad;
  const scalar_t* output;
  const scalar_t* target;
  const acc_t* weight;
  scalar_t* grad_output;
  scalar_t* grad_target;
  int64_t batch, per_sample, chunks;
};

template <typename scalar_t, typename acc_t, bool kPacked, bool kTarget>
void launch_grad(const GradArgs<scalar_t, acc_t>& a, unsigned int blocks, cudaStream_t stream) {
  grad_kernel<scalar_t, acc_t, kPacked, kTarget><<<blocks, kThreads, 0, stream>>>(
      a.grad, a.output, a.target, a.weight, a.grad_output, a.grad_target, a.batch, a.per_sample, a.chunks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::vector<at::Tensor> loss_backward_cuda(const at::Tensor& grad, const at::Tensor& output_in,
                                           const at::Tensor& target_in, const at::Tensor& weight,
                                           bool target_requires_grad) {
  constexpr const char* op = "sgdf_erd::erd_loss_backward";
  check_backward_operands(grad, output_in, target_in, weight, op);
  const c10::cuda::CUDAGuard guard(output_in.device());
  const at::Tensor output = output_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor g = grad.scalar_type() == output.scalar_type() ? grad : grad.to(output.scalar_type());
  const int64_t batch = output.size(0);
  const int64_t per_sample = output.numel() / batch;
  const int64_t chunks = (per_sample + kChunk - 1) / kChunk;
  at::Tensor grad_output = output.new_empty(output.sizes());
  at::Tensor grad_target = target_requires_grad ? target.new_empty(target.sizes()) : at::Tensor();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "erd_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* o = output.const_data_ptr<scalar_t>();
    const scalar_t* t = target.const_data_ptr<scalar_t>();
    scalar_t* go = grad_output.mutable_data_ptr<scalar_t>();
    scalar_t* gt = target_requires_grad ? grad_target.mutable_data_ptr<scalar_t>() : nullptr;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const acc_t* w = weight.const_data_ptr<acc_t>();
    const int64_t blocks = grid_size(batch * chunks, op);
    const bool packed = can_pack<scalar_t>({o, t, go, gt}, per_sample);
    const GradArgs<scalar_t, acc_t> args{gp, o, t, w, go, gt, batch, per_sample, chunks};
    if (packed && gt) {
      launch_grad<scalar_t, acc_t, true, true>(args, blocks, stream);
    } else if (packed) {
      launch_grad<scalar_t, acc_t, true, false>(args, blocks, stream);
    } else if (gt) {
      launch_grad<scalar_t, acc_t, false, true>(args, blocks, stream);
    } else {
      launch_grad<scalar_t, acc_t, false, false>(args, blocks, stream);
    }
  });
  if (target_requires_grad) return {grad_output, grad_target};
  return {grad_output};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgdf_erd, CUDA, m) {
  m.impl("erd_weights", &weights_cuda);
  m.impl("erd_loss_forward", &loss_forward_cuda);
  m.impl("erd_loss_backward", &loss_backward_cuda);
}

}  // namespace sgdf_erd::erd
