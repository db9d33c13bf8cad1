"""The schedule of a diffusers noise scheduler, read from the scheduler's own tables, so that the loss's alpha and
sigma are exactly those the scheduler noised the batch with (``scheduler.add_noise`` / ``scale_noise``).

diffusers is not imported: a scheduler is recognised by its class (or a base class) name.
"""

import torch
from torch import Tensor

from .schedules import DiscreteVP, LinearFlow, NoiseSchedule, as_times, checked_on_host, require_inside

__all__ = ["from_diffusers", "FlowMatchTimesteps", "VP_SCHEDULERS", "FLOW_MATCH_SCHEDULERS"]

# Schedulers whose add_noise is sqrt(alphas_cumprod[t]) x0 + sqrt(1 - alphas_cumprod[t]) noise, integer t.
VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler",
                 "PNDMScheduler", "LCMScheduler", "TCDScheduler", "SASolverScheduler", "UnCLIPScheduler",
                 "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler")
# Flow-matching schedulers: scale_noise gives (1 - sigma) x0 + sigma noise, with timesteps = sigmas * N.
FLOW_MATCH_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


class FlowMatchTimesteps(LinearFlow):
    """diffusers' flow matching in its own timesteps: ``sigma = t / num_train_timesteps``, ``alpha = 1 - sigma``.

    diffusers builds its timesteps as ``sigmas * num_train_timesteps`` after any ``shift`` (or dynamic shift) of
    the sigmas, so dividing a timestep by ``num_train_timesteps`` gives the shifted sigma that ``scale_noise`` used.
    The derivatives are taken with respect to sigma (alpha' = -1, sigma' = 1): the flow target ``noise - x0`` of
    diffusers' training scripts. ``t`` may be a float (``scheduler.timesteps``) or an integer tensor, in
    ``[0, num_train_timesteps]``; a NaN timestep gives NaN values (the loss shows them), as in LinearFlow.
    """

    def __init__(self, num_train_timesteps: int):
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) \
                or num_train_timesteps < 1:
            raise ValueError(f"FlowMatchTimesteps: 'num_train_timesteps' must be a positive int, got "
                             f"{num_train_timesteps!r}")
        self.num_train_timesteps = num_train_timesteps

    def _sigma(self, t) -> Tensor:
        t = as_times(t, "FlowMatchTimesteps")
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"FlowMatchTimesteps: timesteps must be real numbers, got {t.dtype}")
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        sigma = t / self.num_train_timesteps
        # diffusers' float32 product sigmas * N can round just above N: that is sigma = 1
        rounded_up = (sigma > 1) & (sigma <= 1 + 4 * torch.finfo(sigma.dtype).eps)
        sigma = torch.where(rounded_up, torch.ones_like(sigma), sigma)
        # checked on the host only (checked_on_host; LinearFlow then gives NaN outside, and for NaN)
        if checked_on_host(sigma):
            require_inside(t, (sigma >= 0) & (sigma <= 1), "FlowMatchTimesteps",
                           f"timesteps must lie in [0, {self.num_train_timesteps}] (diffusers' sigma * "
                           "num_train_timesteps)")
        return sigma

    def alpha_sigma(self, t):
        return super().alpha_sigma(self._sigma(t))

    def derivatives(self, t):
        return super().derivatives(self._sigma(t))

    def sample_t(self, batch_size, *, device=None, generator=None):
        return torch.rand(batch_size, device=device, generator=generator) * self.num_train_timesteps

    def __repr__(self):
        return f"FlowMatchTimesteps(num_train_timesteps={self.num_train_timesteps})"


def _class_names(scheduler):
    return [cls.__name__ for cls in type(scheduler).__mro__]


def from_diffusers(scheduler) -> NoiseSchedule:
    """The schedule of a diffusers scheduler, taking the same timesteps as the training loop:

    - DDPM/DDIM-type (``VP_SCHEDULERS``): ``DiscreteVP(scheduler.alphas_cumprod)``, integer timesteps; a
      zero-terminal-SNR table (``rescale_betas_zero_snr=True``) is kept as it is (alpha = 0 at the last step);
    - flow matching (``FLOW_MATCH_SCHEDULERS``): :class:`FlowMatchTimesteps`, sigma = t / num_train_timesteps.

    Pair it with the scheduler's prediction type: ``ERDLoss(scheduler.config.prediction_type,
    schedule=from_diffusers(scheduler))`` (flow matching: ``"flow"``).
    """
    names = _class_names(scheduler)
    if any(name in VP_SCHEDULERS for name in names):
        return DiscreteVP(scheduler.alphas_cumprod)
    if any(name in FLOW_MATCH_SCHEDULERS for name in names):
        num_train_timesteps = int(scheduler.config.num_train_timesteps)
        timesteps = torch.as_tensor(scheduler.timesteps).detach().to("cpu", torch.float64)
        sigmas = torch.as_tensor(scheduler.sigmas).detach().to("cpu", torch.float64)[:timesteps.numel()]
        if sigmas.shape != timesteps.shape or not torch.allclose(timesteps / num_train_timesteps, sigmas,
                                                                 rtol=1e-5, atol=1e-6):
            raise ValueError(f"from_diffusers: {type(scheduler).__name__}'s timesteps are not sigmas * "
                             f"num_train_timesteps ({num_train_timesteps}), so they cannot be mapped to its "
                             "sigmas; pass alpha = 1 - sigma and sigma to the loss yourself")
        return FlowMatchTimesteps(num_train_timesteps)
    raise TypeError(f"from_diffusers: no schedule known for {type(scheduler).__name__}; supported: "
                    f"{', '.join(VP_SCHEDULERS + FLOW_MATCH_SCHEDULERS)}. For another variance-preserving scheduler "
                    "use schedules.DiscreteVP(scheduler.alphas_cumprod); ERDLoss(schedule=...) takes any "
                    "sgdf_erd.schedules.NoiseSchedule")
