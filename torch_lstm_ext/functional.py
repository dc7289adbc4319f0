"""Multi-layer, bidirectional LSTM over time-major or packed input: the module's engine.

Per layer and direction: the input projection for the whole sequence as one GEMM in torch
(autograd'd), then the recurrence through `LSTMFunction`. Between layers, dropout exactly as
nn.LSTM applies it on the CPU (one `dropout` call on the layer's whole output), so seeded runs
draw the same masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from torch_lstm_ext.autograd import lstm_layer
from torch_lstm_ext.checkpoint import checkpointed_layer
from torch_lstm_ext.params import RecurrenceParams, Variants
from torch_lstm_ext.profiling import label_backward, stage
from torch_lstm_ext.projection import LayerWeights, input_projection
from torch_lstm_ext.variants import VariantConfig, zoneout_weights

PLAIN = VariantConfig()


def run_layer(
    x: Tensor,
    w: LayerWeights,
    h0: Tensor,
    c0: Tensor,
    batch_sizes: Tensor | None,
    reverse: bool,
    variants: VariantConfig,
    training: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """One layer and direction: x [T, B, I] or packed [N, I] -> (y, h_n, c_n).

    Draws this layer's random variant masks from torch's RNG, in this order: the weight_hh
    DropConnect mask, the cell zoneout mask [..., H], the hidden zoneout mask [..., P].
    """
    if variants.weight_dropout and training:
        w = w._replace(w_hh=F.dropout(w.w_hh, variants.weight_dropout, training=True))
    lead = x.shape[:-1]
    zoneout_c = zoneout_weights(variants.zoneout_cell, (*lead, c0.shape[-1]), x, training)
    zoneout_h = zoneout_weights(variants.zoneout_hidden, (*lead, h0.shape[-1]), x, training)
    p = RecurrenceParams(w.w_hh, w.w_hr, Variants(w.peephole, w.ln_hh, w.ln_c, zoneout_c, zoneout_h,
                                                   variants.cell_clip, variants.grad_clip),
                         w.w_hh_scale, w.w_hr_scale)
    if variants.checkpoint:
        return checkpointed_layer(x, w, h0, c0, p, batch_sizes, reverse)
    with stage("input_gemm"):
        gates_x = label_backward(input_projection(x, w), "input_projection_backward", x)
    return lstm_layer(gates_x, h0, c0, p, batch_sizes, reverse)


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w: LayerWeights) -> tuple[Tensor, Tensor]:
    """One LSTMCell step: x [B, I], h [B, H], c [B, H] -> (h', c'), a one-step recurrence."""
    with stage("input_gemm"):
        gates_x = label_backward(input_projection(x, w), "input_projection_backward", x).unsqueeze(0)
    _, h_new, c_new = lstm_layer(gates_x, h, c, RecurrenceParams(w.w_hh, w_hh_scale=w.w_hh_scale))
    return h_new, c_new


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
    variants: VariantConfig = PLAIN,
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
            y, h, c = run_layer(
                layer_input, w, h0[index], c0[index], batch_sizes, direction == 1, variants, training
            )
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    return layer_input, torch.stack(h_n), torch.stack(c_n)
