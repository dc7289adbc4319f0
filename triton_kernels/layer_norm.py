"""Device helpers of the layer norms inside the variant kernels, over whole rows in fp32.

Same definition as torch_lstm_ext/normalization.py (and its LN_EPS): no affine part here, biased
variance. A row is either one [BLOCK_B, BLOCK_H] tile (LN_c over H) or the four gate tiles of a
4H row (LN_hh), with `mask` marking the real elements (rows < n, columns < H): masked elements
are zero on the way in and are kept out of every sum, so padding never shifts a mean.
"""

import triton
import triton.language as tl

from torch_lstm_ext import normalization

# A constexpr instance, not an annotation: the compiler refuses other globals (the interpreter
# does not check).
LN_EPS = tl.constexpr(normalization.LN_EPS)


@triton.jit
def _rstd(squares, count):
    """1 / std from the row sums of (x - mean)^2 over `count` elements (sqrt_rn: the IEEE
    square root on the GPU too, where tl.sqrt is an approximation)."""
    return 1.0 / tl.sqrt_rn(squares / count + LN_EPS)


@triton.jit
def normalize(x, mask, width):
    """(x_hat [BLOCK_B, BLOCK_H], rstd [BLOCK_B]) of x over its `width` real columns."""
    mean = tl.sum(x, axis=1) / width
    centered = tl.where(mask, x - mean[:, None], 0.0)
    rstd = _rstd(tl.sum(centered * centered, axis=1), width)
    return centered * rstd[:, None], rstd


@triton.jit
def normalize_gates(a_i, a_f, a_g, a_o, mask, width):
    """LN over a 4H row held as four [BLOCK_B, BLOCK_H] gate tiles of `width` real columns each:
    (x_i, x_f, x_g, x_o, rstd [BLOCK_B])."""
    count = 4 * width
    mean = (tl.sum(a_i, axis=1) + tl.sum(a_f, axis=1) + tl.sum(a_g, axis=1) + tl.sum(a_o, axis=1)) / count
    c_i = tl.where(mask, a_i - mean[:, None], 0.0)
    c_f = tl.where(mask, a_f - mean[:, None], 0.0)
    c_g = tl.where(mask, a_g - mean[:, None], 0.0)
    c_o = tl.where(mask, a_o - mean[:, None], 0.0)
    squares = (tl.sum(c_i * c_i, axis=1) + tl.sum(c_f * c_f, axis=1) + tl.sum(c_g * c_g, axis=1)
               + tl.sum(c_o * c_o, axis=1))
    rstd = _rstd(squares, count)
    s = rstd[:, None]
    return c_i * s, c_f * s, c_g * s, c_o * s, rstd


@triton.jit
def normalize_backward(d_xhat, xhat, rstd, mask, width):
    """d_x from d_x_hat through `normalize`: rstd * (d - mean(d) - x_hat * mean(d * x_hat))."""
    d = tl.where(mask, d_xhat, 0.0)
    mean_d = tl.sum(d, axis=1) / width
    mean_dx = tl.sum(d * xhat, axis=1) / width
    return tl.where(mask, rstd[:, None] * (d - mean_d[:, None] - xhat * mean_dx[:, None]), 0.0)


@triton.jit
def normalize_gates_backward(d_i, d_f, d_g, d_o, x_i, x_f, x_g, x_o, rstd, mask, width):
    """The four gate tiles of d_x from those of d_x_hat through `normalize_gates`."""
    count = 4 * width
    d_i = tl.where(mask, d_i, 0.0)
    d_f = tl.where(mask, d_f, 0.0)
    d_g = tl.where(mask, d_g, 0.0)
    d_o = tl.where(mask, d_o, 0.0)
    mean_d = (tl.sum(d_i, axis=1) + tl.sum(d_f, axis=1) + tl.sum(d_g, axis=1) + tl.sum(d_o, axis=1)) / count
    mean_dx = (tl.sum(d_i * x_i, axis=1) + tl.sum(d_f * x_f, axis=1) + tl.sum(d_g * x_g, axis=1)
               + tl.sum(d_o * x_o, axis=1)) / count
    s, m, mx = rstd[:, None], mean_d[:, None], mean_dx[:, None]
    return (
        tl.where(mask, s * (d_i - m - x_i * mx), 0.0),
        tl.where(mask, s * (d_f - m - x_f * mx), 0.0),
        tl.where(mask, s * (d_g - m - x_g * mx), 0.0),
        tl.where(mask, s * (d_o - m - x_o * mx), 0.0),
    )
