"""Optimizers."""

from .adasgdf import AdaSGDF
from .sgdf import SGDF

__all__ = ["SGDF", "AdaSGDF"]
