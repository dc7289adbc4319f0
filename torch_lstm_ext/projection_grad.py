"""The input projection's backward, block by block, as the custom op
`torch.ops.torch_lstm_ext.input_projection_bwd`, and the autograd.Function that uses it.

Its weight gradients (W_ih, the bias, the layer-norm gain) are reduced per block of
schedule.time_blocks, last block first, and the blocks' sums added in that order: exactly what
checkpoint.py does as it recomputes one block at a time, so a checkpointed layer's gradients
equal the stored path's bit for bit. The op is opaque to torch.compile, so the block loop,
whose length depends on T, does not specialise a compiled graph on the sequence length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torch_lstm_ext.dtypes import compute_dtype
from torch_lstm_ext.projection import (
    LayerWeights,
    ProjectionGrads,
    input_projection,
    input_projection_backward,
)
from torch_lstm_ext.schedule import as_rows, time_blocks


class GradSums:
    """Running sums of named gradients, in the order they are added (that order fixes the
    rounding, so every caller that must agree bit for bit adds in the same order), kept in the
    compute dtype (float32 for half types) and rounded to the storage dtype once, by `get`."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}

    def add(self, name: str, grad: Tensor | None) -> None:
        if grad is not None and grad.numel():
            grad = grad.to(compute_dtype(grad.dtype))
            self.sums[name] = grad if name not in self.sums else self.sums[name] + grad

    def get(self, name: str, dtype: torch.dtype) -> Tensor | None:
        total = self.sums.get(name)
        return None if total is None else total.to(dtype)


def _blocks(d_gates_x: Tensor, batch_sizes: Tensor | None, reverse: bool, block_steps: int):
    """time_blocks of a [T, B, 4H] or packed [N, 4H] gradient, in backward order."""
    batch = d_gates_x.shape[1] if batch_sizes is None else int(batch_sizes[0]) if len(batch_sizes) else 0
    blocks = time_blocks(batch_sizes, as_rows(d_gates_x).shape[0], batch, reverse, block_steps)
    return blocks[::-1]


@torch.library.custom_op("torch_lstm_ext::input_projection_bwd", mutates_args=())
def input_projection_bwd(
    d_gates_x: Tensor,
    x: Tensor,
    w_ih: Tensor,
    ln_ih: Tensor | None,
    has_bias: bool,
    compute_dx: bool,
    batch_sizes: Tensor | None,
    reverse: bool,
    block_steps: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of projection.input_projection: (dx like x (empty unless compute_dx), d_w_ih
    [4H, I], d_bias [4H] (empty without bias), d_ln_ih [4H] (empty without layer norm)).
    d_gates_x [T, B, 4H] or packed [N, 4H]; x [T, B, I] or [N, I]."""
    x_rows, d_rows = as_rows(x), as_rows(d_gates_x)
    dx = torch.empty_like(x_rows) if compute_dx else x.new_empty(0)
    sums = GradSums()
    for block in _blocks(d_gates_x, batch_sizes, reverse, block_steps):
        rows = slice(block.lo, block.hi)
        grads = input_projection_backward(x_rows[rows], w_ih, ln_ih, has_bias, d_rows[rows])
        if compute_dx:
            dx[rows] = grads.x
        add_projection_grads(sums, grads)
    return (
        dx.reshape(x.shape) if compute_dx else dx,
        sums.get("w_ih", w_ih.dtype),
        sums.get("bias", w_ih.dtype) if has_bias else w_ih.new_empty(0),
        sums.get("ln_ih", w_ih.dtype) if ln_ih is not None else w_ih.new_empty(0),
    )


def add_projection_grads(sums: GradSums, grads: ProjectionGrads) -> None:
    """Add one block's projection weight gradients to `sums` (the order checkpoint.py shares)."""
    sums.add("w_ih", grads.w_ih)
    sums.add("bias", grads.bias)
    sums.add("ln_ih", grads.ln_ih)


@input_projection_bwd.register_fake
def _input_projection_bwd_fake(d_gates_x, x, w_ih, ln_ih, has_bias, compute_dx, batch_sizes, reverse,
                               block_steps=0):
    return (
        x.new_empty(x.shape) if compute_dx else x.new_empty(0),
        w_ih.new_empty(w_ih.shape),
        w_ih.new_empty(w_ih.shape[:1] if has_bias else (0,)),
        w_ih.new_empty(w_ih.shape[:1] if ln_ih is not None else (0,)),
    )


class InputProjection(torch.autograd.Function):
    """apply(x, w_ih, b_ih, b_hh, ln_ih, batch_sizes, reverse) -> gates_x: input_projection,
    with the backward above (or, under create_graph, autograd through input_projection)."""

    @staticmethod
    def forward(ctx, x, w_ih, b_ih, b_hh, ln_ih, batch_sizes, reverse):
        ctx.save_for_backward(x, w_ih, b_ih, b_hh, ln_ih, batch_sizes)
        ctx.reverse = reverse
        return input_projection(x, LayerWeights(w_ih, None, b_ih, b_hh, None, ln_ih=ln_ih))

    @staticmethod
    def backward(ctx, grad):
        x, w_ih, b_ih, b_hh, ln_ih, batch_sizes = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad)
        has_bias = b_ih is not None
        dx, d_w_ih, d_bias, d_ln = torch.ops.torch_lstm_ext.input_projection_bwd(
            grad.contiguous(), x, w_ih, ln_ih, has_bias, ctx.needs_input_grad[0], batch_sizes, ctx.reverse
        )
        return (
            dx if ctx.needs_input_grad[0] else None,
            d_w_ih,
            d_bias if has_bias else None,
            d_bias if has_bias else None,
            d_ln if ln_ih is not None else None,
            None,
            None,
        )


def _differentiable_backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
    """The backward as a graph (create_graph=True): autograd through input_projection."""
    inputs = ctx.saved_tensors[:5]
    wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
    with torch.enable_grad():
        x, w_ih, b_ih, b_hh, ln_ih = inputs
        gates_x = input_projection(x, LayerWeights(w_ih, None, b_ih, b_hh, None, ln_ih=ln_ih))
        found = torch.autograd.grad(gates_x, [inputs[i] for i in wanted], grad, create_graph=True,
                                    allow_unused=True)
    result: list[Tensor | None] = [None] * 7
    for i, g in zip(wanted, found):
        result[i] = g if g is not None else torch.zeros_like(inputs[i])
    return tuple(result)


def projected_input(x: Tensor, w: LayerWeights, batch_sizes: Tensor | None, reverse: bool) -> Tensor:
    """input_projection(x, w) [..., 4H] whose backward reduces per time block (module docstring)."""
    return InputProjection.apply(x, w.w_ih, w.b_ih, w.b_hh, w.ln_ih, batch_sizes, reverse)
