"""Optimizers."""

from . import _fake  # noqa: F401  (shape functions for torch.compile)
from .sgdf import SGDF

__all__ = ["SGDF"]
