"""torch_lstm_ext.init on nn.LSTM, nn.LSTMCell and ours."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torch_lstm_ext
from torch_lstm_ext.init import forget_bias_, xavier_orthogonal_

MODULES = {
    "nn.LSTM": lambda: nn.LSTM(3, 4, num_layers=2, bidirectional=True),
    "ours": lambda: torch_lstm_ext.LSTM(3, 4, num_layers=2, bidirectional=True, peephole=True),
    "nn.LSTMCell": lambda: nn.LSTMCell(3, 4),
    "ours-proj": lambda: torch_lstm_ext.LSTM(5, 6, proj_size=2),
}


@pytest.mark.parametrize("make", MODULES.values(), ids=MODULES.keys())
def test_forget_bias_sets_the_sum_and_touches_nothing_else(make):
    module = make()
    before = {n: p.clone() for n, p in module.named_parameters()}
    assert forget_bias_(module, 2.5) is module
    params = dict(module.named_parameters())
    for name, p in params.items():
        if name.startswith("bias_ih"):
            b_hh = params["bias_hh" + name[len("bias_ih"):]]
            H = p.shape[0] // 4
            torch.testing.assert_close(p[H : 2 * H] + b_hh[H : 2 * H], torch.full((H,), 2.5))
            for other in (slice(0, H), slice(2 * H, 4 * H)):
                assert torch.equal(p[other], before[name][other])
                assert torch.equal(b_hh[other], before["bias_hh" + name[len("bias_ih"):]][other])
        elif not name.startswith("bias_hh"):
            assert torch.equal(p, before[name])


@pytest.mark.parametrize("make", MODULES.values(), ids=MODULES.keys())
def test_xavier_orthogonal(make):
    torch.manual_seed(0)
    module = make()
    before = {n: p.clone() for n, p in module.named_parameters()}
    xavier_orthogonal_(module, forget_bias=1.0)
    for name, p in module.named_parameters():
        if name.startswith("weight_hh"):
            for block in p.chunk(4):
                rows, cols = block.shape
                gram = block @ block.T if rows <= cols else block.T @ block
                torch.testing.assert_close(gram, torch.eye(min(rows, cols)), atol=1e-5, rtol=0)
        elif name.startswith("weight_ih"):
            for block in p.chunk(4):
                fan_out, fan_in = block.shape
                bound = (6 / (fan_in + fan_out)) ** 0.5
                assert block.abs().max() <= bound
                assert block.std() > bound / 4  # actually redrawn, not left near zero
        elif name.startswith("bias_ih"):
            H = p.shape[0] // 4
            expected = torch.zeros_like(p)
            expected[H : 2 * H] = 1.0
            assert torch.equal(p, expected)
        elif name.startswith("bias_hh"):
            assert torch.equal(p, torch.zeros_like(p))
        else:  # projection, peephole: untouched
            assert torch.equal(p, before[name])


def test_forget_bias_without_biases_raises():
    with pytest.raises(ValueError, match="bias=False"):
        forget_bias_(nn.LSTM(3, 4, bias=False), 1.0)
    xavier_orthogonal_(nn.LSTM(3, 4, bias=False))  # no biases to set: fine
