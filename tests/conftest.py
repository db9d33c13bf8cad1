"""Shared fixtures: the `device` fixture runs a test on every available device (see tests/devices.py). Every CUDA
test is marked `cuda` (`pytest -m cuda`: the GPU run of scripts/gpu_check.sh; `-m "not cuda"`: the CPU ones)."""

import pytest
import torch

from tests.devices import DEVICES, runs_cuda_kernels


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the markers
def pytest_collection_modifyitems(items):
    for item in items:
        if runs_cuda_kernels(item):
            item.add_marker(pytest.mark.cuda)
