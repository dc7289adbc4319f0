"""NumPy kernels of the recurrence with the variants nn.LSTM lacks (the CPU backend).

Used instead of `plain.py` only when a variant is on, so the plain path keeps its numerics and
speed. The equations are differentiable_recurrence.py's (its docstring lists them). Same layout
rules and arguments as `plain.py` (time-major rows, packed steps own a prefix of the batch,
states updated in place for the active rows), with the variants in `p.variants`.
"""

from __future__ import annotations

import numpy as np
import torch

from torch_lstm_ext.normalization import normalize, normalize_backward
from torch_lstm_ext.params import RecurrenceGrads, RecurrenceParams
from torch_lstm_ext.schedule import Step, Walk, step_rows, walk_batch_sizes


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b through torch's BLAS on zero-copy views: NumPy's OpenBLAS is slower on these skinny
    products, and its spinning worker threads fight torch's own threads."""
    return torch.mm(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """In place; the tanh form never overflows."""
    x *= 0.5
    np.tanh(x, out=x)
    x *= 0.5
    x += 0.5
    return x


def _previous(history: np.ndarray, initial: np.ndarray, w: Walk, step: Step) -> np.ndarray:
    """The states the active rows of `step` started from, [n, features] (a fresh array)."""
    n, m = step.n, (step.prev_n if step.prev_t >= 0 else 0)
    out = np.empty((n, history.shape[1]), dtype=history.dtype)
    k = min(n, m)
    if k:
        start = w.offsets[step.prev_t]
        out[:k] = history[start : start + k]
    out[k:] = initial[k:n]
    return out


def lstm_variant_forward(
    gates_x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    p: RecurrenceParams,
    batch_sizes: np.ndarray | None,
    reverse: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """As plain.lstm_forward: y [N, P], h_n [B, P], c_n [B, H], gates [N, 4H] (activated),
    cells [N, H] (the carried, zoned-out c_t)."""
    w_hh, w_hr, v = p
    dtype = gates_x.dtype
    N, G = gates_x.shape
    H = G // 4
    B, P = h0.shape
    y = np.empty((N, P), dtype=dtype)
    gates = np.empty((N, G), dtype=dtype)
    cells = np.empty((N, H), dtype=dtype)
    h = np.array(h0, dtype=dtype, copy=True)
    c = np.array(c0, dtype=dtype, copy=True)

    w = walk_batch_sizes(batch_sizes, N, B, reverse)
    for step in w.steps:
        rows, n = step_rows(w, step), step.n
        h_p, c_p = h[:n], c[:n]
        hh = _mm(h_p, w_hh.T)
        if v.ln_hh is not None:
            hh = normalize(hh)[0] * v.ln_hh
        z = gates[rows]
        np.add(gates_x[rows], hh, out=z)
        if v.peephole is not None:
            z[:, :H] += v.peephole[0] * c_p
            z[:, H : 2 * H] += v.peephole[1] * c_p
        _sigmoid(z[:, : 2 * H])
        np.tanh(z[:, 2 * H : 3 * H], out=z[:, 2 * H : 3 * H])
        i, f, g, o = z[:, :H], z[:, H : 2 * H], z[:, 2 * H : 3 * H], z[:, 3 * H :]
        c_cand = f * c_p + i * g
        if v.cell_clip is not None:
            np.clip(c_cand, -v.cell_clip, v.cell_clip, out=c_cand)
        if v.peephole is not None:
            o += v.peephole[2] * c_cand
        _sigmoid(o)
        c_out = c_cand if v.ln_c is None else normalize(c_cand)[0] * v.ln_c[0] + v.ln_c[1]
        h_cand = o * np.tanh(c_out)
        if w_hr is not None:
            h_cand = _mm(h_cand, w_hr.T)
        if v.zoneout_c is not None:
            m = v.zoneout_c[rows]
            c_cand = m * c_p + (1.0 - m) * c_cand
        if v.zoneout_h is not None:
            m = v.zoneout_h[rows]
            h_cand = m * h_p + (1.0 - m) * h_cand
        cells[rows] = c_cand
        y[rows] = h_cand
        c[:n] = c_cand
        h[:n] = h_cand
    return y, h, c, gates, cells


def lstm_variant_backward(
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
    """As plain.lstm_backward, plus the gradients of the variant parameters.

    Everything the forward computed but did not keep (previous states, the candidate cell, the
    layer-norm statistics) is recomputed here for the whole sequence at once, with the same
    element-wise operations; only the gradient recurrence runs step by step.
    """
    w_hh, w_hr, v = p
    dtype = gates.dtype
    N, G = gates.shape
    H = G // 4
    B, P = h0.shape
    w = walk_batch_sizes(batch_sizes, N, B, reverse)

    c_prev = np.empty((N, H), dtype=dtype)
    h_prev = np.empty((N, P), dtype=dtype)
    for step in w.steps:
        rows = step_rows(w, step)
        c_prev[rows] = _previous(cells, c0, w, step)
        h_prev[rows] = _previous(y, h0, w, step)
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    c_raw = f * c_prev + i * g
    c_cand = c_raw if v.cell_clip is None else np.clip(c_raw, -v.cell_clip, v.cell_clip)
    if v.ln_c is not None:
        xhat_c, rstd_c = normalize(c_cand)
        tanh_out = np.tanh(xhat_c * v.ln_c[0] + v.ln_c[1])
    else:
        tanh_out = np.tanh(c_cand)
    if v.ln_hh is not None:
        xhat_hh, rstd_hh = normalize(_mm(h_prev, w_hh.T))

    d_gates = np.empty((N, G), dtype=dtype)
    d_hh = np.empty((N, G), dtype=dtype) if v.ln_hh is not None else d_gates
    d_h_cand_all = np.empty((N, P), dtype=dtype) if w_hr is not None else None
    d_peephole = np.zeros((3, H), dtype=dtype) if v.peephole is not None else None
    d_ln_hh = np.zeros(G, dtype=dtype) if v.ln_hh is not None else None
    d_ln_c = np.zeros((2, H), dtype=dtype) if v.ln_c is not None else None
    dh = np.array(grad_hn, dtype=dtype, copy=True)
    dc = np.array(grad_cn, dtype=dtype, copy=True)

    def clamp(x: np.ndarray) -> np.ndarray:
        if v.grad_clip is not None:
            np.clip(x, -v.grad_clip, v.grad_clip, out=x)
        return x

    for step in reversed(w.steps):
        rows, n = step_rows(w, step), step.n
        dh_out = dh[:n] + grad_y[rows]
        dc_out = dc[:n]
        if v.zoneout_h is not None:
            m = v.zoneout_h[rows]
            dh_prev_direct, dh_cand = dh_out * m, dh_out * (1.0 - m)
        else:
            dh_prev_direct, dh_cand = None, dh_out
        if v.zoneout_c is not None:
            m = v.zoneout_c[rows]
            dc_prev_direct, dc_cand = dc_out * m, dc_out * (1.0 - m)
        else:
            dc_prev_direct, dc_cand = None, dc_out.copy()
        if w_hr is not None:
            d_h_cand_all[rows] = dh_cand
            dh_cand = _mm(dh_cand, w_hr)

        o_r, t_r = o[rows], tanh_out[rows]
        dpo = clamp(dh_cand * t_r * o_r * (1.0 - o_r))
        d_out = dh_cand * o_r * (1.0 - t_r * t_r)
        if v.ln_c is not None:
            d_ln_c[0] += (d_out * xhat_c[rows]).sum(axis=0)
            d_ln_c[1] += d_out.sum(axis=0)
            dc_cand += normalize_backward(d_out * v.ln_c[0], xhat_c[rows], rstd_c[rows])
        else:
            dc_cand += d_out
        if v.peephole is not None:
            dc_cand += dpo * v.peephole[2]
            d_peephole[2] += (dpo * c_cand[rows]).sum(axis=0)
        if v.cell_clip is not None:
            dc_cand *= np.abs(c_raw[rows]) <= v.cell_clip

        i_r, f_r, g_r, cp_r = i[rows], f[rows], g[rows], c_prev[rows]
        dpi = clamp(dc_cand * g_r * i_r * (1.0 - i_r))
        dpf = clamp(dc_cand * cp_r * f_r * (1.0 - f_r))
        dpg = clamp(dc_cand * i_r * (1.0 - g_r * g_r))
        dc_p = dc_cand * f_r
        if v.peephole is not None:
            dc_p += dpi * v.peephole[0] + dpf * v.peephole[1]
            d_peephole[0] += (dpi * cp_r).sum(axis=0)
            d_peephole[1] += (dpf * cp_r).sum(axis=0)
        if dc_prev_direct is not None:
            dc_p += dc_prev_direct

        d_pre = d_gates[rows]
        d_pre[:, :H], d_pre[:, H : 2 * H], d_pre[:, 2 * H : 3 * H], d_pre[:, 3 * H :] = dpi, dpf, dpg, dpo
        if v.ln_hh is not None:
            d_ln_hh += (d_pre * xhat_hh[rows]).sum(axis=0)
            d_hh[rows] = normalize_backward(d_pre * v.ln_hh, xhat_hh[rows], rstd_hh[rows])
        dh_p = _mm(d_hh[rows], w_hh)
        if dh_prev_direct is not None:
            dh_p += dh_prev_direct
        dh[:n] = dh_p
        dc[:n] = dc_p

    d_w_hh = _mm(d_hh.T, h_prev)
    d_w_hr = None if w_hr is None else _mm(d_h_cand_all.T, o * tanh_out)
    return RecurrenceGrads(d_gates, dh, dc, d_w_hh, d_w_hr, d_peephole, d_ln_hh, d_ln_c)
