"""ERDLoss: the recoverability-weighted diffusion loss, computed by one fused kernel that also reports which
noise levels dominate the loss (per log-SNR bin statistics)."""

import math
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._native import require
from ._autograd import loss_forward
from .schedules import NoiseSchedule, as_real, from_diffusers
from .weights import check_weighting, prediction_name

__all__ = ["ERDLoss", "erd_loss"]

# ERDLoss's buffers that stay float64 when the module is cast to another dtype
_FLOAT64_BUFFERS = ("bin_edges", "batch_sums", "running_sums")

WeightFn = Callable[[Tensor, Tensor], Tensor]

# Most statistics bins (the kernels' bound, csrc/erd/erd_checks.h): a log-SNR histogram needs far fewer, and every
# step allocates and reduces [4, num_bins] float64 sums.
MAX_NUM_BINS = 1 << 16


def _check_bins(num_bins, logsnr_range, where: str) -> Tuple[float, float]:
    """TypeError/ValueError for a bad num_bins or logsnr_range; returns the range as two floats."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, int):
        raise TypeError(f"{where}: 'num_bins' must be an int, got {type(num_bins).__name__}")
    if not 1 <= num_bins <= MAX_NUM_BINS:
        raise ValueError(f"{where}: 'num_bins' must lie in [1, {MAX_NUM_BINS}] (the statistics form a log-SNR "
                         f"histogram of [4, num_bins] float64 sums per step), got {num_bins}")
    return _check_range(logsnr_range, where)


def _check_range(logsnr_range, where: str) -> Tuple[float, float]:
    """ValueError for a logsnr_range that is not two finite numbers (min, max) with min < max and a finite width;
    returns it as two floats."""
    try:
        lo, hi = (float(v) for v in logsnr_range)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: 'logsnr_range' must be two numbers (min, max), got {logsnr_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and math.isfinite(hi - lo)):
        raise ValueError(f"{where}: 'logsnr_range' must be finite with min < max (and max - min finite), got "
                         f"{logsnr_range!r}")
    return lo, hi


def logsnr_bin_edges(num_bins: int, logsnr_range: Tuple[float, float]) -> Tensor:
    """The num_bins + 1 edges (float64) of the statistics' uniform log-SNR bins: bin b holds edge b <= log-SNR <
    edge b + 1 (values outside the range fall into the end bins). The interior edges are the doubles the kernels
    compare with (csrc/erd/erd_math.h, logsnr_bin_edge), so a log-SNR on an edge lands in the bin the edges say."""
    return _bin_edges(num_bins, *_check_bins(num_bins, logsnr_range, "logsnr_bin_edges"))


def _bin_edges(num_bins: int, lo: float, hi: float) -> Tensor:
    """logsnr_bin_edges for arguments its callers have checked (_check_bins)."""
    edges = lo + (hi - lo) * torch.arange(num_bins + 1, dtype=torch.float64) / num_bins
    edges[-1] = hi
    return edges


def _promote(output: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
    """Casts output and target to their promoted dtype, as F.mse_loss does (e.g. bf16 output, fp32 target)."""
    if output.dtype == target.dtype:
        return output, target
    dtype = torch.promote_types(output.dtype, target.dtype)
    return output.to(dtype), target.to(dtype)


def erd_loss(output: Tensor, target: Tensor, alpha: Tensor, sigma: Tensor, prediction: str = "eps",
             weighting: Union[str, WeightFn] = "erd", *, alpha_prime: Optional[Tensor] = None,
             sigma_prime: Optional[Tensor] = None, k: float = 5.0, gamma: float = 1.0, num_bins: int = 16,
             logsnr_range: Tuple[float, float] = (-10.0, 10.0)):
    """Functional form of :class:`ERDLoss` without running statistics.

    Returns ``(loss, mse, weight, bin_sums)``: the batch loss (differentiable, output's dtype), the per-sample raw
    MSE and weights ([B], float32; float64 for float64 operands) and this batch's per-bin sums ([4, num_bins]
    float64: count, sum of MSE, sum of MSE^2, sum of weighted loss).

    Differentiable in output and target to any order, under autograd, torch.func (``grad``, ``vjp``, ``jvp``,
    ``hessian``, and ``vmap``, e.g. per-sample gradients ``vmap(grad(f))``: one kernel call per vmapped slice) and
    torch.compile. ``prediction`` also takes diffusers' names ("epsilon", "sample", "v_prediction",
    "flow_prediction").
    """
    if not isinstance(output, Tensor) or not isinstance(target, Tensor):
        raise TypeError("erd_loss: output and target must be tensors")
    for name, value in (("alpha", alpha), ("sigma", sigma), ("alpha_prime", alpha_prime), ("sigma_prime", sigma_prime)):
        if not (isinstance(value, Tensor) or (value is None and name.endswith("_prime"))):
            raise TypeError(f"erd_loss: '{name}' must be a tensor with one value per sample (shape [B]), got "
                            f"{type(value).__name__}; e.g. torch.full((batch,), value)")
    prediction = prediction_name(prediction)
    lo, hi = _check_bins(num_bins, logsnr_range, "erd_loss")
    k, gamma = as_real(k, "k", "erd_loss"), as_real(gamma, "gamma", "erd_loss")
    output, target = _promote(output, target)
    require(output.device, "sgdf_erd ERD loss")
    weights = None
    if callable(weighting):
        weights = _call_weight_fn(weighting, alpha, sigma, output)
        weighting = "given"
    else:
        check_weighting(prediction, weighting)
    # the op with its derivative (output and target; weights are constants), erd/_autograd.py
    return loss_forward(output, target, alpha, sigma, alpha_prime, sigma_prime, weights, prediction, weighting,
                        k, gamma, num_bins, lo, hi)


def _call_weight_fn(fn: WeightFn, alpha: Tensor, sigma: Tensor, output: Tensor) -> Tensor:
    weights = fn(alpha, sigma)
    if not isinstance(weights, Tensor):
        try:
            weights = torch.as_tensor(weights, dtype=torch.float32, device=output.device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"the weighting callable must return a tensor (or numbers) of one weight per sample, "
                            f"got {type(weights).__name__} {weights!r}") from err
    batch = output.shape[0] if output.dim() else 0
    if weights.shape != (batch,):
        raise ValueError(f"the weighting callable must return one weight per sample, shape [{batch}], got "
                         f"{tuple(weights.shape)}")
    return weights.detach()


class ERDLoss(nn.Module):
    r"""Recoverability-weighted diffusion loss (ERD) with per-noise-level diagnostics.

    ``loss = loss_fn(output, target, alpha, sigma)`` returns ``mean_i w_i * mean((target_i - output_i)^2)`` over
    the batch, where alpha, sigma (shape [B]) define each sample's corruption x_t = alpha x0 + sigma eps. For
    ``prediction="flow"`` pass ``alpha_prime, sigma_prime`` too unless the path is the linear one. With a
    ``schedule``, ``loss_fn(output, target, timesteps=t)`` looks alpha, sigma (and for flow their derivatives) up
    from the batch's timesteps instead.

    Args:
        prediction: what the network predicts, "eps", "x0", "v" or "flow", or diffusers' name of it
            (``scheduler.config.prediction_type``: "epsilon", "sample", "v_prediction", "flow_prediction").
        weighting: "erd" (see :func:`sgdf_erd.erd.erd_weight`), "constant", "min_snr" (parameter k), "p2" (k,
            p2_gamma), "debias", or a callable ``(alpha, sigma) -> weights [B]`` (treated as constants).
            min_snr is defined for eps, x0 and v; p2 and debias for eps only.
        num_bins, logsnr_range: statistics bins (at most 2**16), uniform in log-SNR over the range; samples
            outside fall into the end bins.
        ema_decay: decay of the running statistics.
        sync_statistics: when torch.distributed is initialised, sum the per-bin sums over all ranks (one
            all-reduce of a [4, num_bins] tensor) before using them, so every rank holds the same statistics.
        k, p2_gamma: Min-SNR k / P2 offset k, and the P2 exponent.
        schedule: a :class:`~sgdf_erd.erd.schedules.NoiseSchedule`, or a diffusers scheduler (converted by
            :func:`~sgdf_erd.erd.schedules.from_diffusers`), for ``timesteps=``.

    Statistics (see :meth:`statistics`) are updated in training mode only (as BatchNorm's running stats), outside
    autograd (the per-bin sums carry no gradient), and not by calls inside torch.func transforms (``grad``,
    ``vmap``: e.g. per-sample gradients), which cannot write to the module's buffers. The per-bin sums of a step
    are the count, sum of raw MSE, sum of MSE^2 and sum of weighted loss of the samples in each bin. A sample
    whose MSE, MSE^2 or weighted loss is not finite, or whose log-SNR is undefined, is left out of the statistics,
    so bad values never reach them; the loss itself propagates NaN/inf
    as F.mse_loss does. Sigma must be >= 0: on CPU a negative value raises ValueError; on CUDA the check would
    synchronise each step, so a negative sigma there gives a NaN weight (hence a NaN loss) instead.

    The running statistics are moving averages of the per-bin sums, ``S <- d S + (1 - d) S_step``. Means are
    ratios of those averages (mean MSE = avg sum MSE / avg count), i.e. sample-weighted: an empty bin contributes
    zero to both, so its running mean keeps its value while its running count decays. Counts are bias-corrected
    by 1 / (1 - d^steps); ratios need no correction.
    """

    def __init__(self, prediction: str = "eps", weighting: Union[str, WeightFn] = "erd", num_bins: int = 16,
                 logsnr_range: Tuple[float, float] = (-10.0, 10.0), ema_decay: float = 0.99,
                 sync_statistics: bool = True, k: float = 5.0, p2_gamma: float = 1.0,
                 schedule: Optional[NoiseSchedule] = None):
        super().__init__()
        prediction = prediction_name(prediction)
        if isinstance(weighting, str):
            check_weighting(prediction, weighting)
        elif not callable(weighting):
            raise TypeError(f"weighting must be a name or a callable (alpha, sigma) -> weights, got {weighting!r}")
        lo, hi = _check_bins(num_bins, logsnr_range, "ERDLoss")
        ema_decay = as_real(ema_decay, "ema_decay", "ERDLoss")
        k, p2_gamma = as_real(k, "k", "ERDLoss"), as_real(p2_gamma, "p2_gamma", "ERDLoss")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
        if weighting == "min_snr" and not k > 0:
            raise ValueError(f"min_snr needs k > 0, got {k}")
        if weighting == "p2" and not k >= 0:
            raise ValueError(f"p2 needs k >= 0, got {k}")
        if schedule is not None and not isinstance(schedule, NoiseSchedule):
            schedule = from_diffusers(schedule)  # TypeError naming the supported schedulers
        self.prediction = prediction
        self.schedule = schedule
        self.weighting = weighting
        self.num_bins = num_bins
        self.logsnr_range = (lo, hi)
        self.ema_decay = ema_decay
        self.sync_statistics = bool(sync_statistics)
        self.k = k
        self.p2_gamma = p2_gamma
        # derived from the constructor arguments, so not part of the state_dict
        self.register_buffer("bin_edges", _bin_edges(num_bins, lo, hi), persistent=False)
        self.register_buffer("batch_sums", torch.zeros(4, num_bins, dtype=torch.float64))
        self.register_buffer("running_sums", torch.zeros(4, num_bins, dtype=torch.float64))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, output: Tensor, target: Tensor, alpha: Optional[Tensor] = None, sigma: Optional[Tensor] = None,
                alpha_prime: Optional[Tensor] = None, sigma_prime: Optional[Tensor] = None, *,
                timesteps: Optional[Tensor] = None) -> Tensor:
        if timesteps is not None:
            alpha, sigma, alpha_prime, sigma_prime = self._schedule_values(timesteps, alpha, sigma, alpha_prime,
                                                                           sigma_prime)
        elif alpha is None or sigma is None:
            raise ValueError("ERDLoss: pass alpha and sigma, or timesteps= with ERDLoss(..., schedule=...)")
        loss, _, _, bin_sums = erd_loss(
            output, target, alpha, sigma, self.prediction, self.weighting, alpha_prime=alpha_prime,
            sigma_prime=sigma_prime, k=self.k, gamma=self.p2_gamma, num_bins=self.num_bins,
            logsnr_range=self.logsnr_range)
        # torch.func transforms (grad, vmap) forbid writes to captured buffers, and under vmap each slice has its
        # own sums: the statistics are kept by ordinary calls only
        if self.training and not torch._C._are_functorch_transforms_active():
            self._update_statistics(bin_sums)
        return loss

    def _schedule_values(self, timesteps, *given):
        if self.schedule is None:
            raise ValueError("ERDLoss: timesteps= needs a schedule: ERDLoss(..., schedule=from_diffusers(scheduler)) "
                             "or another sgdf_erd.schedules schedule; or pass alpha and sigma instead")
        if any(v is not None for v in given):
            raise ValueError("ERDLoss: pass timesteps= or alpha, sigma (alpha_prime, sigma_prime), not both")
        alpha, sigma = self.schedule.alpha_sigma(timesteps)
        # flow targets are alpha' x0 + sigma' eps: the schedule's derivatives
        alpha_prime, sigma_prime = self.schedule.derivatives(timesteps) if self.prediction == "flow" else (None, None)
        return alpha, sigma, alpha_prime, sigma_prime

    def _apply(self, fn, recurse=True):
        """As nn.Module's (to, cuda, half, ...), except that the statistics stay float64 sums whatever dtype the
        module is cast to (model.half(), model.to(torch.bfloat16)): only their device follows."""
        kept = {name: self._buffers[name] for name in _FLOAT64_BUFFERS}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = self._buffers[name]
            if after is not None and after.dtype != before.dtype:
                self._buffers[name] = before.to(after.device)
        return self

    def _update_statistics(self, bin_sums: Tensor) -> None:
        # (no torch.no_grad() needed, and it costs more than the update: the buffers and bin_sums need no grad)
        running_sums = self.running_sums
        if running_sums.device != bin_sums.device:
            with torch.inference_mode(False):  # buffers made in inference mode could not be updated outside it
                self.to(bin_sums.device)  # the module has buffers only; keep them beside the data
            running_sums = self.running_sums
        if self.sync_statistics and dist.is_available() and dist.is_initialized():
            dist.all_reduce(bin_sums)  # one packed [4, num_bins] tensor: counts and sums of every bin
        running_sums.lerp_(bin_sums, 1.0 - self.ema_decay)  # d * S + (1 - d) * S_step
        self.num_batches_tracked.add_(1)
        if not torch.compiler.is_compiling() and bin_sums.is_inference():  # a training call under inference_mode
            self.batch_sums.copy_(bin_sums)
        else:
            # a fresh tensor each step: kept rather than copied, and set in the buffer table itself (nn.Module's
            # __setattr__ would register the buffer anew at every step, costing more than the update)
            self._buffers["batch_sums"] = bin_sums

    @torch.no_grad()
    def statistics(self, ema: bool = False) -> Dict[str, Tensor]:
        """Per-bin statistics of the last training step (``ema=False``) or their moving averages (``ema=True``).

        Returns float64 tensors of length num_bins: ``count`` (samples; for ema the average per step),
        ``mse_mean`` and ``mse_var`` (mean and population variance of the raw per-sample MSE), ``loss_mean``
        (mean weighted loss w * mse), ``loss_share`` (the bin's share of the summed weighted loss), and
        ``bin_edges`` (num_bins + 1). Bins without samples give NaN means and variances and share 0; before the
        first step (and after a step whose samples were all left out) counts are 0 and the rest NaN, as is every
        share where the summed loss is 0.
        """
        if ema:
            steps = int(self.num_batches_tracked)
            correction = 1.0 - self.ema_decay**steps if steps > 0 else 1.0
            sums = self.running_sums
        else:
            correction = 1.0
            sums = self.batch_sums
        count, sum_mse, sum_sq, sum_loss = sums.unbind(0)
        mse_mean = sum_mse / count
        return {
            "count": count / correction,
            "mse_mean": mse_mean,
            "mse_var": (sum_sq / count - mse_mean.square()).clamp_min(0),
            "loss_mean": sum_loss / count,
            "loss_share": sum_loss / sum_loss.sum(),
            "bin_edges": self.bin_edges.clone(),
        }

    def reset_statistics(self) -> None:
        self.batch_sums.zero_()
        self.running_sums.zero_()
        self.num_batches_tracked.zero_()

    def extra_repr(self) -> str:
        weighting = self.weighting if isinstance(self.weighting, str) else getattr(self.weighting, "__name__",
                                                                                   "callable")
        return (f"prediction={self.prediction!r}, weighting={weighting!r}, num_bins={self.num_bins}, "
                f"logsnr_range={self.logsnr_range}, ema_decay={self.ema_decay}, k={self.k}, "
                f"p2_gamma={self.p2_gamma}" + ("" if self.schedule is None else f", schedule={self.schedule!r}"))
