"""prune_hidden_units / prune_linear_inputs against independent references, in float64.

The reference of a pruned LSTM is the original (an nn.LSTM, or variant_reference_model's plain
autograd loop for the variants) with the removed units' outgoing connections zeroed: their
weight_hh columns and the next layer's weight_ih columns, or their weight_hr columns with a
projection. Its kept units (the whole output with a projection) must equal the pruned LSTM's.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from support import assert_close
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from variant_reference_model import reference_lstm

import torch_lstm_ext
from torch_lstm_ext.pruning import unit_activity

DT = torch.float64
I, H, T, B = 3, 8, 5, 3
LENGTHS = [5, 2, 4]  # unsorted, so packing permutes the batch

CONFIGS = {
    "1layer": dict(),
    "2layer-bidir": dict(num_layers=2, bidirectional=True),
    "3layer-batch_first-nobias": dict(num_layers=3, batch_first=True, bias=False),
    "1layer-proj": dict(proj_size=3),
    "2layer-bidir-proj": dict(num_layers=2, bidirectional=True, proj_size=3),
}


def _directions(lstm) -> int:
    return 2 if lstm.bidirectional else 1


def _suffix(layer: int, direction: int) -> str:
    return f"l{layer}" + ("_reverse" if direction else "")


def _inputs(lstm, packed: bool, seed: int = 1):
    """Batched input in the LSTM's layout, or a PackedSequence of LENGTHS (enforce_sorted=False)."""
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(T, B, I, generator=gen, dtype=DT)
    if packed:
        return pack_padded_sequence(x, LENGTHS, enforce_sorted=False)
    return x.transpose(0, 1) if lstm.batch_first else x


def _removed(kept_row: Tensor) -> Tensor:
    mask = torch.ones(H, dtype=torch.bool)
    mask[kept_row] = False
    return mask


def _zeroed(lstm, kept, hidden=H):
    """A copy of `lstm` with the removed units' outgoing connections zeroed (the reference)."""
    ref = copy.deepcopy(lstm)
    directions = _directions(lstm)
    with torch.no_grad():
        for layer, kept_layer in enumerate(kept):
            for direction in range(directions):
                removed = _removed(kept_layer[direction])
                if lstm.proj_size:
                    getattr(ref, f"weight_hr_{_suffix(layer, direction)}")[:, removed] = 0
                    continue
                getattr(ref, f"weight_hh_{_suffix(layer, direction)}")[:, removed] = 0
                if layer + 1 < lstm.num_layers:
                    columns = direction * hidden + torch.nonzero(removed).flatten()
                    for next_direction in range(directions):
                        getattr(ref, f"weight_ih_{_suffix(layer + 1, next_direction)}")[:, columns] = 0
    return ref


def _output_features(kept_last: Tensor) -> Tensor:
    """The pruned output's features in the original output: direction d's unit j is d * H + j."""
    return (kept_last + torch.arange(kept_last.shape[0])[:, None] * H).reshape(-1)


def _compare(pruned, kept, ref_output, ref_h, ref_c, output, h_n, c_n, proj: bool) -> None:
    directions = h_n.shape[0] // len(kept)
    if proj:
        assert_close(output, ref_output, DT, "output")
    else:
        assert_close(output, ref_output[..., _output_features(kept[-1])], DT, "output")
    for layer, kept_layer in enumerate(kept):
        for direction in range(directions):
            index = layer * directions + direction
            units = kept_layer[direction]
            assert_close(h_n[index], ref_h[index] if proj else ref_h[index][:, units], DT, f"h_n[{index}]")
            assert_close(c_n[index], ref_c[index][:, units], DT, f"c_n[{index}]")


def _data(output):
    return output.data if isinstance(output, nn.utils.rnn.PackedSequence) else output


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("source", ["nn", "ours"])
@pytest.mark.parametrize("criterion", ["activation", "weight"])
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_pruned_equals_zeroed_original(config, criterion, source, packed):
    reference = nn.LSTM(I, H, **config, dtype=DT)
    lstm = reference if source == "nn" else torch_lstm_ext.LSTM.from_torch(reference)
    score_data = _inputs(lstm, packed, seed=2) if criterion == "activation" else None
    pruned, kept = torch_lstm_ext.prune_hidden_units(lstm, 0.375, criterion, score_data)

    assert pruned.hidden_size == 5 and isinstance(pruned, torch_lstm_ext.LSTM)
    assert len(kept) == reference.num_layers
    for k in kept:
        assert k.dtype == torch.int64 and k.shape == (_directions(reference), 5)
        assert torch.all(k[:, 1:] > k[:, :-1])  # increasing, so distinct

    x = _inputs(lstm, packed)
    ref_output, (ref_h, ref_c) = _zeroed(reference, kept)(x)
    output, (h_n, c_n) = pruned(x)
    _compare(pruned, kept, _data(ref_output), ref_h, ref_c, _data(output), h_n, c_n, bool(reference.proj_size))


def test_zeroing_matters():
    """The comparison above can fail: the unzeroed original's kept units differ from the pruned ones."""
    lstm = nn.LSTM(I, H, num_layers=2, dtype=DT)
    pruned, kept = torch_lstm_ext.prune_hidden_units(lstm, 0.5, "weight")
    x = _inputs(lstm, packed=False)
    original = lstm(x)[0][..., _output_features(kept[-1])]
    assert (original - pruned(x)[0]).abs().max() > 1e-3


VARIANTS = {
    "peephole": dict(peephole=True),
    "zoneout-cell_clip": dict(zoneout_cell=0.3, zoneout_hidden=0.2, cell_clip=0.5),
    "all-but-layer_norm": dict(peephole=True, zoneout_cell=0.3, zoneout_hidden=0.2, cell_clip=0.5,
                               weight_dropout=0.3, grad_clip=1.0),
}


@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("variants", VARIANTS.values(), ids=VARIANTS.keys())
def test_variants_pruned_equal_zeroed_reference(variants, proj_size):
    """Peephole weights are sliced with their units; zoneout (eval), clipping, weight dropout and
    gradient clipping (eval forward: no-ops) are per element and carry over as configured."""
    lstm = torch_lstm_ext.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=proj_size, dtype=DT,
                               **variants).eval()
    packed = _inputs(lstm, packed=True)
    pruned, kept = torch_lstm_ext.prune_hidden_units(lstm, 0.5, "activation", _inputs(lstm, False, seed=2))
    assert pruned.variants == lstm.variants and not pruned.training

    padded, _ = pad_packed_sequence(packed)
    ref_output, ref_h, ref_c = reference_lstm(_zeroed(lstm, kept), padded, LENGTHS)
    output, (h_n, c_n) = pruned(packed)
    output, _ = pad_packed_sequence(output)  # zeros past each length, like the reference's
    _compare(pruned, kept, ref_output, ref_h, ref_c, output, h_n, c_n, bool(proj_size))


def test_layer_norm_parameters_are_sliced():
    """Layer norm's statistics run over the remaining units, so the pruned LSTM is not the zeroed
    original (module docstring); its gains and biases must still be the kept units' own."""
    lstm = torch_lstm_ext.LSTM(I, H, num_layers=2, bidirectional=True, dtype=DT, layer_norm=True)
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("ln_"):
                p.copy_(torch.randn_like(p))
    pruned, kept = torch_lstm_ext.prune_hidden_units(lstm, 0.25, "weight")
    for layer, kept_layer in enumerate(kept):
        for direction in range(2):
            sfx = _suffix(layer, direction)
            units = kept_layer[direction]
            rows = torch.cat([gate * H + units for gate in range(4)])
            for kind, index in (("ln_ih_weight", rows), ("ln_hh_weight", rows), ("ln_c_weight", units),
                                ("ln_c_bias", units)):
                assert_close(getattr(pruned, f"{kind}_{sfx}"), getattr(lstm, f"{kind}_{sfx}")[index], DT, kind)
    output, _ = pruned(_inputs(lstm, packed=False))
    assert output.shape == (T, B, 2 * 6) and torch.isfinite(output).all()


def _layer_outputs_nn(lstm: nn.LSTM, x: Tensor) -> list[Tensor]:
    """Each layer's output [T, B, D*P] from one-layer nn.LSTMs holding that layer's weights."""
    outputs = []
    for layer in range(lstm.num_layers):
        single = nn.LSTM(_data(x).shape[-1], lstm.hidden_size, bias=lstm.bias, bidirectional=lstm.bidirectional,
                         proj_size=lstm.proj_size, dtype=DT)
        single.load_state_dict({name.replace(f"_l{layer}", "_l0"): p for name, p in lstm.named_parameters()
                                if f"_l{layer}" in name})
        x = single(x)[0]
        outputs.append(x)
    return outputs


def _masked_mean_abs(y: Tensor, lengths: list[int]) -> Tensor:
    """[T, B, F] -> [F]: mean |y| over the valid (t, b) positions."""
    valid = (torch.arange(y.shape[0])[:, None] < torch.tensor(lengths)[None, :]).to(y.dtype)
    return (y.abs() * valid[..., None]).sum((0, 1)) / valid.sum()


def test_activation_statistic_is_mean_abs_h():
    """Without projection: each unit's mean |h_t| over the valid positions of a packed input,
    against the layer outputs of nn.LSTM."""
    lstm = nn.LSTM(I, H, num_layers=2, bidirectional=True, dtype=DT)
    packed = _inputs(lstm, packed=True)
    stats = unit_activity(lstm, packed)
    for layer, y in enumerate(_layer_outputs_nn(lstm, packed)):
        expected = _masked_mean_abs(pad_packed_sequence(y)[0], LENGTHS).view(2, H)
        assert_close(stats[layer], expected, DT, f"layer {layer}")


def test_activation_statistic_with_variants():
    """The variants' recurrence in the statistic, against variant_reference_model layer by layer."""
    lstm = torch_lstm_ext.LSTM(I, H, num_layers=2, bidirectional=True, dtype=DT, peephole=True,
                               layer_norm=True, zoneout_cell=0.3, zoneout_hidden=0.2, cell_clip=0.5)
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("ln_"):
                p.add_(0.3 * torch.randn_like(p))
    x = _inputs(lstm, packed=True)
    padded, _ = pad_packed_sequence(x)
    stats = unit_activity(lstm, x)
    layer_input = padded
    for layer in range(2):
        single = torch_lstm_ext.LSTM(layer_input.shape[-1], H, bidirectional=True, dtype=DT,
                                     **dataclasses.asdict(lstm.variants))
        single.load_state_dict({name.replace(f"_l{layer}", "_l0"): p for name, p in lstm.named_parameters()
                                if f"_l{layer}" in name})
        layer_input = reference_lstm(single, layer_input, LENGTHS)[0]
        assert_close(stats[layer], _masked_mean_abs(layer_input, LENGTHS).view(2, H), DT, f"layer {layer}")


def _unit_outputs_with_projection(lstm: nn.LSTM, x: Tensor) -> tuple[Tensor, Tensor]:
    """One-layer, one-direction projected LSTM step by step: (h [T, B, P], o * tanh(c) [T, B, H])."""
    h = x.new_zeros(x.shape[1], lstm.proj_size)
    c = x.new_zeros(x.shape[1], lstm.hidden_size)
    hs, units = [], []
    for x_t in x:
        gates = x_t @ lstm.weight_ih_l0.T + h @ lstm.weight_hh_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        unit = torch.sigmoid(o) * torch.tanh(c)
        h = unit @ lstm.weight_hr_l0.T
        hs.append(h)
        units.append(unit)
    return torch.stack(hs), torch.stack(units)


def test_activation_statistic_with_projection_is_mean_abs_o_tanh_c():
    lstm = nn.LSTM(I, H, proj_size=3, dtype=DT)
    x = _inputs(lstm, packed=False)
    h, units = _unit_outputs_with_projection(lstm, x)
    assert_close(h, lstm(x)[0], DT, "the test's loop is the LSTM")
    assert_close(unit_activity(lstm, x)[0], units.abs().mean((0, 1))[None], DT, "statistic")


def test_activation_prunes_silent_units_first():
    """Units whose output gate is shut (o ~ 0, so h ~ 0) go first, layer by layer."""
    lstm = nn.LSTM(I, H, num_layers=2, dtype=DT)
    silent = {0: [1, 5], 1: [0, 6]}
    with torch.no_grad():
        for layer, units in silent.items():
            getattr(lstm, f"bias_ih_l{layer}")[[3 * H + u for u in units]] = -50.0
    _, kept = torch_lstm_ext.prune_hidden_units(lstm, 0.25, data=_inputs(lstm, packed=False))
    for layer, units in silent.items():
        assert kept[layer][0].tolist() == [u for u in range(H) if u not in units]


def test_weight_criterion_keeps_largest_gate_row_norms():
    lstm = nn.LSTM(I, H, num_layers=2, bidirectional=True, dtype=DT)
    _, kept = torch_lstm_ext.prune_hidden_units(lstm, 0.5, "weight")
    for layer in range(2):
        for direction in range(2):
            sfx = _suffix(layer, direction)
            norms = torch.stack([
                torch.cat([getattr(lstm, f"{kind}_{sfx}")[gate * H + unit] for kind in ("weight_ih", "weight_hh")
                           for gate in range(4)]).norm()
                for unit in range(H)
            ])
            expected = sorted(torch.argsort(norms, descending=True)[: H // 2].tolist())
            assert kept[layer][direction].tolist() == expected


def test_ties_keep_the_lower_indices():
    lstm = nn.LSTM(I, H, num_layers=2, bidirectional=True, dtype=DT)
    with torch.no_grad():
        for p in lstm.parameters():
            p.fill_(0.1)  # every unit alike: equal norms (activations could differ by BLAS rounding)
    _, kept = torch_lstm_ext.prune_hidden_units(lstm, 0.5, "weight")
    assert all(k.tolist() == [[0, 1, 2, 3]] * 2 for k in kept)


def test_configuration_and_independence():
    """Same configuration, mode, dtype and requires_grad; fresh tensors; nothing of the original
    or of the global RNG changes."""
    lstm = torch_lstm_ext.LSTM(I, H, num_layers=2, bias=False, batch_first=True, dropout=0.2,
                               bidirectional=True, proj_size=3, dtype=torch.float32, peephole=True,
                               zoneout_cell=0.1, checkpoint=True)
    lstm.weight_ih_l0.requires_grad_(False)
    before = copy.deepcopy(lstm.state_dict())
    rng = torch.random.get_rng_state()
    pruned, kept = torch_lstm_ext.prune_hidden_units(lstm, 0.5, "activation",
                                                     torch.randn(2, 4, I, generator=torch.Generator()))
    assert torch.equal(rng, torch.random.get_rng_state())
    for name in ("input_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                 "proj_size", "variants", "training"):
        assert getattr(pruned, name) == getattr(lstm, name), name
    assert pruned.hidden_size == 4
    assert list(dict(pruned.named_parameters())) == list(dict(lstm.named_parameters()))
    for name, p in pruned.named_parameters():
        assert p.dtype == torch.float32 and p.device.type == "cpu", name
        assert p.requires_grad == (name != "weight_ih_l0"), name
    with torch.no_grad():
        for p in pruned.parameters():
            p.fill_(7.0)
    for name, value in lstm.state_dict().items():
        assert torch.equal(value, before[name]), name
    out, (h_n, _) = pruned(torch.randn(2, 4, I))
    assert out.shape == (2, 4, 2 * 3) and h_n.shape == (4, 2, 3)  # output size unchanged by pruning


def test_eval_mode_and_unbatched_data():
    lstm = nn.LSTM(I, H, batch_first=True, dtype=DT).eval()
    x = torch.randn(T, I, dtype=DT)
    pruned, kept = torch_lstm_ext.prune_hidden_units(lstm, 0.5, data=x)
    assert not pruned.training
    batched = unit_activity(lstm, x.unsqueeze(0))
    assert_close(unit_activity(lstm, x)[0], batched[0], DT, "unbatched = batch of one")


@pytest.mark.parametrize("amount, match", [
    (0.0, r"in \(0, 1\)"), (1.0, r"in \(0, 1\)"), (-0.1, r"in \(0, 1\)"), (1.5, r"in \(0, 1\)"),
    (float("nan"), r"in \(0, 1\)"), (0.05, "removes round.* = 0 units, no unit"),
    (0.97, "= 8 units, every unit"),
])
def test_bad_amount(amount, match):
    lstm = nn.LSTM(I, H, dtype=DT)
    with pytest.raises(ValueError, match=match):
        torch_lstm_ext.prune_hidden_units(lstm, amount, "weight")


@pytest.mark.parametrize("amount", [True, "0.5", None])
def test_amount_not_a_number(amount):
    with pytest.raises(TypeError, match="amount must be a number"):
        torch_lstm_ext.prune_hidden_units(nn.LSTM(I, H), amount, "weight")


def test_bad_arguments_raise_and_change_nothing():
    lstm = nn.LSTM(I, H, num_layers=2, dtype=DT)
    before = copy.deepcopy(lstm.state_dict())
    x = _inputs(lstm, packed=False)
    with pytest.raises(ValueError, match="criterion must be one of"):
        torch_lstm_ext.prune_hidden_units(lstm, 0.5, "magnitude", x)
    with pytest.raises(ValueError, match="needs data"):
        torch_lstm_ext.prune_hidden_units(lstm, 0.5, "activation")
    with pytest.raises(ValueError, match="only used by"):
        torch_lstm_ext.prune_hidden_units(lstm, 0.5, "weight", x)
    with pytest.raises(TypeError, match="torch_lstm_ext.LSTM or torch.nn.LSTM"):
        torch_lstm_ext.prune_hidden_units(nn.GRU(I, H), 0.5, "weight")
    with pytest.raises(TypeError, match="Tensor or PackedSequence"):
        torch_lstm_ext.prune_hidden_units(lstm, 0.5, data=[x])
    with pytest.raises(ValueError, match="no time steps"):
        torch_lstm_ext.prune_hidden_units(lstm, 0.5, data=x[:, :0])
    for name, value in lstm.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("bad", ["4d", "features", "dtype", "empty_time"])
def test_bad_data_raises_what_nn_lstm_raises(bad):
    lstm = nn.LSTM(I, H, dtype=DT)
    x = {"4d": torch.randn(1, T, B, I, dtype=DT), "features": torch.randn(T, B, I + 1, dtype=DT),
         "dtype": torch.randn(T, B, I, dtype=torch.float32), "empty_time": torch.randn(0, B, I, dtype=DT)}[bad]
    with pytest.raises(Exception) as expected:
        lstm(x)
    with pytest.raises(type(expected.value)):
        torch_lstm_ext.prune_hidden_units(lstm, 0.5, data=x)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_prune_linear_inputs(bidirectional):
    """A Linear on the zeroed original's output, its removed features' columns zeroed too,
    equals the pruned Linear on the pruned output."""
    lstm = nn.LSTM(I, H, num_layers=2, bidirectional=bidirectional, dtype=DT)
    directions = 2 if bidirectional else 1
    head = nn.Linear(directions * H, 4, dtype=DT)
    x = _inputs(lstm, packed=False)
    pruned, kept = torch_lstm_ext.prune_hidden_units(lstm, 0.25, data=x)
    pruned_head = torch_lstm_ext.prune_linear_inputs(head, kept[-1], H)
    assert pruned_head.in_features == directions * 6 and pruned_head.out_features == 4

    ref_head = copy.deepcopy(head)
    with torch.no_grad():
        removed = torch.ones(directions * H, dtype=torch.bool)
        removed[_output_features(kept[-1])] = False
        ref_head.weight[:, removed] = 0
    expected = ref_head(_zeroed(lstm, kept)(x)[0])
    assert_close(pruned_head(pruned(x)[0]), expected, DT, "head output")


def test_prune_linear_inputs_bad_arguments():
    lstm = nn.LSTM(I, H, bidirectional=True, dtype=DT)
    _, kept = torch_lstm_ext.prune_hidden_units(lstm, 0.5, "weight")
    with pytest.raises(ValueError, match="in_features is 8"):
        torch_lstm_ext.prune_linear_inputs(nn.Linear(H, 2), kept[-1], H)
    with pytest.raises(ValueError, match="int64 tensor"):
        torch_lstm_ext.prune_linear_inputs(nn.Linear(2 * H, 2), kept[-1][0], H)
    with pytest.raises(ValueError, match="outside"):
        torch_lstm_ext.prune_linear_inputs(nn.Linear(2 * H, 2), kept[-1] + H, H)
    with pytest.raises(TypeError, match="nn.Linear"):
        torch_lstm_ext.prune_linear_inputs(nn.Conv1d(2 * H, 2, 1), kept[-1], H)


def test_half_precision_lstm():
    """bfloat16 weights: scores in float32 (as the LSTM computes), pruned parameters in bfloat16."""
    lstm = nn.LSTM(I, H, num_layers=2, dtype=torch.bfloat16)
    x = torch.randn(T, B, I, dtype=torch.bfloat16)
    assert unit_activity(lstm, x)[0].dtype == torch.float32
    pruned, _ = torch_lstm_ext.prune_hidden_units(lstm, 0.5, data=x)
    assert all(p.dtype == torch.bfloat16 for p in pruned.parameters())
    assert pruned(x)[0].shape == (T, B, 4)
