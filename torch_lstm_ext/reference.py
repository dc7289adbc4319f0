"""NumPy kernels of the single-layer, single-direction LSTM recurrence (the CPU backend).

Both functions work on NumPy arrays of one compute dtype (float32 or float64); the op layer
(`ops.py`) converts tensors in and out. Shapes use T time, B batch, H hidden, P output size
(proj_size or H), N rows of the time-major input (T*B, or sum(batch_sizes) when packed).

Layout: the rows of `gates_x` are time-major. Step t owns rows [offset_t, offset_t + n_t), and
its n_t active sequences are batch rows 0..n_t-1 of the state (PackedSequence sorts sequences by
decreasing length, so the active rows always form a prefix). The state arrays are updated in
place for the active prefix only: a sequence that has ended keeps its final state, one that has
not started yet (reverse direction) still holds h0 / c0. So h_n / c_n need no gathering and
packed input needs neither padding nor a per-sequence loop.

Gate order is PyTorch's: i, f, g, o. Sigmoids use sigmoid(x) = 0.5 * tanh(0.5 * x) + 0.5, which
never overflows, so all four gates are one tanh pass over the 4H block.
"""

from __future__ import annotations

import numpy as np

from torch_lstm_ext.schedule import Step, step_schedule


def _gate_affine(hidden_size: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-column scale and shift turning tanh into sigmoid for the i, f, o blocks."""
    scale = np.full(4 * hidden_size, 0.5, dtype=dtype)
    scale[2 * hidden_size : 3 * hidden_size] = 1.0
    shift = np.where(scale == 0.5, 0.5, 0.0).astype(dtype)
    return scale, shift


def _split(block: np.ndarray, H: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return block[:, :H], block[:, H : 2 * H], block[:, 2 * H : 3 * H], block[:, 3 * H :]


def lstm_forward(
    gates_x: np.ndarray,
    w_hh: np.ndarray,
    w_hr: np.ndarray | None,
    h0: np.ndarray,
    c0: np.ndarray,
    batch_sizes: np.ndarray | None,
    reverse: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the recurrence over a whole sequence.

    Args:
        gates_x: [N, 4H] input part of the gate pre-activations (x @ W_ih^T + biases).
        w_hh: [4H, P]. w_hr: [P, H] or None. h0: [B, P]. c0: [B, H].
        batch_sizes: int64 [T] for packed input, or None (then N = T * B, all rows active).
        reverse: process time steps from last to first.

    Returns:
        y [N, P], h_n [B, P], c_n [B, H], and for the backward the activated gates [N, 4H]
        and the cell states c_t [N, H]; all in the compute dtype.
    """
    dtype = gates_x.dtype
    N, G = gates_x.shape
    H = G // 4
    B, P = h0.shape
    scale, shift = _gate_affine(H, dtype)

    y = np.empty((N, P), dtype=dtype)
    gates = np.empty((N, G), dtype=dtype)
    cells = np.empty((N, H), dtype=dtype)
    h = np.array(h0, dtype=dtype, copy=True)
    c = np.array(c0, dtype=dtype, copy=True)
    tmp = np.empty((B, H), dtype=dtype)
    w_hh_t = w_hh.T
    w_hr_t = None if w_hr is None else w_hr.T

    for step in step_schedule(batch_sizes, N, B, reverse):
        rows = slice(step.offset, step.offset + step.n)
        n = step.n
        g = gates[rows]
        np.matmul(h[:n], w_hh_t, out=g)
        g += gates_x[rows]
        g *= scale
        np.tanh(g, out=g)
        g *= scale
        g += shift
        i, f, gg, o = _split(g, H)

        c_n = c[:n]
        c_n *= f
        t = tmp[:n]
        np.multiply(i, gg, out=t)
        c_n += t
        cells[rows] = c_n

        np.tanh(c_n, out=t)
        t *= o
        if w_hr_t is None:
            h[:n] = t
        else:
            np.matmul(t, w_hr_t, out=h[:n])
        y[rows] = h[:n]
    return y, h, c, gates, cells


def _previous_rows(
    history: np.ndarray, initial: np.ndarray, step: Step, out: np.ndarray
) -> np.ndarray:
    """The state each active row of `step` started from: [n, features].

    A view into `history` (outputs of the previous step) where possible; rows that had no
    previous step (the first step, or sequences the reverse direction starts late) read
    `initial`. Only that mixed case copies, into `out`.
    """
    n = step.n
    if step.prev_offset < 0:
        return initial[:n]
    if step.prev_n >= n:
        return history[step.prev_offset : step.prev_offset + n]
    m = step.prev_n
    buf = out[:n]
    buf[:m] = history[step.prev_offset : step.prev_offset + m]
    buf[m:] = initial[m:n]
    return buf


def lstm_backward(
    grad_y: np.ndarray,
    grad_hn: np.ndarray,
    grad_cn: np.ndarray,
    w_hh: np.ndarray,
    w_hr: np.ndarray | None,
    h0: np.ndarray,
    c0: np.ndarray,
    batch_sizes: np.ndarray | None,
    reverse: bool,
    y: np.ndarray,
    gates: np.ndarray,
    cells: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of `lstm_forward`.

    Args:
        grad_y [N, P], grad_hn [B, P], grad_cn [B, H]: gradients of the forward's outputs.
        w_hh, w_hr, h0, c0, batch_sizes, reverse: as given to the forward.
        y [N, P], gates [N, 4H], cells [N, H]: what the forward returned.

    Returns:
        d_gates_x [N, 4H], d_w_hh [4H, P], d_w_hr [P, H] (None without projection),
        d_h0 [B, P], d_c0 [B, H].
    """
    dtype = gates.dtype
    N, G = gates.shape
    H = G // 4
    B, P = h0.shape

    tanh_c = np.tanh(cells)
    d_gates = np.empty((N, G), dtype=dtype)
    h_prev = np.empty((N, P), dtype=dtype)
    dh = np.array(grad_hn, dtype=dtype, copy=True)
    dc = np.array(grad_cn, dtype=dtype, copy=True)
    d_out_all = np.empty((N, P), dtype=dtype) if w_hr is not None else None
    dr_buf = np.empty((B, H), dtype=dtype)
    t1 = np.empty((B, H), dtype=dtype)
    mixed = np.empty((B, max(H, P)), dtype=dtype)

    for step in reversed(step_schedule(batch_sizes, N, B, reverse)):
        rows = slice(step.offset, step.offset + step.n)
        n = step.n
        dh_n = dh[:n]
        dh_n += grad_y[rows]
        if w_hr is None:
            dr = dh_n
        else:
            d_out_all[rows] = dh_n
            dr = dr_buf[:n]
            np.matmul(dh_n, w_hr, out=dr)

        i, f, g, o = _split(gates[rows], H)
        di, df, dg, do = _split(d_gates[rows], H)
        tc = tanh_c[rows]
        dc_n = dc[:n]
        t = t1[:n]

        # h = o * tanh(c): gradients into the o gate and the cell.
        np.multiply(dr, tc, out=do)
        np.multiply(tc, tc, out=t)
        np.subtract(1.0, t, out=t)
        t *= o
        t *= dr
        dc_n += t
        # do_pre = do * o * (1 - o)
        np.subtract(1.0, o, out=t)
        t *= o
        do *= t

        # c = f * c_prev + i * g
        c_prev = _previous_rows(cells, c0, step, mixed[:, :H])
        np.multiply(dc_n, c_prev, out=df)
        np.subtract(1.0, f, out=t)
        t *= f
        df *= t
        np.multiply(dc_n, g, out=di)
        np.subtract(1.0, i, out=t)
        t *= i
        di *= t
        np.multiply(dc_n, i, out=dg)
        np.multiply(g, g, out=t)
        np.subtract(1.0, t, out=t)
        dg *= t
        dc_n *= f

        h_prev[rows] = _previous_rows(y, h0, step, mixed[:, :P])
        np.matmul(d_gates[rows], w_hh, out=dh_n)

    d_w_hh = d_gates.T @ h_prev
    d_w_hr = None
    if w_hr is not None:
        tanh_c *= gates[:, 3 * H :]
        d_w_hr = d_out_all.T @ tanh_c
    return d_gates, d_w_hh, d_w_hr, dh, dc
