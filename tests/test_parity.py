"""Our LSTM vs torch.nn.LSTM with identical weights: outputs, final states, every gradient."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from support import assert_same_results, outputs_and_grads, twin_lstms
from torch.nn.utils.rnn import pack_sequence

import torch_lstm_ext

INPUT_SIZE, HIDDEN = 5, 7

CONFIGS = [
    dict(num_layers=layers, bidirectional=bidir, proj_size=proj, bias=bias, batch_first=bf)
    for layers, bidir, proj, bias, bf in itertools.product((1, 2), (False, True), (0, 3), (True, False), (False, True))
]
INPUT_KINDS = ["batched", "unbatched", "packed_unsorted", "packed_sorted"]
SHAPES = [(4, 3), (1, 1), (6, 2)]  # (T, B); for packed, T is the longest length


def _config_id(config: dict) -> str:
    return "-".join(f"{k}={int(v)}" for k, v in config.items())


def make_input(kind: str, config: dict, T: int, B: int, dtype: torch.dtype, with_hx: bool, seed: int = 0):
    """(input, hx) for nn.LSTM's forward, with requires_grad set on every tensor."""
    gen = torch.Generator().manual_seed(seed)
    directions = 2 if config["bidirectional"] else 1
    layers = config["num_layers"] * directions
    out = config["proj_size"] or HIDDEN

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()

    if kind == "batched":
        x = randn(B, T, INPUT_SIZE) if config["batch_first"] else randn(T, B, INPUT_SIZE)
        state_shape = (layers, B)
    elif kind == "unbatched":
        x = randn(T, INPUT_SIZE)
        state_shape = (layers,)
    else:
        # Unsorted lengths, the longest T, at least one sequence of length 1 when B > 1.
        lengths = [T] + [max(1, (T * (k + 1)) // (B + 1)) for k in range(B - 1)]
        if kind == "packed_sorted":
            lengths.sort(reverse=True)
        else:
            lengths = lengths[1:] + lengths[:1]
        seqs = [torch.randn(n, INPUT_SIZE, generator=gen, dtype=dtype) for n in lengths]
        x = pack_sequence(seqs, enforce_sorted=(kind == "packed_sorted"))
        x.data.requires_grad_()
        state_shape = (layers, B)
    hx = (randn(*state_shape, out), randn(*state_shape, HIDDEN)) if with_hx else None
    return x, hx


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_float64_matches_nn_lstm(config, kind, with_hx):
    ref, ours = twin_lstms(torch.float64, input_size=INPUT_SIZE, hidden_size=HIDDEN, **config)
    for T, B in SHAPES:
        if kind == "unbatched" and B != 1:
            continue
        x, hx = make_input(kind, config, T, B, torch.float64, with_hx)
        assert_same_results(outputs_and_grads(ref, x, hx), outputs_and_grads(ours, x, hx), torch.float64)


@pytest.mark.parametrize(
    "config", [c for c in CONFIGS if c["bias"] and not c["batch_first"]], ids=_config_id
)
@pytest.mark.parametrize("kind", ["batched", "packed_unsorted"])
def test_float32_matches_nn_lstm(config, kind):
    ref, ours = twin_lstms(torch.float32, input_size=INPUT_SIZE, hidden_size=HIDDEN, **config)
    x, hx = make_input(kind, config, 6, 3, torch.float32, with_hx=True, seed=1)
    assert_same_results(outputs_and_grads(ref, x, hx), outputs_and_grads(ours, x, hx), torch.float32)


def test_larger_float32_shape_matches_nn_lstm():
    config = dict(num_layers=2, bidirectional=True, proj_size=0, bias=True, batch_first=True)
    ref, ours = twin_lstms(torch.float32, input_size=32, hidden_size=64, **config)
    x = torch.randn(8, 30, 32, requires_grad=True)
    assert_same_results(outputs_and_grads(ref, x), outputs_and_grads(ours, x), torch.float32)


@pytest.mark.parametrize("checkpoint", [False, True], ids=["stored", "checkpoint"])
@pytest.mark.parametrize("kind", ["batched", "packed_unsorted"])
def test_long_sequences_match_nn_lstm(kind, checkpoint, small_blocks):
    """150 steps; with checkpoint=True, in many blocks (schedule.time_blocks)."""
    config = dict(num_layers=2, bidirectional=True, proj_size=3, bias=True, batch_first=False)
    ref = torch.nn.LSTM(INPUT_SIZE, HIDDEN, **config, dtype=torch.float64)
    ours = torch_lstm_ext.LSTM(INPUT_SIZE, HIDDEN, **config, checkpoint=checkpoint, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x, hx = make_input(kind, config, 150, 3, torch.float64, with_hx=True, seed=2)
    assert_same_results(outputs_and_grads(ref, x, hx), outputs_and_grads(ours, x, hx), torch.float64)


def test_non_contiguous_input_and_states():
    ref, ours = twin_lstms(torch.float64, input_size=INPUT_SIZE, hidden_size=HIDDEN, num_layers=2, proj_size=3)
    base = torch.randn(INPUT_SIZE, 3, 4, dtype=torch.float64, requires_grad=True)
    x = base.permute(2, 1, 0)  # [T=4, B=3, I], non-contiguous
    h0 = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True).transpose(0, 1)
    c0 = torch.randn(2, HIDDEN, 3, dtype=torch.float64, requires_grad=True).transpose(1, 2)
    assert not (x.is_contiguous() or h0.is_contiguous() or c0.is_contiguous())
    assert_same_results(outputs_and_grads(ref, x, (h0, c0)), outputs_and_grads(ours, x, (h0, c0)), torch.float64)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_draws_the_same_masks_as_nn_lstm(bidirectional):
    ref, ours = twin_lstms(
        torch.float32, input_size=4, hidden_size=6, num_layers=3, dropout=0.4, bidirectional=bidirectional
    )
    x = torch.randn(5, 3, 4, requires_grad=True)
    torch.manual_seed(123)
    expected = outputs_and_grads(ref, x)
    after_ref = torch.randn(3)
    torch.manual_seed(123)
    actual = outputs_and_grads(ours, x)
    after_ours = torch.randn(3)
    assert_same_results(expected, actual, torch.float32)
    torch.testing.assert_close(after_ours, after_ref, rtol=0, atol=0)  # same number of draws


def test_dropout_is_off_in_eval():
    ref, ours = twin_lstms(torch.float64, input_size=4, hidden_size=6, num_layers=2, dropout=0.5)
    ref.eval()
    ours.eval()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_types_run_in_float32_and_match_nn_lstm(dtype):
    ref, ours = twin_lstms(torch.float32, input_size=8, hidden_size=16, num_layers=2)
    ref_half = copy.deepcopy(ref).to(dtype)
    ref64 = ref.double()
    ours.to(dtype)
    x = torch.randn(6, 3, 8)
    out, (h, c) = ours(x.to(dtype))
    assert out.dtype == h.dtype == c.dtype == dtype
    exact, _ = ref64(x.double())
    ours_err = (out.double() - exact).abs().max().item()
    torch_err = (ref_half(x.to(dtype))[0].double() - exact).abs().max().item()
    # Computing in float32 must be at least as accurate as nn.LSTM computing in the half type.
    assert ours_err <= torch_err + 1e-3, (ours_err, torch_err)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in ours.parameters())


@pytest.mark.parametrize("checkpoint", [False, True], ids=["stored", "checkpoint"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_type_weight_gradients_match_nn_lstm(dtype, checkpoint, small_blocks):
    """Over 400 steps the weight gradients stay about as accurate as nn.LSTM's, computed in the
    half type. checkpoint=True (20 blocks) sums the blocks' gradients in float32 and rounds once
    (summed in the half type instead, W_ih's bf16 error was 2.3x nn.LSTM's)."""
    ref = torch.nn.LSTM(8, 16)
    ours = torch_lstm_ext.LSTM(8, 16, checkpoint=checkpoint)
    ours.load_state_dict(ref.state_dict())
    ref_half, ref64 = copy.deepcopy(ref).to(dtype), copy.deepcopy(ref).double()
    ours.to(dtype)
    x, weight = torch.randn(400, 3, 8), torch.randn(400, 3, 16)

    def weight_grads(module, dtype_):
        out, _ = module(x.to(dtype_))
        return torch.autograd.grad((out.double() * weight.double()).sum(), list(module.parameters()))

    exact = weight_grads(ref64, torch.float64)
    for got, theirs, want in zip(weight_grads(ours, dtype), weight_grads(ref_half, dtype), exact, strict=True):
        ours_err = (got.double() - want).abs().max().item()
        torch_err = (theirs.double() - want).abs().max().item()
        assert ours_err <= 1.5 * torch_err, (ours_err, torch_err)
