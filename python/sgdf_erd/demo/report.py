"""Writes DIR/report.md (tables) and the PNG figures from the collected demo results."""

import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from .methods import comparisons
from .stats import format_interval, interval, paired_difference

import matplotlib
matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

_COLORS = {"erd": "tab:red", "constant": "tab:blue", "min_snr": "tab:green", "p2": "tab:purple",
           "debias": "tab:brown"}


def _color(name: str) -> str:
    return _COLORS.get(name.split("+")[0], "tab:gray")


def _style(name: str) -> str:
    return "--" if name.endswith("+adamw") else "-"


# ---------------------------------------------------------------------------------------------------- figures
def _tile(images: torch.Tensor, nrow: int) -> np.ndarray:
    """Up to nrow x nrow images [N, 1, H, W] in [-1, 1] laid out row-major on a canvas with 1-pixel gutters."""
    images = images[: nrow * nrow].squeeze(1).float().cpu().numpy()
    rows = max(1, math.ceil(len(images) / nrow))
    size = images.shape[-1]
    canvas = np.full((rows * (size + 1) + 1, nrow * (size + 1) + 1), -1.0)
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        canvas[1 + r * (size + 1): 1 + r * (size + 1) + size, 1 + c * (size + 1): 1 + c * (size + 1) + size] = img
    return canvas


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_grid(images: torch.Tensor, path: Path, title: str, nrow: int = 10) -> None:
    rows = max(1, math.ceil(min(len(images), nrow * nrow) / nrow))
    fig, ax = plt.subplots(figsize=(4, 4 * rows / nrow + 0.4))
    ax.imshow(_tile(images, nrow), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    _save(fig, path)


def save_overview(grids: Dict[str, torch.Tensor], path: Path, nrow: int = 8) -> None:
    fig, axes = plt.subplots(1, len(grids), figsize=(2.6 * len(grids), 2.9))
    for ax, (name, images) in zip(np.atleast_1d(axes), grids.items()):
        ax.imshow(_tile(images, nrow), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    _save(fig, path)


def save_weights_and_share(weight_curves: Dict[str, Dict[str, list]], runs: List[dict], path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in weight_curves.items():
        ax1.plot(curve["logsnr"], curve["weight"], color=_color(name), label=name)
    ax1.set_xlabel("log-SNR  (noisier to the left)")
    ax1.set_ylabel("loss weight w(log-SNR)")
    ax1.set_yscale("log")
    ax1.set_title("Weightings (eps prediction, not renormalised)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    for run in runs:
        edges = np.asarray(run["statistics"]["bin_edges"])
        centres = 0.5 * (edges[1:] + edges[:-1])
        ax2.plot(centres, 100 * np.asarray(run["statistics"]["loss_share"]), marker="o", ms=3,
                 color=_color(run["name"]), ls=_style(run["name"]), label=run["name"])
    ax2.set_xlabel("log-SNR bin centre (end bins also hold samples beyond the range)")
    ax2.set_ylabel("share of the batch loss, % (EMA)")
    ax2.set_title("Which noise levels dominate the loss")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    _save(fig, path)


def save_ntk(ntk_start: Optional[dict], runs: List[dict], path: Path) -> bool:
    if ntk_start is None:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4))
    edges = np.asarray(ntk_start["bin_edges"])
    centres = 0.5 * (edges[1:] + edges[:-1])

    def plot(d, **kw):
        rank = np.asarray(d["effective_rank"], dtype=float)
        rank[np.asarray(d["count"]) == 0] = np.nan
        ax.plot(centres, rank, marker="o", ms=3, **kw)

    plot(ntk_start, color="black", ls=":", label="start (shared initialisation)")
    for run in runs:
        if run.get("ntk_end") is not None:
            plot(run["ntk_end"], color=_color(run["name"]), ls=_style(run["name"]), label=f"end: {run['name']}")
    ax.set_xlabel("log-SNR bin centre (noisier to the left)")
    ax.set_ylabel("NTK effective rank per bin")
    ax.set_title("Empirical NTK effective rank vs noise level")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def save_curves(runs_by_method: Dict[str, List[dict]], path: Path) -> None:
    """Training loss of the first seed; held-out eps-MSE as the mean over seeds."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in runs_by_method.items():
        losses = np.asarray(runs[0]["losses"])
        window = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax1.plot(np.arange(window, len(losses) + 1), smooth, color=_color(name), ls=_style(name), label=name)
        ax2.plot(runs[0]["eval_steps"], np.mean([r["eval_mse"] for r in runs], axis=0), marker="o", ms=3,
                 color=_color(name), ls=_style(name), label=name)
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (each method's own weighting)")
    ax1.set_title("Training loss, first seed (moving average)")
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.set_ylabel("held-out eps-MSE, unweighted (EMA weights)")
    ax2.set_title("Held-out denoising error, mean over seeds")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def save_convergence(analysis: dict, path: Path) -> None:
    """FD and held-out eps-MSE at each checkpoint: mean over seeds with 95% interval bars."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(analysis["methods"])
    for ax, metric, label in zip(axes, ("fd", "heldout_mse"), ("FD (lower better)", "held-out eps-MSE")):
        for i, name in enumerate(names):
            points = analysis["methods"][name]["checkpoints"]
            steps = np.array([c["step"] for c in points], dtype=float)
            steps = steps * (1 + 0.012 * (i - (len(names) - 1) / 2))  # small offsets keep the bars apart
            means = [c[metric]["mean"] for c in points]
            bars = [c[metric]["half_width"] or 0.0 for c in points]
            ax.errorbar(steps, means, yerr=bars, marker="o", ms=4, capsize=3, color=_color(name), ls=_style(name),
                        label=name)
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    n = analysis["seeds"]
    fig.suptitle(f"Convergence: mean over {n} seed{'s' if n > 1 else ''}"
                 + (", bars = 95% Student-t interval" if n > 1 else " (one seed: no intervals)"), fontsize=10)
    _save(fig, path)


# ---------------------------------------------------------------------------------------------------- analysis
QUALITY_METRICS = ("fd", "confidence", "coverage", "class_entropy")
LOWER_IS_BETTER = {"fd": "FD", "heldout_mse": "held-out eps-MSE"}


def analyse(runs_by_method: Dict[str, List[dict]]) -> dict:
    """Per method: each metric's mean and interval over seeds, at the end and at every checkpoint; the paired
    differences of methods.comparisons, at the end and at every checkpoint."""
    def values(runs, key):
        return [r["quality"][key] if key in QUALITY_METRICS else r[key] for r in runs]

    def at_checkpoints(runs, metric):
        cols = zip(*(r["checkpoints"] for r in runs))
        return [[c["quality"]["fd"] if metric == "fd" else c[metric] for c in col] for col in cols]

    methods = {}
    for name, runs in runs_by_method.items():
        m = {key: interval(values(runs, key)) for key in QUALITY_METRICS + ("heldout_mse", "final_loss",
                                                                             "step_ms_median", "wall_s", "cpu_s")}
        fd_cols, mse_cols = at_checkpoints(runs, "fd"), at_checkpoints(runs, "heldout_mse")
        m["checkpoints"] = [{"step": c["step"], "fd": interval(f), "heldout_mse": interval(e)}
                            for c, f, e in zip(runs[0]["checkpoints"], fd_cols, mse_cols)]
        methods[name] = m
    diffs = []
    for comp in comparisons(list(runs_by_method)):
        a, b = runs_by_method[comp["a"]], runs_by_method[comp["b"]]
        d = dict(comp)
        for metric in LOWER_IS_BETTER:
            d[metric] = paired_difference(values(a, metric), values(b, metric))
            d[f"{metric}_checkpoints"] = [
                {"step": step, **paired_difference(x, y)} for step, x, y in zip(
                    [c["step"] for c in a[0]["checkpoints"]], at_checkpoints(a, metric), at_checkpoints(b, metric))]
        diffs.append(d)
    return {"seeds": len(next(iter(runs_by_method.values()))), "methods": methods, "comparisons": diffs}


def verdict(d: dict, a: str) -> str:
    """What a paired difference A - B of a lower-is-better metric says."""
    if d["resolved"] is None:
        return "one seed: no interval"
    if not d["resolved"]:
        return "unresolved (interval includes 0)"
    return f"{a} lower (better)" if d["high"] < 0 else f"{a} higher (worse)"


# ---------------------------------------------------------------------------------------------------- tables
def _table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _bin_label(lo: float, hi: float, first: bool, last: bool) -> str:
    """End bins also hold the samples beyond the configured range."""
    if first:
        return f"< {hi:.2f}"
    if last:
        return f">= {lo:.2f}"
    return f"[{lo:.2f}, {hi:.2f})"


def _fmt(d: dict, digits: int) -> str:
    return format_interval(d, digits)


def write_report(out: Path, results: dict) -> Path:
    """Write figures and report.md into ``out``; ``results`` is the dict __main__ collected (also saved as JSON),
    with ``results["analysis"]`` from analyse()."""
    out.mkdir(parents=True, exist_ok=True)
    runs_by_method = results["runs"]
    analysis = results["analysis"]
    n_seeds = analysis["seeds"]
    first = [runs[0] for runs in runs_by_method.values()]  # the first seed's run of each method
    figures = {}
    for run in first:
        name = f"samples_{run['name'].replace('+', '_')}.png"
        save_grid(run["samples"], out / name, f"{run['name']}, seed {run['seed']}: {len(run['samples'])} DDIM "
                                              "samples (first 100)")
        figures[run["name"]] = name
    save_grid(results["real_images"], out / "real_heldout.png", "held-out real images")
    save_overview({**{"held-out real": results["real_images"]}, **{r["name"]: r["samples"] for r in first}},
                  out / "samples_overview.png")
    save_weights_and_share(results["weight_curves"], first, out / "weights_loss_share.png")
    has_ntk = save_ntk(results.get("ntk_start"), first, out / "ntk_effective_rank.png")
    save_curves(runs_by_method, out / "training_curves.png")
    save_convergence(analysis, out / "convergence.png")

    cfg = results["config"]
    seeds = results["seeds"]
    md = ["# sgdf-erd demo report", ""]
    if results.get("smoke"):
        md += ["**Smoke run** (few steps): this checks that the pipeline runs; the numbers mean nothing.", ""]
    md.append(f"Generated by `{results['command']}` on {results['date']}; device: {results['device_name']}; "
              f"torch {results['torch']}; wall time {results['wall_s']:.0f} s (before writing the figures)"
              + _cpu_note(results) + ".")
    md.append("")
    md.append("Every method trains the same U-Net "
              f"({results['model_params']:,} parameters) with each of the seeds {', '.join(map(str, seeds))}: a "
              "seed fixes the initial weights, the stream of batches, noise levels and noise, and the sampler's "
              f"noise, so the methods' runs with one seed differ only in the loss weighting and the optimizer "
              f"({cfg['steps']} steps, batch {cfg['batch_size']}, gradient clipping {cfg['grad_clip']}, EMA "
              f"{cfg['ema_decay']}). Data: {results['data']['source']}; {results['data']['train']} training / "
              f"{results['data']['test']} held-out images (split by seed {cfg['seed']}). Noise process: continuous "
              f"cosine schedule, eps prediction, log-SNR in [-{cfg['logsnr_max']:g}, {cfg['logsnr_max']:g}]. "
              f"Sampler: DDIM (eta 0), {cfg['sample_steps']} steps, {cfg['num_samples']} samples per method, seed "
              "and checkpoint.")
    md.append("")
    md.append("Learning rates: " + ", ".join(f"{m['name']} {m['lr']:g}" for m in results["methods"])
              + f"; {results['lr_note']}.")
    md.append("")
    if n_seeds > 1:
        md.append(f"**Numbers are mean +- the half-width of the 95% Student-t interval over the {n_seeds} seeds** "
                  f"(t with {n_seeds - 1} degrees of freedom, standard deviation with n - 1). A paired difference "
                  "A - B is taken per seed (same seed for both) and gets its own interval; one whose interval "
                  "includes 0 is called unresolved.")
    else:
        md.append("**One seed: the numbers are single runs, with no interval; no difference below can be called "
                  "resolved.** Run with `--seeds 3` or more for intervals.")
    md.append("")
    md.append("## Sample quality per method")
    md.append("")
    md.append(f"Scored by a small CNN classifier trained here on the training split "
              f"(held-out accuracy {100 * results['scorer_accuracy']:.1f}%; labels: {results['data']['label_source']}). "
              "FD: Frechet distance of classifier features to the held-out images (lower is better); confidence: "
              "mean top class probability; coverage: share of classes getting at least half their fair share of "
              "samples; class entropy: 1 = perfectly balanced classes. Held-out eps-MSE is unweighted, on fixed "
              "held-out noise, so it is comparable across weightings (it favours the low-noise levels that "
              "constant weighting emphasises).")
    md.append("")
    header = ["method", "FD (lower better)", "confidence", "coverage", "class entropy", "held-out eps-MSE",
              "final train loss (own weighting)", "step ms (median)", "train s per run",
              "CPU s per run"]  # wall seconds depend on the machine's load, CPU seconds hardly
    rows = []
    for m in results["methods"]:
        a = analysis["methods"][m["name"]]
        rows.append([f"**{m['name']}** (lr {m['lr']:g})", _fmt(a["fd"], 2), _fmt(a["confidence"], 3),
                     _fmt(a["coverage"], 2), _fmt(a["class_entropy"], 3), _fmt(a["heldout_mse"], 4),
                     _fmt(a["final_loss"], 4), f"{a['step_ms_median']['mean']:.1f}", f"{a['wall_s']['mean']:.0f}",
                     f"{a['cpu_s']['mean']:.0f}"])
    for ref in results["references"]:
        q = ref["quality"]
        rows.append([f"_reference: {ref['name']}_", f"{q['fd']:.2f}", f"{q['confidence']:.3f}",
                     f"{q['coverage']:.2f}", f"{q['class_entropy']:.3f}", "", "", "", "", ""])
    md.append(_table(header, rows))
    md.append("")
    md.append("## Paired differences (A - B, same seeds)")
    md.append("")
    if analysis["comparisons"]:
        rows = []
        for d in analysis["comparisons"]:
            rows.append([f"{d['label']}: {d['a']} - {d['b']}", _signed(d["fd"], 2), verdict(d["fd"], d["a"]),
                         _signed(d["heldout_mse"], 4), verdict(d["heldout_mse"], d["a"])])
        md.append(_table(["comparison", "FD difference", "FD says", "eps-MSE difference", "eps-MSE says"], rows))
    else:
        md.append("No pair of the methods run differs in exactly one of weighting and optimizer.")
    md.append("")
    md.append("## Convergence: FD and held-out eps-MSE along training")
    md.append("")
    fractions = cfg["checkpoint_fractions"]
    steps = cfg["checkpoint_steps"]
    cols = [f"{100 * f:.0f}% (step {s})" for f, s in zip(fractions, steps)]
    rows = []
    for m in results["methods"]:
        points = analysis["methods"][m["name"]]["checkpoints"]
        rows.append([m["name"]] + [_fmt(c["fd"], 2) for c in points] + [_fmt(c["heldout_mse"], 4) for c in points])
    md.append(_table(["method"] + [f"FD at {c}" for c in cols] + [f"eps-MSE at {c}" for c in cols], rows))
    md.append("")
    if analysis["comparisons"]:
        md.append("Paired differences along training (A - B; negative: A lower, i.e. ahead):")
        md.append("")
        rows = []
        for d in analysis["comparisons"]:
            rows.append([f"{d['a']} - {d['b']}"] + [_signed(c, 2) for c in d["fd_checkpoints"]]
                        + [_signed(c, 4) for c in d["heldout_mse_checkpoints"]])
        md.append(_table(["comparison"] + [f"FD at {c}" for c in cols] + [f"eps-MSE at {c}" for c in cols], rows))
        md.append("")
    md.append("![convergence](convergence.png)")
    md.append("")
    md.append(f"## Samples (seed {seeds[0]})")
    md.append("")
    md.append("![samples](samples_overview.png)")
    md.append("")
    md.append("Per-method grids: " + ", ".join(f"[{n}]({f})" for n, f in figures.items())
              + ", [held-out real](real_heldout.png).")
    md.append("")
    md.append("## Step time")
    md.append("")
    md.append("Optimizer step alone on this model's parameters (median of interleaved rounds):")
    md.append("")
    md.append(_table(["path", "ms per step", "x fused SGDF"],
                     [[r["path"], f"{r['ms_per_step']:.3f}", f"{r['relative_to_fused_sgdf']:.2f}"]
                      for r in results["optimizer_timing"]]))
    md.append("")
    md.append("Full training step (forward, loss, backward, clipping, optimizer, EMA) is the `step ms` column "
              "above; the optimizer is a small part of it for a model this size.")
    md.append("")
    md.append(f"## Per-bin loss share (EMA, % of the batch loss; seed {seeds[0]})")
    md.append("")
    edges = first[0]["statistics"]["bin_edges"]
    nb = len(edges) - 1
    rows = []
    for b in range(nb):
        label = _bin_label(edges[b], edges[b + 1], b == 0, b == nb - 1)
        rows.append([label] + [f"{100 * run['statistics']['loss_share'][b]:.1f}" for run in first])
    md.append(_table(["log-SNR bin"] + [r["name"] for r in first], rows))
    md.append("")
    md.append("![weights and loss share](weights_loss_share.png)")
    md.append("")
    md.append(f"## NTK effective rank per log-SNR bin (seed {seeds[0]})")
    md.append("")
    if has_ntk:
        ntk = results["ntk_start"]
        md.append(f"`sgdf_erd.diagnostics.ntk_spectrum` on {results['ntk_note']}.")
        md.append("")
        rows = []
        for b in range(len(ntk["effective_rank"])):
            label = _bin_label(ntk["bin_edges"][b], ntk["bin_edges"][b + 1], b == 0, b == len(ntk["count"]) - 1)
            row = [label, str(int(ntk["count"][b])), f"{ntk['effective_rank'][b]:.2f}"]
            row += [f"{r['ntk_end']['effective_rank'][b]:.2f}" for r in first if r.get("ntk_end") is not None]
            rows.append(row)
        md.append(_table(["log-SNR bin", "samples", "start"] +
                         [f"end {r['name']}" for r in first if r.get("ntk_end") is not None], rows))
        md.append("")
        md.append("![NTK effective rank](ntk_effective_rank.png)")
    else:
        md.append(f"Not computed: {results.get('ntk_note', 'the NTK diagnostic is unavailable')}.")
    md.append("")
    md.append("## Training curves")
    md.append("")
    md.append("![training curves](training_curves.png)")
    md.append("")
    md.append("## Reading the results")
    md.append("")
    md.extend(f"- {line}" for line in results["summary"])
    md.append("")
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def _cpu_note(results: dict) -> str:
    cpu = results.get("cpu_s")
    if not cpu:
        return ""
    text = f"; CPU time {cpu['main']:.0f} s in this process"
    if cpu["workers"] > 0:
        text += f", {cpu['workers']:.0f} s in {results['workers']} worker processes"
    if cpu.get("idle_wall_s") is not None:
        text += (f" (on {results['workers']} idle cores about {cpu['idle_wall_s']:.0f} s: this process's CPU time "
                 "plus the runs' CPU times shared out over the workers in the order they take them)")
    return text


def _signed(d: dict, digits: int) -> str:
    return format_interval(d, digits, signed=True)


def write_json(out: Path, results: dict) -> Path:
    """Everything numeric (samples left out) as results.json, for scripts and tests."""
    def strip(obj):
        if isinstance(obj, torch.Tensor):
            return None
        if isinstance(obj, float) and not math.isfinite(obj):
            return None  # empty bins give NaN means; JSON has no NaN
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if not isinstance(v, torch.Tensor)}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj
    path = out / "results.json"
    path.write_text(json.dumps(strip(results), indent=1))
    return path


# ---------------------------------------------------------------------------------------------------- summary
def summarize(results: dict) -> List[str]:
    """Plain statements computed from the numbers (no judgement beyond what they show); stores the analysis in
    ``results["analysis"]``."""
    runs_by_method = results["runs"]
    analysis = results["analysis"] = analyse(runs_by_method)
    n = analysis["seeds"]
    lines = []
    ranked = sorted(analysis["methods"].items(), key=lambda kv: kv[1]["fd"]["mean"])
    lines.append(f"Ranking by mean FD over {n} seed{'s' if n > 1 else ''} (lower is better): " + ", ".join(
        f"{name} {_fmt(a['fd'], 2)}" for name, a in ranked) + ".")
    for d in analysis["comparisons"]:
        lines.append(f"{d['label']} ({d['a']} - {d['b']}): FD {_signed(d['fd'], 2)}, "
                     f"{verdict(d['fd'], d['a'])}; held-out eps-MSE {_signed(d['heldout_mse'], 4)}, "
                     f"{verdict(d['heldout_mse'], d['a'])}.")
    for d in analysis["comparisons"]:
        if d["kind"] == "weighting":  # the papers' convergence claim is about the weighting
            lines.append(_convergence_sentence(d, results["config"]["checkpoint_fractions"]))
    timing = {r["path"]: r["ms_per_step"] for r in results["optimizer_timing"]}
    if "SGDF fused" in timing and "SGDF foreach" in timing:
        lines.append(f"Fused SGDF step {timing['SGDF fused']:.3f} ms vs foreach {timing['SGDF foreach']:.3f} ms "
                     f"({timing['SGDF foreach'] / timing['SGDF fused']:.2f}x) on this device.")
    first = [runs[0] for runs in runs_by_method.values()]
    for r in first:
        edges = np.asarray(r["statistics"]["bin_edges"])
        share = np.asarray(r["statistics"]["loss_share"])
        r["noisy_half_share"] = float(share[(edges[:-1] + edges[1:]) / 2 < 0].sum())
    lines.append(f"Share of the loss from the noisier half (log-SNR < 0), seed {first[0]['seed']}: " + ", ".join(
        f"{r['name']} {100 * r['noisy_half_share']:.0f}%" for r in first) + ".")
    ntk = results.get("ntk_start")
    if ntk is not None:
        def ends(d):
            rank = np.asarray(d["effective_rank"], dtype=float)
            ok = np.asarray(d["count"]) > 0
            return rank[ok][0], rank[ok][-1]
        lo, hi = ends(ntk)
        text = f"NTK effective rank, noisiest vs cleanest bin (seed {first[0]['seed']}): start {lo:.1f} vs {hi:.1f}"
        for r in first:
            if r.get("ntk_end") is not None:
                lo, hi = ends(r["ntk_end"])
                text += f"; {r['name']} {lo:.1f} vs {hi:.1f}"
        lines.append(text + ".")
    if n == 1:
        lines.append("One seed: these are single runs and nothing above is resolved; rerun with --seeds 3 or more.")
    else:
        lines.append(f"{n} seeds at a small budget ({results['config']['steps']} steps): an unresolved difference "
                     "is not evidence of no effect, only that this run cannot tell; more seeds narrow the "
                     "intervals roughly as 1/sqrt(seeds).")
    return lines


def _convergence_sentence(d: dict, fractions: List[float]) -> str:
    """'A accelerates convergence' read off the curves: A's paired differences before the end of training."""
    weighting = d["a"].split("+")[0]
    parts, ahead, behind = [], [], []
    for metric, label, digits in (("fd", "FD", 2), ("heldout_mse", "eps-MSE", 4)):
        cells = []
        for f, c in zip(fractions, d[f"{metric}_checkpoints"]):
            cells.append(f"{100 * f:.0f}% {_signed(c, digits)}")
            if f < 1.0 and c["resolved"]:
                (ahead if c["high"] < 0 else behind).append(f"{label} at {100 * f:.0f}%")
        parts.append(f"{label} " + ", ".join(cells))
    if d["fd_checkpoints"][0]["resolved"] is None:
        claim = "one seed cannot say"
    elif ahead:
        claim = f"ahead (resolved) in {', '.join(ahead)}" + (f"; behind in {', '.join(behind)}" if behind else "")
    elif behind:
        claim = f"no: behind (resolved) in {', '.join(behind)}, ahead nowhere"
    else:
        claim = "not shown: no resolved difference before the end of training"
    return (f"Does {weighting} weighting accelerate convergence ({d['a']} - {d['b']} at "
            f"{', '.join(f'{100 * f:.0f}%' for f in fractions)} of the steps; ahead = a resolved negative "
            f"difference before the end)? {claim}. " + "; ".join(parts) + ".")
