"""Cooperative backward: one launch for the whole sequence at any H, programs splitting the units.

persistent_backward.py keeps all of W_hh in one program, which fits only small H. Here the grid
is (unit blocks, batch tiles, directions): program (j, b, d) owns BLOCK_U hidden units and
BLOCK_B batch rows of direction d, keeps its slice of the weights on chip (in shared memory, in
K chunks; or re-reads it from L2 each step, WEIGHTS_ON_CHIP=False) and carries its share of
dL/dh and dL/dc in fp32 registers; `plan` picks the tiles.
What crosses programs goes through global memory, into a fresh row block per step, so nothing is
overwritten while another program may read it; the programs of one batch tile synchronise once
per step (twice with a projection) through grid_sync's per-step counters.

Per step t, last forward step first:
- phase A (columns j of P): dL/dh_t = grad_y_t + the carried gradient, which for rows active at
  the step processed before is d_gates_{t'} @ W_hh[:, cols] (the full 4H row of the previous
  backward step, written by every program; this program holds the column slice of W_hh, i.e. a
  slice of W_hh^T), plus the zoneout share m_h * dL/dh_{t'}. With a projection it goes to d_out
  and the tile synchronises;
- phase B (units j): dr = dL/dh_t (with a projection the full row of d_out @ W_hr[:, units]);
  the pointwise gate backward (peephole, zoneout, cell and gradient clipping as in
  numpy_backend/variants.py), the dc carry, and this step's d_gates, rounded to their storage dtype
  as the per-step kernels read them back; then the tile synchronises.
Rows past their length are inactive: their carried gradients pass through unchanged, their
d_gates / d_out rows are left unwritten, as persistent_backward.py does. The weight GEMMs stay
whole-sequence GEMMs in torch (recurrence.py, variant_backward.py).

Triton's interpreter runs programs one after another, so a wait on another program never ends:
STEP_PER_LAUNCH=True runs one step (one phase with a projection) per launch and carries dL/dh
and dL/dc through fp32 scratch instead; the launch boundary is the synchronisation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from torch_lstm_ext.config import triton_interpreter_enabled
from torch_lstm_ext.params import Variants
from torch_lstm_ext.triton_kernels.buffers import kernel_output
from torch_lstm_ext.triton_kernels.grid_sync import arrival_counters, arrive, launch_resident, wait_for
from torch_lstm_ext.triton_kernels.tiles import dot_acc, load_rows, tanh
from torch_lstm_ext.triton_kernels.tuning import dot_dtype, feature_block


@triton.jit
def _time(s, T, rev):
    """Time index of backward step s (rev 0: the forward ran t = 0..T-1, so t = T-1-s; rev 1: t = s)."""
    return rev * s + (1 - rev) * (T - 1 - s)


@triton.jit
def _weight_cols(w_ptr, first, ks, cols, num_rows, width, DOT_DTYPE: tl.constexpr):
    """W[first + ks, cols] of a row-major [*, width] matrix, zero past num_rows / width:
    [len(ks), len(cols)] in DOT_DTYPE."""
    mask = (ks < num_rows)[:, None] & (cols < width)[None, :]
    return tl.load(w_ptr + (first + ks)[:, None] * width + cols[None, :], mask=mask, other=0.0).to(DOT_DTYPE)


@triton.jit
def _shared_rows(ptr, rows, row_ok, first, ks, num_cols, width, DOT_DTYPE: tl.constexpr):
    """ptr[rows, first + ks] of a row-major [*, width] matrix other programs wrote, zero for
    rows not ok and ks past num_cols: [len(rows), len(ks)] in DOT_DTYPE."""
    mask = row_ok[:, None] & (ks < num_cols)[None, :]
    # .cg: served from L2, never from this SM's L1, which may predate the other programs' stores.
    ptrs = ptr + rows[:, None] * width + (first + ks)[None, :]
    return tl.load(ptrs, mask=mask, other=0.0, cache_modifier=".cg").to(DOT_DTYPE)


@triton.jit
def _weight_chunks(w_ptr, cols, num_rows, width, BLOCKS: tl.constexpr, BLOCK_K: tl.constexpr,
                   DOT_DTYPE: tl.constexpr):
    """W[k BLOCK_K + arange(BLOCK_K), cols] for k < BLOCKS, a tuple of [BLOCK_K, len(cols)] tiles
    (the compiler keeps loop-invariant dot operands in shared memory)."""
    tiles = ()
    for k in tl.static_range(BLOCKS):
        ks = k * BLOCK_K + tl.arange(0, BLOCK_K)
        tiles = tiles + (_weight_cols(w_ptr, 0, ks, cols, num_rows, width, DOT_DTYPE),)
    return tiles


@triton.jit
def _gate_dot(d_gates_ptr, rows, row_ok, first, ks, w, acc, H: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """acc + d_gates[rows, first + ks] @ w within one gate block: d_gates [*, 4H], w [len(ks), C]."""
    return dot_acc(_shared_rows(d_gates_ptr, rows, row_ok, first, ks, H, 4 * H, DOT_DTYPE), w, acc, DOT_DTYPE)


@triton.jit
def _grad_h_dot(d_gates_ptr, rows, row_ok, w_hh_ptr, cols, w_tiles, acc,
                H: tl.constexpr, P: tl.constexpr, DOT_DTYPE: tl.constexpr, BLOCK_KH: tl.constexpr,
                ON_CHIP: tl.constexpr):
    """acc + d_gates[rows, :] @ W_hh[:, cols] ([len(rows), len(cols)] fp32): d_gates [*, 4H] in
    its storage dtype, W_hh [4H, P], in BLOCK_KH chunks of each gate block; on chip, w_tiles
    holds them (_weight_chunks of the four gate blocks, gate-major), else they are streamed."""
    if ON_CHIP:
        CHUNKS: tl.constexpr = (H + BLOCK_KH - 1) // BLOCK_KH
        for gate in tl.static_range(4):
            for k in tl.static_range(CHUNKS):
                ks = k * BLOCK_KH + tl.arange(0, BLOCK_KH)
                acc = _gate_dot(d_gates_ptr, rows, row_ok, gate * H, ks, w_tiles[gate * CHUNKS + k], acc, H,
                                DOT_DTYPE)
    else:
        for k0 in range(0, H, BLOCK_KH):
            ks = k0 + tl.arange(0, BLOCK_KH)
            for gate in tl.static_range(4):
                w = _weight_cols(w_hh_ptr, gate * H, ks, cols, H, P, DOT_DTYPE)
                acc = _gate_dot(d_gates_ptr, rows, row_ok, gate * H, ks, w, acc, H, DOT_DTYPE)
    return acc


@triton.jit
def _candidate_grad(d_out_ptr, zh_ptr, rows, row_ok, ks, P: tl.constexpr, ZONEOUT_H: tl.constexpr,
                    DOT_DTYPE: tl.constexpr):
    """((1 - zh) * d_out)[rows, ks] in DOT_DTYPE: the gradient of the candidate h (before zoneout)."""
    dh = _shared_rows(d_out_ptr, rows, row_ok, 0, ks, P, P, tl.float32)
    if ZONEOUT_H:
        dh *= 1.0 - load_rows(zh_ptr, rows, ks, P, row_ok[:, None] & (ks < P)[None, :])
    return dh.to(DOT_DTYPE)


@triton.jit
def _grad_r_dot(d_out_ptr, zh_ptr, rows, row_ok, w_hr_ptr, cols, w_tiles, acc,
                H: tl.constexpr, P: tl.constexpr, ZONEOUT_H: tl.constexpr, DOT_DTYPE: tl.constexpr,
                BLOCK_KP: tl.constexpr, ON_CHIP: tl.constexpr):
    """acc + ((1 - zh) * d_out)[rows, :] @ W_hr[:, cols] ([len(rows), len(cols)] fp32): d_out
    [*, P] fp32 (dL/dh_t, written by every program), zh [*, P], W_hr [P, H], in BLOCK_KP chunks;
    on chip, w_tiles holds them (_weight_chunks), else they are streamed."""
    if ON_CHIP:
        for k in tl.static_range((P + BLOCK_KP - 1) // BLOCK_KP):
            ks = k * BLOCK_KP + tl.arange(0, BLOCK_KP)
            dh = _candidate_grad(d_out_ptr, zh_ptr, rows, row_ok, ks, P, ZONEOUT_H, DOT_DTYPE)
            acc = dot_acc(dh, w_tiles[k], acc, DOT_DTYPE)
    else:
        for k0 in range(0, P, BLOCK_KP):
            ks = k0 + tl.arange(0, BLOCK_KP)
            dh = _candidate_grad(d_out_ptr, zh_ptr, rows, row_ok, ks, P, ZONEOUT_H, DOT_DTYPE)
            acc = dot_acc(dh, _weight_cols(w_hr_ptr, 0, ks, cols, P, H, DOT_DTYPE), acc, DOT_DTYPE)
    return acc


@triton.jit
def _clip(x, bound, CLIP: tl.constexpr):
    if CLIP:
        x = tl.clamp(x, -bound, bound)
    return x


@triton.jit
def _counter(counters_ptr, phase, s, T, tile, tiles):
    """The arrival counter of (phase, step s, batch tile) in counters [phases, T, tiles]."""
    return counters_ptr + (phase * T + s) * tiles + tile


@triton.jit(do_not_specialize=["s_begin", "s_end", "T", "B", "cell_clip", "grad_clip"])
def lstm_cooperative_backward_kernel(
    grad_y_ptr, dh_in_ptr, dc_in_ptr, w_hh_ptr, w_hr_ptr, c0_ptr, lengths_ptr, gates_ptr, cells_ptr,
    peephole_ptr, zc_ptr, zh_ptr,
    d_gates_ptr, d_out_ptr, r_rows_ptr, d_h0_ptr, d_c0_ptr, d_peephole_ptr, counters_ptr,
    s_begin, s_end, T, B, cell_clip, grad_clip,
    H: tl.constexpr, P: tl.constexpr, REVERSE: tl.constexpr, HAS_PROJ: tl.constexpr,
    PEEPHOLE: tl.constexpr, ZONEOUT_C: tl.constexpr, ZONEOUT_H: tl.constexpr,
    CELL_CLIP: tl.constexpr, GRAD_CLIP: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_KP: tl.constexpr,
    STORE_R: tl.constexpr, WEIGHTS_ON_CHIP: tl.constexpr, STEP_PER_LAUNCH: tl.constexpr,
    PHASE: tl.constexpr,
):
    """Backward steps s_begin..s_end-1 of every direction d (program_id 2); see the module doc.

    Per direction d (leading axis of every tensor but lengths), padded rows t * B + b:
    grad_y [T*B, P]; gates [T*B, 4H], cells [T*B, H] fp32 as the forward saved them; zc [T*B, H],
    zh [T*B, P] zoneout weights; w_hh [4H, P], w_hr [P, H], peephole [3, H]; c0 [B, H];
    lengths int32 [B] (shared). Direction d runs reversed iff REVERSE != (d == 1).
    Writes d_gates [T*B, 4H] (storage dtype), d_out [T*B, P] fp32 (dL/dh_t; HAS_PROJ only),
    r [T*B, H] fp32 (o * tanh(c), what dW_hr multiplies; STORE_R only), and once s_end == T:
    d_h0 [B, P], d_c0 [B, H] and d_peephole [B, 3H] fp32 (per row, summed over steps; read and
    written, the caller zeroes it).
    dh_in [B, P] / dc_in [B, H]: the gradients reaching h_n / c_n; with STEP_PER_LAUNCH, fp32
    scratch holding the carried gradients between launches, updated in place. PHASE (step mode
    with a projection only): 0 runs phase A, 1 phase B. counters int32 [1 + HAS_PROJ, T, D *
    batch tiles], zeroed (persistent mode only).
    """
    j = tl.program_id(0)
    tile = tl.program_id(1)
    d = tl.program_id(2)
    unit_blocks = tl.num_programs(0)
    tiles = tl.num_programs(1) * tl.num_programs(2)
    tile_id = d * tl.num_programs(1) + tile
    if REVERSE:
        rev = 1 - d
    else:
        rev = d
    DO_A: tl.constexpr = (not STEP_PER_LAUNCH) or (not HAS_PROJ) or PHASE == 0
    DO_B: tl.constexpr = (not STEP_PER_LAUNCH) or (not HAS_PROJ) or PHASE == 1
    LAST: tl.constexpr = 1 if HAS_PROJ else 0  # the counter phase that publishes d_gates
    G = 4 * H

    rows = tile * BLOCK_B + tl.arange(0, BLOCK_B)
    us = j * BLOCK_U + tl.arange(0, BLOCK_U)  # hidden units in phase B, columns of P in phase A
    row_ok = rows < B
    u_ok = us < H
    p_ok = us < P
    lengths = tl.load(lengths_ptr + rows, mask=row_ok, other=0)
    d64 = d.to(tl.int64)
    seq = d64 * T * B  # the direction's first padded row
    state_rows = d64 * B + rows
    w_hh_ptr += d64 * G * P
    w_hr_ptr += d64 * P * H
    peephole_ptr += d64 * 3 * H
    p_mask = row_ok[:, None] & p_ok[None, :]
    u_mask = row_ok[:, None] & u_ok[None, :]

    w_hh_tiles = None
    w_hr_tiles = None
    if WEIGHTS_ON_CHIP:
        H_CHUNKS: tl.constexpr = (H + BLOCK_KH - 1) // BLOCK_KH
        P_CHUNKS: tl.constexpr = (P + BLOCK_KP - 1) // BLOCK_KP
        w_hh_tiles = ()
        for gate in tl.static_range(4):
            gate_tiles = _weight_chunks(w_hh_ptr + gate * H * P, us, H, P, H_CHUNKS, BLOCK_KH, DOT_DTYPE)
            w_hh_tiles = w_hh_tiles + gate_tiles
        if HAS_PROJ:
            w_hr_tiles = _weight_chunks(w_hr_ptr, us, P, H, P_CHUNKS, BLOCK_KP, DOT_DTYPE)
    if PEEPHOLE:
        w_ci = tl.load(peephole_ptr + us, mask=u_ok, other=0.0).to(tl.float32)[None, :]
        w_cf = tl.load(peephole_ptr + H + us, mask=u_ok, other=0.0).to(tl.float32)[None, :]
        w_co = tl.load(peephole_ptr + 2 * H + us, mask=u_ok, other=0.0).to(tl.float32)[None, :]
        acc_ci = load_rows(d_peephole_ptr, state_rows, us, 3 * H, u_mask)
        acc_cf = load_rows(d_peephole_ptr, state_rows, H + us, 3 * H, u_mask)
        acc_co = load_rows(d_peephole_ptr, state_rows, 2 * H + us, 3 * H, u_mask)
    # dh: the carried dL/dh of columns us of P, before the recurrent dot of the step processed
    # last (which only the next step can add, once every program has written its d_gates).
    dh = load_rows(dh_in_ptr, state_rows, us, P, p_mask)
    dc = load_rows(dc_in_ptr, state_rows, us, H, u_mask)
    c0 = load_rows(c0_ptr, state_rows, us, H, u_mask)

    s = s_begin
    while s < s_end:
        t = _time(s, T, rev)
        active = row_ok & (t < lengths)
        out_rows = seq + t * B + rows
        mask = active[:, None] & u_ok[None, :]
        y_mask = active[:, None] & p_ok[None, :]
        # Loads that depend on no other program, issued before the waits.
        if DO_A:
            grad_y = load_rows(grad_y_ptr, out_rows, us, P, y_mask)
            if ZONEOUT_H:
                m_h = load_rows(zh_ptr, out_rows, us, P, y_mask)
        if DO_B:
            i = load_rows(gates_ptr, out_rows, us, G, mask)
            f = load_rows(gates_ptr, out_rows, H + us, G, mask)
            g = load_rows(gates_ptr, out_rows, 2 * H + us, G, mask)
            o = load_rows(gates_ptr, out_rows, 3 * H + us, G, mask)
            t_prev = t - 1 + 2 * rev  # the step before t in the forward
            has_prev = (t_prev >= 0) & (t_prev < lengths)
            c_prev = load_rows(cells_ptr, seq + t_prev * B + rows, us, H, mask & has_prev[:, None])
            c_prev = tl.where(has_prev[:, None], c_prev, c0)
            if ZONEOUT_C or CELL_CLIP:
                c_raw = f * c_prev + i * g
                c = _clip(c_raw, cell_clip, CELL_CLIP)
            else:
                c = load_rows(cells_ptr, out_rows, us, H, mask)
            if ZONEOUT_C:
                m_c = load_rows(zc_ptr, out_rows, us, H, mask)

        if DO_A:
            if s > 0:
                if not STEP_PER_LAUNCH:
                    wait_for(_counter(counters_ptr, LAST, s - 1, T, tile_id, tiles), unit_blocks)
                t_later = _time(s - 1, T, rev)
                later_ok = row_ok & (t_later < lengths)
                dh = _grad_h_dot(d_gates_ptr, seq + t_later * B + rows, later_ok, w_hh_ptr, us,
                                 w_hh_tiles, dh, H, P, DOT_DTYPE, BLOCK_KH, WEIGHTS_ON_CHIP)
            dh_t = dh + grad_y
            if HAS_PROJ:
                tl.store(d_out_ptr + out_rows[:, None] * P + us[None, :], dh_t, mask=y_mask)
            if ZONEOUT_H:
                dh = tl.where(active[:, None], m_h * dh_t, dh)
            else:
                dh = tl.where(active[:, None], 0.0, dh)
        if HAS_PROJ and not STEP_PER_LAUNCH:
            arrive(_counter(counters_ptr, 0, s, T, tile_id, tiles))

        if DO_B:
            if HAS_PROJ:
                if not STEP_PER_LAUNCH:
                    wait_for(_counter(counters_ptr, 0, s, T, tile_id, tiles), unit_blocks)
                dr = _grad_r_dot(d_out_ptr, zh_ptr, out_rows, active, w_hr_ptr, us, w_hr_tiles,
                                 tl.zeros((BLOCK_B, BLOCK_U), dtype=tl.float32), H, P, ZONEOUT_H,
                                 DOT_DTYPE, BLOCK_KP, WEIGHTS_ON_CHIP)
            elif ZONEOUT_H:
                dr = (1.0 - m_h) * dh_t
            else:
                dr = dh_t
            tanh_c = tanh(c)
            if ZONEOUT_C:
                dc_cand = dc * (1.0 - m_c)
            else:
                dc_cand = dc
            d_o = _clip(dr * tanh_c * o * (1.0 - o), grad_clip, GRAD_CLIP)
            dc_cand += dr * o * (1.0 - tanh_c * tanh_c)
            if PEEPHOLE:
                dc_cand += d_o * w_co
                acc_co += d_o * c
            if CELL_CLIP:
                dc_cand = tl.where(tl.abs(c_raw) <= cell_clip, dc_cand, 0.0)
            d_i = _clip(dc_cand * g * i * (1.0 - i), grad_clip, GRAD_CLIP)
            d_f = _clip(dc_cand * c_prev * f * (1.0 - f), grad_clip, GRAD_CLIP)
            d_g = _clip(dc_cand * i * (1.0 - g * g), grad_clip, GRAD_CLIP)
            # Stored in the storage dtype, from which the next step's dot reads them back (as in
            # the per-step kernels); the peephole terms take them unrounded, as
            # variant_step_backward.py does.
            out_dtype = d_gates_ptr.dtype.element_ty
            d_gate_ptrs = d_gates_ptr + out_rows[:, None] * G + us[None, :]
            tl.store(d_gate_ptrs, d_i.to(out_dtype), mask=mask)
            tl.store(d_gate_ptrs + H, d_f.to(out_dtype), mask=mask)
            tl.store(d_gate_ptrs + 2 * H, d_g.to(out_dtype), mask=mask)
            tl.store(d_gate_ptrs + 3 * H, d_o.to(out_dtype), mask=mask)
            dc_prev = dc_cand * f
            if PEEPHOLE:
                dc_prev += d_i * w_ci + d_f * w_cf
                acc_ci += d_i * c_prev
                acc_cf += d_f * c_prev
            if ZONEOUT_C:
                dc_prev += dc * m_c
            dc = tl.where(active[:, None], dc_prev, dc)
            if STORE_R:
                tl.store(r_rows_ptr + out_rows[:, None] * H + us[None, :], o * tanh_c, mask=mask)
        if not STEP_PER_LAUNCH:
            arrive(_counter(counters_ptr, LAST, s, T, tile_id, tiles))
        s += 1

    # The gradient reaching h0 needs the last processed step's d_gates of every program: in
    # step mode that is a launch of its own (s_begin == T).
    if STEP_PER_LAUNCH:
        h0_tail = s_begin == T
    else:
        h0_tail = s_end == T
    if DO_A:
        if h0_tail:
            if T > 0:
                if not STEP_PER_LAUNCH:
                    wait_for(_counter(counters_ptr, LAST, T - 1, T, tile_id, tiles), unit_blocks)
                t_later = _time(T - 1, T, rev)
                later_ok = row_ok & (t_later < lengths)
                dh = _grad_h_dot(d_gates_ptr, seq + t_later * B + rows, later_ok, w_hh_ptr, us,
                                 w_hh_tiles, dh, H, P, DOT_DTYPE, BLOCK_KH, WEIGHTS_ON_CHIP)
            tl.store(d_h0_ptr + state_rows[:, None] * P + us[None, :], dh.to(d_h0_ptr.dtype.element_ty),
                     mask=p_mask)
    if DO_B:
        if s_end == T:
            tl.store(d_c0_ptr + state_rows[:, None] * H + us[None, :], dc.to(d_c0_ptr.dtype.element_ty),
                     mask=u_mask)
    if STEP_PER_LAUNCH:
        if DO_A:
            tl.store(dh_in_ptr + state_rows[:, None] * P + us[None, :], dh, mask=p_mask)
        if DO_B:
            tl.store(dc_in_ptr + state_rows[:, None] * H + us[None, :], dc, mask=u_mask)
    if PEEPHOLE and DO_B:
        peephole_ptrs = d_peephole_ptr + state_rows[:, None] * (3 * H) + us[None, :]
        tl.store(peephole_ptrs, acc_ci, mask=u_mask)
        tl.store(peephole_ptrs + H, acc_cf, mask=u_mask)
        tl.store(peephole_ptrs + 2 * H, acc_co, mask=u_mask)


class CooperativePlan(NamedTuple):
    """Tiles and launch shape of one cooperative backward (see `plan`)."""

    block_u: int  # hidden units (and columns of P) per program
    block_b: int  # batch rows per program
    block_kh: int  # K chunk of the W_hh dot (rows of one gate block per chunk)
    block_kp: int  # K chunk of the W_hr dot
    num_warps: int
    max_registers: int | None  # the maxnreg launch option (None: ptxas's default)
    weights_on_chip: bool
    grid: tuple[int, int, int]  # (unit blocks, batch tiles, directions)


BATCH_TILE = 16  # rows per program: tl.dot's minimum M (larger tiles spill, see `plan`)
MAX_BLOCK_U = 64
BLOCK_K = 32
# fp32 streams its weights in narrower chunks: its FMA dot's operands take more registers, and
# 8-warp programs spill at 32 (H = 1024, BLOCK_U 32: 8 bytes; at 16: none).
STREAMED_FP32_BLOCK_K = 16
# Weight-slice bytes per program up to which they stay on chip without spills (see `plan`).
ON_CHIP_BYTES = {torch.float32: 80 * 1024, torch.float16: 32 * 1024, torch.bfloat16: 32 * 1024}
# One program per SM is all a grid of at most sm_count programs needs, so ptxas may take every
# register: left alone, it caps 8-warp programs at 128 and spills (fp32 H = 1024, P = 512,
# BLOCK_U 32: 36 bytes; at 255: none). At 4 warps the cap is 255 already, and setting it
# anyway makes ptxas spill (fp32 H = 256 on chip: 28 bytes at 255 registers, none at 144).
MAX_REGISTERS_8_WARPS = 255


def on_chip_bytes(H: int, P: int, has_proj: bool, block_u: int, dtype: torch.dtype) -> int:
    """Shared memory of one program's weight slices: W_hh[:, cols] (4H rows), plus W_hr[:, units]
    (P rows) with a projection, in BLOCK_K-row chunks."""
    rows = 4 * triton.cdiv(H, BLOCK_K) * BLOCK_K + (triton.cdiv(P, BLOCK_K) * BLOCK_K if has_proj else 0)
    return rows * block_u * dtype.itemsize


def plan(H: int, P: int, B: int, dtype: torch.dtype, directions: int,
         sm_count: int) -> CooperativePlan | None:
    """The configuration for hidden size H, output size P (a projection exactly when P != H:
    nn.LSTM's proj_size < hidden_size), batch B, storage dtype, 1 or 2 directions, on a GPU with
    sm_count SMs; None when no grid of at most sm_count programs fits (every program must be
    resident at once, and one per SM always is).

    The rule: 16 batch rows per program (BATCH_TILE); BLOCK_U the smallest power of two from
    32 (fp16 / bf16) or 16 (fp32) up to MAX_BLOCK_U whose grid has at most sm_count programs;
    4 warps, 8 from BLOCK_U 64 (fp16 / bf16) or 32 (fp32), those with maxnreg 255; the weight
    slices on chip when they take at most ON_CHIP_BYTES, else streamed from L2 each step in
    BLOCK_K-row chunks (STREAMED_FP32_BLOCK_K for fp32). A program takes at most 255 registers x
    8 warps and 74 KiB of shared memory, so every SM holds one: a grid of at most sm_count
    programs is resident.

    Why, from ptxas for sm_90a (tests/test_cooperative_backward_compile.py compiles every
    configuration this returns for H in {128, 256, 512, 1024}, P = H or H / 2, B in {16, 64}, 1 or
    2 directions, fp32 / fp16 / bf16, plain and with every per-element variant on; registers /
    spill bytes / shared memory, plain (variants); ptxas takes registers up to its cap, the spills
    are what matter):
    - 16-bit tensor-core tiles of [16, 16] over 4 warps are the same tile in every warp (the MMA
      layout does not split M = 16): 4x the registers per tile, 3 warps repeating the first one's
      work; [16, 32] splits over the 4 warps (bf16 H = P = 256 streamed: 168 registers against
      252). More rows spill (H = 256, K chunks of 64, 4 warps): bf16 32 x 32 432 bytes, 64 x 16
      484 bytes; fp32 32 x 16, 48 bytes.
    - on chip (the compiler allocates the loop-invariant weight tiles in shared memory once):
      fp32 H = P = 256, BLOCK_U 16 (64 KiB): 144 (146) / 0 / 66 KiB; fp32 H = 256, P = 128
      (72 KiB): 154 (196) / 0 / 74 KiB; bf16 H = P = 128, BLOCK_U 32 (32 KiB): 182 (255) / 0 /
      34 KiB. Past the budgets: bf16 H = 128, P = 64 (34 KiB) spills 4 bytes with the variants;
      bf16 H = P = 256 (64 KiB) 0 (36); bf16 H = 256, P = 128: 28 (48); fp32 H = P = 512 (128 KiB)
      none plain, but its 64 unrolled chunks take 79 s to compile.
    - streamed: at most 255 (255) / 0 / 5 KiB, e.g. bf16 H = P = 1024, BLOCK_U 64, 8 warps:
      224 (252) / 0 / 5 KiB; fp32 H = P = 1024, BLOCK_U 16: 80 (90) / 0 / 2 KiB.
    None of this is timed: whether 16-row tiles (the programs of every tile stream all of W_hh
    each step, so B = 64 reads it four times) are the fastest spill-free choice is for a GPU
    benchmark to show.
    """
    if directions not in (1, 2):
        raise ValueError(f"directions must be 1 or 2, not {directions}")
    has_proj = P != H
    half = dtype != torch.float32
    batch_tiles = triton.cdiv(B, BATCH_TILE)
    smallest = 32 if half else 16
    block_u = max(smallest, triton.next_power_of_2(triton.cdiv(H * batch_tiles * directions, sm_count)))
    if block_u > MAX_BLOCK_U:
        return None
    num_warps = block_u // 8 if half else (4 if block_u == 16 else 8)
    on_chip = on_chip_bytes(H, P, has_proj, block_u, dtype) <= ON_CHIP_BYTES[dtype]
    grid = (triton.cdiv(H, block_u), batch_tiles, directions)
    block_k = BLOCK_K if half or on_chip else STREAMED_FP32_BLOCK_K
    block_kh, block_kp = min(block_k, feature_block(H)), min(block_k, feature_block(P))
    max_registers = MAX_REGISTERS_8_WARPS if num_warps == 8 else None
    return CooperativePlan(block_u, BATCH_TILE, block_kh, block_kp, num_warps, max_registers, on_chip, grid)


INTERPRETER_SMS = 132  # what the interpreter plans for: an H200's SMs


def _sm_count(device: torch.device) -> int:
    """SMs the grid must fit on: the device's, or INTERPRETER_SMS off a GPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SMS


class CooperativeGrads(NamedTuple):
    """What cooperative_variant_backward returns (see there)."""

    d_gates: Tensor
    d_out: Tensor | None
    r: Tensor | None
    d_h0: Tensor
    d_c0: Tensor
    d_peephole: Tensor | None


def cooperative_variant_backward(
    grad_y: Tensor, grad_hn: Tensor, grad_cn: Tensor, w_hh: Tensor, w_hr: Tensor | None,
    c0: Tensor, gates: Tensor, cells: Tensor, lengths: Tensor, reverse: bool, v: Variants,
    *, config: CooperativePlan | None = None,
) -> CooperativeGrads:
    """The backward of a layer with the per-element variants (peephole, zoneout, cell and
    gradient clipping; layer norm is refused) on the padded layout, both directions at once.

    Every tensor has a leading direction axis [D, ...] (D = 1 or 2; direction 1 runs reversed
    relative to direction 0, whose forward ran reversed iff `reverse`), or none at all (one
    direction, and the results have none either); all contiguous, on one device:
    grad_y [D, T*B, P] (padded rows t * B + b), grad_hn [D, B, P], grad_cn / c0 [D, B, H],
    w_hh [D, 4H, P], w_hr [D, P, H] or None, gates [D, T*B, 4H] and cells [D, T*B, H] fp32 as the
    forward saved them, lengths int32 [B] (shared by the directions); v's tensors with the same
    leading axis: peephole [D, 3, H], zoneout_c [D, T*B, H], zoneout_h [D, T*B, P].
    Returns d_gates [D, T*B, 4H] (grad_y's dtype; the clipped gate pre-activation gradients),
    d_out [D, T*B, P] fp32 (dL/dh_t; projection only), r [D, T*B, H] fp32 (o * tanh(c~), which
    dW_hr = ((1 - zoneout_h) * d_out)^T @ r multiplies; with a projection and a variant on only:
    otherwise it is o * tanh(cells), which the caller has), d_h0 [D, B, P] (grad_hn's dtype),
    d_c0 [D, B, H] (grad_cn's dtype), d_peephole [D, 3, H] (w_hh's dtype; None when off). With
    d_gates and the previous h of each row, these are variant_backward.py's results: dW_hh =
    d_gates^T @ h_prev, no layer-norm gradients.
    Rows past a sequence's length in d_gates, d_out and r are left unwritten.
    config: `plan`'s, unless a test forces another.
    """
    if v.has_layer_norm:
        raise ValueError("the cooperative backward has no layer norm: use the per-step variant kernels")
    batched = grad_y.dim() == 3
    if not batched:
        grad_y, grad_hn, grad_cn, w_hh, c0, gates, cells = (
            t.unsqueeze(0) for t in (grad_y, grad_hn, grad_cn, w_hh, c0, gates, cells))
        w_hr = None if w_hr is None else w_hr.unsqueeze(0)
        v = v._replace(**{name: t.unsqueeze(0) for name, t in v._asdict().items()
                          if name in ("peephole", "zoneout_c", "zoneout_h") and t is not None})
    D, N, P = grad_y.shape
    G = gates.shape[-1]
    H = G // 4
    B = grad_hn.shape[1]
    T = N // B if B else 0
    device = grad_y.device
    has_proj = w_hr is not None
    config = config or plan(H, P, B, grad_y.dtype, D, _sm_count(device))
    if config is None:
        raise ValueError(f"no cooperative grid fits H={H}, P={P}, B={B}, {D} direction(s) on this GPU")
    d_gates = kernel_output((D, N, G), grad_y.dtype, device)
    d_out = kernel_output((D, N, P), torch.float32, device) if has_proj else None
    r = kernel_output((D, N, H), torch.float32, device) if has_proj and v.on else None
    d_h0 = kernel_output((D, B, P), grad_hn.dtype, device)
    d_c0 = kernel_output((D, B, H), grad_cn.dtype, device)
    d_peephole = None
    if v.peephole is not None:
        d_peephole = torch.zeros((D, B, 3 * H), dtype=torch.float32, device=device)
    if T == 0:
        d_h0.copy_(grad_hn)
        d_c0.copy_(grad_cn)
    else:
        _launch(grad_y, grad_hn, grad_cn, w_hh, w_hr, c0, lengths, gates, cells, v, reverse, config,
                d_gates, d_out, r, d_h0, d_c0, d_peephole)
    if d_peephole is not None:
        d_peephole = d_peephole.sum(1).reshape(D, 3, H).to(w_hh.dtype)
    grads = CooperativeGrads(d_gates, d_out, r, d_h0, d_c0, d_peephole)
    if not batched:
        grads = CooperativeGrads(*(None if t is None else t.squeeze(0) for t in grads))
    return grads


def cooperative_backward(
    grad_y: Tensor, grad_hn: Tensor, grad_cn: Tensor, w_hh: Tensor, w_hr: Tensor | None,
    c0: Tensor, gates: Tensor, cells: Tensor, lengths: Tensor, reverse: bool,
    *, config: CooperativePlan | None = None,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """persistent_backward.persistent_backward at any H: (d_gates, d_out, d_h0, d_c0), shapes
    and dtypes as there, each with a leading direction axis [D, ...] when the inputs have one
    (see cooperative_variant_backward, which this is with every variant off)."""
    grads = cooperative_variant_backward(grad_y, grad_hn, grad_cn, w_hh, w_hr, c0, gates, cells, lengths,
                                         reverse, Variants(), config=config)
    return grads.d_gates, grads.d_out, grads.d_h0, grads.d_c0


def _launch(grad_y, grad_hn, grad_cn, w_hh, w_hr, c0, lengths, gates, cells, v: Variants, reverse: bool,
            config: CooperativePlan, d_gates, d_out, r, d_h0, d_c0, d_peephole) -> None:
    """One cooperative launch on a GPU; under the interpreter one launch per step and phase."""
    D, N, P = grad_y.shape
    B = grad_hn.shape[1]
    T = N // B
    H = gates.shape[-1] // 4
    has_proj = w_hr is not None
    stand_in = d_gates  # the pointer of a tensor that is off (its constexpr flag keeps it unread)
    step_mode = triton_interpreter_enabled()
    if step_mode:
        dh_in, dc_in = grad_hn.to(torch.float32, copy=True), grad_cn.to(torch.float32, copy=True)
        counters = stand_in
    else:
        dh_in, dc_in = grad_hn, grad_cn
        counters = arrival_counters(2 if has_proj else 1, T, config.grid[1] * config.grid[2], grad_y.device)
    peephole, _, _, zoneout_c, zoneout_h = v.tensors(stand_in)

    def args(s_begin: int, s_end: int) -> dict:
        return dict(
            grad_y_ptr=grad_y, dh_in_ptr=dh_in, dc_in_ptr=dc_in, w_hh_ptr=w_hh,
            w_hr_ptr=w_hr if has_proj else w_hh, c0_ptr=c0, lengths_ptr=lengths, gates_ptr=gates,
            cells_ptr=cells, peephole_ptr=peephole, zc_ptr=zoneout_c, zh_ptr=zoneout_h,
            d_gates_ptr=d_gates, d_out_ptr=d_out if has_proj else stand_in,
            r_rows_ptr=r if r is not None else stand_in, d_h0_ptr=d_h0, d_c0_ptr=d_c0,
            d_peephole_ptr=d_peephole if d_peephole is not None else stand_in, counters_ptr=counters,
            s_begin=s_begin, s_end=s_end, T=T, B=B, cell_clip=v.cell_clip_value, grad_clip=v.grad_clip_value,
        )

    constexprs = dict(
        H=H, P=P, REVERSE=reverse, HAS_PROJ=has_proj, PEEPHOLE=v.peephole is not None,
        ZONEOUT_C=v.zoneout_c is not None, ZONEOUT_H=v.zoneout_h is not None,
        CELL_CLIP=v.cell_clip is not None, GRAD_CLIP=v.grad_clip is not None,
        DOT_DTYPE=dot_dtype(grad_y.dtype), BLOCK_B=config.block_b, BLOCK_U=config.block_u,
        BLOCK_KH=config.block_kh, BLOCK_KP=config.block_kp, STORE_R=r is not None,
        WEIGHTS_ON_CHIP=config.weights_on_chip, num_warps=config.num_warps, num_stages=1,
        maxnreg=config.max_registers,
    )
    kernel = lstm_cooperative_backward_kernel
    if not step_mode:
        launch_resident(kernel, config.grid, grad_y.device, **args(0, T), STEP_PER_LAUNCH=False, PHASE=0,
                        **constexprs)
        return
    phases = (0, 1) if has_proj else (0,)
    for s in range(T):
        for phase in phases:
            kernel[config.grid](**args(s, s + 1), STEP_PER_LAUNCH=True, PHASE=phase, **constexprs)
    kernel[config.grid](**args(T, T), STEP_PER_LAUNCH=True, PHASE=0, **constexprs)
