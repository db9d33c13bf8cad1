"""A short run of every CUDA kernel for compute-sanitizer (memcheck, racecheck, synccheck, initcheck).

    compute-sanitizer --tool memcheck python scripts/cuda_sanitizer_workload.py

Small on purpose (sanitizers slow kernels down 10-100x) but it reaches each kernel's edge cases: odd sizes and
misaligned storage (scalar tails), more tensors than one launch's table, every dtype, AMP scale / skip, tensor lr,
the orthogonalisation mode, ERD shapes that take each loss-kernel path, and NTK bins on and off chip. Results are
compared with the CPU kernels so that a kernel that runs clean but wrong is caught too. scripts/gpu_check.sh runs it.
"""

import sys

import torch

from sgdf_erd import SGDF, ERDLoss
from sgdf_erd.ops import binned_gram_eigvalsh

# `python scripts/cuda_sanitizer_workload.py cpu` runs the same calls CPU against CPU: a smoke test of the script.
DEVICE = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")


def sgdf_params(dtype, device):
    gen = torch.Generator().manual_seed(0)
    shapes = [(1,), (3,), (33, 7), (4, 3, 5, 5), (65536 + 3,)] + [(i + 1,) for i in range(60)]
    params = [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes]
    backing = torch.randn(1001, generator=gen).to(device=device, dtype=dtype)
    params.append(backing[1:])  # odd storage offset: the vector loads must fall back to scalars
    return [torch.nn.Parameter(p) for p in params]


def run_sgdf(dtype, **options):
    results = []
    for device in (DEVICE, torch.device("cpu")):
        params = sgdf_params(dtype, device)
        opt = SGDF(params, lr=0.05, fused=True, **options)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(device=device, dtype=dtype)
            opt.step()
        results.append([p.detach().double().cpu() for p in params])
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 5e-2
    for gpu, cpu in zip(*results):
        torch.testing.assert_close(gpu, cpu, rtol=tol, atol=tol)


def run_sgdf_amp():
    params = sgdf_params(torch.float32, DEVICE)
    opt = SGDF(params, lr=torch.tensor(0.05, device=DEVICE), fused=True, capturable=True)
    for found_inf in (0.0, 1.0, 0.0):
        for p in params:
            p.grad = torch.randn_like(p) * 1024
        opt.grad_scale = torch.tensor(1024.0, device=DEVICE)
        opt.found_inf = torch.tensor(found_inf, device=DEVICE)
        opt.step()
    del opt.grad_scale, opt.found_inf


def run_erd():
    gen = torch.Generator().manual_seed(2)
    # packed loads; odd sample size (scalar path); several chunks per sample; several tiles of the per-sample kernel
    for shape in [(64, 4, 16, 16), (5, 3, 7, 11), (3, 40000), (1500, 6)]:
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            t = torch.rand(shape[0], generator=gen)
            inputs = (torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype),
                      torch.cos(t * torch.pi / 2), torch.sin(t * torch.pi / 2))
            losses, grads = [], []
            for device in (DEVICE, torch.device("cpu")):
                output, target, alpha, sigma = (x.to(device, copy=True) for x in inputs)
                output.requires_grad_(True)
                loss = ERDLoss(prediction="v", num_bins=16).to(device)(output, target, alpha, sigma)
                loss.backward()
                losses.append(loss.detach().double().cpu())
                grads.append(output.grad.double().cpu())
            tol = 1e-5 if dtype in (torch.float32, torch.float64) else 2e-2
            torch.testing.assert_close(losses[0], losses[1], rtol=tol, atol=0)
            torch.testing.assert_close(grads[0], grads[1], rtol=tol, atol=tol * grads[1].abs().max().item())


def run_ntk():
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        # bins of 0, 1, 20 and 150 rows: empty, single-sample, on-chip Jacobi, and above the on-chip limit
        bin_ids = torch.cat([torch.full((n,), b) for b, n in ((1, 1), (2, 20), (3, 150))])
        features = torch.randn(bin_ids.numel(), 160, generator=gen, dtype=dtype)
        gpu = binned_gram_eigvalsh(features.to(DEVICE), bin_ids.to(DEVICE), 4)
        cpu = binned_gram_eigvalsh(features, bin_ids, 4)
        torch.testing.assert_close(gpu[1].cpu(), cpu[1])
        scale = cpu[0].abs().max().item()
        torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=0, atol=1e-4 * scale)


def main():
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        run_sgdf(dtype)
    run_sgdf(torch.float32, orthogonalize=True, weight_decay=1e-2, decoupled_weight_decay=True)
    run_sgdf(torch.float32, maximize=True, gamma=1.0, weight_decay=1e-3)
    run_sgdf_amp()
    run_erd()
    run_ntk()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    print("sanitizer workload: all kernels ran and agree with the CPU")


if __name__ == "__main__":
    main()
