"""Cross-path check: the same data stepped 4 times on every path (default, fused, foreach, single, mixed, mixed2;
1-3 groups; every config) must agree with the single-tensor path up to float tolerance. The harness compares each
case with the same optimizer, so a fault shared by a path and its reference shows only here.
Usage: python scripts/probe_step/crosspath.py"""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from harness import CONFIGS, PATHS, Ctx, build, new_grads

torch.set_num_threads(1)
worst, failures, runs = {}, [], 0
for config in CONFIGS:
    if config in ('scaler',):
        continue
    for ngroups in (1, 2, 3):
        results = {}
        for path in PATHS:
            if path.startswith('mixed') and ngroups == 1:
                continue
            ctx = Ctx(path, config, ngroups, pre=0)
            opt = build(ctx)
            if config == 'scale':  # (a hand-set grad_scale unscales only on the fused path: not comparable)
                del opt.grad_scale, opt.found_inf
            for i in range(4):
                torch.manual_seed(100 + i)
                new_grads(opt)
                opt.step()
            runs += 1
            results[path] = [p.detach().double().clone() for g in opt.param_groups for p in g['params']]
        base = results['single']
        for path, ps in results.items():
            d = max(float((a - b).abs().max()) for a, b in zip(ps, base))
            tol = 1e-5 if CONFIGS[config]['dtype'] in (torch.float32, torch.float64) else 3e-2
            if config == 'sr':
                tol = 1e-1  # (stochastic rounding draws per path differently)
            worst[(config, ngroups, path)] = d
            if d > tol:
                failures.append((config, ngroups, path, d))
print('runs', runs)
print('largest difference to single per config:', {c: max(v for k, v in worst.items() if k[0] == c) for c in
                                                   {k[0] for k in worst}})
print('failures', failures)
