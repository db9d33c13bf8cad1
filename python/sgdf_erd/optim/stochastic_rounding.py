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

from collections import defaultdict
from typing import List, Optional, Sequence, Tuple

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


def _rounds_stochastically(dst: Tensor, src: Tensor, seed: Optional[int]) -> bool:
    return seed is not None and dst.dtype in LOW_PRECISION and src.dtype not in LOW_PRECISION


def _key(seed: int, step: Tensor, stream: int):
    # the step count is read where it lives: a host read of a CPU tensor, none of a device (capturable) one
    return counter_random.tensor_key(seed, step if step.device.type != "cpu" or torch.compiler.is_compiling()
                                     else int(step), stream)


def round_into_(dst: Tensor, src: Tensor, seed: Optional[int], step: Tensor, stream: int,
                first_index: int = 0) -> None:
    """dst <- src in dst's dtype: stochastically when `seed` is given and dst is bfloat16 / float16 while src is
    wider, else to nearest (a plain copy). The elements are numbered in memory order from `first_index` (a plain
    tensor that is a shard of a larger one: its first element's position there); a DTensor's by their positions in
    the whole tensor."""
    if not _rounds_stochastically(dst, src, seed):
        dst.copy_(src)
        return
    key = _key(seed, step, stream)
    if _dtensor.is_dtensor(dst):  # each rank rounds its shard with the numbers of its elements in the whole tensor
        index, bound = _dtensor.global_element_index(dst)
        u = counter_random.uniform_at(index, key, bound)
        dst.to_local().copy_(stochastic_round(_dtensor.local_shard(src, dst), dst.dtype, u))
        return
    u = counter_random.uniform(src.numel(), key, src.device, first_index)
    # numbered in memory order, as the fused kernels walk a dense tensor (channels_last included)
    u = u.as_strided(src.shape, src.stride()) if is_dense(src) else u.reshape(src.shape)
    dst.copy_(stochastic_round(src, dst.dtype, u))


# Per device type: tensors of at most this many elements are rounded together, up to about this many per pass over
# their concatenation (for small tensors each torch op costs more than its arithmetic); larger tensors are rounded
# one at a time. CPU: passes of 2**16 elements were fastest (1,000 tensors of 1,000 elements: 37 ms per stream
# against 127 one by one and 85 in passes of 2**20, whose fresh multi-megabyte temporaries cost page faults). Other
# devices (not measured yet): every op is a kernel launch and temporaries come from a caching allocator, so larger
# passes, 2**22 elements (about 80 MB of temporaries).
_BATCH_ELEMENTS = {"cpu": 1 << 16}
_DEVICE_BATCH_ELEMENTS = 1 << 22


def round_all_into_(dsts: Sequence[Tensor], srcs: Sequence[Tensor], seeds: Sequence[Optional[int]],
                    steps: Sequence[Tensor], stream: int, first_indices: Optional[Sequence[int]] = None) -> None:
    """round_into_ for each (dst, src) pair of the lists (pairs where dst is src are skipped), with the same
    results; the small tensors rounded stochastically share the hash and rounding passes."""
    batches = defaultdict(list)  # (dtype, device) -> [(dst view, src view, element indices, key)]
    batched = defaultdict(int)  # (dtype, device) -> elements in its batch
    first_indices = first_indices or [0] * len(dsts)
    for dst, src, seed, step, first in zip(dsts, srcs, seeds, steps, first_indices):
        if dst is src:
            continue
        flat = None
        limit = _BATCH_ELEMENTS.get(dst.device.type, _DEVICE_BATCH_ELEMENTS)
        if (_rounds_stochastically(dst, src, seed) and dst.numel() <= limit
                and first + dst.numel() <= 1 << 32 and not torch.compiler.is_compiling()):
            flat = _flat_with_indices(dst, src, first)
        if flat is None:
            round_into_(dst, src, seed, step, stream, first)
            continue
        where = dst.dtype, flat[0].device
        batches[where].append((*flat, _key(seed, step, stream)))
        batched[where] += flat[0].numel()
        if batched[where] >= limit:
            _round_batch_(dst.dtype, batches.pop(where))
            del batched[where]
    for (dtype, _), batch in batches.items():
        _round_batch_(dtype, batch)


def _flat_with_indices(dst: Tensor, src: Tensor, first: int) -> Optional[Tuple[Tensor, Tensor, Tensor]]:
    """Flat views of dst and src in one element order and each element's index in round_into_'s numbering (memory
    order; for a DTensor, the element's position in the whole tensor), or None where there are no such views."""
    if _dtensor.is_dtensor(dst):
        local_dst, local_src = dst.to_local(), _dtensor.local_shard(src, dst)
        if not (local_dst.is_contiguous() and local_src.is_contiguous()):
            return None
        index, bound = _dtensor.global_element_index(dst)
        return None if bound > 1 << 32 else (local_dst.view(-1), local_src.view(-1), index.view(-1))
    if dst.stride() != src.stride() or not is_dense(dst):
        return None
    n = dst.numel()  # a dense tensor's elements in memory order: n consecutive ones from its storage offset
    return dst.as_strided((n,), (1,)), src.as_strided((n,), (1,)), counter_random.element_indices(n, dst.device, first)


def _round_batch_(dtype: torch.dtype, batch: List[Tuple[Tensor, Tensor, Tensor, object]]) -> None:
    dsts, srcs, indices, keys = zip(*batch)
    device = dsts[0].device
    counts = [t.numel() for t in dsts]
    # keys: Python ints, or 0-dim tensors on the device (capturable: no host copy while a graph is captured)
    key = torch.stack(keys) if isinstance(keys[0], Tensor) else torch.tensor(keys, dtype=torch.int64, device=device)
    per_element = lambda v: torch.cat([x.expand(n) for x, n in zip(v.unbind(), counts)])  # noqa: E731
    u = counter_random.hashed_uniform_(torch.cat(indices), per_element(key),
                                       per_element(counter_random.second_key(key)))
    rounded = stochastic_round(torch.cat(srcs), dtype, u)
    torch._foreach_copy_(list(dsts), list(rounded.split(counts)))
