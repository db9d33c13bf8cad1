"""sgdf-erd: fused SGDF optimizer and ERD diffusion loss for PyTorch.

- :class:`SGDF`: the optimizer (fused CPU/CUDA kernels, foreach and single-tensor paths); :class:`AdaSGDF`: its
  filter on an adaptive (AdamW-type) step;
- :class:`ERDLoss`, :func:`erd_weight`, :mod:`schedules`: the recoverability-weighted diffusion loss;
- :mod:`diagnostics`: per-noise-level NTK spectrum; :mod:`ops`: functional operators.
"""

from ._version import __version__
from ._build import build_info
from . import diagnostics, ops
from .diagnostics import ntk_spectrum
from .erd import ERDLoss, erd_loss, erd_weight, loss_weight, schedules
from .optim import AdaSGDF, SGDF

__all__ = ["SGDF", "AdaSGDF", "ERDLoss", "erd_loss", "erd_weight", "loss_weight", "schedules", "diagnostics", "ntk_spectrum", "ops",
           "build_info", "__version__"]
