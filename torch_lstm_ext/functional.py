"""Multi-layer, bidirectional LSTM over time-major or packed input: the module's engine.

Per layer and direction: the input projection for the whole sequence as one GEMM in torch
(autograd'd), then the recurrence through `LSTMFunction`. Between layers, dropout exactly as
nn.LSTM applies it on the CPU (one `dropout` call on the layer's whole output), so seeded runs
draw the same masks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from torch_lstm_ext.autograd import lstm_layer


class LayerWeights(NamedTuple):
    """One layer, one direction. w_ih [4H, I_layer], w_hh [4H, P], biases [4H], w_hr [P, H]."""

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    w_hr: Tensor | None


def input_projection(x: Tensor, w: LayerWeights) -> Tensor:
    """x [..., I] -> gate pre-activations from the input [..., 4H], both biases included."""
    bias = None if w.b_ih is None else w.b_ih + w.b_hh
    return F.linear(x, w.w_ih, bias)


def lstm(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: list[LayerWeights],
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    batch_sizes: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run a stacked LSTM.

    Args:
        x: [T, B, I] time-major, or packed data [N, I] with `batch_sizes` int64 [T].
        h0: [L*D, B, P]. c0: [L*D, B, H] (D = 2 if bidirectional else 1).
        weights: L*D entries, index layer * D + direction.

    Returns:
        output [T, B, D*P] (or [N, D*P]), h_n [L*D, B, P], c_n [L*D, B, H].
    """
    directions = 2 if bidirectional else 1
    layer_input = x
    h_n, c_n = [], []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            w = weights[index]
            y, h, c = lstm_layer(
                input_projection(layer_input, w),
                w.w_hh,
                w.w_hr,
                h0[index],
                c0[index],
                batch_sizes,
                direction == 1,
            )
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    return layer_input, torch.stack(h_n), torch.stack(c_n)
