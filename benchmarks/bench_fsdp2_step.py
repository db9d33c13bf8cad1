"""An optimizer step on FSDP2 (DTensor) parameters: SGDF's paths beside AdamW's, in one process (gloo, CPU).

    python benchmarks/bench_fsdp2_step.py                 # 300 small Linear layers' params (600 DTensors), 1 thread
    python benchmarks/bench_fsdp2_step.py --layers 100 --width 256

The model is a stack of `--layers` Linear(width, width) layers wrapped by `fully_shard` in a world of one process,
so every parameter, gradient and state tensor is a DTensor; with small layers the step's time is the host's work
per parameter (checks, DTensor dispatch, kernel calls), which is what sharding across GPUs leaves of it. Candidates
are timed in interleaved rounds after a step that creates the state and two warm-up steps. Writes benchmarks/results/fsdp2_step_cpu.*
"""

import argparse
import os
import socket
import statistics

import torch
import torch.distributed as dist

from common import header, load_average, markdown_table, results_folder, time_interleaved_samples, write_results

from sgdf_erd import AdaSGDF, SGDF  # noqa: E402

CANDIDATES = {
    "SGDF (default: fused)": lambda ps: SGDF(ps, lr=1e-3),
    "SGDF(foreach=True)": lambda ps: SGDF(ps, lr=1e-3, foreach=True),
    "AdaSGDF (default: fused)": lambda ps: AdaSGDF(ps, lr=1e-3),
    "torch AdamW(fused=True)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
    "torch AdamW(foreach=True)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sharded_model(layers: int, width: int) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))
    fully_shard(model)
    model(torch.randn(2, width)).square().mean().backward()  # DTensor gradients for every parameter
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=300)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--suffix", default="")
    args = parser.parse_args()
    args.quick = False
    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        device = torch.device("cpu")
        load_start = load_average()
        steps = {}
        for name, make in CANDIDATES.items():
            opt = make(list(sharded_model(args.layers, args.width).parameters()))
            opt.step()  # (the first step creates the state)
            steps[name] = opt.step
        samples = time_interleaved_samples(steps, device, args.rounds, args.iters)
    finally:
        dist.destroy_process_group()
    medians = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
    fused_adamw = medians["torch AdamW(fused=True)"]
    rows = [[name, f"{ms:.2f}", f"{ms / fused_adamw:.2f}x"] for name, ms in medians.items()]
    table = markdown_table(["optimizer", "ms / step", "time vs AdamW(fused=True)"], rows)
    params = 2 * args.layers
    meta = {**header(device), "threads": args.threads,
            "params": f"{params} DTensors (fully_shard, world size 1): {args.layers} x Linear({args.width}, "
                      f"{args.width}), float32",
            "timing": f"median of {args.rounds} interleaved rounds of {args.iters} steps",
            "1-minute load average at start / end": [load_start, load_average()]}
    print(table)
    out = results_folder(args)
    print("wrote", write_results("fsdp2_step", device, meta, table, {"ms_per_step": medians, "params": params},
                                 suffix=args.suffix, out_dir=out))


if __name__ == "__main__":
    main()
