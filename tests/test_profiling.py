"""The profiler's stage ranges cover all of our own work: every matrix product of a training
step (forward and backward, the input projection's backward included) runs inside one."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import torch_lstm_ext

MATMULS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::matmul")


def _ranges_above(event) -> list[str]:
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    return names


@pytest.mark.parametrize("module", [
    lambda: torch_lstm_ext.LSTM(3, 4, num_layers=2, bidirectional=True),
    lambda: torch_lstm_ext.LSTM(3, 4, proj_size=2, layer_norm=True),
    lambda: torch_lstm_ext.LSTM(3, 4, checkpoint=True),
    lambda: torch_lstm_ext.LSTMCell(3, 4),
], ids=["2layer-bidir", "proj-layernorm", "checkpoint", "cell"])
def test_every_matmul_of_a_training_step_is_inside_a_stage(module):
    torch.manual_seed(0)
    model = module()
    x = torch.randn(5, 2, 3, requires_grad=True)
    if isinstance(model, torch_lstm_ext.LSTMCell):
        x = x[0].detach().requires_grad_()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        out.pow(2).sum().backward()
    matmuls = [e for e in prof.events() if e.name in MATMULS]
    assert matmuls
    outside = [e.name for e in matmuls if not any(n.startswith("lstm_ext::") for n in _ranges_above(e))]
    assert not outside, outside
    names = {e.name for e in prof.events()}
    assert "lstm_ext::input_projection_backward" in names
