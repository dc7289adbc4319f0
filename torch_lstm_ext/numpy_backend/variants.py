"""NumPy kernels of the recurrence with the variants nn.LSTM lacks (the CPU backend).

Used instead of `plain.py` only when a variant is on, so the plain path keeps its numerics and
speed. The equations are differentiable_recurrence.py's (its docstring lists them). Same layout
rules and arguments as `plain.py` (time-major rows, packed steps own a prefix of the batch), with
the variants in `p.variants`, and the same walk (walk.py): the cached plan of the call, per-step
views of every array built before the loop, each step's previous state read as a view of the
previous step's rows of `y` / `cells` or of h0 / c0 (never copied, except for a step whose rows
partly continue and partly start: the reverse direction of a packed batch), h_n / c_n taken from
the rows where each sequence ends, and in the backward dh completed in place in a copy of grad_y
and flowed to the previous step's rows or to d_h0.
"""

from __future__ import annotations

import numpy as np
import torch

from torch_lstm_ext.normalization import normalize, normalize_backward
from torch_lstm_ext.numpy_backend.walk import (
    add_final_grad,
    final_states,
    flows,
    gather,
    gather_previous,
    previous_sources,
    previous_states,
    previous_views,
    recurrent_weight_grad,
    torch_views,
    views,
)
from torch_lstm_ext.numpy_backend.walk import plan as walk_plan
from torch_lstm_ext.params import RecurrenceGrads, RecurrenceParams
from torch_lstm_ext.schedule import Walk


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


def _step_views(a: np.ndarray | None, w: Walk) -> list[np.ndarray] | None:
    """views() of an optional array (None stays None)."""
    return None if a is None else views(a, w)


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
    w_hh, w_hr, v = p.w_hh, p.w_hr, p.variants
    dtype = gates_x.dtype
    N, G = gates_x.shape
    H = G // 4
    B, P = h0.shape
    plan = walk_plan(batch_sizes, N, B, reverse, G * dtype.itemsize)
    w = plan.walk
    y = np.empty((N, P), dtype=dtype)
    gates = np.empty((N, G), dtype=dtype)
    cells = np.empty((N, H), dtype=dtype)

    y_np, c_np = views(y, w), views(cells, w)
    gx_np, z_np = views(gates_x, w), views(gates, w)
    zc_np, zh_np = _step_views(v.zoneout_c, w), _step_views(v.zoneout_h, w)
    h_prev, c_prev = previous_states(w, y_np, c_np, h0, c0)
    for step, h_p, c_p in zip(w.steps, h_prev, c_prev):
        t = step.t
        if h_p is None:
            h_p, c_p = gather_previous(step, y_np, c_np, h0, c0)
        hh = _mm(h_p, w_hh.T)
        if v.ln_hh is not None:
            hh = normalize(hh)[0] * v.ln_hh
        z = z_np[t]
        np.add(gx_np[t], hh, out=z)
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
        if zc_np is not None:
            m = zc_np[t]
            c_cand = m * c_p + (1.0 - m) * c_cand
        if zh_np is not None:
            m = zh_np[t]
            h_cand = m * h_p + (1.0 - m) * h_cand
        c_np[t][...] = c_cand
        y_np[t][...] = h_cand
    h_n, c_n = final_states(plan, y_np, c_np, h0, c0)
    return y, h_n, c_n, gates, cells


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

    Everything the forward computed but did not keep (the candidate cell, the layer-norm
    statistics) is recomputed here for the whole sequence at once, with the same element-wise
    operations, reading each row's previous state in place from `y` / `cells` or h0 / c0; only
    the gradient recurrence runs step by step.
    """
    w_hh, w_hr, v = p.w_hh, p.w_hr, p.variants
    dtype = gates.dtype
    N, G = gates.shape
    H = G // 4
    B, P = h0.shape
    plan = walk_plan(batch_sizes, N, B, reverse, G * dtype.itemsize)
    w = plan.walk

    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    c_raw = np.empty((N, H), dtype=dtype)
    for rows, c_p in previous_sources(plan.pieces, cells, c0):
        np.multiply(f[rows], c_p, out=c_raw[rows])
    c_raw += i * g
    c_cand = c_raw if v.cell_clip is None else np.clip(c_raw, -v.cell_clip, v.cell_clip)
    xhat_c = rstd_c = xhat_hh = rstd_hh = None
    if v.ln_c is not None:
        xhat_c, rstd_c = normalize(c_cand)
        tanh_out = np.tanh(xhat_c * v.ln_c[0] + v.ln_c[1])
    else:
        tanh_out = np.tanh(c_cand)
    if v.ln_hh is not None:
        hh = np.empty((N, G), dtype=dtype)
        for rows, h_p in previous_sources(plan.pieces, y, h0):
            hh[rows] = _mm(h_p, w_hh.T)
        xhat_hh, rstd_hh = normalize(hh)

    d_gates = np.empty((N, G), dtype=dtype)
    d_hh = np.empty((N, G), dtype=dtype) if v.ln_hh is not None else d_gates
    d_h_cand_all = np.empty((N, P), dtype=dtype) if w_hr is not None else None
    d_peephole = np.zeros((3, H), dtype=dtype) if v.peephole is not None else None
    d_ln_hh = np.zeros(G, dtype=dtype) if v.ln_hh is not None else None
    d_ln_c = np.zeros((2, H), dtype=dtype) if v.ln_c is not None else None
    # dh of every step's output, completed in place as in plain.py: grad_y, plus grad_hn where a
    # sequence ends, plus (in the loop) what flows back from the step processed after it. Rows
    # that are ever active get d_h0 from the step that starts them (added onto zero); rows that
    # never are keep grad_hn. dc is the running gradient of the carried cell.
    dh = np.array(grad_y, dtype=dtype, copy=True)
    d_h0 = np.array(grad_hn, dtype=dtype, copy=True)
    d_h0[: max(w.sizes, default=0)] = 0
    dc = np.array(grad_cn, dtype=dtype, copy=True)
    dh_np = views(dh, w)
    add_final_grad(plan, dh_np, grad_hn)
    # A step's gradient towards its previous h, built in dh_p and added to its flow target.
    dh_p_buf = np.empty((B, P), dtype=dtype)
    dh_p_np = [dh_p_buf[:n] for n in w.sizes]
    dh_p_t = [torch.from_numpy(a) for a in dh_p_np]
    w_hh_t = torch.from_numpy(w_hh)

    # Per-step views, built before the loop (time order; previous states and flows in processing order).
    i_np, f_np, g_np, o_np = views(i, w), views(f, w), views(g, w), views(o, w)
    tanh_np, c_cand_np, c_raw_np = views(tanh_out, w), views(c_cand, w), views(c_raw, w)
    xhat_c_np, rstd_c_np = _step_views(xhat_c, w), _step_views(rstd_c, w)
    xhat_hh_np, rstd_hh_np = _step_views(xhat_hh, w), _step_views(rstd_hh, w)
    d_gates_np, d_hh_np, d_hh_t = views(d_gates, w), views(d_hh, w), torch_views(d_hh, w)
    d_h_cand_np = _step_views(d_h_cand_all, w)
    zc_np, zh_np = _step_views(v.zoneout_c, w), _step_views(v.zoneout_h, w)
    c_np = views(cells, w)
    c_prev = [gather(step, c_np, c0) if c_p is None else c_p
              for step, c_p in zip(w.steps, previous_views(w, c_np, c0))]
    args = list(zip(w.steps, c_prev, flows(w, dh_np, d_h0, dh_p_np)))

    def clamp(x: np.ndarray) -> np.ndarray:
        if v.grad_clip is not None:
            np.clip(x, -v.grad_clip, v.grad_clip, out=x)
        return x

    for step, cp_r, (target, src, extra) in reversed(args):
        t, n = step.t, step.n
        dh_out = dh_np[t]
        dc_out = dc[:n]
        if zh_np is not None:
            m = zh_np[t]
            dh_prev_direct, dh_cand = dh_out * m, dh_out * (1.0 - m)
        else:
            dh_prev_direct, dh_cand = None, dh_out
        if zc_np is not None:
            m = zc_np[t]
            dc_prev_direct, dc_cand = dc_out * m, dc_out * (1.0 - m)
        else:
            dc_prev_direct, dc_cand = None, dc_out.copy()
        if w_hr is not None:
            d_h_cand_np[t][...] = dh_cand
            dh_cand = _mm(dh_cand, w_hr)

        o_r, t_r = o_np[t], tanh_np[t]
        dpo = clamp(dh_cand * t_r * o_r * (1.0 - o_r))
        d_out = dh_cand * o_r * (1.0 - t_r * t_r)
        if v.ln_c is not None:
            d_ln_c[0] += (d_out * xhat_c_np[t]).sum(axis=0)
            d_ln_c[1] += d_out.sum(axis=0)
            dc_cand += normalize_backward(d_out * v.ln_c[0], xhat_c_np[t], rstd_c_np[t])
        else:
            dc_cand += d_out
        if v.peephole is not None:
            dc_cand += dpo * v.peephole[2]
            d_peephole[2] += (dpo * c_cand_np[t]).sum(axis=0)
        if v.cell_clip is not None:
            dc_cand *= np.abs(c_raw_np[t]) <= v.cell_clip

        i_r, f_r, g_r = i_np[t], f_np[t], g_np[t]
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

        d_pre = d_gates_np[t]
        d_pre[:, :H], d_pre[:, H : 2 * H], d_pre[:, 2 * H : 3 * H], d_pre[:, 3 * H :] = dpi, dpf, dpg, dpo
        if v.ln_hh is not None:
            d_ln_hh += (d_pre * xhat_hh_np[t]).sum(axis=0)
            d_hh_np[t][...] = normalize_backward(d_pre * v.ln_hh, xhat_hh_np[t], rstd_hh_np[t])
        dh_p = dh_p_np[t]
        torch.mm(d_hh_t[t], w_hh_t, out=dh_p_t[t])
        if dh_prev_direct is not None:
            dh_p += dh_prev_direct
        target += src
        if extra is not None:
            d_h0_rows, src_rows = extra
            d_h0_rows += src_rows
        dc[:n] = dc_p

    d_w_hh = recurrent_weight_grad(d_hh, y, h0, plan.pieces)
    d_w_hr = None if w_hr is None else _mm(d_h_cand_all.T, o * tanh_out)
    return RecurrenceGrads(d_gates, d_h0, dc, d_w_hh, d_w_hr, d_peephole, d_ln_hh, d_ln_c)
