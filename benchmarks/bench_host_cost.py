"""Where a fused step's host time goes with many small tensors, beside AdamW(fused=True)'s, from memory and warm.

    python benchmarks/bench_host_cost.py                 # CPU: 1000 one-element float32 params, 1 thread
    python benchmarks/bench_host_cost.py --tensors 4000
    python benchmarks/bench_host_cost.py --abi-probe     # also the entry cost of an operator with those five lists

Parts timed (interleaved rounds, median per part; each timed call after evicting the caches, then the same with
the caches kept): SGDF(fused=True)'s step, its eligibility passes (`SGDF._check_step`: the Python that decides which
groups the kernel call takes and gathers their lists) and its kernel call alone (`SGDF._step_in_one_call` on those
lists); AdamW(fused=True)'s step, torch's `_fused_adamw_` over as many tensors (params, grads, two moments, step
counts: the lists SGDF's call takes) and `_foreach_add_` over the step counts, which AdamW's CPU step runs before its
kernel. The SGDF parts use the optimizer's internals: a diagnostic, not an API. --abi-probe compiles
benchmarks/abi_probe/abi_probe.cpp (g++, torch's headers) and times its two operators on SGDF's five lists: one
that does nothing (what calling an operator of the LibTorch stable ABI with 5 x n tensors costs), one that reads
every tensor's metadata as the kernel's checks do, and one that takes only params and grads with three single tensors
(what the call would take with each group's state in flat buffers: a design not built). Writes
benchmarks/results/host_cost_cpu.*
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (evict_cpu_caches, header, load_average, markdown_table, results_folder,  # noqa: E402
                    time_interleaved_samples, write_results)

from sgdf_erd import SGDF  # noqa: E402


def one_element_params(n: int):
    params = [torch.nn.Parameter(torch.randn(1)) for _ in range(n)]
    for p in params:
        p.grad = torch.randn(1)
    return params


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_abi_probe() -> None:
    """Compile benchmarks/abi_probe/abi_probe.cpp as the library is compiled (stable ABI of the torch it targets,
    CPython's limited API) and load its operators (torch.ops.sgdf_erd_abi_probe)."""
    from torch.utils.cpp_extension import include_paths
    with open(os.path.join(ROOT, "setup.py")) as f:
        major, minor = map(int, re.search(r"^TARGET_TORCH = \((\d+), (\d+)\)", f.read(), re.M).groups())
    out = os.path.join(tempfile.mkdtemp(), "abi_probe.so")
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    subprocess.run(["g++", "-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden",
                    f"-DTORCH_TARGET_VERSION=0x{major:02x}{minor:02x}000000000000", "-DPy_LIMITED_API=0x030A0000",
                    f"-I{os.path.join(ROOT, 'csrc')}", *(f"-I{p}" for p in include_paths()),
                    f"-I{sysconfig.get_paths()['include']}", os.path.join(ROOT, "benchmarks", "abi_probe",
                                                                           "abi_probe.cpp"),
                    os.path.join(ROOT, "csrc", "common", "python_gil.cpp"), f"-L{lib}", "-ltorch_cpu", "-lc10",
                    "-o", out], check=True)
    torch.ops.load_library(out)


def parts(n: int, abi_probe: bool = False) -> dict:
    """name -> zero-argument callable; each optimizer owns its tensors and has stepped once (its state exists)."""
    sgdf = SGDF(one_element_params(n), lr=1e-3, fused=True)
    sgdf.step()
    in_one_call = sgdf._check_step()
    params = one_element_params(n)
    adamw = torch.optim.AdamW(params, lr=1e-3, fused=True)
    adamw.step()
    states = [adamw.state[p] for p in params]
    lists = (params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
             [], [s["step"] for s in states])

    def adamw_kernel():
        torch._fused_adamw_(*lists, lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=1e-2, eps=1e-8, amsgrad=False,
                            maximize=False)

    (group,) = in_one_call.values()
    sgdf_lists = [group[key] for key in ("params", "grads", "exp_avgs", "exp_vars", "steps")]
    probe = {} if not abi_probe else {
        "    an operator taking those lists, doing nothing": lambda: torch.ops.sgdf_erd_abi_probe.noop5(*sgdf_lists),
        "    the same, reading every tensor's metadata": lambda: torch.ops.sgdf_erd_abi_probe.metas5(*sgdf_lists),
        "    an operator taking params, grads and three flat tensors (state in flat buffers), doing nothing":
            lambda: torch.ops.sgdf_erd_abi_probe.noop2(*sgdf_lists[:2], *flat)}
    flat = [torch.zeros(n) for _ in range(3)]
    return {
        "SGDF(fused=True) step": sgdf.step,
        "  its eligibility passes (Python)": sgdf._check_step,
        "  its kernel call (fused_sgdf_)": lambda: sgdf._step_in_one_call(in_one_call, None, None),
        **probe,
        "AdamW(fused=True) step": adamw.step,
        "  torch._fused_adamw_ (same lists)": adamw_kernel,
        "  torch._foreach_add_ (step counts)": lambda: torch._foreach_add_(lists[5], 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--suffix", default="")
    parser.add_argument("--abi-probe", action="store_true", help="also time benchmarks/abi_probe's operators")
    args = parser.parse_args()
    args.quick = False
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    load_start = load_average()
    if args.abi_probe:
        load_abi_probe()
    candidates = parts(args.tensors, args.abi_probe)
    with torch.no_grad():  # (as inside step(): the kernel call alone would otherwise meet autograd's fallback)
        cold = time_interleaved_samples(candidates, device, args.rounds, args.iters, before_each=evict_cpu_caches)
        warm = time_interleaved_samples(candidates, device, args.rounds, args.iters)
    rows, data = [], {"tensors": args.tensors, "microseconds": {}}
    for name in candidates:
        c, w = (statistics.median(s[name]) * 1e6 for s in (cold, warm))
        rows.append([name, f"{c:.0f}", f"{w:.0f}", f"{c - w:.0f}"])
        data["microseconds"][name.strip()] = {"from_memory": c, "caches_kept": w}
    table = markdown_table(["part", "from memory (us)", "caches kept (us)", "difference (us)"], rows)
    meta = {**header(device), "threads": args.threads,
            "params": f"{args.tensors} one-element float32 params per optimizer",
            "timing": f"median of {args.rounds} interleaved rounds of {args.iters} calls, each timed alone; from "
                      "memory: caches evicted before every call (256 MB read)",
            "1-minute load average at start / end": [load_start, load_average()]}
    print(table)
    out = results_folder(args)
    print("wrote", write_results("host_cost", device, meta, table, data, suffix=args.suffix, out_dir=out))


if __name__ == "__main__":
    main()
