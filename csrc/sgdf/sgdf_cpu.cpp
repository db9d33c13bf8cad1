// CPU implementation of sgdf_erd::fused_sgdf_: one parallel pass over all tensors of a group, vectorised.
#include <array>
#include <optional>
#include <vector>

#include "common/cpu/multi_tensor_apply.h"
#include "common/scalar_types.h"
#include "common/stable.h"
#include "sgdf/sgdf_checks.h"
#include "sgdf/sgdf_math.h"

namespace sgdf_erd::sgdf {
namespace {

template <typename scalar_t, int Depth>
void run_cpu(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
             const TensorList& exp_vars, const TensorList& updates, const TensorList& steps, double lr,
             const Hyper<double>& hyper_d, const std::optional<Tensor>& grad_scale) {
  using acc_t = opmath_t<scalar_t>;
  const Hyper<acc_t> hyper = cast_hyper<acc_t>(hyper_d);
  const acc_t lr_acc = static_cast<acc_t>(lr);
  const bool unscale = grad_scale.has_value();
  const acc_t scale = unscale ? static_cast<acc_t>(cpu_scalar(*grad_scale)) : acc_t(1);
  const unsigned mask = write_mask(unscale, Depth == 5);

  // Raw pointers gathered once: the parallel region then makes no calls into torch.
  const size_t n = params.size();
  std::vector<std::array<scalar_t*, Depth>> base(n);
  std::vector<int64_t> numels(n);
  std::vector<StepCoeffs<acc_t>> coeffs(n);
  for (size_t i = 0; i < n; ++i) {
    numels[i] = params[i].numel();
    base[i][kParam] = static_cast<scalar_t*>(params[i].data_ptr());
    base[i][kGrad] = static_cast<scalar_t*>(grads[i].data_ptr());
    base[i][kExpAvg] = static_cast<scalar_t*>(exp_avgs[i].data_ptr());
    base[i][kExpVar] = static_cast<scalar_t*>(exp_vars[i].data_ptr());
    if constexpr (Depth == 5) base[i][kUpdate] = static_cast<scalar_t*>(updates[i].data_ptr());
    float& step = *static_cast<float*>(steps[i].data_ptr());
    step += 1.f;
    coeffs[i] = step_coeffs<acc_t>(hyper_d.beta1, hyper_d.beta2, step);
  }
  cpu::parallel_over_ranges(numels, cpu::kRangeSize, [&](int64_t t, int64_t begin, int64_t end) {
    std::array<scalar_t*, Depth> ptr;
    for (int d = 0; d < Depth; ++d) ptr[d] = base[t][d] + begin;
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

void fused_sgdf_cpu(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_vars,
                    TensorList updates, TensorList steps, double lr, std::optional<Tensor> lr_tensor, double beta1,
                    double beta2, double eps, double gamma, double weight_decay, bool decoupled_weight_decay,
                    bool sign, bool maximize, std::optional<Tensor> grad_scale, std::optional<Tensor> found_inf) {
  const Hyper<double> hyper{beta1, beta2, eps, gamma, weight_decay, decoupled_weight_decay, sign, maximize};
  check_fused_args(params, grads, exp_avgs, exp_vars, updates, steps, lr, lr_tensor, hyper, grad_scale, found_inf);
  if (params.empty()) return;
  // A CPU tensor is read without any device synchronisation; an overflowed step is skipped whole (GradScaler
  // passes the sum of found_inf over devices: any nonzero value means skip).
  if (found_inf.has_value() && cpu_scalar(*found_inf) != 0.f) return;
  if (lr_tensor.has_value()) lr = cpu_scalar(*lr_tensor);
  dispatch_floating_types(params[0].scalar_type(), "fused_sgdf_cpu", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    if (updates.empty()) {
      run_cpu<scalar_t, 4>(params, grads, exp_avgs, exp_vars, updates, steps, lr, hyper, grad_scale);
    } else {
      run_cpu<scalar_t, 5>(params, grads, exp_avgs, exp_vars, updates, steps, lr, hyper, grad_scale);
    }
  });
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(sgdf_erd, CPU, m) { m.impl("fused_sgdf_", TORCH_BOX(&fused_sgdf_cpu)); }
// Sparse tensors reach the same checks, which name the argument, instead of the dispatcher's "could not run".
STABLE_TORCH_LIBRARY_IMPL(sgdf_erd, SparseCPU, m) { m.impl("fused_sgdf_", TORCH_BOX(&fused_sgdf_cpu)); }

}  // namespace sgdf_erd::sgdf
