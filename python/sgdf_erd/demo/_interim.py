"""TEMPORARY stand-ins for sgdf_erd.ERDLoss and sgdf_erd.schedules until those land in main; deleted then."""

import math

import torch
from torch import nn


def cosine_alpha_sigma(t):
    return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)


class InterimLoss(nn.Module):
    def __init__(self, weighting="erd", num_bins=16, logsnr_range=(-10.0, 10.0), ema_decay=0.99, k=5.0):
        super().__init__()
        self.weighting, self.num_bins, self.range, self.decay, self.k = weighting, num_bins, logsnr_range, ema_decay, k
        self._last = None
        self._ema = None

    def weight(self, alpha, sigma):
        snr = alpha ** 2 / sigma ** 2
        if self.weighting == "erd":
            return sigma / torch.sqrt(alpha ** 2 + sigma ** 2)
        if self.weighting == "min_snr":
            return torch.clamp(snr, max=self.k) / snr
        return torch.ones_like(alpha)

    def forward(self, output, target, alpha, sigma):
        mse = (output - target).pow(2).flatten(1).mean(1)
        w = self.weight(alpha, sigma)
        loss = w * mse
        with torch.no_grad():
            lam = torch.log(alpha ** 2 / sigma ** 2)
            lo, hi = self.range
            b = ((lam - lo) / (hi - lo) * self.num_bins).floor().clamp(0, self.num_bins - 1).long()
            count = torch.zeros(self.num_bins).index_add_(0, b, torch.ones_like(mse))
            msum = torch.zeros(self.num_bins).index_add_(0, b, mse.detach())
            lsum = torch.zeros(self.num_bins).index_add_(0, b, loss.detach())
            m2 = torch.zeros(self.num_bins).index_add_(0, b, mse.detach() ** 2)
            c = count.clamp(min=1)
            stats = dict(count=count, mse_mean=msum / c, mse_var=m2 / c - (msum / c) ** 2, loss_mean=lsum / c,
                         loss_share=lsum / lsum.sum())
            self._last = stats
            self._ema = stats if self._ema is None else {
                key: self.decay * self._ema[key] + (1 - self.decay) * v for key, v in stats.items()}
        return loss.mean()

    def statistics(self, ema=False):
        s = dict(self._ema if ema else self._last)
        s["bin_edges"] = torch.linspace(self.range[0], self.range[1], self.num_bins + 1)
        return s
