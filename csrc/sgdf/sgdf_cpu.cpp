// CPU implementation of sgdf_erd::fused_sgdf_: one parallel pass over all tensors of a group, vectorised.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "sgdf/sgdf_checks.h"
#include "sgdf/sgdf_math.h"
// last: it pulls in the stable headers, which forbid ATen from here on (until this file is ported)
#include "common/cpu/multi_tensor_apply.h"

namespace sgdf_erd::sgdf {
namespace {

template <typename scalar_t, int Depth>
void run_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_vars,
             at::TensorList updates, at::TensorList steps, double lr, const Hyper<double>& hyper_d,
             const std::optional<at::Tensor>& grad_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const Hyper<acc_t> hyper = cast_hyper<acc_t>(hyper_d);
  const acc_t lr_acc = static_cast<acc_t>(lr);
  const bool unscale = grad_scale.has_value();
  const acc_t scale = unscale ? static_cast<acc_t>(grad_scale->item<float>()) : acc_t(1);
  const unsigned mask = write_mask(unscale, Depth == 5);

  std::vector<int64_t> numels;
  std::vector<StepCoeffs<acc_t>> coeffs;
  for (size_t i = 0; i < params.size(); ++i) {
    numels.push_back(params[i].numel());
    float& step = *steps[i].mutable_data_ptr<float>();
    step += 1.f;
    coeffs.push_back(step_coeffs<acc_t>(hyper_d.beta1, hyper_d.beta2, step));
  }
  cpu::parallel_over_ranges(numels, cpu::kRangeSize, [&](int64_t t, int64_t begin, int64_t end) {
    std::array<scalar_t*, Depth> ptr;
    ptr[kParam] = params[t].data_ptr<scalar_t>() + begin;
    ptr[kGrad] = grads[t].data_ptr<scalar_t>() + begin;
    ptr[kExpAvg] = exp_avgs[t].data_ptr<scalar_t>() + begin;
    ptr[kExpVar] = exp_vars[t].data_ptr<scalar_t>() + begin;
    if constexpr (Depth == 5) ptr[kUpdate] = updates[t].data_ptr<scalar_t>() + begin;
    // By-value copies: the loop stores through float pointers, which the compiler must otherwise assume may
    // alias hyperparameters reached through references, reloading them for every vector.
    const StepCoeffs<acc_t> c = coeffs[t];
    cpu::apply_elementwise<scalar_t, acc_t, Depth>(ptr, end - begin, mask, [=](auto& v) {
      using V = std::decay_t<decltype(v[0])>;
      if (unscale) v[kGrad] = v[kGrad] / V(scale);
      const V u = filtered_update(v[kParam], v[kGrad], v[kExpAvg], v[kExpVar], lr_acc, hyper, c);
      if constexpr (Depth == 5) {
        v[kUpdate] = u;
      } else {
        v[kParam] = v[kParam] - V(lr_acc) * u;
      }
    });
  });
}

void fused_sgdf_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_vars,
                    at::TensorList updates, at::TensorList steps, double lr,
                    const std::optional<at::Tensor>& lr_tensor, double beta1, double beta2, double eps, double gamma,
                    double weight_decay, bool decoupled_weight_decay, bool sign, bool maximize,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const Hyper<double> hyper{beta1, beta2, eps, gamma, weight_decay, decoupled_weight_decay, sign, maximize};
  check_fused_args(params, grads, exp_avgs, exp_vars, updates, steps, lr, lr_tensor, hyper, grad_scale, found_inf);
  if (params.empty()) return;
  // A CPU tensor is read without any device synchronisation; an overflowed step is skipped whole (GradScaler
  // passes the sum of found_inf over devices: any nonzero value means skip).
  if (found_inf.has_value() && found_inf->item<float>() != 0.f) return;
  if (lr_tensor.has_value()) lr = lr_tensor->item<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_sgdf_cpu", [&] {
    if (updates.empty()) {
      run_cpu<scalar_t, 4>(params, grads, exp_avgs, exp_vars, updates, steps, lr, hyper, grad_scale);
    } else {
      run_cpu<scalar_t, 5>(params, grads, exp_avgs, exp_vars, updates, steps, lr, hyper, grad_scale);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(sgdf_erd, CPU, m) { m.impl("fused_sgdf_", &fused_sgdf_cpu); }
// Sparse tensors reach the same checks, which name the argument, instead of the dispatcher's "could not run".
TORCH_LIBRARY_IMPL(sgdf_erd, SparseCPU, m) { m.impl("fused_sgdf_", &fused_sgdf_cpu); }

}  // namespace sgdf_erd::sgdf
