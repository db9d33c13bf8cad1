"""A compact U-Net denoiser for small grey-scale images, conditioned on log-SNR."""

import math

import torch
from torch import nn
import torch.nn.functional as F


def logsnr_embedding(logsnr: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of log-SNR; the /20 keeps the usual [-20, 20] range within a few periods."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=logsnr.device, dtype=torch.float32) * (-math.log(1000.0) / half))
    angles = (logsnr.float()[:, None] / 20.0) * 1000.0 * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """Pre-norm residual block; the noise level enters as a per-channel scale and shift (FiLM)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        # zero-initialised last conv: each block starts as the identity, which keeps early training stable
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class UNet(nn.Module):
    """Two resolution levels (H and H/2) plus a middle block; ``forward(x, logsnr)`` predicts the noise.

    ``channels=24`` (the demo's default) gives about 0.28 M parameters, 32 about 0.44 M; any even image size.
    """

    def __init__(self, in_channels: int = 1, channels: int = 24, emb_dim: int = 128):
        super().__init__()
        c1, c2 = channels, 2 * channels
        self.emb_dim = emb_dim
        self.emb = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.down1 = ResBlock(c1, c1, emb_dim)
        self.downsample = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.down2 = ResBlock(c2, c2, emb_dim)
        self.mid = ResBlock(c2, c2, emb_dim)
        self.up2 = ResBlock(2 * c2, c2, emb_dim)
        self.upsample = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.up1 = ResBlock(2 * c1, c1, emb_dim)
        self.out_norm = _norm(c1)
        self.out = nn.Conv2d(c1, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        if logsnr.dim() == 0:
            logsnr = logsnr.expand(x.shape[0])
        emb = self.emb(logsnr_embedding(logsnr, self.emb_dim).to(x.dtype))
        h1 = self.down1(self.inp(x), emb)
        h2 = self.down2(self.downsample(h1), emb)
        h = self.mid(h2, emb)
        h = self.up2(torch.cat([h, h2], dim=1), emb)
        h = self.up1(torch.cat([self.upsample(h), h1], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
