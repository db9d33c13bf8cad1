"""Writes DIR/report.md (tables) and the PNG figures from the collected demo results."""

import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

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


def save_curves(runs: List[dict], path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        losses = np.asarray(run["losses"])
        window = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax1.plot(np.arange(window, len(losses) + 1), smooth, color=_color(run["name"]), ls=_style(run["name"]),
                 label=run["name"])
        ax2.plot(run["eval_steps"], run["eval_mse"], marker="o", ms=3, color=_color(run["name"]),
                 ls=_style(run["name"]), label=run["name"])
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (each method's own weighting)")
    ax1.set_title("Training loss (moving average)")
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.set_ylabel("held-out eps-MSE, unweighted (EMA weights)")
    ax2.set_title("Held-out denoising error (same metric for all)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


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


def write_report(out: Path, results: dict) -> Path:
    """Write figures and report.md into ``out``; ``results`` is the dict __main__ collected (also saved as JSON)."""
    out.mkdir(parents=True, exist_ok=True)
    runs = results["runs"]
    figures = {}
    for run in runs:
        name = f"samples_{run['name'].replace('+', '_')}.png"
        save_grid(run["samples"], out / name, f"{run['name']}: {len(run['samples'])} DDIM samples (first 100)")
        figures[run["name"]] = name
    save_grid(results["real_images"], out / "real_heldout.png", "held-out real images")
    save_overview({**{"held-out real": results["real_images"]}, **{r["name"]: r["samples"] for r in runs}},
                  out / "samples_overview.png")
    save_weights_and_share(results["weight_curves"], runs, out / "weights_loss_share.png")
    has_ntk = save_ntk(results.get("ntk_start"), runs, out / "ntk_effective_rank.png")
    save_curves(runs, out / "training_curves.png")

    cfg = results["config"]
    md = ["# sgdf-erd demo report", ""]
    if results.get("smoke"):
        md += ["**Smoke run** (few steps): this checks that the pipeline runs; the numbers mean nothing.", ""]
    md.append(f"Generated by `{results['command']}` on {results['date']}; device: {results['device_name']}; "
              f"torch {results['torch']}; wall time {results['wall_s']:.0f} s (before writing the figures).")
    md.append("")
    md.append("Every method trains the same U-Net "
              f"({results['model_params']:,} parameters) from the same initial weights on the same stream of "
              f"batches, noise levels and noise ({cfg['steps']} steps, batch {cfg['batch_size']}, seed "
              f"{cfg['seed']}, gradient clipping {cfg['grad_clip']}, EMA {cfg['ema_decay']}); only the loss "
              "weighting and the optimizer differ. Data: " f"{results['data']['source']}; "
              f"{results['data']['train']} training / {results['data']['test']} held-out images. Noise process: "
              f"continuous cosine schedule, eps prediction, log-SNR in [-{cfg['logsnr_max']:g}, "
              f"{cfg['logsnr_max']:g}]. Sampler: DDIM (eta 0), {cfg['sample_steps']} steps, "
              f"{cfg['num_samples']} samples per method.")
    md.append("")
    md.append(f"Learning rates: {results['lr_note']}")
    md.append("")
    md.append("## Sample quality per method")
    md.append("")
    md.append(f"Scored by a small CNN classifier trained here on the training split "
              f"(held-out accuracy {100 * results['scorer_accuracy']:.1f}%; labels: {results['data']['label_source']}). "
              "FD: Frechet distance of classifier features to the held-out images (lower is better); confidence: "
              "mean top class probability; coverage: share of classes getting at least half their fair share of "
              "samples; class entropy: 1 = perfectly balanced classes. Held-out eps-MSE is unweighted, on fixed "
              "held-out noise, so it is comparable across weightings (it favours the low-noise levels that "
              "constant weighting emphasises). Single seed: differences of a few percent are within noise.")
    md.append("")
    header = ["method", "FD (lower better)", "confidence", "coverage", "class entropy", "held-out eps-MSE",
              "final train loss (own weighting)", "step ms (median)", "train s"]
    rows = []
    for run in runs:
        q = run["quality"]
        rows.append([f"**{run['name']}** (lr {run['lr']:g})", f"{q['fd']:.2f}", f"{q['confidence']:.3f}",
                     f"{q['coverage']:.2f}", f"{q['class_entropy']:.3f}", f"{run['eval_mse'][-1]:.4f}",
                     f"{run['final_loss']:.4f}", f"{run['step_ms_median']:.1f}", f"{run['wall_s']:.0f}"])
    for ref in results["references"]:
        q = ref["quality"]
        rows.append([f"_reference: {ref['name']}_", f"{q['fd']:.2f}", f"{q['confidence']:.3f}",
                     f"{q['coverage']:.2f}", f"{q['class_entropy']:.3f}", "", "", "", ""])
    md.append(_table(header, rows))
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
    md.append("## Per-bin loss share (EMA, % of the batch loss)")
    md.append("")
    edges = runs[0]["statistics"]["bin_edges"]
    nb = len(edges) - 1
    rows = []
    for b in range(nb):
        label = _bin_label(edges[b], edges[b + 1], b == 0, b == nb - 1)
        rows.append([label] + [f"{100 * run['statistics']['loss_share'][b]:.1f}" for run in runs])
    md.append(_table(["log-SNR bin"] + [r["name"] for r in runs], rows))
    md.append("")
    md.append("![weights and loss share](weights_loss_share.png)")
    md.append("")
    md.append("## NTK effective rank per log-SNR bin")
    md.append("")
    if has_ntk:
        ntk = results["ntk_start"]
        md.append(f"`sgdf_erd.diagnostics.ntk_spectrum` on {results['ntk_note']}.")
        md.append("")
        rows = []
        for b in range(len(ntk["effective_rank"])):
            label = _bin_label(ntk["bin_edges"][b], ntk["bin_edges"][b + 1], b == 0, b == len(ntk["count"]) - 1)
            row = [label, str(int(ntk["count"][b])), f"{ntk['effective_rank'][b]:.2f}"]
            row += [f"{r['ntk_end']['effective_rank'][b]:.2f}" for r in runs if r.get("ntk_end") is not None]
            rows.append(row)
        md.append(_table(["log-SNR bin", "samples", "start"] +
                         [f"end {r['name']}" for r in runs if r.get("ntk_end") is not None], rows))
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
    """Plain statements computed from the numbers (no judgement beyond what they show)."""
    runs = {r["name"]: r for r in results["runs"]}
    lines = []
    ranked = sorted(runs.values(), key=lambda r: r["quality"]["fd"])
    lines.append("Ranking by FD (lower is better): " + ", ".join(
        f"{r['name']} {r['quality']['fd']:.2f}" for r in ranked) + ".")

    def compare(a: str, b: str, what: str) -> None:
        if a in runs and b in runs:
            fa, fb = runs[a]["quality"]["fd"], runs[b]["quality"]["fd"]
            verdict = "lower (better)" if fa < fb else "higher (worse)" if fa > fb else "equal"
            lines.append(f"{what}: FD {fa:.2f} vs {fb:.2f}, {abs(fa / fb - 1) * 100:.0f}% {verdict}; "
                         f"held-out eps-MSE {runs[a]['eval_mse'][-1]:.4f} vs {runs[b]['eval_mse'][-1]:.4f}.")

    compare("erd+sgdf", "constant+sgdf", "ERD vs constant weighting (SGDF)")
    compare("erd+sgdf", "min_snr+sgdf", "ERD vs Min-SNR weighting (SGDF)")
    compare("erd+adamw", "constant+adamw", "ERD vs constant weighting (AdamW)")
    compare("erd+sgdf", "erd+adamw", "SGDF vs AdamW (ERD weighting)")
    compare("constant+sgdf", "constant+adamw", "SGDF vs AdamW (constant weighting)")
    timing = {r["path"]: r["ms_per_step"] for r in results["optimizer_timing"]}
    if "SGDF fused" in timing and "SGDF foreach" in timing:
        lines.append(f"Fused SGDF step {timing['SGDF fused']:.3f} ms vs foreach {timing['SGDF foreach']:.3f} ms "
                     f"({timing['SGDF foreach'] / timing['SGDF fused']:.2f}x) on this device.")
    for r in results["runs"]:
        edges = np.asarray(r["statistics"]["bin_edges"])
        share = np.asarray(r["statistics"]["loss_share"])
        noisy = float(share[(edges[:-1] + edges[1:]) / 2 < 0].sum())
        r["noisy_half_share"] = noisy
    lines.append("Share of the loss from the noisier half (log-SNR < 0): " + ", ".join(
        f"{r['name']} {100 * r['noisy_half_share']:.0f}%" for r in results["runs"]) + ".")
    ntk = results.get("ntk_start")
    if ntk is not None:
        def ends(d):
            rank = np.asarray(d["effective_rank"], dtype=float)
            ok = np.asarray(d["count"]) > 0
            return rank[ok][0], rank[ok][-1]
        lo, hi = ends(ntk)
        text = f"NTK effective rank, noisiest vs cleanest bin: start {lo:.1f} vs {hi:.1f}"
        for r in results["runs"]:
            if r.get("ntk_end") is not None:
                lo, hi = ends(r["ntk_end"])
                text += f"; {r['name']} {lo:.1f} vs {hi:.1f}"
        lines.append(text + ".")
    lines.append("One seed and a small budget: treat differences of a few percent as noise; rerun with other "
                 "--seed values before drawing conclusions.")
    return lines
