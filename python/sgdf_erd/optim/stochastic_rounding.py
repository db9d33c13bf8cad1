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

from . import _dtensor, counter_random
from .sgdf_checks import is_dense

LOW_PRECISION = (torch.bfloat16, torch.float16)


# Per target dtype: bits of a float32 magnitude below the target's precision (truncated to get the lower
# neighbour, a normal number's spacing), the smallest float32 magnitude that overflows to infinity when rounded to
# nearest, and the smallest normal magnitude (float16's subnormals are coarser than float32's bits say).
_LAYOUT = {
    torch.bfloat16: dict(dropped_bits=16, overflow=0x7F7F8000, smallest_normal=None),
    torch.float16: dict(dropped_bits=13, overflow=0x477FF000, smallest_normal=2.0**-14),
}


def stochastic_round(x: Tensor, dtype: torch.dtype, u: Tensor) -> Tensor:
    """x rounded stochastically to `dtype` (bfloat16 or float16) with uniforms u in [0, 1); float64 x is first
    rounded to float32 (a bias of at most 2**-14 of a spacing).

    The neighbours come from float32 bit patterns, never from a round trip through `dtype`: torch.compile keeps
    such intermediates in float32 (inductor does not emulate precision casts by default), which would make every
    value look exact."""
    layout = _LAYOUT[dtype]
    x = x.float()
    bits = x.view(torch.int32) & 0x7FFFFFFF  # |x|
    magnitude = bits.view(torch.float32)
    lo_bits = bits & -(1 << layout["dropped_bits"])
    lo = lo_bits.view(torch.float32)
    hi = (lo_bits + (1 << layout["dropped_bits"])).view(torch.float32)
    if layout["smallest_normal"] is not None:  # float16 subnormals: evenly spaced by 2**-24
        subnormal = magnitude < layout["smallest_normal"]
        lo_sub = torch.floor(magnitude * 2.0**24) * 2.0**-24
        lo = torch.where(subnormal, lo_sub, lo)
        hi = torch.where(subnormal, lo_sub + 2.0**-24, hi)
    hi = torch.where(hi > torch.finfo(dtype).max, float("inf"), hi)  # never round up past the largest finite
    up_probability = (magnitude - lo) / (hi - lo)  # exact; 0 where |x| = lo or hi = inf
    rounded = torch.where(u < up_probability, hi, lo)
    rounded = torch.where(bits >= layout["overflow"], float("inf"), rounded)  # as to nearest (NaN handled below)
    rounded = torch.where(torch.isnan(x), x, torch.copysign(rounded, x))
    return rounded.to(dtype)


def round_into_(dst: Tensor, src: Tensor, seed: Optional[int], step: Tensor, stream: int) -> None:
    """dst <- src in dst's dtype: stochastically when `seed` is given and dst is bfloat16 / float16 while src is
    wider, else to nearest (a plain copy)."""
    if seed is None or dst.dtype not in LOW_PRECISION or src.dtype in LOW_PRECISION:
        dst.copy_(src)
        return
    key = counter_random.tensor_key(seed, step if step.device.type != "cpu" or torch.compiler.is_compiling()
                                    else int(step), stream)
    if _dtensor.is_dtensor(dst):  # each rank rounds its shard with the numbers of its elements in the whole tensor
        index, bound = _dtensor.global_element_index(dst)
        u = counter_random.uniform_at(index, key, bound)
        dst.to_local().copy_(stochastic_round(_dtensor.local_shard(src, dst), dst.dtype, u))
        return
    u = counter_random.uniform(src.numel(), key, src.device)
    # numbered in memory order, as the fused kernels walk a dense tensor (channels_last included)
    u = u.as_strided(src.shape, src.stride()) if is_dense(src) else u.reshape(src.shape)
    dst.copy_(stochastic_round(src, dst.dtype, u))
