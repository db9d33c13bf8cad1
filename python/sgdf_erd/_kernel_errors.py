"""The Python exception types of the compiled kernels' errors, the same on every supported torch.

Only the message of an exception thrown by a kernel built on the LibTorch stable ABI reliably reaches Python: torch
up to 2.14 maps a few C++ types to Python ones (``std::invalid_argument`` to ValueError), torch 2.15 raises
RuntimeError for every one (its shim keeps only ``what()``), and none arrives as TypeError. So a kernel check that means ValueError or TypeError starts its
message with that type's name (:data:`MARKERS`; csrc/common/stable.h), and every operator call sgdf_erd makes goes
through :func:`raising_marked_types`, which raises that type with the marker removed.

A direct ``torch.ops.sgdf_erd`` call, and an op run inside a torch.compile'd graph, raise as torch does: the message
keeps its marker ("ValueError: sgdf_erd::...") and the type is ValueError up to torch 2.14, RuntimeError from 2.15.
"""

from typing import Callable, Optional

import torch

__all__ = ["MARKERS", "marked_type_error", "raising_marked_types"]

# message prefix -> the Python exception the kernel means
MARKERS = {"ValueError: ": ValueError, "TypeError: ": TypeError}


def marked_type_error(exc: BaseException) -> Optional[Exception]:
    """The exception a kernel's error ``exc`` stands for (its marker's type, message without the marker), or None
    where its message carries no marker."""
    message = str(exc)
    for marker, error in MARKERS.items():
        if message.startswith(marker):
            return error(message[len(marker):])
    return None


def raising_marked_types(op: Callable) -> Callable:
    """``op`` whose errors carrying a marker are raised as the type the marker names."""

    def call(*args, **kwargs):
        if torch.compiler.is_compiling():  # traced, not run: nothing to translate
            return op(*args, **kwargs)
        try:
            return op(*args, **kwargs)
        except (ValueError, RuntimeError) as exc:  # ValueError up to torch 2.14, RuntimeError from 2.15
            error = marked_type_error(exc)
            if error is None:
                raise
            raise error from None

    call.__name__ = getattr(op, "__name__", "op")
    call.__doc__ = getattr(op, "__doc__", None)
    return call
