"""How the NumPy kernels (plain.py, variants.py) walk a sequence: the per-call plan and views.

Both kernels use the same layout (plain.py's docstring): step t owns rows
[offset_t, offset_t + n_t) of the time-major arrays, its active sequences are batch rows
0..n_t-1, and a step reads its previous state straight from the previous step's rows of the
history (`y` / `cells`) or from h0 / c0, as views, so the state is never copied per step. This
module holds what that takes: the cached plan of a call (its walk, the chunks of steps plain.py's
bulk passes use, where each row's previous state comes from, where each sequence ends), the
per-step views, the previous-state views, the final states, and for the backward where dh
flows to and d W_hh read through the previous-state pieces. The view helpers (previous_views,
previous_sources, flows) only slice, so they take NumPy arrays and torch tensors alike.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

from torch_lstm_ext import schedule
from torch_lstm_ext.schedule import Step, Walk

# Bulk passes work on chunks of about this many bytes of gates, so the per-step loop that
# follows finds them in L2 cache.
_CHUNK_BYTES = 1 << 20

# (row, source_row, length, from_initial): rows [row, row + length) read their previous state
# from rows [source_row, source_row + length) of the history, or of h0 / c0 when from_initial.
Piece = tuple[int, int, int, bool]


def views(a: np.ndarray, walk: Walk) -> list[np.ndarray]:
    """Per time step (time order) views of the rows of `a` (any trailing shape)."""
    if walk.uniform and walk.sizes:
        return list(a.reshape(len(walk.sizes), walk.sizes[0], *a.shape[1:]))
    return [a[o : o + n] for o, n in zip(walk.offsets, walk.sizes)]


def torch_views(a: np.ndarray, walk: Walk) -> tuple[torch.Tensor, ...]:
    """Per time step zero-copy torch views of the rows of `a` (one C++ call, not T slices)."""
    return torch.from_numpy(a).split_with_sizes(walk.sizes)


def ordered(items, reverse: bool):
    """Per-time-step items in processing order."""
    return items[::-1] if reverse else items


def _chunks(walk: Walk, row_bytes: int) -> list[tuple[int, int, int, int]]:
    """Runs of consecutive steps (k0, k1 in processing order) covering rows [r0, r1)."""
    limit = max(1, _CHUNK_BYTES // max(row_bytes, 1))
    chunks = []
    k0, rows = 0, 0
    for k, step in enumerate(walk.steps):
        rows += step.n
        if rows >= limit or k == len(walk.steps) - 1:
            times = (walk.steps[k0].t, step.t)
            first, last = min(times), max(times)
            chunks.append((k0, k + 1, walk.offsets[first], walk.offsets[last] + walk.sizes[last]))
            k0, rows = k + 1, 0
    return chunks


def _previous_pieces(walk: Walk, steps: range) -> list[Piece]:
    """Where each row of `steps` reads its previous state, as Pieces sorted by row.

    Adjacent pieces are merged, so an unpacked sequence needs two pieces however long it is.
    """
    pieces = []
    for k in steps:
        t, n, prev_t, prev_n = walk.steps[k]
        row = walk.offsets[t]
        if prev_t < 0:
            pieces.append((row, 0, n, True))
        elif prev_n >= n:
            pieces.append((row, walk.offsets[prev_t], n, False))
        else:
            pieces.append((row, walk.offsets[prev_t], prev_n, False))
            pieces.append((row + prev_n, prev_n, n - prev_n, True))
    pieces.sort()
    merged: list[Piece] = []
    for row, src, length, initial in pieces:
        if merged:
            last_row, last_src, last_len, last_initial = merged[-1]
            if (last_initial == initial and last_row + last_len == row
                    and last_src + last_len == src):
                merged[-1] = (last_row, last_src, last_len + length, initial)
                continue
        merged.append((row, src, length, initial))
    return merged


class Plan(NamedTuple):
    """Everything about a call that depends only on the shapes: the walk, its chunks of steps
    (k0, k1, r0, r1) with the previous-state pieces of each, the pieces of the whole sequence,
    and where states end (schedule.final_rows)."""

    walk: Walk
    chunks: list[tuple[int, int, int, int]]
    chunk_pieces: list[list[Piece]]
    pieces: list[Piece]
    final_rows: list[tuple[int, int, int]]


@functools.lru_cache(maxsize=128)
def _cached_plan(packed_sizes: tuple[int, ...] | None, num_rows: int, batch: int, reverse: bool,
                 row_bytes: int) -> Plan:
    walk = schedule.walk(packed_sizes, num_rows, batch, reverse)
    chunks = _chunks(walk, row_bytes)
    return Plan(walk, chunks, [_previous_pieces(walk, range(k0, k1)) for k0, k1, _, _ in chunks],
                _previous_pieces(walk, range(len(walk.steps))), schedule.final_rows(walk))


def plan(batch_sizes: np.ndarray | None, num_rows: int, batch: int, reverse: bool, row_bytes: int) -> Plan:
    """The (cached: a training loop repeats its shapes) plan of one call; treat it as read-only.
    row_bytes (bytes of one row of gates) sizes the chunks."""
    packed = None if batch_sizes is None else tuple(batch_sizes.tolist())
    return _cached_plan(packed, num_rows, batch, reverse, row_bytes)


def previous_views(walk: Walk, history, initial) -> list:
    """Per step in processing order, the rows its previous state (of one kind: h or c) comes from:
    a view of the previous step's rows of `history` (per-time-step views, NumPy or torch) or of
    `initial` (h0 / c0). None where some rows continue and some start (the reverse direction of
    a packed batch): `gather` builds those, once the previous step has run."""
    out = []
    B = initial.shape[0]
    for _, n, prev_t, prev_n in walk.steps:
        if prev_t < 0:
            out.append(initial if n == B else initial[:n])
        elif prev_n >= n:
            out.append(history[prev_t] if prev_n == n else history[prev_t][:n])
        else:
            out.append(None)
    return out


def previous_states(walk: Walk, h_hist, c_hist, h0, c0) -> tuple[list, list]:
    """previous_views of h (history h_hist, initial h0) and of c (c_hist, c0)."""
    return previous_views(walk, h_hist, h0), previous_views(walk, c_hist, c0)


def gather(step: Step, history: list, initial: np.ndarray) -> np.ndarray:
    """The previous state [n, F] (a fresh NumPy array) of a step whose rows prev_n..n-1 start from
    `initial` (a None entry of previous_views); history: NumPy per-time-step views."""
    _, n, prev_t, prev_n = step
    return np.concatenate((history[prev_t], initial[prev_n:n]))


def gather_previous(step: Step, h_hist: list, c_hist: list, h0: np.ndarray, c0: np.ndarray):
    """(h [n, P], c [n, H]): `gather` of both states (NumPy arrays)."""
    return gather(step, h_hist, h0), gather(step, c_hist, c0)


def previous_sources(pieces: list[Piece], history, initial) -> list[tuple[slice, object]]:
    """(rows, source) per piece: a slice of the time-major rows and the rows of `history` (the
    whole [N, F] array) or `initial` (h0 / c0) that they read their previous state from."""
    return [(slice(row, row + length), (initial if from_initial else history)[src : src + length])
            for row, src, length, from_initial in pieces]


def final_states(p: Plan, h_hist: list, c_hist: list, h0: np.ndarray, c0: np.ndarray):
    """(h_n, c_n): each batch row's state after its last step (h0 / c0 for rows never active)."""
    h_n, c_n = h0.copy(), c0.copy()
    for t, b0, b1 in p.final_rows:
        h_n[b0:b1] = h_hist[t][b0:b1]
        c_n[b0:b1] = c_hist[t][b0:b1]
    return h_n, c_n


def add_final_grad(p: Plan, dh_hist: list, grad_hn: np.ndarray) -> None:
    """The backward of final_states for h: grad_hn added to the rows of dh where each sequence
    ends (dh_hist: per-time-step views of dh)."""
    for t, b0, b1 in p.final_rows:
        dh_hist[t][b0:b1] += grad_hn[b0:b1]


def flows(walk: Walk, dh_hist, d_h0, sources) -> list:
    """Per step in processing order, where the gradient a step sends to its previous state goes:
    (target, source, extra), target gathering source (target += source, or target +=
    source @ W_hh). The target is the previous step's dh rows (dh_hist: per-time-step views), or
    d_h0 for the first step; extra (else None) is the (d_h0 rows, source rows) part of a step
    whose rows partly start there. sources: per time step (time order), [n, F] views."""
    out = []
    for t, n, prev_t, prev_n in walk.steps:
        src = sources[t]
        if prev_t < 0:
            out.append((d_h0[:n], src, None))
        elif prev_n >= n:
            out.append((dh_hist[prev_t] if prev_n == n else dh_hist[prev_t][:n], src, None))
        else:
            out.append((dh_hist[prev_t], src[:prev_n], (d_h0[prev_n:n], src[prev_n:])))
    return out


def recurrent_weight_grad(d_gates: np.ndarray, y: np.ndarray, h0: np.ndarray,
                          pieces: list[Piece]) -> np.ndarray:
    """d W_hh [4H, P] = sum over rows of d_gates^T h_prev, each piece's previous states read in
    place from `y` or h0 (no [N, P] copy of them)."""
    d_w = np.zeros((d_gates.shape[1], y.shape[1]), dtype=d_gates.dtype)
    d_w_t, d_gates_t = torch.from_numpy(d_w), torch.from_numpy(d_gates)
    for rows, src in previous_sources(pieces, torch.from_numpy(y), torch.from_numpy(h0)):
        d_w_t.addmm_(d_gates_t[rows].T, src)
    return d_w
