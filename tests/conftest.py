"""Shared fixtures: the `device` fixture runs a test on every available device (see tests/devices.py)."""

import pytest
import torch

from tests.devices import DEVICES


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)
