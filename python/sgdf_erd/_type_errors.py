"""TypeError for a compiled kernel's wrong-type argument.

Kernels built on the LibTorch stable ABI can raise only standard C++ exceptions, and of those
``std::invalid_argument`` reaches Python as ValueError while none reaches it as TypeError. So a kernel reports a
wrong dtype (a TypeError in torch's convention) as ``std::invalid_argument`` whose message starts with
``"TypeError: "``, and the operator calls below re-raise it as the TypeError it is.
"""

from typing import Callable

import torch

__all__ = ["PREFIX", "raising_type_errors"]

PREFIX = "TypeError: "


def raising_type_errors(op: Callable) -> Callable:
    """``op`` whose marked ValueErrors are raised as TypeError (message without the marker)."""

    def call(*args, **kwargs):
        if torch.compiler.is_compiling():  # traced, not run: nothing to translate
            return op(*args, **kwargs)
        try:
            return op(*args, **kwargs)
        except ValueError as exc:
            message = str(exc)
            if message.startswith(PREFIX):
                raise TypeError(message[len(PREFIX):]) from None
            raise

    call.__name__ = getattr(op, "__name__", "op")
    call.__doc__ = getattr(op, "__doc__", None)
    return call
