// The order of a fused SGDF launch's operands, shared by its checks and its CPU and CUDA kernels.
#pragma once

#include <type_traits>

#include "sgdf/sgdf_math.h"

namespace sgdf_erd::sgdf {

// The operands of a launch, in order: param, grad, exp_avg, exp_var, then the master copy, the update buffer and
// exp_avg_sq (AdaSGDF's second moment) when the call has them. The filter updates the "weights": the master copy
// when there is one, else the param.
template <bool kMaster, bool kUpdate, bool kSecondMoment = false>
struct Operands {
  static constexpr int kParam = 0, kGrad = 1, kExpAvg = 2, kExpVar = 3;
  static constexpr int kMasterParam = 4;  // valid when kMaster
  static constexpr int kUpdateBuffer = 4 + kMaster;  // valid when kUpdate
  static constexpr int kExpAvgSq = 4 + kMaster + kUpdate;  // valid when kSecondMoment
  static constexpr int kWeights = kMaster ? kMasterParam : kParam;
  static constexpr int kDepth = 4 + kMaster + kUpdate + kSecondMoment;

  // Which operands are written back: the state always, the gradient when it is unscaled in place, the update
  // buffer in update mode, else the weights (and the param, from its master copy).
  static constexpr bool written(int operand, bool unscale_grads) {
    if (operand == kExpAvg || operand == kExpVar) return true;
    if (kSecondMoment && operand == kExpAvgSq) return true;
    if (operand == kGrad) return unscale_grads;
    if (kUpdate && operand == kUpdateBuffer) return true;
    return !kUpdate && (operand == kParam || operand == kWeights);
  }
};

// The operands of a launch with preconditioner kPre (exp_avg_sq only with the second moment).
template <bool kMaster, bool kUpdate, Preconditioner kPre>
using ModeOperands = Operands<kMaster, kUpdate, kPre == Preconditioner::kSecondMoment>;

// Calls fn(std::integral_constant<Preconditioner, p>{}): one kernel instantiation per preconditioner, so that a
// mode's loop carries no branch on it.
template <typename Fn>
void dispatch_preconditioner(Preconditioner p, Fn&& fn) {
  using P = Preconditioner;
  switch (p) {
    case P::kSecondMoment:
      return fn(std::integral_constant<P, P::kSecondMoment>{});
    case P::kVariance:
      return fn(std::integral_constant<P, P::kVariance>{});
    default:
      return fn(std::integral_constant<P, P::kNone>{});
  }
}

}  // namespace sgdf_erd::sgdf
