// CUDA implementation of sgdf_erd::fused_sgdf_: one multi-tensor launch per ~320 chunks of 64K elements.
// Step counts, lr (capturable), grad_scale and found_inf are read on the device: no host synchronisation.
#include <optional>

#include "common/cuda/multi_tensor_apply.cuh"
#include "common/scalar_types.h"
#include "common/stable.h"
#include "sgdf/sgdf_checks.h"
#include "sgdf/sgdf_math.h"

namespace sgdf_erd::sgdf {
namespace {

template <typename scalar_t, int Depth>
struct SgdfFunctor {
  using acc_t = opmath_t<scalar_t>;
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

// Advances each step count by one, unless the step is skipped: GradScaler passes the sum of found_inf over devices,
// so any nonzero value means skip. Adding nothing (rather than adding one, then subtracting found_inf) keeps a
// skipped count bit-identical, also where float32 can no longer represent count + 1 (from 2^24).
struct AdvanceStepFunctor {
  const float* found_inf;  // null without AMP

  __device__ void operator()(const cuda::TensorListMetadata<1>& meta, int tensor, int64_t chunk) const {
    if (found_inf != nullptr && *found_inf != 0.f) return;
    cuda::for_each_element<float, 1>(meta, tensor, chunk, 1u, [](float(&step)[1]) { step[0] += 1.f; });
  }
};

void fused_sgdf_cuda(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_vars,
                     TensorList updates, TensorList steps, double lr, std::optional<Tensor> lr_tensor, double beta1,
                     double beta2, double eps, double gamma, double weight_decay, bool decoupled_weight_decay,
                     bool sign, bool maximize, std::optional<Tensor> grad_scale, std::optional<Tensor> found_inf) {
  const Hyper<double> hyper{beta1, beta2, eps, gamma, weight_decay, decoupled_weight_decay, sign, maximize};
  check_fused_args(params, grads, exp_avgs, exp_vars, updates, steps, lr, lr_tensor, hyper, grad_scale, found_inf);
  if (params.empty()) return;
  auto ptr = [](const std::optional<Tensor>& t) {
    return t.has_value() ? static_cast<const float*>(t->const_data_ptr()) : nullptr;
  };
  const unsigned mask = write_mask(grad_scale.has_value(), !updates.empty());
  // Blocks of one tensor read its step concurrently, so the increment is a launch of its own before the update;
  // both read found_inf on the device, without a host synchronisation.
  cuda::multi_tensor_apply<1>({&steps}, {}, AdvanceStepFunctor{ptr(found_inf)});
  dispatch_floating_types(params[0].scalar_type(), "fused_sgdf_cuda", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    if (updates.empty()) {
      SgdfFunctor<scalar_t, 4> f{hyper, lr, ptr(lr_tensor), ptr(grad_scale), ptr(found_inf), mask};
      cuda::multi_tensor_apply<4>({&params, &grads, &exp_avgs, &exp_vars}, steps, f);
    } else {
      SgdfFunctor<scalar_t, 5> f{hyper, lr, ptr(lr_tensor), ptr(grad_scale), ptr(found_inf), mask};
      cuda::multi_tensor_apply<5>({&params, &grads, &exp_avgs, &exp_vars, &updates}, steps, f);
    }
  });
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(sgdf_erd, CUDA, m) { m.impl("fused_sgdf_", TORCH_BOX(&fused_sgdf_cuda)); }
// Sparse tensors reach the same checks, which name the argument, instead of the dispatcher's "could not run".
STABLE_TORCH_LIBRARY_IMPL(sgdf_erd, SparseCUDA, m) { m.impl("fused_sgdf_", TORCH_BOX(&fused_sgdf_cuda)); }

}  // namespace sgdf_erd::sgdf
