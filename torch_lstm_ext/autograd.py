"""LSTMFunction, the autograd.Function around the lstm_fwd / lstm_bwd ops, and the ops' own
autograd and vmap registrations, which share its backward.

Two entries, one backward:
- `LSTMFunction.apply` is what the module runs (eager, torch.compile, torch.func);
- the lstm_fwd op itself is differentiable too (`torch.library.register_autograd`), so a graph
  that holds the bare op, such as an exported program's `ep.module()`, trains.
Both save the same tensors (`_save`) and compute gradients in `_gradients`: the lstm_bwd op, or,
when a graph of the gradient is wanted (`create_graph=True`, torch.func), autograd through the
differentiable recurrence.
"""

from __future__ import annotations

import torch
from torch import Tensor

import torch_lstm_ext.ops  # noqa: F401  (defines torch.ops.torch_lstm_ext.*)
from torch_lstm_ext.batching import lstm_bwd_rule, lstm_fwd_rule
from torch_lstm_ext.differentiable_recurrence import lstm_recurrence
from torch_lstm_ext.params import RecurrenceGrads, RecurrenceParams

# LSTMFunction.apply's arguments before the params' tensors: gates_x, h0, c0, param_names,
# batch_sizes, reverse, cell_clip, grad_clip.
_LEADING_ARGS = 8


def _save(ctx, gates_x: Tensor, h0: Tensor, c0: Tensor, p: RecurrenceParams, batch_sizes: Tensor | None,
          reverse: bool, outputs) -> None:
    y, _, _, gates, cells = outputs
    tensors, ctx.param_names = p.op_args()
    ctx.save_for_backward(gates_x, h0, c0, batch_sizes, y, gates, cells, *tensors)
    ctx.reverse, ctx.cell_clip, ctx.grad_clip = reverse, p.variants.cell_clip, p.variants.grad_clip


def _gradients(ctx, grad_y: Tensor, grad_hn: Tensor, grad_cn: Tensor) -> RecurrenceGrads:
    """The gradients of one lstm_fwd call, from what _save kept."""
    gates_x, h0, c0, batch_sizes, y, gates, cells, *tensors = ctx.saved_tensors
    p = RecurrenceParams.from_op(tensors, ctx.param_names, ctx.cell_clip, ctx.grad_clip)
    if torch.is_grad_enabled():
        upstream = (grad_y, grad_hn, grad_cn)
        return _differentiable_gradients(gates_x, h0, c0, p, batch_sizes, ctx.reverse, upstream)
    outputs = torch.ops.torch_lstm_ext.lstm_bwd(
        grad_y.contiguous(), grad_hn.contiguous(), grad_cn.contiguous(), h0, c0, tensors, ctx.param_names,
        batch_sizes, ctx.reverse, y, gates, cells, p.variants.cell_clip, p.variants.grad_clip,
    )
    return RecurrenceGrads.from_op(outputs, p)


def _param_grads(g: RecurrenceGrads, names) -> list[Tensor | None]:
    """One gradient per tensor of the op's params (None for the zoneout weights)."""
    return [getattr(g, name, None) for name in names]


def _differentiable_gradients(gates_x: Tensor, h0: Tensor, c0: Tensor, p: RecurrenceParams,
                              batch_sizes: Tensor | None, reverse: bool, grads: tuple) -> RecurrenceGrads:
    """The gradients as a graph (create_graph=True, torch.func), through the differentiable
    recurrence. The zoneout weights are masks or constants and get no gradient.

    Under a torch.func transform through torch.func.vjp: autograd.grad inside a backward sees no
    graph under torch.func.vjp / jacrev and returned zero input gradients. Otherwise through
    autograd.grad, which gives the same gradients 1.3x faster (gradgradcheck)."""
    v = p.variants
    # The differentiable inputs, held in RecurrenceGrads' layout: one field per gradient.
    inputs = RecurrenceGrads(gates_x, h0, c0, p.w_hh, p.w_hr, v.peephole, v.ln_hh, v.ln_c)

    def recurrence(tensors: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        t = inputs._replace(**tensors)
        params = RecurrenceParams(t.w_hh, t.w_hr, v._replace(peephole=t.peephole, ln_hh=t.ln_hh, ln_c=t.ln_c))
        return lstm_recurrence(t.gates_x, t.h0, t.c0, params, batch_sizes, reverse)

    with torch.enable_grad():
        if torch._C._are_functorch_transforms_active():  # the test torch's Function.apply makes
            present = {name: t for name, t in zip(inputs._fields, inputs) if t is not None}
            _, pullback = torch.func.vjp(recurrence, present)
            (found,) = pullback(tuple(grads))
        else:
            found = _autograd_gradients(recurrence, inputs, grads)
    return RecurrenceGrads(*(found.get(name) for name in inputs._fields))


def _autograd_gradients(recurrence, inputs: RecurrenceGrads, grads: tuple) -> dict[str, Tensor]:
    """{name: gradient} of the inputs that require grad (zeros where unused), create_graph=True."""
    wanted = {name: t for name, t in zip(inputs._fields, inputs) if t is not None and t.requires_grad}
    outputs = recurrence({})
    # An output outside the graph passes no gradient on: an empty batch takes no steps and
    # returns its h0 / c0 as they came.
    live = [(out, grad) for out, grad in zip(outputs, grads) if out.requires_grad]
    found = [None] * len(wanted)
    if live and wanted:
        found = torch.autograd.grad([out for out, _ in live], list(wanted.values()), [g for _, g in live],
                                    create_graph=True, allow_unused=True)
    return {name: torch.zeros_like(t) if g is None else g for (name, t), g in zip(wanted.items(), found)}


class LSTMFunction(torch.autograd.Function):
    """One layer, one direction of the recurrence.

    apply(gates_x, h0, c0, param_names, batch_sizes, reverse, cell_clip, grad_clip, *params)
        -> (y, h_n, c_n, gates, cells)
    with the ops' shapes and (params, param_names) = RecurrenceParams.op_args() (ops.py). gates and cells are
    what the backward keeps (not differentiable). Gradients flow to gates_x, h0, c0 and the
    weights in params; the input projection's weights get theirs through gates_x, and the
    zoneout weights get none.
    """

    @staticmethod
    def forward(gates_x, h0, c0, param_names, batch_sizes, reverse, cell_clip, grad_clip, *params):
        return torch.ops.torch_lstm_ext.lstm_fwd(gates_x, h0, c0, list(params), list(param_names),
                                                 batch_sizes, reverse, cell_clip, grad_clip)

    @staticmethod
    def setup_context(ctx, inputs, output):
        gates_x, h0, c0, names, batch_sizes, reverse, cell_clip, grad_clip, *params = inputs
        p = RecurrenceParams.from_op(params, names, cell_clip, grad_clip)
        _save(ctx, gates_x, h0, c0, p, batch_sizes, reverse, output)
        ctx.mark_non_differentiable(output[3], output[4])

    @staticmethod
    def backward(ctx, grad_y, grad_hn, grad_cn, _grad_gates, _grad_cells):
        g = _gradients(ctx, grad_y, grad_hn, grad_cn)
        return (g.gates_x, g.h0, g.c0, None, None, None, None, None, *_param_grads(g, ctx.param_names))

    @staticmethod
    def vmap(info, in_dims, gates_x, h0, c0, names, batch_sizes, reverse, cell_clip, grad_clip, *params):
        op_dims = (*in_dims[:3], list(in_dims[_LEADING_ARGS:]), None, None, None, None, None)
        return lstm_fwd_rule(info, op_dims, gates_x, h0, c0, list(params), list(names), batch_sizes, reverse,
                             cell_clip, grad_clip)


def _op_setup_context(ctx, inputs, output) -> None:
    gates_x, h0, c0, params, names, batch_sizes, reverse, cell_clip, grad_clip = inputs
    p = RecurrenceParams.from_op(params, names, cell_clip, grad_clip)
    _save(ctx, gates_x, h0, c0, p, batch_sizes, reverse, output)


def _op_backward(ctx, grad_y, grad_hn, grad_cn, _grad_gates, _grad_cells):
    g = _gradients(ctx, grad_y, grad_hn, grad_cn)
    grads = (g.gates_x, g.h0, g.c0, _param_grads(g, ctx.param_names))
    # One entry per argument of the call, which may have left out trailing defaults (an exported
    # graph does), although setup_context saw them filled in.
    return grads + (None,) * (len(ctx.needs_input_grad) - len(grads))


torch.library.register_autograd("torch_lstm_ext::lstm_fwd", _op_backward, setup_context=_op_setup_context)
torch.library.register_vmap("torch_lstm_ext::lstm_fwd", lstm_fwd_rule)
torch.library.register_vmap("torch_lstm_ext::lstm_bwd", lstm_bwd_rule)


def lstm_layer(
    gates_x: Tensor,
    h0: Tensor,
    c0: Tensor,
    params: RecurrenceParams,
    batch_sizes: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The recurrence of one layer and direction through LSTMFunction: (y, h_n, c_n)."""
    v = params.variants
    tensors, names = params.op_args()
    y, h_n, c_n, _, _ = LSTMFunction.apply(gates_x, h0, c0, tuple(names), batch_sizes, reverse, v.cell_clip,
                                           v.grad_clip, *tensors)
    return y, h_n, c_n
