"""Run by tests/test_sgdf_cpu_capability.py in a fresh process (the CPU kernels' instruction set is chosen once per
process, from SGDF_ERD_CPU_CAPABILITY): takes fused SGDF steps on the CPU for every storage configuration and option,
over tensors with ragged tails, several element ranges, and NaN / infinite / subnormal / huge values, through the
optimizer and through the op itself (gradients unscaled in place, update buffers, shards whose element numbers
straddle 2^32, AdaSGDF's preconditioners), and saves everything the steps wrote to the file named on the command line.

    python -m tests.sgdf_capability_worker OUT.pt
"""

import itertools
import sys

import torch

import sgdf_erd
from sgdf_erd import SGDF
from tests.test_sgdf_op import make_args, op

# lengths around the vector widths (8 and 16 floats), and more than one 32768-element range with a tail
SHAPES = [(1,), (15,), (17,), (24,), (33, 17), (40_001,)]
SPECIAL = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e-40, -3e-39, 3.3e38, -3.3e38, 0.0, -0.0])

STORAGE = {  # name -> (param dtype, storage options)
    "f32": (torch.float32, {}),
    "f64": (torch.float64, {}),
    "bf16": (torch.bfloat16, {}),
    "f16": (torch.float16, {}),
    "f32_bf16_state": (torch.float32, dict(state_dtype=torch.bfloat16)),
    "f32_f16_state": (torch.float32, dict(state_dtype=torch.float16)),
    "bf16_f32_state": (torch.bfloat16, dict(state_dtype=torch.float32)),
    "f16_bf16_state": (torch.float16, dict(state_dtype=torch.bfloat16)),
    "bf16_master": (torch.bfloat16, dict(master_weights=True)),
    "f16_master_f32_state": (torch.float16, dict(master_weights=True, state_dtype=torch.float32)),
    "bf16_sr": (torch.bfloat16, dict(stochastic_rounding=True)),
    "f16_sr": (torch.float16, dict(stochastic_rounding=True)),
    "f32_bf16_state_sr": (torch.float32, dict(state_dtype=torch.bfloat16, stochastic_rounding=True)),
    "bf16_master_sr": (torch.bfloat16, dict(master_weights=True, stochastic_rounding=True)),
}
OPTIONS = {
    "default": {},
    "decay": dict(weight_decay=0.1),
    "decoupled_sign": dict(weight_decay=0.1, decoupled_weight_decay=True, sign=True),
    "maximize_gamma1": dict(maximize=True, gamma=1.0),
    "gamma_pow": dict(gamma=0.3, betas=(0.5, 0.9)),
    "orthogonalize": dict(orthogonalize=True, ns_steps=3),  # the kernel writes updates, not params
}


def _tensors(shape, dtype, seed, special):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen, dtype=torch.float64)
    if special:
        flat = t.view(-1)
        positions = torch.randperm(flat.numel(), generator=gen)[:SPECIAL.numel()]
        flat[positions] = SPECIAL[:positions.numel()].double()
    return t.to(dtype)


def run_all():
    results = {"capability": sgdf_erd.build_info()["cpu_capability"]}
    for (storage, (dtype, storage_options)), (option, options) in itertools.product(STORAGE.items(),
                                                                                    OPTIONS.items()):
        for special in (False, True):
            torch.manual_seed(0)  # the stochastic-rounding seeds of new state
            shapes = [s for s in SHAPES if len(s) == 2] if option == "orthogonalize" else SHAPES
            params = [torch.nn.Parameter(_tensors(s, dtype, i, special)) for i, s in enumerate(shapes)]
            opt = SGDF(params, lr=0.01, fused=True, **storage_options, **options)
            for step in range(3):
                for i, p in enumerate(params):
                    p.grad = _tensors(p.shape, dtype, 100 * step + i + 7, special)
                opt.step()
            results[(storage, option, special)] = {
                "params": [p.detach().clone() for p in params],
                "state": [{k: v.clone() for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
                          for p in params],
            }
    for dtype, state_dtype, master, amp, updates in itertools.product(
            (torch.float32, torch.bfloat16, torch.float16), (None, torch.bfloat16, torch.float32), (False, True),
            (False, True), (False, True)):
        if master and dtype == torch.float32:
            continue
        for stochastic in (False, True) if dtype != torch.float32 or state_dtype == torch.bfloat16 else (False,):
            args = make_args("cpu", dtype=dtype, shapes=[(24,), (40,), (1000,), (35_000,)], updates=updates, amp=amp,
                             state_dtype=state_dtype, master=master, stochastic=stochastic)
            if stochastic:  # element numbers that cross 2^32 inside a vector, and far beyond it
                args["rounding_offsets"] = [2**32 - 5, 2**32 - 37, 3 * 2**32 + 8, 2**33 - 20_000]
            op(*args.values())
            results[("op", str(dtype), str(state_dtype), master, amp, updates, stochastic)] = {
                "params": [t.clone() for name in ("params", "grads", "master_params", "updates") for t in args[name]],
                "state": [{"exp_avg": a, "exp_var": v} for a, v in zip(args["exp_avgs"], args["exp_vars"])],
            }
    # AdaSGDF's preconditioners, through the op: special values in the gradients and the second moments
    for preconditioner, dtype, state_dtype, master, updates, stochastic in itertools.product(
            ("second_moment", "variance"), (torch.float32, torch.bfloat16, torch.float16, torch.float64),
            (None, torch.bfloat16, torch.float32), (False, True), (False, True), (False, True)):
        if (master and dtype in (torch.float32, torch.float64)) or (dtype == torch.float64 and state_dtype) or (
                stochastic and dtype == torch.float32 and state_dtype != torch.bfloat16):
            continue
        args = make_args("cpu", dtype=dtype, shapes=[(24,), (40,), (1000,), (35_000,)], updates=updates, amp=True,
                         state_dtype=state_dtype, master=master, stochastic=stochastic)
        args["grads"] = [_tensors(g.shape, dtype, i, True) for i, g in enumerate(args["grads"])]
        args["exp_avg_sqs"] = ([_tensors(m.shape, m.dtype, 50 + i, True).abs() for i, m in enumerate(args["exp_avgs"])]
                               if preconditioner == "second_moment" else None)
        args["preconditioner"] = preconditioner
        op(*args.values())
        results[("ada", preconditioner, str(dtype), str(state_dtype), master, updates, stochastic)] = {
            "params": [t.clone() for name in ("params", "grads", "master_params", "updates") for t in args[name]],
            "state": [{"exp_avg": a, "exp_var": v, **({"exp_avg_sq": q} if q is not None else {})}
                      for a, v, q in zip(args["exp_avgs"], args["exp_vars"], args["exp_avg_sqs"] or [None] * 4)],
        }
    return results


if __name__ == "__main__":
    torch.save(run_all(), sys.argv[1])
