"""Fake (meta) implementation of ``fused_sgdf_``: the op only writes its inputs in place, so under torch.compile
and FakeTensor it returns nothing."""

import torch

from .._native import ops  # noqa: F401  (the op must be registered first)


@torch.library.register_fake("sgdf_erd::fused_sgdf_")
def _fused_sgdf_fake(params, grads, exp_avgs, exp_vars, updates, steps, lr, lr_tensor, beta1, beta2, eps, gamma,
                     weight_decay, decoupled_weight_decay, sign, maximize, grad_scale, found_inf):
    # This also serves as the op's Meta kernel, which the dispatcher picks when *any* input is a meta tensor; a call
    # mixing meta with real tensors must raise rather than silently do nothing.
    lists = dict(params=params, grads=grads, exp_avgs=exp_avgs, exp_vars=exp_vars, updates=updates, steps=steps)
    singles = dict(lr_tensor=lr_tensor, grad_scale=grad_scale, found_inf=found_inf)
    named = [(f"{name}[{i}]", t) for name, ts in lists.items() for i, t in enumerate(ts)]
    named += [(name, t) for name, t in singles.items() if t is not None]
    if named:
        first_name, first = named[0]
        for name, t in named:
            if t.device != first.device:
                raise RuntimeError(f"sgdf_erd::fused_sgdf_: '{name}' is on {t.device} but '{first_name}' is on "
                                   f"{first.device}; move every tensor of the call to one device")
