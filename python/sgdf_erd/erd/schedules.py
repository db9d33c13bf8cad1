"""Noise schedules the ERD authors train with, each mapping t to (alpha, sigma), their time derivatives and
the log-SNR, for corruptions x_t = alpha * x0 + sigma * eps.

- :class:`DiscreteVP`: variance-preserving, ``alpha = sqrt(alphas_cumprod[t])``, ``sigma = sqrt(1 - ...)``, for
  integer timesteps ``t`` in ``[0, num_steps)``. Built from betas (:func:`linear_betas`, :func:`cosine_betas`) or
  straight from an ``alphas_cumprod`` tensor, so a diffusers scheduler plugs in:
  ``DiscreteVP(scheduler.alphas_cumprod)``.
- :class:`ContinuousCosine`: ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)``, t in [0, 1].
- :class:`LinearLogSNR`: log-SNR ``lambda = lambda_max + t (lambda_min - lambda_max)`` (+10 -> -10),
  ``alpha = sigmoid(lambda / 2)``, ``sigma = sigmoid(-lambda / 2)`` (so alpha + sigma = 1, the authors' flow path).
- :class:`LinearFlow`: ``alpha = 1 - t``, ``sigma = t``.

Plus :func:`make_noisy` (builds x_t) and :func:`make_target` (the regression target of a prediction type), and
:func:`from_diffusers` (the schedule of a diffusers scheduler, from its own tables; module diffusers_schedules).
"""

import math
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "ScheduleValues", "NoiseSchedule", "DiscreteVP", "ContinuousCosine", "LinearLogSNR", "LinearFlow",
    "linear_betas", "cosine_betas", "make_noisy", "make_target", "PREDICTIONS", "from_diffusers", "FlowMatchTimesteps",
]

PREDICTIONS = ("eps", "x0", "v", "flow")


class ScheduleValues(NamedTuple):
    """What a schedule gives for a batch of times: all tensors of t's shape."""

    alpha: Tensor
    sigma: Tensor
    alpha_prime: Tensor  # d alpha / dt
    sigma_prime: Tensor  # d sigma / dt
    logsnr: Tensor  # log(alpha^2 / sigma^2)


class NoiseSchedule:
    """Base class: subclasses define :meth:`alpha_sigma` and :meth:`derivatives`; :meth:`logsnr` and
    :meth:`__call__` follow.

    The continuous schedules return values in t's floating dtype. For float16 and bfloat16 t (autocast) the cosine
    and log-SNR schedules compute in float32 and round to t's dtype at the end; :meth:`logsnr` computes in float64."""

    def alpha_sigma(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def derivatives(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        """(d alpha / dt, d sigma / dt) at t."""
        raise NotImplementedError

    def logsnr(self, t: Tensor) -> Tensor:
        """log(alpha^2 / sigma^2) at t, as 2 (log|alpha| - log|sigma|): the squares would overflow float16 above a
        log-SNR of 11.1, float32 above 88 (and underflow float64 below alpha, sigma ~ 1e-162). Computed in float64
        and rounded to t's dtype once: a float32 sigma below 1e-38 (t that small) is subnormal, with few digits left
        (t = 1.4e-45 gave 205.17 for 205.65)."""
        t = as_times(t, type(self).__name__)
        floating = t.is_floating_point()  # (other t go to the schedule as they are, which refuses or converts them)
        alpha, sigma = self.alpha_sigma(t.to(torch.float64) if floating else t)
        logsnr = 2 * (alpha.abs().log() - sigma.abs().log())
        return logsnr.to(t.dtype) if floating else logsnr

    def sample_t(self, batch_size: int, *, device=None, generator: Optional[torch.Generator] = None) -> Tensor:
        """Times drawn uniformly, as the authors train (continuous: U(0, 1); discrete: uniform integers)."""
        return torch.rand(batch_size, device=device, generator=generator)

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __call__(self, t: Tensor) -> ScheduleValues:
        alpha, sigma = self.alpha_sigma(t)
        alpha_prime, sigma_prime = self.derivatives(t)
        return ScheduleValues(alpha, sigma, alpha_prime, sigma_prime, self.logsnr(t))


def checked_on_host(t: Tensor) -> bool:
    """Whether a schedule checks the values of `t` on the host: on the CPU, in eager mode, outside torch.func
    transforms. On an accelerator reading them would synchronise every step, torch.compile cannot branch on them
    (they are data, not shapes), and under vmap they are batched (no single value to read)."""
    return (t.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch._C._are_functorch_transforms_active())


def as_tensor(value, what: str, where: str, kind: str = "a tensor (or numbers)", **kwargs) -> Tensor:
    """`value` as a tensor (numbers and sequences of them are converted; torch.as_tensor's keyword arguments);
    TypeError saying `what` must be `kind` for anything else (a string, None, ...)."""
    try:
        return torch.as_tensor(value, **kwargs)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{where}: {what} must be {kind}, got {type(value).__name__} {value!r}") from err


def as_times(t, name: str) -> Tensor:
    """t as a tensor (as_tensor), for the schedule `name`."""
    return as_tensor(t, "timesteps", name)


def as_real(value, name: str, where: str) -> float:
    """A real-number argument (int, float, numpy scalar, one-element tensor) as a float; TypeError naming it for
    anything else (a string, None, a bool, a tensor of several values). Ranges are the caller's to check."""
    if not isinstance(value, (str, bytes, bool)):
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(f"{where}: '{name}' must be a real number, got {type(value).__name__} {value!r}")


def require_inside(t: Tensor, inside: Tensor, name: str, expected: str) -> None:
    """ValueError naming the range of the values of t outside `inside` (where checked_on_host). NaN is let through,
    as off the host: it gives NaN values, which the loss shows."""
    outside = ~inside & ~t.isnan()
    if bool(outside.any()):
        values = t.detach()[outside]
        raise ValueError(f"{name}: {expected}, got values in [{values.min().item()}, {values.max().item()}] "
                         "outside it")


# Dtypes the continuous schedules compute in float32 and round to at the end (torch's "opmath" rule): in bfloat16,
# pi / 2 itself is 1.5703, so cos(pi t / 2) at t = 1 was 4.8e-4, not 0.
_WIDENED = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _WIDENED else dtype


def _float_times(t, name: str) -> Tensor:
    """t as a floating tensor in [0, 1]: ValueError outside where checked_on_host; elsewhere a time outside gives
    NaN values instead of the formula's silently wrong ones (e.g. sigma < 0)."""
    t = as_times(t, name)
    if not t.is_floating_point():
        raise TypeError(f"{name}: t must be floating point in [0, 1], got {t.dtype}")
    inside = (t >= 0) & (t <= 1)
    if not checked_on_host(t):
        return torch.where(inside | t.isnan(), t, torch.nan)
    require_inside(t, inside, name, "t must lie in [0, 1] (0: clean data, 1: pure noise)")
    return t


class ContinuousCosine(NoiseSchedule):
    """alpha = cos(pi t / 2), sigma = sin(pi t / 2) for t in [0, 1], in t's dtype. alpha is evaluated as
    sin(pi (1 - t) / 2): exactly 0 at t = 1 (pure noise, SNR 0) in every dtype, and accurate to the dtype near it,
    where cos of the rounded pi t / 2 is not (4 % off at float32 t = 1 - 1e-7)."""

    def _values(self, t):
        t = _float_times(t, "ContinuousCosine")
        wide = t.to(_compute_dtype(t.dtype))
        return torch.sin((1 - wide) * (math.pi / 2)), torch.sin(wide * (math.pi / 2)), t.dtype

    def alpha_sigma(self, t):
        alpha, sigma, dtype = self._values(t)
        return alpha.to(dtype), sigma.to(dtype)

    def derivatives(self, t):
        alpha, sigma, dtype = self._values(t)
        return (-(math.pi / 2) * sigma).to(dtype), ((math.pi / 2) * alpha).to(dtype)


class LinearLogSNR(NoiseSchedule):
    """log-SNR linear in t from ``logsnr_max`` (t = 0) to ``logsnr_min`` (t = 1), with alpha = sigmoid(lambda / 2)
    and sigma = sigmoid(-lambda / 2): log(alpha^2 / sigma^2) = lambda exactly, and alpha + sigma = 1. Both ends must
    be finite, with logsnr_min < logsnr_max."""

    def __init__(self, logsnr_max: float = 10.0, logsnr_min: float = -10.0):
        hi, lo = as_real(logsnr_max, "logsnr_max", "LinearLogSNR"), as_real(logsnr_min, "logsnr_min", "LinearLogSNR")
        # (infinite ends made every alpha and sigma NaN)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"LinearLogSNR: 'logsnr_max' and 'logsnr_min' must be finite with logsnr_min < "
                             f"logsnr_max, got logsnr_max={logsnr_max}, logsnr_min={logsnr_min}")
        self.logsnr_max, self.logsnr_min = hi, lo

    def _values(self, t):
        """(lambda, alpha, sigma) in the compute dtype, and t's dtype."""
        t = _float_times(t, "LinearLogSNR")
        lam = self.logsnr_max + t.to(_compute_dtype(t.dtype)) * (self.logsnr_min - self.logsnr_max)
        return lam, torch.sigmoid(lam / 2), torch.sigmoid(-lam / 2), t.dtype

    def logsnr(self, t):
        lam, _, _, dtype = self._values(t)
        return lam.to(dtype)

    def alpha_sigma(self, t):
        _, alpha, sigma, dtype = self._values(t)
        return alpha.to(dtype), sigma.to(dtype)

    def derivatives(self, t):
        _, alpha, sigma, dtype = self._values(t)
        # d sigmoid(lambda / 2) / dt = sigmoid' * lambda' / 2, sigmoid' = alpha * sigma
        alpha_prime = ((self.logsnr_min - self.logsnr_max) / 2 * alpha * sigma).to(dtype)
        return alpha_prime, -alpha_prime

    def __repr__(self):
        return f"LinearLogSNR(logsnr_max={self.logsnr_max}, logsnr_min={self.logsnr_min})"


class LinearFlow(NoiseSchedule):
    """The rectified-flow path alpha = 1 - t, sigma = t (alpha' = -1, sigma' = 1)."""

    def alpha_sigma(self, t):
        t = _float_times(t, "LinearFlow")
        return 1 - t, t.clone()

    def derivatives(self, t):
        t = _float_times(t, "LinearFlow")
        return torch.full_like(t, -1.0), torch.ones_like(t)


def _check_num_steps(num_steps, where: str) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise TypeError(f"{where}: 'num_steps' must be an int, got {type(num_steps).__name__}")
    if num_steps < 2:
        raise ValueError(f"{where}: 'num_steps' must be >= 2 (a schedule needs two timesteps), got {num_steps}")


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Ho et al.'s linear betas (float64). As in the authors' code, the end points scale by 1000 / num_steps so
    other step counts keep the same overall noise; so num_steps must be at least 1000 * beta_end (20 by default)
    for the scaled betas to stay in [0, 1]. Needs 0 <= beta_start <= beta_end and beta_end > 0."""
    _check_num_steps(num_steps, "linear_betas")
    beta_start = as_real(beta_start, "beta_start", "linear_betas")
    beta_end = as_real(beta_end, "beta_end", "linear_betas")
    # (all-zero betas would give a schedule without noise: an infinite SNR at every timestep)
    if not (0 <= beta_start <= beta_end and beta_end > 0):
        raise ValueError(f"linear_betas: need 0 <= 'beta_start' <= 'beta_end' and beta_end > 0, got beta_start="
                         f"{beta_start}, beta_end={beta_end}")
    scale = 1000 / num_steps
    if scale * beta_end > 1:
        raise ValueError(f"linear_betas: 'num_steps'={num_steps} scales beta_end to {scale * beta_end:g} > 1 (the "
                         f"end points scale by 1000 / num_steps); use num_steps >= {math.ceil(1000 * beta_end)}")
    return torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol and Dhariwal's cosine betas (float64): alpha_bar(u) = cos((u + s) / (1 + s) * pi / 2)^2,
    beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta), for a finite offset s >= 0 and max_beta
    in (0, 1] (1: zero terminal SNR)."""
    _check_num_steps(num_steps, "cosine_betas")
    s, max_beta = as_real(s, "s", "cosine_betas"), as_real(max_beta, "max_beta", "cosine_betas")
    # s < 0 makes alpha_bar rise at first (negative betas; s = -1 divides by 0), NaN / inf make every beta NaN
    if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"cosine_betas: the offset 's' must be finite and >= 0 (Nichol and Dhariwal: 0.008), got {s}")
    if not 0 < max_beta <= 1:
        raise ValueError(f"cosine_betas: 'max_beta' must lie in (0, 1] (Nichol and Dhariwal: 0.999), got {max_beta}")
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    alpha_bar = torch.cos((u + s) / (1 + s) * math.pi / 2).square()
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def _float64_table(values, name: str, where: str) -> Tensor:
    """A schedule's table (a tensor or a sequence of numbers) as a flat float64 CPU tensor; TypeError naming it for
    anything else (a string, None, complex numbers)."""
    table = as_tensor(values, f"'{name}'", where, "a tensor (or a sequence) of real numbers")
    if table.is_complex() or table.dtype == torch.bool:
        raise TypeError(f"{where}: '{name}' must hold real numbers, got {table.dtype}")
    return table.detach().to("cpu", torch.float64).flatten()


class DiscreteVP(NoiseSchedule):
    """Variance-preserving schedule over ``num_steps`` integer timesteps, from its ``alphas_cumprod`` table.

    ``t`` must be a tensor of integer timesteps, of any integer dtype (uint8 included: it indexes, it is not a mask).
    Values come out in torch's default dtype (the table is kept in float64). A timestep outside ``[0, num_steps)``
    raises ValueError on the CPU in eager mode; elsewhere (an accelerator, torch.compile, torch.func) it gives NaN
    values. The time derivatives are taken with respect to the timestep index, by central differences of the
    table (one-sided at both ends), as a discrete schedule has no continuous time.
    """

    def __init__(self, alphas_cumprod):
        table = _float64_table(alphas_cumprod, "alphas_cumprod", "DiscreteVP")
        if table.numel() < 2:
            raise ValueError("DiscreteVP: alphas_cumprod needs at least 2 timesteps")
        if not bool(((table >= 0) & (table <= 1)).all()):
            raise ValueError("DiscreteVP: alphas_cumprod must lie in [0, 1]")
        self.alphas_cumprod = table
        alpha, sigma = table.sqrt(), (1 - table).sqrt()
        self._tables = {"alpha": alpha, "sigma": sigma, "alpha_prime": torch.gradient(alpha)[0],
                        "sigma_prime": torch.gradient(sigma)[0], "logsnr": torch.log(table / (1 - table))}
        self._on_device = {}

    @classmethod
    def from_betas(cls, betas) -> "DiscreteVP":
        betas = _float64_table(betas, "betas", "DiscreteVP.from_betas")
        if not bool(((betas >= 0) & (betas <= 1)).all()):
            raise ValueError("DiscreteVP.from_betas: betas must lie in [0, 1]")
        return cls(torch.cumprod(1 - betas, dim=0))

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "DiscreteVP":
        return cls.from_betas(linear_betas(num_steps, beta_start, beta_end))

    @classmethod
    def cosine(cls, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "DiscreteVP":
        return cls.from_betas(cosine_betas(num_steps, s, max_beta))

    @property
    def num_steps(self) -> int:
        return self.alphas_cumprod.numel()

    def _lookup(self, name: str, t) -> Tensor:
        t = as_times(t, "DiscreteVP")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"DiscreteVP: t must be a tensor of integer timesteps, got {t.dtype}")
        # int64 indices whatever the integer dtype: uint8 would index as a mask, int8 / int16 not at all
        t = t.long()
        dtype = torch.get_default_dtype()
        key = (name, t.device, dtype)
        if key not in self._on_device:
            self._on_device[key] = self._tables[name].to(device=t.device, dtype=dtype)
        table = self._on_device[key]
        inside = (t >= 0) & (t < self.num_steps)
        if checked_on_host(t):
            require_inside(t, inside, "DiscreteVP", f"timesteps must lie in [0, {self.num_steps})")
            return table[t]
        # unchecked: an index outside gives NaN rather than an indexing kernel's failure (a device-side assert)
        return torch.where(inside, table[t.clamp(0, self.num_steps - 1)], torch.nan)

    def alpha_sigma(self, t):
        return self._lookup("alpha", t), self._lookup("sigma", t)

    def derivatives(self, t):
        return self._lookup("alpha_prime", t), self._lookup("sigma_prime", t)

    def logsnr(self, t):
        return self._lookup("logsnr", t)

    def sample_t(self, batch_size, *, device=None, generator=None):
        return torch.randint(0, self.num_steps, (batch_size,), device=device, generator=generator)

    def __repr__(self):
        return f"DiscreteVP(num_steps={self.num_steps})"


def _per_sample(value, like: Tensor, name: str) -> Tensor:
    """A [B] tensor (or a scalar) as [B, 1, ...] in like's dtype and device, to broadcast over samples."""
    value = torch.as_tensor(value, device=like.device)
    if value.dim() == 0:
        return value.to(like.dtype)
    if value.dim() != 1 or value.shape[0] != like.shape[0]:
        raise ValueError(f"{name} must be a scalar or have shape [{like.shape[0]}], got {tuple(value.shape)}")
    return value.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def _check_samples(x0, noise, where: str) -> None:
    if not isinstance(x0, Tensor) or not isinstance(noise, Tensor):
        raise TypeError(f"{where}: x0 and noise must be tensors, got {type(x0).__name__}, {type(noise).__name__}")
    if x0.dim() == 0:
        raise ValueError(f"{where}: x0 must have a batch dimension [B, ...], got a 0-dim tensor; use x0.reshape(1)")
    if x0.shape != noise.shape:
        raise ValueError(f"{where}: x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have one shape")


def make_noisy(x0: Tensor, noise: Tensor, alpha, sigma) -> Tensor:
    """x_t = alpha * x0 + sigma * noise, with x0 and noise [B, ...], alpha, sigma of shape [B] (or scalars)."""
    _check_samples(x0, noise, "make_noisy")
    return _per_sample(alpha, x0, "alpha") * x0 + _per_sample(sigma, x0, "sigma") * noise


def make_target(x0: Tensor, noise: Tensor, alpha, sigma, prediction: str, alpha_prime=None,
                sigma_prime=None) -> Tensor:
    """The regression target y = c_x * x0 + c_e * noise of a prediction type:
    eps -> noise, x0 -> x0, v -> alpha * noise - sigma * x0, flow -> alpha' * x0 + sigma' * noise (alpha' = -1,
    sigma' = 1, the linear path, unless given)."""
    _check_samples(x0, noise, "make_target")
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return _per_sample(alpha, x0, "alpha") * noise - _per_sample(sigma, x0, "sigma") * x0
    if prediction == "flow":
        if (alpha_prime is None) != (sigma_prime is None):
            raise ValueError("make_target: pass both alpha_prime and sigma_prime, or neither (linear path)")
        if alpha_prime is None:
            return noise - x0
        return _per_sample(alpha_prime, x0, "alpha_prime") * x0 + _per_sample(sigma_prime, x0, "sigma_prime") * noise
    raise ValueError(f"make_target: unknown prediction {prediction!r}; use one of {PREDICTIONS}")


# re-exported last: the adapter builds on the classes above
from .diffusers_schedules import FlowMatchTimesteps, from_diffusers  # noqa: E402
