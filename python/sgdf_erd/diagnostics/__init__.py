"""Diagnostics of diffusion training: per-noise-level NTK spectrum."""

from .ntk import logsnr_bin_ids, ntk_spectrum, spectrum_statistics

__all__ = ["ntk_spectrum", "spectrum_statistics", "logsnr_bin_ids"]
