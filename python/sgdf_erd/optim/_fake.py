"""Fake (meta) implementation of ``fused_sgdf_``: the op only writes its inputs in place, so under torch.compile
and FakeTensor it returns nothing."""

import torch

from .._fake_checks import check_one_device
from .._native import ops  # noqa: F401  (the op must be registered first)


@torch.library.register_fake("sgdf_erd::fused_sgdf_")
def _fused_sgdf_fake(params, grads, exp_avgs, exp_vars, updates, steps, lr, lr_tensor, beta1, beta2, eps, gamma,
                     weight_decay, decoupled_weight_decay, sign, maximize, grad_scale, found_inf):
    lists = dict(params=params, grads=grads, exp_avgs=exp_avgs, exp_vars=exp_vars, updates=updates, steps=steps)
    named = [(f"{name}[{i}]", t) for name, ts in lists.items() for i, t in enumerate(ts)]
    named += [("lr_tensor", lr_tensor), ("grad_scale", grad_scale), ("found_inf", found_inf)]
    check_one_device("fused_sgdf_", named, RuntimeError)  # RuntimeError, as the kernels' checks raise
