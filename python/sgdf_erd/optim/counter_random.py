"""Counter-based uniform random numbers for stochastic rounding: a pure function of (seed, step, stream, element
index), so a step is reproducible from the seed and the step count alone, needs no generator state (no host
sync; a CUDA graph replays with the step count read on the device, so each replay draws anew), and the fused
kernels (csrc/common/random.h) compute the same numbers.

The mixer is a 32-bit integer hash (xor-shift / multiply, two odd multipliers below 2**31 so that the products of
32-bit values fit in int64 here). Every value stays in [0, 2**32); torch has no uint32 arithmetic.
"""

from typing import Union

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
# Streams: which stored tensor of a parameter the numbers round (independent draws for each).
PARAM_STREAM, EXP_AVG_STREAM, EXP_VAR_STREAM, EXP_AVG_SQ_STREAM = 0, 1, 2, 3
_SECOND_KEY = 0x68E31DA4


def mix32(x: Union[int, Tensor]) -> Union[int, Tensor]:
    """The 32-bit hash, on Python ints or int64 tensors."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & MASK32
    return x ^ (x >> 15)


def tensor_key(seed: int, step: Union[int, Tensor], stream: int) -> Union[int, Tensor]:
    """The per-tensor key from the parameter's seed, the step being taken and the stream. `step` may be the step
    count tensor itself (float32, on the device with capturable=True): then the key is a 0-dim int64 tensor
    computed where the step lives, without reading it on the host."""
    if isinstance(step, Tensor):
        step = step.to(torch.int64)
    return mix32(mix32(mix32(seed) ^ (step & MASK32)) ^ stream)


def _mix32_(x: Tensor) -> Tensor:
    """mix32 in place on an int64 tensor already in [0, 2**32): the bulk of a step's random numbers, where every
    temporary of the out-of-place version would cost a full-size allocation."""
    x ^= x >> 16
    x.mul_(0x21F0AAAD).bitwise_and_(MASK32)
    x ^= x >> 15
    x.mul_(0x735A2D97).bitwise_and_(MASK32)
    x ^= x >> 15
    return x


def element_indices(numel: int, device: torch.device, first_index: int = 0) -> Tensor:
    """The indices first_index .. first_index + numel - 1 (int64): a tensor's elements, numbered from where it
    starts in a larger tensor it is a shard of."""
    return torch.arange(first_index, first_index + numel, device=device, dtype=torch.int64)


def uniform(numel: int, key: Union[int, Tensor], device: torch.device, first_index: int = 0) -> Tensor:
    """`numel` float32 numbers in [0, 1), multiples of 2**-24, one per element index (from `first_index`), for a
    tensor's key."""
    return uniform_at(element_indices(numel, device, first_index), key, first_index + numel)


def uniform_at(index: Tensor, key: Union[int, Tensor], index_bound: int) -> Tensor:
    """The numbers `uniform` gives at the element indices `index` (int64, any shape, all below `index_bound`;
    consumed): a shard of a sharded tensor draws what the whole tensor would at its elements."""
    if index_bound > 1 << 32:  # the index's high word enters the second round
        second = (second_key(key) + (index >> 32)) & MASK32
        index &= MASK32
    else:  # one value (or 0-dim tensor) for the whole tensor
        second = second_key(key)
    return hashed_uniform_(index, key, second)


def second_key(key: Union[int, Tensor]) -> Union[int, Tensor]:
    """The key of the hash's second round for indices below 2**32 (of any key tensor, elementwise)."""
    return mix32(key ^ _SECOND_KEY)


def hashed_uniform_(index: Tensor, key: Union[int, Tensor], second: Union[int, Tensor]) -> Tensor:
    """The uniforms of element indices below 2**32 (`index`, int64, consumed) with keys `key` and second-round keys
    `second` (numbers, or tensors broadcast against `index`: several tensors' elements drawn in one pass)."""
    h = index
    h ^= key
    _mix32_(h)
    h ^= second
    _mix32_(h)
    return (h >> 8).to(torch.float32).mul_(2.0**-24)
