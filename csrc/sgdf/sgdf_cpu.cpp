// CPU implementation of sgdf_erd::fused_sgdf_: one parallel pass over all tensors of a group, through the kernel
// build of the CPU's instruction set (sgdf_cpu_kernel.h; AVX-512 in sgdf_cpu_avx512.cpp).
#include <array>
#include <optional>
#include <vector>

#include "common/cpu/capability.h"
#include "common/cpu/multi_tensor_apply.h"
#include "common/cpu/parallel.h"
#include "common/random.h"
#include "common/stable.h"
#include "sgdf/sgdf_checks.h"
#include "sgdf/sgdf_cpu_kernel.h"
#include "sgdf/sgdf_cpu_plan.h"
#include "sgdf/sgdf_entry_points.h"
#include "sgdf/sgdf_math.h"

namespace sgdf_erd::sgdf {
namespace {

const StepRangeKernels& baseline_kernels() {
  static const StepRangeKernels kernels = step_range_kernels();
  return kernels;
}

// The kernels of the instruction set chosen for this process (common/cpu/capability.h).
const StepRangeKernels& chosen_kernels() {
  static const StepRangeKernels& kernels =
      cpu::capability() == cpu::Capability::kAvx512 ? avx512_step_range_kernels() : baseline_kernels();
  return kernels;
}

template <typename acc_t, bool kMaster, bool kUpdate, Preconditioner kPre>
void run_cpu(const FusedArgs& a, double lr) {
  using Ops = ModeOperands<kMaster, kUpdate, kPre>;
  constexpr int Depth = Ops::kDepth;
  StepPlan<acc_t, Depth> plan;
  plan.hyper = cast_hyper<acc_t>(a.hyper);
  plan.lr = static_cast<acc_t>(lr);
  plan.unscale = a.grad_scale.has_value();
  plan.scale = plan.unscale ? static_cast<acc_t>(cpu_scalar(*a.grad_scale)) : acc_t(1);

  // Operands gathered once: the parallel region then makes no calls into torch.
  const size_t n = a.params.size();
  std::vector<std::array<cpu::Operand, Depth>> base(n);
  std::vector<int64_t> numels(n), first_indices(n);
  std::vector<StepCoeffs<acc_t>> coeffs(n);
  for (size_t i = 0; i < n; ++i) {
    numels[i] = a.params[i].numel();
    first_indices[i] = a.first_index(i);
    float& step = *static_cast<float*>(a.steps[i].data_ptr());
    step += 1.f;
    coeffs[i] = step_coeffs<acc_t>(a.hyper.beta1, a.hyper.beta2, step);
    // Stochastic rounding of 16-bit storage, one random stream per stored tensor; a param with a master copy
    // takes it rounded to nearest (the master keeps what rounding drops).
    auto operand = [&](TensorRef t, int index, ScalarType dtype, bool stochastic, uint32_t stream) {
      const bool rounded = stochastic && a.stochastic() && is_16_bit(dtype);
      const uint32_t key = rounded ? random::tensor_key(static_cast<uint32_t>(a.rounding_seeds[i]),
                                                        static_cast<uint32_t>(step), stream)
                                   : 0u;
      return cpu::Operand{t.data_ptr(), dtype, Ops::written(index, plan.unscale), {rounded, key}};
    };
    auto& o = base[i];
    o[Ops::kParam] = operand(a.params[i], Ops::kParam, a.param_dtype, !kMaster, random::kParamStream);
    o[Ops::kGrad] = operand(a.grads[i], Ops::kGrad, a.param_dtype, false, 0);
    o[Ops::kExpAvg] = operand(a.exp_avgs[i], Ops::kExpAvg, a.state_dtype, true, random::kExpAvgStream);
    o[Ops::kExpVar] = operand(a.exp_vars[i], Ops::kExpVar, a.state_dtype, true, random::kExpVarStream);
    if constexpr (kMaster) {
      o[Ops::kMasterParam] = operand(a.master_params[i], Ops::kMasterParam, ScalarType::Float, false, 0);
    }
    if constexpr (kUpdate) {
      o[Ops::kUpdateBuffer] = operand(a.updates[i], Ops::kUpdateBuffer, a.param_dtype, false, 0);
    }
    if constexpr (kPre == Preconditioner::kSecondMoment) {
      o[Ops::kExpAvgSq] = operand(a.exp_avg_sqs[i], Ops::kExpAvgSq, a.state_dtype, true, random::kExpAvgSqStream);
    }
  }
  plan.operands = base.data();
  plan.first_indices = first_indices.data();
  plan.coeffs = coeffs.data();
  const StepRangeFn<acc_t, kMaster, kUpdate, kPre> kernel =
      chosen_kernels().template get<acc_t, kMaster, kUpdate, kPre>();
  cpu::parallel_over_ranges(numels, cpu::kRangeSize,
                            [&](int64_t t, int64_t begin, int64_t end) { kernel(plan, t, begin, end); });
}

// One checked call (or param group). A CPU tensor is read without any device synchronisation; an overflowed step is
// skipped whole (GradScaler passes the sum of found_inf over devices: any nonzero value means skip).
void step_cpu(const FusedArgs& a) {
  if (a.params.empty()) return;
  if (a.found_inf.has_value() && cpu_scalar(*a.found_inf) != 0.f) return;
  const double step_lr = a.lr_tensor.has_value() ? static_cast<double>(cpu_scalar(*a.lr_tensor)) : a.lr;
  // 16-bit operands are converted to float by common/cpu/multi_tensor_apply.h, so the dtypes choose only the
  // arithmetic type
  dispatch_preconditioner(a.hyper.preconditioner, [&](auto mode) {
    dispatch_storage(a, [&](auto param, auto, auto master, auto update) {
      run_cpu<opmath_t<typename decltype(param)::type>, decltype(master)::value, decltype(update)::value,
              decltype(mode)::value>(a, step_lr);
    });
  });
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(sgdf_erd, CPU, m) {
  m.impl("fused_sgdf_", SGDF_ERD_BOX(&fused_sgdf<step_cpu>));
  m.impl("fused_sgdf_grouped_", SGDF_ERD_BOX(&fused_sgdf_grouped<step_cpu>));
}
// Sparse tensors reach the same checks, which name the argument, instead of the dispatcher's "could not run".
STABLE_TORCH_LIBRARY_IMPL(sgdf_erd, SparseCPU, m) {
  m.impl("fused_sgdf_", SGDF_ERD_BOX(&fused_sgdf<step_cpu>));
  m.impl("fused_sgdf_grouped_", SGDF_ERD_BOX(&fused_sgdf_grouped<step_cpu>));
}

}  // namespace sgdf_erd::sgdf
