"""The loss-weighting modules the demo compares, and their weight curves for the report."""

from typing import Dict, List

import torch
from torch import nn

from ._interim import InterimLoss
from .process import NoiseProcess

NUM_BINS = 16
LOGSNR_RANGE = (-10.0, 10.0)


def make_loss(weighting: str) -> nn.Module:
    """A fresh loss module (eps prediction) with ``weighting``; its per-bin statistics feed the report."""
    return InterimLoss(weighting=weighting, num_bins=NUM_BINS, logsnr_range=LOGSNR_RANGE)


def weight_curve(weighting: str, points: int = 121, logsnr_max: float = 12.0) -> Dict[str, List[float]]:
    """w(log-SNR) of ``weighting``, read off the loss module itself: one sample with unit MSE gives loss = w."""
    loss_fn = make_loss(weighting)
    logsnr = torch.linspace(-logsnr_max, logsnr_max, points)
    alpha, sigma = torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()  # VP: alpha^2 + sigma^2 = 1
    zero, one = torch.zeros(1, 1), torch.ones(1, 1)
    with torch.no_grad():
        weights = [float(loss_fn(one, zero, a.view(1), s.view(1))) for a, s in zip(alpha, sigma)]
    return {"logsnr": logsnr.tolist(), "weight": weights}
