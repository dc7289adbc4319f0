"""Persistent forward: one launch for the whole sequence.

Each program owns BLOCK_B batch rows and the whole hidden and output width, loads W_hh (and W_hr)
once and keeps it on chip while it loops over time, with h and c as loop-carried fp32 registers:
no per-step launch, no state round trip through memory. Works on the padded layout [T, B, ...]
with per-row lengths (a row is active at step t when t < length[b]): addresses are plain
arithmetic, so packed input is scattered to padded rows first (torch, in recurrence.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from torch_lstm_ext.triton_kernels.buffers import kernel_output
from torch_lstm_ext.triton_kernels.tiles import dot_acc, load_rows, store_gates, tanh
from torch_lstm_ext.triton_kernels.tuning import dot_dtype, feature_block

# Small batch tiles leave more programs for the SMs; 16 is tl.dot's minimum M.
BLOCK_B = 16
# 8 warps spread the on-chip weights over 256 threads (dispatch.py's budgets assume it).
NUM_WARPS = 8


@triton.jit
def _weight_t(w_ptr, DOT_DTYPE: tl.constexpr, first_row, rows_of_t, cols_of_t, num_rows, width):
    """W[first_row + rows_of_t, cols_of_t] transposed: [len(cols_of_t), len(rows_of_t)] in DOT_DTYPE."""
    mask = (cols_of_t < width)[:, None] & (rows_of_t < num_rows)[None, :]
    ptrs = w_ptr + (first_row + rows_of_t)[None, :] * width + cols_of_t[:, None]
    # Held in the dot's operand dtype for the whole loop: half the registers for fp16 / bf16.
    return tl.load(ptrs, mask=mask, other=0.0).to(DOT_DTYPE)


@triton.jit
def lstm_persistent_forward_kernel(
    gx_ptr, w_hh_ptr, w_hr_ptr, h0_ptr, c0_ptr, lengths_ptr,
    y_ptr, gates_ptr, cells_ptr, h_n_ptr, c_n_ptr,
    T, B, H: tl.constexpr, P: tl.constexpr,
    REVERSE: tl.constexpr, HAS_PROJ: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Padded: gx [T*B, 4H], y [T*B, P], gates [T*B, 4H], cells [T*B, H]; rows past a sequence's
    length are left unwritten. w_hh [4H, P], w_hr [P, H], h0/h_n [B, P], c0/c_n [B, H], lengths [B].
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
        i = tl.sigmoid(dot_acc(h, w_i, zero, DOT_DTYPE) + load_rows(gx_ptr, out_rows, hs, G, mask))
        f = tl.sigmoid(dot_acc(h, w_f, zero, DOT_DTYPE) + load_rows(gx_ptr, out_rows, H + hs, G, mask))
        g = tanh(dot_acc(h, w_g, zero, DOT_DTYPE) + load_rows(gx_ptr, out_rows, 2 * H + hs, G, mask))
        o = tl.sigmoid(dot_acc(h, w_o, zero, DOT_DTYPE) + load_rows(gx_ptr, out_rows, 3 * H + hs, G, mask))
        c_new = f * c + i * g
        r = o * tanh(c_new)
        if HAS_PROJ:
            h_new = dot_acc(r, w_r, tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32), DOT_DTYPE)
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
    lengths: Tensor, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Padded in and out: gates_x [T*B, 4H] -> y [T*B, P] (storage dtype), h_n [B, P], c_n [B, H],
    gates [T*B, 4H] and cells [T*B, H] (float32). lengths int32 [B] on the device; all contiguous.
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
        gx_ptr=gates_x, w_hh_ptr=w_hh, w_hr_ptr=w_hr if w_hr is not None else w_hh, h0_ptr=h0,
        c0_ptr=c0, lengths_ptr=lengths,
        y_ptr=y, gates_ptr=gates, cells_ptr=cells, h_n_ptr=h_n, c_n_ptr=c_n, T=T, B=B, H=H, P=P,
        REVERSE=reverse, HAS_PROJ=w_hr is not None, DOT_DTYPE=dot_dtype(gates_x.dtype),
        BLOCK_B=BLOCK_B, BLOCK_H=feature_block(H), BLOCK_P=feature_block(P),
        num_warps=NUM_WARPS, num_stages=1,
    )
    return y, h_n, c_n, gates, cells
