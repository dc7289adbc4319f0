"""Shared fixtures: a fixed torch RNG state for every test (reproducible results and CI), and
small time blocks on request."""

import pytest
import torch

from torch_lstm_ext import schedule


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 32 rows instead of schedule.MIN_BLOCK_ROWS, so that sequences short enough for
    gradcheck and float64 comparisons still run the CPU backward and checkpointing in several
    blocks (the block boundaries are what those tests are about)."""
    monkeypatch.setattr(schedule, "MIN_BLOCK_ROWS", 32)
    return 32
