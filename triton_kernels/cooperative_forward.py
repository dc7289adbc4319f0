"""Cooperative forward: one launch for the whole sequence, the hidden units split over programs.

Grid (unit blocks, batch tiles, directions). Program (u, b, d) owns BLOCK_U hidden units, all four
gate rows of them, for BLOCK_B batch rows of direction d. Each step it reads the previous h
[BLOCK_B, P] from global memory (y's row of the previous step, in the storage dtype, or h0),
multiplies it by its W_hh rows in ONE dot of 4 * BLOCK_U columns, the gates interleaved (column
4 * unit + gate), rather than four of BLOCK_U: tl.dot's warps split only M and N, so the wider N
gives each warp columns of its own instead of copies of the same weights. Then gates_x, the
activations and the cell update (c of its units stays in fp32 registers), and y, gates and
cells are written. The programs of one batch tile and direction then meet
at a per-step arrival counter (grid_sync.py) before anyone reads the new h. y has a fresh row per
step, so nothing is overwritten while a slower program still reads it.

With a projection a step has two phases: phase 1 writes r = o * tanh(c) of its units into a
scratch row of that step, everyone meets, then in phase 2 the programs split the P output
columns (BLOCK_Q each) and compute y[:, q] = r @ W_hr[q, :]^T; they meet again before the next
step.

WEIGHTS_ON_CHIP loads the W_hh (and W_hr) slice once before the time loop and keeps it on chip
(the compiled kernel holds it in shared memory across the loop and loads it into registers for
each step's dot); otherwise each step streams it from L2 in BLOCK_K chunks. `plan` picks one.

Layout as persistent_forward.py: padded rows [T * B], per-row lengths; a row past its length
carries h and c unchanged, and the kernel writes the carried values into that step's y and cells
rows (the next step reads its state from there; the caller drops those rows). Directions are
stacked on a leading axis; direction 1 runs reversed relative to direction 0, so a bidirectional
layer is one launch. Variants: peephole, zoneout on c and h, cell clip (equations:
torch_lstm_ext/differentiable_recurrence.py), saving what variant_step_forward.py saves.

int8 weights (weight_quantization.py; W_HH_SCALED, W_HR_SCALED): the slices are converted to
DOT_DTYPE as they are loaded, on chip or streamed, so `plan`'s budgets of that dtype hold; after
the fused gate dot is split, each gate's tile is multiplied by the scales of its W_hh rows
(gate * H + unit), and phase 2's column q by w_hr_scale[q], the scales loaded once before the
time loop. Float16 weights need no scale (DOT_DTYPE holds them exactly:
tiles.weight_operand_dtype).

Under TRITON_INTERPRET=1, whose programs run one after another (a wait would never end), the
launcher runs one launch per step and phase (STEP_PER_LAUNCH, PHASE): the launch boundary is the
synchronisation, and each launch reads its carried state from memory (the previous step's y and
cells rows, or h0 / c0).
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
from torch_lstm_ext.triton_kernels.tiles import (
    dot_acc,
    load_rows,
    row_scales,
    store_gates,
    tanh,
    weight_dot_dtype,
    weight_operand_dtype,
)
from torch_lstm_ext.triton_kernels.tuning import feature_block
from torch_lstm_ext.triton_kernels.variant_step_forward import load_vector


@triton.jit
def _weights_t(w_ptr, w_rows, w_ok, ks, width, DOT_DTYPE: tl.constexpr):
    """W[w_rows, ks] transposed, [len(ks), len(w_rows)] in DOT_DTYPE; W row-major [*, width], float
    or int8."""
    mask = (ks < width)[:, None] & w_ok[None, :]
    return tl.load(w_ptr + w_rows[None, :] * width + ks[:, None], mask=mask, other=0.0).to(DOT_DTYPE)


@triton.jit
def _rows(row_base, row_ok, ks, width, DOT_DTYPE: tl.constexpr):
    """Columns ks of the rows starting at pointers row_base [R]: [R, len(ks)] in DOT_DTYPE."""
    mask = row_ok[:, None] & (ks < width)[None, :]
    return tl.load(row_base[:, None] + ks[None, :], mask=mask, other=0.0).to(DOT_DTYPE)


@triton.jit
def _times_w_t(row_base, row_ok, w, w_rows, w_ok, acc, K: tl.constexpr, DOT_DTYPE: tl.constexpr,
               ON_CHIP: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + X @ W[w_rows, :]^T, fp32 [R, len(w_rows)]; X's rows [R, K] start at row_base.

    ON_CHIP: w is the whole slice, _weights_t over feature_block(K) columns. Otherwise w is W's
    pointer (row-major [*, K]) and the slice streams in BLOCK_K chunks.
    """
    if ON_CHIP:
        x = _rows(row_base, row_ok, tl.arange(0, w.shape[0]), K, DOT_DTYPE)
        acc = dot_acc(x, w, acc, DOT_DTYPE)
    else:
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            acc = dot_acc(_rows(row_base, row_ok, ks, K, DOT_DTYPE),
                          _weights_t(w, w_rows, w_ok, ks, K, DOT_DTYPE), acc, DOT_DTYPE)
    return acc


@triton.jit
def _split_gates(acc, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr):
    """The i, f, g, o tiles [BLOCK_B, BLOCK_U] of acc [BLOCK_B, 4 * BLOCK_U], whose column
    4 * unit + gate holds (unit, gate)."""
    even, odd = tl.split(tl.reshape(acc, (BLOCK_B, BLOCK_U, 2, 2)))
    i, g = tl.split(even)
    f, o = tl.split(odd)
    return i, f, g, o


@triton.jit
def _carried(hist_ptr, init_ptr, s, prev_rows, state_rows, cols, width, mask):
    """fp32 state a launch starts step s from: hist[prev_rows] (the previous step's rows) when
    s > 0, else init[state_rows] (h0 / c0)."""
    if s > 0:
        x = load_rows(hist_ptr, prev_rows, cols, width, mask)
    else:
        x = load_rows(init_ptr, state_rows, cols, width, mask)
    return x


@triton.jit
def _step_rows(s, rev, T, B, d, rows):
    """(t, this step's rows, the previous step's rows) of processing step s, in the stacked
    [D * T * B] row space (int64 [BLOCK_B]); rev = 1 when direction d runs backwards in time."""
    t = s + rev * (T - 1 - 2 * s)
    now = ((d * T + t) * B + rows).to(tl.int64)
    prev = ((d * T + t - 1 + 2 * rev) * B + rows).to(tl.int64)
    return t, now, prev


@triton.jit(do_not_specialize=["first_step", "num_steps", "cell_clip"])
def lstm_cooperative_forward_kernel(
    gx_ptr, w_hh_ptr, w_hr_ptr, w_hh_scale_ptr, w_hr_scale_ptr, h0_ptr, c0_ptr, lengths_ptr,
    peephole_ptr, zc_ptr, zh_ptr,
    y_ptr, gates_ptr, cells_ptr, r_ptr, h_n_ptr, c_n_ptr, counters_ptr,
    T, B, first_step, num_steps, reverse, cell_clip,
    H: tl.constexpr, P: tl.constexpr, HAS_PROJ: tl.constexpr,
    PEEPHOLE: tl.constexpr, ZONEOUT_C: tl.constexpr, ZONEOUT_H: tl.constexpr, CELL_CLIP: tl.constexpr,
    W_HH_SCALED: tl.constexpr, W_HR_SCALED: tl.constexpr,
    DOT_DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr,
    WEIGHTS_ON_CHIP: tl.constexpr, STEP_PER_LAUNCH: tl.constexpr, PHASE: tl.constexpr,
):
    """Steps first_step .. first_step + num_steps - 1 of every direction (D = grid axis 2).

    Stacked rows, N = D * T * B: gx [N, 4H], y [N, P], gates [N, 4H] fp32, cells [N, H] fp32,
    r [N, H] (the projection's input, storage dtype), zc [N, H], zh [N, P]; w_hh [D, 4H, P],
    w_hr [D, P, H], peephole [D, 3, H]; h0 / h_n [D * B, P], c0 / c_n [D * B, H]; lengths int32
    [B]; counters int32 [phases, T, D * batch tiles], zeroed. W_HH_SCALED / W_HR_SCALED: w_hh /
    w_hr hold int8 values, row r scaled by w_hh_scale[d, r] ([D, 4H]) / w_hr_scale[d, r]
    ([D, P]). Direction d runs reversed when reverse + d is odd. PHASE 0 runs both phases of each
    step, 1 only the gates, 2 only the projection (one launch each with STEP_PER_LAUNCH, which
    also skips the waits). Pointers of variants and scales that are off are placeholders, never
    read.
    """
    GATES: tl.constexpr = PHASE != 2
    PROJECTS: tl.constexpr = HAS_PROJ and PHASE != 1
    # Whether this launch finishes h: in the gate phase without a projection, else in phase 2.
    FINISHES_H: tl.constexpr = PROJECTS or (GATES and not HAS_PROJ)
    Q_PROGRAMS: tl.constexpr = (P + BLOCK_Q - 1) // BLOCK_Q
    u = tl.program_id(0)
    d = tl.program_id(2)
    programs = tl.num_programs(0)
    tiles = tl.num_programs(1) * tl.num_programs(2)
    tile = d * tl.num_programs(1) + tl.program_id(1)
    rev = (reverse + d) % 2
    G: tl.constexpr = 4 * H
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    lengths = tl.load(lengths_ptr + rows, mask=row_ok, other=0)
    state_rows = (d * B + rows).to(tl.int64)
    units = u * BLOCK_U + tl.arange(0, BLOCK_U)
    unit_ok = units < H
    unit_mask = row_ok[:, None] & unit_ok[None, :]
    # The output columns whose h this program writes and carries: its units, or its P slice.
    if HAS_PROJ:
        outs = u * BLOCK_Q + tl.arange(0, BLOCK_Q)
    else:
        outs = units
    out_ok = outs < P
    out_mask = row_ok[:, None] & out_ok[None, :]
    w_hh_ptr += d * (G * P)
    w_hr_ptr += d * (P * H)
    w_hh_scale_ptr += d * G
    w_hr_scale_ptr += d * P
    peephole_ptr += d * (3 * H)
    # The fused gate columns j = 4 * unit + gate are W_hh rows gate * H + unit.
    js = tl.arange(0, 4 * BLOCK_U)
    gate_rows = (js % 4) * H + u * BLOCK_U + js // 4
    gate_ok = (u * BLOCK_U + js // 4) < H
    if WEIGHTS_ON_CHIP:
        w_gates = _weights_t(w_hh_ptr, gate_rows, gate_ok, tl.arange(0, BLOCK_P), P, DOT_DTYPE)
        if PROJECTS:
            w_out = _weights_t(w_hr_ptr, outs, out_ok, tl.arange(0, BLOCK_H), H, DOT_DTYPE)
    else:
        w_gates = w_hh_ptr
        w_out = w_hr_ptr
    # The int8 rows' scales of each gate's units (W_hh rows gate * H + unit) and of phase 2's
    # output columns, fp32 rows. Applied to the split gate tiles, whose layout gx's tiles share:
    # on the fused [BLOCK_B, 4 * BLOCK_U] dot result, fp32 H = 256, P = 128, BLOCK_U 16 on chip
    # took 255 registers and spilled (125 without scales).
    if W_HH_SCALED:
        s_i = row_scales(w_hh_scale_ptr, units, unit_ok)
        s_f = row_scales(w_hh_scale_ptr, H + units, unit_ok)
        s_g = row_scales(w_hh_scale_ptr, 2 * H + units, unit_ok)
        s_o = row_scales(w_hh_scale_ptr, 3 * H + units, unit_ok)
    if W_HR_SCALED and PROJECTS:
        out_scales = row_scales(w_hr_scale_ptr, outs, out_ok)
    if PEEPHOLE:
        w_ci = load_vector(peephole_ptr, units, unit_ok)
        w_cf = load_vector(peephole_ptr, H + units, unit_ok)
        w_co = load_vector(peephole_ptr, 2 * H + units, unit_ok)

    _, _, prev_rows = _step_rows(first_step, rev, T, B, d, rows)
    h = _carried(y_ptr, h0_ptr, first_step, prev_rows, state_rows, outs, P, out_mask)
    if GATES:
        c = _carried(cells_ptr, c0_ptr, first_step, prev_rows, state_rows, units, H, unit_mask)
    s = first_step
    while s < first_step + num_steps:
        t, now_rows, prev_rows = _step_rows(s, rev, T, B, d, rows)
        active = row_ok & (t < lengths)
        keep = active[:, None]
        if GATES:
            # This step's inputs first: their latency hides behind the wait.
            gx_mask = active[:, None] & unit_ok[None, :]
            gx_i = load_rows(gx_ptr, now_rows, units, G, gx_mask)
            gx_f = load_rows(gx_ptr, now_rows, H + units, G, gx_mask)
            gx_g = load_rows(gx_ptr, now_rows, 2 * H + units, G, gx_mask)
            gx_o = load_rows(gx_ptr, now_rows, 3 * H + units, G, gx_mask)
            if ZONEOUT_C:
                m_c = load_rows(zc_ptr, now_rows, units, H, gx_mask)
        if ZONEOUT_H and FINISHES_H:
            m_h = load_rows(zh_ptr, now_rows, outs, P, active[:, None] & out_ok[None, :])
        if GATES:
            if not STEP_PER_LAUNCH:
                if s > 0:
                    # The previous step's last phase: its h is complete.
                    if HAS_PROJ:
                        wait_for(counters_ptr + (T + s - 1) * tiles + tile, Q_PROGRAMS)
                    else:
                        wait_for(counters_ptr + (s - 1) * tiles + tile, programs)
            h_base = tl.where(s > 0, y_ptr + prev_rows * P, h0_ptr + state_rows * P)
            acc = _times_w_t(h_base, row_ok, w_gates, gate_rows, gate_ok,
                             tl.zeros((BLOCK_B, 4 * BLOCK_U), dtype=tl.float32), P, DOT_DTYPE,
                             WEIGHTS_ON_CHIP, BLOCK_K)
            a_i, a_f, a_g, a_o = _split_gates(acc, BLOCK_B, BLOCK_U)
            if W_HH_SCALED:
                a_i *= s_i
                a_f *= s_f
                a_g *= s_g
                a_o *= s_o
            z_i = a_i + gx_i
            z_f = a_f + gx_f
            if PEEPHOLE:
                z_i += w_ci * c
                z_f += w_cf * c
            i = tl.sigmoid(z_i)
            f = tl.sigmoid(z_f)
            g = tanh(a_g + gx_g)
            c_new = f * c + i * g
            if CELL_CLIP:
                c_new = tl.clamp(c_new, -cell_clip, cell_clip)
            z_o = a_o + gx_o
            if PEEPHOLE:
                z_o += w_co * c_new
            o = tl.sigmoid(z_o)
            r = o * tanh(c_new)
            if ZONEOUT_C:
                c_new = m_c * c + (1.0 - m_c) * c_new
            c = tl.where(keep, c_new, c)
            store_gates(gates_ptr, now_rows, units, i, f, g, o, gx_mask, H)
            tl.store(cells_ptr + now_rows[:, None] * H + units[None, :], c, mask=unit_mask)
            if HAS_PROJ:
                tl.store(r_ptr + now_rows[:, None] * H + units[None, :], r.to(r_ptr.dtype.element_ty),
                         mask=unit_mask)
            else:
                if ZONEOUT_H:
                    r = m_h * h + (1.0 - m_h) * r
                # Rounded to storage, as the next step reads it back from y.
                h = tl.where(keep, r.to(y_ptr.dtype.element_ty).to(tl.float32), h)
                tl.store(y_ptr + now_rows[:, None] * P + outs[None, :], h.to(y_ptr.dtype.element_ty),
                         mask=out_mask)
            if not STEP_PER_LAUNCH:
                arrive(counters_ptr + s * tiles + tile)
        # Only the programs with output columns take part in phase 2 (the rest go on to wait
        # for its end at the next step).
        if PROJECTS and u < Q_PROGRAMS:
            if not STEP_PER_LAUNCH:
                wait_for(counters_ptr + s * tiles + tile, programs)
            h_new = _times_w_t(r_ptr + now_rows * H, row_ok, w_out, outs, out_ok,
                               tl.zeros((BLOCK_B, BLOCK_Q), dtype=tl.float32), H, DOT_DTYPE,
                               WEIGHTS_ON_CHIP, BLOCK_K)
            if W_HR_SCALED:
                h_new *= out_scales
            if ZONEOUT_H:
                h_new = m_h * h + (1.0 - m_h) * h_new
            h = tl.where(keep, h_new.to(y_ptr.dtype.element_ty).to(tl.float32), h)
            tl.store(y_ptr + now_rows[:, None] * P + outs[None, :], h.to(y_ptr.dtype.element_ty),
                     mask=out_mask)
            if not STEP_PER_LAUNCH:
                arrive(counters_ptr + (T + s) * tiles + tile)
        s += 1

    if first_step + num_steps == T:
        if FINISHES_H:
            tl.store(h_n_ptr + state_rows[:, None] * P + outs[None, :], h.to(h_n_ptr.dtype.element_ty),
                     mask=out_mask)
        if GATES:
            tl.store(c_n_ptr + state_rows[:, None] * H + units[None, :], c.to(c_n_ptr.dtype.element_ty),
                     mask=unit_mask)


class ForwardPlan(NamedTuple):
    """Launch configuration of lstm_cooperative_forward_kernel: the kernel's tile constexprs,
    its warps and the grid (unit blocks, batch tiles, directions)."""

    block_u: int
    block_b: int
    block_q: int
    num_warps: int
    weights_on_chip: bool
    grid: tuple[int, int, int]


# 8 warps: at 4 the on-chip slices spill (H = 1024, BLOCK_U = 8, fp16: 36 bytes).
NUM_WARPS = 8
BLOCK_K = 32
# tl.dot's minimum M; the on-chip dots spill at 64 rows (the h tile [BLOCK_B, P] is a dot
# operand too: H = P = 256, BLOCK_U = 8, fp16 spills 176 bytes).
ON_CHIP_BLOCK_B = 16
STREAMED_MAX_BLOCK_B = 64
# BLOCK_U >= 8 keeps the fused dot's N = 4 * BLOCK_U >= 32 (a warp per 8 columns); at 32 the
# streamed kernel spills with 64-row tiles (H = 1024: 20 bytes).
MIN_BLOCK_U = 8
MAX_BLOCK_U = 16
# On-chip weight bytes of one program (W_hh's 4 * BLOCK_U rows and W_hr's BLOCK_Q rows, padded
# to powers of two) up to which the slices stay on chip without spills (numbers in `plan`).
ON_CHIP_BYTES = {torch.float32: 128 * 1024, torch.float16: 96 * 1024, torch.bfloat16: 96 * 1024}
# One program per SM is all a grid of at most sm_count programs needs, so ptxas may take every
# register: left alone, it caps some of these kernels at 128 per thread and spills (fp32
# H = 1024, P = 512, streamed, BLOCK_U 16: 8 bytes; with the cap at 255: 188 registers, none).
MAX_REGISTERS = 255


def _grid_plan(H: int, P: int, B: int, block_b: int, directions: int, sm_count: int,
               has_proj: bool, on_chip: bool) -> ForwardPlan | None:
    """The smallest BLOCK_U in [MIN_BLOCK_U, MAX_BLOCK_U] whose grid has at most sm_count programs."""
    batch_tiles = triton.cdiv(B, block_b)
    block_u = max(MIN_BLOCK_U, triton.next_power_of_2(triton.cdiv(H * batch_tiles * directions, sm_count)))
    if block_u > MAX_BLOCK_U:
        return None
    unit_blocks = triton.cdiv(H, block_u)
    # Phase 2's P columns over the unit blocks, at least tl.dot's minimum N of 16 per program.
    block_q = max(16, triton.next_power_of_2(triton.cdiv(P, unit_blocks))) if has_proj else block_u
    return ForwardPlan(block_u, block_b, block_q, NUM_WARPS, on_chip, (unit_blocks, batch_tiles, directions))


def on_chip_bytes(config: ForwardPlan, H: int, P: int, dtype: torch.dtype, has_proj: bool) -> int:
    """Bytes of the weight slices one program of `config` holds on chip."""
    rows = 4 * config.block_u * feature_block(P) + (config.block_q * feature_block(H) if has_proj else 0)
    return rows * dtype.itemsize


def plan(H: int, P: int, B: int, dtype: torch.dtype, directions: int, sm_count: int) -> ForwardPlan | None:
    """The launch configuration for hidden size H, output size P (a projection exactly when
    P != H: nn.LSTM's proj_size < hidden_size), batch B, storage dtype, 1 or 2 directions, on a
    GPU with sm_count SMs; None when no grid of at most sm_count programs fits (all must be
    resident at once; one program per SM always is, see below).

    The rule: the weights on chip, in 16-row batch tiles, when such a grid fits and one program's
    slices take at most ON_CHIP_BYTES; otherwise streamed from L2 in batch tiles of up to 64 rows
    (fewer tiles: each tile's programs read all of W_hh every step). The grid never exceeds
    sm_count: its programs take at most 255 registers x 8 warps and 227 KiB of shared memory,
    so every SM holds one.

    Compiled for sm_90a with maxnreg 255 (tests/test_cooperative_compile.py compiles every
    configuration this returns for H in {128, 256, 512, 1024}, P = H or H / 2, B in {16, 64},
    1 or 2 directions, fp32 / fp16 / bf16, plain and with peephole, zoneout and cell clip on);
    registers / spill bytes / shared memory, plain (variants), fp16 and bf16 alike:
    - on chip (the compiled kernel holds the slice in shared memory across the loop):
      fp16 H=P=1024 BLOCK_U 8 (64 KiB): 150 (156) / 0 / 96 KiB;
      fp16 H=1024 P=512 BLOCK_U 16 (96 KiB): 212 (220) / 0 / 128 KiB;
      fp32 H=P=1024 BLOCK_U 8 (128 KiB): 160 (164) / 0 / 192 KiB;
      fp32 H=P=512 BLOCK_U 16 (128 KiB): 160 (255) / 0 / 160 KiB;
      all others smaller. Past the budgets: fp16 H=P=1024 BLOCK_U 16 (128 KiB) spills 48 bytes;
      fp32 H=1024 P=512 BLOCK_U 16 (192 KiB) needs 256 KiB of shared memory, over the 227 KiB
      one block may use; 64-row tiles spill at every size (fp16 H=P=256 BLOCK_U 8: 176 bytes).
    - streamed, BLOCK_K 32: at most 254 (254) / 0 / 16 KiB (BLOCK_B 64, BLOCK_U 16, fp32
      H=1024); fp16 H=P=1024 BLOCK_B 64 BLOCK_U 16: 218 (239) / 0 / 8 KiB. BLOCK_U 32 spills
      with 64-row tiles (fp16 H=P=1024: 20 bytes).
    Whether on chip in 16-row tiles beats streaming in fewer, larger tiles at the boundary is for
    a GPU benchmark to show; none has run.
    """
    if directions not in (1, 2):
        raise ValueError(f"directions must be 1 or 2, not {directions}")
    has_proj = P != H
    chip = _grid_plan(H, P, B, ON_CHIP_BLOCK_B, directions, sm_count, has_proj, on_chip=True)
    if chip is not None and on_chip_bytes(chip, H, P, dtype, has_proj) <= ON_CHIP_BYTES[dtype]:
        return chip
    block_b = min(STREAMED_MAX_BLOCK_B, max(16, triton.next_power_of_2(B)))
    return _grid_plan(H, P, B, block_b, directions, sm_count, has_proj, on_chip=False)


# The interpreter runs the programs one after another: few "SMs" keep its grids small.
INTERPRETER_SMS = 8


def _sm_count(device: torch.device) -> int:
    """The SMs `plan` may fill: the GPU's, or INTERPRETER_SMS under the interpreter."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SMS


NO_VARIANTS = Variants()


def _stacked(t: Tensor | None) -> Tensor | None:
    """t with a direction axis of 1 in front (None stays None)."""
    return None if t is None else t[None]


def cooperative_forward(
    gates_x: Tensor, w_hh: Tensor, w_hr: Tensor | None, h0: Tensor, c0: Tensor, lengths: Tensor,
    reverse: bool, v: Variants = NO_VARIANTS, config: ForwardPlan | None = None,
    w_hh_scale: Tensor | None = None, w_hr_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Padded in and out, as persistent_forward (same call, same results): gates_x [T*B, 4H] ->
    y [T*B, P] (storage dtype), h_n [B, P], c_n [B, H], gates [T*B, 4H] and cells [T*B, H]
    (float32). lengths int32 [B] on the device; all contiguous; w_hh [4H, P], w_hr [P, H] or
    None, h0 [B, P], c0 [B, H].

    Both directions of a bidirectional layer in one launch: every tensor but lengths takes a
    leading direction axis D = 2 (all outputs then have it too); direction 0 runs reversed when
    `reverse`, direction 1 the other way. v (params.Variants): peephole [3, H], zoneout_c
    [T*B, H], zoneout_h [T*B, P] (padded rows as gates_x's), with the direction axis in front
    when there is one; cell_clip; layer norm is not supported. config: plan()'s for this shape
    and device when None (planned for weight_operand_dtype, the dtype the weights are held in).
    w_hh_scale [4H] / w_hr_scale [P] (direction axis in front too): the per-row scales of int8
    weights, None for float weights.
    """
    if gates_x.dim() == 2:
        v = v._replace(peephole=_stacked(v.peephole))
        outputs = cooperative_forward(gates_x[None], w_hh[None], _stacked(w_hr), h0[None], c0[None], lengths,
                                      reverse, v, config, _stacked(w_hh_scale), _stacked(w_hr_scale))
        return tuple(t[0] for t in outputs)
    if v.has_layer_norm:
        raise ValueError("the cooperative forward has no layer norm")
    D, rows, G = gates_x.shape
    H = G // 4
    B, P = h0.shape[1:]
    device = gates_x.device
    has_proj = w_hr is not None
    if has_proj != (P != H):
        raise ValueError(f"a projection needs P < H (P = {P}, H = {H})")
    y = kernel_output((D, rows, P), gates_x.dtype, device)
    gates = kernel_output((D, rows, G), torch.float32, device)
    cells = kernel_output((D, rows, H), torch.float32, device)
    if rows == 0:  # no step (or no sequence): the final states are the initial ones
        return y, h0.clone(), c0.clone(), gates, cells
    T = rows // B
    config = config or plan(H, P, B, weight_operand_dtype(gates_x.dtype, w_hh, w_hr), D, _sm_count(device))
    if config is None:
        raise ValueError(f"no cooperative grid fits H = {H}, B = {B}, {D} direction(s) on this GPU")
    h_n = kernel_output((D, B, P), h0.dtype, device)
    c_n = kernel_output((D, B, H), c0.dtype, device)
    # The projection's input, a row per step (phase 2 of a step may still read it while phase 1
    # of the next writes); in the storage dtype, the dot's operand dtype.
    r = kernel_output((D, rows, H), gates_x.dtype, device) if has_proj else y
    counters = arrival_counters(2 if has_proj else 1, T, D * config.grid[1], device)
    stand_in = w_hh  # the pointer of a variant or scale that is off (never read)
    peephole, _, _, zoneout_c, zoneout_h = v.tensors(stand_in)
    args = dict(
        gx_ptr=gates_x, w_hh_ptr=w_hh, w_hr_ptr=w_hr if has_proj else w_hh,
        w_hh_scale_ptr=stand_in if w_hh_scale is None else w_hh_scale,
        w_hr_scale_ptr=stand_in if w_hr_scale is None else w_hr_scale, h0_ptr=h0, c0_ptr=c0,
        lengths_ptr=lengths, peephole_ptr=peephole, zc_ptr=zoneout_c, zh_ptr=zoneout_h,
        y_ptr=y, gates_ptr=gates, cells_ptr=cells, r_ptr=r, h_n_ptr=h_n, c_n_ptr=c_n, counters_ptr=counters,
        T=T, B=B, reverse=int(reverse), cell_clip=v.cell_clip_value,
    )
    constexprs = dict(
        H=H, P=P, HAS_PROJ=has_proj, PEEPHOLE=v.peephole is not None, ZONEOUT_C=v.zoneout_c is not None,
        ZONEOUT_H=v.zoneout_h is not None, CELL_CLIP=v.cell_clip is not None,
        W_HH_SCALED=w_hh_scale is not None, W_HR_SCALED=w_hr_scale is not None,
        DOT_DTYPE=weight_dot_dtype(gates_x.dtype, w_hh, w_hr), BLOCK_B=config.block_b, BLOCK_U=config.block_u,
        BLOCK_Q=config.block_q, BLOCK_K=BLOCK_K, BLOCK_P=feature_block(P), BLOCK_H=feature_block(H),
        WEIGHTS_ON_CHIP=config.weights_on_chip, num_warps=config.num_warps, num_stages=1,
        maxnreg=MAX_REGISTERS,
    )
    kernel = lstm_cooperative_forward_kernel
    if triton_interpreter_enabled():
        for s in range(T):
            for phase in (1, 2) if has_proj else (1,):
                kernel[config.grid](**args, first_step=s, num_steps=1, **constexprs,
                                    STEP_PER_LAUNCH=True, PHASE=phase)
    else:
        launch_resident(kernel, config.grid, device, **args, first_step=0, num_steps=T, **constexprs,
                        STEP_PER_LAUNCH=False, PHASE=0)
    return y, h_n, c_n, gates, cells
