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

  // Operands gathered once, from what the checks read of each tensor: the parallel region then makes no calls into
  // torch.
  const size_t n = a.params.size();
  std::array<const TensorMeta*, Depth> metas{};
  metas[Ops::kParam] = a.lists[0].metas.data();
  metas[Ops::kGrad] = a.lists[1].metas.data();
  metas[Ops::kExpAvg] = a.lists[2].metas.data();
  metas[Ops::kExpVar] = a.lists[3].metas.data();
  if constexpr (kMaster) metas[Ops::kMasterParam] = a.lists[a.master_list].metas.data();
  if constexpr (kUpdate) metas[Ops::kUpdateBuffer] = a.lists[a.updates_list].metas.data();
  if constexpr (kPre == Preconditioner::kSecondMoment) {
    metas[Ops::kExpAvgSq] = a.lists[a.exp_avg_sqs_list].metas.data();
  }
  std::array<ScalarType, Depth> dtypes{};
  for (int d = 0; d < Depth; ++d) dtypes[d] = d == Ops::kExpAvg || d == Ops::kExpVar ? a.state_dtype : a.param_dtype;
  if constexpr (kMaster) dtypes[Ops::kMasterParam] = ScalarType::Float;
  if constexpr (kPre == Preconditioner::kSecondMoment) dtypes[Ops::kExpAvgSq] = a.state_dtype;
  // Stochastic rounding of 16-bit storage, one random stream per stored tensor; a param with a master copy takes it
  // rounded to nearest (the master keeps what rounding drops).
  std::array<bool, Depth> rounded{};
  std::array<uint32_t, Depth> streams{};
  auto round_stochastically = [&](int operand, uint32_t stream) {
    rounded[operand] = true;
    streams[operand] = stream;
  };
  if (a.stochastic()) {
    if (!kMaster && is_16_bit(a.param_dtype)) round_stochastically(Ops::kParam, random::kParamStream);
    if (is_16_bit(a.state_dtype)) {
      round_stochastically(Ops::kExpAvg, random::kExpAvgStream);
      round_stochastically(Ops::kExpVar, random::kExpVarStream);
      if constexpr (kPre == Preconditioner::kSecondMoment) {
        round_stochastically(Ops::kExpAvgSq, random::kExpAvgSqStream);
      }
    }
  }
  std::vector<std::array<cpu::Operand, Depth>> base(n);
  std::vector<int64_t> numels(n), first_indices(n);
  std::vector<StepCoeffs<acc_t>> coeffs(n);
  float coeffs_step = -1.f;  // the step of the last coefficients computed (steps are >= 0): params mostly share one
  StepCoeffs<acc_t> step_coeffs_cache{};
  for (size_t i = 0; i < n; ++i) {
    numels[i] = metas[Ops::kParam][i].numel;
    first_indices[i] = a.first_index(i);
    float& step = *reinterpret_cast<float*>(a.step_metas[i].address);
    step += 1.f;
    if (step != coeffs_step) {
      step_coeffs_cache = step_coeffs<acc_t>(a.hyper.beta1, a.hyper.beta2, step);
      coeffs_step = step;
    }
    coeffs[i] = step_coeffs_cache;
    for (int d = 0; d < Depth; ++d) {
      const uint32_t key = rounded[d] ? random::tensor_key(static_cast<uint32_t>(a.rounding_seeds[i]),
                                                           static_cast<uint32_t>(step), streams[d])
                                      : 0u;
      base[i][d] = cpu::Operand{reinterpret_cast<void*>(metas[d][i].address), dtypes[d],
                                Ops::written(d, plan.unscale), {rounded[d], key}};
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
