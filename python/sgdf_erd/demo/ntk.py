"""NTK spectrum per noise level at the start and the end of training (sgdf_erd.diagnostics.ntk_spectrum)."""

import copy
from typing import Optional, Tuple

import torch
from torch import nn

from .data import ImageData
from .weighting import LOGSNR_RANGE, NUM_BINS

PER_BIN = 16  # probe inputs per log-SNR bin (the effective rank of a bin is at most this)


def ntk_probe(data: ImageData, seed: int, device: str, per_bin: int = PER_BIN):
    """Fixed held-out inputs, ``per_bin`` per log-SNR bin (stratified), reused for every spectrum so they compare.

    The noise level is set by log-SNR directly; the demo's schedule is variance preserving, so
    alpha = sqrt(sigmoid(logsnr)) and sigma = sqrt(sigmoid(-logsnr)).
    """
    gen = torch.Generator().manual_seed(seed + 11)
    n = NUM_BINS * per_bin
    lo, hi = LOGSNR_RANGE
    logsnr = lo + (hi - lo) * (torch.arange(n, dtype=torch.float32) + torch.rand(n, generator=gen)) / n
    x0 = data.test_x[torch.randint(len(data.test_x), (n,), generator=gen)]
    alpha, sigma = torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()
    noise = torch.randn(x0.shape, generator=gen)
    x_t = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * noise
    return x_t.to(device), logsnr.to(device)


def ntk_spectrum_or_none(model: nn.Module, probe) -> Tuple[Optional[dict], str]:
    """Per-bin spectrum dict (lists), or None with the reason when the diagnostic is not available."""
    try:
        from ..diagnostics import ntk_spectrum
    except ImportError:
        return None, "sgdf_erd.diagnostics is not available in this build"
    x_t, logsnr = probe
    # the NTK is over the parameters that require grad; the trained (EMA) models are frozen copies
    model = copy.deepcopy(model).eval().requires_grad_(True)
    # the trailing logsnr= reaches the model's forward(x, logsnr), per sample
    spec = ntk_spectrum(model, x_t, logsnr, num_bins=NUM_BINS, logsnr_range=LOGSNR_RANGE, logsnr=logsnr)
    note = (f"{len(x_t)} held-out inputs ({len(x_t) // NUM_BINS} per bin), sketch dimension 256, the same inputs and "
            "sketch at the start and the end")
    return {k: v.detach().cpu().tolist() for k, v in spec.items()}, note
