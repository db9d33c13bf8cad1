"""Shared benchmark plumbing: device description, interleaved timing, result files."""

import datetime
import functools
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
# Import sgdf_erd from this checkout (in-place build) even without PYTHONPATH=python.
sys.path.insert(0, os.path.join(HERE, "..", "python"))
import sgdf_erd  # noqa: E402
from sgdf_erd._platform import cpu_model  # noqa: E402


def device_name(device: torch.device, threads: bool = True) -> str:
    """GPU name, or CPU model with torch's current thread count (threads=False: the machine's core count, for a
    run that sweeps thread counts and reports them per row)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if threads:
        return f"{cpu_model()} ({torch.get_num_threads()} threads)"
    return f"{cpu_model()} ({os.cpu_count()} cores)"


def load_average():
    """1-minute load average, or None where the OS does not report it: on a shared machine it says how noisy a
    run's times are."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved_samples(candidates: dict, device: torch.device, rounds: int, iters: int,
                             warmup: int = 2, before_each=None) -> dict:
    """Seconds per call of each candidate (name -> zero-arg callable), one sample per round (the mean of `iters`
    consecutive calls). Rounds interleave the candidates so that drifts in clock speed or machine load hit all of
    them alike. `before_each` (e.g. evict_cpu_caches), when given, runs untimed before every call, and the calls are
    timed one by one."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    stretches = [iters] if before_each is None else [1] * iters  # calls timed together
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            elapsed = 0.0
            for calls in stretches:
                if before_each is not None:
                    before_each()
                synchronize(device)
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                synchronize(device)
                elapsed += time.perf_counter() - start
            samples[name].append(elapsed / iters)
    return samples


@functools.lru_cache(maxsize=None)
def _eviction_buffer(nbytes: int) -> torch.Tensor:
    return torch.ones(nbytes // 4, dtype=torch.float32)


def evict_cpu_caches(nbytes: int = 256 << 20) -> None:
    """Reads a buffer several times larger than any CPU's last-level cache, so that the next call finds its data in
    memory, as an optimizer step does after the backward pass: otherwise, in interleaved timing, data small enough
    for the cache is warm or cold depending on which candidate ran before. (Reads, not writes: dirty lines would be
    written back during the timed call.)"""
    _eviction_buffer(nbytes).sum()


def graphed(step):
    """`step` captured in a CUDA graph, as its replay: the step's kernels without the host's work of launching them.
    Small eager steps are bound by that host work, while in training the host runs ahead of the device (or the
    step is itself replayed from a graph) and a step costs what its kernels take: the replayed time measures that."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capturing stream, as torch.cuda.graph's notes ask
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def time_graphed(candidates: dict, device: torch.device, rounds: int, iters: int):
    """Median seconds per replay of each candidate captured in a CUDA graph (see graphed), interleaved, and why the
    candidates that could not be captured could not (name -> message)."""
    replays, errors = {}, {}
    for name, step in candidates.items():
        try:
            replays[name] = graphed(step)
        except Exception as exc:  # reported in the results, not hidden
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return (time_interleaved(replays, device, rounds=rounds, iters=iters) if replays else {}), errors


def time_interleaved(candidates: dict, device: torch.device, rounds: int, iters: int, warmup: int = 2,
                     before_each=None) -> dict:
    """Median over interleaved rounds of each candidate's seconds per call (see time_interleaved_samples)."""
    samples = time_interleaved_samples(candidates, device, rounds, iters, warmup, before_each)
    return {name: statistics.median(s) for name, s in samples.items()}


def header(device: torch.device) -> dict:
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name(device),
        "torch": torch.__version__,
        "command": " ".join(["python"] + sys.argv),
    }
    if device.type == "cpu":  # which build of the CPU kernels ran (AVX-512 or AVX2)
        meta["sgdf_erd CPU kernels"] = sgdf_erd.build_info()["cpu_capability"]
    return meta


def results_folder(args):
    """Where a benchmark writes its results: --out when given, else benchmarks/results/, except for a --quick (or
    --no-write) run, whose numbers never land there (None: not written)."""
    if getattr(args, "no_write", False):
        return None
    if args.out is not None:
        return args.out
    return None if args.quick else RESULTS


def write_report(stem: str, title: str, meta: dict, body_md: str, data: dict, out_dir: str = RESULTS) -> str:
    """Write <out_dir>/<stem>.md (title, meta as a list, body) and <stem>.json (meta and data); return the .md path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, stem)
    lines = [f"# {title}", ""] + [f"- {k}: `{v}`" for k, v in meta.items()] + ["", body_md, ""]
    with open(path + ".md", "w") as f:
        f.write("\n".join(lines))
    with open(path + ".json", "w") as f:
        json.dump({**meta, **data}, f, indent=2)
    return path + ".md"


def write_results(name: str, device: torch.device, meta: dict, table_md: str, data: dict, suffix: str = "",
                  title: str = None, out_dir: str = RESULTS) -> str:
    """Write results/<name>_<cpu|cuda><suffix>.md and .json; return the markdown path."""
    return write_report(f"{name}_{device.type}{suffix}", f"{title or name} ({device.type})", meta, table_md, data,
                        out_dir)


def markdown_table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
