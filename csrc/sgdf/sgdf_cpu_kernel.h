// The SGDF CPU kernel over one element range of one tensor, vectorised with the Vec of the including unit's
// instruction set (its inline namespace keeps each build's functions apart). 16-bit operands (params, state) are
// converted to float by common/cpu/multi_tensor_apply.h.
#pragma once

#include <array>
#include <cstdint>
#include <type_traits>

#include "common/cpu/multi_tensor_apply.h"
#include "sgdf/sgdf_cpu_plan.h"
#include "sgdf/sgdf_math.h"

namespace sgdf_erd::sgdf {
inline namespace SGDF_ERD_CPU_CAPABILITY {

template <typename acc_t, bool kMaster, bool kUpdate, Preconditioner kPre>
void step_range(const StepPlan<acc_t, ModeOperands<kMaster, kUpdate, kPre>::kDepth>& plan, int64_t tensor,
                int64_t begin, int64_t end) {
  using Ops = ModeOperands<kMaster, kUpdate, kPre>;
  constexpr int Depth = Ops::kDepth;
  std::array<cpu::Operand, Depth> range;
  for (int d = 0; d < Depth; ++d) range[d] = plan.operands[tensor][d].advanced(begin);
  // By-value copies: the loop stores through float pointers, which the compiler must otherwise assume may alias
  // hyperparameters reached through references, reloading them for every vector.
  const StepCoeffs<acc_t> c = plan.coeffs[tensor];
  const Hyper<acc_t> hyper = plan.hyper;
  const acc_t lr = plan.lr;
  const bool unscale = plan.unscale;
  const acc_t scale = plan.scale;
  cpu::apply_elementwise<acc_t, Depth>(range, plan.first_indices[tensor] + begin, end - begin,
                                       [=](auto& v) SGDF_ERD_INLINE_LAMBDA {
    using V = std::decay_t<decltype(v[0])>;
    if (unscale) v[Ops::kGrad] = v[Ops::kGrad] / V(scale);
    V* exp_avg_sq = nullptr;  // (SGDF and the variance preconditioner keep none)
    if constexpr (kPre == Preconditioner::kSecondMoment) exp_avg_sq = &v[Ops::kExpAvgSq];
    const V u = filtered_update<kPre>(v[Ops::kWeights], v[Ops::kGrad], v[Ops::kExpAvg], v[Ops::kExpVar], exp_avg_sq,
                                      lr, hyper, c);
    if constexpr (kUpdate) {
      v[Ops::kUpdateBuffer] = u;
    } else {
      v[Ops::kWeights] = v[Ops::kWeights] - V(lr) * u;
      if constexpr (kMaster) v[Ops::kParam] = v[Ops::kMasterParam];
    }
  });
}

// This build's kernels, one per slot of StepRangeKernels.
template <Preconditioner kPre>
void fill_mode_kernels(StepRangeKernels& k) {
  k.get<float, false, false, kPre>() = &step_range<float, false, false, kPre>;
  k.get<float, false, true, kPre>() = &step_range<float, false, true, kPre>;
  k.get<float, true, false, kPre>() = &step_range<float, true, false, kPre>;
  k.get<float, true, true, kPre>() = &step_range<float, true, true, kPre>;
  k.get<double, false, false, kPre>() = &step_range<double, false, false, kPre>;
  k.get<double, false, true, kPre>() = &step_range<double, false, true, kPre>;
}

inline StepRangeKernels step_range_kernels() {
  StepRangeKernels k;
  fill_mode_kernels<Preconditioner::kNone>(k);
  fill_mode_kernels<Preconditioner::kSecondMoment>(k);
  fill_mode_kernels<Preconditioner::kVariance>(k);
  return k;
}

}  // namespace SGDF_ERD_CPU_CAPABILITY
}  // namespace sgdf_erd::sgdf
