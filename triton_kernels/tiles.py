"""Device helpers shared by every kernel: the tanh shim, the recurrent dot, state-row loads, the
int8 weights' scales; and the dtype the forward kernels' dots take the weights in.

All values are converted to float32 right after `tl.load`: the interpreter computes bf16
arithmetic wrongly, and the gate math is meant to run in fp32 on the GPU anyway.

Quantized weights (weight_quantization.py) reach the forward kernels as stored: int8 values q
with per-row scales (W = q * scale[:, None]) or float16. The kernels load q and convert it to the
dot's dtype, which holds |q| <= 127 exactly in fp32, fp16 and bf16; the scale of a row factors
out of the dot, so each fp32 dot result column is multiplied by its row's scale
(`scale_columns`). Float16 weights convert like any float weights, into a dot dtype that holds
them exactly (`weight_operand_dtype`).
"""

import torch
import triton
import triton.language as tl

from torch_lstm_ext.triton_kernels.tuning import dot_dtype


def weight_operand_dtype(storage: torch.dtype, *weights: torch.Tensor | None) -> torch.dtype:
    """The dtype a forward kernel holds its recurrent weights in for its dots, for activations
    (gates_x, y) in `storage` and these weight matrices (None: absent): `storage` when each is of
    that dtype or int8 (|q| <= 127 is exact in fp32, fp16 and bf16), else float32, which holds
    any other float weights exactly (float16 from quantize_weights beside bfloat16 activations:
    a bfloat16 model, or bfloat16 autocast). The launchers take DOT_DTYPE and their on-chip
    budgets from this dtype."""
    exact = all(w is None or w.dtype in (storage, torch.int8) for w in weights)
    return storage if exact else torch.float32


def weight_dot_dtype(storage: torch.dtype, *weights: torch.Tensor | None) -> tl.dtype:
    """DOT_DTYPE of a forward kernel: tuning.dot_dtype of weight_operand_dtype(storage, *weights)."""
    return dot_dtype(weight_operand_dtype(storage, *weights))


@triton.jit
def tanh(x):
    """tanh as 2 * sigmoid(2x) - 1: `tl` has no tanh and libdevice's does not run in the interpreter."""
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def dot_acc(a, b, acc, DOT_DTYPE: tl.constexpr):
    """acc + a @ b with fp32 accumulation; a [M, K], b [K, N] (fp32 or DOT_DTYPE), M, N, K >= 16 (GPU).

    DOT_DTYPE float32 runs an IEEE fp32 dot (a plain fp32 dot is TF32 on the GPU, which breaks
    parity with the reference); float16 / bfloat16 runs on tensor cores. The kernels only pass
    operands that are already exact in DOT_DTYPE (loaded from storage of that dtype), so the cast
    loses nothing.
    """
    if DOT_DTYPE == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc)


@triton.jit
def load_rows(ptr, rows, cols, width, mask):
    """fp32 tile ptr[rows, cols] of a row-major [*, width] matrix; rows int64 [R], cols [C]."""
    return tl.load(ptr + rows[:, None] * width + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_state(hist_ptr, init_ptr, prev_offset, prev_n, rows, cols, n, width):
    """The state each active batch row b < n starts a step from: [len(rows), len(cols)] fp32.

    Row b < prev_n continues the sequence of the step processed just before, whose rows are
    hist[prev_offset + b]; other active rows start it here from init[b] (h0 / c0 or the final
    gradients). Two masked loads with scalar offsets: no address is read from memory.
    """
    col_ok = cols[None, :] < width
    from_hist = (rows < prev_n)[:, None] & col_ok
    from_init = ((rows >= prev_n) & (rows < n))[:, None] & col_ok
    hist_rows = (prev_offset + rows).to(tl.int64)
    return load_rows(hist_ptr, hist_rows, cols, width, from_hist) + load_rows(
        init_ptr, rows.to(tl.int64), cols, width, from_init
    )


@triton.jit
def project_tile(r_ptr, w_hr_ptr, rows, cols, row_ok, col_ok, H: tl.constexpr,
                 DOT_DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """fp32 tile of r @ W_hr^T: rows of r [*, H] times columns `cols` of W_hr [P, H] -> [R, C]."""
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        r = load_rows(r_ptr, rows.to(tl.int64), ks, H, row_ok[:, None] & k_ok[None, :])
        w_mask = k_ok[:, None] & col_ok[None, :]
        w = tl.load(w_hr_ptr + cols[None, :] * H + ks[:, None], mask=w_mask, other=0.0).to(tl.float32)
        acc = dot_acc(r, w, acc, DOT_DTYPE)
    return acc


@triton.jit
def row_scales(scale_ptr, rows, rows_ok):
    """The int8 scales scale[rows] (scale [*], any float dtype) as an fp32 [1, len(rows)] row, to
    multiply a dot's columns by; 0 for masked rows, whose columns are masked on store anyway."""
    return tl.load(scale_ptr + rows, mask=rows_ok, other=0.0).to(tl.float32)[None, :]


@triton.jit
def scale_columns(acc, scale_ptr, rows, rows_ok, SCALED: tl.constexpr):
    """acc [R, C] with column k times scale[rows[k]] when SCALED (row_scales), else acc unchanged.

    acc is an fp32 dot X @ Q[rows, :]^T of int8 values Q whose row r dequantizes with scale[r]:
    the scale factors out of the sum, so the result is X @ W[rows, :]^T.
    """
    if SCALED:
        acc = acc * row_scales(scale_ptr, rows, rows_ok)
    return acc


@triton.jit
def store_gates(gates_ptr, out_rows, cols, i, f, g, o, mask, H: tl.constexpr):
    """Write a tile of the activated gates i, f, g, o into rows out_rows of gates [N, 4H]."""
    gate_ptrs = gates_ptr + out_rows[:, None] * (4 * H) + cols[None, :]
    tl.store(gate_ptrs, i, mask=mask)
    tl.store(gate_ptrs + H, f, mask=mask)
    tl.store(gate_ptrs + 2 * H, g, mask=mask)
    tl.store(gate_ptrs + 3 * H, o, mask=mask)
