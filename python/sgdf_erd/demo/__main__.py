"""``python -m sgdf_erd.demo``: train a small diffusion model on the digits with ERD / constant / Min-SNR
weighting (fused SGDF; AdamW as the reference optimizer), each method with the same seeds; score the samples along
training and write DIR/report.md with means, 95% intervals and paired differences."""

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

from .._platform import cpu_model
from .data import load_data
from .methods import DEFAULT_LR, OPTIMIZERS, split_name
from .metrics import train_scorer
from .model import UNet, count_parameters
from .ntk import PER_BIN, ntk_probe, ntk_spectrum_or_none
from .process import NoiseProcess
from .report import summarize, write_json, write_report
from .runs import FRACTIONS, Context, checkpoint_steps, idle_cores, run_all, schedule_seconds
from .timing import time_optimizer_steps
from .train import HeldOutProbe, Method, TrainConfig
from .weighting import make_loss, weight_curve

SMOKE_STEPS = 100
# Defaults sized to finish in about 3 minutes on an idle 2-core CPU (two worker processes): an estimate from
# CPU seconds says 153 s before the figures (benchmarks/results/demo_cpu/report.md); see the README.
DEFAULT_STEPS = 300
DEFAULT_SEEDS = 3
DEFAULT_NUM_SAMPLES = 400
DEFAULT_SAMPLE_STEPS = 25
LR_NOTE = ("each (weighting, optimizer) pair has its own learning rate, the best of its own 5-point sweep (a factor "
           "2 apart, one sweep seed, 100, not a demo seed) at the default budget, scored by held-out eps-MSE "
           "(benchmarks/results/demo_lr_sweep_cpu.md); neighbouring points there differ by about 1%, within one "
           "seed's noise; SGDF betas (0.9, 0.999), AdamW betas (0.9, 0.999), no weight decay")


def _parse_lrs(text: str) -> dict:
    lrs = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = item.partition("=")
        try:
            lr = float(value)
        except ValueError:
            lr = float("nan")
        if not lr > 0:
            raise SystemExit(f"--lr: {item!r} must look like WEIGHTING+OPTIMIZER=LR with LR > 0 "
                             "(for example erd+sgdf=0.5)")
        lrs[name.strip()] = lr
    return lrs


def _parse_methods(text: str, lr_overrides: dict) -> List[Method]:
    methods = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        weighting, opt = split_name(item)
        if opt not in OPTIMIZERS:
            raise SystemExit(f"--methods: {item!r} must look like WEIGHTING+OPTIMIZER with OPTIMIZER in "
                             f"{sorted(OPTIMIZERS)} (for example erd+sgdf)")
        try:
            make_loss(weighting)  # fail now, not after minutes of training
        except ValueError as exc:
            raise SystemExit(f"--methods: {item!r}: {exc}") from None
        lr = lr_overrides.get(item, DEFAULT_LR.get(item))
        if lr is None:
            raise SystemExit(f"--methods: {item!r} has no default learning rate (those with one: "
                             f"{', '.join(DEFAULT_LR)}); give one with --lr {item}=LR")
        methods.append(Method(weighting, opt, lr))
    if not methods:
        raise SystemExit("--methods: give at least one method, for example erd+sgdf")
    unused = set(lr_overrides) - {m.name for m in methods}
    if unused:
        raise SystemExit(f"--lr: {', '.join(sorted(unused))} not among --methods")
    return methods


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sgdf_erd.demo", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"training steps per run (< {SMOKE_STEPS}: smoke run, numbers meaningless)")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                   help="runs per method, seeds --seed .. --seed + N - 1, the same for every method (paired); "
                        "1: no intervals")
    p.add_argument("--out", default="demo_out", help="output folder for report.md, PNGs and results.json")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0, help="first training seed; also seeds the data split, the "
                                                       "scoring classifier and the held-out probe")
    p.add_argument("--data", default=None, help="folder of images (sub-folders = classes) or a .npy array "
                                                "[N, H, W(, C)]; default: scikit-learn's digits")
    p.add_argument("--size", type=int, default=8, help="image side after resizing (8: digits as they are; 16: "
                                                       "upsampled, about 4x slower)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--methods", default=",".join(DEFAULT_LR), help="comma-separated WEIGHTING+OPTIMIZER list")
    p.add_argument("--lr", default="", help="learning rates replacing the defaults, e.g. erd+sgdf=0.5,"
                                            "constant+adamw=1e-3 (defaults: " + ", ".join(
                                                f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    p.add_argument("--num-samples", type=int, default=DEFAULT_NUM_SAMPLES,
                   help="generated samples per method and checkpoint for scoring")
    p.add_argument("--sample-steps", type=int, default=DEFAULT_SAMPLE_STEPS, help="DDIM steps")
    p.add_argument("--channels", type=int, default=24, help="U-Net base width (24: ~0.28 M parameters)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: torch's default, lowered when "
                                                          "other processes already keep the cores busy")
    p.add_argument("--workers", type=int, default=0, help="processes running the runs side by side (1 torch "
                                                          "thread each); 0: one per idle core; 1: this process")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (for logs)")
    return p


def main(argv: Optional[List[str]] = None) -> Path:
    args = build_parser().parse_args(argv)
    if args.steps < 1:
        raise SystemExit("--steps must be >= 1")
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    if args.num_samples < 10:
        raise SystemExit("--num-samples must be >= 10")
    if args.workers < 0:
        raise SystemExit("--workers must be >= 0 (0: one per idle core)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch; use --device cpu")
    if args.device == "cuda" and args.workers > 1:
        raise SystemExit("--workers: worker processes are for the CPU; use --workers 1 with --device cuda")
    methods = _parse_methods(args.methods, _parse_lrs(args.lr))
    start = time.perf_counter()
    torch.set_num_threads(args.threads if args.threads > 0 else _auto_threads())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seed, args.seed + args.seeds))

    def log(msg: str) -> None:
        print(f"[demo {time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    try:
        data = load_data(args.data, size=args.size, seed=args.seed)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    log(f"data: {data.source}; {len(data.train_x)} train / {len(data.test_x)} held-out")
    process = NoiseProcess()
    smoke = args.steps < SMOKE_STEPS  # a quick check that everything runs: every other stage shrinks too
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed, device=args.device,
                         eval_points=1 if smoke else 4, eval_repeats=1 if smoke else 2)
    model_factory = lambda: UNet(channels=args.channels)  # noqa: E731
    image_shape = tuple(data.train_x.shape[1:])

    if smoke:
        log(f"smoke run (--steps < {SMOKE_STEPS}): tiny classifier, NTK probe and timing; numbers are meaningless")
    scorer = train_scorer(data, seed=args.seed, epochs=2 if smoke else 20)
    log(f"scoring classifier: held-out accuracy {100 * scorer.test_accuracy:.1f}%")
    gen = torch.Generator().manual_seed(args.seed + 3)
    references = [
        {"name": "real training images", "quality": scorer.score(data.train_x)},
        {"name": "Gaussian noise, clipped", "quality": scorer.score(
            torch.randn((args.num_samples,) + image_shape, generator=gen).clamp(-1, 1))},
    ]

    probe = HeldOutProbe(data, process, config.eval_repeats, args.seed, torch.device(args.device))
    ntk_inputs = ntk_probe(data, args.seed, args.device, per_bin=2 if smoke else PER_BIN)
    torch.manual_seed(args.seed)
    ntk_start, ntk_note = ntk_spectrum_or_none(model_factory().to(args.device), ntk_inputs)

    ctx = Context(data, process, probe, scorer, ntk_inputs if ntk_start is not None else None, config,
                  args.channels, args.num_samples, args.sample_steps, progress=not args.no_progress)
    jobs = len(methods) * len(seeds)
    # one worker process per idle core, at most one per run (on CUDA, this process)
    workers = min(args.workers or (idle_cores() or 1 if args.device == "cpu" else 1), jobs)
    workers = max(1, workers)
    log(f"{len(methods)} methods x {len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({seeds[0]}.."
        f"{seeds[-1]}), {args.steps} steps each; " + (f"{workers} worker processes" if workers > 1
                                                      else f"in this process, {torch.get_num_threads()} threads"))
    runs_by_method = run_all(ctx, methods, seeds, workers, log)

    log("timing optimizer steps (fused vs unfused)")
    timing = time_optimizer_steps(model_factory, args.device, rounds=1 if smoke else 5,
                                  steps_per_round=2 if smoke else 20, seed=args.seed)

    torch.manual_seed(args.seed)
    params = count_parameters(model_factory())
    weightings = list(dict.fromkeys(m.weighting for m in methods))
    results = {
        "command": "python -m sgdf_erd.demo " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                   else sys.argv[1:])),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device_name": _device_name(args.device, workers), "torch": torch.__version__,
        "smoke": smoke, "seeds": seeds, "workers": workers,
        "config": {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed, "size": args.size,
                   "grad_clip": config.grad_clip, "ema_decay": config.ema_decay, "logsnr_max": process.logsnr_max,
                   "sample_steps": args.sample_steps, "num_samples": args.num_samples, "channels": args.channels,
                   "checkpoint_fractions": list(FRACTIONS), "checkpoint_steps": checkpoint_steps(args.steps)},
        "lr_note": LR_NOTE,
        "model_params": params,
        "data": {"source": data.source, "label_source": data.label_source, "train": len(data.train_x),
                 "test": len(data.test_x)},
        "scorer_accuracy": scorer.test_accuracy, "references": references,
        "real_images": data.test_x, "methods": [{"name": m.name, "weighting": m.weighting,
                                                  "optimizer": m.optimizer, "lr": m.lr} for m in methods],
        "runs": runs_by_method, "optimizer_timing": timing,
        "weight_curves": {w: weight_curve(w) for w in weightings},
        "ntk_start": ntk_start, "ntk_note": ntk_note,
    }
    results["summary"] = summarize(results)
    results["wall_s"] = time.perf_counter() - start
    results["cpu_s"] = _cpu_seconds([runs_by_method[m.name][i] for i in range(len(seeds)) for m in methods],
                                    workers)
    report = write_report(out, results)
    write_json(out, results)
    log(f"done in {results['wall_s']:.0f} s")
    print(f"Report: {report.resolve()}")
    return report


def _auto_threads() -> int:
    """torch's default thread count, at most the idle cores: oversubscribed threads stall torch's parallel
    regions, which on a shared 2-core machine costs several x."""
    threads = torch.get_num_threads()
    idle = idle_cores()
    return threads if idle is None else max(1, min(threads, idle))


def _cpu_seconds(runs: List[dict], workers: int) -> Optional[dict]:
    """CPU seconds (user + system) of this process and of its finished worker processes: on a shared machine the
    wall time says little, these say what the run costs. With worker processes, ``idle_wall_s`` estimates the wall
    time on as many idle cores: this process's CPU time, then the runs' CPU times (``runs`` in the order the pool
    hands them out) scheduled on the workers, plus each worker's start-up (its CPU time outside the runs)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    cpu = {"main": own.ru_utime + own.ru_stime, "workers": children.ru_utime + children.ru_stime,
           "idle_wall_s": None}
    if workers > 1:
        run_cpu = [r["cpu_s"] for r in runs]
        start_up = max(0.0, cpu["workers"] - sum(run_cpu)) / workers
        cpu["idle_wall_s"] = cpu["main"] + start_up + schedule_seconds(run_cpu, workers)
    return cpu


def _device_name(device: str, workers: int = 1) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpu = cpu_model()
    if workers > 1:
        return f"CPU {cpu}, {workers} worker processes of 1 thread"
    n = torch.get_num_threads()
    return f"CPU {cpu}, {n} thread{'s' if n > 1 else ''}"


if __name__ == "__main__":
    main()
