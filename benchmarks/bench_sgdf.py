"""Time one SGDF optimizer step on every path against its peers, interleaved in one run.

    python benchmarks/bench_sgdf.py                 # CPU: ~8M float32 in 160 tensors
    python benchmarks/bench_sgdf.py --device cuda   # GPU: 100M float32 (and --numel 1e9)
    python benchmarks/bench_sgdf.py --quick         # smoke run
    python benchmarks/bench_sgdf.py --storage       # low-precision storage: bytes per parameter and step times
    python benchmarks/bench_sgdf.py --groups 2      # the tensors in two param groups (as training scripts pass them)
    python benchmarks/bench_sgdf.py --adaptive      # AdaSGDF (both preconditioners) against torch AdamW(fused=True)

Candidates: sgdf_erd fused / foreach / single-tensor; an authors'-style per-tensor loop (the release's structure,
written from the spec); torch.optim.AdamW(fused=True) (same 28 bytes/element floor) and AdamW(foreach=True), the
foreach path's peer; a torch.compile'd SGDF step.
On CUDA the device-to-device copy bandwidth is measured as the roofline. Writes benchmarks/results/sgdf_<device>.*

--storage compares the low-precision storage configurations instead (float32 / bfloat16 params and state, stochastic
rounding, float32 master weights): the bytes each keeps per parameter (param + optimizer state, measured from the
tensors) and its step time on each path that implements it. Writes benchmarks/results/sgdf_storage_<device>.*

--adaptive times AdaSGDF's fused step with each preconditioner beside torch.optim.AdamW(fused=True), its drop-in
peer: "variance" moves AdamW's 28 bytes per float32 element (target: at most 1.1x AdamW's time), "second_moment"
36 (read p, g, m, s, v; write p, m, s, v; target: at most 1.4x). Writes benchmarks/results/adasgdf_<device>.*
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (device_name, evict_cpu_caches, header, load_average, markdown_table,  # noqa: E402
                    results_folder, synchronize, time_graphed, time_interleaved, write_results)

from sgdf_erd import SGDF, AdaSGDF  # noqa: E402
from sgdf_erd.optim.sgdf_functional import foreach_sgdf  # noqa: E402

BYTES_PER_ELEMENT = 28  # fp32: read p, g, m, s; write p, m, s


class AuthorsStyleSGDF:
    """The release's per-tensor loop (fresh temporaries per op), written from the spec; a baseline only."""

    def __init__(self, params, lr=0.5, betas=(0.9, 0.999), eps=1e-8, gamma=0.5):
        self.params, self.lr, self.betas, self.eps, self.gamma = params, lr, betas, eps, gamma
        self.state = {p: dict(step=0, exp_avg=torch.zeros_like(p), exp_var=torch.zeros_like(p)) for p in params}

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        for p in self.params:
            grad, st = p.grad, self.state[p]
            st["exp_avg"].mul_(b1).add_(grad, alpha=1 - b1)
            residual = grad - st["exp_avg"]
            st["exp_var"].mul_(b2).addcmul_(residual, residual, value=1 - b2)
            st["step"] += 1
            t = st["step"]
            bc1 = 1 - b1**t
            bc2 = (1 + b1) * (1 - b2**t) / ((1 - b1) * (1 - b1 ** (2 * t)))
            m_hat = st["exp_avg"] / bc1
            r = grad - m_hat
            gain = st["exp_var"] / (bc2 * r.pow(2) + st["exp_var"] + self.eps)
            p.add_(m_hat + gain.pow(self.gamma) * r, alpha=-self.lr)


def make_params(numel: int, n_tensors: int, device, seed=0, dtype=torch.float32):
    """n_tensors tensors summing to ~numel elements, sizes varying 1:8 like a network's layers."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(n_tensors, generator=gen) * 7 + 1
    sizes = (weights / weights.sum() * numel).long().clamp_min(1).tolist()
    params = [torch.nn.Parameter((torch.randn(s, device=device) * 0.1).to(dtype)) for s in sizes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    return params


def in_groups(params, n_groups):
    """The params as they are (one group), or split into `n_groups` consecutive param groups: training scripts
    often pass two (e.g. weights with decay, biases and norms without)."""
    if n_groups == 1:
        return params
    bounds = [len(params) * k // n_groups for k in range(n_groups + 1)]
    return [{"params": params[a:b]} for a, b in zip(bounds, bounds[1:])]


def build_candidates(numel, n_tensors, device, with_compile, n_groups=1):
    """Each candidate owns its parameters and state (same sizes, same gradients), so none warms another's cache."""
    candidates = {}
    for name, make in {
        "sgdf fused": lambda ps: SGDF(in_groups(ps, n_groups), lr=1e-3, fused=True),
        "sgdf foreach": lambda ps: SGDF(in_groups(ps, n_groups), lr=1e-3, foreach=True),
        "sgdf single-tensor": lambda ps: SGDF(in_groups(ps, n_groups), lr=1e-3, foreach=False, fused=False),
        "authors-style loop": lambda ps: AuthorsStyleSGDF(ps, lr=1e-3),
        "torch AdamW fused": lambda ps: torch.optim.AdamW(in_groups(ps, n_groups), lr=1e-3, fused=True),
        "torch AdamW foreach": lambda ps: torch.optim.AdamW(in_groups(ps, n_groups), lr=1e-3, foreach=True),
    }.items():
        candidates[name] = make(make_params(numel, n_tensors, device)).step
    if not with_compile:
        return candidates, "skipped (--no-compile)"
    # Dynamo does not trace a custom Optimizer's step; compile the functional foreach step over the state.
    params = make_params(numel, n_tensors, device)
    opt = SGDF(params, lr=1e-3, foreach=True, capturable=True)
    opt.step()
    state = [[opt.state[p][k] for p in params] for k in ("exp_avg", "exp_var", "step")]
    grads = [p.grad for p in params]
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, gamma=0.5, weight_decay=0.0,
                 decoupled_weight_decay=False, sign=False, orthogonalize_matrices=False, ns_steps=5,
                 maximize=False, capturable=True)
    step_fn = torch.compile(lambda: foreach_sgdf(params, grads, *state, **hyper))

    def compiled():
        with torch.no_grad():
            step_fn()

    try:
        compiled()  # compile now so that compile time is not timed
        synchronize(device)
    except Exception as exc:  # report, do not hide: the table says why the row is missing
        return candidates, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    candidates["sgdf foreach torch.compile"] = compiled
    return candidates, "ok"


# name -> (params dtype, SGDF storage options, the paths timed)
BF16 = dict(state_dtype=torch.bfloat16)
STORAGE_CONFIGS = {
    "fp32 params + fp32 state": (torch.float32, {}, ("fused", "foreach")),
    "fp32 params + bf16 state": (torch.float32, BF16, ("fused", "foreach")),
    "fp32 params + bf16 state, stochastic rounding": (torch.float32, dict(**BF16, stochastic_rounding=True),
                                                      ("fused",)),
    "bf16 params + fp32 state": (torch.bfloat16, dict(state_dtype=torch.float32), ("fused",)),
    "bf16 params + bf16 state (nearest)": (torch.bfloat16, {}, ("fused", "foreach")),
    "bf16 params + bf16 state, stochastic rounding": (torch.bfloat16, dict(stochastic_rounding=True),
                                                      ("fused", "foreach")),
    "bf16 params + fp32 master + bf16 state": (torch.bfloat16, dict(master_weights=True), ("fused", "foreach")),
    "bf16 params + fp32 master + bf16 state, stochastic rounding": (
        torch.bfloat16, dict(master_weights=True, stochastic_rounding=True), ("fused",)),
}
PATH_OPTIONS = {"fused": dict(fused=True), "foreach": dict(foreach=True)}


def timing_settings(args, device):
    """(total elements, timed iterations per round, CPU thread counts) of a timing run."""
    numel = int(args.numel or (8e6 if device.type == "cpu" else 1e8))
    if args.quick:
        numel, args.rounds = min(numel, 500_000), 2
    iters = args.iters or (3 if device.type == "cpu" else 10)
    threads = [int(n) for n in args.threads.split(",")] if device.type == "cpu" else [torch.get_num_threads()]
    return numel, iters, threads


def cold_start(device, args):
    """What runs untimed before each timed step: on the CPU, cache eviction, so that every step starts from memory
    as after a backward pass (interleaved timing otherwise leaves a candidate's data warm or cold by the order of
    the candidates, and small steps warm across the iterations of a round); none with --warm-caches."""
    return evict_cpu_caches if device.type == "cpu" and not args.warm_caches else None


def caches_note(device, args) -> dict:
    """The results files' record of what cold_start did."""
    if device.type != "cpu":
        return {}
    return {"caches": "kept between the timed steps of a round (--warm-caches)" if args.warm_caches else
            "evicted before every timed step (256 MB read)"}


def report_timings(name, args, device, total, table, data, load_start) -> None:
    """Print a timing run's table and write it with its metadata under the results folder (if any)."""
    meta = {**header(device), "device": device_name(device, threads=False),
            "elements": f"{total:,} float32 in {args.tensors} tensors"
                        + (f", {args.groups} param groups" if args.groups > 1 else ""),
            **caches_note(device, args),
            "1-minute load average at start / end": [load_start, load_average()]}
    print(table)
    out = results_folder(args)
    if out is not None:
        print("wrote", write_results(name, device, meta, table, data, suffix=args.suffix, out_dir=out))


def bytes_per_parameter(opt) -> float:
    """Bytes the params and the optimizer's state tensors hold per parameter element (gradients excluded)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    held = sum(p.numel() * p.element_size() for p in params)
    held += sum(t.numel() * t.element_size() for p in params for t in opt.state[p].values()
                if isinstance(t, torch.Tensor) and t.dim() > 0)
    return held / sum(p.numel() for p in params)


def storage_benchmark(args, device) -> None:
    numel = int(args.numel or (1e6 if device.type == "cpu" else 1e8))
    if args.quick:
        numel, args.rounds = min(numel, 200_000), 2
    iters = args.iters or (3 if device.type == "cpu" else 10)
    torch.set_num_threads(int(args.threads.split(",")[-1]) if device.type == "cpu" else torch.get_num_threads())
    load_start = load_average()
    candidates, sizes = {}, {}
    for name, (dtype, options, paths) in STORAGE_CONFIGS.items():
        for path in paths:
            params = make_params(numel, args.tensors, device, dtype=dtype)
            opt = SGDF(params, lr=1e-3, **options, **PATH_OPTIONS[path])
            opt.step()  # creates the state
            sizes[name] = bytes_per_parameter(opt)
            candidates[(name, path)] = opt.step
    times = time_interleaved(candidates, device, rounds=args.rounds, iters=iters, before_each=cold_start(device, args))
    base = times[("fp32 params + fp32 state", "fused")]
    rows = [[name, path, f"{sizes[name]:g}", f"{t * 1e3:.2f}", f"{t / base:.2f}x"] for (name, path), t in times.items()]
    summary = []
    for params_name in ("fp32", "bf16"):  # bf16 state against fp32 state, on the same parameters
        fp32_state = times[(f"{params_name} params + fp32 state", "fused")]
        bf16_state = times[(f"{params_name} params + bf16 state" + (" (nearest)" if params_name == "bf16" else ""),
                            "fused")]
        summary.append(f"fused, {params_name} params: the bf16-state step takes {bf16_state / fp32_state:.2f}x the "
                       f"time of the fp32-state step")
    sr = times[("bf16 params + bf16 state, stochastic rounding", "fused")]
    summary.append(f"fused, bf16 params + bf16 state: stochastic rounding takes "
                   f"{sr / times[('bf16 params + bf16 state (nearest)', 'fused')]:.2f}x the time of rounding to "
                   f"nearest (foreach with stochastic rounding: "
                   f"{times[('bf16 params + bf16 state, stochastic rounding', 'foreach')] / sr:.1f}x the fused time)")
    table = markdown_table(["configuration", "path", "bytes / param", "ms / step", "time vs fp32 fused"], rows)
    table += "\n\n" + "\n".join(f"- {s}" for s in summary)
    total = sum(p.numel() for p in make_params(numel, args.tensors, "cpu"))
    meta = {**header(device), "elements": f"{total:,} in {args.tensors} tensors",
            **caches_note(device, args),
            "1-minute load average at start / end": [load_start, load_average()]}
    print(table)
    data = {"numel": total, "tensors": args.tensors, "bytes_per_param": sizes,
            "seconds": {f"{name} / {path}": t for (name, path), t in times.items()}}
    out = results_folder(args)
    if out is not None:
        print("wrote", write_results("sgdf_storage", device, meta, table, data, suffix=args.suffix, out_dir=out))


# AdaSGDF's fused step per preconditioner: bytes moved per float32 element, and the time target against AdamW
ADAPTIVE_TARGETS = {"variance": (28, 1.1), "second_moment": (36, 1.4)}


def adaptive_benchmark(args, device) -> None:
    numel, iters, threads = timing_settings(args, device)
    load_start = load_average()
    candidates = {"torch AdamW fused": torch.optim.AdamW(in_groups(make_params(numel, args.tensors, device),
                                                                   args.groups), lr=1e-3, fused=True).step}
    for preconditioner in ADAPTIVE_TARGETS:
        candidates[f"adasgdf fused, {preconditioner}"] = AdaSGDF(
            in_groups(make_params(numel, args.tensors, device), args.groups), lr=1e-3, fused=True,
            preconditioner=preconditioner).step
    candidates["sgdf fused"] = SGDF(in_groups(make_params(numel, args.tensors, device), args.groups), lr=1e-3,
                                    fused=True).step
    total = sum(p.numel() for p in make_params(numel, args.tensors, "cpu"))
    bytes_moved = {"torch AdamW fused": 28, "sgdf fused": 28,
                   **{f"adasgdf fused, {k}": b for k, (b, _) in ADAPTIVE_TARGETS.items()}}
    rows, summary, data = [], [], {"numel": total, "tensors": args.tensors, "groups": args.groups, "seconds": {},
                                   "ratio_to_adamw": {}}
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        times = time_interleaved(candidates, device, rounds=args.rounds, iters=iters,
                                 before_each=cold_start(device, args))
        data["seconds"][n_threads] = times
        adamw = times["torch AdamW fused"]
        for name, t in times.items():
            rows.append([n_threads, name, bytes_moved[name], f"{t * 1e3:.2f}",
                         f"{bytes_moved[name] * total / t / 1e9:.1f}", f"{t / adamw:.2f}x"])
        ratios = {k: times[f"adasgdf fused, {k}"] / adamw for k in ADAPTIVE_TARGETS}
        data["ratio_to_adamw"][n_threads] = ratios
        summary.append(f"{n_threads} thread(s): " + "; ".join(
            f"{k} takes {r:.2f}x the time of AdamW(fused=True) (target <= {ADAPTIVE_TARGETS[k][1]}x: "
            f"{'met' if r <= ADAPTIVE_TARGETS[k][1] else 'NOT met'})" for k, r in ratios.items()))
    table = markdown_table(["threads", "candidate", "bytes / elt", "ms / step", "GB/s", "time vs AdamW fused"], rows)
    table += "\n\n" + "\n".join(f"- {s}" for s in summary)
    report_timings("adasgdf", args, device, total, table, data, load_start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--numel", type=float, default=None, help="total elements (default 8e6 CPU, 1e8 CUDA)")
    parser.add_argument("--tensors", type=int, default=160)
    parser.add_argument("--groups", type=int, default=1, help="param groups the tensors are split into")
    parser.add_argument("--no-graphs", action="store_true", help="CUDA: skip the steps replayed from CUDA graphs")
    parser.add_argument("--threads", default="1,2", help="CPU: comma-separated torch thread counts to sweep")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile candidate")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--warm-caches", action="store_true",
                        help="CPU: do not evict the caches before each timed step (the default does)")
    parser.add_argument("--out", default=None,
                        help="folder for the results files (default benchmarks/results/; --quick: only with --out)")
    parser.add_argument("--suffix", default="", help="appended to the results file name, e.g. _small")
    parser.add_argument("--storage", action="store_true",
                        help="compare the low-precision storage configurations instead (default 1e6 elements on CPU)")
    parser.add_argument("--adaptive", action="store_true",
                        help="time AdaSGDF's fused step (both preconditioners) against torch AdamW(fused=True)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.adaptive:
        adaptive_benchmark(args, device)
        return
    if args.storage:
        storage_benchmark(args, device)
        return
    numel, iters, threads = timing_settings(args, device)
    load_start = load_average()

    candidates, compile_note = build_candidates(numel, args.tensors, device, not args.no_compile, args.groups)
    total = sum(p.numel() for p in make_params(numel, args.tensors, "cpu"))
    copy_gbps = None
    if device.type == "cuda":
        src = torch.empty(total * 7 // 2, dtype=torch.float32, device=device)  # copy of 14 B/elt = 28 B moved
        dst = torch.empty_like(src)
        copy_time = time_interleaved({"copy": lambda: dst.copy_(src)}, device, rounds=args.rounds, iters=iters)["copy"]
        copy_gbps = 2 * src.numel() * 4 / copy_time / 1e9

    rows, summary = [], []
    data = {"numel": total, "tensors": args.tensors, "groups": args.groups, "seconds": {}, "compile": compile_note}
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        times = time_interleaved(candidates, device, rounds=args.rounds, iters=iters,
                                 before_each=cold_start(device, args))
        data["seconds"][n_threads] = times
        fused = times["sgdf fused"]
        for name, t in times.items():
            gbps = BYTES_PER_ELEMENT * total / t / 1e9
            row = [n_threads, name, f"{t * 1e3:.2f}", f"{gbps:.1f}", f"{t / fused:.2f}x"]
            rows.append(row + ([f"{100 * gbps / copy_gbps:.0f}%"] if copy_gbps else []))
        summary += [
            f"{n_threads} thread(s): fused is {times['authors-style loop'] / fused:.2f}x faster than the authors-style "
            f"loop, {times['sgdf foreach'] / fused:.2f}x faster than foreach, and takes "
            f"{fused / times['torch AdamW fused']:.2f}x the time of torch AdamW(fused=True)",
            f"{n_threads} thread(s): foreach takes {times['sgdf foreach'] / times['torch AdamW foreach']:.2f}x "
            "the time of torch AdamW(foreach=True)",
        ]
    if device.type == "cuda" and not args.no_graphs:
        # the same steps replayed from CUDA graphs: the kernels alone, as a training loop whose host runs ahead of
        # the device (or a captured training step) sees them; AdamW(fused=True) captures only with capturable=True
        graph_candidates = {
            "sgdf fused": SGDF(in_groups(make_params(numel, args.tensors, device), args.groups), lr=1e-3,
                               fused=True).step,
            "torch AdamW fused": torch.optim.AdamW(in_groups(make_params(numel, args.tensors, device), args.groups),
                                                   lr=1e-3, fused=True, capturable=True).step,
        }
        graphed, errors = time_graphed(graph_candidates, device, rounds=args.rounds, iters=iters)
        data["graphed_seconds"], data["graph_errors"] = graphed, errors
        for name, t in graphed.items():
            gbps = BYTES_PER_ELEMENT * total / t / 1e9
            rows.append([threads[-1], f"{name}, replayed from a CUDA graph", f"{t * 1e3:.2f}", f"{gbps:.1f}",
                         f"{t / graphed.get('sgdf fused', t):.2f}x", f"{100 * gbps / copy_gbps:.0f}%"])
        if len(graphed) == 2:
            ratio = graphed["sgdf fused"] / graphed["torch AdamW fused"]
            summary.append(f"replayed from CUDA graphs: fused takes {ratio:.2f}x the time of torch "
                           "AdamW(fused=True, capturable=True)")
        summary += [f"not captured in a CUDA graph: {name}: {why}" for name, why in errors.items()]
    headers = ["threads", "candidate", "ms / step", "GB/s (28 B/elt)", "time vs fused"]
    headers += ["of copy bandwidth"] if copy_gbps else []
    if copy_gbps:
        summary.append(f"device copy bandwidth: {copy_gbps:.0f} GB/s")
        data["copy_bandwidth_GBps"] = copy_gbps
    summary.append(f"torch.compile candidate: {compile_note}")
    table = markdown_table(headers, rows) + "\n\n" + "\n".join(f"- {s}" for s in summary)
    report_timings("sgdf", args, device, total, table, data, load_start)


if __name__ == "__main__":
    main()
