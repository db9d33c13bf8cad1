"""The ERD loss ops (the kernels: csrc/erd): per-sample weights, the fused loss forward and its backward, and
their fakes. Their derivatives and batching rules are registered in sgdf_erd/erd/_autograd.py, beside the
autograd Functions that share them."""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _native
from ._fake_checks import check_one_device

__all__ = ["erd_weights", "erd_loss_forward", "erd_loss_backward"]

# The loss ops' overloads themselves: erd/_autograd.py registers their rules on them and calls them below the
# autograd key (skipping the wrappers' Python call)
ERD_LOSS_FORWARD_OP = _native.ops.erd_loss_forward.default
ERD_LOSS_BACKWARD_OP = _native.ops.erd_loss_backward.default


def erd_weights(alpha: Tensor, sigma: Tensor, alpha_prime: Optional[Tensor], sigma_prime: Optional[Tensor],
                prediction: str, weighting: str, k: float, gamma: float) -> Tensor:
    """Per-sample loss weights of 1-D ``alpha``, ``sigma`` (and for flow their derivatives), in their promoted
    dtype (:func:`sgdf_erd.loss_weight` broadcasts and checks its arguments, then calls this)."""
    return _native.ops.erd_weights(alpha, sigma, alpha_prime, sigma_prime, prediction, weighting, k, gamma)


def erd_loss_forward(output: Tensor, target: Tensor, alpha: Tensor, sigma: Tensor, alpha_prime: Optional[Tensor],
                     sigma_prime: Optional[Tensor], weights: Optional[Tensor], prediction: str, weighting: str,
                     k: float, gamma: float, num_bins: int, logsnr_min: float,
                     logsnr_max: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fused ERD loss: ``(loss, mse, weight, bin_sums)``, the batch loss, per-sample MSE and weights, and the
    per-log-SNR-bin sums ``[count, sum mse, sum mse^2, sum loss] x num_bins`` (float64). Differentiable in
    ``output`` and ``target`` (:func:`sgdf_erd.erd_loss` checks its arguments, then calls this op)."""
    return _native.ops.erd_loss_forward(output, target, alpha, sigma, alpha_prime, sigma_prime, weights, prediction,
                                        weighting, k, gamma, num_bins, logsnr_min, logsnr_max)


def erd_loss_backward(grad: Tensor, output: Tensor, target: Tensor, weight: Tensor,
                      target_requires_grad: bool) -> List[Tensor]:
    """Gradients of the ERD loss for ``output`` (and ``target`` when ``target_requires_grad``) given the loss's
    gradient ``grad`` and the per-sample ``weight`` the forward returned."""
    return _native.ops.erd_loss_backward(grad, output, target, weight, target_requires_grad)


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _promoted(*tensors):
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


@torch.library.register_fake("sgdf_erd::erd_weights")
def _erd_weights_fake(alpha, sigma, alpha_prime, sigma_prime, prediction, weighting, k, gamma):
    check_one_device("erd_weights", [("alpha", alpha), ("sigma", sigma), ("alpha_prime", alpha_prime),
                                      ("sigma_prime", sigma_prime)])
    return torch.empty_like(alpha, dtype=_promoted(alpha, sigma, alpha_prime, sigma_prime),
                            memory_format=torch.contiguous_format)


@torch.library.register_fake("sgdf_erd::erd_loss_forward")
def _erd_loss_forward_fake(output, target, alpha, sigma, alpha_prime, sigma_prime, weights, prediction, weighting,
                           k, gamma, num_bins, logsnr_min, logsnr_max):
    check_one_device("erd_loss_forward", [("output", output), ("target", target), ("alpha", alpha),
                                          ("sigma", sigma), ("alpha_prime", alpha_prime),
                                          ("sigma_prime", sigma_prime), ("weights", weights)])
    batch = output.shape[0]
    acc = _acc_dtype(output.dtype)
    return (output.new_empty(()), output.new_empty((batch,), dtype=acc), output.new_empty((batch,), dtype=acc),
            output.new_empty((4, num_bins), dtype=torch.float64))


@torch.library.register_fake("sgdf_erd::erd_loss_backward")
def _erd_loss_backward_fake(grad, output, target, weight, target_requires_grad):
    check_one_device("erd_loss_backward", [("output", output), ("grad", grad), ("target", target),
                                           ("weight", weight)])
    grads = [torch.empty_like(output, memory_format=torch.contiguous_format)]
    if target_requires_grad:
        grads.append(torch.empty_like(target, memory_format=torch.contiguous_format))
    return grads
