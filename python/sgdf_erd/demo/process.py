"""The forward noising process the demo trains on: continuous cosine schedule, eps prediction.

``t`` is drawn uniformly from ``[t_min, t_max]``, the times where log-SNR is ``+logsnr_max`` and ``-logsnr_max``;
the ends are cut so that log-SNR stays finite (the sampler starts at ``t_max`` from pure noise).
"""

import math
from typing import Tuple

import torch

from ..erd import schedules


class NoiseProcess:
    prediction = "eps"

    def __init__(self, logsnr_max: float = 15.0):
        if logsnr_max <= 0:
            raise ValueError(f"logsnr_max must be > 0, got {logsnr_max}")
        self.schedule = schedules.ContinuousCosine()
        self.logsnr_max = float(logsnr_max)
        # cosine: logsnr(t) = -2 log tan(pi t / 2)  =>  t = (2 / pi) atan(exp(-logsnr / 2))
        self.t_min = 2.0 / math.pi * math.atan(math.exp(-self.logsnr_max / 2))
        self.t_max = 2.0 / math.pi * math.atan(math.exp(self.logsnr_max / 2))

    def alpha_sigma(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.schedule.alpha_sigma(t)

    @staticmethod
    def logsnr(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return 2.0 * (torch.log(alpha) - torch.log(sigma))

    def sample_t(self, n: int, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(n, generator=generator)
        return self.t_min + (self.t_max - self.t_min) * u

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
        """Return ``x_t, target, alpha, sigma, logsnr`` for clean images ``x0`` at times ``t``."""
        alpha, sigma = self.alpha_sigma(t)
        x_t = schedules.make_noisy(x0, noise, alpha, sigma)
        target = schedules.make_target(x0, noise, alpha, sigma, self.prediction)
        return x_t, target, alpha, sigma, self.logsnr(alpha, sigma)
