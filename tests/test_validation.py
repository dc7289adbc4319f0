"""Bad input: the same exception type as nn.LSTM, a clear message, nothing changed afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import torch_lstm_ext

BAD_CONFIGS = {
    "hidden_size=0": dict(input_size=3, hidden_size=0),
    "input_size=-1": dict(input_size=-1, hidden_size=4),
    "num_layers=0": dict(input_size=3, hidden_size=4, num_layers=0),
    "dropout=1.5": dict(input_size=3, hidden_size=4, dropout=1.5),
    "dropout=-0.1": dict(input_size=3, hidden_size=4, dropout=-0.1),
    "dropout=True": dict(input_size=3, hidden_size=4, dropout=True),
    "dropout='0.1'": dict(input_size=3, hidden_size=4, dropout="0.1"),
    "proj_size=hidden": dict(input_size=3, hidden_size=4, proj_size=4),
    "proj_size=-1": dict(input_size=3, hidden_size=4, proj_size=-1),
    "input_size=3.0": dict(input_size=3.0, hidden_size=4),
    "hidden_size='4'": dict(input_size=3, hidden_size="4"),
    "bias=1": dict(input_size=3, hidden_size=4, bias=1),
    "batch_first=None": dict(input_size=3, hidden_size=4, batch_first=None),
    "input_size=0": dict(input_size=0, hidden_size=4),
    "input_size=np.int64": dict(input_size=np.int64(3), hidden_size=4),
    "num_layers=-1": dict(input_size=3, hidden_size=4, num_layers=-1),
    "num_layers=1.0": dict(input_size=3, hidden_size=4, num_layers=1.0),
    "num_layers='1'": dict(input_size=3, hidden_size=4, num_layers="1"),
    "proj_size=1.0": dict(input_size=3, hidden_size=4, proj_size=1.0),
    "proj_size=True": dict(input_size=3, hidden_size=4, proj_size=True),
    "dropout=None": dict(input_size=3, hidden_size=4, dropout=None),
    "dropout='x'": dict(input_size=3, hidden_size=4, dropout="x"),
    "dropout=nan": dict(input_size=3, hidden_size=4, dropout=float("nan")),
    "bias=0": dict(input_size=3, hidden_size=4, bias=0),
}


def raised(fn) -> BaseException:
    """The exception that calling `fn` raises (the test fails if it returns)."""
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def snapshot(obj):
    """`obj` with every tensor in it (nested in tuples, lists, dicts, PackedSequences) recorded as
    (detached clone, stride, version counter), to tell with `unchanged` whether a call touched it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone(), obj.stride(), obj._version
    if isinstance(obj, dict):
        return {key: snapshot(value) for key, value in obj.items()}
    if isinstance(obj, (tuple, list)):  # PackedSequence included
        return [snapshot(value) for value in obj]
    return obj


def unchanged(before, obj) -> bool:
    """Whether `obj` still holds what `snapshot` recorded in `before`: the same values (NaNs
    where they were), shapes, strides and dtypes, and no in-place write (version counter)."""
    if isinstance(obj, torch.Tensor):
        value, stride, version = before
        if (obj.shape, obj.dtype, obj.stride(), obj._version) != (value.shape, value.dtype, stride, version):
            return False
        if obj.device.type == "meta":  # no data to compare
            return True
        return bool(((obj == value) | (obj.isnan() & value.isnan())).all())
    if isinstance(obj, dict):
        return obj.keys() == before.keys() and all(unchanged(before[k], v) for k, v in obj.items())
    if isinstance(obj, (tuple, list)):
        return len(obj) == len(before) and all(unchanged(b, v) for b, v in zip(before, obj))
    return obj == before


@pytest.mark.parametrize("kwargs", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_constructor_arguments(kwargs):
    expected = raised(lambda: nn.LSTM(**kwargs))
    actual = raised(lambda: torch_lstm_ext.LSTM(**kwargs))
    assert type(actual) is type(expected)
    assert str(actual) == str(expected)


def _bad_calls():
    """name -> (module config, builder of (input, hx) for the call)."""
    f64 = dict(dtype=torch.float64)
    return {
        "wrong feature size": (dict(), lambda: (torch.randn(4, 2, 5, **f64), None)),
        "1-D input": (dict(), lambda: (torch.randn(3, **f64), None)),
        "4-D input": (dict(), lambda: (torch.randn(2, 2, 2, 3, **f64), None)),
        "dtype mismatch": (dict(), lambda: (torch.randn(4, 2, 3, dtype=torch.float32), None)),
        "h0 wrong batch": (dict(), lambda: (torch.randn(4, 2, 3, **f64), (torch.randn(1, 3, 4, **f64), torch.randn(1, 2, 4, **f64)))),
        "c0 wrong size": (dict(), lambda: (torch.randn(4, 2, 3, **f64), (torch.randn(1, 2, 4, **f64), torch.randn(1, 2, 5, **f64)))),
        "h0 wrong layers": (dict(num_layers=2), lambda: (torch.randn(4, 2, 3, **f64), (torch.randn(1, 2, 4, **f64), torch.randn(2, 2, 4, **f64)))),
        "proj h0 of hidden size": (dict(proj_size=2), lambda: (torch.randn(4, 2, 3, **f64), (torch.randn(1, 2, 4, **f64), torch.randn(1, 2, 4, **f64)))),
        "2-D h0 for batched input": (dict(), lambda: (torch.randn(4, 2, 3, **f64), (torch.randn(2, 4, **f64), torch.randn(2, 4, **f64)))),
        "3-D h0 for unbatched input": (dict(), lambda: (torch.randn(4, 3, **f64), (torch.randn(1, 1, 4, **f64), torch.randn(1, 1, 4, **f64)))),
        "h0 without c0": (dict(), lambda: (torch.randn(4, 2, 3, **f64), (torch.randn(1, 2, 4, **f64),))),
        "hx a single tensor": (dict(), lambda: (torch.randn(4, 2, 3, **f64), torch.randn(1, 2, 4, **f64))),
        "h0 dtype mismatch": (dict(), lambda: (torch.randn(4, 2, 3, **f64), (torch.randn(1, 2, 4), torch.randn(1, 2, 4, **f64)))),
        "input is a list": (dict(), lambda: ([[1.0, 2.0, 3.0]], None)),
        "packed wrong feature size": (dict(), lambda: (pack_sequence([torch.randn(3, 5, **f64), torch.randn(2, 5, **f64)]), None)),
        "packed wrong h0 batch": (dict(), lambda: (pack_sequence([torch.randn(3, 3, **f64), torch.randn(2, 3, **f64)]), (torch.randn(1, 3, 4, **f64), torch.randn(1, 3, 4, **f64)))),
    }


@pytest.mark.parametrize("name", list(_bad_calls()))
def test_bad_forward_input_raises_like_nn_lstm_and_changes_nothing(name):
    config, build = _bad_calls()[name]
    ref = nn.LSTM(3, 4, dtype=torch.float64, **config)
    ours = torch_lstm_ext.LSTM(3, 4, dtype=torch.float64, **config)
    ours.load_state_dict(ref.state_dict())
    input, hx = build()
    before = snapshot((ours.state_dict(), input, hx))
    expected = raised(lambda: ref(input, hx))
    actual = raised(lambda: ours(input, hx))
    assert type(actual) is type(expected), f"{type(actual).__name__}: {actual} vs nn.LSTM's {type(expected).__name__}: {expected}"
    assert str(actual), "the message must say what is wrong"
    assert unchanged(before, (ours.state_dict(), input, hx))


def test_messages_name_the_problem():
    lstm = torch_lstm_ext.LSTM(3, 4)
    with pytest.raises(RuntimeError, match="input_size. Expected 3, got 5"):
        lstm(torch.randn(4, 2, 5))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(1, 2, 4\), got \[1, 3, 4\]"):
        lstm(torch.randn(4, 2, 3), (torch.randn(1, 3, 4), torch.randn(1, 2, 4)))
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 4D"):
        lstm(torch.randn(1, 4, 2, 3))


CELL_BAD = {
    "3-D input": lambda: (torch.randn(2, 2, 3), None),
    "wrong feature size": lambda: (torch.randn(2, 5), None),
    "h wrong batch": lambda: (torch.randn(2, 3), (torch.randn(3, 4), torch.randn(2, 4))),
    "c wrong hidden": lambda: (torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 5))),
    "3-D hx": lambda: (torch.randn(2, 3), (torch.randn(1, 2, 4), torch.randn(1, 2, 4))),
}


CELL_BAD_CONFIGS = {
    "input_size=-1": dict(input_size=-1, hidden_size=4),
    "hidden_size=-1": dict(input_size=3, hidden_size=-1),
    "input_size=3.0": dict(input_size=3.0, hidden_size=4),
    "hidden_size='4'": dict(input_size=3, hidden_size="4"),
}


@pytest.mark.parametrize("kwargs", CELL_BAD_CONFIGS.values(), ids=CELL_BAD_CONFIGS.keys())
def test_cell_bad_constructor_arguments(kwargs):
    expected = raised(lambda: nn.LSTMCell(**kwargs))
    actual = raised(lambda: torch_lstm_ext.LSTMCell(**kwargs))
    assert type(actual) is type(expected)
    assert str(actual) == str(expected)


@pytest.mark.parametrize("name", list(CELL_BAD))
def test_cell_bad_input_raises_like_nn_lstmcell(name):
    ref = nn.LSTMCell(3, 4)
    ours = torch_lstm_ext.LSTMCell(3, 4)
    input, hx = CELL_BAD[name]()
    expected = raised(lambda: ref(input, hx))
    actual = raised(lambda: ours(input, hx))
    assert type(actual) is type(expected), f"{actual!r} vs {expected!r}"


def test_backend_env_var_is_validated(monkeypatch):
    monkeypatch.setenv("TORCH_LSTM_EXT_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="TORCH_LSTM_EXT_BACKEND"):
        torch_lstm_ext.LSTM(3, 4)(torch.randn(2, 1, 3))


def test_triton_backend_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TORCH_LSTM_EXT_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        torch_lstm_ext.LSTM(3, 4)(torch.randn(2, 1, 3))
