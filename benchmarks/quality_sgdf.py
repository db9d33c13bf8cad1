"""SGDF vs SGD with momentum vs AdamW on small bundled datasets, with equal tuning effort.

For every optimizer: the same learning-rate sweep size (SWEEP points, a factor ~3 apart, centred on the usual
value for that optimizer) scored by validation accuracy averaged over the sweep seeds; then the best learning rate
is trained with TEST seeds and scored on the untouched test split. Everything else is shared: model, initial
weights per seed, batch order per seed, epochs, cosine learning-rate decay, batch size. Weight decay follows each
optimizer's usual recipe (coupled 5e-4 for SGD and SGDF as in the SGDF paper's CIFAR runs, decoupled 1e-2 for
AdamW) and is not tuned for anyone.

Datasets (scikit-learn, bundled, no download): digits (8x8 images, small CNN) and breast_cancer (30 features,
small MLP). Writes benchmarks/results/quality_sgdf_<device>.md and .json.

    python benchmarks/quality_sgdf.py            # full run (a few minutes on a 2-core CPU)
    python benchmarks/quality_sgdf.py --quick    # smoke run (seconds)
"""

import argparse
import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
from sgdf_erd import SGDF  # noqa: E402

LR_GRID = {  # equal-size grids, a factor ~3 apart, around each optimizer's customary value
    "SGDF": [0.05, 0.15, 0.5, 1.5, 4.5],
    "SGD+momentum": [0.01, 0.03, 0.1, 0.3, 1.0],
    "AdamW": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
}


def make_optimizer(name, params, lr):
    if name == "SGDF":
        return SGDF(params, lr=lr, weight_decay=5e-4)
    if name == "SGD+momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    raise ValueError(name)


# ------------------------------------------------------------------------------------------------ data, models
def load(dataset, split_seed=0):
    """Stratified 60/20/20 train/val/test split, fixed across seeds; features standardised on train."""
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split
    if dataset == "digits":
        d = load_digits()
        x = d.images.astype(np.float32)[:, None] / 8.0 - 1.0
    elif dataset == "breast_cancer":
        d = load_breast_cancer()
        x = d.data.astype(np.float32)
    else:
        raise ValueError(dataset)
    y = d.target.astype(np.int64)
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=split_seed)
    x_va, x_te, y_va, y_te = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest,
                                              random_state=split_seed)
    if dataset != "digits":
        mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
        x_tr, x_va, x_te = (x_tr - mu) / sd, (x_va - mu) / sd, (x_te - mu) / sd
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return {"train": (t(x_tr), t(y_tr)), "val": (t(x_va), t(y_va)), "test": (t(x_te), t(y_te)),
            "classes": int(y.max()) + 1}


def make_model(dataset, classes):
    if dataset == "digits":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, classes))
    return nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, classes))


# ------------------------------------------------------------------------------------------------ one run
def train(dataset, data, make_opt, seed, epochs, dtype=torch.float32, batch_size=64):
    """Trains the dataset's model from seed's initial weights (float32, then cast to dtype) in seed's batch order,
    with make_opt(params) and a cosine decay to 0; forward and backward run in dtype, the loss in float32.
    Returns the model and the training wall time in seconds."""
    torch.manual_seed(seed)
    model = make_model(dataset, data["classes"]).to(dtype)
    opt = make_opt(model.parameters())
    x, y = data["train"]
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed + 1000)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx].to(dtype)).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model, time.perf_counter() - start


def evaluate(model, data, dtype=torch.float32):
    """Training loss over the whole train split and the val / test accuracies of the model in its own dtype."""
    model.eval()
    with torch.no_grad():
        x, y = data["train"]
        scores = {"train_loss": float(F.cross_entropy(model(x.to(dtype)).float(), y))}
        for s in ("val", "test"):
            scores[f"{s}_acc"] = float((model(data[s][0].to(dtype)).argmax(1) == data[s][1]).float().mean())
    return scores


def run(dataset, data, opt_name, lr, seed, epochs):
    model, wall = train(dataset, data, lambda params: make_optimizer(opt_name, params, lr), seed, epochs)
    scores = evaluate(model, data)
    if not np.isfinite(scores["train_loss"]):
        scores.update(val_acc=0.0, test_acc=0.0)  # diverged: scores as chance-or-worse, never picked by the sweep
    return {**scores, "wall_s": wall}


def device_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 sweep seed, 2 test seeds, 3 epochs")
    p.add_argument("--datasets", default="digits,breast_cancer")
    p.add_argument("--epochs", type=int, default=None, help="default 20 (quick: 3)")
    p.add_argument("--sweep-seeds", type=int, default=None, help="default 2 (quick: 1)")
    p.add_argument("--test-seeds", type=int, default=None, help="default 5 (quick: 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny models run fastest on one)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    epochs = args.epochs or (3 if args.quick else 20)
    sweep_seeds = args.sweep_seeds or (1 if args.quick else 2)
    test_seeds = args.test_seeds or (2 if args.quick else 5)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    results = {"command": "python benchmarks/quality_sgdf.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
               "date": datetime.datetime.now().isoformat(timespec="seconds"), "device": f"CPU {device_name()}",
               "torch": torch.__version__, "threads": args.threads, "epochs": epochs, "sweep_seeds": sweep_seeds,
               "test_seeds": test_seeds, "lr_grid": LR_GRID, "datasets": {}}
    for dataset in args.datasets.split(","):
        data = load(dataset)
        sweep = {name: {} for name in LR_GRID}
        # sweep: interleave optimizers so machine load affects all alike (only wall times depend on it)
        for i in range(len(next(iter(LR_GRID.values())))):
            for name, grid in LR_GRID.items():
                lr = grid[i]
                r = [run(dataset, data, name, lr, 100 + s, epochs) for s in range(sweep_seeds)]
                sweep[name][lr] = float(np.mean([x["val_acc"] for x in r]))
                print(f"{dataset:>13} sweep {name:>13} lr {lr:<7g} val acc {sweep[name][lr]:.4f}", flush=True)
        best = {name: max(accs, key=lambda lr: (accs[lr], -lr)) for name, accs in sweep.items()}
        final = {name: [] for name in LR_GRID}
        for seed in range(test_seeds):  # test seeds differ from sweep seeds
            for name in LR_GRID:
                final[name].append(run(dataset, data, name, best[name], seed, epochs))
        summary = {}
        for name, rs in final.items():
            acc = np.array([r["test_acc"] for r in rs])
            loss = np.array([r["train_loss"] for r in rs])
            summary[name] = {"lr": best[name], "test_acc_mean": float(acc.mean()),
                             "test_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                             "test_acc_min": float(acc.min()), "test_acc_max": float(acc.max()),
                             "train_loss_mean": float(loss.mean()),
                             "train_loss_std": float(loss.std(ddof=1)) if len(loss) > 1 else 0.0,
                             "wall_s_mean": float(np.mean([r["wall_s"] for r in rs])), "runs": rs}
            print(f"{dataset:>13} test  {name:>13} lr {best[name]:<7g} acc {100 * acc.mean():.2f} "
                  f"+- {100 * summary[name]['test_acc_std']:.2f}  train loss {loss.mean():.4f}", flush=True)
        results["datasets"][dataset] = {"sizes": {s: len(data[s][1]) for s in ("train", "val", "test")},
                                        "sweep_val_acc": {n: {str(k): v for k, v in s.items()}
                                                          for n, s in sweep.items()},
                                        "final": summary, "verdict": verdict(summary)}
    results["wall_s"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "quality_sgdf_cpu" + ("_quick" if args.quick else "")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(markdown(results))
    print(f"wrote {out / stem}.md and .json ({results['wall_s']:.0f} s)")


def verdict(summary):
    """Plain statement: does SGDF beat momentum SGD, on mean test accuracy, beyond the seed spread (Welch t)?"""
    from scipy import stats
    a = [r["test_acc"] for r in summary["SGDF"]["runs"]]
    b = [r["test_acc"] for r in summary["SGD+momentum"]["runs"]]
    diff = 100 * (np.mean(a) - np.mean(b))
    if len(a) > 1 and (np.std(a) > 0 or np.std(b) > 0):
        pval = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    else:
        pval = float("nan")
    la, lb = summary["SGDF"]["train_loss_mean"], summary["SGD+momentum"]["train_loss_mean"]
    if diff > 0 and pval < 0.05:
        word = "SGDF beats momentum SGD"
    elif diff < 0 and pval < 0.05:
        word = "SGDF is worse than momentum SGD"
    else:
        word = "SGDF does not beat momentum SGD (no significant difference)"
    return (f"{word} on test accuracy here: {diff:+.2f} points (Welch t-test p = {pval:.2f}, "
            f"{len(a)} seeds each); final training loss {la:.4f} (SGDF) vs {lb:.4f} (SGD+momentum).")


def markdown(res):
    md = ["# SGDF quality check: SGDF vs SGD+momentum vs AdamW", "",
          f"- date: {res['date']}", f"- device: {res['device']} ({res['threads']} torch thread)",
          f"- torch: {res['torch']}", f"- command: `{res['command']}`",
          f"- protocol: {res['epochs']} epochs, batch 64, cosine decay to 0; lr sweep of {len(LR_GRID['SGDF'])} "
          f"values per optimizer scored by validation accuracy (mean of {res['sweep_seeds']} seeds); the best lr "
          f"then trained with {res['test_seeds']} other seeds and scored on the test split. Weight decay: "
          "coupled 5e-4 (SGDF, SGD+momentum 0.9), decoupled 1e-2 (AdamW). SGDF betas (0.9, 0.999), gamma 0.5.",
          f"- total wall time: {res['wall_s']:.0f} s", ""]
    for dataset, d in res["datasets"].items():
        model = "small CNN (2 conv + 2 linear)" if dataset == "digits" else "MLP (2 hidden layers of 64)"
        md += [f"## {dataset}: {model}; {d['sizes']['train']} train / {d['sizes']['val']} val / "
               f"{d['sizes']['test']} test", "", f"**{d['verdict']}**", "",
               "| optimizer | chosen lr | test acc % (mean +- std) | min / max | final train loss (mean +- std) "
               "| s per run |", "|---|---|---|---|---|---|"]
        for name, s in d["final"].items():
            md.append(f"| {name} | {s['lr']:g} | {100 * s['test_acc_mean']:.2f} +- {100 * s['test_acc_std']:.2f} | "
                      f"{100 * s['test_acc_min']:.2f} / {100 * s['test_acc_max']:.2f} | "
                      f"{s['train_loss_mean']:.4f} +- {s['train_loss_std']:.4f} | {s['wall_s_mean']:.2f} |")
        md += ["", "Validation accuracy % in the sweep:", "",
               "| optimizer | " + " | ".join(f"lr #{i + 1}" for i in range(len(LR_GRID["SGDF"]))) + " |",
               "|---|" + "---|" * len(LR_GRID["SGDF"])]
        for name, accs in d["sweep_val_acc"].items():
            md.append(f"| {name} | " + " | ".join(f"{float(lr):g}: {100 * a:.2f}" for lr, a in accs.items()) + " |")
        md.append("")
    return "\n".join(md)


if __name__ == "__main__":
    main()
