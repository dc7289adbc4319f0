"""schedule.time_blocks: the blocks checkpointing recomputes."""

from __future__ import annotations

import pytest
import torch

from torch_lstm_ext import schedule
from torch_lstm_ext.schedule import time_blocks

CASES = {
    "long-padded": (None, 1024 * 32, 32),
    "odd-padded": (None, 70 * 2, 2),
    "short": (None, 5 * 3, 3),
    "packed": (torch.tensor([6] * 40 + [4] * 30 + [1] * 90), 40 * 6 + 30 * 4 + 90, 6),
    "empty": (None, 0, 4),
}


@pytest.fixture(params=["shipped", "small"])
def min_rows(request, monkeypatch):
    """Test both the shipped minimum block rows and the small one the other tests use."""
    if request.param == "small":
        monkeypatch.setattr(schedule, "MIN_BLOCK_ROWS", 32)
    return schedule.MIN_BLOCK_ROWS


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_blocks_tile_the_sequence_and_are_long_enough(name, reverse, min_rows):
    batch_sizes, num_rows, batch = CASES[name]
    sizes = [batch] * (num_rows // batch) if batch_sizes is None else batch_sizes.tolist()
    blocks = time_blocks(batch_sizes, num_rows, batch, reverse)
    in_time_order = blocks[::-1] if reverse else blocks
    assert in_time_order[0].t0 == 0 and in_time_order[-1].t1 == len(sizes)
    assert in_time_order[0].lo == 0 and in_time_order[-1].hi == num_rows
    for before, after in zip(in_time_order, in_time_order[1:]):
        assert (before.t1, before.hi) == (after.t0, after.lo)
    for block in in_time_order:
        assert block.hi - block.lo == sum(sizes[block.t0 : block.t1])
    if len(blocks) > 1:
        length = max(1, int(len(sizes) ** 0.5))
        assert all(b.t1 - b.t0 >= length and b.hi - b.lo >= min_rows for b in blocks)


def test_long_padded_sequence_gets_sqrt_t_blocks():
    blocks = time_blocks(None, 1024 * 32, 32, False)
    assert [b.t1 - b.t0 for b in blocks] == [32] * 32
