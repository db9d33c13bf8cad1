// Argument checks for the fused SGDF op, shared by its CPU and CUDA implementations. They run before anything is
// written, so a call that raises leaves every input as it was.
#pragma once

#include <cmath>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/scalar_types.h"
#include "common/stable.h"
#include "common/tensor_lists.h"
#include "sgdf/sgdf_math.h"
#include "sgdf/sgdf_operands.h"

namespace sgdf_erd::sgdf {

// The largest lr, eps and weight decay: they enter float32 arithmetic (float32's largest value).
inline constexpr double kFloat32Max = 3.4028234663852886e38;

// The optimizer's own rules (SGDF's documented ranges), so the op refuses what SGDF refuses. Each condition is
// written so that NaN fails it; infinities, and values beyond float32's range that the arithmetic would turn into
// them, are refused too (an infinite lr or weight decay turns every weight into inf or NaN).
inline void check_hyperparameters(double lr, const Hyper<double>& h, const char* op) {
  SGDF_ERD_CHECK(lr >= 0.0 && lr <= kFloat32Max, op, ": invalid lr=", Exact{lr},
                 "; the learning rate must be >= 0 and <= 3.4028234663852886e+38 (float32's largest value)");
  // (a beta within 3e-8 of 1 is 1 in float32: no update, or a step of ~1e6 where 1 - beta2^t divides)
  SGDF_ERD_CHECK(h.beta1 >= 0.0 && static_cast<float>(h.beta1) < 1.0f, op, ": invalid beta1=", Exact{h.beta1},
                 "; it must be in [0, 1) and stay below 1 in float32 (at most 0.99999994)");
  SGDF_ERD_CHECK(h.beta2 >= 0.0 && static_cast<float>(h.beta2) < 1.0f, op, ": invalid beta2=", Exact{h.beta2},
                 "; it must be in [0, 1) and stay below 1 in float32 (at most 0.99999994)");
  SGDF_ERD_CHECK(h.eps >= 0.0 && h.eps <= kFloat32Max, op, ": invalid eps=", Exact{h.eps},
                 "; it must be >= 0 and <= 3.4028234663852886e+38 (float32's largest value)");
  SGDF_ERD_CHECK(std::isfinite(h.gamma) && h.gamma > 0.0, op, ": invalid gamma=", Exact{h.gamma},
                 "; it must be finite and > 0 (0.5 is the release default)");
  SGDF_ERD_CHECK(h.weight_decay >= 0.0 && h.weight_decay <= kFloat32Max, op, ": invalid weight_decay=",
                 Exact{h.weight_decay}, "; it must be >= 0 and <= 3.4028234663852886e+38 (float32's largest value)");
  // (AdaSGDF refuses it too: with a preconditioner the kernels returned sign(u / d) = sign(u), the preconditioner
  // doing nothing but update its state)
  SGDF_ERD_CHECK(!h.sign || h.preconditioner == Preconditioner::kNone, op,
                 ": sign=True is SGDF's option, not defined with a preconditioner; pass sign=False");
}

// The value of a one-element float32 CPU tensor (checked by the caller): a plain read, no synchronisation.
inline float cpu_scalar(const Tensor& t) { return *static_cast<const float*>(t.const_data_ptr()); }

// The arguments of one fused_sgdf_ call, or of one param group of a fused_sgdf_grouped_ call, checked
// (check_fused_args): what the CPU and CUDA kernels share. The lists are views of the call's (TensorHandles).
struct FusedArgs {
  TensorList params;
  TensorList grads;
  TensorList exp_avgs;
  TensorList exp_vars;
  TensorList updates;
  TensorList steps;
  TensorList master_params;
  const std::vector<int64_t>& rounding_seeds;
  const std::vector<int64_t>& rounding_offsets;
  double lr;
  const std::optional<Tensor>& lr_tensor;
  Hyper<double> hyper;
  const std::optional<Tensor>& grad_scale;
  const std::optional<Tensor>& found_inf;
  TensorList exp_avg_sqs = {};  // AdaSGDF's second moments (preconditioner kSecondMoment)
  ScalarType param_dtype = ScalarType::Float;
  ScalarType state_dtype = ScalarType::Float;
  // What check_fused_args read of the tensors: the lists' metadata, the step counts' and the single tensors'
  // (lr_tensor, grad_scale, found_inf, where given), for the check that no two operands share memory.
  std::vector<NamedList> lists = {};
  TensorMetas step_metas = {};
  int exp_avg_sqs_list = -1, updates_list = -1, master_list = -1;  // their place in `lists`, where the call has them
  std::vector<TensorMeta> scalars = {};
  std::vector<const char*> scalar_names = {};

  // The call's operands for check_no_shared_memory; `group`: the param group's index in a grouped call, or -1.
  // `grads_written`: false for a group only checked (check_only), whose gradients a step then only reads.
  void add_memory_operands(MemoryOperands& out, int64_t group = -1, bool grads_written = true) const {
    for (const NamedList& l : lists) out.add_list(l.metas, l.name, group, grads_written || &l != &lists[1]);
    out.add_list(step_metas, "steps", group);
    for (size_t s = 0; s < scalars.size(); ++s) out.add_single(scalars[s], scalar_names[s], group);
  }

  bool has_master() const { return !master_params.empty(); }
  bool stochastic() const { return !rounding_seeds.empty(); }
  // The index of param i's first element in the numbering of its random numbers.
  int64_t first_index(size_t i) const { return rounding_offsets.empty() ? 0 : rounding_offsets[i]; }
  bool update_mode() const { return !updates.empty(); }  // write the filtered update, leave the weights
};

inline bool is_16_bit(ScalarType t) { return t == ScalarType::BFloat16 || t == ScalarType::Half; }

// Every check of one call's (or one param group's) arguments but the shared-memory one, which needs all operands of
// the call (FusedArgs::add_memory_operands). `op` starts every message.
inline void check_fused_args(FusedArgs& a, const char* op) {
  check_hyperparameters(a.lr, a.hyper, op);
  std::vector<NamedList>& lists = a.lists;
  lists = {{a.params, "params"},
           {a.grads, "grads"},
           {a.exp_avgs, "exp_avgs", false},
           {a.exp_vars, "exp_vars", false}};
  const bool second_moment = a.hyper.preconditioner == Preconditioner::kSecondMoment;
  SGDF_ERD_CHECK(second_moment || a.exp_avg_sqs.empty(), op, ": 'exp_avg_sqs' has ", a.exp_avg_sqs.size(),
                 " tensors but only the 'second_moment' preconditioner keeps them; pass none");
  auto add = [&](int& place, TensorList tensors, const char* name, bool dtype_of_reference) {
    place = static_cast<int>(lists.size());
    lists.push_back({tensors, name, dtype_of_reference});
  };
  if (second_moment) add(a.exp_avg_sqs_list, a.exp_avg_sqs, "exp_avg_sqs", false);
  if (a.update_mode()) add(a.updates_list, a.updates, "updates", true);
  if (a.has_master()) add(a.master_list, a.master_params, "master_params", false);
  check_tensor_lists(lists, op);
  SGDF_ERD_CHECK(a.steps.size() == a.params.size(), op, ": 'steps' has ", a.steps.size(), " tensors for ",
                 a.params.size(), " params; pass one step tensor per parameter");
  SGDF_ERD_CHECK(a.rounding_seeds.empty() || a.rounding_seeds.size() == a.params.size(), op,
                 ": 'rounding_seeds' has ", a.rounding_seeds.size(), " seeds for ", a.params.size(),
                 " params; pass one seed per parameter, or none to round to nearest");
  for (size_t i = 0; i < a.rounding_seeds.size(); ++i) {
    SGDF_ERD_CHECK_VALUE(a.rounding_seeds[i] >= 0 && a.rounding_seeds[i] <= 0xFFFFFFFFll, op,
                         ": 'rounding_seeds[", i, "]'=", a.rounding_seeds[i], " is not in [0, 2**32)");
  }
  SGDF_ERD_CHECK(a.rounding_offsets.empty() || a.rounding_offsets.size() == a.rounding_seeds.size(), op,
                 ": 'rounding_offsets' has ", a.rounding_offsets.size(), " offsets for ", a.rounding_seeds.size(),
                 " rounding seeds; pass one offset per seeded parameter, or none (every tensor numbered from 0)");
  for (size_t i = 0; i < a.rounding_offsets.size(); ++i) {
    SGDF_ERD_CHECK_VALUE(a.rounding_offsets[i] >= 0 && a.rounding_offsets[i] <= (int64_t{1} << 62), op,
                         ": 'rounding_offsets[", i, "]'=", a.rounding_offsets[i], " is not in [0, 2**62]");
  }
  if (a.params.empty()) return;
  const TensorMetas& params = lists[0].metas;
  const TensorMetas& exp_avgs = lists[2].metas;
  const TensorMetas& exp_vars = lists[3].metas;
  const TensorMetas* masters = a.has_master() ? &lists[a.master_list].metas : nullptr;
  const ScalarType dtype = a.params[0].scalar_type();
  const ScalarType state = a.exp_avgs[0].scalar_type();
  a.param_dtype = dtype;
  a.state_dtype = state;
  SGDF_ERD_CHECK(dtype == ScalarType::Float || dtype == ScalarType::Double || is_16_bit(dtype), op, ": params are ",
                 dtype, "; the fused kernels take float32, float64, float16 and bfloat16 "
                 "(complex parameters as torch.view_as_real views)");
  SGDF_ERD_CHECK(dtype == ScalarType::Double ? state == ScalarType::Double
                                             : state == ScalarType::Float || is_16_bit(state),
                 op, ": exp_avgs are ", state, " for ", dtype, " params; the fused kernels keep float32, bfloat16 "
                 "or float16 state for float32/bfloat16/float16 params and float64 state for float64 params "
                 "(use foreach=True for other combinations)");
  SGDF_ERD_CHECK(!a.has_master() || is_16_bit(dtype), op, ": 'master_params' are float32 copies of bfloat16 / "
                 "float16 params, but the params are ", dtype, "; pass no master_params");
  const int32_t float32 = aoti_torch_dtype_float32();
  const TensorMeta& reference = params[0];
  const auto device = a.params[0].device();
  auto is_one_float_on_device = [&](const TensorMeta& m) {
    return m.strided() && m.numel == 1 && m.dtype == float32 && m.same_device(reference);
  };
  a.step_metas = read_metas(a.steps);
  const TensorMetas& steps = a.step_metas;
  for (size_t i = 0; i < params.size(); ++i) {
    SGDF_ERD_CHECK(params[i].same_device(reference) && params[i].dtype == reference.dtype, op,
                   ": all params of one call must share device and dtype; got ", DeviceName(a.params[i].device()),
                   "/", a.params[i].scalar_type(), " and ", DeviceName(device), "/", dtype,
                   " (the Python optimizer groups them)");
    SGDF_ERD_CHECK(exp_avgs[i].dtype == exp_avgs[0].dtype && exp_vars[i].dtype == exp_avgs[0].dtype, op,
                   ": 'exp_avgs[", i, "]' and 'exp_vars[", i, "]' are ", a.exp_avgs[i].scalar_type(), " and ",
                   a.exp_vars[i].scalar_type(), " but 'exp_avgs[0]' is ", state,
                   "; all state of one call must share a dtype (the Python optimizer groups them)");
    SGDF_ERD_CHECK(!second_moment || lists[a.exp_avg_sqs_list].metas[i].dtype == exp_avgs[0].dtype, op,
                   ": 'exp_avg_sqs[", i, "]' is ", a.exp_avg_sqs[i].scalar_type(), " but 'exp_avgs[0]' is ", state,
                   "; all state of one call must share a dtype (the Python optimizer groups them)");
    SGDF_ERD_CHECK(masters == nullptr || (*masters)[i].dtype == float32, op, ": 'master_params[", i, "]' is ",
                   a.master_params[i].scalar_type(), "; master copies are float32");
    SGDF_ERD_CHECK(steps[i].has_memory(), op, ": 'steps[", i, "]'", kNoMemory);
    SGDF_ERD_CHECK(is_one_float_on_device(steps[i]), op, ": 'steps[", i,
                   "]' must be a one-element float32 tensor on ", DeviceName(device), ", got ", a.steps[i].numel(),
                   " elements of ", a.steps[i].scalar_type(), " on ", DeviceName(a.steps[i].device()));
  }
  std::vector<TensorMeta>& scalars = a.scalars;  // lr_tensor, grad_scale, found_inf where given
  std::vector<const char*>& scalar_names = a.scalar_names;
  scalars.reserve(3);  // no reallocation: operands point into it
  for (const auto& [t, name] : {std::pair{&a.lr_tensor, "lr_tensor"}, std::pair{&a.grad_scale, "grad_scale"},
                                std::pair{&a.found_inf, "found_inf"}}) {
    if (!t->has_value()) continue;
    scalars.emplace_back(t->value().get());
    scalar_names.push_back(name);
    SGDF_ERD_CHECK(scalars.back().has_memory(), op, ": '", name, "'", kNoMemory);
    SGDF_ERD_CHECK(is_one_float_on_device(scalars.back()), op, ": '", name,
                   "' must be a one-element float32 tensor on ", DeviceName(device), ", got ", (*t)->numel(),
                   " elements of ", (*t)->scalar_type(), " on ", DeviceName((*t)->device()));
  }
  // A step count edited by hand to NaN, inf or below 0 would turn every weight into NaN; read for free on the CPU
  // (on a GPU it would need a host synchronisation).
  // (every step is on the params' device, checked above)
  const bool steps_on_cpu = reference.device_type == aoti_torch_device_type_cpu();
  for (size_t i = 0; steps_on_cpu && i < a.steps.size(); ++i) {
    const float value = *reinterpret_cast<const float*>(steps[i].address);
    SGDF_ERD_CHECK_VALUE(std::isfinite(value) && value >= 0.f, op, ": 'steps[", i, "]' holds ", value,
                         "; a step count is finite and >= 0 (the state was edited by hand: restore it from the "
                         "optimizer's state_dict)");
  }
  // A CPU lr tensor or loss scale is read for free; reading a CUDA one would need a host synchronisation, so there
  // its value is the caller's to check.
  if (a.lr_tensor.has_value() && a.lr_tensor->is_cpu()) {
    const float value = cpu_scalar(*a.lr_tensor);
    SGDF_ERD_CHECK(std::isfinite(value) && value >= 0.f, op, ": invalid lr_tensor=", value,
                   "; the learning rate must be finite, >= 0 and <= 3.4028234663852886e+38 (float32's largest value)");
  }
  if (a.grad_scale.has_value() && a.grad_scale->is_cpu()) {  // (0 or NaN gives NaN weights, < 0 flips the step)
    const float value = cpu_scalar(*a.grad_scale);
    SGDF_ERD_CHECK(std::isfinite(value) && value > 0.f, op, ": invalid grad_scale=", value,
                   "; a loss scale is finite and > 0");
  }
}

// The schema's arguments, checked before anything is written (both entry points start here).
inline FusedArgs make_fused_args(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_vars,
                                 TensorList updates, TensorList steps,
                                 double lr, const std::optional<Tensor>& lr_tensor, double beta1, double beta2,
                                 double eps, double gamma, double weight_decay, bool decoupled_weight_decay,
                                 bool sign, bool maximize, const std::optional<Tensor>& grad_scale,
                                 const std::optional<Tensor>& found_inf, TensorList master_params,
                                 const std::vector<int64_t>& rounding_seeds,
                                 const std::vector<int64_t>& rounding_offsets,
                                 TensorList exp_avg_sqs = {},
                                 Preconditioner preconditioner = Preconditioner::kNone) {
  FusedArgs args{params,    grads,
                 exp_avgs,  exp_vars,
                 updates,   steps,
                 master_params, rounding_seeds, rounding_offsets,
                 lr,        lr_tensor,
                 {beta1, beta2, eps, gamma, weight_decay, decoupled_weight_decay, sign, maximize, preconditioner},
                 grad_scale, found_inf, exp_avg_sqs};
  constexpr const char* op = "sgdf_erd::fused_sgdf_";
  check_fused_args(args, op);
  MemoryOperands operands;
  args.add_memory_operands(operands);
  check_no_shared_memory(operands, op);
  return args;
}

// The storage the kernels keep (make_fused_args refuses the rest): float32 / bfloat16 / float16 state for 32- and
// 16-bit params, float64 state for float64 params, master copies for 16-bit params only.
template <typename param_t, typename state_t, bool kMaster>
inline constexpr bool kStorageSupported = (std::is_same_v<param_t, double> == std::is_same_v<state_t, double>) &&
                                          (!kMaster || is_reduced_floating_point_v<param_t>);

// Calls fn(TypeTag<param_t>, TypeTag<state_t>, bool_constant<kMaster>, bool_constant<kUpdate>) for the call's
// dtypes and operands: one instantiation of a kernel per supported combination.
template <typename Fn>
void dispatch_storage(const FusedArgs& a, Fn&& fn) {
  auto with_flags = [&](auto master, auto update) {
    dispatch_floating_types(a.param_dtype, "fused_sgdf_", [&](auto param_tag) {
      using param_t = typename std::decay_t<decltype(param_tag)>::type;
      dispatch_floating_types(a.state_dtype, "fused_sgdf_", [&](auto state_tag) {
        using state_t = typename std::decay_t<decltype(state_tag)>::type;
        if constexpr (kStorageSupported<param_t, state_t, std::decay_t<decltype(master)>::value>) {
          fn(param_tag, state_tag, master, update);
        }
      });
    });
  };
  using True = std::true_type;
  using False = std::false_type;
  if (a.has_master()) {
    a.update_mode() ? with_flags(True{}, True{}) : with_flags(True{}, False{});
  } else {
    a.update_mode() ? with_flags(False{}, True{}) : with_flags(False{}, False{});
  }
}

// Calls fn(TypeTag<T>...) with the storage type of each operand, in Operands' order: param, grad, exp_avg, exp_var,
// then the master copy (float32) and the update buffer (the param's type) when the launch has them.
template <typename param_t, typename state_t, bool kMaster, bool kUpdate, typename Fn>
C10_HOST_DEVICE decltype(auto) with_operand_types(Fn&& fn) {
  using P = TypeTag<param_t>;
  using S = TypeTag<state_t>;
  if constexpr (kMaster && kUpdate) {
    return fn(P{}, P{}, S{}, S{}, TypeTag<float>{}, P{});
  } else if constexpr (kMaster) {
    return fn(P{}, P{}, S{}, S{}, TypeTag<float>{});
  } else if constexpr (kUpdate) {
    return fn(P{}, P{}, S{}, S{}, P{});
  } else {
    return fn(P{}, P{}, S{}, S{});
  }
}

}  // namespace sgdf_erd::sgdf
