"""The fused SGDF optimizer step of two builds of sgdf_erd (two source trees, each built in place), compared
through the ratio each one's step has to torch.optim.AdamW(fused=True) timed interleaved in the same process (the
parameters of bench_sgdf.py: ~8M float32 in 160 tensors). Processes for the two builds alternate, so both see the
same machine state, and the ratio cancels what that state does to both optimizers alike. Two builds cannot share
one process (they register the same operators).

    python benchmarks/ab_builds.py OLD_TREE NEW_TREE [--runs 6] [--threads 1]

Writes benchmarks/results/sgdf_ab_cpu.md and .json (in this tree).
"""

import argparse
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
    import bench_sgdf  # this tree's benchmark helpers, the other tree's package
    from sgdf_erd import SGDF

    torch.set_num_threads(threads)
    candidates = {}
    for name, make in {"sgdf fused": lambda ps: SGDF(ps, lr=1e-3, fused=True),
                       "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)}.items():
        opt = make(bench_sgdf.make_params(8_000_000, 160, "cpu"))
        candidates[name] = opt.step
    print(json.dumps(bench_sgdf.time_interleaved(candidates, torch.device("cpu"), rounds=7, iters=3)))


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
    ratios = {name: [] for name in trees}
    fused = {name: [] for name in trees}
    for run in range(args.runs):
        for name, tree in trees.items():
            times = run_bench(tree, args.threads)
            fused[name].append(times["sgdf fused"])
            ratios[name].append(times["sgdf fused"] / times["torch AdamW fused"])
            print(f"run {run} {name}: fused {times['sgdf fused'] * 1e3:.2f} ms, "
                  f"fused / AdamW fused {ratios[name][-1]:.3f}", flush=True)
    rows = [[f"{name} ({git_head(tree)})", f"{statistics.mean(fused[name]) * 1e3:.2f}",
             " ".join(f"{r:.3f}" for r in ratios[name]), f"{statistics.mean(ratios[name]):.3f}"]
            for name, tree in trees.items()]
    change = statistics.mean(ratios["new"]) / statistics.mean(ratios["old"]) - 1
    table = markdown_table(["build", "fused ms / step (mean)", "fused / AdamW fused, per run", "mean ratio"], rows)
    table += f"\n\n- the new build's ratio is {change * 100:+.1f}% against the old build's"
    meta = {**header(torch.device("cpu")), "threads": args.threads, "trees": {k: str(v) for k, v in trees.items()},
            "1-minute load average at start / end": [load_start, load_average()]}
    print(table)
    print("wrote", write_results("sgdf_ab", torch.device("cpu"), meta, table,
                                 {"ratios": ratios, "fused_seconds": fused}, out_dir=str(ROOT / "benchmarks" /
                                                                                       "results")))


if __name__ == "__main__":
    main()
