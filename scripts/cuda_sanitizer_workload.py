"""A short run of every CUDA kernel variant for compute-sanitizer (memcheck, racecheck, synccheck, initcheck).

    compute-sanitizer --tool memcheck python scripts/cuda_sanitizer_workload.py
    python scripts/cuda_sanitizer_workload.py cpu    # the same calls CPU against CPU: a smoke test of this script

Small on purpose (sanitizers slow kernels down 10-100x) but it reaches each kernel's variants and edge cases:
SGDF's launch tables of 4, 5 and 6 operands (default storage in every dtype, float32 params with bfloat16 /
float16 state, bfloat16 params with float32 state, float32 master weights, orthogonalisation's update buffer, both
together), stochastic rounding (with and without master weights, with rounding_offsets), the grouped one-call op
over several param groups, AMP scale / skip with a tensor lr, odd sizes and misaligned storage (scalar tails), more
tensors than one launch's table and a tensor continuing into the next launch; ERD shapes that take each
loss-kernel path, with 16 and >= 128 statistics bins; NTK bins empty, single-row, on chip in both layouts (rows of
F, and F^T when a bin has more rows than features, over several tiles), at the on-chip limit in float64, and above
it (the library path). Every result, state included, is compared with the CPU kernels, so that a kernel that runs
clean but wrong is caught too. It prints one `ran ...` line per case. scripts/gpu_check.sh runs it.
"""

import sys

import torch

from sgdf_erd import SGDF, ERDLoss
from sgdf_erd.ops import binned_gram_eigvalsh, fused_sgdf_

DEVICE = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
CPU = torch.device("cpu")
F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
STATE_KEYS = ("exp_avg", "exp_var", "master_param")


def tolerance(*dtypes) -> float:
    return 1e-4 if all(d in (F32, F64) for d in dtypes) else 5e-2


def assert_close(got, expected, tol, what):
    """got (any device) against the CPU's expected, relative to expected's largest magnitude."""
    expected = expected.double()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(got.double().cpu(), expected, rtol=tol, atol=tol * max(scale, 1e-30), msg=what)


def ran(case: str) -> None:
    print(f"ran {case}: agrees with the CPU", flush=True)


# ------------------------------------------------------------------------------------------------------ SGDF
def sgdf_params(dtype, device, big=False):
    """Odd sizes (scalar tails), a tensor over one chunk, more tensors than one launch's table, misaligned storage;
    big: also a tensor of more chunks than one launch takes (it continues into the next launch)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(1,), (3,), (33, 7), (4, 3, 5, 5), (65536 + 3,)] + [(i + 1,) for i in range(60)]
    shapes += [(321 * 65536 + 5,)] if big else []
    params = [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes]
    backing = torch.randn(1001, generator=gen).to(device=device, dtype=dtype)
    params.append(backing[1:])  # odd storage offset: the vector loads must fall back to scalars
    return [torch.nn.Parameter(p) for p in params]


def run_sgdf(case: str, groups, steps=3, big=False, **options):
    """SGDF(fused=True) over param groups, each (param dtype, its group options), on DEVICE and on the CPU."""
    results = []
    for device in (DEVICE, CPU):
        torch.manual_seed(0)  # the stochastic-rounding seeds come from torch's generator: the same on both devices
        param_groups = []
        for gi, (dtype, group_options) in enumerate(groups):
            # distinct hyperparameters per group, as the grouped op passes them per group
            param_groups.append(dict(params=sgdf_params(dtype, device, big), weight_decay=1e-3 * gi,
                                     **group_options))
        opt = SGDF(param_groups, lr=0.05, fused=True, **options)
        gen = torch.Generator().manual_seed(1)
        for _ in range(steps):  # the first step creates the state; the later ones take the one-call path
            for group in param_groups:
                for p in group["params"]:
                    p.grad = torch.randn(p.shape, generator=gen).to(device=device, dtype=p.dtype)
            opt.step()
        results.append([(p, opt.state[p]) for group in param_groups for p in group["params"]])
    for (p, state), (p_cpu, state_cpu) in zip(*results):
        tol = tolerance(p.dtype, *(state[k].dtype for k in STATE_KEYS if k in state))
        assert_close(p.detach(), p_cpu.detach(), tol, f"{case}: param")
        for key in STATE_KEYS:
            if key in state_cpu:
                assert_close(state[key], state_cpu[key], tol, f"{case}: {key}")
        assert float(state["step"]) == float(state_cpu["step"]) == steps
    ran(case)


def run_sgdf_amp():
    """GradScaler's scale and found_inf (a skipped step in the middle) with a tensor lr, read on the device."""
    results = []
    for device in (DEVICE, CPU):
        params = sgdf_params(F32, device)
        opt = SGDF(params, lr=torch.tensor(0.05, device=device), fused=True, capturable=device.type == "cuda")
        gen = torch.Generator().manual_seed(1)
        for found_inf in (0.0, 1.0, 0.0):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(device) * 1024
            opt.grad_scale = torch.tensor(1024.0, device=device)
            opt.found_inf = torch.tensor(found_inf, device=device)
            opt.step()
        del opt.grad_scale, opt.found_inf
        results.append([(p, opt.state[p]) for p in params])
    for (p, state), (p_cpu, state_cpu) in zip(*results):
        assert_close(p.detach(), p_cpu.detach(), 1e-4, "amp: param")
        assert_close(state["exp_avg"], state_cpu["exp_avg"], 1e-4, "amp: exp_avg")
        assert float(state["step"]) == float(state_cpu["step"]) == 2
    ran("sgdf AMP grad_scale / found_inf with a tensor lr (one step skipped)")


def run_rounding_offsets():
    """fused_sgdf_ with rounding seeds and offsets (shards numbered from their place in a whole tensor), called
    directly: bfloat16 params and state rounded stochastically."""
    results = []
    sizes, offsets, seeds = [5, 4099, 70001], [0, 12345, 2**33 + 3], [1, 2**32 - 1, 77]
    for device in (DEVICE, CPU):
        gen = torch.Generator().manual_seed(4)
        params = [torch.randn(n, generator=gen).to(device, BF16) for n in sizes]
        grads = [torch.randn(n, generator=gen).to(device, BF16) for n in sizes]
        exp_avgs = [torch.zeros(n, device=device, dtype=BF16) for n in sizes]
        exp_vars = [torch.zeros(n, device=device, dtype=BF16) for n in sizes]
        steps = [torch.zeros((), device=device) for _ in sizes]
        for _ in range(2):
            fused_sgdf_(params, grads, exp_avgs, exp_vars, [], steps, 0.05, None, 0.9, 0.999, 1e-8, 0.5, 0.0, False,
                        False, False, None, None, rounding_seeds=seeds, rounding_offsets=offsets)
        results.append(params + exp_avgs + exp_vars)
    for got, expected in zip(*results):
        assert_close(got, expected, 5e-2, "rounding_offsets")
    ran("sgdf fused_sgdf_ with rounding_seeds and rounding_offsets (bfloat16, stochastic)")


def sgdf_cases():
    for dtype in (F32, F64, F16, BF16):  # 4 operands, one storage type
        run_sgdf(f"sgdf {dtype} params and state", [(dtype, {})])
    run_sgdf("sgdf float32 params + bfloat16 state", [(F32, dict(state_dtype=BF16))])
    run_sgdf("sgdf float32 params + float16 state", [(F32, dict(state_dtype=F16))])
    run_sgdf("sgdf bfloat16 params + float32 state", [(BF16, dict(state_dtype=F32))])
    run_sgdf("sgdf bfloat16 params + float32 master weights (5 operands)", [(BF16, dict(master_weights=True))])
    run_sgdf("sgdf float16 params + float32 master weights (5 operands)", [(F16, dict(master_weights=True))])
    run_sgdf("sgdf bfloat16 params and state, stochastic rounding", [(BF16, dict(stochastic_rounding=True))])
    run_sgdf("sgdf float32 params + bfloat16 state, stochastic rounding",
             [(F32, dict(state_dtype=BF16, stochastic_rounding=True))])
    run_sgdf("sgdf bfloat16 params + master weights, stochastic rounding of the state",
             [(BF16, dict(master_weights=True, stochastic_rounding=True))])
    orth = dict(orthogonalize=True, weight_decay=1e-2, decoupled_weight_decay=True)
    run_sgdf("sgdf orthogonalize, float32 (update buffer: 5 operands)", [(F32, {})], **orth)
    run_sgdf("sgdf orthogonalize, float32 params + bfloat16 state (5 operands)", [(F32, dict(state_dtype=BF16))],
             **orth)
    run_sgdf("sgdf orthogonalize, bfloat16 params + master weights (6 operands)", [(BF16, dict(master_weights=True))],
             **orth)
    run_sgdf("sgdf maximize, gamma 1, coupled weight decay", [(F32, {})], maximize=True, gamma=1.0)
    run_sgdf("sgdf grouped one-call op over 3 float32 groups", [(F32, {})] * 3)
    run_sgdf("sgdf grouped one-call op over groups of mixed storage",
             [(F32, {}), (BF16, dict(master_weights=True, stochastic_rounding=True)), (F32, dict(state_dtype=BF16)),
              (F16, {})])
    if DEVICE.type == "cuda":  # the CUDA launch tables' limit; on the CPU it only costs the smoke run time
        run_sgdf("sgdf a tensor of 321 chunks (continues into the next launch)", [(F32, {})], steps=1, big=True)
    else:
        print("skipped on the CPU: sgdf a tensor of 321 chunks (a CUDA launch table's limit)")
    run_sgdf_amp()
    run_rounding_offsets()


# ------------------------------------------------------------------------------------------------------- ERD
def run_erd(shape, dtype, num_bins):
    gen = torch.Generator().manual_seed(2)
    t = torch.rand(shape[0], generator=gen)
    inputs = (torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype),
              torch.cos(t * torch.pi / 2), torch.sin(t * torch.pi / 2))
    results = []
    for device in (DEVICE, CPU):
        output, target, alpha, sigma = (x.to(device, copy=True) for x in inputs)
        output.requires_grad_(True)
        loss_fn = ERDLoss(prediction="v", num_bins=num_bins).to(device)
        loss = loss_fn(output, target, alpha, sigma)
        loss.backward()
        results.append((loss.detach(), output.grad, loss_fn.running_sums))
    tol = 1e-5 if dtype in (F32, F64) else 2e-2
    for got, expected, what in zip(results[0], results[1], ("loss", "grad", "running_sums")):
        assert_close(got, expected, tol, f"erd {shape} {dtype} {num_bins} bins: {what}")
    ran(f"erd {shape} {dtype}, {num_bins} bins")


def erd_cases():
    # packed loads; odd sample size (scalar path); several chunks per sample; several tiles of the per-sample kernel
    for shape in [(64, 4, 16, 16), (5, 3, 7, 11), (3, 40000), (1500, 6)]:
        for dtype in (F32, BF16, F16, F64):
            run_erd(shape, dtype, 16)
    for num_bins in (128, 200):  # >= 128 bins: one segment per bin sum in the per-sample kernel
        for shape in [(64, 4, 16, 16), (1500, 6)]:
            run_erd(shape, F32, num_bins)
        run_erd((5, 3, 7, 11), BF16, num_bins)


# ------------------------------------------------------------------------------------------------------- NTK
def run_ntk(case, counts, k, dtype):
    """Bins with these row counts (bin 0 empty) of k features each."""
    gen = torch.Generator().manual_seed(3)
    bin_ids = torch.cat([torch.full((n,), b + 1) for b, n in enumerate(counts)])
    bin_ids = bin_ids[torch.randperm(bin_ids.numel(), generator=gen)]
    features = torch.randn(bin_ids.numel(), k, generator=gen, dtype=dtype)
    num_bins = len(counts) + 1
    eig, bin_counts = binned_gram_eigvalsh(features.to(DEVICE), bin_ids.to(DEVICE), num_bins)
    eig_cpu, counts_cpu = binned_gram_eigvalsh(features, bin_ids, num_bins)
    assert torch.equal(bin_counts.cpu(), counts_cpu)
    assert_close(eig, eig_cpu, 1e-4, f"ntk {case}")
    ran(f"ntk {case}, {dtype}")


def ntk_cases():
    for dtype in (F32, F64):
        # one row; 20 rows (on chip, rows of F); 150 rows over k = 160 features (Gram order 150 > 128: library)
        run_ntk("bins of 0, 1, 20, 150 rows x 160", [1, 20, 150], 160, dtype)
        # more rows than features: X = F_b^T, contracted over the bin's rows in several 16-row tiles
        run_ntk("bins of 0, 3, 40, 300 rows x 24 (transposed tiles)", [3, 40, 300], 24, dtype)
        # Gram order 128, the on-chip limit (float64: ~154 KB of shared memory), and 129 (the library's)
        run_ntk("bins of 0, 128, 129 rows x 160 (on-chip limit)", [128, 129], 160, dtype)


def main():
    torch.backends.cuda.matmul.allow_tf32 = False  # reference matmuls on the GPU in full float32
    sgdf_cases()
    erd_cases()
    ntk_cases()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    print(f"sanitizer workload ({DEVICE.type} against the CPU): all kernels ran and agree with the CPU")


if __name__ == "__main__":
    main()
