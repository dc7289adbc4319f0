"""LSTMFunction: the autograd.Function around the lstm_fwd / lstm_bwd custom ops."""

from __future__ import annotations

import torch
from torch import Tensor

import torch_lstm_ext.ops  # noqa: F401  (registers torch.ops.torch_lstm_ext.*)
from torch_lstm_ext.torch_recurrence import lstm_recurrence

# Positions in LSTMFunction.apply's arguments.
_TENSOR_INPUTS = (0, 1, 2, 3, 4, 7, 8, 9)  # gates_x, w_hh, w_hr, h0, c0, peephole, ln_hh, ln_c


class LSTMFunction(torch.autograd.Function):
    """One layer, one direction of the recurrence.

    apply(gates_x, w_hh, w_hr, h0, c0, batch_sizes, reverse, peephole, ln_hh_weight, ln_c,
    zoneout_c, zoneout_h, cell_clip, grad_clip) -> (y, h_n, c_n), with the shapes of `ops.py`
    (variant arguments None when off). Gradients flow to gates_x, w_hh, w_hr, h0, c0 and the
    variant parameters; the input projection's weights get theirs through gates_x, and the
    zoneout weights get none.
    """

    @staticmethod
    def forward(ctx, gates_x, w_hh, w_hr, h0, c0, batch_sizes, reverse, *variants):
        # Variant arguments may be left out; backward returns one gradient per argument given.
        ctx.num_args = 7 + len(variants)
        variants = variants + (None,) * (7 - len(variants))
        peephole, ln_hh_weight, ln_c, zoneout_c, zoneout_h, cell_clip, grad_clip = variants
        y, h_n, c_n, gates, cells = torch.ops.torch_lstm_ext.lstm_fwd(
            gates_x, w_hh, w_hr, h0, c0, batch_sizes, reverse, peephole, ln_hh_weight, ln_c,
            zoneout_c, zoneout_h, cell_clip,
        )
        ctx.save_for_backward(gates_x, w_hh, w_hr, h0, c0, batch_sizes, y, gates, cells,
                              peephole, ln_hh_weight, ln_c, zoneout_c, zoneout_h)
        ctx.reverse, ctx.cell_clip, ctx.grad_clip = reverse, cell_clip, grad_clip
        return y, h_n, c_n

    @staticmethod
    def backward(ctx, grad_y, grad_hn, grad_cn):
        (gates_x, w_hh, w_hr, h0, c0, batch_sizes, y, gates, cells,
         peephole, ln_hh_weight, ln_c, zoneout_c, zoneout_h) = ctx.saved_tensors
        variants = (peephole, ln_hh_weight, ln_c, zoneout_c, zoneout_h, ctx.cell_clip, ctx.grad_clip)
        if torch.is_grad_enabled():
            inputs = (gates_x, w_hh, w_hr, h0, c0, batch_sizes, ctx.reverse, *variants)
            return _differentiable_backward(ctx, inputs, (grad_y, grad_hn, grad_cn))[: ctx.num_args]
        grads = torch.ops.torch_lstm_ext.lstm_bwd(
            grad_y.contiguous(), grad_hn.contiguous(), grad_cn.contiguous(),
            w_hh, w_hr, h0, c0, batch_sizes, ctx.reverse, y, gates, cells, *variants,
        )
        d_gates_x, d_w_hh, d_w_hr, d_h0, d_c0, d_peephole, d_ln_hh, d_ln_c = grads
        return (
            d_gates_x, d_w_hh, d_w_hr if w_hr is not None else None, d_h0, d_c0, None, None,
            d_peephole if peephole is not None else None,
            d_ln_hh if ln_hh_weight is not None else None,
            d_ln_c if ln_c is not None else None,
            None, None, None, None,
        )[: ctx.num_args]


def _differentiable_backward(ctx, inputs: tuple, grads: tuple[Tensor, ...]) -> tuple[Tensor | None, ...]:
    """Gradients of every apply() argument, as a graph (create_graph=True)."""
    wanted = [
        i for i in _TENSOR_INPUTS
        if i < ctx.num_args and inputs[i] is not None and ctx.needs_input_grad[i]
    ]
    with torch.enable_grad():
        outputs = lstm_recurrence(*inputs)
        # An output outside the graph passes no gradient on: an empty batch takes no steps and
        # returns its h0 / c0 as they came.
        live = [(out, grad) for out, grad in zip(outputs, grads) if out.requires_grad]
        found = [None] * len(wanted)
        if live:
            found = torch.autograd.grad(
                [out for out, _ in live], [inputs[i] for i in wanted], [grad for _, grad in live],
                create_graph=True, allow_unused=True,
            )
    result: list[Tensor | None] = [None] * len(inputs)
    for i, g in zip(wanted, found):
        result[i] = g if g is not None else torch.zeros_like(inputs[i])
    return tuple(result)


def lstm_layer(
    gates_x: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    batch_sizes: Tensor | None = None,
    reverse: bool = False,
    peephole: Tensor | None = None,
    ln_hh_weight: Tensor | None = None,
    ln_c: Tensor | None = None,
    zoneout_c: Tensor | None = None,
    zoneout_h: Tensor | None = None,
    cell_clip: float | None = None,
    grad_clip: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Functional entry to LSTMFunction: (y, h_n, c_n). See ops.py for shapes."""
    return LSTMFunction.apply(gates_x, w_hh, w_hr, h0, c0, batch_sizes, reverse, peephole,
                              ln_hh_weight, ln_c, zoneout_c, zoneout_h, cell_clip, grad_clip)
