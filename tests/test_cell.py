"""LSTMCell vs torch.nn.LSTMCell: batched, unbatched, with and without hx, gradients."""

from __future__ import annotations

import pytest
import torch
from support import assert_close
from torch import nn

import torch_lstm_ext


def _twin_cells(bias: bool, dtype=torch.float64):
    ref = nn.LSTMCell(5, 7, bias=bias, dtype=dtype)
    ours = torch_lstm_ext.LSTMCell(5, 7, bias=bias, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cell_matches_nn_lstmcell(bias, batched, with_hx, dtype):
    ref, ours = _twin_cells(bias, dtype)
    lead = (3,) if batched else ()
    x = torch.randn(*lead, 5, dtype=dtype, requires_grad=True)
    hx = (torch.randn(*lead, 7, dtype=dtype, requires_grad=True), torch.randn(*lead, 7, dtype=dtype, requires_grad=True)) if with_hx else None
    results = []
    for cell in (ref, ours):
        h, c = cell(x, hx)
        loss = (h * torch.arange(h.numel(), dtype=dtype).reshape(h.shape)).sum() + c.pow(2).sum()
        leaves = [x, *cell.parameters(), *(hx or ())]
        results.append((h, c, *torch.autograd.grad(loss, leaves)))
    for expected, actual in zip(*results):
        assert_close(actual, expected, dtype)


def test_cell_parameters_init_and_repr_match():
    torch.manual_seed(3)
    ref = nn.LSTMCell(4, 6, bias=False)
    torch.manual_seed(3)
    ours = torch_lstm_ext.LSTMCell(4, 6, bias=False)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))
    assert ours.bias_ih is None and ours.bias_hh is None
    assert repr(ours) == repr(ref)
