"""SGDF training in bfloat16: does stochastic rounding or a float32 master copy recover float32 quality?

The quality_sgdf digits CNN (benchmarks/quality_sgdf.py: same data split, model, batch order per seed, cosine
decay to 0) trained with SGDF in four storage configurations:

  (a) fp32          float32 params and state (the reference)
  (b) bf16 nearest  bfloat16 params and state, results rounded to nearest (what a plain bf16 optimizer does)
  (c) bf16 SR       bfloat16 params and state, stochastic_rounding=True
  (d) bf16 master   bfloat16 params and state, master_weights=True (float32 master copies)

Forward and backward run in the params' dtype; the loss is taken in float32. Each configuration runs at SGDF's
tuned lr for this task (1.5, from quality_sgdf's sweep) and at a 10x smaller one, where more updates fall below
half a bfloat16 spacing, for several seeds. Writes benchmarks/results/quality_lowprec_cpu.md and .json.

    python benchmarks/quality_lowprec.py            # a few minutes on a 2-core CPU
    python benchmarks/quality_lowprec.py --quick    # smoke run
"""

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from quality_sgdf import device_name, evaluate, load, train  # noqa: E402

from sgdf_erd import SGDF  # noqa: E402

CONFIGS = {  # name -> (params dtype, SGDF storage options)
    "(a) fp32": (torch.float32, {}),
    "(b) bf16 nearest": (torch.bfloat16, {}),
    "(c) bf16 stochastic rounding": (torch.bfloat16, dict(stochastic_rounding=True)),
    "(d) bf16 master weights": (torch.bfloat16, dict(master_weights=True)),
}
TUNED_LR = 1.5  # SGDF's best lr on digits in benchmarks/results/quality_sgdf_cpu.md
WEIGHT_DECAY = 5e-4


def run(data, dtype, options, lr, seed, epochs):
    model, wall = train("digits", data, lambda params: SGDF(params, lr=lr, weight_decay=WEIGHT_DECAY, **options),
                        seed, epochs, dtype=dtype)
    scores = evaluate(model, data, dtype)
    return {"train_loss": scores["train_loss"], "test_acc": scores["test_acc"], "wall_s": wall}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 2 epochs, no results file")
    p.add_argument("--epochs", type=int, default=None, help="default 20 (quick: 2)")
    p.add_argument("--seeds", type=int, default=None, help="default 3 (quick: 2)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    epochs = args.epochs or (2 if args.quick else 20)
    seeds = args.seeds or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)
    data = load("digits")
    t_start = time.perf_counter()
    results = {"command": "python benchmarks/quality_lowprec.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "device": f"CPU {device_name()}", "torch": torch.__version__, "threads": args.threads,
               "epochs": epochs, "seeds": seeds, "lrs": {}}
    for lr in (TUNED_LR, TUNED_LR / 10):
        runs = {name: [] for name in CONFIGS}
        for seed in range(seeds):  # configurations interleaved, so machine load hits all alike
            for name, (dtype, options) in CONFIGS.items():
                runs[name].append(run(data, dtype, options, lr, seed, epochs))
                r = runs[name][-1]
                print(f"lr {lr:<5g} seed {seed} {name:<30} train loss {r['train_loss']:.4f} "
                      f"test acc {100 * r['test_acc']:.2f} ({r['wall_s']:.1f} s)", flush=True)
        results["lrs"][str(lr)] = {name: summarize(rs) for name, rs in runs.items()}
    results["wall_s"] = time.perf_counter() - t_start
    md = markdown(results)
    print(md)
    if not args.quick:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "quality_lowprec_cpu.json").write_text(json.dumps(results, indent=1))
        (out / "quality_lowprec_cpu.md").write_text(md)
        print(f"wrote {out / 'quality_lowprec_cpu'}.md and .json ({results['wall_s']:.0f} s)")


def summarize(rs):
    loss = np.array([r["train_loss"] for r in rs])
    acc = np.array([r["test_acc"] for r in rs])
    spread = (lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0)
    return {"train_loss_mean": float(loss.mean()), "train_loss_std": spread(loss),
            "test_acc_mean": float(acc.mean()), "test_acc_std": spread(acc),
            "wall_s_mean": float(np.mean([r["wall_s"] for r in rs])), "runs": rs}


def markdown(res):
    md = ["# SGDF in bfloat16: storage configurations on the digits CNN", "",
          f"- date: {res['date']}", f"- device: {res['device']} ({res['threads']} torch thread)",
          f"- torch: {res['torch']}", f"- command: `{res['command']}`",
          f"- protocol: quality_sgdf's digits CNN and split, {res['epochs']} epochs, batch 64, cosine decay to 0, "
          f"SGDF betas (0.9, 0.999), gamma 0.5, coupled weight decay {WEIGHT_DECAY}; {res['seeds']} seeds per "
          "configuration (same init and batch order per seed); training loss over the whole train split and test "
          "accuracy of the final model in its own dtype.",
          f"- total wall time: {res['wall_s']:.0f} s", ""]
    for lr, summary in res["lrs"].items():
        md += [f"## lr = {float(lr):g}", "",
               "| configuration | final train loss (mean +- std) | test acc % (mean +- std) | s per run |",
               "|---|---|---|---|"]
        for name, s in summary.items():
            md.append(f"| {name} | {s['train_loss_mean']:.4f} +- {s['train_loss_std']:.4f} | "
                      f"{100 * s['test_acc_mean']:.2f} +- {100 * s['test_acc_std']:.2f} | {s['wall_s_mean']:.1f} |")
        md.append("")
    return "\n".join(md)


if __name__ == "__main__":
    main()
