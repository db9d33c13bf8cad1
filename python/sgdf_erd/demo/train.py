"""One training run of the denoiser: a method (weighting x optimizer) under a shared seed and budget.

Every run starts from the same initial weights and sees the same stream of images, times and noise, so the
runs differ only in the loss weighting and the optimizer.
"""

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .data import ImageData
from .methods import OPTIMIZERS
from .process import NoiseProcess


@dataclass(frozen=True)
class Method:
    weighting: str   # "erd", "constant", "min_snr" (anything the loss module takes)
    optimizer: str   # a key of methods.OPTIMIZERS
    lr: float

    @property
    def name(self) -> str:
        return f"{self.weighting}+{self.optimizer}"


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"
    grad_clip: float = 1.0    # the same clipping for every method
    ema_decay: float = 0.995  # sampling uses an EMA of the weights, as diffusion trainers do
    eval_points: int = 4      # held-out evaluations along the run (training curves), evenly spaced
    eval_repeats: int = 2     # noise levels per held-out image in those evaluations


@dataclass
class TrainResult:
    method: Method
    model: nn.Module                   # the EMA weights, in eval mode
    losses: List[float]                # the method's own (weighted) training loss per step
    step_times: List[float]            # seconds per full step (forward, backward, clip, optimizer, EMA)
    eval_steps: List[int]
    eval_mse: List[float]              # unweighted eps-MSE on held-out images, comparable across methods
    statistics: Dict[str, list] = field(default_factory=dict)  # loss module's EMA per-bin statistics
    wall_s: float = 0.0
    checkpoints: List[dict] = field(default_factory=list)  # on_checkpoint's results, with their "step"


def make_optimizer(method: Method, params) -> torch.optim.Optimizer:
    if method.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {method.optimizer!r}; use one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[method.optimizer].make(params, method.lr)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HeldOutProbe:
    """Unweighted eps-MSE on held-out images at fixed, stratified times and fixed noise (same for every run)."""

    def __init__(self, data: ImageData, process: NoiseProcess, repeats: int, seed: int, device: torch.device):
        gen = torch.Generator().manual_seed(seed + 7919)
        x0 = data.test_x.repeat(repeats, 1, 1, 1)
        n = len(x0)
        u = (torch.arange(n, dtype=torch.float32) + torch.rand(n, generator=gen)) / n  # stratified in [0, 1)
        t = process.t_min + (process.t_max - process.t_min) * u[torch.randperm(n, generator=gen)]
        noise = torch.randn(x0.shape, generator=gen)
        x_t, target, _, _, logsnr = process.corrupt(x0, t, noise)
        self.x_t, self.target, self.logsnr = x_t.to(device), target.to(device), logsnr.to(device)

    @torch.no_grad()
    def __call__(self, model: nn.Module, chunk: int = 1024) -> float:
        total = 0.0
        for i in range(0, len(self.x_t), chunk):
            out = model(self.x_t[i:i + chunk], self.logsnr[i:i + chunk])
            total += float((out - self.target[i:i + chunk]).pow(2).sum())
        return total / self.target.numel()


def train(method: Method, loss_fn: nn.Module, model_factory: Callable[[], nn.Module], data: ImageData,
          process: NoiseProcess, config: TrainConfig, probe: Optional[HeldOutProbe] = None,
          progress: bool = True, checkpoints: Sequence[int] = (),
          on_checkpoint: Optional[Callable[[nn.Module], dict]] = None) -> TrainResult:
    """Train a fresh model (seeded by ``config.seed``) with ``method`` and the weighting module ``loss_fn``.

    After each step in ``checkpoints`` (and its held-out probe), ``on_checkpoint(ema_model)`` is called and its
    dict, with the step added, appended to ``result.checkpoints`` (the model is in eval mode; do not modify it)."""
    from tqdm.auto import tqdm

    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = model_factory().to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    optimizer = make_optimizer(method, params)
    loss_fn = loss_fn.to(device)
    # one generator for the data stream: identical batches, times and noise for every method
    gen = torch.Generator().manual_seed(config.seed + 1)
    train_x = data.train_x.to(device)
    eval_at = set(int(round(s)) for s in torch.linspace(0, config.steps, config.eval_points + 1).tolist())
    checkpoints = set(checkpoints)
    eval_at |= checkpoints  # the held-out probe also runs at every checkpoint

    result = TrainResult(method, ema, [], [], [], [])
    start = time.perf_counter()
    bar = tqdm(range(1, config.steps + 1), desc=f"{method.name:>16}", disable=not progress, leave=True,
               dynamic_ncols=True, mininterval=0.5)
    if probe is not None and 0 in eval_at:
        result.eval_steps.append(0)
        result.eval_mse.append(probe(ema))
    for step in bar:
        idx = torch.randint(len(train_x), (config.batch_size,), generator=gen).to(device)
        t = process.sample_t(config.batch_size, gen).to(device)
        noise = torch.randn((config.batch_size,) + tuple(train_x.shape[1:]), generator=gen).to(device)
        _sync(device)
        t0 = time.perf_counter()
        x_t, target, alpha, sigma, logsnr = process.corrupt(train_x[idx], t, noise)
        loss = loss_fn(model(x_t, logsnr), target, alpha, sigma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        decay = min(config.ema_decay, (1.0 + step) / (10.0 + step))  # short warm-up of the average
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        loss_value = float(loss.detach())  # also synchronises on CUDA
        result.step_times.append(time.perf_counter() - t0)
        result.losses.append(loss_value)
        if not torch.isfinite(torch.tensor(loss_value)):
            bar.close()
            raise FloatingPointError(f"{method.name}: loss became {loss_value} at step {step}; lower the "
                                     f"learning rate (now {method.lr})")
        if probe is not None and step in eval_at:
            result.eval_steps.append(step)
            result.eval_mse.append(probe(ema))
        if on_checkpoint is not None and step in checkpoints:
            result.checkpoints.append({"step": step, **on_checkpoint(ema)})
        if step % 10 == 0 or step == config.steps:
            bar.set_postfix(loss=f"{sum(result.losses[-10:]) / len(result.losses[-10:]):.4f}",
                            step_ms=f"{1000 * result.step_times[-1]:.1f}", refresh=False)
    bar.close()
    result.wall_s = time.perf_counter() - start
    result.statistics = {k: v.detach().cpu().tolist() for k, v in loss_fn.statistics(ema=True).items()}
    return result
