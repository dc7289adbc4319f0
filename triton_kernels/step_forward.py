"""Per-step forward: one fused launch per time step (two with a projection).

Launch for step t, grid (batch tiles, hidden tiles): the recurrent GEMM h_{t-1} @ W_hh^T for the
four gates of its hidden tile (fp32 accumulators), then in the epilogue the gate activations, the
cell update and r = o * tanh(c). h_{t-1} is read from y's rows of the previous step (or h0 for
rows starting here), so y doubles as the state buffer and no program overwrites what another
still reads. Without projection r is h_t and goes straight to y; with one, a second launch
projects r (kept in a [B, H] scratch) through W_hr into y, as the projection needs whole rows of
r, which the first launch splits across programs.

int8 weights (weight_quantization.py): both launches load the int8 values, convert them to fp32
like any weight, and multiply each dot column by its row's scale after the reduction
(tiles.scale_columns, flag W_SCALED); float16 weights need no scale.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from torch_lstm_ext.triton_kernels.buffers import kernel_output
from torch_lstm_ext.triton_kernels.layout import Layout
from torch_lstm_ext.triton_kernels.tiles import (
    dot_acc,
    load_rows,
    load_state,
    project_tile,
    scale_columns,
    store_gates,
    tanh,
    weight_dot_dtype,
)
from torch_lstm_ext.triton_kernels.tuning import STEP_CONFIGS, batch_block, step_grid


@triton.jit
def _gate_dot(h, w_ptr, gate_rows, ks, P, col_ok, acc, DOT_DTYPE: tl.constexpr):
    """acc + h @ W[gate_rows, ks]^T; h [BLOCK_B, BLOCK_K], W row-major [4H, P] (float or int8)."""
    mask = (ks < P)[:, None] & col_ok[None, :]
    w = tl.load(w_ptr + gate_rows[None, :] * P + ks[:, None], mask=mask, other=0.0).to(tl.float32)
    return dot_acc(h, w, acc, DOT_DTYPE)


# Step scalars change every launch: not specialising on them keeps one compiled kernel.
@triton.autotune(configs=STEP_CONFIGS, key=["H", "P", "BLOCK_B"])
@triton.jit(do_not_specialize=["offset", "n", "prev_offset", "prev_n"])
def lstm_step_forward_kernel(
    gx_ptr, w_hh_ptr, w_hh_scale_ptr, h0_ptr, c0_ptr,
    y_ptr, gates_ptr, cells_ptr, r_ptr,
    offset, n, prev_offset, prev_n, H: tl.constexpr, P: tl.constexpr,
    HAS_PROJ: tl.constexpr, W_SCALED: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Rows offset..offset+n-1 of y [N, P], gates [N, 4H], cells [N, H] (or r [B, H] with HAS_PROJ).

    gx [N, 4H], w_hh [4H, P], h0 [B, P], c0 [B, H]; the previous step's rows start at prev_offset
    and its first prev_n batch rows continue here. W_SCALED: w_hh holds int8 values whose row r
    is scaled by w_hh_scale[r] ([4H]; a placeholder, never read, otherwise).
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < H
    acc_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, P, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        h = load_state(y_ptr, h0_ptr, prev_offset, prev_n, rows, ks, n, P)
        acc_i = _gate_dot(h, w_hh_ptr, cols, ks, P, col_ok, acc_i, DOT_DTYPE)
        acc_f = _gate_dot(h, w_hh_ptr, H + cols, ks, P, col_ok, acc_f, DOT_DTYPE)
        acc_g = _gate_dot(h, w_hh_ptr, 2 * H + cols, ks, P, col_ok, acc_g, DOT_DTYPE)
        acc_o = _gate_dot(h, w_hh_ptr, 3 * H + cols, ks, P, col_ok, acc_o, DOT_DTYPE)
    acc_i = scale_columns(acc_i, w_hh_scale_ptr, cols, col_ok, W_SCALED)
    acc_f = scale_columns(acc_f, w_hh_scale_ptr, H + cols, col_ok, W_SCALED)
    acc_g = scale_columns(acc_g, w_hh_scale_ptr, 2 * H + cols, col_ok, W_SCALED)
    acc_o = scale_columns(acc_o, w_hh_scale_ptr, 3 * H + cols, col_ok, W_SCALED)

    out_rows = (offset + rows).to(tl.int64)
    mask = (rows < n)[:, None] & col_ok[None, :]
    G = 4 * H
    i = tl.sigmoid(acc_i + load_rows(gx_ptr, out_rows, cols, G, mask))
    f = tl.sigmoid(acc_f + load_rows(gx_ptr, out_rows, H + cols, G, mask))
    g = tanh(acc_g + load_rows(gx_ptr, out_rows, 2 * H + cols, G, mask))
    o = tl.sigmoid(acc_o + load_rows(gx_ptr, out_rows, 3 * H + cols, G, mask))
    c = f * load_state(cells_ptr, c0_ptr, prev_offset, prev_n, rows, cols, n, H) + i * g
    r = o * tanh(c)

    store_gates(gates_ptr, out_rows, cols, i, f, g, o, mask, H)
    tl.store(cells_ptr + out_rows[:, None] * H + cols[None, :], c, mask=mask)
    if HAS_PROJ:
        r_ptrs = r_ptr + rows.to(tl.int64)[:, None] * H + cols[None, :]
        tl.store(r_ptrs, r.to(r_ptr.dtype.element_ty), mask=mask)
    else:
        y_ptrs = y_ptr + out_rows[:, None] * P + cols[None, :]
        tl.store(y_ptrs, r.to(y_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=STEP_CONFIGS, key=["H", "P", "BLOCK_B"])
@triton.jit(do_not_specialize=["offset", "n"])
def lstm_step_project_kernel(
    r_ptr, w_hr_ptr, w_hr_scale_ptr, y_ptr, offset, n, H: tl.constexpr, P: tl.constexpr,
    W_SCALED: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[offset + b, p] = sum_j r[b, j] * w_hr[p, j] for b < n; r [B, H], w_hr [P, H], y [N, P].

    BLOCK_H tiles the output axis P here (the config is shared with the gate kernel). W_SCALED:
    w_hr holds int8 values, row p scaled by w_hr_scale[p] ([P]; a placeholder otherwise).
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < n
    col_ok = cols < P
    acc = project_tile(r_ptr, w_hr_ptr, rows, cols, row_ok, col_ok, H, DOT_DTYPE, BLOCK_B, BLOCK_H, BLOCK_K)
    acc = scale_columns(acc, w_hr_scale_ptr, cols, col_ok, W_SCALED)
    out_rows = (offset + rows).to(tl.int64)
    y_ptrs = y_ptr + out_rows[:, None] * P + cols[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def step_forward(
    gates_x: Tensor, w_hh: Tensor, w_hr: Tensor | None, h0: Tensor, c0: Tensor, layout: Layout,
    w_hh_scale: Tensor | None = None, w_hr_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run every step: y [N, P] (storage dtype), gates [N, 4H] and cells [N, H] (float32).

    All tensors contiguous; gates_x [N, 4H], w_hh [4H, P], w_hr [P, H] or None, h0 [B, P], c0 [B, H];
    w_hh_scale [4H] / w_hr_scale [P]: the per-row scales of int8 weights, None for float weights.
    """
    N, G = gates_x.shape
    H = G // 4
    B, P = h0.shape
    device = gates_x.device
    y = kernel_output((N, P), gates_x.dtype, device)
    gates = kernel_output((N, G), torch.float32, device)
    cells = kernel_output((N, H), torch.float32, device)
    # The projection's input, one step at a time; in the storage dtype, the dot's operand dtype.
    r = kernel_output((B, H), gates_x.dtype, device) if w_hr is not None else y
    block_b = batch_block(B)
    dtype = weight_dot_dtype(gates_x.dtype, w_hh)
    for step in layout.steps():
        prev_offset = max(step.prev_offset, 0)
        lstm_step_forward_kernel[step_grid(step.n, block_b, H)](
            gx_ptr=gates_x, w_hh_ptr=w_hh, w_hh_scale_ptr=w_hh if w_hh_scale is None else w_hh_scale,
            h0_ptr=h0, c0_ptr=c0, y_ptr=y, gates_ptr=gates, cells_ptr=cells, r_ptr=r,
            offset=step.offset, n=step.n, prev_offset=prev_offset, prev_n=step.prev_n, H=H, P=P,
            HAS_PROJ=w_hr is not None, W_SCALED=w_hh_scale is not None, DOT_DTYPE=dtype, BLOCK_B=block_b,
        )
        if w_hr is not None:
            lstm_step_project_kernel[step_grid(step.n, block_b, P)](
                r_ptr=r, w_hr_ptr=w_hr, w_hr_scale_ptr=w_hr if w_hr_scale is None else w_hr_scale, y_ptr=y,
                offset=step.offset, n=step.n, H=H, P=P, W_SCALED=w_hr_scale is not None,
                DOT_DTYPE=weight_dot_dtype(gates_x.dtype, w_hr), BLOCK_B=block_b,
            )
    return y, gates, cells
