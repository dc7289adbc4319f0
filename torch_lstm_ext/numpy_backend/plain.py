"""NumPy kernels of the plain single-layer, single-direction LSTM recurrence (the CPU backend).

The equations are differentiable_recurrence.py's with every variant off. Both functions work on
NumPy arrays of one compute dtype (float32 or float64); `numpy_backend/__init__.py` converts
tensors in and out. Shapes use T time, B batch, H hidden, P output size
(proj_size or H), N rows of the time-major input (T*B, or sum(batch_sizes) when packed).

Layout: the rows of `gates_x` are time-major. Step t owns rows [offset_t, offset_t + n_t), and
its n_t active sequences are batch rows 0..n_t-1 (PackedSequence sorts sequences by decreasing
length, so the active rows always form a prefix). A step reads the previous state straight from
the previous step's rows of `y` / `cells` (or from h0 / c0), so packed input needs neither
padding nor a per-sequence loop, and the state is never copied per step. That walk (the cached
plan of a call, the per-step and previous-state views, the final states) is walk.py's, shared
with variants.py.

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

import numpy as np
import torch

from torch_lstm_ext.numpy_backend.walk import (
    add_final_grad,
    final_states,
    flows,
    gather_previous,
    ordered,
    previous_states,
    recurrent_weight_grad,
    torch_views,
    views,
)
from torch_lstm_ext.numpy_backend.walk import plan as walk_plan
from torch_lstm_ext.params import RecurrenceGrads, RecurrenceParams
from torch_lstm_ext.profiling import stage


def _blocks(a: np.ndarray, H: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]


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
    plan = walk_plan(batch_sizes, N, B, reverse, G * dtype.itemsize)
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

    g_np, g_t = views(gates, walk), torch_views(gates, walk)
    i_np, f_np, gg_np, o_np = (views(block, walk) for block in _blocks(gates, H))
    c_np, y_np, y_t = views(cells, walk), views(y, walk), torch_views(y, walk)
    h_prev, c_prev = previous_states(walk, y_t, c_np, h0_t, c0)
    sizes = ordered(walk.sizes, reverse)
    t1s = [tmp if n == B else tmp[:n] for n in sizes]
    if w_hr_t is None:
        outs, t1_ts = y_np, itertools.repeat(None)
    else:
        outs, t1_ts = y_t, [tmp_t if n == B else tmp_t[:n] for n in sizes]
    # Everything a step touches, in processing order, built before the loop (list slicing and
    # zip run in C) so the loop body is only the math.
    args = list(zip(walk.steps, *(ordered(v, reverse) for v in (g_np, g_t)), h_prev, c_prev,
                    *(ordered(v, reverse) for v in (i_np, f_np, gg_np, o_np, c_np, outs)), t1s, t1_ts))

    tanh, multiply = np.tanh, np.multiply
    # Per-step ufuncs pass `out` positionally: ~15% less call overhead than the keyword.
    for k0, k1, r0, r1 in plan.chunks:
        multiply(gates_x[r0:r1], scale, gates[r0:r1])
        for step, g, g_t, hp, cp, i, f, gg, o, c, out, t1, t1_t in args[k0:k1]:
            if hp is None:
                hp, cp = gather_previous(step, y_np, c_np, h0, c0)
                hp = torch.from_numpy(hp)
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

    h_n, c_n = final_states(plan, y_np, c_np, h0, c0)
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
    plan = walk_plan(batch_sizes, N, B, reverse, G * dtype.itemsize)
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

    dh_np, dh_t = views(dh, walk), torch_views(dh, walk)
    add_final_grad(plan, dh_np, grad_hn)
    dg_t = torch_views(d_gates, walk)
    d3_np = views(d_gates.reshape(N, 4, H)[:, :3], walk)
    do_np = views(d_gates[:, 3 * H :], walk)
    f_np, a_np = views(gates[:, H : 2 * H], walk), views(a_coef, walk)
    w_t, d_h0_t, dr_t = torch.from_numpy(w_hh), torch.from_numpy(d_h0), torch.from_numpy(dr_buf)
    w_hr_t = None if w_hr is None else torch.from_numpy(w_hr)

    # Rows that are ever active receive d_h0 from the step that starts them (accumulated onto
    # zero); rows that never are keep grad_hn.
    d_h0[: max(walk.sizes, default=0)] = 0
    sizes = ordered(walk.sizes, reverse)
    states = {n: (dc[:n], dc[:n, None, :], tmp[:n]) for n in set(walk.sizes)}
    if w_hr_t is None:
        drs = ordered(dh_np, reverse)
        proj_in = proj_out = itertools.repeat(None)
    else:
        drs = [dr_buf[:n] for n in sizes]
        proj_in, proj_out = ordered(dh_t, reverse), [dr_t[:n] for n in sizes]
    # As in the forward: all views first, so the loop body is only the math.
    args = list(zip(drs, proj_in, proj_out, *(ordered(v, reverse) for v in (a_np, d3_np, do_np, f_np)),
                    [states[n] for n in sizes], flows(walk, dh_t, d_h0_t, dg_t)))

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
        d_w_hh = recurrent_weight_grad(d_gates, y, h0, plan.pieces)
        d_w_hr = None
        if r is not None:
            d_w_hr = (torch.from_numpy(dh).T @ torch.from_numpy(r)).numpy()
    return RecurrenceGrads(d_gates, d_h0, dc, d_w_hh, d_w_hr)
