"""vmap rules of the lstm_fwd / lstm_bwd ops (registered by autograd.py).

A rule gets the op's arguments with the vmapped dimension removed, and `in_dims` of the same
structure (None for an argument that is not vmapped; a list for `params`). Two ways:

- fold: the vmapped dimension becomes part of the batch. The recurrence treats batch rows
  independently, so V sequences of batch B are one call of batch V * B. Used by lstm_fwd when
  the weights are shared (not vmapped) and the input is not packed: per-sample gradients
  (`vmap(grad(...))`) and batched inference take this path.
- loop: one op call per vmapped index, results stacked. Used otherwise: vmapped weights
  (ensembles), packed input, and lstm_bwd (whose weight gradients must stay per index, which a
  fold would sum).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from torch_lstm_ext.params import PER_ROW_NAMES


def _select(t, dim: int | None, index: int):
    if isinstance(t, list):
        dims = dim if isinstance(dim, (list, tuple)) else [None] * len(t)
        return [_select(x, d, index) for x, d in zip(t, dims)]
    return t if dim is None or t is None else t.select(dim, index)


def _stack(parts: Sequence):
    """One output of every index stacked at dimension 0 (a list output: element by element)."""
    if isinstance(parts[0], list):
        return [torch.stack(element) for element in zip(*parts)]
    return torch.stack(parts)


def loop_rule(op: Callable) -> Callable:
    """A vmap rule calling `op` once per vmapped index; every output stacked at dimension 0."""

    def rule(info, in_dims: Sequence, *args):
        results = [op(*(_select(a, d, i) for a, d in zip(args, in_dims))) for i in range(info.batch_size)]
        outputs = tuple(_stack(parts) for parts in zip(*results))
        return outputs, tuple([0] * len(out) if isinstance(out, list) else 0 for out in outputs)

    return rule


def _time_major_with_vmap(t: Tensor | None, dim: int | None, size: int) -> Tensor | None:
    """[T, B, F] with the vmapped dimension at `dim` (None: shared) -> [T, V * B, F]."""
    if t is None:
        return None
    t = t.unsqueeze(1).expand(t.shape[0], size, *t.shape[1:]) if dim is None else t.movedim(dim, 1)
    return t.reshape(t.shape[0], size * t.shape[2], t.shape[3])


def _state_with_vmap(t: Tensor, dim: int | None, size: int) -> Tensor:
    """[B, F] with the vmapped dimension at `dim` (None: shared) -> [V * B, F]."""
    t = t.unsqueeze(0).expand(size, *t.shape) if dim is None else t.movedim(dim, 0)
    return t.reshape(size * t.shape[1], t.shape[2])


def lstm_fwd_rule(info, in_dims: Sequence, gates_x, h0, c0, params, param_names, batch_sizes, reverse,
                  cell_clip=None, grad_clip=None):
    """lstm_fwd under vmap: fold into the batch where the weights are shared, else loop."""
    op = torch.ops.torch_lstm_ext.lstm_fwd
    g_dim, h_dim, c_dim, p_dims = in_dims[:4]
    p_dims = p_dims if isinstance(p_dims, (list, tuple)) else [None] * len(params)
    shared_weights = all(d is None for d, name in zip(p_dims, param_names) if name not in PER_ROW_NAMES)
    if batch_sizes is not None or gates_x.dim() - (g_dim is not None) != 3 or not shared_weights:
        args = (gates_x, h0, c0, params, param_names, batch_sizes, reverse, cell_clip, grad_clip)
        return loop_rule(op)(info, in_dims, *args)
    size = info.batch_size
    # The weights (and int8 scales) are shared; the zoneout weights are per row, like gates_x.
    folded = [_time_major_with_vmap(t, d, size) if name in PER_ROW_NAMES else t
              for t, d, name in zip(params, p_dims, param_names)]
    y, h_n, c_n, gates, cells = op(
        _time_major_with_vmap(gates_x, g_dim, size), _state_with_vmap(h0, h_dim, size),
        _state_with_vmap(c0, c_dim, size), folded, param_names, None, reverse, cell_clip, grad_clip,
    )

    def unfold_time_major(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], size, t.shape[1] // size, t.shape[2])

    def unfold_state(t: Tensor) -> Tensor:
        return t.reshape(size, t.shape[0] // size, t.shape[1])

    outputs = (unfold_time_major(y), unfold_state(h_n), unfold_state(c_n), unfold_time_major(gates),
               unfold_time_major(cells))
    return outputs, (1, 0, 0, 1, 1)


def lstm_bwd_rule(info, in_dims: Sequence, *args):
    """lstm_bwd under vmap: one call per index (each index's weight gradients stay its own)."""
    return loop_rule(torch.ops.torch_lstm_ext.lstm_bwd)(info, in_dims, *args)
