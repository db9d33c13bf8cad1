// CUDA implementation of sgdf_erd::fused_sgdf_: one multi-tensor launch per ~320 chunks of 64K elements.
// Step counts, lr (capturable), grad_scale and found_inf are read on the device: no host synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_sub.h>
#include <torch/library.h>

#include "common/cuda/multi_tensor_apply.cuh"
#include "sgdf/sgdf_checks.h"
#include "sgdf/sgdf_math.h"

namespace sgdf_erd::sgdf {
namespace {

template <typename scalar_t, int Depth>
struct SgdfFunctor {
  using acc_t = at::opmath_type<scalar_t>;
  Hyper<double> hyper;  // cast per block: double keeps the bias corrections accurate
  double lr;
  const float* lr_ptr;      // device lr when capturable, else null
  const float* grad_scale;  // null without AMP
  const float* found_inf;   // null without AMP
  unsigned write_mask;

  __device__ void operator()(const cuda::TensorListMetadata<Depth>& meta, int tensor, int64_t chunk) const {
    if (found_inf != nullptr && *found_inf != 0.f) return;
    const Hyper<acc_t> h = cast_hyper<acc_t>(hyper);
    const acc_t lr_acc = static_cast<acc_t>(lr_ptr != nullptr ? static_cast<double>(*lr_ptr) : lr);
    const acc_t scale = grad_scale != nullptr ? static_cast<acc_t>(*grad_scale) : acc_t(1);
    const StepCoeffs<acc_t> c = step_coeffs<acc_t>(hyper.beta1, hyper.beta2, *meta.scalar[tensor]);
    const bool unscale = grad_scale != nullptr;
    cuda::for_each_element<scalar_t, Depth>(meta, tensor, chunk, write_mask, [&](scalar_t(&v)[Depth]) {
      acc_t p = v[kParam], g = v[kGrad], m = v[kExpAvg], s = v[kExpVar];
      if (unscale) {
        g = g / scale;
        v[kGrad] = static_cast<scalar_t>(g);
      }
      const acc_t u = filtered_update(p, g, m, s, lr_acc, h, c);
      if constexpr (Depth == 5) {
        v[kUpdate] = static_cast<scalar_t>(u);
      } else {
        p = p - lr_acc * u;
      }
      v[kParam] = static_cast<scalar_t>(p);
      v[kExpAvg] = static_cast<scalar_t>(m);
      v[kExpVar] = static_cast<scalar_t>(s);
    });
  }
};

void fused_sgdf_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_vars,
                     at::TensorList updates, at::TensorList steps, double lr,
                     const std::optional<at::Tensor>& lr_tensor, double beta1, double beta2, double eps,
                     double gamma, double weight_decay, bool decoupled_weight_decay, bool sign, bool maximize,
                     const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  check_fused_args(params, grads, exp_avgs, exp_vars, updates, steps, lr_tensor, grad_scale, found_inf);
  if (params.empty()) return;
  const Hyper<double> hyper{beta1, beta2, eps, gamma, weight_decay, decoupled_weight_decay, sign, maximize};
  auto ptr = [](const std::optional<at::Tensor>& t) { return t.has_value() ? t->const_data_ptr<float>() : nullptr; };
  const unsigned mask = write_mask(grad_scale.has_value(), !updates.empty());
  // Blocks of one tensor read its step concurrently, so the increment is a launch of its own before the update;
  // an overflowed step takes it back on the device, without a host synchronisation.
  at::_foreach_add_(steps, 1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_sgdf_cuda", [&] {
    if (updates.empty()) {
      SgdfFunctor<scalar_t, 4> f{hyper, lr, ptr(lr_tensor), ptr(grad_scale), ptr(found_inf), mask};
      cuda::multi_tensor_apply<4>({params, grads, exp_avgs, exp_vars}, steps, f);
    } else {
      SgdfFunctor<scalar_t, 5> f{hyper, lr, ptr(lr_tensor), ptr(grad_scale), ptr(found_inf), mask};
      cuda::multi_tensor_apply<5>({params, grads, exp_avgs, exp_vars, updates}, steps, f);
    }
  });
  if (found_inf.has_value()) {
    at::_foreach_sub_(steps, std::vector<at::Tensor>(steps.size(), found_inf->reshape({})));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(sgdf_erd, CUDA, m) { m.impl("fused_sgdf_", &fused_sgdf_cuda); }

}  // namespace sgdf_erd::sgdf
