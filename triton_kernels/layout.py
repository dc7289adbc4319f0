"""Host-side index math of a time-major, possibly packed sequence (no kernel reads an address).

Rows are time-major; step t owns rows [offset_t, offset_t + n_t) and its active sequences are
batch rows 0..n_t-1 (PackedSequence sorts by decreasing length, so n_t never grows with t).
Everything here is computed with NumPy on the CPU, where batch_sizes lives; device_index keeps
the device copies of the indexes the kernels' callers need.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from torch_lstm_ext.schedule import RowStep, step_schedule


@dataclass(frozen=True)
class Layout:
    """sizes: n_t int64 [T]. batch: B. reverse: the direction the forward runs in."""

    sizes: np.ndarray
    batch: int
    reverse: bool

    @classmethod
    def of(cls, batch_sizes: Tensor | None, num_rows: int, batch: int, reverse: bool) -> Layout:
        if batch_sizes is None:
            steps = num_rows // batch if batch else 0
            sizes = np.full(steps, batch, dtype=np.int64)
        else:
            sizes = batch_sizes.detach().cpu().numpy().astype(np.int64)
        return cls(sizes, batch, reverse)

    @property
    def num_rows(self) -> int:
        return int(self.sizes.sum())

    @property
    def active(self) -> int:
        """Sequences active at some step: batch rows 0..active-1."""
        return int(self.sizes.max()) if len(self.sizes) else 0

    def steps(self) -> list[RowStep]:
        """The forward's processing order (see schedule.step_schedule)."""
        return step_schedule(self.sizes, self.num_rows, self.batch, self.reverse)

    def lengths(self) -> np.ndarray:
        """Steps each batch row is active in: int64 [B]."""
        return (self.sizes[:, None] > np.arange(self.batch)[None, :]).sum(axis=0)

    def _offsets(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.sizes)[:-1])).astype(np.int64)

    def _coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(t, b) of every row: two int64 [N]."""
        t = np.repeat(np.arange(len(self.sizes)), self.sizes)
        return t, np.arange(self.num_rows) - self._offsets()[t]

    def end_rows(self, last: bool) -> np.ndarray:
        """Row of each active sequence's last (`last`) or first processed step: int64 [active]."""
        lengths = self.lengths()[: self.active]
        ends_late = last != self.reverse
        t = lengths - 1 if ends_late else np.zeros_like(lengths)
        return self._offsets()[t] + np.arange(self.active)

    def previous_rows(self) -> np.ndarray:
        """For every row, its previous state's row in cat([y, h0]): int64 [N] (N + b means h0[b])."""
        t, b = self._coords()
        offsets = self._offsets()
        if self.reverse:
            t_prev = np.minimum(t + 1, len(self.sizes) - 1)
            has_prev = (t + 1 < len(self.sizes)) & (self.sizes[t_prev] > b)
        else:
            t_prev = np.maximum(t - 1, 0)
            has_prev = t > 0
        return np.where(has_prev, offsets[t_prev] + b, self.num_rows + b)

    def padded_rows(self) -> np.ndarray:
        """For every row, its row t * B + b in the padded [T * B] layout: int64 [N]."""
        t, b = self._coords()
        return t * self.batch + b


# What device_index can return: Layout methods without arguments, by name, and the end rows.
_INDEXES = {
    "previous_rows": lambda layout: layout.previous_rows(),
    "padded_rows": lambda layout: layout.padded_rows(),
    "first_rows": lambda layout: layout.end_rows(last=False),
    "last_rows": lambda layout: layout.end_rows(last=True),
    "lengths": lambda layout: layout.lengths().astype(np.int32),
}


def device_index(layout: Layout, which: str, device: torch.device) -> Tensor:
    """One of the layout's index arrays (_INDEXES) as a tensor on `device`; read-only.

    Cached per layout and device: a blocking host-to-device copy synchronises the stream, and
    the recurrence asks for the same few indexes at every training step (and, checkpointed, in
    every block), so only the first call of a shape copies.
    """
    return _device_index(layout.sizes.tobytes(), layout.batch, layout.reverse, which, device)


@functools.lru_cache(maxsize=256)
def _device_index(sizes: bytes, batch: int, reverse: bool, which: str, device: torch.device) -> Tensor:
    layout = Layout(np.frombuffer(sizes, dtype=np.int64), batch, reverse)
    return torch.from_numpy(np.ascontiguousarray(_INDEXES[which](layout))).to(device)
