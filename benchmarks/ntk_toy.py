"""The ERD paper's toy diagnosis: per-noise-level NTK spectrum of a small denoiser on a 2-D Gaussian mixture,
trained with constant loss weighting and with ERD weighting.

Setup: 8 Gaussians on the unit circle (std 0.05); VP corruption x_t = alpha x0 + sigma eps with alpha^2 =
sigmoid(lambda), sigma^2 = sigmoid(-lambda), log-SNR lambda ~ U(-10, 10); an MLP (3 x 128 SiLU, Fourier features
of lambda) predicts eps. Both runs start from the same initial weights and see the same data and noise; only the
per-sample weight differs: constant (1) or ERD, which for eps prediction on a VP schedule is w = sigma (the RMS
amplitude of the eps component the input carries; docs/erd.md).
At several steps, sgdf_erd.diagnostics.ntk_spectrum measures the NTK on a fixed probe batch (16 log-SNR bins x
64 samples, sketch 256) and we record each bin's effective rank and trace.

Writes benchmarks/results/ntk_toy.png, ntk_toy.json and ntk_toy.md.

    python benchmarks/ntk_toy.py [--steps N] [--quick]
"""

import argparse
import math
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, header, markdown_table, write_report  # noqa: E402

from sgdf_erd import ERDLoss  # noqa: E402
from sgdf_erd.diagnostics import ntk_spectrum  # noqa: E402

LOGSNR_RANGE = (-10.0, 10.0)


def sample_mixture(n, generator):
    centers = torch.stack([torch.cos(torch.arange(8) * math.pi / 4), torch.sin(torch.arange(8) * math.pi / 4)], 1)
    idx = torch.randint(0, 8, (n,), generator=generator)
    return centers[idx] + 0.05 * torch.randn(n, 2, generator=generator)


def vp_alpha_sigma(logsnr):
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


class Denoiser(nn.Module):
    """eps-prediction MLP conditioned on log-SNR through fixed Fourier features."""

    def __init__(self, hidden=128, freqs=8):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(math.log(0.05), math.log(5.0), freqs)))
        self.net = nn.Sequential(nn.Linear(2 + 2 * freqs, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x, logsnr):
        angle = logsnr[:, None] * self.freqs[None, :]
        return self.net(torch.cat([x, angle.sin(), angle.cos()], dim=1))



def probe_batch(num_bins, per_bin, seed):
    """Fixed noisy inputs: per_bin samples at log-SNRs spread uniformly inside each bin."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = LOGSNR_RANGE
    width = (hi - lo) / num_bins
    logsnr = (lo + width * (torch.arange(num_bins).repeat_interleave(per_bin)
                            + torch.rand(num_bins * per_bin, generator=g)))
    x0 = sample_mixture(len(logsnr), g)
    alpha, sigma = vp_alpha_sigma(logsnr)
    x_t = alpha[:, None] * x0 + sigma[:, None] * torch.randn(len(logsnr), 2, generator=g)
    return x_t, logsnr


def measure(model, probe, num_bins, sketch_dim):
    x_t, logsnr = probe
    model.eval()
    out = ntk_spectrum(model, x_t, logsnr, num_bins=num_bins, logsnr_range=LOGSNR_RANGE, sketch_dim=sketch_dim,
                       seed=0, logsnr=logsnr)
    model.train()
    return {k: out[k].tolist() for k in ("count", "trace", "effective_rank", "participation_ratio",
                                          "max_eigenvalue", "bin_edges")}


def train(weighting, steps, checkpoints, probe, args):
    torch.manual_seed(args.seed)  # same initial weights for both weightings
    model = Denoiser()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 1)  # same data and noise stream for both weightings
    spectra, losses = {}, {}
    # the loss module also bins the unweighted per-sample MSE by log-SNR (same bins as the spectra)
    loss_fn = ERDLoss("eps", weighting=weighting, num_bins=args.bins, logsnr_range=LOGSNR_RANGE)
    bin_loss = torch.zeros(args.bins, dtype=torch.float64)
    bin_n = torch.zeros(args.bins, dtype=torch.float64)
    for step in range(steps + 1):
        if step in checkpoints:
            spectra[step] = measure(model, probe, args.bins, args.sketch_dim)
            losses[step] = (bin_loss / bin_n.clamp_min(1)).tolist()
            bin_loss.zero_()
            bin_n.zero_()
        if step == steps:
            break
        x0 = sample_mixture(args.batch, g)
        logsnr = torch.rand(args.batch, generator=g) * (LOGSNR_RANGE[1] - LOGSNR_RANGE[0]) + LOGSNR_RANGE[0]
        eps = torch.randn(args.batch, 2, generator=g)
        alpha, sigma = vp_alpha_sigma(logsnr)
        pred = model(alpha[:, None] * x0 + sigma[:, None] * eps, logsnr)
        loss = loss_fn(pred, eps, alpha, sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stats = loss_fn.statistics()  # unweighted eps-MSE per bin since the last checkpoint
        bin_loss += (stats["mse_mean"] * stats["count"]).nan_to_num(0.0)
        bin_n += stats["count"]
    return spectra, losses


def plot(results, checkpoints, centers, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True, sharey="row")
    colors = plt.cm.viridis(torch.linspace(0, 0.9, len(checkpoints)).tolist())
    for col, weighting in enumerate(results):
        for color, step in zip(colors, checkpoints):
            s = results[weighting]["spectra"][step]
            axes[0, col].plot(centers, s["effective_rank"], "o-", color=color, ms=3, label=f"step {step}")
            axes[1, col].semilogy(centers, s["trace"], "o-", color=color, ms=3, label=f"step {step}")
        axes[0, col].set_title(f"{weighting} weighting")
        axes[1, col].set_xlabel("log-SNR (bin centre; noise rises to the left)")
    axes[0, 0].set_ylabel("NTK effective rank")
    axes[1, 0].set_ylabel("NTK trace (sketched)")
    axes[0, 1].legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle("Per-noise-level NTK spectrum, 2-D Gaussian mixture, eps-prediction MLP")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--bins", type=int, default=16)
    parser.add_argument("--per-bin", type=int, default=64)
    parser.add_argument("--sketch-dim", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="40 steps, 8 probe samples per bin (smoke run)")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.per_bin = 40, 8
    torch.set_num_threads(min(2, torch.get_num_threads()))
    checkpoints = sorted({0, args.steps // 20, args.steps // 4, args.steps})
    probe = probe_batch(args.bins, args.per_bin, seed=1234)
    lo, hi = LOGSNR_RANGE
    centers = [lo + (hi - lo) * (i + 0.5) / args.bins for i in range(args.bins)]

    results = {}
    start = time.perf_counter()
    for weighting in ("constant", "erd"):
        t0 = time.perf_counter()
        spectra, losses = train(weighting, args.steps, checkpoints, probe, args)
        results[weighting] = {"spectra": spectra, "bin_mse": losses, "seconds": time.perf_counter() - t0}
        final = spectra[args.steps]
        print(f"{weighting:8s} {results[weighting]['seconds']:.1f}s  final effective rank per bin (high noise "
              f"-> low noise): {[round(v, 1) for v in final['effective_rank']]}", flush=True)

    stem = "ntk_toy_quick" if args.quick else "ntk_toy"
    os.makedirs(args.out, exist_ok=True)
    plot(results, checkpoints, centers, os.path.join(args.out, stem + ".png"))
    seconds = time.perf_counter() - start
    meta = {**header(torch.device("cpu")), "seconds": round(seconds, 1),
            "probe": f"{args.bins} log-SNR bins x {args.per_bin} samples, sketch {args.sketch_dim}; plot: {stem}.png"}
    columns = ["run", "step"] + [f"{c:.2f}" for c in centers]
    sections = []
    for metric, fmt in (("effective_rank", "{:.1f}"), ("trace", "{:.3g}")):
        table = markdown_table(columns, [[w, step] + [fmt.format(v) for v in results[w]["spectra"][step][metric]]
                                         for w in results for step in checkpoints])
        sections.append(f"## {metric} per log-SNR bin (columns: bin centre; high noise on the left)\n\n{table}")
    table = markdown_table(columns, [[w, step] + [f"{v:.3f}" for v in results[w]["bin_mse"][step]]
                                     for w in results for step in checkpoints[1:]])
    sections.append(f"## unweighted eps-MSE per bin, averaged over the steps before each checkpoint\n\n{table}")
    data = {"args": vars(args), "checkpoints": checkpoints, "bin_centers": centers, "results": results}
    title = "NTK spectrum toy (2-D Gaussian mixture, eps prediction, VP)"
    path = write_report(stem, title, meta, "\n\n".join(sections), data, out_dir=args.out)
    print(f"wrote {path} (and .json, .png) in {seconds:.0f}s")


if __name__ == "__main__":
    main()
