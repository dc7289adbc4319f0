"""Per-step backward of the variants: two launches per step, three with a projection, last
step first.

1. `lstm_variant_grad_h_kernel` (GEMM tiles over P): dL/dh_t into d_out [N, P] fp32: grad_y_t,
   plus for sequences that continue d_hh_{t+1} @ W_hh and the zoneout share m_h * dL/dh_{t+1},
   else grad_hn;
2. with a projection, `lstm_variant_grad_r_kernel`: dr = ((1 - m_h) * dL/dh_t) @ W_hr [B, H];
3. `lstm_variant_step_backward_kernel`, whole rows (LN backward reduces over them): the
   pointwise backward of numpy_backend.variants.lstm_variant_backward, the dc carry, d_gates (the
   clipped gradient of the gate pre-activations) and d_hh (its image through LN_hh, which feeds
   the recurrence and dW_hh).
What the forward did not keep is recomputed in the kernel from the saved gates and cells
(c_{t-1}, the candidate cell, LN_c statistics); LN_hh's input h_{t-1} @ W_hh^T is recomputed once
for all rows before the loop by the forward's own GEMM kernel, so its statistics match the
forward's. The variant parameters' gradients are summed over steps per batch row, in [B, ...]
fp32 buffers each program updates in place for its own rows (deterministic, no atomics); the
caller sums them over the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from torch_lstm_ext.params import Variants
from torch_lstm_ext.triton_kernels.buffers import kernel_output
from torch_lstm_ext.triton_kernels.layer_norm import (
    normalize,
    normalize_backward,
    normalize_gates,
    normalize_gates_backward,
)
from torch_lstm_ext.triton_kernels.layout import Layout
from torch_lstm_ext.triton_kernels.step_backward import grad_h
from torch_lstm_ext.triton_kernels.tiles import dot_acc, load_rows, load_state, tanh
from torch_lstm_ext.triton_kernels.tuning import (
    STEP_CONFIGS,
    batch_block,
    dot_dtype,
    feature_block,
    row_block,
    row_warps,
    step_grid,
)
from torch_lstm_ext.triton_kernels.variant_step_forward import load_vector, lstm_step_hh_kernel


# Idempotent (it writes this step's rows of d_out and reads only the later step's), so the
# autotuner's repeated timing runs need no restore_value, unlike the in-place dc of step_backward.
@triton.autotune(configs=STEP_CONFIGS, key=["H", "P", "BLOCK_B"])
@triton.jit(do_not_specialize=["offset", "n", "later_offset", "later_n"])
def lstm_variant_grad_h_kernel(
    grad_y_ptr, grad_hn_ptr, d_hh_ptr, w_hh_ptr, zh_ptr, d_out_ptr,
    offset, n, later_offset, later_n, H: tl.constexpr, P: tl.constexpr,
    ZONEOUT_H: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """d_out[offset + b] = dL/dh_t [N, P] fp32 for b < n (BLOCK_H tiles P).

    grad_y [N, P], grad_hn [B, P], d_hh [N, 4H] (the gradient of h_{t-1} @ W_hh^T), w_hh
    [4H, P], zh [N, P]; rows b < later_n continue into the step processed after this one in the
    forward, whose rows start at later_offset.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    dh = grad_h(grad_y_ptr, grad_hn_ptr, d_hh_ptr, w_hh_ptr, offset, n, later_offset, later_n,
                rows, cols, H, P, DOT_DTYPE, BLOCK_B, BLOCK_H, BLOCK_K)
    mask = (rows < n)[:, None] & (cols < P)[None, :]
    if ZONEOUT_H:
        later_rows = (later_offset + rows).to(tl.int64)
        carried = mask & (rows < later_n)[:, None]
        kept = load_rows(zh_ptr, later_rows, cols, P, carried)
        dh += kept * load_rows(d_out_ptr, later_rows, cols, P, carried)
    out_rows = (offset + rows).to(tl.int64)
    tl.store(d_out_ptr + out_rows[:, None] * P + cols[None, :], dh, mask=mask)


@triton.autotune(configs=STEP_CONFIGS, key=["H", "P", "BLOCK_B"])
@triton.jit(do_not_specialize=["offset", "n"])
def lstm_variant_grad_r_kernel(
    d_out_ptr, zh_ptr, w_hr_ptr, dr_ptr, offset, n, H: tl.constexpr, P: tl.constexpr,
    ZONEOUT_H: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dr[b] = ((1 - zh) * d_out)[offset + b] @ W_hr for b < n: dr [B, H] fp32, d_out / zh
    [N, P], w_hr [P, H] (BLOCK_H tiles H)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < n
    col_ok = cols < H
    out_rows = (offset + rows).to(tl.int64)
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, P, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < P
        k_mask = row_ok[:, None] & k_ok[None, :]
        dh = load_rows(d_out_ptr, out_rows, ks, P, k_mask)
        if ZONEOUT_H:
            dh *= 1.0 - load_rows(zh_ptr, out_rows, ks, P, k_mask)
        w_mask = k_ok[:, None] & col_ok[None, :]
        w = tl.load(w_hr_ptr + ks[:, None] * H + cols[None, :], mask=w_mask, other=0.0).to(tl.float32)
        acc = dot_acc(dh, w, acc, DOT_DTYPE)
    mask = row_ok[:, None] & col_ok[None, :]
    tl.store(dr_ptr + rows.to(tl.int64)[:, None] * H + cols[None, :], acc, mask=mask)


@triton.jit
def _accumulate(ptr, rows, cols, width, mask, value):
    """ptr[rows, cols] += value on a row-major [*, width] fp32 matrix owned by this program."""
    ptrs = ptr + rows[:, None] * width + cols[None, :]
    tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + value, mask=mask)


@triton.jit
def _clip(x, bound, CLIP: tl.constexpr):
    if CLIP:
        x = tl.clamp(x, -bound, bound)
    return x


@triton.jit(do_not_specialize=["offset", "n", "prev_offset", "prev_n", "cell_clip", "grad_clip"])
def lstm_variant_step_backward_kernel(
    d_out_ptr, dr_ptr, c0_ptr, gates_ptr, cells_ptr, hh_ptr,
    peephole_ptr, ln_hh_ptr, ln_c_ptr, zc_ptr, zh_ptr,
    d_gates_ptr, d_hh_ptr, r_rows_ptr, dc_ptr, d_peephole_ptr, d_ln_hh_ptr, d_ln_c_ptr,
    offset, n, prev_offset, prev_n, cell_clip, grad_clip, H: tl.constexpr, P: tl.constexpr,
    PEEPHOLE: tl.constexpr, LN_HH: tl.constexpr, LN_C: tl.constexpr, ZONEOUT_C: tl.constexpr,
    ZONEOUT_H: tl.constexpr, CELL_CLIP: tl.constexpr, GRAD_CLIP: tl.constexpr,
    HAS_PROJ: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Rows offset..offset+n-1 of d_gates [N, 4H] (and d_hh [N, 4H] with LN_HH, r = o * tanh(.)
    [N, H] fp32 with HAS_PROJ); updates dc [B, H] and the per-row parameter gradients
    d_peephole [B, 3H], d_ln_hh [B, 4H], d_ln_c [B, 2H] (fp32) of batch rows b < n.

    dL/dh_t's share through the candidate h: dr [B, H] with HAS_PROJ, else (1 - zh) * d_out
    ([N, P], P == H). gates [N, 4H] and cells [N, H] as the forward saved them; c0 [B, H];
    hh [N, 4H] fp32: h_{t-1} @ W_hh^T. Parameters and zoneout weights as in the forward kernel.
    BLOCK_H >= H: each program owns BLOCK_B whole rows.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hs = tl.arange(0, BLOCK_H)
    col_ok = hs < H
    mask = (rows < n)[:, None] & col_ok[None, :]
    out_rows = (offset + rows).to(tl.int64)
    state_rows = rows.to(tl.int64)
    G = 4 * H
    if HAS_PROJ:
        dh = load_rows(dr_ptr, state_rows, hs, H, mask)
    else:
        dh = load_rows(d_out_ptr, out_rows, hs, P, mask)
        if ZONEOUT_H:
            dh *= 1.0 - load_rows(zh_ptr, out_rows, hs, P, mask)
    i = load_rows(gates_ptr, out_rows, hs, G, mask)
    f = load_rows(gates_ptr, out_rows, H + hs, G, mask)
    g = load_rows(gates_ptr, out_rows, 2 * H + hs, G, mask)
    o = load_rows(gates_ptr, out_rows, 3 * H + hs, G, mask)
    c_prev = load_state(cells_ptr, c0_ptr, prev_offset, prev_n, rows, hs, n, H)
    c_raw = f * c_prev + i * g
    c = _clip(c_raw, cell_clip, CELL_CLIP)
    if LN_C:
        c_hat, rstd_c = normalize(c, mask, H)
        gain_c = load_vector(ln_c_ptr, hs, col_ok)
        t = tanh(c_hat * gain_c + load_vector(ln_c_ptr, H + hs, col_ok))
    else:
        t = tanh(c)

    dc_ptrs = dc_ptr + state_rows[:, None] * H + hs[None, :]
    dc_out = tl.load(dc_ptrs, mask=mask, other=0.0)
    if ZONEOUT_C:
        m_c = load_rows(zc_ptr, out_rows, hs, H, mask)
        dc = dc_out * (1.0 - m_c)
    else:
        dc = dc_out
    d_po = _clip(dh * t * o * (1.0 - o), grad_clip, GRAD_CLIP)
    d_t = dh * o * (1.0 - t * t)
    if LN_C:
        _accumulate(d_ln_c_ptr, state_rows, hs, 2 * H, mask, d_t * c_hat)
        _accumulate(d_ln_c_ptr, state_rows, H + hs, 2 * H, mask, d_t)
        dc += normalize_backward(d_t * gain_c, c_hat, rstd_c, mask, H)
    else:
        dc += d_t
    if PEEPHOLE:
        dc += d_po * load_vector(peephole_ptr, 2 * H + hs, col_ok)
        _accumulate(d_peephole_ptr, state_rows, 2 * H + hs, 3 * H, mask, d_po * c)
    if CELL_CLIP:
        dc = tl.where(tl.abs(c_raw) <= cell_clip, dc, 0.0)
    d_pi = _clip(dc * g * i * (1.0 - i), grad_clip, GRAD_CLIP)
    d_pf = _clip(dc * c_prev * f * (1.0 - f), grad_clip, GRAD_CLIP)
    d_pg = _clip(dc * i * (1.0 - g * g), grad_clip, GRAD_CLIP)
    dc_prev = dc * f
    if PEEPHOLE:
        dc_prev += d_pi * load_vector(peephole_ptr, hs, col_ok)
        dc_prev += d_pf * load_vector(peephole_ptr, H + hs, col_ok)
        _accumulate(d_peephole_ptr, state_rows, hs, 3 * H, mask, d_pi * c_prev)
        _accumulate(d_peephole_ptr, state_rows, H + hs, 3 * H, mask, d_pf * c_prev)
    if ZONEOUT_C:
        dc_prev += dc_out * m_c

    d_gate_ptrs = d_gates_ptr + out_rows[:, None] * G + hs[None, :]
    out_dtype = d_gates_ptr.dtype.element_ty
    tl.store(d_gate_ptrs, d_pi.to(out_dtype), mask=mask)
    tl.store(d_gate_ptrs + H, d_pf.to(out_dtype), mask=mask)
    tl.store(d_gate_ptrs + 2 * H, d_pg.to(out_dtype), mask=mask)
    tl.store(d_gate_ptrs + 3 * H, d_po.to(out_dtype), mask=mask)
    if LN_HH:
        x_i, x_f, x_g, x_o, rstd_hh = normalize_gates(
            load_rows(hh_ptr, out_rows, hs, G, mask),
            load_rows(hh_ptr, out_rows, H + hs, G, mask),
            load_rows(hh_ptr, out_rows, 2 * H + hs, G, mask),
            load_rows(hh_ptr, out_rows, 3 * H + hs, G, mask),
            mask, H,
        )
        _accumulate(d_ln_hh_ptr, state_rows, hs, G, mask, d_pi * x_i)
        _accumulate(d_ln_hh_ptr, state_rows, H + hs, G, mask, d_pf * x_f)
        _accumulate(d_ln_hh_ptr, state_rows, 2 * H + hs, G, mask, d_pg * x_g)
        _accumulate(d_ln_hh_ptr, state_rows, 3 * H + hs, G, mask, d_po * x_o)
        e_i, e_f, e_g, e_o = normalize_gates_backward(
            d_pi * load_vector(ln_hh_ptr, hs, col_ok),
            d_pf * load_vector(ln_hh_ptr, H + hs, col_ok),
            d_pg * load_vector(ln_hh_ptr, 2 * H + hs, col_ok),
            d_po * load_vector(ln_hh_ptr, 3 * H + hs, col_ok),
            x_i, x_f, x_g, x_o, rstd_hh, mask, H,
        )
        d_hh_ptrs = d_hh_ptr + out_rows[:, None] * G + hs[None, :]
        out_dtype = d_hh_ptr.dtype.element_ty
        tl.store(d_hh_ptrs, e_i.to(out_dtype), mask=mask)
        tl.store(d_hh_ptrs + H, e_f.to(out_dtype), mask=mask)
        tl.store(d_hh_ptrs + 2 * H, e_g.to(out_dtype), mask=mask)
        tl.store(d_hh_ptrs + 3 * H, e_o.to(out_dtype), mask=mask)
    if HAS_PROJ:
        tl.store(r_rows_ptr + out_rows[:, None] * H + hs[None, :], o * t, mask=mask)
    tl.store(dc_ptrs, dc_prev, mask=mask)


class StepGrads(NamedTuple):
    """What variant_step_backward leaves for the whole-sequence work (see its docstring)."""

    d_gates: Tensor
    d_hh: Tensor
    d_out: Tensor
    r: Tensor | None
    dc: Tensor
    d_peephole: Tensor | None
    d_ln_hh: Tensor | None
    d_ln_c: Tensor | None


def variant_step_backward(
    grad_y: Tensor, grad_hn: Tensor, grad_cn: Tensor, w_hh: Tensor, w_hr: Tensor | None,
    c0: Tensor, gates: Tensor, cells: Tensor, h_prev: Tensor, layout: Layout, v: Variants,
) -> StepGrads:
    """Run every step backwards. Returns d_gates [N, 4H] (grad_y's dtype), d_hh [N, 4H] (the
    gradient of h_{t-1} @ W_hh^T; d_gates itself without LN_hh), d_out [N, P] fp32 (dL/dh_t),
    r [N, H] fp32 (o * tanh(.), projection only), dc [B, H] fp32 (the gradient reaching c0) and
    the per-batch-row parameter gradients d_peephole [B, 3H], d_ln_hh [B, 4H], d_ln_c [B, 2H]
    fp32 (None when off).

    All tensors contiguous; grad_y [N, P], grad_hn [B, P], grad_cn [B, H], gates [N, 4H] and
    cells [N, H] float32 as the forward saved them, h_prev [N, P] each row's previous h.
    """
    N, P = grad_y.shape
    G = gates.shape[1]
    H = G // 4
    B = grad_hn.shape[0]
    device = grad_y.device
    has_proj = w_hr is not None
    d_gates = kernel_output((N, G), grad_y.dtype, device)
    d_hh = kernel_output((N, G), grad_y.dtype, device) if v.ln_hh is not None else d_gates
    d_out = kernel_output((N, P), torch.float32, device)
    dr = kernel_output((B, H), torch.float32, device) if has_proj else None
    r = kernel_output((N, H), torch.float32, device) if has_proj else None
    dc = grad_cn.to(torch.float32, copy=True)

    def per_row(on: bool, width: int) -> Tensor | None:
        return torch.zeros((B, width), dtype=torch.float32, device=device) if on else None

    d_peephole = per_row(v.peephole is not None, 3 * H)
    d_ln_hh = per_row(v.ln_hh is not None, G)
    d_ln_c = per_row(v.ln_c is not None, 2 * H)
    block_b = batch_block(B)
    dtype = dot_dtype(grad_y.dtype)
    stand_in = d_out  # the pointer of a buffer that is off (never read or written)
    hh = stand_in
    if v.ln_hh is not None:
        hh = kernel_output((N, G), torch.float32, device)
        lstm_step_hh_kernel[step_grid(N, block_b, G)](
            hist_ptr=h_prev, init_ptr=h_prev, w_hh_ptr=w_hh, hh_ptr=hh, n=N, prev_offset=0, prev_n=N,
            G=G, P=P, DOT_DTYPE=dtype, BLOCK_B=block_b,
        )
    peephole, ln_hh, ln_c, zoneout_c, zoneout_h = v.tensors(stand_in)
    rows_per_program = row_block(H)
    later_offset, later_n = 0, 0
    for step in reversed(layout.steps()):
        lstm_variant_grad_h_kernel[step_grid(step.n, block_b, P)](
            grad_y_ptr=grad_y, grad_hn_ptr=grad_hn, d_hh_ptr=d_hh, w_hh_ptr=w_hh, zh_ptr=zoneout_h,
            d_out_ptr=d_out, offset=step.offset, n=step.n, later_offset=later_offset, later_n=later_n,
            H=H, P=P, ZONEOUT_H=v.zoneout_h is not None, DOT_DTYPE=dtype, BLOCK_B=block_b,
        )
        if has_proj:
            lstm_variant_grad_r_kernel[step_grid(step.n, block_b, H)](
                d_out_ptr=d_out, zh_ptr=zoneout_h, w_hr_ptr=w_hr, dr_ptr=dr, offset=step.offset,
                n=step.n, H=H, P=P, ZONEOUT_H=v.zoneout_h is not None, DOT_DTYPE=dtype, BLOCK_B=block_b,
            )
        lstm_variant_step_backward_kernel[(triton.cdiv(step.n, rows_per_program),)](
            d_out_ptr=d_out, dr_ptr=dr if has_proj else stand_in, c0_ptr=c0, gates_ptr=gates,
            cells_ptr=cells, hh_ptr=hh,
            peephole_ptr=peephole, ln_hh_ptr=ln_hh, ln_c_ptr=ln_c, zc_ptr=zoneout_c, zh_ptr=zoneout_h,
            d_gates_ptr=d_gates, d_hh_ptr=d_hh, r_rows_ptr=r if has_proj else stand_in, dc_ptr=dc,
            d_peephole_ptr=stand_in if d_peephole is None else d_peephole,
            d_ln_hh_ptr=stand_in if d_ln_hh is None else d_ln_hh,
            d_ln_c_ptr=stand_in if d_ln_c is None else d_ln_c,
            offset=step.offset, n=step.n, prev_offset=max(step.prev_offset, 0), prev_n=step.prev_n,
            cell_clip=v.cell_clip_value, grad_clip=v.grad_clip_value,
            H=H, P=P, **v.flags(), GRAD_CLIP=v.grad_clip is not None, HAS_PROJ=has_proj,
            BLOCK_B=rows_per_program, BLOCK_H=feature_block(H), num_warps=row_warps(H),
        )
        later_offset, later_n = step.offset, step.n
    return StepGrads(d_gates, d_hh, d_out, r, dc, d_peephole, d_ln_hh, d_ln_c)
