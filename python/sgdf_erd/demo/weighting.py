"""The loss-weighting modules the demo compares (sgdf_erd.ERDLoss), and their weight curves for the report."""

from typing import Dict, List

import torch

from ..erd import ERDLoss, loss_weight

NUM_BINS = 16
LOGSNR_RANGE = (-10.0, 10.0)
PREDICTION = "eps"


def make_loss(weighting: str) -> ERDLoss:
    """A fresh loss module with ``weighting``; its per-bin statistics feed the report."""
    return ERDLoss(prediction=PREDICTION, weighting=weighting, num_bins=NUM_BINS, logsnr_range=LOGSNR_RANGE)


def weight_curve(weighting: str, points: int = 121, logsnr_max: float = 12.0) -> Dict[str, List[float]]:
    """w(log-SNR) of ``weighting`` on a variance-preserving schedule (alpha^2 + sigma^2 = 1)."""
    logsnr = torch.linspace(-logsnr_max, logsnr_max, points, dtype=torch.float64)
    alpha, sigma = torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()
    weights = loss_weight(alpha, sigma, PREDICTION, weighting)
    return {"logsnr": logsnr.tolist(), "weight": weights.tolist()}
