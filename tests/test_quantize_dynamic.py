"""quantize_dynamic and our LSTM (torch_lstm_ext/quantization.py): wherever the spec covers
nn.LSTM or our class, our LSTM is quantized through quantize_weights (qint8 -> int8 weights,
float16 -> float16) and computes what a float LSTM holding the dequantized weights computes, and
the rest of the model converts as torch converts it; otherwise our LSTM stays as it was, and
nothing else about quantize_dynamic changes.

References: torch's own quantize_dynamic (the function the wrapper wraps), the module types
torch documents (torch.ao.nn.quantized.dynamic), and for the quantized LSTM an nn.LSTM holding
the weights dequantized here from the stored values and scales.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import sys
import warnings

import pytest
import torch
from support import assert_close, dequantized_state
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import (
    default_dynamic_qconfig,
    float16_dynamic_qconfig,
    get_default_dynamic_quant_module_mappings,
    get_default_qconfig,
    get_default_qconfig_propagation_list,
    prepare,
)
from torch.nn.utils import parametrize

import torch_lstm_ext
from torch_lstm_ext import quantization

# torch.ao.quantization's deprecation warning on every call is not what these tests look at;
# the test that does sets its own filter.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EXPORTS = ("torch.ao.quantization", "torch.ao.quantization.quantize", "torch.quantization",
           "torch.quantization.quantize")
WRAPPER = torch.ao.quantization.quantize_dynamic
TORCH_QUANTIZE_DYNAMIC = WRAPPER.__wrapped__  # torch's function, as torch exported it


class Model(nn.Module):
    """Our LSTM beside an nn.LSTM and an nn.Linear."""

    def __init__(self):
        super().__init__()
        self.ours = torch_lstm_ext.LSTM(4, 6, num_layers=2, bidirectional=True)
        self.theirs = nn.LSTM(4, 6)
        self.head = nn.Linear(12, 3)


def quantize_recording(model, *args, **kwargs):
    """(the wrapper's result, the messages of the warnings naming our LSTM it gave)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = torch.ao.quantization.quantize_dynamic(model, *args, **kwargs)
    ours = [str(w.message) for w in caught if "torch_lstm_ext" in str(w.message)]
    return result, ours


# quantize_dynamic's weight dtype -> the storage of our quantized weights.
STORAGE = {torch.qint8: torch.int8, torch.float16: torch.float16}


def assert_quantized(before: torch_lstm_ext.LSTM, after: nn.Module, weight_dtype):
    """`after` is our LSTM with weights stored as `weight_dtype` asks, computing what nn.LSTM
    computes with those weights dequantized (to float32 rounding); `before` is the float original."""
    storage = STORAGE[weight_dtype]
    assert type(after) is torch_lstm_ext.LSTM and after.weight_quantization == storage
    assert after.weight_hh_l0.dtype == storage
    dequantized = dequantized_state(after)
    ref = nn.LSTM(before.input_size, before.hidden_size, num_layers=before.num_layers,
                  bidirectional=before.bidirectional, proj_size=before.proj_size)
    ref.load_state_dict(dequantized)
    # The dequantized matrices are the originals to quantization rounding: half an int8 step of
    # the row (max|row| / 127), or float16's half ulp (2**-11 relative).
    for name, w in before.named_parameters():
        w = w.detach()
        if name.startswith("weight"):
            half_step = w.abs().amax(1, keepdim=True) / 254 if storage == torch.int8 else w.abs() * 2**-11
            assert torch.all((dequantized[name] - w).abs() <= half_step * (1 + 1e-5) + 1e-12), name
        else:
            assert torch.equal(dequantized[name], w), name
    x = torch.randn(5, 2, before.input_size)
    with torch.no_grad():
        (out0, (h0, c0)), (out1, (h1, c1)) = ref(x), after(x)
    for a, b in ((out0, out1), (h0, h1), (c0, c1)):
        assert_close(b, a, torch.float32)


def assert_same_outputs(before: torch_lstm_ext.LSTM, after: nn.Module):
    """`after` is still our LSTM in floating point and computes what `before` did (the same
    code on equal weights, so equal to the bit)."""
    assert type(after) is torch_lstm_ext.LSTM and not hasattr(after, "qconfig")
    assert all(p.dtype == torch.float32 for p in after.parameters())
    x = torch.randn(5, 2, 4)
    (out0, (h0, c0)), (out1, (h1, c1)) = before(x), after(x)
    for a, b in ((out0, out1), (h0, h1), (c0, c1)):
        assert torch.equal(a, b)


# (qconfig_spec, dtype, our LSTM's weight dtype, head's type, nn.LSTM sibling's type)
COVERING = {
    "default-qint8": (None, torch.qint8, torch.qint8, nnqd.Linear, nnqd.LSTM),
    "default-float16": (None, torch.float16, torch.float16, nnqd.Linear, nnqd.LSTM),
    "set-nn.LSTM": ({nn.LSTM}, torch.qint8, torch.qint8, nn.Linear, nnqd.LSTM),
    "set-ours": ({torch_lstm_ext.LSTM}, torch.qint8, torch.qint8, nn.Linear, nn.LSTM),
    "set-both-float16": ({nn.LSTM, nn.Linear}, torch.float16, torch.float16, nnqd.Linear, nnqd.LSTM),
    "set-name": ({"ours", nn.Linear}, torch.qint8, torch.qint8, nnqd.Linear, nn.LSTM),
    "dict-nn.LSTM": ({nn.LSTM: default_dynamic_qconfig, nn.Linear: default_dynamic_qconfig}, torch.qint8,
                     torch.qint8, nnqd.Linear, nnqd.LSTM),
    "dict-ours": ({torch_lstm_ext.LSTM: float16_dynamic_qconfig}, torch.qint8, torch.float16, nn.Linear,
                  nn.LSTM),
}
# Those that apply to a bare LSTM as the model (a name key names a child).
BARE = [name for name in COVERING if name != "set-name"]


@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
@pytest.mark.parametrize("case", list(COVERING))
def test_covering_spec_quantizes_ours_and_converts_the_rest(case, inplace):
    spec, dtype, weight_dtype, head_type, theirs_type = COVERING[case]
    model = Model()
    before = Model()
    before.load_state_dict(model.state_dict())
    biases = [p for name, p in model.ours.named_parameters() if name.startswith("bias")]
    quantized, messages = quantize_recording(model, spec, dtype=dtype, inplace=inplace)
    assert messages == []
    assert (quantized is model) == inplace
    assert type(quantized.head) is head_type and type(quantized.theirs) is theirs_type
    assert_quantized(before.ours, quantized.ours, weight_dtype)
    # In place, our LSTM keeps its bias Parameter objects; a copy leaves the model it was given
    # as it was.
    kept = [a is b for a, b in zip(quantized.ours.parameters(), biases)]
    assert all(kept) if inplace else not any(kept)
    if not inplace:
        assert type(model.head) is nn.Linear and type(model.theirs) is nn.LSTM
        assert not any(hasattr(m, "qconfig") for m in model.modules())
        assert_same_outputs(before.ours, model.ours)


@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
@pytest.mark.parametrize("case", BARE)
def test_bare_lstm_is_quantized(case, inplace):
    spec, dtype, weight_dtype, _, _ = COVERING[case]
    lstm = torch_lstm_ext.LSTM(4, 6, proj_size=3)
    before = torch_lstm_ext.LSTM(4, 6, proj_size=3)
    before.load_state_dict(lstm.state_dict())
    quantized, messages = quantize_recording(lstm, spec, dtype=dtype, inplace=inplace)
    assert messages == []
    assert_quantized(before, quantized, weight_dtype)
    assert (lstm.weight_quantization is not None) == inplace


NOT_COVERING = {
    "set-linear": ({nn.Linear}, torch.qint8),
    "set-gru": ({nn.GRU}, torch.float16),
    "dict-nn.LSTM-None": ({nn.LSTM: None, nn.Linear: default_dynamic_qconfig}, torch.qint8),
    "default-quint8": (None, torch.quint8),  # torch's default for quint8: embeddings only
}


@pytest.mark.parametrize("bare", [False, True], ids=["model", "bare"])
@pytest.mark.parametrize("case", list(NOT_COVERING))
def test_spec_without_lstm_leaves_ours_in_float(case, bare):
    spec, dtype = NOT_COVERING[case]
    model = torch_lstm_ext.LSTM(4, 6) if bare else Model()
    quantized, messages = quantize_recording(model, spec, dtype=dtype)
    assert messages == []
    assert (quantized if bare else quantized.ours).weight_quantization is None
    assert_same_outputs(model if bare else model.ours, quantized if bare else quantized.ours)
    if not bare and case == "set-linear":
        assert type(quantized.head) is nnqd.Linear and type(quantized.theirs) is nn.LSTM


def test_forward_hooks_run_once_after_conversion():
    """swap_module registers the replaced module's forward hooks on its replacement: our
    replacement must not already hold them (they would run twice)."""
    model = Model()
    calls = []
    model.ours.register_forward_pre_hook(lambda module, args: calls.append("pre"))
    model.ours.register_forward_hook(lambda module, args, output: calls.append("post"))
    quantized, _ = quantize_recording(model, {nn.LSTM})
    assert quantized.ours.weight_quantization == torch.int8
    with torch.no_grad():
        quantized.ours(torch.randn(3, 2, 4))
    assert calls == ["pre", "post"]
    model.ours(torch.randn(3, 2, 4))  # the copy quantize_dynamic started from keeps its own
    assert calls == ["pre", "post"] * 2


def test_parametrized_lstm_refused():
    class Double(nn.Module):
        def forward(self, weight):
            return 2 * weight

    model = Model()
    parametrize.register_parametrization(model.ours, "weight_hh_l0", Double())
    with pytest.raises(ValueError, match="parametrized"):
        quantize_recording(model, {nn.LSTM})
    assert parametrize.is_parametrized(model.ours, "weight_hh_l0")


def test_weight_dtype_without_an_lstm_path_raises_as_torch_does():
    """A qconfig whose weight dtype torch's dynamic LSTM refuses (quint8): our LSTM raises the
    same exception type."""
    qconfig = torch.ao.quantization.QConfig(
        activation=default_dynamic_qconfig.activation,
        weight=torch.ao.quantization.default_observer.with_args(dtype=torch.quint8))
    with pytest.raises(Exception) as expected:
        TORCH_QUANTIZE_DYNAMIC(nn.Sequential(nn.LSTM(4, 6)), {nn.LSTM: qconfig})
    with pytest.raises(expected.type, match="Unsupported dtype"):
        torch.ao.quantization.quantize_dynamic(nn.Sequential(torch_lstm_ext.LSTM(4, 6)), {nn.LSTM: qconfig})


class Zoo(nn.Module):
    """One of each module torch's default dynamic specs cover, and none of ours."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.lstm = nn.LSTM(4, 4)
        self.gru = nn.GRU(4, 4)
        self.lstm_cell = nn.LSTMCell(4, 4)
        self.rnn_cell = nn.RNNCell(4, 4)
        self.gru_cell = nn.GRUCell(4, 4)
        self.embedding = nn.Embedding(10, 4)
        self.bag = nn.EmbeddingBag(10, 4)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())


@pytest.mark.parametrize("spec, dtype", [
    (None, torch.qint8), (None, torch.float16), (None, torch.quint8), ({nn.LSTM, nn.Linear}, torch.qint8),
    ({nn.Linear: default_dynamic_qconfig, "block": float16_dynamic_qconfig}, torch.qint8),
], ids=["default-qint8", "default-float16", "default-quint8", "set", "dict"])
def test_models_without_our_lstm_convert_as_torch_does(spec, dtype):
    zoo = Zoo()
    ours, messages = quantize_recording(zoo, spec, dtype=dtype)
    theirs = TORCH_QUANTIZE_DYNAMIC(zoo, spec, dtype=dtype)
    assert messages == []
    assert repr(ours) == repr(theirs)  # module types, shapes, weight dtypes and qschemes
    assert [type(m) for m in ours.modules()] == [type(m) for m in theirs.modules()]
    x = torch.randn(3, 4)
    assert torch.equal(ours.linear(x), theirs.linear(x))  # the same quantized weights


@pytest.mark.parametrize("spec, dtype", [(None, torch.int32), ({nn.Linear}, torch.int32), ({nn.LSTM}, "qint8")])
def test_bad_dtype_raises_as_torch_does(spec, dtype):
    with pytest.raises(Exception) as expected:
        TORCH_QUANTIZE_DYNAMIC(Model(), spec, dtype=dtype)
    with pytest.raises(expected.type):
        torch.ao.quantization.quantize_dynamic(Model(), spec, dtype=dtype)


def test_wrapper_is_installed_everywhere_once():
    torch_function = inspect.unwrap(TORCH_QUANTIZE_DYNAMIC)
    assert torch_function.__code__.co_filename.endswith("torch/ao/quantization/quantize.py")
    assert inspect.signature(WRAPPER, follow_wrapped=False) == inspect.signature(torch_function)
    assert WRAPPER.__doc__ == torch_function.__doc__ and WRAPPER.__name__ == "quantize_dynamic"
    quantization.install()
    importlib.reload(quantization)
    for name in EXPORTS:
        assert sys.modules[name].quantize_dynamic is WRAPPER, name
    assert WRAPPER.__wrapped__ is TORCH_QUANTIZE_DYNAMIC  # wrapped once


@pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max")  # torch's observer, on construction
def test_torch_state_is_untouched():
    """No entry in torch's global mappings: they also feed static prepare(), which would then
    put an observer on our LSTM's tuple output."""
    assert torch_lstm_ext.LSTM not in get_default_dynamic_quant_module_mappings()
    assert torch_lstm_ext.LSTM not in get_default_qconfig_propagation_list()
    model = nn.Sequential(torch_lstm_ext.LSTM(4, 4))
    model.qconfig = get_default_qconfig()
    prepared = prepare(model)
    assert not hasattr(prepared[0], "activation_post_process")
    prepared(torch.randn(3, 2, 4))


def test_deprecation_warning_still_names_the_caller():
    """torch's DeprecationWarning names the frame that calls quantize_dynamic, which decides
    whether Python's default filters show it; through the wrapper it names the same frame."""
    def caller_warnings(function):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            function(nn.Sequential(nn.Linear(2, 2)))
        return [(w.category, str(w.message)) for w in caught if w.filename == __file__]

    assert caller_warnings(WRAPPER) == caller_warnings(TORCH_QUANTIZE_DYNAMIC)


@pytest.mark.parametrize("spec, dtype, storage", [
    (None, torch.qint8, torch.int8), (None, torch.float16, torch.float16), ({nn.LSTMCell}, torch.qint8, torch.int8),
    ({nn.Linear}, torch.qint8, None),
], ids=["default-qint8", "default-float16", "set-nn.LSTMCell", "set-linear"])
def test_our_lstm_cell_is_covered_wherever_nn_lstm_cell_is(spec, dtype, storage):
    model = nn.Sequential(torch_lstm_ext.LSTMCell(4, 6))
    float_cell = copy.deepcopy(model[0])
    quantized, messages = quantize_recording(model, spec, dtype=dtype)
    cell = quantized[0]
    assert messages == [] and type(cell) is torch_lstm_ext.LSTMCell
    assert cell.weight_quantization == storage
    assert cell.weight_hh.dtype == (storage or torch.float32)
    ref = nn.LSTMCell(4, 6)
    ref.load_state_dict(dequantized_state(cell))
    x = torch.randn(3, 4)
    with torch.no_grad():
        for got, want in zip(cell(x), ref(x)):
            assert_close(got, want, torch.float32)
    assert model[0].weight_quantization is None  # a copy was quantized
    assert torch.equal(model[0].weight_hh, float_cell.weight_hh)
