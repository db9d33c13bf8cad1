"""``fused_sgdf_``: one fused SGDF step over a group of tensors (the kernels: csrc/sgdf), and its fake."""

from typing import List, Optional

import torch
from torch import Tensor

from .. import _native
from ._fake_checks import check_one_device

__all__ = ["fused_sgdf_"]


def fused_sgdf_(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_vars: List[Tensor],
                updates: List[Tensor], steps: List[Tensor], lr: float, lr_tensor: Optional[Tensor], beta1: float,
                beta2: float, eps: float, gamma: float, weight_decay: float, decoupled_weight_decay: bool,
                sign: bool, maximize: bool, grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> None:
    """One SGDF step, in place, over same-device, same-dtype tensors (the fused path of
    :class:`sgdf_erd.SGDF`, which groups the tensors and checks the hyperparameters first).

    Advances each step count by one unless ``found_inf`` is nonzero (then nothing changes). With ``updates``
    non-empty the filtered update is written there instead of being applied to ``params``. ``lr_tensor``, when
    given, replaces ``lr``. The kernels check every argument before writing anything and raise RuntimeError.
    """
    _native.ops.fused_sgdf_(params, grads, exp_avgs, exp_vars, updates, steps, lr, lr_tensor, beta1, beta2, eps,
                            gamma, weight_decay, decoupled_weight_decay, sign, maximize, grad_scale, found_inf)


@torch.library.register_fake("sgdf_erd::fused_sgdf_")
def _fused_sgdf_fake(params, grads, exp_avgs, exp_vars, updates, steps, lr, lr_tensor, beta1, beta2, eps, gamma,
                     weight_decay, decoupled_weight_decay, sign, maximize, grad_scale, found_inf):
    # the op only writes its inputs, so under torch.compile and FakeTensor it returns nothing
    lists = dict(params=params, grads=grads, exp_avgs=exp_avgs, exp_vars=exp_vars, updates=updates, steps=steps)
    named = [(f"{name}[{i}]", t) for name, ts in lists.items() for i, t in enumerate(ts)]
    named += [("lr_tensor", lr_tensor), ("grad_scale", grad_scale), ("found_inf", found_inf)]
    check_one_device("fused_sgdf_", named, RuntimeError)  # RuntimeError, as the kernels' checks raise
