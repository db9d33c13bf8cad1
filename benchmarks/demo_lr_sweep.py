"""Learning-rate sweep behind the demo's defaults (python -m sgdf_erd.demo): each (weighting, optimizer) pair gets
its own sweep (ERD and Min-SNR weights rescale the loss, and SGDF's update is in gradient units, so one lr per
optimizer would favour some weightings). Same denoiser, data and budget as the demo; each lr is scored by the
held-out unweighted eps-MSE (EMA weights) at the end of training, averaged over the sweep seeds, which differ from
the demo's seeds (0, 1, 2, ...) so the demo does not evaluate on the runs that chose its learning rates. Equal
effort: the same points, a factor 2 apart, for every pair. Writes benchmarks/results/demo_lr_sweep_cpu.md and .json; the
demo's table of default learning rates (sgdf_erd/demo/methods.py, DEFAULT_LR) must match its "best" entries
(tests/test_demo.py checks it). The grids are the OPTIMIZERS entries' (sgdf_erd/demo/methods.py): an optimizer
added there is swept by default with each weighting the reference optimizer trains with; its best points then go
into DEFAULT_LR.

    python benchmarks/demo_lr_sweep.py            # full sweep: 5 points x 2 seeds per pair, 50 runs of ~15 CPU-s
    python benchmarks/demo_lr_sweep.py --points 5 --seeds 1 --reuse   # what the committed results ran (25 runs);
                                                  # after adding an optimizer, the same trains only its points
    python benchmarks/demo_lr_sweep.py --quick    # smoke run
"""

import argparse
import datetime
import json
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
from sgdf_erd._platform import cpu_model  # noqa: E402
from sgdf_erd.demo.__main__ import build_parser  # noqa: E402
from sgdf_erd.demo.data import load_data  # noqa: E402
from sgdf_erd.demo.methods import OPTIMIZERS, split_name, sweep_pairs  # noqa: E402
from sgdf_erd.demo.model import UNet  # noqa: E402
from sgdf_erd.demo.process import NoiseProcess  # noqa: E402
from sgdf_erd.demo.runs import idle_cores  # noqa: E402
from sgdf_erd.demo.train import HeldOutProbe, Method, TrainConfig, train  # noqa: E402
from sgdf_erd.demo.weighting import make_loss  # noqa: E402

SWEEP_SEEDS = (100, 101)  # not the demo's seeds


def _one(steps, batch_size, channels, weighting, optimizer, lr, seed):
    """One sweep point in a worker process: held-out eps-MSE at the end (inf if training diverged)."""
    torch.set_num_threads(1)
    data = load_data(seed=0)  # the demo's split and held-out probe (seed 0), as the demo's default run uses
    process = NoiseProcess()
    config = TrainConfig(steps=steps, batch_size=batch_size, seed=seed, eval_points=1)
    probe = HeldOutProbe(data, process, config.eval_repeats, 0, torch.device("cpu"))
    try:
        r = train(Method(weighting, optimizer, lr), make_loss(weighting), lambda: UNet(channels=channels), data,
                  process, config, probe, progress=False)
        return r.eval_mse[-1]
    except FloatingPointError:
        return float("inf")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 20 steps, one seed")
    p.add_argument("--points", type=int, default=5, choices=[3, 5], help="grid points per pair (3: the middle 3)")
    p.add_argument("--seeds", type=int, default=len(SWEEP_SEEDS), choices=range(1, len(SWEEP_SEEDS) + 1),
                   help="sweep seeds (from 100)")
    p.add_argument("--steps", type=int, default=None, help="default: the demo's default budget (quick: 20)")
    p.add_argument("--methods", default=",".join(sweep_pairs()),
                   help="WEIGHTING+OPTIMIZER pairs to sweep (default: the demo's, and a new optimizer's pairs)")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0: one per idle core)")
    p.add_argument("--reuse", action="store_true", help="keep the points of the existing results file with the "
                                                        "same budget and train only the missing ones (runs are "
                                                        "seeded: a point trained again gives the same number)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    demo = build_parser().parse_args([])
    steps = args.steps or (20 if args.quick else demo.steps)
    seeds = SWEEP_SEEDS[:1] if args.quick else SWEEP_SEEDS[:args.seeds]
    skip = (5 - args.points) // 2
    grid = {o: list(entry.lr_grid[skip:len(entry.lr_grid) - skip]) for o, entry in OPTIMIZERS.items()}
    pairs = [split_name(m) for m in args.methods.split(",")]
    for w, o in pairs:
        if o not in grid:
            raise SystemExit(f"--methods: {w}+{o}: unknown optimizer {o!r}; add it to OPTIMIZERS in "
                             "sgdf_erd/demo/methods.py")
    # the points in lr order, optimizers interleaved, so load drifting over the run hits every pair alike
    jobs = [(steps, demo.batch_size, demo.channels, w, o, grid[o][i], s)
            for i in range(args.points) for w, o in pairs for s in seeds]
    out = Path(args.out)
    stem = out / ("demo_lr_sweep_cpu" + ("_quick" if args.quick else ""))
    rows, earlier = [], {}
    if args.reuse and stem.with_suffix(".json").exists():
        old = json.loads(stem.with_suffix(".json").read_text())
        if (old["steps"], old["batch_size"], old["channels"]) == (steps, demo.batch_size, demo.channels):
            earlier = {(r["weighting"], r["optimizer"], r["lr"], r["seed"]): r for r in old["rows"]}
    rows = [dict(earlier[j[3:]], reused=True) for j in jobs if j[3:] in earlier]
    jobs = [j for j in jobs if j[3:] not in earlier]
    workers = args.workers or max(1, min(idle_cores() or 1, len(jobs)))
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        for job, mse in zip(jobs, pool.map(_one, *zip(*jobs))):
            _, _, _, w, o, lr, s = job
            rows.append({"weighting": w, "optimizer": o, "lr": lr, "seed": s, "heldout_eps_mse": mse})
            print(f"[{time.perf_counter() - start:5.0f} s] {w}+{o} lr {lr:<7g} seed {s}: held-out eps-MSE "
                  f"{mse:.4f}", flush=True)
    mean, best = {}, {}
    for w, o in pairs:
        name = f"{w}+{o}"
        mean[name] = {lr: float(np.mean([r["heldout_eps_mse"] for r in rows if (r["weighting"], r["optimizer"],
                                                                                 r["lr"]) == (w, o, lr)]))
                      for lr in grid[o]}
        best[name] = min(mean[name], key=mean[name].get)
    res = {"command": "python benchmarks/demo_lr_sweep.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "device": f"CPU {cpu_model()}, {workers} worker process{'es' if workers > 1 else ''} of 1 thread", "torch": torch.__version__, "steps": steps,
           "batch_size": demo.batch_size, "channels": demo.channels, "seeds": list(seeds), "grid": grid,
           "rows": rows, "mean": {k: {str(lr): v for lr, v in m.items()} for k, m in mean.items()}, "best": best,
           "reused_points": sum(bool(r.get("reused")) for r in rows), "wall_s": time.perf_counter() - start}
    out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1))
    md = ["# Demo learning-rate sweep, one per (weighting, optimizer) pair (held-out unweighted eps-MSE, lower is "
          "better)", "",
          f"- date: {res['date']}", f"- device: {res['device']}", f"- torch: {res['torch']}",
          f"- command: `{res['command']}`",
          f"- budget: {steps} steps, batch {demo.batch_size}, U-Net channels {demo.channels} (the demo's defaults); "
          f"sweep seeds {', '.join(map(str, seeds))} (the demo runs seeds 0, 1, 2, ...); score: held-out eps-MSE "
          "of the EMA weights at the end, mean over the sweep seeds",
          f"- wall time: {res['wall_s']:.0f} s" + (f" for the {len(rows) - res['reused_points']} new points; "
                                                    f"{res['reused_points']} reused from the earlier run of the "
                                                    "same budget (--reuse)" if res["reused_points"] else ""), "",
          "| method | " + " | ".join(f"lr #{i + 1}" for i in range(args.points)) + " | chosen |",
          "|---|" + "---|" * (args.points + 1)]
    for name, m in mean.items():
        cells = [f"{lr:g}: {v:.4f}" + (" **(best)**" if lr == best[name] else "") for lr, v in m.items()]
        edge = " (edge of the grid)" if best[name] in (min(m), max(m)) else ""
        md.append(f"| {name} | " + " | ".join(cells) + f" | {best[name]:g}{edge} |")
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"best: {best}; wrote {stem}.md")


if __name__ == "__main__":
    main()
