"""Deterministic DDIM sampling (eta = 0) for an eps-predicting denoiser."""

import torch
from torch import nn

from .process import NoiseProcess


@torch.no_grad()
def ddim_sample(model: nn.Module, process: NoiseProcess, num_samples: int, image_shape, num_steps: int = 50,
                seed: int = 0, device: str = "cpu", batch_size: int = 1000) -> torch.Tensor:
    """Draw ``num_samples`` images in [-1, 1] from pure noise at ``t_max`` down to ``t = 0``, seeded."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((num_samples,) + tuple(image_shape), generator=gen)
    times = torch.linspace(process.t_max, 0.0, num_steps + 1)
    out = []
    for start in range(0, num_samples, batch_size):
        x = noise[start:start + batch_size].to(device)
        x0 = x
        for i in range(num_steps):
            t, t_next = times[i].to(device), times[i + 1].to(device)
            alpha, sigma = process.alpha_sigma(t)
            logsnr = process.logsnr(alpha, sigma).expand(len(x))
            eps = model(x, logsnr)
            # clip the implied clean image to the data range, then re-derive the noise from it (standard DDIM)
            x0 = ((x - sigma * eps) / alpha).clamp(-1.0, 1.0)
            eps = (x - alpha * x0) / sigma
            alpha_n, sigma_n = process.alpha_sigma(t_next)
            x = alpha_n * x0 + sigma_n * eps
        out.append(x0.cpu())
    return torch.cat(out)
