"""ERD: recoverability-weighted diffusion loss (maths: docs/erd.md).

- :func:`erd_weight` / :func:`loss_weight`: per-sample weights (ERD and the baseline weightings);
- :class:`ERDLoss`: the fused loss module with per-log-SNR-bin statistics; :func:`erd_loss` its functional form;
  :func:`logsnr_bin_edges` the statistics' bin edges;
- :mod:`schedules`: the noise schedules the authors train with, and helpers building x_t and targets.
"""

from . import schedules
from .loss import ERDLoss, erd_loss, logsnr_bin_edges
from .weights import PREDICTIONS, WEIGHTINGS, erd_weight, loss_weight

__all__ = ["ERDLoss", "erd_loss", "logsnr_bin_edges", "erd_weight", "loss_weight", "schedules", "PREDICTIONS",
           "WEIGHTINGS"]
