"""The CPU backward of the recurrence, block by block (schedule.time_blocks).

The NumPy kernels' backward runs on each block of about sqrt(T) steps in turn, last block
first, as if the block were a sequence of its own: its initial state is the state the forward
reached before it, the gradient flowing in at its end is what the later block sent back, and
its weight gradients are reduced over its own rows. The blocks' weight gradients are then summed
in that order.

Why: gradient checkpointing (checkpoint.py) can only ever run the backward one recomputed block
at a time. When the stored-activation path runs the same arithmetic on the same blocks, the two
agree bit for bit, weight gradients included, instead of to rounding. The price on this path is
one small kernel call per block and a [B, P] + [B, H] state copy per block boundary.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from torch_lstm_ext import schedule
from torch_lstm_ext.schedule import Block

# kernel(grad_y, grad_hn, grad_cn, h0, c0, batch_sizes, y, gates, cells, row_slice, d_gates_out)
#   -> (d_gates, d_h0, d_c0, weight_grads): the backward of one sequence (or block), with the
#   per-row variant inputs taken at `row_slice`, d_gates written into d_gates_out (None: a new
#   array); weight_grads is a tuple of arrays or None.
BlockKernel = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray | None, ...]]]


def _block_starts(blocks: list[Block], batch_sizes: np.ndarray | None, reverse: bool, y: np.ndarray,
                  cells: np.ndarray, h0: np.ndarray, c0: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(h, c) [B, P], [B, H] before each block (processing order), as the forward left them: each
    batch row's state after its last step in an earlier block, or its initial state."""
    h, c = h0.copy(), c0.copy()
    starts = []
    for block in blocks:
        starts.append((h.copy(), c.copy()))
        sizes = None if batch_sizes is None else tuple(int(n) for n in batch_sizes[block.t0 : block.t1])
        for row, b0, b1 in schedule.block_final_rows(sizes, block.hi - block.lo, h0.shape[0], reverse):
            h[b0:b1] = y[block.lo + row : block.lo + row + b1 - b0]
            c[b0:b1] = cells[block.lo + row : block.lo + row + b1 - b0]
    return starts


def blockwise_backward(
    kernel: BlockKernel,
    grad_y: np.ndarray,
    grad_hn: np.ndarray,
    grad_cn: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    batch_sizes: np.ndarray | None,
    reverse: bool,
    y: np.ndarray,
    gates: np.ndarray,
    cells: np.ndarray,
    block_steps: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray | None, ...]]:
    """`kernel`'s backward over the whole sequence, run block by block.

    Shapes as in reference.lstm_backward: grad_y [N, P], grad_hn [B, P], grad_cn [B, H],
    y [N, P], gates [N, 4H], cells [N, H]. Returns (d_gates [N, 4H], d_h0, d_c0, weight_grads).
    """
    N, B = gates.shape[0], h0.shape[0]
    blocks = schedule.time_blocks(batch_sizes, N, B, reverse, block_steps)
    if len(blocks) == 1:
        return kernel(grad_y, grad_hn, grad_cn, h0, c0, batch_sizes, y, gates, cells, slice(0, N), None)
    starts = _block_starts(blocks, batch_sizes, reverse, y, cells, h0, c0)
    d_gates = np.empty_like(gates)
    dh, dc = grad_hn, grad_cn
    totals: tuple[np.ndarray | None, ...] | None = None
    for block, (h_start, c_start) in zip(reversed(blocks), reversed(starts)):
        rows = slice(block.lo, block.hi)
        sizes = None if batch_sizes is None else batch_sizes[block.t0 : block.t1]
        _, dh, dc, grads = kernel(grad_y[rows], dh, dc, h_start, c_start, sizes, y[rows], gates[rows],
                                  cells[rows], rows, d_gates[rows])
        totals = grads if totals is None else tuple(
            None if total is None else total + grad for total, grad in zip(totals, grads, strict=True)
        )
    return d_gates, dh, dc, totals
