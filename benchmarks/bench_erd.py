"""Forward + backward time of the fused ERD loss against plain F.mse_loss and the composite PyTorch version.

Peers, timed interleaved in one run on the same tensors:
  fused      sgdf_erd.ERDLoss (eps, ERD weights, 16 log-SNR bins, running statistics updated every step)
  composite  the same loss and statistics in plain PyTorch: per-sample mean of (o - t)^2, weight multiply, batch
             mean, and bucketize + index_add_ per-bin sums with the moving-average update
  mse_loss   torch.nn.functional.mse_loss (unweighted, no statistics): the floor any fused loss aims at

Each sample times `inner` consecutive steps; the table reports the median over `repeats` samples (and the
minimum, the sample least disturbed by other processes on a shared machine), and ratios of medians.
Writes benchmarks/results/erd_<device>.md and .json.

    python benchmarks/bench_erd.py                 # CPU, default shapes
    python benchmarks/bench_erd.py --device cuda   # on a GPU (also replayed from CUDA graphs: --no-graphs skips)
    python benchmarks/bench_erd.py --quick         # smoke run
"""

import argparse
import functools
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_name, header, load_average, markdown_table, time_interleaved_samples  # noqa: E402
from common import results_folder, time_graphed, write_results  # noqa: E402

from sgdf_erd.erd import ERDLoss  # noqa: E402

NUM_BINS, LOGSNR_RANGE, DECAY = 16, (-10.0, 10.0), 0.99
PEERS = ("fused", "composite", "mse_loss")


class CompositeERD:
    """Plain PyTorch ERD loss (eps prediction) with the same per-bin statistics as ERDLoss."""

    def __init__(self, device):
        self.edges = torch.linspace(*LOGSNR_RANGE, NUM_BINS + 1, dtype=torch.float64, device=device)
        self.running = torch.zeros(4, NUM_BINS, dtype=torch.float64, device=device)

    def __call__(self, output, target, alpha, sigma):
        mse = (target.float() - output.float()).square().reshape(output.shape[0], -1).mean(dim=1)
        weight = sigma / torch.sqrt(alpha.square() + sigma.square())
        loss = (weight * mse).mean().to(output.dtype)
        with torch.no_grad():
            m = mse.double()
            l = m * weight.double()
            logsnr = torch.log(alpha.double().square() / sigma.double().square())
            idx = (torch.bucketize(logsnr, self.edges, right=True) - 1).clamp(0, NUM_BINS - 1)
            ok = torch.isfinite(m) & torch.isfinite(l) & ~torch.isnan(logsnr)
            sums = torch.zeros(4, NUM_BINS, dtype=torch.float64, device=output.device)
            values = torch.stack([ok.double(), m, m * m, l]) * ok
            sums.index_add_(1, idx, values)
            self.running.mul_(DECAY).add_(sums, alpha=1 - DECAY)
        return loss


def make_inputs(shape, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    output = torch.randn(shape, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    target = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    t = torch.rand(shape[0], generator=g)
    alpha = torch.cos(t * torch.pi / 2).to(device)
    sigma = torch.sin(t * torch.pi / 2).to(device)
    return output, target, alpha, sigma


def step_fn(name, device):
    if name == "fused":
        fn = ERDLoss().to(device)
    elif name == "composite":
        fn = CompositeERD(device)
    else:
        fn = lambda o, t, a, s: F.mse_loss(o, t)  # noqa: E731

    def step(output, target, alpha, sigma):
        output.grad = None
        fn(output, target, alpha, sigma).backward()

    return step


def time_peers(shape, dtype, device, repeats, inner, warmup):
    inputs = make_inputs(shape, dtype, device)
    peers = {name: functools.partial(step_fn(name, device), *inputs) for name in PEERS}
    seconds = time_interleaved_samples(peers, device, rounds=repeats, iters=inner, warmup=warmup)
    samples = {name: [t * 1e6 for t in v] for name, v in seconds.items()}
    return {name: statistics.median(v) for name, v in samples.items()}, samples, peers


def check_agreement(device):
    """The composite peer computes the same loss as the fused one (otherwise the comparison is void)."""
    inputs = make_inputs((8, 3, 16, 16), torch.float32, device, seed=1)
    fused = ERDLoss().to(device)(*inputs)
    composite = CompositeERD(device)(*inputs)
    torch.testing.assert_close(fused, composite, rtol=1e-5, atol=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--inner", type=int, default=0, help="steps per sample (default: 5 on CPU, 50 on CUDA)")
    parser.add_argument("--threads", default="1",
                        help="CPU: comma-separated torch thread counts to run (default 1: on a shared, loaded "
                             "machine OpenMP reductions with more threads than free cores time the scheduler)")
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats: a smoke run")
    parser.add_argument("--no-graphs", action="store_true", help="CUDA: skip the CUDA-graph replayed timing")
    parser.add_argument("--out", default=None,
                        help="folder for the results files (default benchmarks/results/; --quick: only with --out)")
    args = parser.parse_args()
    device = torch.device(args.device)
    inner = args.inner or (50 if device.type == "cuda" else 5)
    shapes = [(256, 4, 32, 32), (64, 3, 64, 64)]
    repeats, warmup = args.repeats, 3
    if args.quick:
        shapes, repeats, inner, warmup = [(32, 4, 16, 16)], 3, 2, 1
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    check_agreement(device)
    load_start = load_average()

    threads = [int(n) for n in args.threads.split(",")] if device.type == "cpu" else [torch.get_num_threads()]
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for shape in shapes:
            for dtype in dtypes:
                med, samples, peers = time_peers(shape, dtype, device, repeats, inner, warmup)
                rows.append({"threads": n_threads, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
                             "median_us": med, "composite_over_fused": med["composite"] / med["fused"],
                             "fused_over_mse_loss": med["fused"] / med["mse_loss"], "samples_us": samples})
                r = rows[-1]
                print(f"{n_threads} thr {str(shape):20s} {r['dtype']:9s} fused {med['fused']:9.1f} us  "
                      f"composite {med['composite']:9.1f} us  mse_loss {med['mse_loss']:9.1f} us  "
                      f"composite/fused {r['composite_over_fused']:.2f}x  fused/mse_loss "
                      f"{r['fused_over_mse_loss']:.2f}x", flush=True)
                if device.type == "cuda" and not args.no_graphs:
                    graphed_seconds, r["graph_errors"] = time_graphed(peers, device, repeats, inner)
                    r["graphed_us"] = {name: t * 1e6 for name, t in graphed_seconds.items()}
                    if "fused" in r["graphed_us"] and "mse_loss" in r["graphed_us"]:
                        r["fused_over_mse_loss_graphed"] = r["graphed_us"]["fused"] / r["graphed_us"]["mse_loss"]
                    print(f"   CUDA-graph replays (us): {r['graphed_us']}  not captured: {r['graph_errors']}",
                          flush=True)

    meta = {
        **header(device),
        "device": device_name(device, threads=False),  # the thread count is per row
        "1-minute load average at start / end": [load_start, load_average()],
        "timing": f"forward + backward per step, median of {repeats} interleaved samples of {inner} steps each "
                  f"({warmup} warm-up steps); other processes share this machine, so times are noisy",
        "note": "fused and composite also update 16-bin running statistics",
    }
    headers = ["threads", "shape", "dtype", "fused (us)", "composite (us)", "F.mse_loss (us)", "composite / fused",
               "fused / mse_loss", "min: fused / composite / mse_loss (us)"]
    table = markdown_table(headers, [
        [r["threads"], tuple(r["shape"]), r["dtype"], *(f"{r['median_us'][k]:.1f}" for k in PEERS),
         f"{r['composite_over_fused']:.2f}x", f"{r['fused_over_mse_loss']:.2f}x",
         " / ".join(f"{min(r['samples_us'][k]):.0f}" for k in PEERS)]
        for r in rows])
    if any("graphed_us" in r for r in rows):  # CUDA: the same steps replayed from CUDA graphs (common.graphed)
        table += "\n\nReplayed from CUDA graphs (the kernels without the host's launch work):\n\n" + markdown_table(
            ["shape", "dtype", *(f"{k} (us)" for k in PEERS), "fused / mse_loss", "not captured"],
            [[tuple(r["shape"]), r["dtype"], *(f"{r['graphed_us'][k]:.1f}" if k in r["graphed_us"] else "-"
                                               for k in PEERS),
              f"{r['fused_over_mse_loss_graphed']:.2f}x" if "fused_over_mse_loss_graphed" in r else "-",
              "; ".join(f"{k}: {v}" for k, v in r["graph_errors"].items()) or "-"] for r in rows])
    out = results_folder(args)
    if out is None:
        print("quick run: results not written (give --out to keep them)")
        return
    path = write_results("erd", device, meta, table, {"repeats": repeats, "inner": inner, "warmup": warmup,
                                                      "rows": rows}, title="ERD loss benchmark", out_dir=out)
    print("wrote", path, "and .json")


if __name__ == "__main__":
    main()
