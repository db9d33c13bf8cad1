"""Fake (meta) implementations of the ERD ops: output shapes and dtypes without data, for torch.compile.
Each first refuses inputs on mixed devices (see sgdf_erd/_fake_checks.py).
"""

import torch

from .._fake_checks import check_one_device
from .._native import ops  # noqa: F401  (the ops must be registered first)


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
