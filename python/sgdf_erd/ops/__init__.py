"""The Python face of ``torch.ops.sgdf_erd``: each operator's wrapper beside its fake (meta) implementation, one
module per domain; the rest of sgdf_erd calls the compiled operators only through here.

- :mod:`.sgdf`: ``fused_sgdf_`` and ``fused_sgdf_grouped_``, the fused optimizer step (of one group of tensors, and
  of several param groups in one call);
- :mod:`.erd`: ``erd_weights``, ``erd_loss_forward``, ``erd_loss_backward`` (their autograd and vmap rules:
  sgdf_erd/erd/_autograd.py);
- :mod:`.ntk`: :func:`binned_gram_eigvalsh`, the public functional operator, and :data:`MAX_NUM_BINS`.

A fake implementation starts with the mixed-device check of :mod:`._fake_checks`.
"""

from .erd import erd_loss_backward, erd_loss_forward, erd_weights
from .ntk import MAX_NUM_BINS, binned_gram_eigvalsh
from .sgdf import FUSED_SGDF_REFUSED, fused_sgdf_, fused_sgdf_grouped_

__all__ = ["binned_gram_eigvalsh", "MAX_NUM_BINS"]
