"""Optimizers."""

from .sgdf import SGDF

__all__ = ["SGDF"]
