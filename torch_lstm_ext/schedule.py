"""Which rows of a time-major (possibly packed) sequence each recurrence step reads and writes."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Step(NamedTuple):
    """One time step in processing order.

    offset / n: the step's rows [offset, offset + n) of the time-major input; its active
    sequences are batch rows 0..n-1. prev_offset / prev_n: the same for the step processed just
    before it (prev_offset = -1 for the first step, whose previous state is h0 / c0).
    """

    offset: int
    n: int
    prev_offset: int
    prev_n: int


def step_schedule(
    batch_sizes: np.ndarray | None, num_rows: int, batch: int, reverse: bool
) -> list[Step]:
    """Steps in the order the forward runs them (reverse it for the backward).

    batch_sizes: int64 [T] (PackedSequence) or None, meaning num_rows // batch steps of `batch`.
    """
    if batch_sizes is None:
        sizes = [batch] * (num_rows // batch if batch else 0)
    else:
        sizes = [int(s) for s in batch_sizes]
    offsets = np.concatenate(([0], np.cumsum(sizes[:-1], dtype=np.int64))).tolist() if sizes else []
    order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    steps = []
    prev_offset, prev_n = -1, 0
    for t in order:
        steps.append(Step(int(offsets[t]), sizes[t], prev_offset, prev_n))
        prev_offset, prev_n = int(offsets[t]), sizes[t]
    return steps
