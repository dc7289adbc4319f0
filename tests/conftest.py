"""Every test starts from the same torch RNG state, so results (and CI) are reproducible."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
