"""Structured pruning of LSTM hidden units: `prune_hidden_units` and `prune_linear_inputs`.

Removing hidden unit j of a layer and direction removes its four gate rows (i, f, g, o) of
weight_ih / weight_hh / both biases, its entries of the per-unit variant parameters (peephole
weights, layer-norm gains and biases), and every connection that reads its hidden value: its
weight_hh column and the next layer's weight_ih column (no projection), or its weight_hr column
(with a projection, whose P outputs stay). The pruned LSTM then computes exactly what the
original computes with those connections zeroed, on the kept units (and, with a projection, on
the whole output). Layer norm is the exception: its statistics run over a layer's remaining
gate rows and units, so a pruned layer-norm LSTM only approximates the original.

Scores, per layer and direction [D, H] (higher is kept):
- "weight": the L2 norm of the unit's gate rows, its 4 rows of weight_ih and weight_hh together.
- "activation": the mean |h_t| of the unit over every valid (time step, sequence) of `data`. With
  a projection h_t is the projected output, so the unit's statistic is the mean |o_t * tanh(c_t)|
  (tanh of the normalised cell with layer norm): the value the unit feeds to weight_hr. Computed
  in eval mode (no dropout, zoneout at its expected value) from zero initial states.
"""

from __future__ import annotations

import dataclasses
import numbers

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from torch_lstm_ext.differentiable_recurrence import lstm_recurrence
from torch_lstm_ext.module import LSTM
from torch_lstm_ext.params import RecurrenceParams, Variants
from torch_lstm_ext.projection import LayerWeights, input_projection
from torch_lstm_ext.validation import check_lstm_forward_args
from torch_lstm_ext.variants import VariantConfig

CRITERIA = ("activation", "weight")


def prune_hidden_units(lstm: nn.Module, amount: float, criterion: str = "activation",
                       data: Tensor | PackedSequence | None = None) -> tuple[LSTM, list[Tensor]]:
    """Remove round(amount * H) hidden units (Python's round) from every layer and direction.

    lstm: a torch_lstm_ext.LSTM or a torch.nn.LSTM, left unchanged. amount: in (0, 1), and must
    remove at least one unit and keep at least one. data: for "activation", inputs as the LSTM's
    forward takes them ([T, B, I], [B, T, I] with batch_first, unbatched [T, I], PackedSequence).

    Returns (pruned, kept): a new torch_lstm_ext.LSTM with hidden_size H' = H - round(amount * H)
    and otherwise the same configuration, variants, dtype, device, train/eval mode and
    requires_grad (its parameters are fresh tensors, sliced copies); and per layer an int64
    tensor [D, H'] on the parameters' device with the kept units' original indices, increasing.
    Each layer and direction keeps its own H' highest-scoring units (ties: the lower index).
    """
    if not isinstance(lstm, (nn.LSTM, LSTM)):
        raise TypeError(f"prune_hidden_units expects a torch_lstm_ext.LSTM or torch.nn.LSTM, "
                        f"got {type(lstm).__name__}")
    if getattr(lstm, "weight_quantization", None) is not None:
        raise ValueError("prune_hidden_units: this LSTM's weights are quantized; prune the float LSTM, "
                         "then quantize the pruned one (torch_lstm_ext.quantize_weights)")
    hidden = lstm.hidden_size
    removed = _units_removed(amount, hidden)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if criterion == "activation" and data is None:
        raise ValueError('criterion="activation" needs data: a tensor or PackedSequence of inputs '
                         "to measure each unit's mean |h_t| on")
    if criterion == "weight" and data is not None:
        raise ValueError('data is only used by criterion="activation"; pass data=None with "weight"')

    scores = unit_activity(lstm, data) if criterion == "activation" else weight_norms(lstm)
    kept = [_top_units(s, hidden - removed) for s in scores]
    return _sliced_lstm(lstm, kept), kept


def prune_linear_inputs(linear: nn.Linear, kept_last_layer: Tensor, hidden_size: int) -> nn.Linear:
    """The nn.Linear that follows an LSTM without projection, restricted to its kept features.

    linear: in_features D * hidden_size (the original LSTM's output, directions concatenated);
    kept_last_layer: [D, H'] int64, the last entry of prune_hidden_units' `kept`. Returns a new
    nn.Linear(D * H', out_features) with the matching weight columns (copies) and the same bias,
    dtype, device, train/eval mode and requires_grad.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"prune_linear_inputs expects an nn.Linear, got {type(linear).__name__}")
    if not isinstance(kept_last_layer, Tensor) or kept_last_layer.dim() != 2 \
            or kept_last_layer.dtype != torch.int64:
        raise ValueError("kept_last_layer must be an int64 tensor [num_directions, H'] "
                         "(the last entry of prune_hidden_units' kept)")
    directions = kept_last_layer.shape[0]
    if linear.in_features != directions * hidden_size:
        raise ValueError(f"linear.in_features is {linear.in_features}, but the LSTM's output has "
                         f"{directions} x hidden_size {hidden_size} = {directions * hidden_size} features")
    if kept_last_layer.numel() and not 0 <= kept_last_layer.min() <= kept_last_layer.max() < hidden_size:
        raise ValueError(f"kept_last_layer holds indices outside [0, {hidden_size})")
    offsets = torch.arange(directions, device=kept_last_layer.device)[:, None] * hidden_size
    columns = (kept_last_layer + offsets).reshape(-1).to(linear.weight.device)

    pruned = nn.Linear(columns.numel(), linear.out_features, bias=linear.bias is not None,
                       device="meta", dtype=linear.weight.dtype)  # meta: no init, no random numbers
    with torch.no_grad():
        pruned.weight = _parameter(linear.weight.index_select(1, columns), linear.weight)
        if linear.bias is not None:
            pruned.bias = _parameter(linear.bias.clone(), linear.bias)
    pruned.train(linear.training)
    return pruned


def weight_norms(lstm: nn.Module) -> list[Tensor]:
    """Per layer [D, H]: each unit's L2 norm over its 4 gate rows of weight_ih and weight_hh
    (float32 at least)."""
    hidden, directions = lstm.hidden_size, 2 if lstm.bidirectional else 1
    norms = []
    with torch.no_grad():
        for layer in range(lstm.num_layers):
            per_direction = []
            for suffix in _suffixes(layer, directions):
                squares = sum(_float(getattr(lstm, f"{kind}_{suffix}")).pow(2).sum(1).view(4, hidden)
                              for kind in ("weight_ih", "weight_hh"))
                per_direction.append(squares.sum(0).sqrt())
            norms.append(torch.stack(per_direction))
    return norms


@torch.no_grad()
def unit_activity(lstm: nn.Module, data: Tensor | PackedSequence) -> list[Tensor]:
    """Per layer [D, H]: each unit's mean |h_t| over the valid positions of `data` (module
    docstring: o * tanh(c) with a projection), computed by a plain torch loop over time in eval
    mode, in float32 at least. Bad `data` raises what nn.LSTM's forward would for it."""
    x, lengths = _time_major(lstm, data)
    x = _float(x)
    steps = x.shape[0]
    valid = (torch.arange(steps, device=x.device)[:, None] < lengths.to(x.device)[None, :])
    count = int(valid.sum())
    if count == 0:
        raise ValueError("data has no time steps to measure activations on")
    valid = valid.unsqueeze(-1).to(x.dtype)
    directions = 2 if lstm.bidirectional else 1
    variants = getattr(lstm, "variants", VariantConfig())
    stats = []
    for layer in range(lstm.num_layers):
        outputs, means = [], []
        for direction, suffix in enumerate(_suffixes(layer, directions)):
            reverse_rows = _reversal(lengths, steps) if direction else None
            layer_x = x if reverse_rows is None else _flip(x, reverse_rows)
            y, unit_h = _direction_forward(lstm, suffix, variants, layer_x)
            if reverse_rows is not None:
                y, unit_h = _flip(y, reverse_rows), _flip(unit_h, reverse_rows)
            means.append((unit_h.abs() * valid).sum((0, 1)) / count)
            outputs.append(y)
        stats.append(torch.stack(means))
        x = torch.cat(outputs, dim=-1)
    return stats


def _units_removed(amount, hidden: int) -> int:
    if not isinstance(amount, numbers.Real) or isinstance(amount, bool):
        raise TypeError(f"amount must be a number in (0, 1), got {type(amount).__name__}")
    if not 0 < amount < 1:  # also refuses NaN
        raise ValueError(f"amount must be in (0, 1) (the fraction of hidden units removed), got {amount!r}")
    removed = round(amount * hidden)
    if not 0 < removed < hidden:
        what = "no unit" if removed == 0 else "every unit"
        raise ValueError(f"amount={amount!r} of hidden_size {hidden} removes round({amount!r} * {hidden}) = "
                         f"{removed} units, {what}: pick an amount that removes 1 to {hidden - 1}")
    return removed


def _top_units(scores: Tensor, count: int) -> Tensor:
    """[D, H] scores -> [D, count] int64 indices of the highest, increasing (ties: lower index)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, :count].sort(dim=1).values


def _suffixes(layer: int, directions: int) -> list[str]:
    return [f"l{layer}" + ("_reverse" if d else "") for d in range(directions)]


def _sliced_lstm(lstm: nn.Module, kept: list[Tensor]) -> LSTM:
    """The LSTM over the kept units, every parameter a sliced copy of `lstm`'s (no init drawn)."""
    h, proj = lstm.hidden_size, lstm.proj_size
    directions = 2 if lstm.bidirectional else 1
    variants = getattr(lstm, "variants", VariantConfig())
    dtype, device = lstm.weight_ih_l0.dtype, lstm.weight_ih_l0.device
    pruned = LSTM(lstm.input_size, kept[0].shape[1], lstm.num_layers, lstm.bias, lstm.batch_first,
                  lstm.dropout, lstm.bidirectional, proj, device="meta", dtype=dtype,
                  **dataclasses.asdict(variants))
    kept = [k.to(device) for k in kept]
    with torch.no_grad():
        for layer in range(lstm.num_layers):
            # The columns of weight_ih that read the previous layer's kept units (no projection).
            inputs = None
            if layer > 0 and not proj:
                inputs = (kept[layer - 1] + torch.arange(directions, device=device)[:, None] * h).reshape(-1)
            for direction, suffix in enumerate(_suffixes(layer, directions)):
                units = kept[layer][direction]
                rows = (units + torch.arange(4, device=device)[:, None] * h).reshape(-1)  # i, f, g, o
                for name, _ in list(pruned.named_parameters()):
                    if name.endswith("_" + suffix):
                        kind = name[: -len(suffix) - 1]
                        source = getattr(lstm, name)
                        value = _slice(kind, source, rows, units, inputs, proj)
                        setattr(pruned, name, _parameter(value, source))
    pruned.train(lstm.training)
    return pruned


def _slice(kind: str, w: Tensor, rows: Tensor, units: Tensor, inputs: Tensor | None, proj: int) -> Tensor:
    """One parameter of one layer and direction restricted to the kept units."""
    if kind in ("weight_ih", "weight_hh"):
        w = w.index_select(0, rows)
        if kind == "weight_ih" and inputs is not None:
            return w.index_select(1, inputs)
        return w.index_select(1, units) if kind == "weight_hh" and not proj else w
    if kind in ("bias_ih", "bias_hh", "ln_ih_weight", "ln_hh_weight"):  # [4H]
        return w.index_select(0, rows)
    if kind == "weight_hr":  # [P, H]
        return w.index_select(1, units)
    return w.index_select(0, units)  # [H]: peephole weights, ln_c gain and bias


def _parameter(value: Tensor, like: Tensor) -> nn.Parameter:
    return nn.Parameter(value.contiguous(), requires_grad=like.requires_grad)


def _time_major(lstm: nn.Module, data) -> tuple[Tensor, Tensor]:
    """data as the LSTM's forward takes it -> (x [T, B, I] zero-padded, lengths int64 [B])."""
    if isinstance(data, PackedSequence):
        check_data = data.data
        x, lengths = pad_packed_sequence(data)
        packed, batch = True, x.shape[1]
    elif isinstance(data, Tensor):
        if data.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {data.dim()}D instead")
        x = data if data.dim() == 3 else data.unsqueeze(0 if lstm.batch_first else 1)
        x = x.transpose(0, 1) if lstm.batch_first else x
        check_data, packed, batch = x, False, x.shape[1]
        lengths = torch.full((batch,), x.shape[0], dtype=torch.int64)
    else:
        raise TypeError(f"data must be a Tensor or PackedSequence, got {type(data).__name__}")
    directions = 2 if lstm.bidirectional else 1
    states = (lstm.num_layers * directions, batch)
    h0 = check_data.new_zeros(*states, lstm.proj_size or lstm.hidden_size)
    c0 = check_data.new_zeros(*states, lstm.hidden_size)
    check_lstm_forward_args(lstm, check_data, h0, c0, batch, packed)
    return x, lengths


def _reversal(lengths: Tensor, steps: int) -> Tensor:
    """[T, B] time index that reverses each sequence within its length (padding stays put)."""
    t = torch.arange(steps)[:, None]
    lengths = lengths.cpu()[None, :]
    return torch.where(t < lengths, lengths - 1 - t, t)


def _flip(x: Tensor, rows: Tensor) -> Tensor:
    """x [T, B, F] with each sequence reversed by `_reversal`'s index (its own inverse)."""
    index = rows.to(x.device)[:, :, None].expand(-1, -1, x.shape[-1])
    return x.gather(0, index)


def _float(x: Tensor) -> Tensor:
    """Half types in float32, as the LSTM computes them; float32 and float64 as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _direction_forward(lstm: nn.Module, suffix: str, variants: VariantConfig,
                       x: Tensor) -> tuple[Tensor, Tensor]:
    """One layer and direction in eval mode, forward in time over x [T, B, I] from zero states,
    through the differentiable recurrence (the host's one statement of the step).

    Returns (y [T, B, P]: the layer's output, unit_h [T, B, H]: each unit's h, or o * tanh(c)
    before the projection). Positions past a sequence's end hold garbage that no valid position
    reads: padding only ever follows a sequence.
    """
    def param(kind: str) -> Tensor | None:
        value = getattr(lstm, f"{kind}_{suffix}", None)
        return None if value is None else _float(value)

    def stacked(kinds: tuple[str, ...]) -> Tensor | None:
        return None if param(kinds[0]) is None else torch.stack([param(kind) for kind in kinds])

    w = LayerWeights(
        param("weight_ih"), param("weight_hh"), param("bias_ih"), param("bias_hh"), param("weight_hr"),
        stacked(("weight_ci", "weight_cf", "weight_co")), param("ln_ih_weight"), param("ln_hh_weight"),
        stacked(("ln_c_weight", "ln_c_bias")),
    )
    steps, batch = x.shape[:2]
    hidden, out = w.w_hh.shape[0] // 4, w.w_hh.shape[1]

    def zoneout(probability: float, width: int) -> Tensor | None:  # eval: the expected mixing weight
        return x.new_full((steps, batch, width), probability) if probability else None

    v = Variants(w.peephole, w.ln_hh, w.ln_c, zoneout(variants.zoneout_cell, hidden),
                 zoneout(variants.zoneout_hidden, out), variants.cell_clip)
    h0, c0 = x.new_zeros(batch, out), x.new_zeros(batch, hidden)
    p = RecurrenceParams(w.w_hh, w.w_hr, v)
    y, _, _, unit_h = lstm_recurrence(input_projection(x, w), h0, c0, p, None, False, units=True)
    return y, (y if w.w_hr is None else unit_h)
