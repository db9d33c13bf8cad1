// The order of a fused SGDF launch's operands, shared by its checks and its CPU and CUDA kernels.
#pragma once

namespace sgdf_erd::sgdf {

// The operands of a launch, in order: param, grad, exp_avg, exp_var, then the master copy and the update buffer
// when the call has them. The filter updates the "weights": the master copy when there is one, else the param.
template <bool kMaster, bool kUpdate>
struct Operands {
  static constexpr int kParam = 0, kGrad = 1, kExpAvg = 2, kExpVar = 3;
  static constexpr int kMasterParam = 4;  // valid when kMaster
  static constexpr int kUpdateBuffer = 4 + kMaster;  // valid when kUpdate
  static constexpr int kWeights = kMaster ? kMasterParam : kParam;
  static constexpr int kDepth = 4 + kMaster + kUpdate;

  // Which operands are written back: the state always, the gradient when it is unscaled in place, the update
  // buffer in update mode, else the weights (and the param, from its master copy).
  static constexpr bool written(int operand, bool unscale_grads) {
    if (operand == kExpAvg || operand == kExpVar) return true;
    if (operand == kGrad) return unscale_grads;
    if (kUpdate && operand == kUpdateBuffer) return true;
    return !kUpdate && (operand == kParam || operand == kWeights);
  }
};

}  // namespace sgdf_erd::sgdf
