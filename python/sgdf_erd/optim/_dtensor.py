"""DTensor parameters (FSDP2's ``fully_shard``, tensor parallelism) on the fused path.

The fused kernel is elementwise, so it runs on each rank's local shards; Newton-Schulz orthogonalisation is not, so
a sharded update is gathered, orthogonalised whole (every rank the same) and each rank keeps its own shard.
"""

import functools
import sys
from typing import List, Optional, Tuple, Type

import torch
from torch import Tensor

from .newton_schulz import orthogonalize


def dtensor_type() -> Optional[Type[Tensor]]:
    # A DTensor can exist only once torch.distributed.tensor is imported; importing it here would slow every
    # `import sgdf_erd` by most of a second.
    module = sys.modules.get("torch.distributed.tensor")
    return module.DTensor if module is not None else None


def is_dtensor(t: Tensor) -> bool:
    dtensor = dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


def local_shard(t: Tensor, like: Tensor) -> Tensor:
    """The part of DTensor `t` held on this rank, laid out as `like`'s shard (a gradient may be placed otherwise
    than its parameter); the same tensor memory where the placements agree, so in-place updates reach `t`."""
    return placed_as(t, like).to_local()


def placed_as(t: Tensor, like: Tensor) -> Tensor:
    """`t`, a DTensor computed from DTensor `like` (or a plain tensor), placed as `like`: DTensor's matmuls may leave
    a result of a sharded matrix replicated, which an in-place update of the sharded parameter refuses."""
    if is_dtensor(t) and tuple(t.placements) != tuple(like.placements):
        return t.redistribute(like.device_mesh, like.placements)
    return t


def local_shards(params: List[Tensor], grads: List[Tensor],
                 states: List[List[Tensor]]) -> Optional[Tuple[List[Tensor], List[Tensor], List[List[Tensor]]]]:
    """This rank's shards of DTensor `params`, of their gradients and of each list of their state tensors, for the
    fused kernel; None unless every one is a DTensor on its parameter's mesh with its placements and (global)
    shape: the Python checks then refuse the others, or the functional path redistributes a gradient placed
    otherwise. (A shard's shape alone could fit on some ranks only.)"""
    dtensor = dtensor_type()
    shards = []
    for tensors in (params, grads, *states):
        if not all(isinstance(t, dtensor) and t.device_mesh is p.device_mesh and t.placements == p.placements
                   and t.shape == p.shape for t, p in zip(tensors, params)):
            return None
        shards.append([t.to_local() for t in tensors])
    return shards[0], shards[1], shards[2:]


def _shard_shape_and_offsets(t: Tensor) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """This rank's shard of DTensor `t`: its shape and where it starts in the whole tensor, per dimension."""
    return _local_shape_and_offsets(t.shape, t.device_mesh, tuple(t.placements))


@functools.lru_cache(maxsize=65536)
def _local_shape_and_offsets(shape, mesh, placements) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    # Kept per layout: the paths ask at every step for every sharded parameter, and torch computes it in Python
    # (~20 us). This rank's coordinate in the mesh is fixed, so the answer is too.
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local_shape, offsets = compute_local_shape_and_global_offset(shape, mesh, placements)
    return tuple(local_shape), tuple(offsets)


def global_element_index(t: Tensor) -> Tuple[Tensor, int]:
    """For each element of this rank's shard of DTensor `t` (in the shard's shape), its position in the memory
    order of the whole tensor (its global strides), and a bound on those positions: the numbering a stochastic
    rounding of the whole tensor uses, so a sharded step draws the numbers an unsharded one would."""
    local = t.to_local()
    _, offsets = _shard_shape_and_offsets(t)
    index = torch.zeros(local.shape, dtype=torch.int64, device=local.device)
    for dim, (size, offset, stride) in enumerate(zip(local.shape, offsets, t.stride())):
        positions = torch.arange(offset, offset + size, dtype=torch.int64, device=local.device) * stride
        index += positions.view([-1 if d == dim else 1 for d in range(local.dim())])
    return index, 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))


def shard_first_index(t: Tensor) -> Optional[int]:
    """The position in the whole tensor's memory order of the first element of this rank's shard of DTensor `t`,
    where the shard's elements are consecutive there (a contiguous tensor cut along dimension 0 only, as FSDP2
    shards), else None."""
    if not t.is_contiguous() or not t.to_local().is_contiguous():
        return None
    if t.dim() == 0:
        return 0
    local_shape, offsets = _shard_shape_and_offsets(t)
    if local_shape[1:] != tuple(t.shape[1:]):
        return None
    return offsets[0] * t.stride(0)


def orthogonalize_shard(update: Tensor, like: Tensor, ns_steps: int) -> Tensor:
    """Orthogonalise the matrix whose local shard is `update` (placed as DTensor `like`); returns this rank's
    shard of the result."""
    from torch.distributed.tensor import DTensor, Replicate

    mesh = like.device_mesh
    full = DTensor.from_local(update, mesh, like.placements, shape=like.shape, stride=like.stride()).full_tensor()
    whole = DTensor.from_local(orthogonalize(full, ns_steps), mesh, [Replicate()] * mesh.ndim, run_check=False)
    return whole.redistribute(mesh, like.placements).to_local()
