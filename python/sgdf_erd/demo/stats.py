"""Seed statistics for the demo's reports: mean with a Student-t confidence interval, and paired differences.

Every method trains with the same seeds, so method A's run with seed s and method B's run with seed s share their
initial weights, batches and noise; the difference A - B is taken per seed and its interval is the t-interval of
those differences (a paired comparison, narrower than comparing two independent means when the seeds matter).
"""

import math
from typing import Dict, Optional, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Dict[str, Optional[float]]:
    """Mean and the two-sided Student-t interval ``mean +- t_{(1+c)/2, n-1} * sd / sqrt(n)`` (sd with n - 1).

    With one value there is no interval: ``half_width``, ``low`` and ``high`` are None.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {x.shape}")
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "half_width": None, "low": None, "high": None, "n": 1}
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return {"mean": mean, "half_width": half, "low": mean - half, "high": mean + half, "n": len(x)}


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Dict:
    """Interval of the per-seed differences ``a[i] - b[i]``; ``resolved`` says whether it excludes 0 (None with
    one seed, where nothing can be resolved)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: got {len(a)} and {len(b)} values")
    d = interval(np.asarray(a, np.float64) - np.asarray(b, np.float64), confidence)
    d["resolved"] = None if d["half_width"] is None else bool(d["low"] > 0 or d["high"] < 0)
    return d


def format_interval(d: Dict, digits: int = 2, signed: bool = False) -> str:
    """``1.23 +- 0.45`` (or just ``1.23`` with one seed)."""
    sign = "+" if signed else ""
    text = f"{d['mean']:{sign}.{digits}f}"
    return text if d["half_width"] is None else f"{text} +- {d['half_width']:.{digits}f}"
