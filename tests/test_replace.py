"""replace_lstm / LSTM.from_torch: in place, same Parameters, no RNG draws, same training."""

from __future__ import annotations

import copy

import torch
from support import assert_close
from torch import nn

import torch_lstm_ext


class Tagger(nn.Module):
    """Nested LSTMs: a shared encoder used twice, a decoder inside a ModuleList, a cell."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.encoder = nn.LSTM(6, 8, num_layers=2, dropout=0.2, bidirectional=True, batch_first=True)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LSTM(16, 5, proj_size=3, batch_first=True))])
        self.alias = self.encoder
        self.cell = nn.LSTMCell(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        y, _ = self.encoder(torch.tanh(self.embed(x)))
        y, _ = self.blocks[0](y)
        h, _ = self.cell(y[:, -1])
        return self.head(h)


def _loss(model, x, target):
    return nn.functional.mse_loss(model(x), target)


def test_replace_in_place_keeps_parameters_and_rng():
    torch.manual_seed(0)
    model = Tagger()
    params_before = dict(model.named_parameters())
    keys_before = list(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.eval()
    rng_before = torch.get_rng_state()

    returned = torch_lstm_ext.replace_lstm(model)

    assert returned is model
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert isinstance(model.encoder, torch_lstm_ext.LSTM)
    assert isinstance(model.blocks[0][0], torch_lstm_ext.LSTM)
    assert model.alias is model.encoder  # sharing kept
    assert type(model.cell) is nn.LSTMCell  # cells only when asked
    assert not model.encoder.training
    assert list(model.state_dict()) == keys_before
    for name, p in model.named_parameters():
        assert p is params_before[name]
    assert optimizer.param_groups[0]["params"][0] is model.embed.weight


def test_replaced_model_computes_and_trains_like_the_original():
    torch.manual_seed(0)
    original = Tagger().double()
    replaced = torch_lstm_ext.replace_lstm(copy.deepcopy(original), cells=True)
    assert isinstance(replaced.cell, torch_lstm_ext.LSTMCell)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    target = torch.randn(3, 2, dtype=torch.float64)
    losses = []
    for model in (original, replaced):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        torch.manual_seed(42)  # same dropout masks
        loss = _loss(model, x, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        torch.manual_seed(43)
        losses.append((loss, _loss(model, x, target)))
    for a, b in zip(*losses):
        assert_close(b, a)
    for (name, a), (_, b) in zip(original.named_parameters(), replaced.named_parameters()):
        assert_close(b, a, msg=name)


def test_replace_keeps_device_dtype_and_mode():
    model = nn.Sequential(nn.LSTM(3, 4)).to(torch.float64).train()
    torch_lstm_ext.replace_lstm(model)
    assert model[0].weight_ih_l0.dtype == torch.float64
    assert model[0].training


def test_replace_on_a_bare_lstm_and_from_torch():
    lstm = nn.LSTM(3, 4, num_layers=2, proj_size=2, bidirectional=True).double()
    converted = torch_lstm_ext.replace_lstm(lstm)
    assert isinstance(converted, torch_lstm_ext.LSTM)
    via_classmethod = torch_lstm_ext.LSTM.from_torch(lstm)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    for module in (converted, via_classmethod):
        assert all(a is b for a, b in zip(module.parameters(), lstm.parameters()))
        assert_close(module(x)[0], lstm(x)[0])


def test_subclasses_of_nn_lstm_are_left_alone():
    class Custom(nn.LSTM):
        def forward(self, input, hx=None):
            return super().forward(input * 2, hx)

    model = nn.Sequential(Custom(3, 4))
    torch_lstm_ext.replace_lstm(model)
    assert type(model[0]) is Custom
