"""SGDF and AdaSGDF vs SGD with momentum vs AdamW on small bundled datasets, with equal tuning effort and 95% intervals.

For every optimizer: the same learning-rate sweep size (SWEEP points, a factor ~3 apart, centred on the usual
value for that optimizer) scored by validation accuracy averaged over the sweep seeds; then the best learning rate
is trained with TEST seeds and scored on the untouched test split. Everything else is shared: model, initial
weights per seed, batch order per seed, epochs, cosine learning-rate decay, batch size. Weight decay follows each
optimizer's usual recipe (coupled 5e-4 for SGD and SGDF as in the SGDF paper's CIFAR runs, decoupled 1e-2 for
AdamW) and is not tuned for anyone.

Datasets (scikit-learn, bundled, no download): digits (8x8 images, small CNN) and breast_cancer (30 features,
small MLP). Each test seed fixes the initial weights and the batch order for every optimizer, so the optimizers
are compared per seed (paired): each metric is reported as mean +- the half-width of its 95% Student-t interval
over the test seeds, and each difference in COMPARISONS as the interval of its per-seed differences, unresolved
when that includes 0. Writes benchmarks/results/quality_sgdf_<device>.md and .json.

    python benchmarks/quality_sgdf.py            # full run (about 5 CPU-minutes)
    python benchmarks/quality_sgdf.py --quick    # smoke run (seconds)
    python benchmarks/quality_sgdf.py --reanalyse benchmarks/results/quality_sgdf_cpu.json   # tables from saved runs

Adding an optimizer is one entry in OPTIMIZERS (and its comparisons in COMPARISONS).
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
from sgdf_erd import SGDF, AdaSGDF  # noqa: E402
from sgdf_erd.demo.stats import format_interval, interval, paired_difference  # noqa: E402

# name -> (factory(params, lr), lr grid): equal-size grids, a factor ~3 apart, around each optimizer's customary value
OPTIMIZERS = {
    "SGDF": (lambda params, lr: SGDF(params, lr=lr, weight_decay=5e-4), [0.05, 0.15, 0.5, 1.5, 4.5]),
    "SGD+momentum": (lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4),
                     [0.01, 0.03, 0.1, 0.3, 1.0]),
    "AdamW": (lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=1e-2), [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]),
    # AdaSGDF as a drop-in for AdamW: AdamW's grid and weight decay, each preconditioner
    "AdaSGDF": (lambda params, lr: AdaSGDF(params, lr=lr, weight_decay=1e-2, preconditioner="second_moment"),
                [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]),
    "AdaSGDF-variance": (lambda params, lr: AdaSGDF(params, lr=lr, weight_decay=1e-2, preconditioner="variance"),
                         [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]),
}
LR_GRID = {name: grid for name, (_, grid) in OPTIMIZERS.items()}
# paired differences A - B reported (those whose optimizers both ran): SGDF against momentum (the papers' claim) and
# against AdamW; the adaptive variant against AdamW once it is in OPTIMIZERS
COMPARISONS = [("SGDF", "SGD+momentum"), ("SGDF", "AdamW"), ("AdaSGDF", "AdamW"), ("AdaSGDF-variance", "AdamW"),
               ("AdaSGDF-variance", "AdaSGDF")]


def make_optimizer(name, params, lr):
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name][0](params, lr)


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
    return {**scores, "seed": seed, "wall_s": wall}


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
    p.add_argument("--reanalyse", default=None, metavar="JSON", help="train nothing: recompute the intervals and "
                   "tables from the per-seed runs saved in an earlier results file, and rewrite it")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    if args.reanalyse:
        return reanalyse(Path(args.reanalyse))
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
        results["datasets"][dataset] = {"sizes": {s: len(data[s][1]) for s in ("train", "val", "test")},
                                        "sweep_val_acc": {n: {str(k): v for k, v in s.items()}
                                                          for n, s in sweep.items()},
                                        "final": {name: {"lr": best[name], "runs": rs} for name, rs in final.items()}}
        analyse(results["datasets"][dataset])
        for name, s in results["datasets"][dataset]["final"].items():
            print(f"{dataset:>13} test  {name:>13} lr {s['lr']:<7g} acc % {format_interval(s['test_acc_pct'])}  "
                  f"train loss {format_interval(s['train_loss'], 4)}", flush=True)
    results["wall_s"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "quality_sgdf_cpu" + ("_quick" if args.quick else "")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(markdown(results))
    print(f"wrote {out / stem}.md and .json ({results['wall_s']:.0f} s)")


def analyse(d):
    """Adds to a dataset's results: per optimizer the intervals of test accuracy (%) and final training loss over
    the test seeds; the paired differences of COMPARISONS; a one-line verdict on SGDF vs momentum."""
    for s in d["final"].values():
        s["test_acc_pct"] = interval([100 * r["test_acc"] for r in s["runs"]])
        s["train_loss"] = interval([r["train_loss"] for r in s["runs"]])
        s["wall_s_mean"] = float(np.mean([r["wall_s"] for r in s["runs"]]))
    d["comparisons"] = []
    for a, b in COMPARISONS:
        if a in d["final"] and b in d["final"]:
            ra, rb = d["final"][a]["runs"], d["final"][b]["runs"]
            assert [r["seed"] for r in ra] == [r["seed"] for r in rb], "comparisons pair runs by seed"
            d["comparisons"].append({
                "a": a, "b": b,
                "test_acc_pct": paired_difference([100 * r["test_acc"] for r in ra], [100 * r["test_acc"] for r in rb]),
                "train_loss": paired_difference([r["train_loss"] for r in ra], [r["train_loss"] for r in rb])})
    d["verdict"] = verdict(d)


def _says(diff, a, higher_is_better):
    if diff["resolved"] is None:
        return "one seed: no interval"
    if not diff["resolved"]:
        return "unresolved (interval includes 0)"
    better = (diff["low"] > 0) == higher_is_better
    return f"{a} {'higher' if diff['low'] > 0 else 'lower'} ({'better' if better else 'worse'})"


def verdict(d):
    """Plain statement: does SGDF beat momentum SGD on test accuracy, i.e. is the paired difference resolved > 0?"""
    c = next((c for c in d["comparisons"] if (c["a"], c["b"]) == ("SGDF", "SGD+momentum")), None)
    if c is None:
        return "SGDF and SGD+momentum did not both run."
    acc = c["test_acc_pct"]
    n = acc["n"]
    if acc["resolved"] and acc["low"] > 0:
        word = "SGDF beats momentum SGD"
    elif acc["resolved"]:
        word = "SGDF is worse than momentum SGD"
    else:
        word = "SGDF does not beat momentum SGD (unresolved: the interval includes 0)"
    return (f"{word} on test accuracy here: SGDF - SGD+momentum {format_interval(acc, 2, signed=True)} points "
            f"(paired over {n} seeds, 95% interval); final training loss difference "
            f"{format_interval(c['train_loss'], 4, signed=True)}.")


def reanalyse(path):
    """Recompute the analysis and tables from the runs saved in ``path`` (older files: runs listed in seed order
    0, 1, ... without a seed field), and rewrite ``path`` and its .md beside it."""
    res = json.loads(path.read_text())
    for d in res["datasets"].values():
        for name, s in d["final"].items():
            for i, r in enumerate(s["runs"]):
                r.setdefault("seed", i)  # older files: the test seeds were range(test_seeds), in order
            d["final"][name] = {"lr": s["lr"], "runs": s["runs"]}
        analyse(d)
    res["reanalysed"] = (f"intervals and tables recomputed on {datetime.date.today().isoformat()} from the per-seed "
                         "runs of the run above (python benchmarks/quality_sgdf.py --reanalyse ...); nothing "
                         "retrained")
    path.write_text(json.dumps(res, indent=1))
    path.with_suffix(".md").write_text(markdown(res))
    print(f"rewrote {path} and {path.with_suffix('.md')}")


def markdown(res):
    md = ["# SGDF quality check: SGDF vs SGD+momentum vs AdamW", "",
          f"- date: {res['date']}", f"- device: {res['device']} ({res['threads']} torch thread)",
          f"- torch: {res['torch']}", f"- command: `{res['command']}`",
          f"- protocol: {res['epochs']} epochs, batch 64, cosine decay to 0; lr sweep of {len(LR_GRID['SGDF'])} "
          f"values per optimizer scored by validation accuracy (mean of {res['sweep_seeds']} seeds); the best lr "
          f"then trained with {res['test_seeds']} other seeds (0..{res['test_seeds'] - 1}; a seed fixes the "
          "initial weights and batch order for every optimizer) and scored on the test split. Weight decay: "
          "coupled 5e-4 (SGDF, SGD+momentum 0.9), decoupled 1e-2 (AdamW). SGDF betas (0.9, 0.999), gamma 0.5.",
          "- statistics: mean +- the half-width of the 95% Student-t interval over the test seeds; differences "
          "A - B are paired by seed, each with its own interval, and called unresolved when it includes 0.",
          f"- total wall time: {res['wall_s']:.0f} s"]
    if res.get("reanalysed"):
        md.append(f"- {res['reanalysed']}")
    md.append("")
    for dataset, d in res["datasets"].items():
        model = "small CNN (2 conv + 2 linear)" if dataset == "digits" else "MLP (2 hidden layers of 64)"
        md += [f"## {dataset}: {model}; {d['sizes']['train']} train / {d['sizes']['val']} val / "
               f"{d['sizes']['test']} test", "", f"**{d['verdict']}**", "",
               "| optimizer | chosen lr | test acc % | min / max | final train loss | s per run |",
               "|---|---|---|---|---|---|"]
        for name, s in d["final"].items():
            accs = [100 * r["test_acc"] for r in s["runs"]]
            md.append(f"| {name} | {s['lr']:g} | {format_interval(s['test_acc_pct'])} | {min(accs):.2f} / "
                      f"{max(accs):.2f} | {format_interval(s['train_loss'], 4)} | {s['wall_s_mean']:.2f} |")
        md += ["", "Paired differences (A - B, same seeds):", "",
               "| A - B | test acc, points | says | final train loss | says |", "|---|---|---|---|---|"]
        for c in d["comparisons"]:
            md.append(f"| {c['a']} - {c['b']} | {format_interval(c['test_acc_pct'], 2, signed=True)} | "
                      f"{_says(c['test_acc_pct'], c['a'], True)} | "
                      f"{format_interval(c['train_loss'], 4, signed=True)} | {_says(c['train_loss'], c['a'], False)} |")
        md += ["", "Validation accuracy % in the sweep:", "",
               "| optimizer | " + " | ".join(f"lr #{i + 1}" for i in range(len(LR_GRID["SGDF"]))) + " |",
               "|---|" + "---|" * len(LR_GRID["SGDF"])]
        for name, accs in d["sweep_val_acc"].items():
            md.append(f"| {name} | " + " | ".join(f"{float(lr):g}: {100 * a:.2f}" for lr, a in accs.items()) + " |")
        md.append("")
    return "\n".join(md)


if __name__ == "__main__":
    main()
