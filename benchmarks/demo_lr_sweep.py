"""Learning-rate sweep behind the demo's defaults (python -m sgdf_erd.demo): SGDF and AdamW on the demo's
denoiser, data and budget, each lr scored by the held-out unweighted eps-MSE (EMA weights) at the end of training,
averaged over the weightings swept. Writes benchmarks/results/demo_lr_sweep_<device>.md and .json.

    python benchmarks/demo_lr_sweep.py            # the sweep (several minutes on a 2-core CPU)
    python benchmarks/demo_lr_sweep.py --quick    # smoke run
"""

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
from sgdf_erd.demo.__main__ import _auto_threads, _device_name  # noqa: E402
from sgdf_erd.demo.data import load_data  # noqa: E402
from sgdf_erd.demo.model import UNet  # noqa: E402
from sgdf_erd.demo.process import NoiseProcess  # noqa: E402
from sgdf_erd.demo.train import HeldOutProbe, Method, TrainConfig, train  # noqa: E402
from sgdf_erd.demo.weighting import make_loss  # noqa: E402

GRID = {"sgdf": [0.03, 0.1, 0.3, 1.0, 3.0], "adamw": [5e-4, 1e-3, 2e-3, 4e-3, 8e-3]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=None, help="default: the demo's default budget (quick: 20)")
    p.add_argument("--weightings", default="constant,erd")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--reuse", action="store_true", help="keep the points of an earlier result file with the same "
                                                        "budget and only train the missing ones (runs are seeded)")
    args = p.parse_args()
    from sgdf_erd.demo.__main__ import build_parser
    demo_defaults = build_parser().parse_args([])
    steps = args.steps or (20 if args.quick else demo_defaults.steps)
    torch.set_num_threads(_auto_threads())
    data = load_data(seed=0)
    process = NoiseProcess()
    config = TrainConfig(steps=steps, batch_size=demo_defaults.batch_size, seed=0, eval_points=1)
    probe = HeldOutProbe(data, process, config.eval_repeats, 0, torch.device("cpu"))
    weightings = args.weightings.split(",")
    out = Path(args.out)
    stem = out / ("demo_lr_sweep_cpu" + ("_quick" if args.quick else ""))
    earlier = {}
    if args.reuse and stem.with_suffix(".json").exists():
        old = json.loads(stem.with_suffix(".json").read_text())
        if (old["steps"], old["batch_size"], old["channels"]) == (steps, config.batch_size, demo_defaults.channels):
            earlier = {(r["optimizer"], r["lr"], r["weighting"]): r for r in old["rows"]}
    start = time.perf_counter()
    rows = []
    for i in range(len(GRID["sgdf"])):  # interleave the optimizers so machine load drifts hit both alike
        for opt, grid in GRID.items():
            for w in weightings:
                method = Method(w, opt, grid[i])
                if (opt, grid[i], w) in earlier:
                    rows.append(dict(earlier[(opt, grid[i], w)], reused=True))
                    continue
                try:
                    r = train(method, make_loss(w), lambda: UNet(channels=demo_defaults.channels), data, process,
                              config, probe, progress=False)
                    mse = r.eval_mse[-1]
                except FloatingPointError:
                    mse = float("inf")
                rows.append({"optimizer": opt, "lr": grid[i], "weighting": w, "heldout_eps_mse": mse})
                print(f"{opt:>6} lr {grid[i]:<7g} {w:>9}: held-out eps-MSE {mse:.4f}", flush=True)
    best = {}
    for opt, grid in GRID.items():
        means = {lr: sum(r["heldout_eps_mse"] for r in rows if r["optimizer"] == opt and r["lr"] == lr)
                 / len(weightings) for lr in grid}
        best[opt] = min(means, key=means.get)
    res = {"command": "python benchmarks/demo_lr_sweep.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "device": _device_name("cpu"),
           "torch": torch.__version__, "steps": steps, "batch_size": config.batch_size,
           "channels": demo_defaults.channels, "rows": rows, "best": best,
           "reused_points": sum(bool(r.get("reused")) for r in rows),
           "wall_s": time.perf_counter() - start}
    out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1))
    md = ["# Demo learning-rate sweep (held-out unweighted eps-MSE, lower is better)", "",
          f"- date: {res['date']}", f"- device: {res['device']}", f"- torch: {res['torch']}",
          f"- command: `{res['command']}`",
          f"- budget: {steps} steps, batch {config.batch_size}, U-Net channels {res['channels']}, seed 0 (the "
          "demo's defaults); score: held-out eps-MSE of the EMA weights, averaged over the weightings",
          f"- wall time: {res['wall_s']:.0f} s" + (f" ({res['reused_points']} points reused from the earlier run "
                                                     "of the same budget, --reuse)" if res["reused_points"] else ""),
          "",
          "| optimizer | lr | " + " | ".join(weightings) + " | mean |", "|---|---|" + "---|" * (len(weightings) + 1)]
    for opt, grid in GRID.items():
        for lr in grid:
            vals = [next(r["heldout_eps_mse"] for r in rows if r["optimizer"] == opt and r["lr"] == lr
                         and r["weighting"] == w) for w in weightings]
            mark = " **(chosen)**" if best[opt] == lr else ""
            md.append(f"| {opt} | {lr:g}{mark} | " + " | ".join(f"{v:.4f}" for v in vals)
                      + f" | {sum(vals) / len(vals):.4f} |")
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"best: {best}; wrote {stem}.md")


if __name__ == "__main__":
    main()
