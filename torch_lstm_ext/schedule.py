"""Which rows of a time-major (possibly packed) sequence each recurrence step reads and writes.

Step t owns rows [offsets[t], offsets[t] + sizes[t]) of the time-major input; its active
sequences are batch rows 0..sizes[t]-1 (PackedSequence sorts sequences by decreasing length).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple


class Step(NamedTuple):
    """One step in processing order: time index t with n active rows, and the step before it
    (prev_t = -1 for the first step, whose previous state is h0 / c0)."""

    t: int
    n: int
    prev_t: int
    prev_n: int


class Walk(NamedTuple):
    """sizes / offsets: rows and first row of each time step (time order); steps: processing order;
    uniform: every step has all B rows (not packed)."""

    sizes: list[int]
    offsets: list[int]
    steps: list[Step]
    uniform: bool


def walk(packed_sizes: tuple[int, ...] | None, num_rows: int, batch: int, reverse: bool) -> Walk:
    """The steps of a sequence in processing order (reverse it for the backward).

    packed_sizes: the PackedSequence's batch sizes, or None for num_rows // batch full steps.
    """
    if packed_sizes is None:
        steps = num_rows // batch if batch else 0
        sizes, offsets = [batch] * steps, list(range(0, steps * batch, batch))
    else:
        sizes = list(packed_sizes)
        offsets = [0, *itertools.accumulate(sizes[:-1])] if sizes else []
    order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    steps = []
    prev_t, prev_n = -1, 0
    for t in order:
        steps.append(Step(t, sizes[t], prev_t, prev_n))
        prev_t, prev_n = t, sizes[t]
    return Walk(sizes, offsets, steps, packed_sizes is None)


def walk_batch_sizes(batch_sizes, num_rows: int, batch: int, reverse: bool) -> Walk:
    """walk() for batch sizes given as a NumPy array, a CPU tensor or None."""
    packed = None if batch_sizes is None else tuple(int(s) for s in batch_sizes.tolist())
    return walk(packed, num_rows, batch, reverse)


def step_rows(w: Walk, step: Step) -> slice:
    """The rows of the time-major input that `step` owns."""
    start = w.offsets[step.t]
    return slice(start, start + step.n)


class RowStep(NamedTuple):
    """A step in row terms, for launchers that take row offsets: the step's rows
    [offset, offset + n) and its previous step's first row (-1 before the first step)."""

    offset: int
    n: int
    prev_offset: int
    prev_n: int


def step_schedule(batch_sizes, num_rows: int, batch: int, reverse: bool) -> list[RowStep]:
    """walk_batch_sizes() as row offsets, in processing order."""
    w = walk_batch_sizes(batch_sizes, num_rows, batch, reverse)
    return [
        RowStep(w.offsets[s.t], s.n, w.offsets[s.prev_t] if s.prev_t >= 0 else -1, s.prev_n)
        for s in w.steps
    ]
