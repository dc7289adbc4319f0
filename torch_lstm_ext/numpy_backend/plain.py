"""NumPy kernels of the plain single-layer, single-direction LSTM recurrence (the CPU backend).

The equations are differentiable_recurrence.py's with every variant off. Both functions work on
NumPy arrays of one compute dtype (float32 or float64); `numpy_backend/__init__.py` converts
tensors in and out. Shapes use T time, B batch, H hidden, P output size
(proj_size or H), N rows of the time-major input (T*B, or sum(batch_sizes) when packed).

Layout: the rows of `gates_x` are time-major. Step t owns rows [offset_t, offset_t + n_t), and
its n_t active sequences are batch rows 0..n_t-1 (PackedSequence sorts sequences by decreasing
length, so the active rows always form a prefix). A step reads the previous state straight from
the previous step's rows of `y` / `cells` (or from h0 / c0), so packed input needs neither
padding nor a per-sequence loop, and the state is never copied per step.

Gate order is PyTorch's: i, f, g, o. Sigmoids use sigmoid(x) = 0.5 * tanh(0.5 * x) + 0.5, which
never overflows, so all four gates are one tanh pass over the 4H block.

Speed (see DESIGN.md, "Performance design"): the pointwise math is NumPy, but the matrix products
run through torch's BLAS (MKL) on zero-copy views: it is faster than OpenBLAS on the skinny
per-step GEMMs, and NumPy's OpenBLAS threads would busy-wait after each call and steal both
cores from torch's OpenMP threads. Work that does not depend on the recurrence (scaling the
input gates, the backward's gate derivatives) runs in bulk over chunks of steps sized to stay in
cache, which leaves 9 NumPy/torch calls per step forward and 6 backward.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import numpy as np
import torch

from torch_lstm_ext import schedule
from torch_lstm_ext.params import RecurrenceGrads, RecurrenceParams
from torch_lstm_ext.profiling import stage
from torch_lstm_ext.schedule import Step, Walk

# Bulk passes work on chunks of about this many bytes of gates, so the per-step loop that
# follows finds them in L2 cache.
_CHUNK_BYTES = 1 << 20


def _views(a: np.ndarray, walk: Walk) -> list[np.ndarray]:
    """Per time step views of the rows of `a` (any trailing shape)."""
    if walk.uniform and walk.sizes:
        return list(a.reshape(len(walk.sizes), walk.sizes[0], *a.shape[1:]))
    return [a[o : o + n] for o, n in zip(walk.offsets, walk.sizes)]


def _torch_views(a: np.ndarray, walk: Walk) -> tuple[torch.Tensor, ...]:
    """Per time step zero-copy torch views of the rows of `a` (one C++ call, not T slices)."""
    return torch.from_numpy(a).split_with_sizes(walk.sizes)


def _blocks(a: np.ndarray, H: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]


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


def _previous_pieces(walk: Walk, steps: range) -> list[tuple[int, int, int, bool]]:
    """Where each row of `steps` reads its previous state: (row, source_row, length, from_initial).

    Source rows index the history (`y` or `cells`) or, when from_initial, h0 / c0. Adjacent
    pieces are merged, so an unpacked sequence needs two pieces however long it is.
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
    merged: list[tuple[int, int, int, bool]] = []
    for row, src, length, initial in pieces:
        if merged:
            last_row, last_src, last_len, last_initial = merged[-1]
            if (last_initial == initial and last_row + last_len == row
                    and last_src + last_len == src):
                merged[-1] = (last_row, last_src, last_len + length, initial)
                continue
        merged.append((row, src, length, initial))
    return merged


class _Plan(NamedTuple):
    """Everything about a call that depends only on the shapes: the walk, its chunks with the
    previous-state pieces of each, the pieces of the whole sequence, and where states end."""

    walk: Walk
    chunks: list[tuple[int, int, int, int]]
    chunk_pieces: list[list[tuple[int, int, int, bool]]]
    pieces: list[tuple[int, int, int, bool]]
    final_rows: list[tuple[int, int, int]]


@functools.lru_cache(maxsize=128)
def _cached_plan(packed_sizes: tuple[int, ...] | None, num_rows: int, batch: int, reverse: bool,
                 row_bytes: int) -> _Plan:
    walk = schedule.walk(packed_sizes, num_rows, batch, reverse)
    chunks = _chunks(walk, row_bytes)
    return _Plan(walk, chunks, [_previous_pieces(walk, range(k0, k1)) for k0, k1, _, _ in chunks],
                 _previous_pieces(walk, range(len(walk.steps))), schedule.final_rows(walk))


def _plan(batch_sizes: np.ndarray | None, num_rows: int, batch: int, reverse: bool, row_bytes: int) -> _Plan:
    """The (cached: a training loop repeats its shapes) plan of one call; treat it as read-only."""
    packed = None if batch_sizes is None else tuple(batch_sizes.tolist())
    return _cached_plan(packed, num_rows, batch, reverse, row_bytes)


def _ordered(items, reverse: bool):
    """Per-time-step items in processing order."""
    return items[::-1] if reverse else items


def _previous_states(walk: Walk, h_hist, c_hist, h0, c0) -> tuple[list, list]:
    """Per step in processing order, the rows its previous state comes from: views of the previous
    step's history (h as torch views, c as NumPy) or of h0 / c0. None where some rows continue and
    some start (the reverse direction of a packed batch): `_gather_previous` builds those in the
    loop, once the previous step has run."""
    hs, cs = [], []
    B = h0.shape[0]
    for _, n, prev_t, prev_n in walk.steps:
        if prev_t < 0:
            hs.append(h0 if n == B else h0[:n])
            cs.append(c0 if n == B else c0[:n])
        elif prev_n >= n:
            hs.append(h_hist[prev_t] if prev_n == n else h_hist[prev_t][:n])
            cs.append(c_hist[prev_t] if prev_n == n else c_hist[prev_t][:n])
        else:
            hs.append(None)
            cs.append(None)
    return hs, cs


def _gather_previous(step: Step, y_np: list, c_np: list, h0: np.ndarray, c0: np.ndarray):
    """(h torch [n, P], c NumPy [n, H]) for a step whose rows prev_n..n-1 start from h0 / c0."""
    _, n, prev_t, prev_n = step
    h = np.concatenate((y_np[prev_t], h0[prev_n:n]))
    c = np.concatenate((c_np[prev_t], c0[prev_n:n]))
    return torch.from_numpy(h), c


def _flows(walk: Walk, dh_t, d_h0_t, dg_t) -> list:
    """Per step in processing order, where its gate gradients flow through W_hh: (target, source,
    extra), each target += source @ W_hh. The target is the previous step's dh rows, or d_h0 for
    the first step; extra (else None) is the d_h0 part of a step whose rows partly start there."""
    flows = []
    for t, n, prev_t, prev_n in walk.steps:
        dg = dg_t[t]
        if prev_t < 0:
            flows.append((d_h0_t[:n], dg, None))
        elif prev_n >= n:
            flows.append((dh_t[prev_t] if prev_n == n else dh_t[prev_t][:n], dg, None))
        else:
            flows.append((dh_t[prev_t], dg[:prev_n], (d_h0_t[prev_n:n], dg[prev_n:])))
    return flows


@functools.lru_cache(maxsize=64)
def _gate_affine(hidden_size: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-column scale and shift turning tanh into sigmoid for the i, f, o blocks (read-only)."""
    scale = np.full(4 * hidden_size, 0.5, dtype=dtype)
    scale[2 * hidden_size : 3 * hidden_size] = 1.0
    shift = np.where(scale == 0.5, 0.5, 0.0).astype(dtype)
    scale.flags.writeable = shift.flags.writeable = False
    return scale, shift


def lstm_forward(
    gates_x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    p: RecurrenceParams,
    batch_sizes: np.ndarray | None,
    reverse: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the recurrence over a whole sequence (no variant on).

    Args:
        gates_x: [N, 4H] input part of the gate pre-activations (x @ W_ih^T + biases).
        h0: [B, P]. c0: [B, H]. p: w_hh [4H, P], w_hr [P, H] or None, as NumPy arrays.
        batch_sizes: int64 [T] for packed input, or None (then N = T * B, all rows active).
        reverse: process time steps from last to first.

    Returns:
        y [N, P], h_n [B, P], c_n [B, H], and for the backward the activated gates [N, 4H]
        and the cell states c_t [N, H]; all in the compute dtype.
    """
    w_hh, w_hr = p.w_hh, p.w_hr
    dtype = gates_x.dtype
    N, G = gates_x.shape
    H = G // 4
    B, P = h0.shape
    plan = _plan(batch_sizes, N, B, reverse, G * dtype.itemsize)
    walk = plan.walk
    scale, shift = _gate_affine(H, dtype)

    y = np.empty((N, P), dtype=dtype)
    gates = np.empty((N, G), dtype=dtype)
    cells = np.empty((N, H), dtype=dtype)
    tmp = np.empty((B, H), dtype=dtype)
    # scale holds 0.5 and 1.0, so scaling W_hh is exact and folds the sigmoid's 0.5 * x into
    # the recurrent GEMM.
    w_t = torch.from_numpy(w_hh * scale[:, None]).T
    w_hr_t = None if w_hr is None else torch.from_numpy(w_hr).T
    h0_t, tmp_t = torch.from_numpy(h0), torch.from_numpy(tmp)

    g_np, g_t = _views(gates, walk), _torch_views(gates, walk)
    i_np, f_np, gg_np, o_np = (_views(block, walk) for block in _blocks(gates, H))
    c_np, y_np, y_t = _views(cells, walk), _views(y, walk), _torch_views(y, walk)
    h_prev, c_prev = _previous_states(walk, y_t, c_np, h0_t, c0)
    sizes = _ordered(walk.sizes, reverse)
    t1s = [tmp if n == B else tmp[:n] for n in sizes]
    if w_hr_t is None:
        outs, t1_ts = y_np, itertools.repeat(None)
    else:
        outs, t1_ts = y_t, [tmp_t if n == B else tmp_t[:n] for n in sizes]
    # Everything a step touches, in processing order, built before the loop (list slicing and
    # zip run in C) so the loop body is only the math.
    args = list(zip(walk.steps, *(_ordered(v, reverse) for v in (g_np, g_t)), h_prev, c_prev,
                    *(_ordered(v, reverse) for v in (i_np, f_np, gg_np, o_np, c_np, outs)), t1s, t1_ts))

    tanh, multiply = np.tanh, np.multiply
    # Per-step ufuncs pass `out` positionally: ~15% less call overhead than the keyword.
    for k0, k1, r0, r1 in plan.chunks:
        multiply(gates_x[r0:r1], scale, gates[r0:r1])
        for step, g, g_t, hp, cp, i, f, gg, o, c, out, t1, t1_t in args[k0:k1]:
            if hp is None:
                hp, cp = _gather_previous(step, y_np, c_np, h0, c0)
            g_t.addmm_(hp, w_t)
            tanh(g, g)
            g *= scale
            g += shift
            multiply(cp, f, c)
            multiply(i, gg, t1)
            c += t1
            tanh(c, t1)
            if t1_t is None:
                multiply(t1, o, out)
            else:
                t1 *= o
                torch.mm(t1_t, w_hr_t, out=out)

    h_n, c_n = h0.copy(), c0.copy()
    for t, b0, b1 in plan.final_rows:
        h_n[b0:b1] = y_np[t][b0:b1]
        c_n[b0:b1] = c_np[t][b0:b1]
    return y, h_n, c_n, gates, cells


def _gate_derivatives(
    gates: np.ndarray, cells: np.ndarray, c0: np.ndarray, pieces, rows: slice,
    d_gates: np.ndarray, a_coef: np.ndarray, r: np.ndarray | None,
) -> None:
    """Everything of the backward that does not depend on the incoming gradient, for `rows`.

    Writes into d_gates[rows] the factors that turn (dc, dc, dc, dr) into the four gate
    pre-activation gradients: i(1-i)g, f(1-f)c_prev, (1-g^2)i, o(1-o)tanh(c); into a_coef[rows]
    the factor turning dr into dc, o(1-tanh(c)^2); and into r[rows] (with projection) o*tanh(c).
    """
    H = cells.shape[1]
    s, d, a = gates[rows], d_gates[rows], a_coef[rows]
    i, f, g, o = _blocks(s, H)
    di, df, dg, do = _blocks(d, H)
    np.tanh(cells[rows], out=a)
    if r is not None:
        np.multiply(o, a, out=r[rows])
    np.subtract(1.0, s, out=d)
    d *= s
    do *= a
    di *= g
    for row, src, length, initial in pieces:
        local = slice(row - rows.start, row - rows.start + length)
        df[local] *= (c0 if initial else cells)[src : src + length]
    np.multiply(g, g, out=dg)
    np.subtract(1.0, dg, out=dg)
    dg *= i
    np.multiply(a, a, out=a)
    np.subtract(1.0, a, out=a)
    a *= o


def lstm_backward(
    grad_y: np.ndarray,
    grad_hn: np.ndarray,
    grad_cn: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    p: RecurrenceParams,
    batch_sizes: np.ndarray | None,
    reverse: bool,
    y: np.ndarray,
    gates: np.ndarray,
    cells: np.ndarray,
) -> RecurrenceGrads:
    """Gradients of `lstm_forward`.

    Args:
        grad_y [N, P], grad_hn [B, P], grad_cn [B, H]: gradients of the forward's outputs.
        h0, c0, p, batch_sizes, reverse: as given to the forward.
        y [N, P], gates [N, 4H], cells [N, H]: what the forward returned.

    Returns:
        RecurrenceGrads of NumPy arrays: gates_x [N, 4H], h0 [B, P], c0 [B, H], w_hh [4H, P],
        w_hr [P, H] (None without projection).
    """
    w_hh, w_hr = p.w_hh, p.w_hr
    dtype = gates.dtype
    N, G = gates.shape
    H = G // 4
    B, P = h0.shape
    plan = _plan(batch_sizes, N, B, reverse, G * dtype.itemsize)
    walk = plan.walk

    # dh of every step, completed in place: grad_y, plus grad_hn where a sequence ends, plus
    # (in the loop) what flows back from the step processed after it. With projection this is
    # also the gradient of the projection's output, which d_w_hr needs.
    dh = np.array(grad_y, dtype=dtype, copy=True)
    d_h0 = np.array(grad_hn, dtype=dtype, copy=True)
    dc = np.array(grad_cn, dtype=dtype, copy=True)
    d_gates = np.empty((N, G), dtype=dtype)
    a_coef = np.empty((N, H), dtype=dtype)
    r = None if w_hr is None else np.empty((N, H), dtype=dtype)
    tmp = np.empty((B, H), dtype=dtype)
    dr_buf = np.empty((B, H), dtype=dtype)

    dh_np, dh_t = _views(dh, walk), _torch_views(dh, walk)
    for t, b0, b1 in plan.final_rows:
        dh_np[t][b0:b1] += grad_hn[b0:b1]
    dg_t = _torch_views(d_gates, walk)
    d3_np = _views(d_gates.reshape(N, 4, H)[:, :3], walk)
    do_np = _views(d_gates[:, 3 * H :], walk)
    f_np, a_np = _views(gates[:, H : 2 * H], walk), _views(a_coef, walk)
    w_t, d_h0_t, dr_t = torch.from_numpy(w_hh), torch.from_numpy(d_h0), torch.from_numpy(dr_buf)
    w_hr_t = None if w_hr is None else torch.from_numpy(w_hr)

    # Rows that are ever active receive d_h0 from the step that starts them (accumulated onto
    # zero); rows that never are keep grad_hn.
    d_h0[: max(walk.sizes, default=0)] = 0
    sizes = _ordered(walk.sizes, reverse)
    states = {n: (dc[:n], dc[:n, None, :], tmp[:n]) for n in set(walk.sizes)}
    if w_hr_t is None:
        drs = _ordered(dh_np, reverse)
        proj_in = proj_out = itertools.repeat(None)
    else:
        drs = [dr_buf[:n] for n in sizes]
        proj_in, proj_out = _ordered(dh_t, reverse), [dr_t[:n] for n in sizes]
    # As in the forward: all views first, so the loop body is only the math.
    args = list(zip(drs, proj_in, proj_out, *(_ordered(v, reverse) for v in (a_np, d3_np, do_np, f_np)),
                    [states[n] for n in sizes], _flows(walk, dh_t, d_h0_t, dg_t)))

    multiply = np.multiply
    for (k0, k1, r0, r1), pieces in zip(reversed(plan.chunks), reversed(plan.chunk_pieces)):
        _gate_derivatives(gates, cells, c0, pieces, slice(r0, r1), d_gates, a_coef, r)
        for dr, p_in, p_out, a, d3, do, f, (dc_n, dc_3, t1), (target, src, extra) in reversed(args[k0:k1]):
            if p_in is not None:
                torch.mm(p_in, w_hr_t, out=p_out)
            multiply(dr, a, t1)
            dc_n += t1
            multiply(d3, dc_3, d3)
            multiply(do, dr, do)
            dc_n *= f
            target.addmm_(src, w_t)
            if extra is not None:
                extra[0].addmm_(extra[1], w_t)

    with stage("weight_grad_gemm"):
        d_w_hh = np.zeros((G, P), dtype=dtype)
        d_w_hh_t, d_gates_t = torch.from_numpy(d_w_hh), torch.from_numpy(d_gates)
        y_t, h0_t = torch.from_numpy(y), torch.from_numpy(h0)
        for row, src, length, initial in plan.pieces:
            d_w_hh_t.addmm_(d_gates_t[row : row + length].T, (h0_t if initial else y_t)[src : src + length])
        d_w_hr = None
        if r is not None:
            d_w_hr = (torch.from_numpy(dh).T @ torch.from_numpy(r)).numpy()
    return RecurrenceGrads(d_gates, d_h0, dc, d_w_hh, d_w_hr)
