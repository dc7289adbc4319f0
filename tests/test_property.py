"""Property-based: random configurations and shapes against torch.nn.LSTM in float64."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support import assert_same_results, outputs_and_grads, twin_lstms
from torch.nn.utils.rnn import pack_sequence


@st.composite
def lstm_cases(draw):
    hidden = draw(st.integers(1, 9))
    config = dict(
        input_size=draw(st.integers(1, 6)),
        hidden_size=hidden,
        num_layers=draw(st.integers(1, 3)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        proj_size=draw(st.integers(0, hidden - 1)),
    )
    lengths = draw(st.lists(st.integers(1, 7), min_size=1, max_size=5))
    kind = draw(st.sampled_from(["batched", "packed", "unbatched"]))
    return config, lengths, kind, draw(st.booleans()), draw(st.integers(0, 2**31 - 1))


@settings(max_examples=60, deadline=None, derandomize=True)  # same examples every run: CI stays reproducible
@given(lstm_cases())
def test_random_configurations_match_nn_lstm(case):
    config, lengths, kind, with_hx, seed = case
    ref, ours = twin_lstms(torch.float64, **config)
    gen = torch.Generator().manual_seed(seed)
    I, B = config["input_size"], len(lengths)
    if kind == "packed":
        x = pack_sequence([torch.randn(n, I, generator=gen, dtype=torch.float64) for n in lengths], enforce_sorted=False)
        x.data.requires_grad_()
        state_lead = (B,)
    elif kind == "unbatched":
        x = torch.randn(lengths[0], I, generator=gen, dtype=torch.float64, requires_grad=True)
        state_lead = ()
    else:
        shape = (B, lengths[0], I) if config["batch_first"] else (lengths[0], B, I)
        x = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
        state_lead = (B,)
    hx = None
    if with_hx:
        layers = config["num_layers"] * (2 if config["bidirectional"] else 1)
        out = config["proj_size"] or config["hidden_size"]
        hx = tuple(
            torch.randn(layers, *state_lead, size, generator=gen, dtype=torch.float64, requires_grad=True)
            for size in (out, config["hidden_size"])
        )
    assert_same_results(outputs_and_grads(ref, x, hx), outputs_and_grads(ours, x, hx), torch.float64)
