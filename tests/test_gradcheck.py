"""First- and second-order gradients in float64: gradcheck / gradgradcheck."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.nn.utils.rnn import pack_sequence

import torch_lstm_ext
from torch_lstm_ext import LSTMFunction
from torch_lstm_ext.schedule import time_blocks

DT = torch.float64


def _function_inputs(proj: bool, packed: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    H, P, B = 3, (2 if proj else 3), 3

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=DT).requires_grad_()

    if packed:
        batch_sizes = torch.tensor([3, 2, 2, 1])
        gates_x = randn(int(batch_sizes.sum()), 4 * H)
    else:
        batch_sizes = None
        gates_x = randn(4, B, 4 * H)
    w_hr = randn(P, H) if proj else None
    return gates_x, randn(4 * H, P), w_hr, randn(B, P), randn(B, H), batch_sizes


@pytest.mark.parametrize("proj", [False, True], ids=["plain", "proj"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_function_gradcheck_and_gradgradcheck(proj, packed, reverse):
    gates_x, w_hh, w_hr, h0, c0, batch_sizes = _function_inputs(proj, packed)
    tensors = (gates_x, w_hh, h0, c0) + ((w_hr,) if proj else ())

    def fn(gates_x, w_hh, h0, c0, *maybe_w_hr):
        names = ("w_hh", "w_hr")[: 1 + len(maybe_w_hr)]
        return LSTMFunction.apply(gates_x, h0, c0, names, batch_sizes, reverse, None, None, w_hh, *maybe_w_hr)[:3]

    assert gradcheck(fn, tensors)
    assert gradgradcheck(fn, tensors)


@pytest.mark.parametrize(
    "config",
    [dict(), dict(num_layers=2, bidirectional=True), dict(proj_size=2, bidirectional=True), dict(bias=False, batch_first=True)],
    ids=["plain", "2layer-bidir", "proj-bidir", "nobias-batchfirst"],
)
def test_module_gradcheck_and_gradgradcheck(config):
    torch.manual_seed(0)
    lstm = torch_lstm_ext.LSTM(3, 4, dtype=DT, **config)
    params = list(lstm.parameters())
    names = [n for n, _ in lstm.named_parameters()]
    x = torch.randn(3, 2, 3, dtype=DT, requires_grad=True)
    out = config.get("proj_size") or 4
    layers = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    h0 = torch.randn(layers, 2 if not config.get("batch_first") else 3, out, dtype=DT, requires_grad=True)
    c0 = torch.randn(layers, h0.shape[1], 4, dtype=DT, requires_grad=True)

    def fn(x, h0, c0, *weights):
        output, (h_n, c_n) = torch.func.functional_call(lstm, dict(zip(names, weights)), (x, (h0, c0)))
        return output, h_n, c_n

    assert gradcheck(fn, (x, h0, c0, *params))
    assert gradgradcheck(fn, (x, h0, c0, *params))


def test_packed_module_gradcheck():
    torch.manual_seed(0)
    lstm = torch_lstm_ext.LSTM(2, 3, bidirectional=True, dtype=DT)
    seqs = [torch.randn(n, 2, dtype=DT, requires_grad=True) for n in (2, 4, 1)]

    def fn(*seqs):
        output, (h_n, c_n) = lstm(pack_sequence(seqs, enforce_sorted=False))
        return output.data, h_n, c_n

    assert gradcheck(fn, seqs)
    assert gradgradcheck(fn, seqs)


def test_double_backward_matches_nn_lstm():
    """A gradient penalty (grad of a grad) equals nn.LSTM's on the CPU."""
    ref = torch.nn.LSTM(3, 5, num_layers=2, dtype=DT)
    ours = torch_lstm_ext.LSTM(3, 5, num_layers=2, dtype=DT)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 2, 3, dtype=DT, requires_grad=True)
    results = []
    for module in (ref, ours):
        out, _ = module(x)
        (gx,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        penalty = gx.pow(2).sum()
        results.append(torch.autograd.grad(penalty, [x, *module.parameters()]))
    for expected, actual in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_create_graph_gradients_equal_the_kernel_gradients_packed_bidirectional():
    """create_graph=True switches the backward to the torch-ops recomputation: its first-order
    gradients must equal the kernels' (gradgradcheck alone accepts any self-consistent one)."""
    torch.manual_seed(0)
    lstm = torch_lstm_ext.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, dtype=DT)
    seqs = [torch.randn(n, 3, dtype=DT, requires_grad=True) for n in (4, 1, 6, 3)]
    results = []
    for create_graph in (False, True):
        out, (h_n, c_n) = lstm(pack_sequence(seqs, enforce_sorted=False))
        loss = out.data.pow(2).sum() + h_n.sum() + c_n.pow(2).sum()
        results.append(torch.autograd.grad(loss, [*seqs, *lstm.parameters()], create_graph=create_graph))
    for kernel, recomputed in zip(*results):
        torch.testing.assert_close(recomputed.detach(), kernel, rtol=1e-10, atol=1e-10)


def test_multi_block_checkpointed_module_gradcheck(small_blocks):
    """checkpoint=True, long enough to run in several blocks (schedule.time_blocks), packed and
    bidirectional, so block boundaries fall mid-sequence in both directions."""
    torch.manual_seed(0)
    lstm = torch_lstm_ext.LSTM(2, 2, bidirectional=True, proj_size=1, checkpoint=True, dtype=DT)
    seqs = [torch.randn(n, 2, dtype=DT, requires_grad=True) for n in (40, 25)]
    names = [n for n, _ in lstm.named_parameters()]
    sizes = pack_sequence([s.detach() for s in seqs]).batch_sizes
    assert len(time_blocks(sizes, int(sizes.sum()), 2, False)) >= 2

    def fn(*inputs):
        weights, seqs = inputs[: len(names)], inputs[len(names):]
        output, (h_n, c_n) = torch.func.functional_call(
            lstm, dict(zip(names, weights)), (pack_sequence(seqs, enforce_sorted=False),))
        return output.data, h_n, c_n

    assert gradcheck(fn, (*[p.detach().clone().requires_grad_() for p in lstm.parameters()], *seqs))
