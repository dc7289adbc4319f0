"""Persistent forward: one launch for the whole sequence.

Each program owns BLOCK_B batch rows and the whole hidden and output width, loads W_hh (and W_hr)
once and keeps it on chip while it loops over time, with h and c as loop-carried fp32 registers:
no per-step launch, no state round trip through memory. Works on the padded layout [T, B, ...]
with per-row lengths (a row is active at step t when t < length[b]): addresses are plain
arithmetic, so packed input is scattered to padded rows first (torch, in recurrence.py).

int8 weights (weight_quantization.py) are converted to DOT_DTYPE as they are loaded, so the
on-chip weights take the bytes of the dot dtype (dispatch.py's budget for that dtype holds), and
each step's dots are multiplied column by column by the rows' scales, loaded once beside them
(W_HH_SCALED, W_HR_SCALED). Float16 weights convert like any (tiles.weight_operand_dtype).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from torch_lstm_ext.triton_kernels.buffers import kernel_output
from torch_lstm_ext.triton_kernels.tiles import (
    dot_acc,
    load_rows,
    row_scales,
    store_gates,
    tanh,
    weight_dot_dtype,
)
from torch_lstm_ext.triton_kernels.tuning import feature_block

# Small batch tiles leave more programs for the SMs; 16 is tl.dot's minimum M.
BLOCK_B = 16
# 8 warps spread the on-chip weights over 256 threads (dispatch.py's budgets assume it).
NUM_WARPS = 8


@triton.jit
def _weight_t(w_ptr, DOT_DTYPE: tl.constexpr, first_row, rows_of_t, cols_of_t, num_rows, width):
    """W[first_row + rows_of_t, cols_of_t] transposed: [len(cols_of_t), len(rows_of_t)] in DOT_DTYPE
    (W float or int8)."""
    mask = (cols_of_t < width)[:, None] & (rows_of_t < num_rows)[None, :]
    ptrs = w_ptr + (first_row + rows_of_t)[None, :] * width + cols_of_t[:, None]
    # Held in the dot's operand dtype for the whole loop: half the registers for fp16 / bf16.
    return tl.load(ptrs, mask=mask, other=0.0).to(DOT_DTYPE)


@triton.jit
def lstm_persistent_forward_kernel(
    gx_ptr, w_hh_ptr, w_hr_ptr, w_hh_scale_ptr, w_hr_scale_ptr, h0_ptr, c0_ptr, lengths_ptr,
    y_ptr, gates_ptr, cells_ptr, h_n_ptr, c_n_ptr,
    T, B, H: tl.constexpr, P: tl.constexpr,
    REVERSE: tl.constexpr, HAS_PROJ: tl.constexpr, W_HH_SCALED: tl.constexpr, W_HR_SCALED: tl.constexpr,
    DOT_DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Padded: gx [T*B, 4H], y [T*B, P], gates [T*B, 4H], cells [T*B, H]; rows past a sequence's
    length are left unwritten. w_hh [4H, P], w_hr [P, H], h0/h_n [B, P], c0/c_n [B, H], lengths [B].
    W_HH_SCALED / W_HR_SCALED: w_hh / w_hr hold int8 values, row r scaled by w_hh_scale[r] ([4H])
    / w_hr_scale[r] ([P]); the scale pointers are placeholders, never read, otherwise.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hs = tl.arange(0, BLOCK_H)
    ps = tl.arange(0, BLOCK_P)
    row_ok = rows < B
    lengths = tl.load(lengths_ptr + rows, mask=row_ok, other=0)
    # W_hh^T gate blocks [BLOCK_P, BLOCK_H] and W_hr^T [BLOCK_H, BLOCK_P], on chip for all steps.
    w_i = _weight_t(w_hh_ptr, DOT_DTYPE, 0, hs, ps, H, P)
    w_f = _weight_t(w_hh_ptr, DOT_DTYPE, H, hs, ps, H, P)
    w_g = _weight_t(w_hh_ptr, DOT_DTYPE, 2 * H, hs, ps, H, P)
    w_o = _weight_t(w_hh_ptr, DOT_DTYPE, 3 * H, hs, ps, H, P)
    if HAS_PROJ:
        w_r = _weight_t(w_hr_ptr, DOT_DTYPE, 0, ps, hs, P, H)
    # The int8 rows' scales, fp32 [1, BLOCK_H] per gate and [1, BLOCK_P]: they multiply the dots.
    if W_HH_SCALED:
        h_ok = hs < H
        s_i = row_scales(w_hh_scale_ptr, hs, h_ok)
        s_f = row_scales(w_hh_scale_ptr, H + hs, h_ok)
        s_g = row_scales(w_hh_scale_ptr, 2 * H + hs, h_ok)
        s_o = row_scales(w_hh_scale_ptr, 3 * H + hs, h_ok)
    if W_HR_SCALED:
        s_r = row_scales(w_hr_scale_ptr, ps, ps < P)
    state_rows = rows.to(tl.int64)
    h_mask = row_ok[:, None] & (hs < H)[None, :]
    p_mask = row_ok[:, None] & (ps < P)[None, :]
    h = load_rows(h0_ptr, state_rows, ps, P, p_mask)
    c = load_rows(c0_ptr, state_rows, hs, H, h_mask)
    G = 4 * H
    # A while loop: the interpreter's range() over a runtime bound calls int() on a 1-element
    # array, which NumPy >= 2.4 refuses. (Feature loops have constexpr bounds, so range is fine.)
    s = 0
    while s < T:
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        active = row_ok & (t < lengths)
        out_rows = (t * B + rows).to(tl.int64)
        mask = active[:, None] & (hs < H)[None, :]
        zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        a_i = dot_acc(h, w_i, zero, DOT_DTYPE)
        a_f = dot_acc(h, w_f, zero, DOT_DTYPE)
        a_g = dot_acc(h, w_g, zero, DOT_DTYPE)
        a_o = dot_acc(h, w_o, zero, DOT_DTYPE)
        if W_HH_SCALED:
            a_i *= s_i
            a_f *= s_f
            a_g *= s_g
            a_o *= s_o
        i = tl.sigmoid(a_i + load_rows(gx_ptr, out_rows, hs, G, mask))
        f = tl.sigmoid(a_f + load_rows(gx_ptr, out_rows, H + hs, G, mask))
        g = tanh(a_g + load_rows(gx_ptr, out_rows, 2 * H + hs, G, mask))
        o = tl.sigmoid(a_o + load_rows(gx_ptr, out_rows, 3 * H + hs, G, mask))
        c_new = f * c + i * g
        r = o * tanh(c_new)
        if HAS_PROJ:
            h_new = dot_acc(r, w_r, tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32), DOT_DTYPE)
            if W_HR_SCALED:
                h_new *= s_r
        else:
            h_new = r
        store_gates(gates_ptr, out_rows, hs, i, f, g, o, mask, H)
        tl.store(cells_ptr + out_rows[:, None] * H + hs[None, :], c_new, mask=mask)
        y_mask = active[:, None] & (ps < P)[None, :]
        y_ptrs = y_ptr + out_rows[:, None] * P + ps[None, :]
        tl.store(y_ptrs, h_new.to(y_ptr.dtype.element_ty), mask=y_mask)
        # Rounded like the per-step kernel, which reads h back from y.
        h_new = h_new.to(y_ptr.dtype.element_ty).to(tl.float32)
        c = tl.where(active[:, None], c_new, c)
        h = tl.where(active[:, None], h_new, h)
        s += 1
    tl.store(h_n_ptr + state_rows[:, None] * P + ps[None, :], h.to(h_n_ptr.dtype.element_ty), mask=p_mask)
    tl.store(c_n_ptr + state_rows[:, None] * H + hs[None, :], c.to(c_n_ptr.dtype.element_ty), mask=h_mask)


def persistent_forward(
    gates_x: Tensor, w_hh: Tensor, w_hr: Tensor | None, h0: Tensor, c0: Tensor,
    lengths: Tensor, reverse: bool, w_hh_scale: Tensor | None = None, w_hr_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Padded in and out: gates_x [T*B, 4H] -> y [T*B, P] (storage dtype), h_n [B, P], c_n [B, H],
    gates [T*B, 4H] and cells [T*B, H] (float32). lengths int32 [B] on the device; all contiguous.
    w_hh_scale [4H] / w_hr_scale [P]: the per-row scales of int8 weights, None for float weights.
    """
    rows, G = gates_x.shape
    H = G // 4
    B, P = h0.shape
    T = rows // B if B else 0
    device = gates_x.device
    y = kernel_output((rows, P), gates_x.dtype, device)
    gates = kernel_output((rows, G), torch.float32, device)
    cells = kernel_output((rows, H), torch.float32, device)
    h_n = kernel_output((B, P), h0.dtype, device)
    c_n = kernel_output((B, H), c0.dtype, device)
    lstm_persistent_forward_kernel[(triton.cdiv(B, BLOCK_B),)](
        gx_ptr=gates_x, w_hh_ptr=w_hh, w_hr_ptr=w_hr if w_hr is not None else w_hh,
        w_hh_scale_ptr=w_hh if w_hh_scale is None else w_hh_scale,
        w_hr_scale_ptr=w_hh if w_hr_scale is None else w_hr_scale, h0_ptr=h0, c0_ptr=c0, lengths_ptr=lengths,
        y_ptr=y, gates_ptr=gates, cells_ptr=cells, h_n_ptr=h_n, c_n_ptr=c_n, T=T, B=B, H=H, P=P,
        REVERSE=reverse, HAS_PROJ=w_hr is not None, W_HH_SCALED=w_hh_scale is not None,
        W_HR_SCALED=w_hr_scale is not None, DOT_DTYPE=weight_dot_dtype(gates_x.dtype, w_hh, w_hr),
        BLOCK_B=BLOCK_B, BLOCK_H=feature_block(H), BLOCK_P=feature_block(P),
        num_warps=NUM_WARPS, num_stages=1,
    )
    return y, h_n, c_n, gates, cells
