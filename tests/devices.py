"""Which devices the tests run on, in one place.

Every test that takes a ``device`` runs on the CPU and, where a GPU *and* a CUDA build of sgdf_erd are present, on
CUDA too; elsewhere the CUDA case is skipped with a reason. ``SGDF_ERD_REQUIRE_CUDA=1`` (set by
scripts/gpu_check.sh) turns that skip into a failure, so a GPU run cannot pass by skipping.
"""

import os

import pytest
import torch

import sgdf_erd

HAS_GPU = torch.cuda.is_available()
CUDA_BUILD = bool(sgdf_erd.build_info()["cuda"])
CUDA_READY = HAS_GPU and CUDA_BUILD
REQUIRE_CUDA = os.environ.get("SGDF_ERD_REQUIRE_CUDA") == "1"

if REQUIRE_CUDA and not CUDA_READY:
    raise RuntimeError(f"SGDF_ERD_REQUIRE_CUDA=1 but CUDA tests cannot run here (GPU present: {HAS_GPU}, sgdf_erd "
                       f"built with CUDA kernels: {CUDA_BUILD}); build with SGDF_ERD_CUDA=1 on a GPU machine")

_REASON = ("needs an NVIDIA GPU and a CUDA build of sgdf_erd "
           f"(GPU present: {HAS_GPU}, CUDA kernels compiled: {CUDA_BUILD})")

# The one marker for "needs a GPU and a CUDA build".
requires_cuda = pytest.mark.skipif(not CUDA_READY, reason=_REASON)
# Two GPUs, for params on two devices in one optimizer.
_TWO_GPUS_REASON = "needs two NVIDIA GPUs and a CUDA build of sgdf_erd"
requires_two_gpus = pytest.mark.skipif(not (CUDA_READY and torch.cuda.device_count() >= 2), reason=_TWO_GPUS_REASON)


def runs_cuda_kernels(item) -> bool:
    """Whether a collected test is a CUDA test: it carries requires_cuda or requires_two_gpus (directly, or through
    the "cuda" case of DEVICES). tests/conftest.py marks those `cuda`, so `pytest -m cuda` selects them."""
    return any(mark.kwargs.get("reason") in (_REASON, _TWO_GPUS_REASON) for mark in item.iter_markers("skipif"))


# Parametrize over these (or take the `device` fixture from tests/conftest.py).
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
