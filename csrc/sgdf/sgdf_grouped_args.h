// The arguments of sgdf_erd::fused_sgdf_grouped_ (one SGDF step over several param groups, each with its own
// hyperparameters and storage options) split into one FusedArgs per group. Every group is checked as a fused_sgdf_
// call would be, and the operands of all groups together for shared memory, before anything is written: a call
// that raises leaves every group as it was.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/stable.h"
#include "common/tensor_lists.h"
#include "sgdf/sgdf_checks.h"

namespace sgdf_erd::sgdf {

// What a param group's FusedArgs refers to that is not a slice of the call's arguments.
struct GroupStorage {
  std::vector<int64_t> rounding_seeds;
  std::string op;  // what its messages start with
};

struct GroupedArgs {
  std::vector<GroupStorage> storage;  // reserved before the FusedArgs refer to its elements: never reallocated
  std::vector<FusedArgs> groups;
  std::vector<bool> check_only_groups;  // empty: none
  bool check_only(size_t g) const { return !check_only_groups.empty() && check_only_groups[g]; }
};

inline const std::vector<int64_t> kNoIndices{};

// The per-group arguments of the schema, for make_grouped_args.
struct GroupOptions {
  const std::vector<int64_t>& group_sizes;
  const std::vector<double>& lr;
  const std::vector<std::optional<Tensor>>& lr_tensor;
  const std::vector<double>& beta1;
  const std::vector<double>& beta2;
  const std::vector<double>& eps;
  const std::vector<double>& gamma;
  const std::vector<double>& weight_decay;
  const std::vector<bool>& decoupled_weight_decay;
  const std::vector<bool>& sign;
  const std::vector<bool>& maximize;
  const std::vector<bool>& master_weights;
  const std::vector<bool>& stochastic_rounding;
  const std::vector<bool>& check_only;  // empty, or per group: checked, not stepped (the caller steps it)
};

inline GroupedArgs make_grouped_args(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_vars,
                                     TensorList steps, TensorList master_params,
                                     const std::vector<int64_t>& rounding_seeds, const GroupOptions& o,
                                     const std::optional<Tensor>& grad_scale,
                                     const std::optional<Tensor>& found_inf, TensorList exp_avg_sqs,
                                     Preconditioner preconditioner) {
  constexpr const char* op = "sgdf_erd::fused_sgdf_grouped_";
  const size_t num_groups = o.group_sizes.size();
  auto check_per_group = [&](size_t size, const char* name) {
    SGDF_ERD_CHECK(size == num_groups, op, ": '", name, "' has ", size, " values for ", num_groups,
                   " param groups (the length of 'group_sizes'); pass one per group");
  };
  check_per_group(o.lr.size(), "lr");
  check_per_group(o.beta1.size(), "beta1");
  check_per_group(o.beta2.size(), "beta2");
  check_per_group(o.eps.size(), "eps");
  check_per_group(o.gamma.size(), "gamma");
  check_per_group(o.weight_decay.size(), "weight_decay");
  check_per_group(o.decoupled_weight_decay.size(), "decoupled_weight_decay");
  check_per_group(o.sign.size(), "sign");
  check_per_group(o.maximize.size(), "maximize");
  check_per_group(o.master_weights.size(), "master_weights");
  check_per_group(o.stochastic_rounding.size(), "stochastic_rounding");
  SGDF_ERD_CHECK(o.check_only.empty() || o.check_only.size() == num_groups, op, ": 'check_only' has ",
                 o.check_only.size(), " values for ", num_groups,
                 " param groups (the length of 'group_sizes'); pass one per group, or none");
  SGDF_ERD_CHECK(o.lr_tensor.size() == num_groups, op, ": 'lr_tensor' has ", o.lr_tensor.size(), " entries for ",
                 num_groups, " param groups; pass one per group: a tensor replacing the group's 'lr', or None");
  size_t total = 0, with_master = 0, with_seeds = 0;
  for (size_t g = 0; g < num_groups; ++g) {
    SGDF_ERD_CHECK(o.group_sizes[g] >= 0 && static_cast<size_t>(o.group_sizes[g]) <= params.size() - total, op,
                   ": 'group_sizes[", g, "]'=", o.group_sizes[g], " is negative or more than the ",
                   params.size() - total, " params left after the groups before it; each is the number of params of "
                   "a group, and the groups' params follow each other in 'params'");
    const auto size = static_cast<size_t>(o.group_sizes[g]);
    total += size;
    with_master += o.master_weights[g] ? size : 0;
    with_seeds += o.stochastic_rounding[g] ? size : 0;
  }
  SGDF_ERD_CHECK(total == params.size(), op, ": 'group_sizes' add up to ", total, " but 'params' has ",
                 params.size(), " tensors; the groups' params follow each other in 'params'");
  for (const auto& [list, name] : {std::pair{grads, "grads"}, std::pair{exp_avgs, "exp_avgs"},
                                   std::pair{exp_vars, "exp_vars"}, std::pair{steps, "steps"}}) {
    SGDF_ERD_CHECK(list.size() == total, op, ": '", name, "' has ", list.size(), " tensors but 'params' has ",
                   total, "; pass one entry per parameter");
  }
  const bool second_moment = preconditioner == Preconditioner::kSecondMoment;
  SGDF_ERD_CHECK(exp_avg_sqs.size() == (second_moment ? total : 0), op, ": 'exp_avg_sqs' has ", exp_avg_sqs.size(),
                 " tensors; pass one per parameter with the 'second_moment' preconditioner, else none");
  SGDF_ERD_CHECK(master_params.size() == with_master, op, ": 'master_params' has ", master_params.size(),
                 " tensors but the groups with master_weights have ", with_master,
                 " params; pass one master copy per param of those groups");
  SGDF_ERD_CHECK(rounding_seeds.size() == with_seeds, op, ": 'rounding_seeds' has ", rounding_seeds.size(),
                 " seeds but the groups with stochastic_rounding have ", with_seeds,
                 " params; pass one seed per param of those groups");

  GroupedArgs args;
  args.check_only_groups = o.check_only;
  args.storage.reserve(num_groups);
  args.groups.reserve(num_groups);
  size_t first = 0, first_master = 0, first_seed = 0;
  for (size_t g = 0; g < num_groups; ++g) {
    const auto size = static_cast<size_t>(o.group_sizes[g]);
    GroupStorage& l = args.storage.emplace_back();
    TensorList group_master_params;
    if (o.master_weights[g]) {
      group_master_params = master_params.slice(first_master, size);
      first_master += size;
    }
    if (o.stochastic_rounding[g]) {
      l.rounding_seeds.assign(rounding_seeds.begin() + first_seed, rounding_seeds.begin() + first_seed + size);
      first_seed += size;
    }
    l.op = str_cat(op, " (param group ", g, ")");
    FusedArgs& a = args.groups.emplace_back(FusedArgs{
        params.slice(first, size), grads.slice(first, size), exp_avgs.slice(first, size),
        exp_vars.slice(first, size), TensorList(), steps.slice(first, size), group_master_params, l.rounding_seeds,
        kNoIndices, o.lr[g], o.lr_tensor[g],
        Hyper<double>{o.beta1[g], o.beta2[g], o.eps[g], o.gamma[g], o.weight_decay[g], o.decoupled_weight_decay[g],
                      o.sign[g], o.maximize[g], preconditioner},
        grad_scale, found_inf, second_moment ? exp_avg_sqs.slice(first, size) : TensorList()});
    first += size;
    check_fused_args(a, l.op.c_str());
  }
  // One device for the whole call (the dispatcher chose its kernel by the first tensor), and no memory shared
  // between any two operands of any groups.
  const TensorMeta* device = nullptr;
  size_t device_group = 0;
  MemoryOperands operands;
  for (size_t g = 0; g < num_groups; ++g) {
    const FusedArgs& a = args.groups[g];
    if (a.params.empty()) continue;
    const TensorMeta& m = a.lists[0].metas[0];
    if (device == nullptr) {
      device = &m;
      device_group = g;
    }
    SGDF_ERD_CHECK(m.same_device(*device), op, ": the params of param group ", g, " are on ",
                   DeviceName(a.params[0].device()), " but those of param group ", device_group, " are on ",
                   DeviceName(args.groups[device_group].params[0].device()), "; make one call per device");
    a.add_memory_operands(operands, static_cast<int64_t>(g), !args.check_only(g));
  }
  check_no_shared_memory(operands, op);
  return args;
}

}  // namespace sgdf_erd::sgdf
