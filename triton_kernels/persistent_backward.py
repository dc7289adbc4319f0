"""Persistent backward: one launch for the whole sequence, last step first.

The mirror of persistent_forward.py: each program owns BLOCK_B batch rows, keeps W_hh (and W_hr)
on chip and carries dL/dh and dL/dc in fp32 registers across time, on the padded layout with
per-row lengths. It writes the gate gradients (and dL/dh_t for dW_hr when projecting) for the
whole-sequence weight GEMMs in recurrence.py, and the gradients reaching h0 and c0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from torch_lstm_ext.triton_kernels.buffers import kernel_output
from torch_lstm_ext.triton_kernels.persistent_forward import BLOCK_B, NUM_WARPS
from torch_lstm_ext.triton_kernels.tiles import dot_acc, load_rows, tanh
from torch_lstm_ext.triton_kernels.tuning import dot_dtype, feature_block


@triton.jit
def _weight(w_ptr, DOT_DTYPE: tl.constexpr, first_row, rows, cols, num_rows, width):
    """W[first_row + rows, cols] of a row-major [*, width] matrix: [len(rows), len(cols)] in DOT_DTYPE."""
    mask = (rows < num_rows)[:, None] & (cols < width)[None, :]
    ptrs = w_ptr + (first_row + rows)[:, None] * width + cols[None, :]
    # Held in the dot's operand dtype for the whole loop: half the registers for fp16 / bf16.
    return tl.load(ptrs, mask=mask, other=0.0).to(DOT_DTYPE)


@triton.jit
def lstm_persistent_backward_kernel(
    grad_y_ptr, grad_hn_ptr, grad_cn_ptr, w_hh_ptr, w_hr_ptr, c0_ptr, lengths_ptr,
    gates_ptr, cells_ptr,
    d_gates_ptr, d_out_ptr, d_h0_ptr, d_c0_ptr,
    T, B, H: tl.constexpr, P: tl.constexpr,
    REVERSE: tl.constexpr, HAS_PROJ: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Padded: grad_y [T*B, P], gates [T*B, 4H], cells [T*B, H] -> d_gates [T*B, 4H] and, with
    HAS_PROJ, d_out [T*B, P] (dL/dh_t); rows past a sequence's length are left unwritten.
    grad_hn/d_h0 [B, P], grad_cn/d_c0/c0 [B, H], w_hh [4H, P], w_hr [P, H], lengths [B].
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hs = tl.arange(0, BLOCK_H)
    ps = tl.arange(0, BLOCK_P)
    row_ok = rows < B
    lengths = tl.load(lengths_ptr + rows, mask=row_ok, other=0)
    # W_hh gate blocks [BLOCK_H, BLOCK_P] and W_hr [BLOCK_P, BLOCK_H], on chip for all steps.
    w_i = _weight(w_hh_ptr, DOT_DTYPE, 0, hs, ps, H, P)
    w_f = _weight(w_hh_ptr, DOT_DTYPE, H, hs, ps, H, P)
    w_g = _weight(w_hh_ptr, DOT_DTYPE, 2 * H, hs, ps, H, P)
    w_o = _weight(w_hh_ptr, DOT_DTYPE, 3 * H, hs, ps, H, P)
    if HAS_PROJ:
        w_r = _weight(w_hr_ptr, DOT_DTYPE, 0, ps, hs, P, H)
    state_rows = rows.to(tl.int64)
    h_mask = row_ok[:, None] & (hs < H)[None, :]
    p_mask = row_ok[:, None] & (ps < P)[None, :]
    dh = load_rows(grad_hn_ptr, state_rows, ps, P, p_mask)
    dc = load_rows(grad_cn_ptr, state_rows, hs, H, h_mask)
    c0 = load_rows(c0_ptr, state_rows, hs, H, h_mask)
    G = 4 * H
    # A while loop: the interpreter's range() over a runtime bound calls int() on a 1-element
    # array, which NumPy >= 2.4 refuses. (Feature loops have constexpr bounds, so range is fine.)
    s = 0
    while s < T:
        # The forward's processing order, backwards; t_prev is the step before t in the forward.
        if REVERSE:
            t = s
            t_prev = t + 1
            has_prev = t_prev < lengths
        else:
            t = T - 1 - s
            t_prev = t - 1
            has_prev = (rows * 0 + t) > 0
        active = row_ok & (t < lengths)
        out_rows = (t * B + rows).to(tl.int64)
        prev_rows = (t_prev * B + rows).to(tl.int64)
        mask = active[:, None] & (hs < H)[None, :]
        y_mask = active[:, None] & (ps < P)[None, :]
        dh_t = dh + load_rows(grad_y_ptr, out_rows, ps, P, y_mask)
        if HAS_PROJ:
            tl.store(d_out_ptr + out_rows[:, None] * P + ps[None, :], dh_t, mask=y_mask)
            dr = dot_acc(dh_t, w_r, tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32), DOT_DTYPE)
        else:
            dr = dh_t
        i = load_rows(gates_ptr, out_rows, hs, G, mask)
        f = load_rows(gates_ptr, out_rows, H + hs, G, mask)
        g = load_rows(gates_ptr, out_rows, 2 * H + hs, G, mask)
        o = load_rows(gates_ptr, out_rows, 3 * H + hs, G, mask)
        tanh_c = tanh(load_rows(cells_ptr, out_rows, hs, H, mask))
        c_prev = load_rows(cells_ptr, prev_rows, hs, H, mask & has_prev[:, None])
        c_prev = tl.where(has_prev[:, None], c_prev, c0)
        dc_t = dc + dr * o * (1.0 - tanh_c * tanh_c)

        # Rounded to the storage dtype first, as the per-step kernel reads them back from there.
        out_dtype = d_gates_ptr.dtype.element_ty
        d_i = (dc_t * g * i * (1.0 - i)).to(out_dtype).to(tl.float32)
        d_f = (dc_t * c_prev * f * (1.0 - f)).to(out_dtype).to(tl.float32)
        d_g = (dc_t * i * (1.0 - g * g)).to(out_dtype).to(tl.float32)
        d_o = (dr * tanh_c * o * (1.0 - o)).to(out_dtype).to(tl.float32)
        d_gate_ptrs = d_gates_ptr + out_rows[:, None] * G + hs[None, :]
        tl.store(d_gate_ptrs, d_i, mask=mask)
        tl.store(d_gate_ptrs + H, d_f, mask=mask)
        tl.store(d_gate_ptrs + 2 * H, d_g, mask=mask)
        tl.store(d_gate_ptrs + 3 * H, d_o, mask=mask)

        dh_new = dot_acc(d_i, w_i, tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32), DOT_DTYPE)
        dh_new = dot_acc(d_f, w_f, dh_new, DOT_DTYPE)
        dh_new = dot_acc(d_g, w_g, dh_new, DOT_DTYPE)
        dh_new = dot_acc(d_o, w_o, dh_new, DOT_DTYPE)
        dh = tl.where(active[:, None], dh_new, dh)
        dc = tl.where(active[:, None], dc_t * f, dc)
        s += 1
    tl.store(d_h0_ptr + state_rows[:, None] * P + ps[None, :], dh.to(d_h0_ptr.dtype.element_ty), mask=p_mask)
    tl.store(d_c0_ptr + state_rows[:, None] * H + hs[None, :], dc.to(d_c0_ptr.dtype.element_ty), mask=h_mask)


def persistent_backward(
    grad_y: Tensor, grad_hn: Tensor, grad_cn: Tensor, w_hh: Tensor, w_hr: Tensor | None,
    c0: Tensor, gates: Tensor, cells: Tensor, lengths: Tensor, reverse: bool,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Padded in and out: d_gates [T*B, 4H] (grad_y's dtype), d_out [T*B, P] fp32 (projection
    only, else None), d_h0 [B, P] and d_c0 [B, H] (h0's / c0's dtype: grad_hn's / grad_cn's here).
    lengths int32 [B] on the device; all contiguous.
    """
    rows, P = grad_y.shape
    G = gates.shape[1]
    H = G // 4
    B = grad_hn.shape[0]
    T = rows // B if B else 0
    device = grad_y.device
    d_gates = kernel_output((rows, G), grad_y.dtype, device)
    d_out = kernel_output((rows, P), torch.float32, device) if w_hr is not None else None
    d_h0 = kernel_output((B, P), grad_hn.dtype, device)
    d_c0 = kernel_output((B, H), grad_cn.dtype, device)
    lstm_persistent_backward_kernel[(triton.cdiv(B, BLOCK_B),)](
        grad_y_ptr=grad_y, grad_hn_ptr=grad_hn, grad_cn_ptr=grad_cn, w_hh_ptr=w_hh,
        w_hr_ptr=w_hr if w_hr is not None else w_hh, c0_ptr=c0, lengths_ptr=lengths,
        gates_ptr=gates, cells_ptr=cells,
        d_gates_ptr=d_gates, d_out_ptr=d_out if d_out is not None else d_gates, d_h0_ptr=d_h0,
        d_c0_ptr=d_c0, T=T, B=B, H=H, P=P,
        REVERSE=reverse, HAS_PROJ=w_hr is not None, DOT_DTYPE=dot_dtype(grad_y.dtype),
        BLOCK_B=BLOCK_B, BLOCK_H=feature_block(H), BLOCK_P=feature_block(P),
        num_warps=NUM_WARPS, num_stages=1,
    )
    return d_gates, d_out, d_h0, d_c0
