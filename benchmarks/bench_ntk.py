"""Benchmark sgdf_erd.ops.binned_gram_eigvalsh against the two plain-torch ways of getting the same result.

Peers (same inputs, same output: per-bin eigenvalues of F_b F_b^T, descending, zero-padded):
  op       sgdf_erd.ops.binned_gram_eigvalsh(features, bin_ids, num_bins)
  loop     for each bin: torch.linalg.eigvalsh(F_b @ F_b.T) with F_b = features[bin_ids == b]
  batched  rows scattered into a zero-padded [num_bins, max_count, k] tensor, one bmm, one batched eigvalsh

Each size is timed in interleaved rounds (op, loop, batched, op, loop, ...); the table gives medians and each
peer's time divided by the op's (above 1: the op is faster). Writes benchmarks/results/ntk_<device>.md and .json
(ntk_<device>_<N>thread.* with --threads N; nothing with --no-write, or --quick without --out).

    python benchmarks/bench_ntk.py [--device cpu|cuda] [--dtype float32|float64] [--repeats N] [--threads N]
                                   [--quick]
"""

import argparse
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import header, load_average, markdown_table, results_folder, time_interleaved, write_results  # noqa: E402

from sgdf_erd.ops import binned_gram_eigvalsh  # noqa: E402

# (label, num_bins, samples per bin, sketch dim, skewed): skewed draws bin sizes from a geometric-like profile
SIZES = [
    ("32 bins x 64 x 256 (target)", 32, 64, 256, False),
    ("16 bins x 16 x 256", 16, 16, 256, False),
    ("64 bins x 32 x 128", 64, 32, 128, False),
    ("16 bins x 128 x 512", 16, 128, 512, False),
    ("32 bins, skewed (2..200) x 256", 32, 64, 256, True),
]
QUICK_SIZES = SIZES[:2]


def make_inputs(num_bins, per_bin, k, skewed, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if skewed:
        counts = torch.clamp((200 * torch.rand(num_bins, generator=g) ** 3).long(), min=2)
    else:
        counts = torch.full((num_bins,), per_bin)
    bin_ids = torch.repeat_interleave(torch.arange(num_bins), counts)
    bin_ids = bin_ids[torch.randperm(len(bin_ids), generator=g)]
    features = torch.randn(len(bin_ids), k, generator=g, dtype=dtype)
    return features.to(device), bin_ids.to(device)


def torch_loop(features, bin_ids, num_bins):
    counts = torch.bincount(bin_ids, minlength=num_bins)
    out = features.new_zeros(num_bins, int(counts.max()))
    for b in range(num_bins):
        fb = features[bin_ids == b]
        if fb.shape[0]:
            out[b, :fb.shape[0]] = torch.linalg.eigvalsh(fb @ fb.T).flip(0).clamp_min(0)
    return out, counts


def torch_batched(features, bin_ids, num_bins):
    counts = torch.bincount(bin_ids, minlength=num_bins)
    width = int(counts.max())
    order = torch.argsort(bin_ids, stable=True)
    sorted_bins = bin_ids[order]
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(order), device=features.device) - starts[sorted_bins]
    padded = features.new_zeros(num_bins, width, features.shape[1])
    padded[sorted_bins, slot] = features[order]
    eig = torch.linalg.eigvalsh(padded @ padded.transpose(1, 2)).flip(1).clamp_min(0)
    keep = torch.arange(width, device=features.device)[None, :] < counts[:, None]
    return eig * keep, counts  # padding rows add zero eigenvalues; they sort last


PEERS = {"op": binned_gram_eigvalsh, "loop": torch_loop, "batched": torch_batched}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (results file gets a suffix)")
    parser.add_argument("--quick", action="store_true", help="two sizes, 3 repeats (smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--out", default=None,
                        help="folder for the results files (default benchmarks/results/; --quick: only with --out)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    sizes = QUICK_SIZES if args.quick else SIZES
    repeats = 3 if args.quick else args.repeats

    load_start = load_average()
    rows = []
    for label, num_bins, per_bin, k, skewed in sizes:
        features, bin_ids = make_inputs(num_bins, per_bin, k, skewed, device, dtype)
        call_args = (features, bin_ids, num_bins)
        reference, counts = PEERS["op"](*call_args)
        for name in ("loop", "batched"):  # same answer before timing
            other, other_counts = PEERS[name](*call_args)
            assert torch.equal(other_counts.cpu(), counts.cpu())
            tol = (1e-4 if dtype == torch.float32 else 1e-10) * reference.abs().max().item()
            assert (other - reference).abs().max().item() <= tol, f"{name} disagrees with the op on {label}"
        # The agreement check above ran every peer once on these inputs: that is the warm-up.
        seconds = time_interleaved({name: functools.partial(fn, *call_args) for name, fn in PEERS.items()}, device,
                                   rounds=repeats, iters=1, warmup=0)
        med = {name: t * 1e3 for name, t in seconds.items()}
        best_torch = min(med["loop"], med["batched"])
        row = {"size": label, "num_bins": num_bins, "rows": int(features.shape[0]), "k": k,
               "max_count": int(counts.max()), "op_ms": med["op"], "loop_ms": med["loop"],
               "batched_ms": med["batched"], "loop_over_op": med["loop"] / med["op"],
               "batched_over_op": med["batched"] / med["op"], "best_torch_over_op": best_torch / med["op"]}
        rows.append(row)
        print(f"{label:34s} op {med['op']:8.2f} ms  loop {med['loop']:8.2f} ms ({row['loop_over_op']:5.2f}x)  "
              f"batched {med['batched']:8.2f} ms ({row['batched_over_op']:5.2f}x)", flush=True)

    meta = {**header(device), "dtype": args.dtype, "1-minute load average at start / end": [load_start, load_average()],
           
            "repeats": repeats}
    table = markdown_table(
        ["size", "rows", "max count", "op ms", "loop ms", "loop/op", "batched ms", "batched/op"],
        [[r["size"], r["rows"], r["max_count"], f"{r['op_ms']:.2f}", f"{r['loop_ms']:.2f}", f"{r['loop_over_op']:.2f}",
          f"{r['batched_ms']:.2f}", f"{r['batched_over_op']:.2f}"] for r in rows])
    table = ("Median ms over interleaved repeats; ratio = peer time / op time (above 1: op faster).\n\n" + table)
    out = results_folder(args)
    if out is None:
        print("results not written (--no-write, or --quick without --out)")
        return
    suffix = f"_{args.threads}thread" if args.threads else ""
    path = write_results("ntk", device, meta, table, {"threads": torch.get_num_threads(), "rows": rows},
                         suffix=suffix, title="binned_gram_eigvalsh benchmark", out_dir=out)
    print("wrote", path, "and .json")


if __name__ == "__main__":
    main()
