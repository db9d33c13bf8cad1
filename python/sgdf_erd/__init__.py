"""sgdf-erd: fused SGDF optimizer and ERD diffusion loss for PyTorch."""

from ._version import __version__
from ._build import build_info
from .optim import SGDF

__all__ = ["SGDF", "build_info", "__version__"]
