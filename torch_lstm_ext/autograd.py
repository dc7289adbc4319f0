"""LSTMFunction: the autograd.Function around the lstm_fwd / lstm_bwd custom ops."""

from __future__ import annotations

import torch
from torch import Tensor

import torch_lstm_ext.ops  # noqa: F401  (registers torch.ops.torch_lstm_ext.*)
from torch_lstm_ext.torch_recurrence import lstm_recurrence


class LSTMFunction(torch.autograd.Function):
    """One layer, one direction of the recurrence.

    apply(gates_x, w_hh, w_hr, h0, c0, batch_sizes, reverse) -> (y, h_n, c_n), with the shapes
    of `ops.py`. Gradients flow to gates_x, w_hh, w_hr, h0 and c0; the input projection's
    weights get theirs from torch autograd through gates_x.
    """

    @staticmethod
    def forward(ctx, gates_x, w_hh, w_hr, h0, c0, batch_sizes, reverse):
        y, h_n, c_n, gates, cells = torch.ops.torch_lstm_ext.lstm_fwd(
            gates_x, w_hh, w_hr, h0, c0, batch_sizes, reverse
        )
        ctx.save_for_backward(gates_x, w_hh, w_hr, h0, c0, batch_sizes, y, gates, cells)
        ctx.reverse = reverse
        return y, h_n, c_n

    @staticmethod
    def backward(ctx, grad_y, grad_hn, grad_cn):
        gates_x, w_hh, w_hr, h0, c0, batch_sizes, y, gates, cells = ctx.saved_tensors
        if torch.is_grad_enabled():
            grads = _differentiable_backward(ctx, (gates_x, w_hh, w_hr, h0, c0), batch_sizes,
                                             (grad_y, grad_hn, grad_cn))
            return (*grads, None, None)
        d_gates_x, d_w_hh, d_w_hr, d_h0, d_c0 = torch.ops.torch_lstm_ext.lstm_bwd(
            grad_y.contiguous(), grad_hn.contiguous(), grad_cn.contiguous(),
            w_hh, w_hr, h0, c0, batch_sizes, ctx.reverse, y, gates, cells,
        )
        return d_gates_x, d_w_hh, d_w_hr if w_hr is not None else None, d_h0, d_c0, None, None


def _differentiable_backward(
    ctx, inputs: tuple[Tensor | None, ...], batch_sizes: Tensor | None, grads: tuple[Tensor, ...]
) -> list[Tensor | None]:
    """Gradients of the five tensor inputs as a graph (create_graph=True)."""
    wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
    with torch.enable_grad():
        outputs = lstm_recurrence(*inputs, batch_sizes, ctx.reverse)
        found = torch.autograd.grad(
            outputs, [inputs[i] for i in wanted], grads, create_graph=True, allow_unused=True
        )
    result: list[Tensor | None] = [None] * len(inputs)
    for i, g in zip(wanted, found):
        result[i] = g if g is not None else torch.zeros_like(inputs[i])
    return result


def lstm_layer(
    gates_x: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    batch_sizes: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Functional entry to LSTMFunction: (y, h_n, c_n). See ops.py for shapes."""
    return LSTMFunction.apply(gates_x, w_hh, w_hr, h0, c0, batch_sizes, reverse)
