"""quantize_weights (torch_lstm_ext/weight_quantization.py): int8 and float16 weight storage.

The reference: torch.nn.LSTM (or, for the variants nn.LSTM lacks, our float LSTM, itself tested
against the plain-PyTorch reference) holding the dequantized weights, computed here from the
stored int8 values and scales (q * scale per row), so outputs must agree to the compute dtype's
rounding.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from support import assert_close, dequantized_state
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import pack_sequence

import torch_lstm_ext

STORAGE = [torch.int8, torch.float16]
INPUT, HIDDEN = 5, 8


def quantized_pair(storage, dtype=torch.float32, seed=0, **config):
    """(our LSTM quantized to `storage`, nn.LSTM holding its dequantized weights), in eval."""
    torch.manual_seed(seed)
    ours = torch_lstm_ext.LSTM(INPUT, HIDDEN, dtype=dtype, **config).eval()
    torch_lstm_ext.quantize_weights(ours, storage)
    ref = nn.LSTM(INPUT, HIDDEN, dtype=dtype, **config).eval()
    ref.load_state_dict(dequantized_state(ours, dtype))
    return ours, ref


def assert_same_outputs(a, b, dtype):
    (out_a, (h_a, c_a)), (out_b, (h_b, c_b)) = a, b
    if isinstance(out_a, nn.utils.rnn.PackedSequence):
        out_a, out_b = out_a.data, out_b.data
    for name, x, y in (("output", out_a, out_b), ("h_n", h_a, h_b), ("c_n", c_a, c_b)):
        assert x.dtype == y.dtype == dtype, name
        assert_close(x, y, dtype, name)


CONFIGS = {
    "plain": {},
    "layers-bidirectional-dropout": dict(num_layers=2, bidirectional=True, dropout=0.3),
    "proj": dict(proj_size=3, num_layers=2),
    "batch_first-no-bias": dict(batch_first=True, bias=False),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("storage", STORAGE, ids=str)
def test_outputs_equal_nn_lstm_with_dequantized_weights(storage, config, dtype):
    ours, ref = quantized_pair(storage, dtype, **CONFIGS[config])
    directions = 2 if ours.bidirectional else 1
    layers = ours.num_layers * directions
    time_major = torch.randn(4, 3, INPUT, dtype=dtype)
    x = time_major.transpose(0, 1) if ours.batch_first else time_major
    hx = (torch.randn(layers, 3, ours.proj_size or HIDDEN, dtype=dtype), torch.randn(layers, 3, HIDDEN, dtype=dtype))
    with torch.no_grad():
        assert_same_outputs(ours(x), ref(x), dtype)
    with torch.inference_mode():
        assert_same_outputs(ours(x, hx), ref(x, hx), dtype)
        unbatched = time_major[:, 0]  # [T, I] with or without batch_first
        assert_same_outputs(ours(unbatched, (hx[0][:, 0], hx[1][:, 0])),
                            ref(unbatched, (hx[0][:, 0], hx[1][:, 0])), dtype)
        packed = pack_sequence([torch.randn(n, INPUT, dtype=dtype) for n in (2, 4, 1)], enforce_sorted=False)
        assert_same_outputs(ours(packed), ref(packed), dtype)


@pytest.mark.parametrize("storage", STORAGE, ids=str)
def test_training_mode_without_grad_draws_nn_lstm_dropout(storage):
    ours, ref = quantized_pair(storage, num_layers=3, dropout=0.5)
    ours.train(), ref.train()
    x = torch.randn(5, 2, INPUT)
    with torch.no_grad():
        torch.manual_seed(3)
        a = ours(x)
        torch.manual_seed(3)
        b = ref(x)
    assert_same_outputs(a, b, torch.float32)


VARIANTS = {
    "peephole-cell_clip": dict(peephole=True, cell_clip=0.5),
    "layer_norm": dict(layer_norm=True),
    "zoneout-proj": dict(zoneout_cell=0.2, zoneout_hidden=0.1, proj_size=3),
    "checkpoint-bidirectional": dict(checkpoint=True, bidirectional=True),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("storage", STORAGE, ids=str)
def test_variants_equal_float_lstm_with_dequantized_weights(storage, variant):
    torch.manual_seed(1)
    ours = torch_lstm_ext.LSTM(INPUT, HIDDEN, **VARIANTS[variant]).eval()
    torch_lstm_ext.quantize_weights(ours, storage)
    ref = torch_lstm_ext.LSTM(INPUT, HIDDEN, **VARIANTS[variant]).eval()
    ref.load_state_dict(dequantized_state(ours, torch.float32))
    x = torch.randn(6, 2, INPUT)
    with torch.no_grad():
        assert_same_outputs(ours(x), ref(x), torch.float32)


@pytest.mark.parametrize("storage", STORAGE, ids=str)
def test_cpu_autocast_like_nn_lstm_with_dequantized_weights(storage):
    ours, ref = quantized_pair(storage, num_layers=2)
    x = torch.randn(4, 3, INPUT)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ours(x), ref(x)
    assert_same_outputs(a, b, b[0].dtype)


def test_int8_rows_symmetric_with_one_scale_each():
    torch.manual_seed(0)
    lstm = torch_lstm_ext.LSTM(INPUT, HIDDEN, proj_size=3)
    floats = {name: getattr(lstm, name).detach().clone() for name in ("weight_ih_l0", "weight_hh_l0", "weight_hr_l0")}
    with torch.no_grad():
        lstm.weight_hh_l0[1] = 0.0  # a row of zeros stays zero
    floats["weight_hh_l0"][1] = 0.0
    torch_lstm_ext.quantize_weights(lstm)
    for name, w in floats.items():
        q, scale = getattr(lstm, name), getattr(lstm, name + "_scale")
        assert q.dtype == torch.int8 and scale.shape == (w.shape[0],) and scale.dtype == torch.float32
        assert int(q.abs().max()) == 127 and int(q.min()) >= -127
        assert torch.all((w - q.float() * scale[:, None]).abs() <= scale[:, None] / 2 * (1 + 1e-6))
        nonzero = w.abs().amax(1) > 0
        torch.testing.assert_close(scale[nonzero], w.abs().amax(1)[nonzero] / 127)
    assert torch.all(lstm.weight_hh_l0[1] == 0)
    assert {name for name, _ in lstm.named_parameters()} == {"bias_ih_l0", "bias_hh_l0"}
    assert not any(p.requires_grad for p in lstm.parameters())


@pytest.mark.parametrize("storage, limit", [(torch.int8, 0.3), (torch.float16, 0.55)], ids=str)
def test_weight_bytes_shrink(storage, limit):
    lstm = torch_lstm_ext.LSTM(256, 512, num_layers=2, proj_size=128)

    def weight_bytes(module):
        return sum(t.numel() * t.element_size() for name, t in module.state_dict().items() if "weight" in name)

    before = weight_bytes(lstm)
    torch_lstm_ext.quantize_weights(lstm, storage)
    assert weight_bytes(lstm) <= limit * before


@pytest.mark.parametrize("storage", STORAGE, ids=str)
def test_forward_with_autograd_recording_raises_and_changes_nothing(storage):
    ours, _ = quantized_pair(storage)
    x = torch.randn(3, 2, INPUT, requires_grad=True)
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    x_before = x.detach().clone()
    with pytest.raises(RuntimeError, match="quantized LSTM is inference-only"):
        ours(x)
    ours.bias_hh_l0.requires_grad_(True)
    with pytest.raises(RuntimeError, match="quantized LSTM is inference-only"):
        ours(x.detach())
    ours.bias_hh_l0.requires_grad_(False)
    assert torch.equal(x.detach(), x_before) and x.grad is None
    assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items())
    with torch.enable_grad():
        out, _ = ours(x.detach())  # nothing requires grad: autograd records nothing
    assert not out.requires_grad
    with torch.no_grad():
        ours(x)


def test_weight_dropout_in_training_raises():
    lstm = torch_lstm_ext.quantize_weights(torch_lstm_ext.LSTM(INPUT, HIDDEN, weight_dropout=0.3))
    with torch.no_grad(), pytest.raises(RuntimeError, match="weight_dropout"):
        lstm(torch.randn(3, 2, INPUT))
    with torch.no_grad():
        lstm.eval()(torch.randn(3, 2, INPUT))


@pytest.mark.parametrize("storage", STORAGE, ids=str)
def test_state_dict_round_trip(storage):
    ours, _ = quantized_pair(storage, num_layers=2, proj_size=3)
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(9)  # other random weights, replaced by the load
    other = torch_lstm_ext.quantize_weights(torch_lstm_ext.LSTM(INPUT, HIDDEN, num_layers=2, proj_size=3).eval(),
                                            storage)
    other.load_state_dict(torch.load(buffer))
    x = torch.randn(4, 2, INPUT)
    with torch.no_grad():
        (a, (h_a, c_a)), (b, (h_b, c_b)) = ours(x), other(x)
    # The same computation on the same stored values: equal to the bit.
    assert torch.equal(a, b) and torch.equal(h_a, h_b) and torch.equal(c_a, c_b)


def test_state_dict_of_another_storage_refused():
    float_lstm = torch_lstm_ext.LSTM(INPUT, HIDDEN)
    int8 = torch_lstm_ext.quantize_weights(copy.deepcopy(float_lstm))
    fp16 = torch_lstm_ext.quantize_weights(copy.deepcopy(float_lstm), torch.float16)
    int8_state = copy.deepcopy(int8.state_dict())
    for target, state in ((int8, float_lstm.state_dict()), (float_lstm, int8_state),
                          (fp16, float_lstm.state_dict()), (fp16, int8_state)):
        before = copy.deepcopy(target.state_dict())
        with pytest.raises(RuntimeError, match="quantized the same way"):
            target.load_state_dict(state, strict=False)
        assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    # float16 values load into a float LSTM exactly, as into nn.LSTM (the scales-free keys match).
    float_lstm.load_state_dict(fp16.state_dict())
    x = torch.randn(3, 2, INPUT)
    with torch.no_grad():
        assert_same_outputs(float_lstm(x), fp16(x), torch.float32)


def test_converts_every_lstm_of_a_model_in_place():
    model = nn.ModuleDict(dict(a=torch_lstm_ext.LSTM(4, 6), b=nn.Sequential(torch_lstm_ext.LSTM(6, 6)),
                               theirs=nn.LSTM(4, 6), head=nn.Linear(6, 2)))
    assert torch_lstm_ext.quantize_weights(model, torch.float16) is model
    assert model.a.weight_quantization == model.b[0].weight_quantization == torch.float16
    assert model.a.weight_hh_l0.dtype == torch.float16
    assert model.theirs.weight_hh_l0.dtype == torch.float32 and model.head.weight.dtype == torch.float32
    assert "weight_quantization=torch.float16" in repr(model.a)


def test_refusals_leave_the_model_as_it_was():
    with pytest.raises(ValueError, match="torch.int8 or torch.float16"):
        torch_lstm_ext.quantize_weights(torch_lstm_ext.LSTM(4, 6), torch.bfloat16)
    model = nn.Sequential(torch_lstm_ext.LSTM(4, 6), torch_lstm_ext.LSTM(6, 6))
    parametrize.register_parametrization(model[1], "weight_hh_l0", nn.Identity())
    with pytest.raises(ValueError, match="parametrized"):
        torch_lstm_ext.quantize_weights(model)
    assert model[0].weight_quantization is None and model[0].weight_hh_l0.dtype == torch.float32
    lstm = torch_lstm_ext.quantize_weights(torch_lstm_ext.LSTM(4, 6))
    with pytest.raises(ValueError, match="already quantized"):
        torch_lstm_ext.quantize_weights(lstm, torch.float16)
    with pytest.raises(RuntimeError, match="re-initialised"):
        lstm.reset_parameters()
    with pytest.raises(ValueError, match="quantized"):  # slicing int8 rows without scales
        torch_lstm_ext.prune_hidden_units(lstm, 0.5, criterion="weight")


def test_input_dtype_checked_like_nn_lstm():
    ours, _ = quantized_pair(torch.int8)
    with torch.no_grad(), pytest.raises(ValueError, match="does not match weight dtype"):
        ours(torch.randn(3, 2, INPUT, dtype=torch.float64))


def test_export_runs_the_quantized_weights():
    ours, ref = quantized_pair(torch.int8, num_layers=2)
    x = torch.randn(4, 3, INPUT)
    program = torch.export.export(ours, (x,))
    graph_inputs = program.graph_signature.inputs_to_buffers.values()
    assert "weight_hh_l0" in graph_inputs and "weight_hh_l0_scale" in graph_inputs
    with torch.no_grad():
        assert_same_outputs(program.module()(x), ref(x), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("storage", STORAGE, ids=str)
def test_cell_equals_nn_lstm_cell_with_dequantized_weights(storage, dtype):
    torch.manual_seed(2)
    cell = torch_lstm_ext.LSTMCell(INPUT, HIDDEN, dtype=dtype)
    torch_lstm_ext.quantize_weights(nn.Sequential(cell), storage)
    assert cell.weight_quantization == storage and cell.weight_ih.dtype == storage
    ref = nn.LSTMCell(INPUT, HIDDEN, dtype=dtype)
    ref.load_state_dict(dequantized_state(cell, dtype))
    x = torch.randn(3, INPUT, dtype=dtype)
    hx = (torch.randn(3, HIDDEN, dtype=dtype), torch.randn(3, HIDDEN, dtype=dtype))
    with torch.no_grad():
        for args in ((x,), (x, hx), (x[0], (hx[0][0], hx[1][0]))):
            for got, want in zip(cell(*args), ref(*args)):
                assert got.dtype == dtype
                assert_close(got, want, dtype)
    with pytest.raises(RuntimeError, match="quantized LSTMCell is inference-only"):
        cell(x.requires_grad_())
    other = torch_lstm_ext.quantize_weights(torch_lstm_ext.LSTMCell(INPUT, HIDDEN, dtype=dtype), storage)
    other.load_state_dict(cell.state_dict())
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(other(x, hx), cell(x, hx)))
    with pytest.raises(RuntimeError, match="quantized the same way"):  # float weights into it
        other.load_state_dict(ref.state_dict(), strict=False)


def test_vmap_over_inputs_folds_with_the_shared_quantized_weights():
    ours, ref = quantized_pair(torch.int8, num_layers=2)
    xs = torch.randn(3, 5, 2, INPUT)
    with torch.no_grad():
        got = torch.func.vmap(lambda x: ours(x)[0])(xs)
        want = torch.stack([ref(x)[0] for x in xs])
    assert_close(got, want, torch.float32)
