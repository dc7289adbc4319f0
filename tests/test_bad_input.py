"""Bad and edge-case input against torch.nn.LSTM / nn.LSTMCell, live: each case gives the torch
module's results (to support.py's tolerance, NaNs in the same places, gradients included) or
raises its exception type, and leaves the module and the caller's tensors as they were.

Cases where nn.LSTM's result is an accident of one of its code paths, and we raise instead,
are listed apart (STRICTER, CELL_STRICTER), each with the reason. Bad input already covered
by test_validation.py (wrong sizes, dims, dtypes of well-formed calls) is not repeated here.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from support import TOLERANCES, outputs_and_grads, twin_lstms
from test_validation import raised, snapshot, unchanged
from torch import nn
from torch.nn.utils import parametrizations, parametrize, prune
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import torch_lstm_ext
from torch_lstm_ext.config import BACKEND_ENV

F64, F32 = torch.float64, torch.float32
INPUT, HIDDEN = 3, 4
INF, NAN = float("inf"), float("nan")


def randn(*shape, dtype=F64, grad=False, scale=1.0):
    return (torch.randn(*shape, dtype=dtype) * scale).requires_grad_(grad)


def full(*shape, value, dtype=F64, grad=False):
    return torch.full(shape, value, dtype=dtype, requires_grad=grad)


def with_nan(*shape, dtype=F64):
    """randn with one NaN, requiring grad."""
    t = torch.randn(*shape, dtype=dtype)
    t.view(-1)[t.numel() // 2] = NAN
    return t.requires_grad_()


def states(layers=1, batch=2, out=HIDDEN, hidden=HIDDEN, dtype=F64, grad=False):
    return randn(layers, batch, out, dtype=dtype, grad=grad), randn(layers, batch, hidden, dtype=dtype, grad=grad)


def packed(*lengths, dtype=F64, grad=False, enforce_sorted=True):
    seqs = [randn(n, INPUT, dtype=dtype) for n in lengths]
    x = pack_sequence(seqs, enforce_sorted=enforce_sorted)
    x.data.requires_grad_(grad)
    return x


def meta(*shape):
    return torch.empty(shape, dtype=F64, device="meta")


def outcome(run, module, input, hx):
    """run(module, input, hx) -> (tensors..., {name: grad}), or the exception the call raised."""
    try:
        return run(module, input, hx)
    except Exception as error:  # the exception is the result under test
        return error


def assert_close_nan(actual, expected, dtype, msg):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{msg}: {m}")


def assert_same_outcome(ref, ours, input, hx, dtype=F64, run=outputs_and_grads) -> None:
    """`ours` returns what `ref` (the torch module) returns, gradients included, or raises its
    exception type; either way its state and the caller's input / hx are left unchanged."""
    before = snapshot((ours.state_dict(), input, hx))
    expected, actual = outcome(run, ref, input, hx), outcome(run, ours, input, hx)
    if isinstance(expected, Exception):
        assert type(actual) is type(expected), f"{actual!r} where the torch module raised {expected!r}"
        assert str(actual), "the message must say what is wrong"
    else:
        assert not isinstance(actual, Exception), f"raised {actual!r} where the torch module returned"
        for k, (a, b) in enumerate(zip(actual[:-1], expected[:-1])):
            assert a.shape == b.shape and a.dtype == b.dtype, f"output {k}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
            assert_close_nan(a, b, dtype, f"output {k}")
        assert actual[-1].keys() == expected[-1].keys()
        for name, grad in expected[-1].items():
            assert_close_nan(actual[-1][name], grad, dtype, f"grad {name}")
    assert unchanged(before, (ours.state_dict(), input, hx))


def _twins(config: dict):
    """(nn.LSTM, our LSTM, dtype) for a case's config: LSTM arguments, defaults INPUT, HIDDEN,
    float64, which dtype=... overrides."""
    config = {"input_size": INPUT, "hidden_size": HIDDEN, "dtype": F64, **config}
    dtype = config.pop("dtype")
    return (*twin_lstms(dtype, **config), dtype)


# name -> (LSTM config, builder of (input, hx)).
CASES = {
    # The issue's four (the fourth, _flat_weights, is tested below).
    "batch 0": ({}, lambda: (randn(5, 0, INPUT, grad=True), None)),
    "batch 0, batch_first": (dict(batch_first=True), lambda: (randn(0, 5, INPUT, grad=True), None)),
    "batch 0, hx": ({}, lambda: (randn(5, 0, INPUT, grad=True), states(batch=0, grad=True))),
    "batch 0, 2 layers bidirectional proj": (
        dict(num_layers=2, bidirectional=True, proj_size=2),
        lambda: (randn(5, 0, INPUT, grad=True), states(4, 0, out=2, grad=True)),
    ),
    "batch 0, float32": (dict(dtype=F32), lambda: (randn(5, 0, INPUT, dtype=F32, grad=True), None)),
    "packed, batch sizes 0": ({}, lambda: (PackedSequence(randn(0, INPUT, grad=True), torch.zeros(2, dtype=torch.int64)), None)),
    "packed, batch sizes 0, bidirectional": (
        dict(bidirectional=True), lambda: (PackedSequence(randn(0, INPUT, grad=True), torch.zeros(2, dtype=torch.int64)), None),
    ),
    "length 0": ({}, lambda: (randn(0, 2, INPUT), None)),
    "length 0, hx": ({}, lambda: (randn(0, 2, INPUT), states())),
    "length 0, batch_first": (dict(batch_first=True), lambda: (randn(2, 0, INPUT), None)),
    "length 0, unbatched": ({}, lambda: (randn(0, INPUT), None)),
    "length 0 and batch 0": ({}, lambda: (randn(0, 0, INPUT), None)),
    "three states": ({}, lambda: (randn(5, 2, INPUT), (*states(), randn(1, 2, HIDDEN)))),
    "three states, packed": ({}, lambda: (packed(3, 2), (*states(), randn(1, 2, HIDDEN)))),
    # Other zero sizes.
    "feature size 0": ({}, lambda: (randn(5, 2, 0), None)),
    "feature size 0, unbatched": ({}, lambda: (randn(5, 0), None)),
    "packed, no steps": ({}, lambda: (PackedSequence(randn(0, INPUT), torch.zeros(0, dtype=torch.int64)), None)),
    # Constructor edges: the smallest sizes, bool sizes, and what nn.LSTM's kernel refuses.
    "hidden_size=1": (dict(hidden_size=1), lambda: (randn(5, 2, INPUT, grad=True), None)),
    "proj_size=1": (dict(proj_size=1), lambda: (randn(5, 2, INPUT, grad=True), None)),
    "proj_size=hidden_size-1": (dict(proj_size=HIDDEN - 1), lambda: (randn(5, 2, INPUT, grad=True), None)),
    "proj_size=False": (dict(proj_size=False), lambda: (randn(5, 2, INPUT, grad=True), None)),
    "input_size=True": (dict(input_size=True), lambda: (randn(5, 2, 1, grad=True), None)),
    "dropout=1, training": (dict(num_layers=2, dropout=1), lambda: (randn(5, 2, INPUT, grad=True), None)),
    "bidirectional=1": (dict(bidirectional=1), lambda: (randn(5, 2, INPUT), None)),
    "bidirectional=None": (dict(bidirectional=None), lambda: (randn(5, 2, INPUT), None)),
    "num_layers=True": (dict(num_layers=True), lambda: (randn(5, 2, INPUT), None)),
    # NaN and Inf propagate.
    "NaN in input": ({}, lambda: (with_nan(5, 2, INPUT), None)),
    "NaN in input, float32": (dict(dtype=F32), lambda: (with_nan(5, 2, INPUT, dtype=F32), None)),
    "NaN in input, bidirectional 2 layers": (dict(num_layers=2, bidirectional=True), lambda: (with_nan(5, 2, INPUT), None)),
    "NaN in packed input": ({}, lambda: (PackedSequence(with_nan(5, INPUT), torch.tensor([3, 2])), None)),
    "Inf input": ({}, lambda: (full(5, 2, INPUT, value=INF, grad=True), None)),
    "-Inf input": ({}, lambda: (full(5, 2, INPUT, value=-INF, grad=True), None)),
    "Inf input, float32": (dict(dtype=F32), lambda: (full(5, 2, INPUT, value=INF, dtype=F32, grad=True), None)),
    "NaN h0": ({}, lambda: (randn(5, 2, INPUT), (full(1, 2, HIDDEN, value=NAN, grad=True), randn(1, 2, HIDDEN)))),
    "Inf c0": ({}, lambda: (randn(5, 2, INPUT), (randn(1, 2, HIDDEN), full(1, 2, HIDDEN, value=INF, grad=True)))),
    "-Inf c0, proj": (dict(proj_size=2), lambda: (randn(5, 2, INPUT), (randn(1, 2, 2), full(1, 2, HIDDEN, value=-INF, grad=True)))),
    # Huge magnitudes: saturated gates.
    "1e30 input": ({}, lambda: (randn(5, 2, INPUT, scale=1e30, grad=True), None)),
    "1e30 input, float32": (dict(dtype=F32), lambda: (randn(5, 2, INPUT, dtype=F32, scale=1e30, grad=True), None)),
    "1e30 input, 2 layers bidirectional proj": (
        dict(num_layers=2, bidirectional=True, proj_size=2), lambda: (randn(5, 2, INPUT, scale=1e30, grad=True), None),
    ),
    "1e300 input (overflows to Inf)": ({}, lambda: (randn(5, 2, INPUT, scale=1e300, grad=True), None)),
    "1e30 h0": ({}, lambda: (randn(5, 2, INPUT), (randn(1, 2, HIDDEN, scale=1e30, grad=True), randn(1, 2, HIDDEN)))),
    "1e30 c0": ({}, lambda: (randn(5, 2, INPUT), (randn(1, 2, HIDDEN), randn(1, 2, HIDDEN, scale=1e30, grad=True)))),
    # Non-contiguous and expanded (stride 0) input and states.
    "transposed input": ({}, lambda: (randn(2, 5, INPUT, grad=True).transpose(0, 1), None)),
    "transposed input, batch_first": (dict(batch_first=True), lambda: (randn(5, 2, INPUT, grad=True).transpose(0, 1), None)),
    "sliced input": ({}, lambda: (randn(5, 4, 2 * INPUT, grad=True)[:, ::2, ::2], None)),
    "expanded input": ({}, lambda: (randn(1, 1, INPUT, grad=True).expand(5, 2, INPUT), None)),
    "expanded input, unbatched": ({}, lambda: (randn(1, INPUT, grad=True).expand(5, INPUT), None)),
    "expanded hx": ({}, lambda: (randn(5, 2, INPUT), (randn(1, 1, HIDDEN, grad=True).expand(1, 2, HIDDEN),
                                                   randn(HIDDEN, grad=True).expand(1, 2, HIDDEN)))),
    "transposed hx, 2 layers": (dict(num_layers=2), lambda: (randn(5, 2, INPUT), (
        randn(2, 2, HIDDEN, grad=True).transpose(0, 1), randn(HIDDEN, 2, 2, grad=True).permute(2, 1, 0)))),
    "sliced hx": ({}, lambda: (randn(5, 2, INPUT), (randn(1, 4, HIDDEN, grad=True)[:, ::2],
                                                 randn(1, 2, 2 * HIDDEN, grad=True)[..., ::2]))),
    "packed, non-contiguous data": ({}, lambda: (PackedSequence(randn(INPUT, 5, grad=True).t(), torch.tensor([3, 2])), None)),
    "packed, expanded data": ({}, lambda: (PackedSequence(randn(1, INPUT, grad=True).expand(5, INPUT), torch.tensor([3, 2])), None)),
    # Another dtype or device (meta: an "other device" on any machine).
    "input float32, float64 module": ({}, lambda: (randn(5, 2, INPUT, dtype=F32), None)),
    "packed float32, float64 module": ({}, lambda: (packed(3, 2, dtype=F32), None)),
    "packed float32 with hx, float64 module": ({}, lambda: (packed(3, 2, dtype=F32), states())),
    "input float16, float32 module": (dict(dtype=F32), lambda: (randn(5, 2, INPUT, dtype=torch.float16), None)),
    "hx float32": ({}, lambda: (randn(5, 2, INPUT), states(dtype=F32))),
    "h0 float64, float32 module": (dict(dtype=F32), lambda: (randn(5, 2, INPUT, dtype=F32), (randn(1, 2, HIDDEN), randn(1, 2, HIDDEN, dtype=F32)))),
    "c0 float64, float32 module": (dict(dtype=F32), lambda: (randn(5, 2, INPUT, dtype=F32), (randn(1, 2, HIDDEN, dtype=F32), randn(1, 2, HIDDEN)))),
    "packed, h0 float32": ({}, lambda: (packed(3, 2), (randn(1, 2, HIDDEN, dtype=F32), randn(1, 2, HIDDEN)))),
    "input on meta": ({}, lambda: (meta(5, 2, INPUT), None)),
    "h0 on meta": ({}, lambda: (randn(5, 2, INPUT), (meta(1, 2, HIDDEN), randn(1, 2, HIDDEN)))),
    "c0 on meta": ({}, lambda: (randn(5, 2, INPUT), (randn(1, 2, HIDDEN), meta(1, 2, HIDDEN)))),
    "packed, c0 on meta": ({}, lambda: (packed(3, 2), (randn(1, 2, HIDDEN), meta(1, 2, HIDDEN)))),
    "packed data on meta": ({}, lambda: (PackedSequence(meta(5, INPUT), torch.tensor([3, 2])), None)),
    # Integer and other non-float input.
    "int64 input": ({}, lambda: (torch.ones(5, 2, INPUT, dtype=torch.int64), None)),
    "bool input": ({}, lambda: (torch.ones(5, 2, INPUT, dtype=torch.bool), None)),
    "complex input": ({}, lambda: (torch.ones(5, 2, INPUT, dtype=torch.complex128), None)),
    "packed int64 input": ({}, lambda: (PackedSequence(torch.ones(5, INPUT, dtype=torch.int64), torch.tensor([3, 2])), None)),
    "int64 hx": ({}, lambda: (randn(5, 2, INPUT), tuple(torch.ones(1, 2, HIDDEN, dtype=torch.int64) for _ in "hc"))),
    "input None": ({}, lambda: (None, None)),
    # Gradients wanted of part of the state only.
    "h0 requires grad, c0 not": ({}, lambda: (randn(5, 2, INPUT), (randn(1, 2, HIDDEN, grad=True), randn(1, 2, HIDDEN)))),
    "c0 requires grad, h0 not": ({}, lambda: (randn(5, 2, INPUT), (randn(1, 2, HIDDEN), randn(1, 2, HIDDEN, grad=True)))),
    "h0 only, 2 layers bidirectional proj": (
        dict(num_layers=2, bidirectional=True, proj_size=2),
        lambda: (randn(5, 2, INPUT), (randn(4, 2, 2, grad=True), randn(4, 2, HIDDEN))),
    ),
    "h0 only, unbatched": ({}, lambda: (randn(5, INPUT), (randn(1, HIDDEN, grad=True), randn(1, HIDDEN)))),
    "h0 only, packed unsorted": ({}, lambda: (packed(2, 4, 3, enforce_sorted=False),
                                              (randn(1, 3, HIDDEN, grad=True), randn(1, 3, HIDDEN)))),
    "h0 only, float32": (dict(dtype=F32), lambda: (randn(5, 2, INPUT, dtype=F32), (randn(1, 2, HIDDEN, dtype=F32, grad=True),
                                                                                   randn(1, 2, HIDDEN, dtype=F32)))),
    # The structure of hx.
    "hx a list": ({}, lambda: (randn(5, 2, INPUT), list(states(grad=True)))),
    "hx empty": ({}, lambda: (randn(5, 2, INPUT), ())),
    "hx (h0, None)": ({}, lambda: (randn(5, 2, INPUT), (randn(1, 2, HIDDEN), None))),
    "hx of nested lists": ({}, lambda: (randn(5, 2, INPUT), ([[[0.0] * HIDDEN] * 2], [[[0.0] * HIDDEN] * 2]))),
    "hx a stacked tensor": ({}, lambda: (randn(5, 2, INPUT), randn(2, 1, 2, HIDDEN))),
    "packed, hx a stacked tensor": ({}, lambda: (packed(3, 2), randn(2, 1, 2, HIDDEN))),
    "packed, one state": ({}, lambda: (packed(3, 2), (randn(1, 2, HIDDEN),))),
    "packed, hx (h0, str)": ({}, lambda: (packed(3, 2), (randn(1, 2, HIDDEN), "c0"))),
    "packed, 2-D states": ({}, lambda: (packed(3, 2), (randn(2, HIDDEN), randn(2, HIDDEN)))),
    "packed, 1-D states": ({}, lambda: (packed(3, 2), (randn(HIDDEN), randn(HIDDEN)))),
    "packed unsorted, 2-D states": ({}, lambda: (packed(2, 3, enforce_sorted=False), (randn(2, HIDDEN), randn(2, HIDDEN)))),
    "packed, c0 2-D": ({}, lambda: (packed(3, 2), (randn(1, 2, HIDDEN), randn(2, HIDDEN)))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_like_nn_lstm(name):
    config, build = CASES[name]
    ref, ours, dtype = _twins(config)
    assert_same_outcome(ref, ours, *build(), dtype)


@pytest.mark.parametrize("build, message", [
    (lambda: (randn(0, 2, INPUT), None), "Expected sequence length to be larger than 0 in RNN"),
    (lambda: (randn(5, 2, INPUT), (*states(), randn(1, 2, HIDDEN))), "lstm expects two hidden states"),
], ids=["length 0", "three states"])
def test_issue_messages_are_nn_lstm_s(build, message):
    ref, ours, _ = _twins({})
    input, hx = build()
    assert str(raised(lambda: ref(input, hx))) == message
    with pytest.raises(RuntimeError, match=message):
        ours(input, hx)


# Where nn.LSTM computes with bad input by an accident of one code path (and raises on the
# others), we raise on all of them. name -> (config, builder, our exception type).
STRICTER = {
    # nn.LSTM's unbatched and unsorted packed paths rebuild hx from hx[0] and hx[1] and drop the
    # rest; its batched and sorted packed paths refuse anything but a tuple of two tensors.
    "three states, unbatched": ({}, lambda: (randn(5, INPUT), (randn(1, HIDDEN),) * 3), RuntimeError),
    "three states, packed unsorted": (
        {}, lambda: (packed(2, 3, enforce_sorted=False), (*states(), randn(1, 2, HIDDEN))), RuntimeError,
    ),
    "hx a stacked tensor, unbatched": ({}, lambda: (randn(5, INPUT), randn(2, 1, HIDDEN)), TypeError),
    "hx a stacked tensor, packed unsorted": (
        {}, lambda: (packed(2, 3, enforce_sorted=False), randn(2, 1, 2, HIDDEN)), TypeError,
    ),
    # nn.LSTM raises IndexError here (it reads hx[1]) but RuntimeError for sorted packed input.
    "one state, packed unsorted": (
        {}, lambda: (packed(2, 3, enforce_sorted=False), (randn(1, 2, HIDDEN),)), RuntimeError,
    ),
    # nn.LSTM's float64 CPU path promotes a narrower c0 (its float32 oneDNN path raises
    # RuntimeError; without oneDNN a float64 c0 makes float64 outputs at length 1 and raises at
    # length 2): we want c0 in the input's dtype, as h0.
    "c0 float32, float64 module": ({}, lambda: (randn(5, 2, INPUT), (randn(1, 2, HIDDEN), randn(1, 2, HIDDEN, dtype=F32))), RuntimeError),
    "c0 int64, float64 module": (
        {}, lambda: (randn(5, 2, INPUT), (randn(1, 2, HIDDEN), torch.ones(1, 2, HIDDEN, dtype=torch.int64))), RuntimeError,
    ),
    "packed, c0 float32": ({}, lambda: (packed(3, 2), (randn(1, 2, HIDDEN), randn(1, 2, HIDDEN, dtype=F32))), RuntimeError),
    # A hand-made PackedSequence with more rows than its batch sizes count.
    "packed data longer than its batch sizes": (
        {}, lambda: (PackedSequence(randn(6, INPUT), torch.tensor([3, 2])), None), RuntimeError,
    ),
}


@pytest.mark.parametrize("name", list(STRICTER))
def test_stricter_than_nn_lstm(name):
    config, build, error = STRICTER[name]
    ref, ours, _ = _twins(config)
    input, hx = build()
    before = snapshot((ours.state_dict(), input, hx))
    expected, actual = outcome(outputs_and_grads, ref, input, hx), outcome(outputs_and_grads, ours, input, hx)
    assert type(actual) is error, f"{actual!r}"
    assert type(expected) is not error, f"nn.LSTM raises {expected!r} too now: move the case to CASES"
    assert unchanged(before, (ours.state_dict(), input, hx))


def test_packed_4d_states_raise():
    """nn.LSTM (torch 2.13) crashes the process on these (no check before its kernel), so ours
    is checked alone, with the IndexError nn.LSTM raises for packed states of other dims."""
    ours = torch_lstm_ext.LSTM(INPUT, HIDDEN, dtype=F64)
    with pytest.raises(IndexError, match="should be 3-D"):
        ours(packed(3, 2), (randn(1, 1, 2, HIDDEN), randn(1, 1, 2, HIDDEN)))


VARIANTS = [dict(peephole=True), dict(layer_norm=True), dict(zoneout_cell=0.3, zoneout_hidden=0.2),
            dict(weight_dropout=0.5), dict(cell_clip=1.0, grad_clip=0.5), dict(checkpoint=True, layer_norm=True)]


@pytest.mark.parametrize("variants", VARIANTS, ids=lambda v: ",".join(v))
def test_batch_0_with_variants(variants):
    """No nn.LSTM twin: nn.LSTM's parameters get its (zero) gradients, the variants' zeros."""
    config = dict(input_size=INPUT, hidden_size=HIDDEN, num_layers=2, bidirectional=True, proj_size=2)
    ref = nn.LSTM(**config, dtype=F64)
    ours = torch_lstm_ext.LSTM(**config, dtype=F64, **variants)
    ours.load_state_dict(ref.state_dict(), strict=False)
    x = randn(5, 0, INPUT, grad=True)
    expected, actual = outputs_and_grads(ref, x), outputs_and_grads(ours, x)
    for a, b in zip(actual[:3], expected[:3]):
        assert a.shape == b.shape
    for name, grad in actual[3].items():
        assert_close_nan(grad, expected[3].get(name, torch.zeros_like(grad)), F64, name)


@pytest.mark.parametrize("config", [dict(proj_size=2), dict(num_layers=2, bidirectional=True)], ids=["proj", "bidir"])
def test_batch_0_double_backward_like_nn_lstm(config):
    ref, ours, _ = _twins(config)
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


@pytest.mark.interpreter
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1: make test-interpreter")
@pytest.mark.parametrize("hidden, kernel", [(16, "persistent"), (64, "step")])
def test_batch_0_on_the_triton_backend(hidden, kernel, monkeypatch):
    from torch_lstm_ext.triton_kernels.dispatch import choose_kernel

    assert choose_kernel(hidden, hidden, False, F32) == kernel
    monkeypatch.setenv(BACKEND_ENV, "triton")
    ref, ours, _ = _twins(dict(hidden_size=hidden, bidirectional=True, dtype=F32))
    assert_same_outcome(ref, ours, randn(4, 0, INPUT, dtype=F32, grad=True), None, F32)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batch_0_on_cuda():
    """Ours on the GPU (Triton) against nn.LSTM on the CPU: empty outputs, zero gradients."""
    ref, ours, _ = _twins(dict(bidirectional=True, proj_size=2, dtype=F32))
    ours.cuda()
    x = randn(4, 0, INPUT, dtype=F32, grad=True)
    expected = outputs_and_grads(ref, x)
    actual = outputs_and_grads(ours, x.detach().cuda().requires_grad_())
    for a, b in zip(actual[:3], expected[:3]):
        assert a.shape == b.shape and a.is_cuda
    for name, grad in expected[3].items():
        assert_close_nan(actual[3][name].cpu(), grad, F32, name)


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


# LSTMCell against nn.LSTMCell.

def cell_outputs_and_grads(cell, input, hx, seed: int = 0):
    """(h', c', {name: grad}) of a fixed random weighting of h' and c', for every parameter and
    every tensor of input / hx that requires grad."""
    h, c = cell(input, hx)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (h, c))
    leaves = {f"param.{name}": p for name, p in cell.named_parameters()}
    for name, t in [("input", input), *zip(("h", "c"), hx or ())]:
        if t.requires_grad:
            leaves[name] = t
    return h, c, dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def _twin_cells(config: dict):
    config = {"input_size": INPUT, "hidden_size": HIDDEN, "dtype": F64, **config}
    ref = nn.LSTMCell(**config)
    ours = torch_lstm_ext.LSTMCell(**config)
    ours.load_state_dict(ref.state_dict())
    return ref, ours, config["dtype"]


def cell_states(batch=2, dtype=F64, grad=False):
    return randn(batch, HIDDEN, dtype=dtype, grad=grad), randn(batch, HIDDEN, dtype=dtype, grad=grad)


# name -> (LSTMCell config, builder of (input, hx)). Bad sizes and dims: test_validation.py.
CELL_CASES = {
    "batch 0": ({}, lambda: (randn(0, INPUT, grad=True), None)),
    "batch 0, hx": ({}, lambda: (randn(0, INPUT, grad=True), cell_states(0, grad=True))),
    "feature size 0": ({}, lambda: (randn(2, 0), None)),
    "feature size 0, unbatched": ({}, lambda: (randn(0), None)),
    "input_size=0": (dict(input_size=0), lambda: (randn(2, 0, grad=True), None)),
    "hidden_size=0": (dict(hidden_size=0), lambda: (randn(2, INPUT, grad=True), None)),
    "bias=None": (dict(bias=None), lambda: (randn(2, INPUT, grad=True), None)),
    "NaN in input": ({}, lambda: (with_nan(2, INPUT), None)),
    "Inf input": ({}, lambda: (full(2, INPUT, value=INF, grad=True), None)),
    "-Inf input, float32": (dict(dtype=F32), lambda: (full(2, INPUT, value=-INF, dtype=F32, grad=True), None)),
    "NaN h": ({}, lambda: (randn(2, INPUT), (full(2, HIDDEN, value=NAN, grad=True), randn(2, HIDDEN)))),
    "Inf c": ({}, lambda: (randn(2, INPUT), (randn(2, HIDDEN), full(2, HIDDEN, value=INF, grad=True)))),
    "1e30 input": ({}, lambda: (randn(2, INPUT, scale=1e30, grad=True), None)),
    "1e30 input, float32": (dict(dtype=F32), lambda: (randn(2, INPUT, dtype=F32, scale=1e30, grad=True), None)),
    "1e30 c": ({}, lambda: (randn(2, INPUT), (randn(2, HIDDEN), randn(2, HIDDEN, scale=1e30, grad=True)))),
    "transposed input": ({}, lambda: (randn(INPUT, 2, grad=True).t(), None)),
    "expanded input": ({}, lambda: (randn(1, INPUT, grad=True).expand(2, INPUT), None)),
    "expanded hx": ({}, lambda: (randn(2, INPUT), (randn(1, HIDDEN, grad=True).expand(2, HIDDEN),
                                                 randn(HIDDEN, grad=True).expand(2, HIDDEN)))),
    "sliced hx": ({}, lambda: (randn(2, INPUT), (randn(2, 2 * HIDDEN, grad=True)[:, ::2], randn(4, HIDDEN, grad=True)[::2]))),
    "input float32, float64 cell": ({}, lambda: (randn(2, INPUT, dtype=F32), None)),
    "h float32, float64 cell": ({}, lambda: (randn(2, INPUT), (randn(2, HIDDEN, dtype=F32), randn(2, HIDDEN)))),
    "int64 input": ({}, lambda: (torch.ones(2, INPUT, dtype=torch.int64), None)),
    "bool input": ({}, lambda: (torch.ones(2, INPUT, dtype=torch.bool), None)),
    "int64 hx": ({}, lambda: (randn(2, INPUT), tuple(torch.ones(2, HIDDEN, dtype=torch.int64) for _ in "hc"))),
    "input on meta": ({}, lambda: (meta(2, INPUT), None)),
    "h on meta": ({}, lambda: (randn(2, INPUT), (meta(2, HIDDEN), randn(2, HIDDEN)))),
    "c on meta": ({}, lambda: (randn(2, INPUT), (randn(2, HIDDEN), meta(2, HIDDEN)))),
    "h requires grad, c not": ({}, lambda: (randn(2, INPUT), (randn(2, HIDDEN, grad=True), randn(2, HIDDEN)))),
    "c requires grad, h not": ({}, lambda: (randn(2, INPUT), (randn(2, HIDDEN), randn(2, HIDDEN, grad=True)))),
    "h only, unbatched": ({}, lambda: (randn(INPUT), (randn(HIDDEN, grad=True), randn(HIDDEN)))),
    "three states": ({}, lambda: (randn(2, INPUT), (*cell_states(), randn(2, HIDDEN)))),
    "one state": ({}, lambda: (randn(2, INPUT), (randn(2, HIDDEN),))),
    "one state, unbatched": ({}, lambda: (randn(INPUT), (randn(HIDDEN),))),
    "hx empty": ({}, lambda: (randn(2, INPUT), ())),
    "hx a stacked tensor": ({}, lambda: (randn(2, INPUT), randn(2, 2, HIDDEN))),
    "hx a 2-D tensor": ({}, lambda: (randn(2, INPUT), randn(2, HIDDEN))),
    "hx a list": ({}, lambda: (randn(2, INPUT), list(cell_states(grad=True)))),
    "hx (h, None)": ({}, lambda: (randn(2, INPUT), (randn(2, HIDDEN), None))),
    "input None": ({}, lambda: (None, None)),
}


@pytest.mark.parametrize("name", list(CELL_CASES))
def test_cell_like_nn_lstmcell(name):
    config, build = CELL_CASES[name]
    ref, ours, dtype = _twin_cells(config)
    assert_same_outcome(ref, ours, *build(), dtype, run=cell_outputs_and_grads)


# As STRICTER, for the cell. name -> (config, builder, our exception type).
CELL_STRICTER = {
    # nn.LSTMCell's unbatched path rebuilds hx from hx[0] and hx[1]; its batched path refuses
    # anything but a tuple of two tensors.
    "three states, unbatched": ({}, lambda: (randn(INPUT), (randn(HIDDEN),) * 3), RuntimeError),
    "hx a stacked tensor, unbatched": ({}, lambda: (randn(INPUT), randn(2, HIDDEN)), TypeError),
    # nn.LSTMCell's kernel promotes a c of another dtype: a float64 c makes a float32 cell
    # return float64 states.
    "c float32, float64 cell": ({}, lambda: (randn(2, INPUT), (randn(2, HIDDEN), randn(2, HIDDEN, dtype=F32))), RuntimeError),
    "c float64, float32 cell": (
        dict(dtype=F32), lambda: (randn(2, INPUT, dtype=F32), (randn(2, HIDDEN, dtype=F32), randn(2, HIDDEN))), RuntimeError,
    ),
}


@pytest.mark.parametrize("name", list(CELL_STRICTER))
def test_cell_stricter_than_nn_lstmcell(name):
    config, build, error = CELL_STRICTER[name]
    ref, ours, _ = _twin_cells(config)
    input, hx = build()
    before = snapshot((ours.state_dict(), input, hx))
    expected = outcome(cell_outputs_and_grads, ref, input, hx)
    actual = outcome(cell_outputs_and_grads, ours, input, hx)
    assert type(actual) is error, f"{actual!r}"
    assert type(expected) is not error, f"nn.LSTMCell raises {expected!r} too now: move the case to CELL_CASES"
    assert unchanged(before, (ours.state_dict(), input, hx))
