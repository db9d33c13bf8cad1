"""The check every fake (meta) implementation of an sgdf_erd op starts with.

torch also runs an op's fake as its Meta kernel, which the dispatcher picks when *any* input is a meta tensor: a
real call with one input on ``meta`` lands in the fake and must raise, as the CPU and CUDA kernels do for mixed
devices, instead of returning uninitialised memory. All-meta inputs and fake tensors on one device pass.
"""

from typing import Iterable, Optional, Tuple, Type

from torch import Tensor


def check_one_device(op: str, named_tensors: Iterable[Tuple[str, Optional[Tensor]]],
                     error: Type[Exception] = ValueError) -> None:
    """Raise `error` naming the first tensor not on the device of the first one; `named_tensors` are (argument
    name, tensor or None for an absent optional) in argument order."""
    reference_name, reference = None, None
    for name, t in named_tensors:
        if t is None:
            continue
        if reference is None:
            reference_name, reference = name, t
        elif t.device != reference.device:
            raise error(f"sgdf_erd::{op}: '{name}' is on {t.device} but '{reference_name}' is on "
                        f"{reference.device}; move them to one device (every input of the call; only all-meta inputs "
                        "trace shapes without data)")
