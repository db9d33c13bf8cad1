"""Two builds of sgdf_erd (two source trees, each built in place) compared on their CPU kernels, each through the
ratio to a torch peer timed interleaved in the same process: the fused SGDF step against
torch.optim.AdamW(fused=True) (bench_sgdf.py's parameters: ~8M float32 in 160 tensors), and the fused ERD loss
forward + backward against F.mse_loss's (bench_erd.py's inputs, [256, 4, 32, 32] float32 and bfloat16).
Processes for the two builds alternate, so both see the same machine state, and the ratio cancels what that state
does to both alike. Two builds cannot share one process (they register the same operators).

    python benchmarks/ab_builds.py OLD_TREE NEW_TREE [--runs 6] [--threads 1]

Writes benchmarks/results/kernels_ab_cpu.md and .json (in this tree).
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import header, load_average, markdown_table, write_results  # noqa: E402

import torch  # noqa: E402


def child(tree: str, threads: int) -> None:
    """In a process of its own: time tree's fused SGDF against AdamW(fused=True); print the JSON of the times."""
    sys.path.insert(0, os.path.join(tree, "python"))
    import bench_erd  # this tree's benchmark helpers, the other tree's package
    import bench_sgdf
    from sgdf_erd import SGDF

    cpu = torch.device("cpu")
    torch.set_num_threads(threads)
    candidates = {}
    for name, make in {"sgdf fused": lambda ps: SGDF(ps, lr=1e-3, fused=True),
                       "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)}.items():
        opt = make(bench_sgdf.make_params(8_000_000, 160, "cpu"))
        candidates[name] = opt.step
    times = bench_sgdf.time_interleaved(candidates, cpu, rounds=7, iters=3)
    for dtype in ERD_DTYPES:
        inputs = bench_erd.make_inputs(ERD_SHAPE, getattr(torch, dtype), cpu)
        peers = {f"erd fused {dtype}": functools.partial(bench_erd.step_fn("fused", cpu), *inputs),
                 f"F.mse_loss {dtype}": functools.partial(bench_erd.step_fn("mse_loss", cpu), *inputs)}
        samples = bench_erd.time_interleaved_samples(peers, cpu, rounds=21, iters=5, warmup=3)
        times.update({name: statistics.median(v) for name, v in samples.items()})
    print(json.dumps(times))


ERD_SHAPE, ERD_DTYPES = (256, 4, 32, 32), ("float32", "bfloat16")
# what is compared: (label, candidate, its torch peer)
PAIRS = [("SGDF step / AdamW(fused=True) step", "sgdf fused", "torch AdamW fused")] + [
    (f"ERD loss fwd+bwd / F.mse_loss fwd+bwd, {d}", f"erd fused {d}", f"F.mse_loss {d}") for d in ERD_DTYPES]


def run_bench(tree: Path, threads: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(tree), "--threads", threads],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def git_head(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path, nargs="?")
    parser.add_argument("new", type=Path, nargs="?")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--threads", default="1")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, int(args.threads))
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    load_start = load_average()
    ratios = {(label, name): [] for label, _, _ in PAIRS for name in trees}
    seconds = {(label, name): [] for label, _, _ in PAIRS for name in trees}
    for run in range(args.runs):
        for name, tree in trees.items():
            times = run_bench(tree, args.threads)
            for label, candidate, peer in PAIRS:
                ratios[label, name].append(times[candidate] / times[peer])
                seconds[label, name].append(times[candidate])
            print(f"run {run} {name}: " + ", ".join(f"{label} {ratios[label, name][-1]:.3f}" for label, _, _ in PAIRS),
                  flush=True)
    rows, summary = [], []
    for label, _, _ in PAIRS:
        for name, tree in trees.items():
            values = ratios[label, name]
            rows.append([label, f"{name} ({git_head(tree)})", " ".join(f"{r:.3f}" for r in values),
                         f"{statistics.median(values):.3f}", f"{statistics.median(seconds[label, name]) * 1e3:.3f}"])
        change = statistics.median(ratios[label, "new"]) / statistics.median(ratios[label, "old"]) - 1
        time_change = statistics.median(seconds[label, "new"]) / statistics.median(seconds[label, "old"]) - 1
        summary.append(f"{label}: the new build's median ratio is {change * 100:+.1f}% against the old build's "
                       f"(its own median time {time_change * 100:+.1f}%)")
    table = markdown_table(["ratio", "build", "per run", "median ratio", "median ms (the candidate)"], rows)
    table += "\n\n" + "\n".join(f"- {line}" for line in summary)
    meta = {**header(torch.device("cpu")), "threads": args.threads, "trees": {k: str(v) for k, v in trees.items()},
            "1-minute load average at start / end": [load_start, load_average()]}
    print(table)
    print("wrote", write_results("kernels_ab", torch.device("cpu"), meta, table,
                                 {"ratios": {f"{label} / {name}": v for (label, name), v in ratios.items()},
                                  "seconds": {f"{label} / {name}": v for (label, name), v in seconds.items()}},
                                 out_dir=str(ROOT / "benchmarks" / "results")))


if __name__ == "__main__":
    main()
