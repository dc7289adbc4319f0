"""Which rows of a time-major (possibly packed) sequence each recurrence step reads and writes.

Step t owns rows [offsets[t], offsets[t] + sizes[t]) of the time-major input; its active
sequences are batch rows 0..sizes[t]-1 (PackedSequence sorts sequences by decreasing length).
"""

from __future__ import annotations

import functools
import itertools
import math
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
        # An empty batch has no rows to step through: zero steps give its (empty) results.
        steps = num_rows // batch if batch else 0
        sizes, offsets = [batch] * steps, [t * batch for t in range(steps)]
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


def as_rows(t):
    """A time-major [T, B, F] or packed [N, F] tensor (or array) as its rows [N, F], a view."""
    # N spelled out: reshape(-1, 0) is ambiguous, and F is 0 in an LSTMCell(hidden_size=0).
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


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


def final_rows(w: Walk) -> list[tuple[int, int, int]]:
    """(t, b0, b1): batch rows b0..b1-1 take their final state at time step t."""
    ends = []
    for k, step in enumerate(w.steps):
        n_next = w.steps[k + 1].n if k + 1 < len(w.steps) else 0
        if n_next < step.n:
            ends.append((step.t, n_next, step.n))
    return ends


class Block(NamedTuple):
    """Time steps [t0, t1) of a sequence and the rows [lo, hi) of the time-major input (or of
    the packed data) they own."""

    t0: int
    t1: int
    lo: int
    hi: int


# A block holds at least this many rows, so that checkpointing's per-block calls (a projection
# GEMM, the forward and backward kernels) stay few and large: a checkpointed training step at
# T = 500, B = 8, H = 128 took 74 ms with 32-row blocks, 64 ms with these and 65 ms in one block.
# 1024 rows is still a small slice to recompute.
MIN_BLOCK_ROWS = 1024


def time_blocks(batch_sizes, num_rows: int, batch: int, reverse: bool) -> list[Block]:
    """The blocks that checkpointing recomputes, in processing order (its backward takes them
    last to first).

    A block ends at the first step where it has at least sqrt(T) steps (checkpointing then keeps
    about sqrt(T) boundary states and recomputes sqrt(T) steps at a time, the classic memory
    optimum) and MIN_BLOCK_ROWS rows; a shorter tail joins the last block. The rows are read at
    call time, so tests may lower MIN_BLOCK_ROWS to get many blocks from short inputs.
    """
    packed = None if batch_sizes is None else tuple(int(s) for s in batch_sizes.tolist())
    return list(_time_blocks(packed, num_rows, batch, reverse, MIN_BLOCK_ROWS))


@functools.lru_cache(maxsize=256)
def _time_blocks(packed: tuple[int, ...] | None, num_rows: int, batch: int, reverse: bool,
                 min_rows: int) -> tuple[Block, ...]:
    """time_blocks, cached: a training loop asks for the same shapes at every step."""
    w = walk(packed, num_rows, batch, False)
    num_steps = len(w.sizes)
    length = max(1, math.isqrt(num_steps))
    bounds: list[tuple[int, int]] = []
    t0, rows = 0, 0
    for t, n in enumerate(w.sizes):
        rows += n
        if t + 1 - t0 >= length and rows >= min_rows:
            bounds.append((t0, t + 1))
            t0, rows = t + 1, 0
    if t0 < num_steps or not bounds:
        bounds = bounds[:-1] + [(bounds[-1][0] if bounds else 0, num_steps)]
    ends = [*w.offsets, num_rows]
    blocks = tuple(Block(t0, t1, ends[t0], ends[t1]) for t0, t1 in bounds)
    return blocks[::-1] if reverse else blocks
