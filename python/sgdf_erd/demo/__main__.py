"""``python -m sgdf_erd.demo``: train a small diffusion model on the digits with ERD / constant / Min-SNR
weighting (fused SGDF; AdamW as the reference optimizer), score the samples and write DIR/report.md."""

import argparse
import datetime
import os
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

from .._platform import cpu_model
from .data import load_data
from .metrics import train_scorer
from .model import UNet, count_parameters
from .process import NoiseProcess
from .report import summarize, write_json, write_report
from .sample import ddim_sample
from .timing import time_optimizer_steps
from .train import HeldOutProbe, Method, TrainConfig, train
from .ntk import PER_BIN, ntk_probe, ntk_spectrum_or_none
from .weighting import make_loss, weight_curve

# Chosen by the short sweep in benchmarks/demo_lr_sweep.py (held-out eps-MSE after the default budget).
DEFAULT_LR = {"sgdf": 1.0, "adamw": 4e-3}
SMOKE_STEPS = 100
DEFAULT_METHODS = "erd+sgdf,constant+sgdf,min_snr+sgdf,erd+adamw,constant+adamw"


def _parse_methods(text: str, lrs: dict) -> List[Method]:
    methods = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        weighting, _, opt = item.partition("+")
        if opt not in lrs:
            raise SystemExit(f"--methods: {item!r} must look like WEIGHTING+OPTIMIZER with OPTIMIZER in "
                             f"{sorted(lrs)} (for example erd+sgdf)")
        try:
            make_loss(weighting)  # fail now, not after minutes of training
        except ValueError as exc:
            raise SystemExit(f"--methods: {item!r}: {exc}") from None
        methods.append(Method(weighting, opt, lrs[opt]))
    if not methods:
        raise SystemExit("--methods: give at least one method, for example erd+sgdf")
    return methods


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sgdf_erd.demo", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=600, help="training steps per method (small = smoke run)")
    p.add_argument("--out", default="demo_out", help="output folder for report.md, PNGs and results.json")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="folder of images (sub-folders = classes) or a .npy array "
                                                "[N, H, W(, C)]; default: scikit-learn's digits")
    p.add_argument("--size", type=int, default=8, help="image side after resizing (8: digits as they are; 16: "
                                                       "upsampled, about 4x slower)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated WEIGHTING+OPTIMIZER list")
    p.add_argument("--lr-sgdf", type=float, default=DEFAULT_LR["sgdf"])
    p.add_argument("--lr-adamw", type=float, default=DEFAULT_LR["adamw"])
    p.add_argument("--num-samples", type=int, default=500, help="generated samples per method for scoring")
    p.add_argument("--sample-steps", type=int, default=40, help="DDIM steps")
    p.add_argument("--channels", type=int, default=24, help="U-Net base width (24: ~0.28 M parameters)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: torch's default, lowered when "
                                                          "other processes already keep the cores busy")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (for logs)")
    return p


def main(argv: Optional[List[str]] = None) -> Path:
    args = build_parser().parse_args(argv)
    if args.steps < 1:
        raise SystemExit("--steps must be >= 1")
    if args.num_samples < 10:
        raise SystemExit("--num-samples must be >= 10")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch; use --device cpu")
    start = time.perf_counter()
    torch.set_num_threads(args.threads if args.threads > 0 else _auto_threads())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    methods = _parse_methods(args.methods, {"sgdf": args.lr_sgdf, "adamw": args.lr_adamw})

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
                         eval_points=1 if smoke else 10, eval_repeats=1 if smoke else 2)
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

    runs = []
    for method in methods:
        result = train(method, make_loss(method.weighting), model_factory, data, process, config, probe, progress)
        samples = ddim_sample(result.model, process, args.num_samples, image_shape, args.sample_steps,
                              seed=args.seed + 5, device=args.device)
        ntk_end, _ = ntk_spectrum_or_none(result.model, ntk_inputs)
        step_ms = sorted(result.step_times[min(5, len(result.step_times) - 1):])
        run = {
            "name": method.name, "weighting": method.weighting, "optimizer": method.optimizer, "lr": method.lr,
            "quality": scorer.score(samples), "samples": samples, "losses": result.losses,
            "final_loss": sum(result.losses[-50:]) / len(result.losses[-50:]),
            "eval_steps": result.eval_steps, "eval_mse": result.eval_mse, "statistics": result.statistics,
            "step_ms_median": 1000 * step_ms[len(step_ms) // 2], "wall_s": result.wall_s, "ntk_end": ntk_end,
        }
        runs.append(run)
        q = run["quality"]
        log(f"{method.name}: FD {q['fd']:.2f}, confidence {q['confidence']:.3f}, coverage {q['coverage']:.2f}, "
            f"held-out eps-MSE {result.eval_mse[-1]:.4f}")

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
        "device_name": _device_name(args.device), "torch": torch.__version__,
        "smoke": smoke,
        "config": {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed, "size": args.size,
                   "grad_clip": config.grad_clip, "ema_decay": config.ema_decay, "logsnr_max": process.logsnr_max,
                   "sample_steps": args.sample_steps, "num_samples": args.num_samples, "channels": args.channels},
        "lr_note": (f"SGDF lr {args.lr_sgdf:g}, AdamW lr {args.lr_adamw:g} (betas 0.9/0.999, no weight decay), "
                    "the same for every weighting. The defaults are the best points of a 5-point sweep per optimizer "
                    "(SGDF 0.03 to 3, AdamW 5e-4 to 8e-3) at the default budget, scored by held-out eps-MSE averaged "
                    "over constant and ERD weighting (benchmarks/results/demo_lr_sweep_cpu.md); SGDF's release "
                    "default 0.5 lies between its two best points."),
        "model_params": params,
        "data": {"source": data.source, "label_source": data.label_source, "train": len(data.train_x),
                 "test": len(data.test_x)},
        "scorer_accuracy": scorer.test_accuracy, "references": references,
        "real_images": data.test_x, "runs": runs, "optimizer_timing": timing,
        "weight_curves": {w: weight_curve(w) for w in weightings},
        "ntk_start": ntk_start, "ntk_note": ntk_note,
    }
    results["summary"] = summarize(results)
    results["wall_s"] = time.perf_counter() - start
    report = write_report(out, results)
    write_json(out, results)
    log(f"done in {results['wall_s']:.0f} s")
    print(f"Report: {report.resolve()}")
    return report


def _auto_threads() -> int:
    """torch's default thread count, minus the cores other processes keep busy (1-minute load average):
    oversubscribed threads stall torch's parallel regions, which on a shared 2-core machine costs several x."""
    threads = torch.get_num_threads()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        return threads
    free = (os.cpu_count() or threads) - busy
    return max(1, min(threads, int(free + 0.5)))


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpu = cpu_model()
    n = torch.get_num_threads()
    return f"CPU {cpu}, {n} thread{'s' if n > 1 else ''}"


if __name__ == "__main__":
    main()
