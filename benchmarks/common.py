"""Shared benchmark plumbing: device description, interleaved timing, result files."""

import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(candidates: dict, device: torch.device, rounds: int, iters: int, warmup: int = 2) -> dict:
    """Median seconds per call of each candidate (name -> zero-arg callable). Rounds interleave the candidates so
    that drifts in clock speed or machine load hit all of them alike."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            synchronize(device)
            samples[name].append((time.perf_counter() - start) / iters)
    return {name: statistics.median(s) for name, s in samples.items()}


def header(device: torch.device) -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name(device),
        "torch": torch.__version__,
        "command": " ".join(["python"] + sys.argv),
    }


def write_results(name: str, device: torch.device, meta: dict, table_md: str, data: dict) -> str:
    """Write results/<name>_<cpu|cuda>.md and .json; return the markdown path."""
    os.makedirs(RESULTS, exist_ok=True)
    stem = os.path.join(RESULTS, f"{name}_{device.type}")
    lines = [f"# {name} ({device.type})", ""] + [f"- {k}: `{v}`" for k, v in meta.items()] + ["", table_md, ""]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines))
    with open(stem + ".json", "w") as f:
        json.dump({**meta, **data}, f, indent=2)
    return stem + ".md"


def markdown_table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
