"""Stochastic rounding of float32 (or float64) values to bfloat16 / float16, as the fused kernels do it
(csrc/common/stochastic_rounding.h).

A value x between the neighbouring representable values lo <= |x| <= hi of the target dtype becomes hi with
probability p = (|x| - lo) / (hi - lo) and lo otherwise (the sign is kept), so the expected result is x: the
rounding is unbiased, and updates far below half a spacing still move a parameter on average. `|x| - lo` and
`hi - lo` are exact in float32 (the neighbours are within one spacing of x), so p is exact, and a uniform u that is
a multiple of 2**-24 makes `u < p` happen with probability p whenever p is a multiple of 2**-24 (always, except for
float16 targets below its smallest subnormal, where the bias is below 2**-24 of a spacing). Subnormals need no
special case (their spacing is uniform and the bit patterns are consecutive). NaN stays NaN; a value that rounds
to infinity to nearest still does (no stochastic overflow).
"""

from typing import Optional

import torch
from torch import Tensor

from . import counter_random
from .sgdf_checks import is_dense

LOW_PRECISION = (torch.bfloat16, torch.float16)


def stochastic_round(x: Tensor, dtype: torch.dtype, u: Tensor) -> Tensor:
    """x (float32 or float64) rounded stochastically to `dtype` (bfloat16 or float16) with uniforms u in [0, 1)."""
    magnitude = x.abs()
    nearest = magnitude.to(dtype)
    nearest_wide = nearest.to(x.dtype)
    # the other neighbour: one bit pattern up or down from the nearest magnitude, towards x (0 where exact or NaN)
    towards = torch.nan_to_num(torch.sign(magnitude - nearest_wide), nan=0.0).to(torch.int16)
    other = (nearest.view(torch.int16) + towards).view(dtype).to(x.dtype)
    lo, hi = torch.minimum(nearest_wide, other), torch.maximum(nearest_wide, other)
    up_probability = (magnitude - lo) / (hi - lo)  # NaN (never taken) where x is exact
    rounded = torch.where(u < up_probability, hi, lo)
    rounded = torch.where(torch.isinf(nearest_wide), nearest_wide, rounded)
    return torch.copysign(rounded, x).to(dtype)


def round_into_(dst: Tensor, src: Tensor, seed: Optional[int], step: Tensor, stream: int) -> None:
    """dst <- src in dst's dtype: stochastically when `seed` is given and dst is bfloat16 / float16 while src is
    wider, else to nearest (a plain copy)."""
    if seed is None or dst.dtype not in LOW_PRECISION or src.dtype in LOW_PRECISION:
        dst.copy_(src)
        return
    key = counter_random.tensor_key(seed, step if step.device.type != "cpu" or torch.compiler.is_compiling()
                                    else int(step), stream)
    u = counter_random.uniform(src.numel(), key, src.device)
    # numbered in memory order, as the fused kernels walk a dense tensor (channels_last included)
    u = u.as_strided(src.shape, src.stride()) if is_dense(src) else u.reshape(src.shape)
    dst.copy_(stochastic_round(src, dst.dtype, u))
