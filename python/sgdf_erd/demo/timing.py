"""Optimizer step time on the demo's model: fused SGDF kernel vs the unfused paths (and AdamW for scale)."""

import time
from typing import Callable, Dict, List

import torch
from torch import nn

from ..optim import SGDF


def _candidates(has_fused_adamw: bool) -> Dict[str, Callable]:
    c = {
        "SGDF fused": lambda p: SGDF(p, lr=1e-3, fused=True),
        "SGDF foreach": lambda p: SGDF(p, lr=1e-3, foreach=True),
        "SGDF single-tensor": lambda p: SGDF(p, lr=1e-3, foreach=False, fused=False),
        "AdamW foreach": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
    }
    if has_fused_adamw:
        c["AdamW fused"] = lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True)
    return c


def time_optimizer_steps(model_factory: Callable[[], nn.Module], device: str = "cpu", rounds: int = 5,
                         steps_per_round: int = 20, seed: int = 0) -> List[Dict[str, float]]:
    """Median ms per ``optimizer.step()`` for each path, the paths interleaved round by round (fair under load)."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    base = model_factory().to(dev)
    grads = [torch.randn_like(p) * 1e-2 for p in base.parameters()]
    try:
        torch.optim.AdamW([torch.zeros(1, device=dev, requires_grad=True)], fused=True)
        has_fused_adamw = True
    except (RuntimeError, ValueError):
        has_fused_adamw = False
    runs = {}
    for name, make in _candidates(has_fused_adamw).items():
        params = [p.detach().clone().requires_grad_(True) for p in base.parameters()]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt = make(params)
        opt.step()  # allocate state outside the timing
        runs[name] = (opt, [])
    for _ in range(rounds):
        for name, (opt, samples) in runs.items():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            samples.append((time.perf_counter() - t0) / steps_per_round)
    rows = []
    ref = None
    for name, (_, samples) in runs.items():
        ms = 1000.0 * sorted(samples)[len(samples) // 2]
        ref = ms if ref is None else ref
        rows.append({"path": name, "ms_per_step": ms, "relative_to_fused_sgdf": ms / ref})
    return rows
