"""The nn.LSTM contract beyond the numbers: parameters, state_dict, copies, dtype moves, caches."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from support import assert_close, twin_lstms
from torch import nn

import torch_lstm_ext

CONFIGS = [
    dict(input_size=3, hidden_size=5),
    dict(input_size=3, hidden_size=5, num_layers=3, bidirectional=True, proj_size=2, bias=False),
    dict(input_size=2, hidden_size=4, num_layers=2, batch_first=True, dropout=0.25),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_parameters_match_nn_lstm_in_name_shape_order_and_init(config):
    torch.manual_seed(7)
    ref = nn.LSTM(**config)
    torch.manual_seed(7)
    ours = torch_lstm_ext.LSTM(**config)
    ref_params, our_params = list(ref.named_parameters()), list(ours.named_parameters())
    assert [n for n, _ in our_params] == [n for n, _ in ref_params]
    for (_, a), (_, b) in zip(our_params, ref_params):
        assert a.shape == b.shape
        assert torch.equal(a, b)  # same RNG draws in the same order
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [[tuple(p.shape) for p in layer] for layer in ours.all_weights] == [
        [tuple(p.shape) for p in layer] for layer in ref.all_weights
    ]
    assert repr(ours).replace("LSTM", "X") == repr(ref).replace("LSTM", "X")


@pytest.mark.parametrize("config", CONFIGS)
def test_state_dict_loads_both_ways_strictly(config):
    ref, ours = nn.LSTM(**config), torch_lstm_ext.LSTM(**config)
    ours.load_state_dict(ref.state_dict(), strict=True)
    other = nn.LSTM(**config)
    other.load_state_dict(ours.state_dict(), strict=True)
    for a, b in zip(other.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def _out(module, x):
    return module(x)[0]


def test_deepcopy_pickle_and_torch_save_round_trip():
    lstm = torch_lstm_ext.LSTM(3, 4, num_layers=2, proj_size=2).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    expected = _out(lstm, x)
    buffer = io.BytesIO()
    torch.save(lstm, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(lstm), pickle.loads(pickle.dumps(lstm)), torch.load(buffer, weights_only=False)]
    for clone in copies:
        assert isinstance(clone, torch_lstm_ext.LSTM)
        torch.testing.assert_close(_out(clone, x), expected, rtol=0, atol=0)
        assert all(a is not b for a, b in zip(clone.parameters(), lstm.parameters()))


def test_dtype_and_device_moves():
    lstm = torch_lstm_ext.LSTM(3, 4)
    assert lstm.double().weight_ih_l0.dtype == torch.float64
    assert _out(lstm, torch.randn(2, 1, 3, dtype=torch.float64)).dtype == torch.float64
    assert lstm.half().weight_hh_l0.dtype == torch.float16
    assert _out(lstm, torch.randn(2, 1, 3).half()).dtype == torch.float16
    lstm.to(torch.bfloat16)
    assert _out(lstm, torch.randn(2, 1, 3).bfloat16()).dtype == torch.bfloat16
    assert lstm.to("cpu", torch.float32).bias_hh_l0.dtype == torch.float32


def test_flatten_parameters_is_a_harmless_no_op():
    ref, ours = twin_lstms(torch.float64, input_size=3, hidden_size=4)
    ours.flatten_parameters()
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    assert_close(_out(ours, x), _out(ref, x))


def test_in_place_weight_edits_take_effect_on_the_next_call():
    ref, ours = twin_lstms(torch.float64, input_size=3, hidden_size=4)
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    _out(ours, x)
    with torch.no_grad():
        for module in (ref, ours):
            module.weight_hh_l0.mul_(2.0)
            module.bias_ih_l0.add_(0.5)
    assert_close(_out(ours, x), _out(ref, x))


def test_reassigned_parameters_take_effect():
    ref, ours = twin_lstms(torch.float64, input_size=3, hidden_size=4)
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    _out(ours, x)
    new = nn.Parameter(torch.randn(16, 4, dtype=torch.float64))
    ref.weight_hh_l0 = new
    ours.weight_hh_l0 = new
    assert_close(_out(ours, x), _out(ref, x))


def test_functional_call_uses_the_given_weights():
    ref, ours = twin_lstms(torch.float64, input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    _out(ours, x)
    swapped = {name: torch.randn_like(p) for name, p in ours.named_parameters()}
    expected = torch.func.functional_call(ref, swapped, (x,))[0]
    assert_close(torch.func.functional_call(ours, swapped, (x,))[0], expected)
    ref_after, ours_after = _out(ref, x), _out(ours, x)  # the module's own weights are back
    assert_close(ours_after, ref_after)


def test_not_an_rnnbase_subclass():
    assert not isinstance(torch_lstm_ext.LSTM(2, 3), nn.RNNBase)


def test_dropout_warning_for_a_single_layer_like_nn_lstm():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        torch_lstm_ext.LSTM(2, 3, dropout=0.5)
