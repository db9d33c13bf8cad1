"""Every (method, seed) run of the demo, in this process or spread over worker processes.

A run is fully determined by its method and seed (initial weights, batches, times, noise and the sampler's noise
all come from the seed), so the runs can go to any process in any order; the measuring instruments (data split,
scoring classifier, held-out probe, NTK probe inputs) are built once and shared by every run.
"""

import heapq
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .data import ImageData
from .metrics import Scorer
from .model import UNet
from .ntk import ntk_spectrum_or_none
from .process import NoiseProcess
from .sample import ddim_sample
from .train import HeldOutProbe, Method, TrainConfig, train
from .weighting import make_loss

FRACTIONS = (0.25, 0.5, 1.0)  # where along training the samples are scored (convergence curves)


@dataclass
class Context:
    """What every run shares: data, instruments and the settings from the command line."""
    data: ImageData
    process: NoiseProcess
    probe: HeldOutProbe
    scorer: Scorer
    ntk_inputs: Optional[Tuple[torch.Tensor, torch.Tensor]]  # None: no NTK spectrum at the end
    config: TrainConfig  # its seed is replaced per run
    channels: int
    num_samples: int
    sample_steps: int
    progress: bool = False

    def model_factory(self) -> UNet:
        return UNet(channels=self.channels)


def checkpoint_steps(steps: int) -> List[int]:
    """The training steps at FRACTIONS of ``steps`` (at least step 1)."""
    return [max(1, int(round(f * steps))) for f in FRACTIONS]


def run_one(ctx: Context, method: Method, seed: int, keep_samples: bool, with_ntk: bool) -> Dict:
    """Train ``method`` with ``seed``, score its samples at every checkpoint; plain data back (no model)."""
    cpu_start = time.process_time()
    config = TrainConfig(**{**ctx.config.__dict__, "seed": seed})
    image_shape = tuple(ctx.data.train_x.shape[1:])
    samples = {}

    def score(model):
        # the same sampler noise at every checkpoint of a seed: the curve moves only because the model does
        images = ddim_sample(model, ctx.process, ctx.num_samples, image_shape, ctx.sample_steps, seed=seed + 5,
                             device=config.device)
        samples["last"] = images
        return {"quality": ctx.scorer.score(images)}

    result = train(method, make_loss(method.weighting), ctx.model_factory, ctx.data, ctx.process, config,
                   ctx.probe, ctx.progress, checkpoints=checkpoint_steps(config.steps), on_checkpoint=score)
    mse_at = dict(zip(result.eval_steps, result.eval_mse))
    for c in result.checkpoints:
        c["heldout_mse"] = mse_at[c["step"]]
    step_s = sorted(result.step_times[min(5, len(result.step_times) - 1):])
    return {
        "name": method.name, "weighting": method.weighting, "optimizer": method.optimizer, "lr": method.lr,
        "seed": seed, "losses": result.losses,
        "final_loss": sum(result.losses[-50:]) / len(result.losses[-50:]),
        "eval_steps": result.eval_steps, "eval_mse": result.eval_mse, "checkpoints": result.checkpoints,
        "quality": result.checkpoints[-1]["quality"], "heldout_mse": result.eval_mse[-1],
        "statistics": result.statistics, "step_ms_median": 1000 * step_s[len(step_s) // 2],
        "wall_s": result.wall_s, "samples": samples["last"] if keep_samples else None,
        "ntk_end": ntk_spectrum_or_none(result.model, ctx.ntk_inputs)[0] if with_ntk else None,
        "cpu_s": time.process_time() - cpu_start,  # training, scoring, NTK: this run's whole cost
    }


_WORKER_CONTEXT: Optional[Context] = None


def _init_worker(ctx: Context) -> None:
    global _WORKER_CONTEXT
    torch.set_num_threads(1)  # one process per core
    _WORKER_CONTEXT = ctx


def _run_in_worker(method: Method, seed: int, keep_samples: bool, with_ntk: bool) -> Dict:
    return run_one(_WORKER_CONTEXT, method, seed, keep_samples, with_ntk)


def run_all(ctx: Context, methods: Sequence[Method], seeds: Sequence[int], workers: int,
            log: Callable[[str], None]) -> Dict[str, List[Dict]]:
    """Every method with every seed; ``{method name: [run per seed, in seed order]}``. The first seed keeps its
    samples (figures) and its NTK spectrum (one per method is enough for the report)."""
    jobs = [(m, s, s == seeds[0], s == seeds[0]) for s in seeds for m in methods]
    runs: Dict[str, List[Dict]] = {m.name: [] for m in methods}

    def done(run: Dict) -> None:
        runs[run["name"]].append(run)
        q = run["quality"]
        log(f"{run['name']} seed {run['seed']}: FD {q['fd']:.2f}, held-out eps-MSE {run['heldout_mse']:.4f} "
            f"({run['wall_s']:.0f} s)")

    if workers <= 1:
        for job in jobs:
            done(run_one(ctx, *job))
    else:
        # spawn, not fork: a forked copy of a process whose OpenMP threads have run can hang
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(ctx,)) as pool:
            for run in pool.map(_run_in_worker, *zip(*jobs)):
                done(run)
    for name in runs:
        runs[name].sort(key=lambda r: r["seed"])
    return runs


def schedule_seconds(durations: Sequence[float], workers: int) -> float:
    """When the last of ``durations`` ends if each goes, in order, to the first free of ``workers`` (as the
    pool hands out the runs): with the runs' CPU seconds, the runs' wall time on that many idle cores."""
    free_at = [0.0] * max(1, workers)
    for d in durations:
        heapq.heappush(free_at, heapq.heappop(free_at) + d)
    return max(free_at)


def idle_cores() -> Optional[int]:
    """Cores not kept busy by other processes (1-minute load average, rounded), or None where unknown."""
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    return max(0, int((os.cpu_count() or 1) - busy + 0.5))
