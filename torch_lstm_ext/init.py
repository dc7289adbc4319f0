"""Initialisers for torch.nn.LSTM / LSTMCell and ours (they share parameter names).

A layer has two bias vectors, so "forget bias = v" means b_ih[H:2H] + b_hh[H:2H] = v: v goes to
b_ih and 0 to b_hh, other slices untouched.
"""

from __future__ import annotations

import torch
from torch import nn


def _gate_blocks(weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The i, f, g, o row blocks of a [4H, ...] weight, as views."""
    return weight.chunk(4, dim=0)


def _bias_pairs(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    params = dict(module.named_parameters())
    return [
        (params[name], params["bias_hh" + name[len("bias_ih") :]])
        for name in params
        if name.startswith("bias_ih") and params.get(name) is not None
    ]


@torch.no_grad()
def forget_bias_(module: nn.Module, value: float) -> nn.Module:
    """Set every layer's forget-gate bias to `value` (b_ih[H:2H] = value, b_hh[H:2H] = 0).

    Raises ValueError for a module without biases. Returns `module`.
    """
    pairs = _bias_pairs(module)
    if not pairs:
        raise ValueError(f"{type(module).__name__} has no bias parameters (built with bias=False)")
    for b_ih, b_hh in pairs:
        _gate_blocks(b_ih)[1].fill_(value)
        _gate_blocks(b_hh)[1].zero_()
    return module


@torch.no_grad()
def xavier_orthogonal_(module: nn.Module, forget_bias: float = 1.0) -> nn.Module:
    """Xavier-uniform input weights and orthogonal recurrent weights, per gate block; biases
    zero except the forget gate's (see forget_bias_). Projection, peephole and layer-norm
    parameters are left as they are. Works on nn.LSTM / nn.LSTMCell and ours; returns `module`.
    """
    for name, weight in module.named_parameters():
        if name.startswith("weight_ih"):
            for block in _gate_blocks(weight):
                nn.init.xavier_uniform_(block)
        elif name.startswith("weight_hh"):
            for block in _gate_blocks(weight):
                nn.init.orthogonal_(block)
        elif name.startswith(("bias_ih", "bias_hh")):
            weight.zero_()
    if _bias_pairs(module):
        forget_bias_(module, forget_bias)
    return module
