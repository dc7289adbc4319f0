"""Per-step forward of the variants (peephole, layer norm, zoneout, cell clip): two launches per
step, three with a projection.

The layer norms need whole rows (LN_hh over the 4H recurrent pre-activations, LN_c over the H
cells), which the plain kernel's (batch, hidden) tiling splits across programs. So per step:
1. `lstm_step_hh_kernel`, tiled like a GEMM: hh [B, 4H] fp32 = h_{t-1} @ W_hh^T (tl.dot);
2. `lstm_variant_step_kernel`, one program per few whole rows (no tl.dot): LN_hh, the gates with
   peephole terms, cell clip, LN_c, zoneout, writing gates, cells and y (or r, with a projection);
3. with a projection, `lstm_variant_project_kernel`: y = zoneout_h(r @ W_hr^T).
h_{t-1} is read back from y (the zoned-out h) and c_{t-1} from cells (the carried cell), as in
the plain per-step kernel. Equations: torch_lstm_ext/differentiable_recurrence.py.

int8 weights (weight_quantization.py): the two GEMM kernels multiply each dot column by its
row's scale (tiles.scale_columns, flag W_SCALED), so hh and the projection are those of the
dequantized weights; float16 weights need no scale.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from torch_lstm_ext.params import Variants
from torch_lstm_ext.triton_kernels.buffers import kernel_output
from torch_lstm_ext.triton_kernels.layer_norm import normalize, normalize_gates
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
from torch_lstm_ext.triton_kernels.tuning import (
    STEP_CONFIGS,
    batch_block,
    feature_block,
    row_block,
    row_warps,
    step_grid,
)


@triton.autotune(configs=STEP_CONFIGS, key=["G", "P", "BLOCK_B"])
@triton.jit(do_not_specialize=["n", "prev_offset", "prev_n"])
def lstm_step_hh_kernel(
    hist_ptr, init_ptr, w_hh_ptr, hh_ptr, n, prev_offset, prev_n, G: tl.constexpr, P: tl.constexpr,
    DOT_DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    w_hh_scale_ptr=None, W_SCALED: tl.constexpr = False,
):
    """hh[b] = h_b @ W_hh^T for b < n: hh [*, G] fp32 (G = 4H), w_hh [G, P].

    h_b is the state row of load_state: hist[prev_offset + b] for b < prev_n, else init[b]
    (the forward passes y / h0; the backward's whole-sequence recompute passes h_prev twice with
    prev_n = n). BLOCK_H tiles G here. W_SCALED: w_hh holds int8 values, row r scaled by
    w_hh_scale[r] ([G]); off by default, as for the backward's float weights (quantized weights
    are inference-only).
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < G
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, P, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        h = load_state(hist_ptr, init_ptr, prev_offset, prev_n, rows, ks, n, P)
        w_mask = (ks < P)[:, None] & col_ok[None, :]
        w = tl.load(w_hh_ptr + cols[None, :] * P + ks[:, None], mask=w_mask, other=0.0).to(tl.float32)
        acc = dot_acc(h, w, acc, DOT_DTYPE)
    acc = scale_columns(acc, w_hh_scale_ptr, cols, col_ok, W_SCALED)
    mask = (rows < n)[:, None] & col_ok[None, :]
    tl.store(hh_ptr + rows.to(tl.int64)[:, None] * G + cols[None, :], acc, mask=mask)


@triton.jit
def load_vector(ptr, cols, col_ok):
    """A parameter vector's slice as a fp32 [1, BLOCK_H] row."""
    return tl.load(ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]


@triton.jit(do_not_specialize=["offset", "n", "prev_offset", "prev_n", "cell_clip"])
def lstm_variant_step_kernel(
    gx_ptr, hh_ptr, h0_ptr, c0_ptr, peephole_ptr, ln_hh_ptr, ln_c_ptr, zc_ptr, zh_ptr,
    y_ptr, gates_ptr, cells_ptr, r_ptr,
    offset, n, prev_offset, prev_n, cell_clip, H: tl.constexpr, P: tl.constexpr,
    PEEPHOLE: tl.constexpr, LN_HH: tl.constexpr, LN_C: tl.constexpr, ZONEOUT_C: tl.constexpr,
    ZONEOUT_H: tl.constexpr, CELL_CLIP: tl.constexpr, HAS_PROJ: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Rows offset..offset+n-1 of gates [N, 4H], cells [N, H] (fp32) and y [N, P] (or r [B, H]
    with HAS_PROJ); BLOCK_H >= H: each program owns BLOCK_B whole rows.

    gx [N, 4H]; hh [B, 4H] from lstm_step_hh_kernel; h0 [B, P], c0 [B, H]; peephole [3, H],
    ln_hh [4H], ln_c [2, H] (gain, bias); zc [N, H], zh [N, P] (weight of the previous state).
    Pointers of variants that are off are placeholders, never read.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hs = tl.arange(0, BLOCK_H)
    col_ok = hs < H
    mask = (rows < n)[:, None] & col_ok[None, :]
    out_rows = (offset + rows).to(tl.int64)
    state_rows = rows.to(tl.int64)
    G = 4 * H
    a_i = load_rows(hh_ptr, state_rows, hs, G, mask)
    a_f = load_rows(hh_ptr, state_rows, H + hs, G, mask)
    a_g = load_rows(hh_ptr, state_rows, 2 * H + hs, G, mask)
    a_o = load_rows(hh_ptr, state_rows, 3 * H + hs, G, mask)
    if LN_HH:
        a_i, a_f, a_g, a_o, _ = normalize_gates(a_i, a_f, a_g, a_o, mask, H)
        a_i *= load_vector(ln_hh_ptr, hs, col_ok)
        a_f *= load_vector(ln_hh_ptr, H + hs, col_ok)
        a_g *= load_vector(ln_hh_ptr, 2 * H + hs, col_ok)
        a_o *= load_vector(ln_hh_ptr, 3 * H + hs, col_ok)
    z_i = load_rows(gx_ptr, out_rows, hs, G, mask) + a_i
    z_f = load_rows(gx_ptr, out_rows, H + hs, G, mask) + a_f
    z_o = load_rows(gx_ptr, out_rows, 3 * H + hs, G, mask) + a_o
    g = tanh(load_rows(gx_ptr, out_rows, 2 * H + hs, G, mask) + a_g)
    c_prev = load_state(cells_ptr, c0_ptr, prev_offset, prev_n, rows, hs, n, H)
    if PEEPHOLE:
        z_i += load_vector(peephole_ptr, hs, col_ok) * c_prev
        z_f += load_vector(peephole_ptr, H + hs, col_ok) * c_prev
    i = tl.sigmoid(z_i)
    f = tl.sigmoid(z_f)
    c = f * c_prev + i * g
    if CELL_CLIP:
        c = tl.clamp(c, -cell_clip, cell_clip)
    if PEEPHOLE:
        z_o += load_vector(peephole_ptr, 2 * H + hs, col_ok) * c
    o = tl.sigmoid(z_o)
    if LN_C:
        c_hat, _ = normalize(c, mask, H)
        r = o * tanh(c_hat * load_vector(ln_c_ptr, hs, col_ok) + load_vector(ln_c_ptr, H + hs, col_ok))
    else:
        r = o * tanh(c)
    if ZONEOUT_C:
        m = load_rows(zc_ptr, out_rows, hs, H, mask)
        c = m * c_prev + (1.0 - m) * c

    store_gates(gates_ptr, out_rows, hs, i, f, g, o, mask, H)
    tl.store(cells_ptr + out_rows[:, None] * H + hs[None, :], c, mask=mask)
    if HAS_PROJ:
        tl.store(r_ptr + state_rows[:, None] * H + hs[None, :], r.to(r_ptr.dtype.element_ty), mask=mask)
    else:
        if ZONEOUT_H:
            m = load_rows(zh_ptr, out_rows, hs, P, mask)
            r = m * load_state(y_ptr, h0_ptr, prev_offset, prev_n, rows, hs, n, P) + (1.0 - m) * r
        tl.store(y_ptr + out_rows[:, None] * P + hs[None, :], r.to(y_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=STEP_CONFIGS, key=["H", "P", "BLOCK_B"])
@triton.jit(do_not_specialize=["offset", "n", "prev_offset", "prev_n"])
def lstm_variant_project_kernel(
    r_ptr, w_hr_ptr, w_hr_scale_ptr, h0_ptr, zh_ptr, y_ptr, offset, n, prev_offset, prev_n,
    H: tl.constexpr, P: tl.constexpr, ZONEOUT_H: tl.constexpr, W_SCALED: tl.constexpr,
    DOT_DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[offset + b] = zoneout_h(r[b] @ W_hr^T) for b < n; r [B, H], w_hr [P, H], y [N, P],
    zh [N, P], h0 [B, P] (BLOCK_H tiles P). The previous h is y's previous-step row, or h0.
    W_SCALED: w_hr holds int8 values, row p scaled by w_hr_scale[p] ([P]; a placeholder otherwise)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < n
    col_ok = cols < P
    acc = project_tile(r_ptr, w_hr_ptr, rows, cols, row_ok, col_ok, H, DOT_DTYPE, BLOCK_B, BLOCK_H, BLOCK_K)
    acc = scale_columns(acc, w_hr_scale_ptr, cols, col_ok, W_SCALED)
    out_rows = (offset + rows).to(tl.int64)
    mask = row_ok[:, None] & col_ok[None, :]
    if ZONEOUT_H:
        m = load_rows(zh_ptr, out_rows, cols, P, mask)
        acc = m * load_state(y_ptr, h0_ptr, prev_offset, prev_n, rows, cols, n, P) + (1.0 - m) * acc
    tl.store(y_ptr + out_rows[:, None] * P + cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


def variant_step_forward(
    gates_x: Tensor, w_hh: Tensor, w_hr: Tensor | None, h0: Tensor, c0: Tensor, layout: Layout,
    v: Variants, w_hh_scale: Tensor | None = None, w_hr_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run every step: y [N, P] (storage dtype), gates [N, 4H] and cells [N, H] (float32).

    All tensors contiguous; gates_x [N, 4H], w_hh [4H, P], w_hr [P, H] or None, h0 [B, P],
    c0 [B, H]; v's tensors as Variants documents; w_hh_scale [4H] / w_hr_scale [P]: the per-row
    scales of int8 weights, None for float weights.
    """
    N, G = gates_x.shape
    H = G // 4
    B, P = h0.shape
    device = gates_x.device
    y = kernel_output((N, P), gates_x.dtype, device)
    gates = kernel_output((N, G), torch.float32, device)
    cells = kernel_output((N, H), torch.float32, device)
    hh = kernel_output((B, G), torch.float32, device)
    # As in the plain kernel: the projection's input in the storage dtype, the dot's operand dtype.
    r = kernel_output((B, H), gates_x.dtype, device) if w_hr is not None else y
    block_b = batch_block(B)
    rows_per_program = row_block(H)
    dtype = weight_dot_dtype(gates_x.dtype, w_hh)
    stand_in = w_hh  # the pointer of a variant that is off (never read)
    peephole, ln_hh, ln_c, zoneout_c, zoneout_h = v.tensors(stand_in)
    for step in layout.steps():
        prev_offset = max(step.prev_offset, 0)
        lstm_step_hh_kernel[step_grid(step.n, block_b, G)](
            hist_ptr=y, init_ptr=h0, w_hh_ptr=w_hh, hh_ptr=hh, n=step.n, prev_offset=prev_offset,
            prev_n=step.prev_n, G=G, P=P, DOT_DTYPE=dtype, BLOCK_B=block_b,
            w_hh_scale_ptr=stand_in if w_hh_scale is None else w_hh_scale, W_SCALED=w_hh_scale is not None,
        )
        lstm_variant_step_kernel[(triton.cdiv(step.n, rows_per_program),)](
            gx_ptr=gates_x, hh_ptr=hh, h0_ptr=h0, c0_ptr=c0, peephole_ptr=peephole, ln_hh_ptr=ln_hh,
            ln_c_ptr=ln_c, zc_ptr=zoneout_c, zh_ptr=zoneout_h, y_ptr=y, gates_ptr=gates, cells_ptr=cells,
            r_ptr=r, offset=step.offset, n=step.n, prev_offset=prev_offset, prev_n=step.prev_n,
            cell_clip=v.cell_clip_value, H=H, P=P,
            **v.flags(), HAS_PROJ=w_hr is not None,
            BLOCK_B=rows_per_program, BLOCK_H=feature_block(H), num_warps=row_warps(H),
        )
        if w_hr is not None:
            lstm_variant_project_kernel[step_grid(step.n, block_b, P)](
                r_ptr=r, w_hr_ptr=w_hr, w_hr_scale_ptr=stand_in if w_hr_scale is None else w_hr_scale,
                h0_ptr=h0, zh_ptr=zoneout_h, y_ptr=y, offset=step.offset,
                n=step.n, prev_offset=prev_offset, prev_n=step.prev_n, H=H, P=P,
                ZONEOUT_H=v.zoneout_h is not None, W_SCALED=w_hr_scale is not None,
                DOT_DTYPE=weight_dot_dtype(gates_x.dtype, w_hr), BLOCK_B=block_b,
            )
    return y, gates, cells
