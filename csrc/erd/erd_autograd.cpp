// sgdf_erd::erd_loss: the fused forward with its backward attached, in C++ so one loss step costs two op
// dispatches and no Python autograd machinery (that overhead would otherwise exceed the kernels' time on a GPU).
// Weights are constants: alpha, sigma and given weights get no gradient. Under create_graph=True the backward
// switches to the same formula in differentiable ATen ops, so higher derivatives are right.
#include <torch/autograd.h>
#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

namespace sgdf_erd::erd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

ForwardResult call_forward(const at::Tensor& output, const at::Tensor& target, const at::Tensor& alpha,
                           const at::Tensor& sigma, const std::optional<at::Tensor>& alpha_prime,
                           const std::optional<at::Tensor>& sigma_prime, const std::optional<at::Tensor>& weights,
                           c10::string_view prediction, c10::string_view weighting, double k, double gamma,
                           int64_t num_bins, double logsnr_min, double logsnr_max) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("sgdf_erd::erd_loss_forward", "")
                             .typed<ForwardResult(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                  const at::Tensor&, const std::optional<at::Tensor>&,
                                                  const std::optional<at::Tensor>&,
                                                  const std::optional<at::Tensor>&, c10::string_view,
                                                  c10::string_view, double, double, int64_t, double, double)>();
  return op.call(output, target, alpha, sigma, alpha_prime, sigma_prime, weights, prediction, weighting, k, gamma,
                 num_bins, logsnr_min, logsnr_max);
}

std::vector<at::Tensor> call_backward(const at::Tensor& grad, const at::Tensor& output, const at::Tensor& target,
                                      const at::Tensor& weight, bool target_requires_grad) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("sgdf_erd::erd_loss_backward", "")
                             .typed<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                            const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(grad, output, target, weight, target_requires_grad);
}

class ERDLossFunction : public torch::autograd::Function<ERDLossFunction> {
 public:
  static constexpr size_t kNumInputs = 14;

  static variable_list forward(AutogradContext* ctx, const at::Tensor& output, const at::Tensor& target,
                               const at::Tensor& alpha, const at::Tensor& sigma,
                               const std::optional<at::Tensor>& alpha_prime,
                               const std::optional<at::Tensor>& sigma_prime,
                               const std::optional<at::Tensor>& weights, c10::string_view prediction,
                               c10::string_view weighting, double k, double gamma, int64_t num_bins,
                               double logsnr_min, double logsnr_max) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, mse, weight, bin_sums] = call_forward(output, target, alpha, sigma, alpha_prime, sigma_prime,
                                                      weights, prediction, weighting, k, gamma, num_bins,
                                                      logsnr_min, logsnr_max);
    ctx->save_for_backward({output, target, weight});
    ctx->mark_non_differentiable({mse, weight, bin_sums});
    ctx->set_materialize_grads(false);
    return {loss, mse, weight, bin_sums};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(kNumInputs);
    if (!grads[0].defined()) return result;  // the loss was not used
    const auto saved = ctx->get_saved_variables();
    const bool need_target = ctx->needs_input_grad(1);
    if (torch::autograd::GradMode::is_enabled()) {
      // create_graph=True: the same gradient from differentiable ATen ops, so double backward is correct
      const at::Tensor& output = saved[0];
      const int64_t batch = output.size(0);
      std::vector<int64_t> shape(output.dim(), 1);
      shape[0] = batch;
      const at::Tensor coef = grads[0] * saved[2].to(output.scalar_type()) *
                              (2.0 / (static_cast<double>(output.numel() / batch) * static_cast<double>(batch)));
      const at::Tensor grad_output = (output - saved[1]) * coef.reshape(shape);
      if (ctx->needs_input_grad(0)) result[0] = grad_output;
      if (need_target) result[1] = -grad_output;
      return result;
    }
    auto g = call_backward(grads[0], saved[0], saved[1], saved[2], need_target);
    if (ctx->needs_input_grad(0)) result[0] = g[0];
    if (need_target) result[1] = g[1];
    return result;
  }
};

ForwardResult loss_autograd(const at::Tensor& output, const at::Tensor& target, const at::Tensor& alpha,
                            const at::Tensor& sigma, const std::optional<at::Tensor>& alpha_prime,
                            const std::optional<at::Tensor>& sigma_prime, const std::optional<at::Tensor>& weights,
                            c10::string_view prediction, c10::string_view weighting, double k, double gamma,
                            int64_t num_bins, double logsnr_min, double logsnr_max) {
  auto r = ERDLossFunction::apply(output, target, alpha, sigma, alpha_prime, sigma_prime, weights, prediction,
                                  weighting, k, gamma, num_bins, logsnr_min, logsnr_max);
  return {r[0], r[1], r[2], r[3]};
}

}  // namespace

// Below autograd (inference mode, fake tensors) the op is just the forward.
TORCH_LIBRARY_IMPL(sgdf_erd, CompositeExplicitAutograd, m) { m.impl("erd_loss", &call_forward); }
TORCH_LIBRARY_IMPL(sgdf_erd, Autograd, m) { m.impl("erd_loss", &loss_autograd); }

}  // namespace sgdf_erd::erd
