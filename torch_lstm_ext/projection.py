"""One layer's weights and its input projection (the GEMM over the whole sequence) with its
backward written out."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from torch_lstm_ext.dtypes import compute_dtype
from torch_lstm_ext.normalization import LN_EPS, normalize, normalize_backward
from torch_lstm_ext.weight_quantization import dequantized_matrix


class LayerWeights(NamedTuple):
    """One layer, one direction. w_ih [4H, I_layer], w_hh [4H, P], biases [4H], w_hr [P, H];
    variant parameters (None when off): peephole [3, H] (w_ci, w_cf, w_co), ln_ih / ln_hh [4H]
    layer-norm gains, ln_c [2, H] (gain, bias); with int8 weights (weight_quantization.py) the
    per-row scales w_ih_scale [4H], w_hh_scale [4H], w_hr_scale [P], else None."""

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    w_hr: Tensor | None
    peephole: Tensor | None = None
    ln_ih: Tensor | None = None
    ln_hh: Tensor | None = None
    ln_c: Tensor | None = None
    w_ih_scale: Tensor | None = None
    w_hh_scale: Tensor | None = None
    w_hr_scale: Tensor | None = None


def summed_biases(b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """b_ih + b_hh [4H], computed so that its backward gives each bias a tensor of its own.

    The backward of `b_ih + b_hh` hands one gradient tensor to both biases, and inductor's
    compiled gradient accumulation (torch 2.13; trace_autograd_ops=True and compiled autograd
    alike) makes that one buffer both .grad: zero_grad(set_to_none=False) then adds each later
    step's gradient into it twice, and in-place gradient ops (clip_grad_norm_) scale it twice.
    Summed as the rows of a [2, 4H] tensor, the backward expands the gradient to [2, 4H] and
    reshapes it for the cat, which copies (stride 0 to contiguous): each bias gets its own row
    of the copy. A clone would not do: inductor drops clones as no-ops. The cost: an [8H] cat
    in the forward and an [8H] copy in the backward.
    """
    return torch.cat((b_ih, b_hh)).view(2, -1).sum(0)


def input_projection(x: Tensor, w: LayerWeights) -> Tensor:
    """x [..., I] -> gate pre-activations from the input [..., 4H], both biases included.

    With layer norm: LN(x @ W_ih^T) * ln_ih + b_ih + b_hh (LN over the 4H block, gain only).
    Quantized W_ih (int8 with w_ih_scale, or a float dtype other than x's: float16 storage) is
    dequantized to x's dtype for this call.
    """
    w_ih = w.w_ih
    if w.w_ih_scale is not None or w_ih.dtype != x.dtype:
        w_ih = dequantized_matrix(w_ih, w.w_ih_scale, x.dtype)
    bias = None if w.b_ih is None else summed_biases(w.b_ih, w.b_hh)
    if w.ln_ih is None:
        return F.linear(x, w_ih, bias)
    projected = F.linear(x, w_ih)
    return F.layer_norm(projected, projected.shape[-1:], w.ln_ih, bias, eps=LN_EPS)


class ProjectionGrads(NamedTuple):
    """Gradients of input_projection: x [..., I], w_ih [4H, I], bias [4H] (the gradient of
    b_ih and of b_hh alike; None without bias), ln_ih [4H] (None without layer norm); the
    weight gradients in the compute dtype."""

    x: Tensor
    w_ih: Tensor
    bias: Tensor | None
    ln_ih: Tensor | None


def input_projection_backward(x: Tensor, w_ih: Tensor, ln_ih: Tensor | None, has_bias: bool,
                              d_gates_x: Tensor) -> ProjectionGrads:
    """The backward of input_projection written out (no autograd.grad inside a backward, which
    torch.compile cannot trace): x [rows, I], d_gates_x [rows, 4H].

    The bias and layer-norm math and the returned weight gradients are in the compute dtype
    (float32 for half types), so that callers summing them over blocks (GradSums) round to the
    storage dtype once, at the end. The GEMMs run in float32 on the CPU, like the rest of the
    CPU path, and in the storage dtype on a GPU, whose tensor cores accumulate in float32 anyway.
    dx comes back in x's dtype.
    """
    acc = compute_dtype(x.dtype)
    gemm = acc if x.device.type == "cpu" else x.dtype
    x_g, w_g = x.to(gemm), w_ih.to(gemm)
    d_out = d_gates_x.to(acc)
    d_bias = d_out.sum(0) if has_bias else None
    d_ln = None
    if ln_ih is not None:
        x_hat, rstd = normalize((x_g @ w_g.T).to(acc))
        d_ln = (d_out * x_hat).sum(0)
        d_out = normalize_backward(d_out * ln_ih.to(acc), x_hat, rstd)
    d_g = d_out.to(gemm)
    return ProjectionGrads((d_g @ w_g).to(x.dtype), (d_g.T @ x_g).to(acc), d_bias, d_ln)
