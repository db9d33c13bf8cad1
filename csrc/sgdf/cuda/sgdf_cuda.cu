// CUDA implementation of sgdf_erd::fused_sgdf_: one multi-tensor launch per ~320 chunks of 64K elements.
// Step counts, lr (capturable), grad_scale and found_inf are read on the device: no host synchronisation.
#include <optional>
#include <type_traits>
#include <vector>

#include "common/cuda/multi_tensor_apply.cuh"
#include "common/random.h"
#include "common/scalar_types.h"
#include "common/stable.h"
#include "sgdf/sgdf_checks.h"
#include "sgdf/sgdf_entry_points.h"
#include "sgdf/sgdf_math.h"

namespace sgdf_erd::sgdf {
namespace {

template <typename param_t, typename state_t, bool kMaster, bool kUpdate, Preconditioner kPre>
struct SgdfFunctor {
  using acc_t = opmath_t<param_t>;
  using Ops = ModeOperands<kMaster, kUpdate, kPre>;
  static constexpr bool kSecondMoment = kPre == Preconditioner::kSecondMoment;
  static constexpr int kDepth = Ops::kDepth;
  Hyper<double> hyper;  // cast per block: double keeps the bias corrections accurate
  double lr;
  const float* lr_ptr;      // device lr when capturable, else null
  const float* grad_scale;  // null without AMP
  const float* found_inf;   // null without AMP
  bool stochastic;          // round 16-bit results stochastically (seeds in the launch's metadata)

  __device__ void operator()(const cuda::TensorListMetadata<kDepth>& meta, int tensor, int64_t chunk) const {
    if (found_inf != nullptr && *found_inf != 0.f) return;
    const Hyper<acc_t> h = cast_hyper<acc_t>(hyper);
    const acc_t lr_acc = static_cast<acc_t>(lr_ptr != nullptr ? static_cast<double>(*lr_ptr) : lr);
    const bool unscale = grad_scale != nullptr;
    const acc_t scale = unscale ? static_cast<acc_t>(*grad_scale) : acc_t(1);
    const float step = *meta.scalar[tensor];
    const StepCoeffs<acc_t> c = step_coeffs<acc_t>(hyper.beta1, hyper.beta2, step);
    unsigned write_mask = 0;
    for (int d = 0; d < kDepth; ++d) write_mask |= Ops::written(d, unscale) ? 1u << d : 0u;
    // One random stream per stored tensor; a param with a master copy takes it rounded to nearest.
    StoreRounding<kDepth> rounding;
    rounding.first_index = meta.first_index[tensor];
    auto round_stochastically = [&](int operand, uint32_t stream) {
      rounding.set_stochastic(operand, random::tensor_key(meta.seed[tensor], static_cast<uint32_t>(step), stream));
    };
    if (stochastic) {
      if (!kMaster && is_reduced_floating_point_v<param_t>) round_stochastically(Ops::kParam, random::kParamStream);
      if (is_reduced_floating_point_v<state_t>) {
        round_stochastically(Ops::kExpAvg, random::kExpAvgStream);
        round_stochastically(Ops::kExpVar, random::kExpVarStream);
        if constexpr (kSecondMoment) round_stochastically(Ops::kExpAvgSq, random::kExpAvgSqStream);
      }
    }
    auto update = [&](acc_t(&v)[kDepth]) {
      if (unscale) v[Ops::kGrad] = v[Ops::kGrad] / scale;
      acc_t* exp_avg_sq = nullptr;  // (SGDF and the variance preconditioner keep none)
      if constexpr (kSecondMoment) exp_avg_sq = &v[Ops::kExpAvgSq];
      const acc_t u = filtered_update<kPre>(v[Ops::kWeights], v[Ops::kGrad], v[Ops::kExpAvg], v[Ops::kExpVar],
                                            exp_avg_sq, lr_acc, h, c);
      if constexpr (kUpdate) {
        v[Ops::kUpdateBuffer] = u;
      } else {
        v[Ops::kWeights] = v[Ops::kWeights] - lr_acc * u;
        if constexpr (kMaster) v[Ops::kParam] = v[Ops::kMasterParam];
      }
    };
    // exp_avg_sq, where there is one, is the last operand, stored in the state's type
    with_operand_types<param_t, state_t, kMaster, kUpdate>([&](auto... types) {
      if constexpr (kSecondMoment) {
        cuda::for_each_element<acc_t, typename std::decay_t<decltype(types)>::type..., state_t>(
            meta, tensor, chunk, write_mask, rounding, update);
      } else {
        cuda::for_each_element<acc_t, typename std::decay_t<decltype(types)>::type...>(meta, tensor, chunk,
                                                                                       write_mask, rounding, update);
      }
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
    cuda::for_each_element<float, float>(meta, tensor, chunk, 1u, {}, [](float(&step)[1]) { step[0] += 1.f; });
  }
};

// One checked call (or param group): the step counts, then the update, both reading found_inf (and a tensor lr)
// on the device, without a host synchronisation.
void step_cuda(const FusedArgs& a) {
  if (a.params.empty()) return;
  auto ptr = [](const std::optional<Tensor>& t) {
    return t.has_value() ? static_cast<const float*>(t->const_data_ptr()) : nullptr;
  };
  // Blocks of one tensor read its step concurrently, so the increment is a launch of its own before the update.
  cuda::multi_tensor_apply<1>({a.steps}, {}, AdvanceStepFunctor{ptr(a.found_inf)});
  std::vector<TensorList> lists{a.params, a.grads, a.exp_avgs, a.exp_vars};
  if (a.has_master()) lists.push_back(a.master_params);
  if (a.update_mode()) lists.push_back(a.updates);
  if (a.hyper.preconditioner == Preconditioner::kSecondMoment) lists.push_back(a.exp_avg_sqs);
  dispatch_preconditioner(a.hyper.preconditioner, [&](auto mode) {
    dispatch_storage(a, [&](auto param, auto state, auto master, auto update) {
      using Functor =
          SgdfFunctor<typename std::decay_t<decltype(param)>::type, typename std::decay_t<decltype(state)>::type,
                      std::decay_t<decltype(master)>::value, std::decay_t<decltype(update)>::value,
                      std::decay_t<decltype(mode)>::value>;
      const Functor f{a.hyper, a.lr, ptr(a.lr_tensor), ptr(a.grad_scale), ptr(a.found_inf), a.stochastic()};
      cuda::multi_tensor_apply<Functor::kDepth>(lists, a.steps, f, a.rounding_seeds, a.rounding_offsets);
    });
  });
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(sgdf_erd, CUDA, m) {
  m.impl("fused_sgdf_", SGDF_ERD_BOX(&fused_sgdf<step_cuda>));
  m.impl("fused_sgdf_grouped_", SGDF_ERD_BOX(&fused_sgdf_grouped<step_cuda>));
}
// Sparse tensors reach the same checks, which name the argument, instead of the dispatcher's "could not run".
STABLE_TORCH_LIBRARY_IMPL(sgdf_erd, SparseCUDA, m) {
  m.impl("fused_sgdf_", SGDF_ERD_BOX(&fused_sgdf<step_cuda>));
  m.impl("fused_sgdf_grouped_", SGDF_ERD_BOX(&fused_sgdf_grouped<step_cuda>));
}

}  // namespace sgdf_erd::sgdf
