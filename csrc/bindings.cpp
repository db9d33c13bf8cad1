// The one place where sgdf_erd's operators are declared, through the LibTorch stable ABI. Each domain folder
// registers its CPU and CUDA kernels for these schemas with STABLE_TORCH_LIBRARY_IMPL; Python reaches them as
// torch.ops.sgdf_erd.<name>. A CPU-only build answers CUDA tensors from Python (sgdf_erd/_native.py registers a
// CUDA kernel that names the fix): a C++ boxed stub that throws would leak its argument handles.
#include <Python.h>

#include <string>

#include "common/cpu/capability.h"
#include "common/stable.h"

namespace {

// Schemas of every operator.
constexpr const char* kOperatorSchemas[] = {
    // SGDF: one fused step over a group of same-device, same-dtype tensors (csrc/sgdf); advances each step count
    // by one, except when found_inf is nonzero (then nothing changes). With `updates` non-empty the filtered update
    // is written there and the weights are left as they are (the caller decays and updates them). exp_avgs /
    // exp_vars may have their own dtype (float32, bfloat16, float16; float64 for float64 params). With
    // `master_params` (float32 copies of bfloat16 / float16 params) the filter updates them and the params receive
    // them rounded to nearest; with `rounding_seeds` (one per param, in [0, 2**32)) 16-bit results are rounded
    // stochastically (counter-based: seed, step, element index); `rounding_offsets` (one per param, >= 0) number a
    // tensor's elements from its offset rather than 0 (a shard: its elements' positions in the whole tensor, so a
    // sharded step draws what an unsharded one draws). `preconditioner` "second_moment" or "variance" makes the
    // step AdaSGDF's: the filtered update divided by sqrt(bias-corrected v) + eps, v being `exp_avg_sqs` (an EMA
    // of the filtered update's square, one per param in the state dtype; only this mode takes them) or exp_var. The step counts are written by the op (so that
    // a skipped step is decided in one place and a raising call changes nothing), hence `steps` is mutable.
    // Every argument is checked before anything is written: hyperparameters in SGDF's ranges, dtypes, layouts,
    // and no two tensors sharing memory. The value of `lr_tensor` is checked (>= 0) only on the CPU: reading a CUDA
    // one would need a host synchronisation, so there it is the caller's to check.
    "fused_sgdf_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_vars, "
    "Tensor(e!)[] updates, Tensor(f!)[] steps, float lr, Tensor? lr_tensor, float beta1, float beta2, float eps, "
    "float gamma, float weight_decay, bool decoupled_weight_decay, bool sign, bool maximize, "
    "Tensor? grad_scale, Tensor? found_inf, Tensor(g!)[] master_params, int[] rounding_seeds=[], "
    "int[] rounding_offsets=[], Tensor(h!)[]? exp_avg_sqs=None, str preconditioner=\"none\") -> ()",
    // SGDF over several param groups in one call: the groups' tensors follow each other in the lists (group_sizes
    // says how many each has), each group with its own hyperparameters (lr ... maximize: one value per group;
    // lr_tensor: per group, a tensor replacing lr or None) and storage options (master_params: for the groups with
    // master_weights, in group order; rounding_seeds likewise for those with stochastic_rounding). Each group is
    // stepped as fused_sgdf_ would step it (no update buffers, every tensor numbered from 0), and all groups are
    // checked, as fused_sgdf_ checks one, before anything is written; all tensors are on one device. One
    // `preconditioner` for the whole call (with "second_moment", one exp_avg_sqs entry per param). `check_only`
    // (empty, or one value per group): groups that are checked with the others, shared memory included, and left
    // unchanged (SGDF's foreach groups, which it then steps itself).
    "fused_sgdf_grouped_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_vars, "
    "Tensor(e!)[] steps, Tensor(f!)[] master_params, int[] rounding_seeds, int[] group_sizes, float[] lr, "
    "Tensor?[] lr_tensor, float[] beta1, float[] beta2, float[] eps, float[] gamma, float[] weight_decay, "
    "bool[] decoupled_weight_decay, bool[] sign, bool[] maximize, bool[] master_weights, "
    "bool[] stochastic_rounding, Tensor? grad_scale, Tensor? found_inf, Tensor(g!)[]? exp_avg_sqs=None, "
    "str preconditioner=\"none\", bool[] check_only=[]) -> ()",
    // ERD loss (csrc/erd): per-sample weights; the fused loss forward (per-sample MSE, weights, batch loss and
    // per-log-SNR-bin sums [count, sum mse, sum mse^2, sum loss] x num_bins) and its backward. Their autograd and
    // batching rules are registered from Python (python/sgdf_erd/erd/), so torch.func transforms see them.
    "erd_weights(Tensor alpha, Tensor sigma, Tensor? alpha_prime, Tensor? sigma_prime, str prediction, "
    "str weighting, float k, float gamma) -> Tensor",
    "erd_loss_forward(Tensor output, Tensor target, Tensor alpha, Tensor sigma, Tensor? alpha_prime, "
    "Tensor? sigma_prime, Tensor? weights, str prediction, str weighting, float k, float gamma, int num_bins, "
    "float logsnr_min, float logsnr_max) -> (Tensor loss, Tensor mse, Tensor weight, Tensor bin_sums)",
    "erd_loss_backward(Tensor grad, Tensor output, Tensor target, Tensor weight, bool target_requires_grad) "
    "-> Tensor[]",
    // NTK spectrum: per-bin eigenvalues of the Gram matrix of the rows of `features` in each bin (csrc/ntk).
    "binned_gram_eigvalsh(Tensor features, Tensor bin_ids, int num_bins) -> (Tensor eigenvalues, Tensor counts)",
};

bool compiled_with_cuda() {
#ifdef SGDF_ERD_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string cuda_arch_list() {
#ifdef SGDF_ERD_CUDA_ARCHS
  return SGDF_ERD_CUDA_ARCHS;
#else
  return "";
#endif
}

std::string version() { return SGDF_ERD_VERSION; }

// The instruction set of the CPU kernels that have more than one build (SGDF's) in this process.
std::string cpu_capability() { return sgdf_erd::cpu::capability_name(sgdf_erd::cpu::capability()); }

// The torch whose headers this library was compiled with, and the oldest torch it runs with (the stable ABI is
// forward compatible: any later torch loads it).
std::string torch_version_built_with() { return TORCH_VERSION; }
std::string torch_version_targeted() {
  constexpr auto v = TORCH_TARGET_VERSION;  // one byte each: major, minor, patch, ...
  return std::to_string((v >> 56) & 0xff) + "." + std::to_string((v >> 48) & 0xff);
}

}  // namespace

STABLE_TORCH_LIBRARY(sgdf_erd, m) {
  for (const char* schema : kOperatorSchemas) m.def(schema);
  m.def("compiled_with_cuda() -> bool");
  m.def("cuda_arch_list() -> str");
  m.def("version() -> str");
  m.def("cpu_capability() -> str");
  m.def("torch_version_built_with() -> str");
  m.def("torch_version_targeted() -> str");
}

// Build facts answer for any device: CompositeExplicitAutograd serves calls without tensor arguments.
STABLE_TORCH_LIBRARY_IMPL(sgdf_erd, CompositeExplicitAutograd, m) {
  m.impl("compiled_with_cuda", TORCH_BOX(&compiled_with_cuda));
  m.impl("cuda_arch_list", TORCH_BOX(&cuda_arch_list));
  m.impl("version", TORCH_BOX(&version));
  m.impl("cpu_capability", TORCH_BOX(&cpu_capability));
  m.impl("torch_version_built_with", TORCH_BOX(&torch_version_built_with));
  m.impl("torch_version_targeted", TORCH_BOX(&torch_version_targeted));
}

// Importing sgdf_erd._C loads this library, which runs the registrations above. Only the limited C API is used,
// so one build serves every CPython from 3.10 on (abi3).
PyMODINIT_FUNC PyInit__C(void) {  // exported: the only symbol with default visibility
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "sgdf_erd native operators (see torch.ops.sgdf_erd)",
                               -1, nullptr};
  return PyModule_Create(&module);
}
