"""The demo's method table: which (weighting, optimizer) pairs it trains, each with its own learning rate.

Adding a method is one entry in ``DEFAULT_LR`` (and, for a new optimizer, one entry in ``OPTIMIZERS``); the
paired comparisons of the report follow from the table: every weighting against constant weighting with the same
optimizer, and every optimizer against ``REFERENCE_OPTIMIZER`` with the same weighting.
"""

from typing import Callable, Dict, List

import torch

from ..optim import SGDF

# optimizer name -> factory(params, lr); betas and eps are each optimizer's defaults, no weight decay
OPTIMIZERS: Dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgdf": lambda params, lr: SGDF(params, lr=lr),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
}
REFERENCE_OPTIMIZER = "adamw"
REFERENCE_WEIGHTING = "constant"

# "weighting+optimizer" -> lr: each pair's best point of its own sweep at the demo's default budget
# (benchmarks/demo_lr_sweep.py, results in benchmarks/results/demo_lr_sweep_cpu.md; tests/test_demo.py checks that
# this table matches that file). The order is the report's order.
DEFAULT_LR: Dict[str, float] = {
    "erd+sgdf": 0.5,
    "constant+sgdf": 1.0,
    "min_snr+sgdf": 0.5,
    "erd+adamw": 4e-3,
    "constant+adamw": 2e-3,
}


def split_name(name: str):
    """``"erd+sgdf"`` -> ``("erd", "sgdf")``."""
    weighting, _, optimizer = name.partition("+")
    return weighting, optimizer


def comparisons(names: List[str]) -> List[Dict[str, str]]:
    """The paired differences the report states, for the methods present: A - B, the factor they isolate
    ("weighting" or "optimizer") and a label."""
    present = set(names)
    out = []
    for name in names:  # weighting vs constant, same optimizer
        weighting, optimizer = split_name(name)
        other = f"{REFERENCE_WEIGHTING}+{optimizer}"
        if weighting != REFERENCE_WEIGHTING and other in present:
            out.append({"a": name, "b": other, "kind": "weighting",
                        "label": f"{weighting} vs {REFERENCE_WEIGHTING} weighting ({optimizer})"})
    for name in names:  # optimizer vs the reference optimizer, same weighting
        weighting, optimizer = split_name(name)
        other = f"{weighting}+{REFERENCE_OPTIMIZER}"
        if optimizer != REFERENCE_OPTIMIZER and other in present:
            out.append({"a": name, "b": other, "kind": "optimizer",
                        "label": f"{optimizer} vs {REFERENCE_OPTIMIZER} ({weighting} weighting)"})
    return out
