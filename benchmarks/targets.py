"""One screen: each benchmark's headline ratios in a results folder, against the project's GPU targets.

    python benchmarks/targets.py OUTDIR            # reads OUTDIR/{sgdf,erd,ntk,sgdf_storage}_cuda*.json
    python benchmarks/targets.py benchmarks/results --device cpu   # ratios only: the targets are set for GPUs

Exits 1 when a CUDA result misses its target, 2 when an expected results file is missing; scripts/gpu_check.sh
prints this at the end of its run.
"""

import argparse
import glob
import json
import os
import sys

# (what, how the ratio is read, target, "min" if the ratio must reach the target, "max" if it must not exceed it)
SGDF_TARGETS = [
    ("fused: share of copy bandwidth at 28 B/element", "bandwidth", 0.85, "min"),
    ("fused time / torch AdamW(fused=True) time", "vs_adamw", 1.0, "max"),
    ("the same, replayed from CUDA graphs", "vs_adamw_graphed", 1.0, "max"),
    ("foreach time / fused time", "vs_foreach", 2.5, "min"),
]
ERD_TARGETS = [
    ("fused fwd+bwd / F.mse_loss fwd+bwd", "fused_over_mse_loss", 1.15, "max"),
    ("the same, replayed from CUDA graphs", "fused_over_mse_loss_graphed", 1.15, "max"),
    ("composite PyTorch / fused", "composite_over_fused", 3.0, "min"),
]
NTK_TARGETS = [("best torch route / op", "best_torch_over_op", 5.0, "min")]
STORAGE_TARGETS = [("fused: bf16-state step / fp32-state step", "bf16_over_fp32_state", 1.0, "max")]


# Below this many elements a step is bound by launch overhead, not bandwidth: only the AdamW comparison applies.
LAUNCH_BOUND_NUMEL = 10_000_000


def sgdf_rows(data):
    for threads, times in data["seconds"].items():
        fused = times["sgdf fused"]
        ratios = {"vs_adamw": fused / times["torch AdamW fused"]}
        graphed = data.get("graphed_seconds", {})
        if "sgdf fused" in graphed and "torch AdamW fused" in graphed:
            ratios["vs_adamw_graphed"] = graphed["sgdf fused"] / graphed["torch AdamW fused"]
        elif data.get("graph_errors"):  # a failed capture misses the target rather than going unreported
            ratios["vs_adamw_graphed"] = float("inf")
        if data["numel"] >= LAUNCH_BOUND_NUMEL:
            ratios["vs_foreach"] = times["sgdf foreach"] / fused
            if data.get("copy_bandwidth_GBps"):
                ratios["bandwidth"] = 28 * data["numel"] / fused / 1e9 / data["copy_bandwidth_GBps"]
        groups = f", {data['groups']} param groups" if data.get("groups", 1) > 1 else ""
        yield f"{data['numel']:.2e} elements in {data['tensors']} tensors{groups} ({threads} thr)", ratios


def erd_rows(data):
    for r in data["rows"]:
        if r.get("graph_errors") and "fused_over_mse_loss_graphed" not in r:  # a failed capture misses the target
            r = {**r, "fused_over_mse_loss_graphed": float("inf")}
        yield f"{tuple(r['shape'])} {r['dtype']}", r


def ntk_rows(data):
    for r in data["rows"]:
        yield r["size"], r


def storage_rows(data):
    """bench_sgdf.py --storage: the fused step with bfloat16 state against float32 state, on the same params."""
    times = data["seconds"]
    for params, bf16_state in (("fp32", "fp32 params + bf16 state"), ("bf16", "bf16 params + bf16 state (nearest)")):
        fp32_state = times.get(f"{params} params + fp32 state / fused")
        if fp32_state and times.get(f"{bf16_state} / fused"):
            yield f"{params} params", {"bf16_over_fp32_state": times[f"{bf16_state} / fused"] / fp32_state}


KINDS = {"sgdf": (SGDF_TARGETS, sgdf_rows), "erd": (ERD_TARGETS, erd_rows), "ntk": (NTK_TARGETS, ntk_rows),
         "sgdf_storage": (STORAGE_TARGETS, storage_rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    args = parser.parse_args()
    enforce = args.device == "cuda"
    missed, missing = 0, 0
    for kind, (targets, rows) in KINDS.items():
        paths = sorted(glob.glob(os.path.join(args.folder, f"{kind}_{args.device}*.json")))
        if not paths:
            print(f"{kind}: no {kind}_{args.device}*.json in {args.folder}")
            missing += 1
            continue
        for path in paths:
            with open(path) as f:
                data = json.load(f)
            print(f"{os.path.basename(path)}  ({data.get('device', '?')}, torch {data.get('torch', '?')})")
            for label, ratios in rows(data):
                for what, key, target, sense in targets:
                    if key not in ratios:
                        continue
                    value = ratios[key]
                    ok = value >= target if sense == "min" else value <= target
                    verdict = ("ok" if ok else "MISSED") if enforce else "(GPU target)"
                    missed += enforce and not ok
                    bound = ">=" if sense == "min" else "<="
                    print(f"  {label:36s} {what:48s} {value:7.2f}  target {bound} {target:<5} {verdict}")
    if missing:
        return 2
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
