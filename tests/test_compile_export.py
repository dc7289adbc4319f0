"""torch.library.opcheck on the ops, torch.compile(fullgraph=True), torch.export round trip."""

from __future__ import annotations

import io

import pytest
import torch

import torch_lstm_ext
from torch_lstm_ext.dtypes import compute_dtype
from torch_lstm_ext.params import RecurrenceParams


def _op_args(dtype, proj: bool, packed: bool, reverse: bool):
    gen = torch.Generator().manual_seed(0)
    H, P, B = 4, (3 if proj else 4), 3

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    batch_sizes = torch.tensor([3, 3, 2, 1]) if packed else None
    gates_x = randn(9, 4 * H) if packed else randn(4, B, 4 * H)
    p = RecurrenceParams(randn(4 * H, P), randn(P, H) if proj else None)
    return (gates_x, randn(B, P), randn(B, H), *p.op_args(), batch_sizes, reverse)


CASES = [(False, False, False), (True, False, True), (False, True, False), (True, True, True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("proj,packed,reverse", CASES)
def test_opcheck_both_ops(dtype, proj, packed, reverse):
    fwd_args = _op_args(dtype, proj, packed, reverse)
    torch.library.opcheck(torch.ops.torch_lstm_ext.lstm_fwd, fwd_args)
    y, h_n, c_n, gates, cells = torch.ops.torch_lstm_ext.lstm_fwd(*fwd_args)
    assert gates.dtype == cells.dtype == compute_dtype(dtype)
    gates_x, h0, c0, params, names, batch_sizes, _ = fwd_args
    bwd_args = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), h0, c0, params, names,
                batch_sizes, reverse, y, gates, cells)
    torch.library.opcheck(torch.ops.torch_lstm_ext.lstm_bwd, bwd_args)


def _run(module, x, hx):
    out, (h_n, c_n) = module(x, hx)
    loss = out.pow(2).sum() + h_n.sum() + c_n.sum()
    grads = torch.autograd.grad(loss, [x, *hx, *module.parameters()])
    return (out, h_n, c_n), grads


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize(
    "config",
    [dict(num_layers=2, dropout=0.0), dict(bidirectional=True, proj_size=3, batch_first=True)],
    ids=["2layer", "bidir-proj-batchfirst"],
)
def test_compile_fullgraph_matches_eager(backend, config):
    torch.manual_seed(0)
    lstm = torch_lstm_ext.LSTM(5, 6, **config)
    directions = 2 if config.get("bidirectional") else 1
    layers = config.get("num_layers", 1) * directions
    x = torch.randn(4, 7, 5, requires_grad=True)
    hx = (torch.randn(layers, 4 if config.get("batch_first") else 7, config.get("proj_size") or 6, requires_grad=True),
          torch.randn(layers, 4 if config.get("batch_first") else 7, 6, requires_grad=True))
    compiled = torch.compile(lstm, fullgraph=True, backend=backend)
    expected = _run(lstm, x, hx)
    actual = _run(compiled, x, hx)
    for a, e in zip(actual[0] + actual[1], expected[0] + expected[1]):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_compile_in_a_model_with_dropout_training():
    """Dropout masks under compile come from torch's RNG: same as eager only in distribution, so
    this checks the compiled training step runs end to end and produces finite gradients."""
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("lstm", torch_lstm_ext.LSTM(5, 6, num_layers=2, dropout=0.3))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out, _ = compiled(torch.randn(4, 3, 5))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "config,unbatched",
    [(dict(num_layers=2), False), (dict(bidirectional=True, proj_size=2, batch_first=True), False), (dict(), True)],
    ids=["2layer", "bidir-proj-batchfirst", "unbatched"],
)
def test_export_save_load_round_trip(config, unbatched):
    torch.manual_seed(0)
    lstm = torch_lstm_ext.LSTM(5, 4, **config).eval()
    x = torch.randn(6, 5) if unbatched else torch.randn(3, 6, 5)
    exported = torch.export.export(lstm, (x,))
    assert "torch_lstm_ext.lstm_fwd" in str(exported.graph)
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    expected_out, (expected_h, expected_c) = lstm(x)
    for module in (exported.module(), loaded.module()):
        out, (h_n, c_n) = module(x)
        torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
        torch.testing.assert_close(h_n, expected_h, rtol=0, atol=0)
        torch.testing.assert_close(c_n, expected_c, rtol=0, atol=0)
    other = torch.randn_like(x)  # the exported program is not specialised to the example's values
    torch.testing.assert_close(loaded.module()(other)[0], lstm(other)[0], rtol=0, atol=0)
