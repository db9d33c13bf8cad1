// The one place where sgdf_erd's operators are declared. Each domain folder registers its CPU and CUDA kernels
// for these schemas with TORCH_LIBRARY_IMPL; Python reaches them as torch.ops.sgdf_erd.<name>.
#include <Python.h>
#include <torch/library.h>

#include <string>

namespace {

// Schemas of every operator. A CPU-only build registers a CUDA stub for each, so a CUDA tensor gets an error that
// names the fix instead of the dispatcher's generic "could not run" message.
constexpr const char* kOperatorSchemas[] = {
    // SGDF: one fused step over a group of same-device, same-dtype tensors (csrc/sgdf); advances each step count
    // by one, except when found_inf is nonzero (then nothing changes). With `updates` non-empty the filtered update
    // is written there instead of being applied to the parameters. The step counts are written by the op (so that
    // a skipped step is decided in one place and a raising call changes nothing), hence `steps` is mutable.
    // Every argument is checked before anything is written: hyperparameters in SGDF's ranges, dtypes, layouts,
    // and no two tensors sharing memory. The value of `lr_tensor` is checked (>= 0) only on the CPU: reading a CUDA
    // one would need a host synchronisation, so there it is the caller's to check.
    "fused_sgdf_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_vars, "
    "Tensor(e!)[] updates, Tensor(f!)[] steps, float lr, Tensor? lr_tensor, float beta1, float beta2, float eps, "
    "float gamma, float weight_decay, bool decoupled_weight_decay, bool sign, bool maximize, "
    "Tensor? grad_scale, Tensor? found_inf) -> ()",
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

#ifndef SGDF_ERD_WITH_CUDA
void cuda_kernels_missing(const c10::OperatorHandle& op, torch::jit::Stack*) {
  TORCH_CHECK(false, op.schema().name(),
              ": this sgdf_erd build has no CUDA kernels (it was compiled against CPU-only torch or without nvcc). "
              "Reinstall with a CUDA build of torch and the CUDA toolkit on PATH: "
              "pip install --no-build-isolation --force-reinstall sgdf-erd (or `pip install --no-build-isolation .` "
              "in the source tree); sgdf_erd.build_info() shows what was compiled in.");
}

std::string op_name(const char* schema) {
  const std::string s(schema);
  return s.substr(0, s.find('('));
}
#endif

}  // namespace

TORCH_LIBRARY(sgdf_erd, m) {
  for (const char* schema : kOperatorSchemas) m.def(schema);
  m.def("compiled_with_cuda() -> bool", &compiled_with_cuda);
  m.def("cuda_arch_list() -> str", &cuda_arch_list);
  m.def("version() -> str", &version);
}

#ifndef SGDF_ERD_WITH_CUDA
TORCH_LIBRARY_IMPL(sgdf_erd, CUDA, m) {
  for (const char* schema : kOperatorSchemas) {
    m.impl(op_name(schema).c_str(), torch::CppFunction::makeFromBoxedFunction<&cuda_kernels_missing>());
  }
}
#endif

// Importing sgdf_erd._C loads this library, which runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "sgdf_erd native operators (see torch.ops.sgdf_erd)",
                               -1, nullptr};
  return PyModule_Create(&module);
}
