"""Bad and edge-case input against torch.nn.LSTM, live: each case gives nn.LSTM's results (to the
tolerance of support.py, NaNs in the same places) or raises its exception type, and leaves the
module and the caller's tensors as they were.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support import TOLERANCES, outputs_and_grads, twin_lstms
from test_validation import raised, snapshot, unchanged
from torch import nn
from torch.nn.utils import parametrizations, parametrize, prune
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import torch_lstm_ext

F64 = torch.float64
INPUT, HIDDEN = 3, 4


def randn(*shape, dtype=F64, grad=False):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


def outcome(module, input, hx):
    """outputs_and_grads of the call, or the exception it raised."""
    try:
        return outputs_and_grads(module, input, hx)
    except Exception as error:  # the exception is the result under test
        return error


def assert_close_nan(actual, expected, dtype, msg):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{msg}: {m}")


def assert_same_outcome(ref, ours, input, hx, dtype=F64) -> None:
    """`ours` returns what `ref` (nn.LSTM) returns, gradients included, or raises its exception
    type; either way the module's state and the caller's input / hx are left unchanged."""
    before = snapshot((ours.state_dict(), input, hx))
    expected, actual = outcome(ref, input, hx), outcome(ours, input, hx)
    if isinstance(expected, Exception):
        assert type(actual) is type(expected), f"{actual!r} where nn.LSTM raised {expected!r}"
        assert str(actual), "the message must say what is wrong"
    else:
        assert not isinstance(actual, Exception), f"raised {actual!r} where nn.LSTM returned"
        for name, a, b in zip(("output", "h_n", "c_n"), actual[:3], expected[:3]):
            assert a.shape == b.shape and a.dtype == b.dtype, f"{name}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
            assert_close_nan(a, b, dtype, name)
        assert actual[3].keys() == expected[3].keys()
        for name, grad in expected[3].items():
            assert_close_nan(actual[3][name], grad, dtype, f"grad {name}")
    assert unchanged(before, (ours.state_dict(), input, hx))


def _states(layers, batch, out=HIDDEN, hidden=HIDDEN, grad=False):
    return randn(layers, batch, out, grad=grad), randn(layers, batch, hidden, grad=grad)


# name -> (LSTM config beyond (INPUT, HIDDEN), builder of (input, hx)).
THE_FOUR = {
    "batch 0": ({}, lambda: (randn(5, 0, INPUT, grad=True), None)),
    "batch 0, batch_first": (dict(batch_first=True), lambda: (randn(0, 5, INPUT, grad=True), None)),
    "batch 0, hx": ({}, lambda: (randn(5, 0, INPUT, grad=True), _states(1, 0, grad=True))),
    "batch 0, 2 layers bidirectional proj": (
        dict(num_layers=2, bidirectional=True, proj_size=2),
        lambda: (randn(5, 0, INPUT, grad=True), _states(4, 0, out=2, grad=True)),
    ),
    "length 0": ({}, lambda: (randn(0, 2, INPUT), None)),
    "length 0, hx": ({}, lambda: (randn(0, 2, INPUT), _states(1, 2))),
    "length 0, batch_first": (dict(batch_first=True), lambda: (randn(2, 0, INPUT), None)),
    "length 0, unbatched": ({}, lambda: (randn(0, INPUT), None)),
    "length 0 and batch 0": ({}, lambda: (randn(0, 0, INPUT), None)),
    "hx of three tensors": ({}, lambda: (randn(5, 2, INPUT), (*_states(1, 2), randn(1, 2, HIDDEN)))),
    "hx of three tensors, packed": (
        {}, lambda: (pack_sequence([randn(3, INPUT), randn(2, INPUT)]), (*_states(1, 2), randn(1, 2, HIDDEN))),
    ),
}


@pytest.mark.parametrize("name", list(THE_FOUR))
def test_issue_cases_like_nn_lstm(name):
    config, build = THE_FOUR[name]
    ref, ours = twin_lstms(F64, input_size=INPUT, hidden_size=HIDDEN, **config)
    assert_same_outcome(ref, ours, *build())


@pytest.mark.parametrize("input, hx, message", [
    (randn(0, 2, INPUT), None, "Expected sequence length to be larger than 0 in RNN"),
    (randn(5, 2, INPUT), (*_states(1, 2), randn(1, 2, HIDDEN)), "lstm expects two hidden states"),
], ids=["length 0", "three states"])
def test_issue_messages_are_nn_lstm_s(input, hx, message):
    ref, ours = twin_lstms(F64, input_size=INPUT, hidden_size=HIDDEN)
    assert str(raised(lambda: ref(input, hx))) == message
    with pytest.raises(RuntimeError, match=message):
        ours(input, hx)


@pytest.mark.parametrize("config", [dict(proj_size=2), dict(num_layers=2, bidirectional=True)], ids=["proj", "bidir"])
def test_batch_0_double_backward_like_nn_lstm(config):
    ref, ours = twin_lstms(F64, input_size=INPUT, hidden_size=HIDDEN, **config)
    results = []
    for module in (ref, ours):
        x = randn(5, 0, INPUT, grad=True)
        output, (h_n, c_n) = module(x)
        leaves = [x, *module.parameters()]
        grads = torch.autograd.grad(output.sum() + h_n.sum() + c_n.sum(), leaves, create_graph=True)
        penalty = sum(g.pow(2).sum() for g in grads)
        results.append(torch.autograd.grad(penalty, leaves, allow_unused=True, materialize_grads=True))
    for actual, expected in zip(*results):
        assert_close_nan(actual, expected, F64, "second-order grad")


def test_packed_batch_of_empty_steps_like_nn_lstm():
    ref, ours = twin_lstms(F64, input_size=INPUT, hidden_size=HIDDEN)
    data = PackedSequence(randn(0, INPUT, grad=True), torch.zeros(2, dtype=torch.int64))
    assert_same_outcome(ref, ours, data, None)


# _flat_weights: nn.LSTM's private list of its current weights, which third-party code reads.

def _weight_norm(module):
    with pytest.warns(FutureWarning):  # torch.nn.utils.weight_norm is deprecated, still in use
        nn.utils.weight_norm(module, "weight_ih_l0")


def _reassign(module):
    module.weight_hh_l0 = nn.Parameter(torch.ones_like(module.weight_hh_l0))


# name -> (LSTM config, the reparametrization applied to both modules alike).
REPARAMETRIZATIONS = {
    "none": ({}, lambda module: None),
    "weight_norm": ({}, _weight_norm),
    "weight_norm of weight_hr": (
        dict(proj_size=2), lambda module: nn.utils.weight_norm(module, "weight_hr_l0")
    ),
    "pruning": ({}, lambda module: prune.l1_unstructured(module, "weight_ih_l0", amount=0.5)),
    "parametrizations.orthogonal": ({}, lambda module: parametrizations.orthogonal(module, "weight_hh_l0")),
    "parametrizations.weight_norm": (
        dict(num_layers=2), lambda module: parametrizations.weight_norm(module, "weight_ih_l1")
    ),
    "reassigned Parameter": ({}, _reassign),
    "to(float32)": ({}, lambda module: module.to(torch.float32)),
}


@pytest.mark.filterwarnings("ignore:.*weight_norm:FutureWarning")
@pytest.mark.parametrize("name", list(REPARAMETRIZATIONS))
def test_flat_weights_are_the_current_weights_like_nn_lstm(name):
    config, reparametrize = REPARAMETRIZATIONS[name]
    ref, ours = twin_lstms(F64, input_size=INPUT, hidden_size=HIDDEN, **config)
    for module in (ref, ours):
        torch.manual_seed(1)  # orthogonal draws the basis of a non-square weight's completion
        reparametrize(module)
    assert ours._flat_weights_names == ref._flat_weights_names
    assert ours._all_weights == ref._all_weights
    dtype = ref.weight_ih_l0.dtype
    assert_same_outcome(ref, ours, randn(4, 2, INPUT, dtype=dtype, grad=True), None, dtype)
    # nn.LSTM refreshes its list at a forward (above); ours reads the attributes on every access.
    ours_flat, ref_flat = ours._flat_weights, ref._flat_weights
    assert [type(w) for w in ours_flat] == [type(w) for w in ref_flat]
    for flat_name, ours_w, ref_w in zip(ref._flat_weights_names, ours_flat, ref_flat):
        assert_close_nan(ours_w, ref_w, dtype, flat_name)
        if not parametrize.is_parametrized(ours, flat_name):
            assert ours_w is getattr(ours, flat_name)


@pytest.mark.parametrize("name, num_params", [("weight_ih_l0", 4), ("weight_hr_l0", 5)])
def test_pytorchs_rnn_weight_norm_test(name, num_params):
    """PyTorch's test_rnn_weight_norm (test/test_nn.py), on our LSTM."""
    lstm = torch_lstm_ext.LSTM(32, 32, proj_size=16 if name == "weight_hr_l0" else 0)
    with pytest.warns(FutureWarning):
        lstm = nn.utils.weight_norm(lstm, name=name)
    assert sum(isinstance(p, nn.Parameter) for p in lstm._flat_weights) == num_params - 1
    lstm = nn.utils.remove_weight_norm(lstm, name=name)
    assert sum(isinstance(p, nn.Parameter) for p in lstm._flat_weights) == num_params
    assert lstm._parameters[name] is not None
    assert name + "_v" not in lstm._parameters and name + "_g" not in lstm._parameters
    assert dict(lstm.named_parameters())[name] is not None


def test_pytorchs_rnn_pruning_test():
    """PyTorch's test_rnn_pruning (test/nn/test_pruning.py), on our LSTM."""
    lstm = torch_lstm_ext.LSTM(32, 32)
    prune.l1_unstructured(lstm, "weight_ih_l0", 0.5)
    assert sum(isinstance(p, nn.Parameter) for p in lstm._flat_weights) == 3
    prune.remove(lstm, "weight_ih_l0")
    assert sum(isinstance(p, nn.Parameter) for p in lstm._flat_weights) == 4
    assert "weight_ih_l0_orig" not in lstm._parameters


class WeightDrop(nn.Module):
    """An AWD-LSTM-style weight-drop wrapper (DropConnect on weight_hh_l0) written against
    nn.LSTM's internals: it swaps the weight attribute for a dropped copy before each call and
    rebuilds `_flat_weights` for cuDNN, as such wrappers do."""

    def __init__(self, lstm: nn.Module, p: float):
        super().__init__()
        self.lstm, self.p = lstm, p
        raw = lstm._parameters.pop("weight_hh_l0")
        self.register_parameter("weight_hh_raw", nn.Parameter(raw.data))

    def forward(self, x):
        dropped = F.dropout(self.weight_hh_raw, p=self.p, training=self.training)
        object.__setattr__(self.lstm, "weight_hh_l0", dropped)
        self.lstm._flat_weights = [getattr(self.lstm, name) for name in self.lstm._flat_weights_names]
        return self.lstm(x)


def test_weight_drop_wrapper_like_nn_lstm():
    ref, ours = (WeightDrop(module, p=0.5) for module in twin_lstms(F64, input_size=INPUT, hidden_size=HIDDEN))
    x = randn(4, 2, INPUT)
    results = []
    for wrapper in (ref, ours):
        torch.manual_seed(3)  # the same DropConnect masks
        output, (h_n, c_n) = wrapper(x)
        loss = output.sum() + h_n.pow(2).sum() + c_n.sum()
        results.append((output, h_n, c_n, *torch.autograd.grad(loss, list(wrapper.parameters()))))
    for actual, expected in zip(*results):
        assert_close_nan(actual, expected, F64, "weight-drop")


def test_flat_weights_that_are_not_the_weights_are_refused():
    lstm = torch_lstm_ext.LSTM(INPUT, HIDDEN)
    before = snapshot(lstm.state_dict())
    other = [torch.zeros_like(w) for w in lstm._flat_weights]
    with pytest.raises(ValueError, match="reads its weights by name"):
        lstm._flat_weights = other
    with pytest.raises(ValueError, match="reads its weights by name"):
        lstm._flat_weights = lstm._flat_weights[:2]
    assert unchanged(before, lstm.state_dict())
    assert all(w is getattr(lstm, n) for n, w in zip(lstm._flat_weights_names, lstm._flat_weights))
