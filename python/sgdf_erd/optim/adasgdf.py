"""AdaSGDF: SGDF's Wiener-filtered gradient on an adaptive (Adam-type) step, as a drop-in for ``torch.optim.AdamW``."""

from typing import Iterable, Optional, Tuple, Union

import torch
from torch import Tensor

from .sgdf import SGDF, _update_options


class AdaSGDF(SGDF):
    r"""SGDF's filter on an adaptive optimizer: the filtered gradient of SGDF, divided by an Adam-type
    preconditioner (the extension both SGDF papers propose; the authors' compiled KAdam reads as the "variance"
    preconditioner below).

    For each tensor, with ``g`` the gradient (negated when ``maximize``) and ``t`` the step::

        m  = b1 m + (1 - b1) g                 s = b2 s + (1 - b2) (g - m)^2
        m^ = m / (1 - b1^t)                    bc2 = (1 + b1)(1 - b2^t) / ((1 - b1)(1 - b1^(2t)))
        r  = g - m^                            K = (s / (bc2 r^2 + s + eps)) ** gamma
        g^ = m^ + K r                                                      (SGDF's filtered gradient)
        "second_moment":  v = b2 v + (1 - b2) g^^2,   d = sqrt(v / (1 - b2^t))         (Adam's, of g^)
        "variance":                                   d = sqrt(s / (1 - b2^t))         (no extra state)
        p  = p - lr g^ / (d + eps)

    Weight decay is decoupled by default, as AdamW's (``p *= 1 - lr * weight_decay`` first); with
    ``decoupled_weight_decay=False`` it adds ``weight_decay * p`` to the gradient. Defaults are AdamW's
    (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2) and SGDF's gamma 0.5, so that
    ``AdamW(params, lr=1e-4, betas=(0.9, 0.95))`` becomes ``AdaSGDF(params, lr=1e-4, betas=(0.9, 0.95))``.

    Args:
        preconditioner: "second_moment" (Adam's second moment of the filtered gradient; state ``exp_avg_sq``,
            36 bytes per float32 element moved by a fused step) or "variance" (the square root of SGDF's
            residual variance, which it keeps anyway: Adam's 28 bytes per element).
        Every other argument (``lr`` as a float or tensor, ``foreach``, ``fused``, ``capturable``,
        ``stochastic_rounding``, ``state_dtype``, ``master_weights``, ``maximize``, ``differentiable``) as for
        :class:`sgdf_erd.SGDF`, which runs the step: the same fused kernels (with the preconditioner as their mode),
        foreach and single-tensor paths, GradScaler support, checkpoints and checks.

    State per parameter: ``step``, ``exp_avg`` (m), ``exp_var`` (s), and ``exp_avg_sq`` (v, torch's Adam name)
    with "second_moment"; ``master_param`` / ``rounding_seed`` with the storage options. ``state_dtype`` applies to
    all three moments. A checkpoint saved with one preconditioner loads under the other: ``exp_avg_sq`` is dropped
    when loaded into "variance"; one without it is refused by "second_moment".
    """

    def __init__(self, params: Iterable, lr: Union[float, Tensor] = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, gamma: float = 0.5, weight_decay: float = 1e-2, *,
                 decoupled_weight_decay: bool = True, preconditioner: str = "second_moment", maximize: bool = False,
                 foreach: Optional[bool] = None, fused: Optional[bool] = None, capturable: bool = False,
                 stochastic_rounding: bool = False, state_dtype: Optional[torch.dtype] = None,
                 master_weights: bool = False, differentiable: bool = False, sign: bool = False,
                 orthogonalize: bool = False, ns_steps: int = 5):
        # SGDF's defaults with the preconditioner; SGDF's sign / orthogonalize are taken (torch's convention
        # AdaSGDF(params, **opt.defaults) passes them) and must stay off (checks.check_hyperparameters)
        defaults = dict(lr=lr, betas=betas, eps=eps, gamma=gamma, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, sign=sign, orthogonalize=orthogonalize,
                        ns_steps=ns_steps,
                        maximize=maximize, foreach=foreach, fused=fused, capturable=capturable,
                        stochastic_rounding=stochastic_rounding, state_dtype=state_dtype,
                        master_weights=master_weights, differentiable=differentiable, preconditioner=preconditioner)
        self._init_with_defaults(params, defaults)

    def load_state_dict(self, state_dict: dict) -> None:
        """As SGDF's; param groups saved without a preconditioner (an SGDF checkpoint) take this optimizer's default
        (with "second_moment", such a checkpoint is refused: it holds no exp_avg_sq)."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if isinstance(groups, list):
            default = self.defaults["preconditioner"]
            state_dict = dict(state_dict, param_groups=[dict(g, preconditioner=g.get("preconditioner", default))
                                                        if isinstance(g, dict) else g for g in groups])
        super().load_state_dict(state_dict)

    def _update_options(self, group: dict) -> dict:
        return dict(_update_options(group), preconditioner=group["preconditioner"])

