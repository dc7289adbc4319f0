"""Per-step backward: one fused launch per time step (two with a projection), last step first.

Launch for step t, grid (batch tiles, hidden tiles): dL/dh_t is grad_y_t plus the recurrent GEMM
d_gates_{t+1} @ W_hh (read from the rows the previous launch wrote, or grad_hn for sequences
that end at t), then the pointwise gate backward and the dc carry (a [B, H] fp32 state each
program updates in place, element for element). With a projection, dL/dh_t needs whole rows of
d_gates_{t+1}, so a first launch writes dL/dh_t into d_out [N, P] and the gate launch projects it
back through W_hr. dW_hh and dW_hr are left to one GEMM over the whole sequence (recurrence.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from torch_lstm_ext.triton_kernels.buffers import kernel_output
from torch_lstm_ext.triton_kernels.layout import Layout
from torch_lstm_ext.triton_kernels.tiles import dot_acc, load_rows, load_state, tanh
from torch_lstm_ext.triton_kernels.tuning import STEP_CONFIGS, batch_block, dot_dtype, step_grid


@triton.jit
def _gate_grad_dot(d_gates_ptr, w_hh_ptr, later_rows, carried, first, ks, cols, H, P, acc,
                   DOT_DTYPE: tl.constexpr):
    """acc + d_gates[later_rows, first + ks] @ W_hh[first + ks, cols] within one gate block of 4H."""
    k_ok = ks < H
    d_gates = load_rows(d_gates_ptr, later_rows, first + ks, 4 * H, carried[:, None] & k_ok[None, :])
    w_mask = k_ok[:, None] & (cols < P)[None, :]
    w = tl.load(w_hh_ptr + (first + ks)[:, None] * P + cols[None, :], mask=w_mask, other=0.0)
    return dot_acc(d_gates, w.to(tl.float32), acc, DOT_DTYPE)


@triton.jit
def grad_h(
    grad_y_ptr, grad_hn_ptr, d_gates_ptr, w_hh_ptr, offset, n, later_offset, later_n,
    rows, cols, H: tl.constexpr, P: tl.constexpr,
    DOT_DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dL/dh_t [BLOCK_B, BLOCK_C] fp32 for the batch rows `rows` and the columns `cols` of P.

    grad_y [N, P]; rows b < later_n continue into the step processed after this one in the
    forward (rows from later_offset), so their gradient is d_gates_later @ W_hh (d_gates [N, 4H],
    w_hh [4H, P]); the other active rows end here and take grad_hn [B, P].
    """
    col_ok = cols < P
    carried = rows < later_n
    later_rows = (later_offset + rows).to(tl.int64)
    acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    # Per gate block of 4H rather than over 4H at once: the interpreter turns 4 * H into a
    # tensor, which its range() cannot take.
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        for gate in tl.static_range(4):
            acc = _gate_grad_dot(d_gates_ptr, w_hh_ptr, later_rows, carried, gate * H, ks, cols, H, P,
                                 acc, DOT_DTYPE)
    row_ok = rows < n
    ending = (row_ok & ~carried)[:, None] & col_ok[None, :]
    grad_end = load_rows(grad_hn_ptr, rows.to(tl.int64), cols, P, ending)
    grad_out = load_rows(grad_y_ptr, (offset + rows).to(tl.int64), cols, P, row_ok[:, None] & col_ok[None, :])
    return acc + grad_end + grad_out


@triton.autotune(configs=STEP_CONFIGS, key=["H", "P", "BLOCK_B"])
@triton.jit(do_not_specialize=["offset", "n", "later_offset", "later_n"])
def lstm_step_grad_h_kernel(
    grad_y_ptr, grad_hn_ptr, d_gates_ptr, w_hh_ptr, d_out_ptr,
    offset, n, later_offset, later_n, H: tl.constexpr, P: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """d_out[offset + b] = dL/dh_t [N, P] fp32 for b < n (projection only; BLOCK_H tiles P)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    dh = grad_h(grad_y_ptr, grad_hn_ptr, d_gates_ptr, w_hh_ptr, offset, n, later_offset, later_n,
                 rows, cols, H, P, DOT_DTYPE, BLOCK_B, BLOCK_H, BLOCK_K)
    out_rows = (offset + rows).to(tl.int64)
    mask = (rows < n)[:, None] & (cols < P)[None, :]
    tl.store(d_out_ptr + out_rows[:, None] * P + cols[None, :], dh, mask=mask)


# dc is updated in place: the autotuner must restore it between its timing runs.
@triton.autotune(configs=STEP_CONFIGS, key=["H", "P", "BLOCK_B"], restore_value=["dc_ptr"])
@triton.jit(do_not_specialize=["offset", "n", "prev_offset", "prev_n", "later_offset", "later_n"])
def lstm_step_backward_kernel(
    grad_y_ptr, grad_hn_ptr, d_out_ptr, w_hh_ptr, w_hr_ptr, c0_ptr, gates_ptr, cells_ptr,
    d_gates_ptr, dc_ptr,
    offset, n, prev_offset, prev_n, later_offset, later_n, H: tl.constexpr, P: tl.constexpr,
    HAS_PROJ: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """d_gates[offset + b] [N, 4H] for b < n, and dc [B, H] fp32 carried to the previous step.

    gates [N, 4H] and cells [N, H] as the forward saved them; the previous step (forward order)
    starts at prev_offset with prev_n rows continuing here (c_{t-1} from cells, else c0 [B, H]).
    With HAS_PROJ, dL/dh_t comes from d_out [N, P] through w_hr [P, H]; without, it is computed
    here (P == H).
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < n
    col_ok = cols < H
    mask = row_ok[:, None] & col_ok[None, :]
    out_rows = (offset + rows).to(tl.int64)
    if HAS_PROJ:
        dr = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        for k0 in range(0, P, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < P
            dh = load_rows(d_out_ptr, out_rows, ks, P, row_ok[:, None] & k_ok[None, :])
            w_mask = k_ok[:, None] & col_ok[None, :]
            w = tl.load(w_hr_ptr + ks[:, None] * H + cols[None, :], mask=w_mask, other=0.0).to(tl.float32)
            dr = dot_acc(dh, w, dr, DOT_DTYPE)
    else:
        dr = grad_h(grad_y_ptr, grad_hn_ptr, d_gates_ptr, w_hh_ptr, offset, n, later_offset, later_n,
                     rows, cols, H, P, DOT_DTYPE, BLOCK_B, BLOCK_H, BLOCK_K)

    G = 4 * H
    i = load_rows(gates_ptr, out_rows, cols, G, mask)
    f = load_rows(gates_ptr, out_rows, H + cols, G, mask)
    g = load_rows(gates_ptr, out_rows, 2 * H + cols, G, mask)
    o = load_rows(gates_ptr, out_rows, 3 * H + cols, G, mask)
    tanh_c = tanh(load_rows(cells_ptr, out_rows, cols, H, mask))
    c_prev = load_state(cells_ptr, c0_ptr, prev_offset, prev_n, rows, cols, n, H)
    dc_ptrs = dc_ptr + rows.to(tl.int64)[:, None] * H + cols[None, :]
    dc = tl.load(dc_ptrs, mask=mask, other=0.0) + dr * o * (1.0 - tanh_c * tanh_c)

    d_gate_ptrs = d_gates_ptr + out_rows[:, None] * G + cols[None, :]
    out_dtype = d_gates_ptr.dtype.element_ty
    tl.store(d_gate_ptrs, (dc * g * i * (1.0 - i)).to(out_dtype), mask=mask)
    tl.store(d_gate_ptrs + H, (dc * c_prev * f * (1.0 - f)).to(out_dtype), mask=mask)
    tl.store(d_gate_ptrs + 2 * H, (dc * i * (1.0 - g * g)).to(out_dtype), mask=mask)
    tl.store(d_gate_ptrs + 3 * H, (dr * tanh_c * o * (1.0 - o)).to(out_dtype), mask=mask)
    tl.store(dc_ptrs, dc * f, mask=mask)


def step_backward(
    grad_y: Tensor, grad_hn: Tensor, grad_cn: Tensor, w_hh: Tensor, w_hr: Tensor | None,
    c0: Tensor, gates: Tensor, cells: Tensor, layout: Layout,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Run every step backwards: d_gates [N, 4H] (grad_y's dtype), d_out [N, P] fp32 (dL/dh_t,
    projection only, else None) and dc [B, H] fp32 (the gradient reaching c0).

    All tensors contiguous; grad_y [N, P], grad_hn [B, P], grad_cn [B, H], gates [N, 4H] and
    cells [N, H] float32 as the forward saved them.
    """
    N, P = grad_y.shape
    G = gates.shape[1]
    H = G // 4
    B = grad_hn.shape[0]
    device = grad_y.device
    d_gates = kernel_output((N, G), grad_y.dtype, device)
    d_out = kernel_output((N, P), torch.float32, device) if w_hr is not None else None
    dc = grad_cn.to(torch.float32, copy=True)
    block_b = batch_block(B)
    dtype = dot_dtype(grad_y.dtype)
    steps = layout.steps()
    later_offset, later_n = 0, 0
    for step in reversed(steps):
        if d_out is not None:
            lstm_step_grad_h_kernel[step_grid(step.n, block_b, P)](
                grad_y_ptr=grad_y, grad_hn_ptr=grad_hn, d_gates_ptr=d_gates, w_hh_ptr=w_hh, d_out_ptr=d_out,
                offset=step.offset, n=step.n, later_offset=later_offset, later_n=later_n, H=H, P=P,
                DOT_DTYPE=dtype, BLOCK_B=block_b,
            )
        lstm_step_backward_kernel[step_grid(step.n, block_b, H)](
            grad_y_ptr=grad_y, grad_hn_ptr=grad_hn, d_out_ptr=d_out if d_out is not None else grad_y,
            w_hh_ptr=w_hh, w_hr_ptr=w_hr if w_hr is not None else w_hh, c0_ptr=c0, gates_ptr=gates,
            cells_ptr=cells, d_gates_ptr=d_gates, dc_ptr=dc,
            offset=step.offset, n=step.n, prev_offset=max(step.prev_offset, 0), prev_n=step.prev_n,
            later_offset=later_offset, later_n=later_n, H=H, P=P,
            HAS_PROJ=d_out is not None, DOT_DTYPE=dtype, BLOCK_B=block_b,
        )
        later_offset, later_n = step.offset, step.n
    return d_gates, d_out, dc
