"""The demo's method table: which (weighting, optimizer) pairs it trains, each with its own learning rate.

Adding an optimizer is one entry in ``OPTIMIZERS`` (its factory and its lr sweep grid), for example::

    "adasgdf": OptimizerEntry(lambda params, lr: AdaSGDF(params, lr=lr), (2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3)),

``benchmarks/demo_lr_sweep.py --reuse`` then sweeps it with each weighting the reference optimizer trains with
(``sweep_pairs``), reusing the points already swept, and the pairs' best learning rates go into ``DEFAULT_LR``
(one line per pair; tests/test_demo.py checks that it matches the committed sweep), which adds them to the demo's
default methods. The paired comparisons of the report follow from the table: every weighting against constant
weighting with the same optimizer, and every optimizer against ``REFERENCE_OPTIMIZER`` with the same weighting.
"""

from typing import Callable, Dict, List, NamedTuple, Tuple

import torch

from ..optim import AdaSGDF, SGDF


class OptimizerEntry(NamedTuple):
    make: Callable[..., torch.optim.Optimizer]  # (params, lr) -> optimizer
    lr_grid: Tuple[float, ...]  # the lr sweep's 5 points, a factor 2 apart (its --points 3 takes the middle 3)


# betas and eps are each optimizer's defaults, no weight decay; the grids are centred on the best point of an
# earlier one-lr-per-optimizer sweep (600 steps: SGDF 1, AdamW 4e-3)
OPTIMIZERS: Dict[str, OptimizerEntry] = {
    "sgdf": OptimizerEntry(lambda params, lr: SGDF(params, lr=lr), (0.25, 0.5, 1.0, 2.0, 4.0)),
    "adamw": OptimizerEntry(lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
                            (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)),
    # the drop-in for AdamW; centred lower than AdamW's grid, whose lowest point was best for constant+adasgdf
    "adasgdf": OptimizerEntry(lambda params, lr: AdaSGDF(params, lr=lr, weight_decay=0.0),
                              (2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3)),
}
REFERENCE_OPTIMIZER = "adamw"
REFERENCE_WEIGHTING = "constant"

# "weighting+optimizer" -> lr: each pair's best point of its own sweep at the demo's default budget
# (benchmarks/demo_lr_sweep.py, results in benchmarks/results/demo_lr_sweep_cpu.md; tests/test_demo.py checks that
# this table matches that file). The order is the report's order; these are the demo's default methods.
DEFAULT_LR: Dict[str, float] = {
    "erd+sgdf": 0.5,
    "constant+sgdf": 1.0,
    "min_snr+sgdf": 0.5,
    "erd+adamw": 4e-3,
    "constant+adamw": 2e-3,
    "erd+adasgdf": 2e-3,
    "constant+adasgdf": 1e-3,
}


def sweep_pairs() -> List[str]:
    """The pairs the lr sweep covers by default: every ``DEFAULT_LR`` pair, and each optimizer of ``OPTIMIZERS``
    that has none yet with every weighting the reference optimizer trains with."""
    pairs = list(DEFAULT_LR)
    with_default = {split_name(name)[1] for name in pairs}
    reference_weightings = [w for w, o in map(split_name, pairs) if o == REFERENCE_OPTIMIZER]
    for optimizer in OPTIMIZERS:
        if optimizer not in with_default:
            pairs += [f"{w}+{optimizer}" for w in reference_weightings]
    return pairs


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
