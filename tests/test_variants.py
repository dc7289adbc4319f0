"""The variants nn.LSTM lacks, against the plain autograd reference in variant_reference_model."""

from __future__ import annotations

import pytest
import torch
from support import assert_close
from torch import nn
from torch.autograd import gradcheck
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from variant_reference_model import reference_lstm

import torch_lstm_ext

DT = torch.float64
I, H = 3, 5

SINGLE_VARIANTS = {
    "peephole": dict(peephole=True),
    "layer_norm": dict(layer_norm=True),
    "zoneout_eval": dict(zoneout_cell=0.3, zoneout_hidden=0.2),
    "zoneout_train": dict(zoneout_cell=0.3, zoneout_hidden=0.2),
    "weight_dropout": dict(weight_dropout=0.4),
    "cell_clip": dict(cell_clip=0.2),
    "grad_clip": dict(grad_clip=0.01),
}
TRAINING = {"zoneout_train", "weight_dropout"}
BASE_CONFIGS = {
    "plain": dict(),
    "2layer-bidir-proj-dropout": dict(num_layers=2, bidirectional=True, proj_size=2, dropout=0.3),
}


def _make(variant_kwargs, base, seed=0):
    torch.manual_seed(seed)
    module = torch_lstm_ext.LSTM(I, H, dtype=DT, **base, **variant_kwargs)
    with torch.no_grad():  # move LN gains / biases off their trivial init so they matter
        for name, p in module.named_parameters():
            if name.startswith("ln_"):
                p.add_(0.3 * torch.randn_like(p))
    return module


def _inputs(module, T=4, B=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    D = 2 if module.bidirectional else 1
    P = module.proj_size or H
    x = (2 * torch.randn(T, B, I, generator=gen, dtype=DT)).requires_grad_()
    h0 = torch.randn(module.num_layers * D, B, P, generator=gen, dtype=DT).requires_grad_()
    c0 = torch.randn(module.num_layers * D, B, H, generator=gen, dtype=DT).requires_grad_()
    return x, (h0, c0)


def _loss_and_grads(outputs, leaves, seed=2):
    gen = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=DT)).sum() for t in outputs)
    return torch.autograd.grad(loss, leaves, allow_unused=True)


def _compare(module, x, hx, lengths, training, ours_input=None, unpack=None):
    module.train(training)
    leaves = [x, *hx, *module.parameters()]
    torch.manual_seed(99)
    expected = reference_lstm(module, x, lengths, hx, training=training)
    torch.manual_seed(99)
    out, (h_n, c_n) = module(ours_input if ours_input is not None else x, hx)
    actual = (unpack(out) if unpack else out, h_n, c_n)
    for name, a, e in zip(("output", "h_n", "c_n"), actual, expected):
        assert_close(a, e, DT, name)
    names = ["x", "h0", "c0"] + [n for n, _ in module.named_parameters()]
    for name, a, e in zip(names, _loss_and_grads(actual, leaves), _loss_and_grads(expected, leaves)):
        assert (a is None) == (e is None), name
        if a is not None:
            assert_close(a, e, DT, f"grad {name}")


@pytest.mark.parametrize("base", BASE_CONFIGS.values(), ids=BASE_CONFIGS.keys())
@pytest.mark.parametrize("variant", SINGLE_VARIANTS)
def test_each_variant_matches_the_reference(variant, base):
    module = _make(SINGLE_VARIANTS[variant], base)
    x, hx = _inputs(module)
    _compare(module, x, hx, [x.shape[0]] * x.shape[1], training=variant in TRAINING)


def test_combination_with_packed_bidirectional_projection():
    kwargs = dict(peephole=True, layer_norm=True, zoneout_cell=0.25, zoneout_hidden=0.4, cell_clip=1.5)
    module = _make(kwargs, dict(num_layers=2, bidirectional=True, proj_size=3))
    x, hx = _inputs(module, T=5, B=4)
    lengths = [3, 5, 1, 4]
    mask = torch.arange(5)[:, None] < torch.tensor(lengths)[None, :]
    x_padded = (x * mask[..., None]).detach().requires_grad_()
    packed = pack_padded_sequence(x_padded, lengths, enforce_sorted=False)

    def unpack(out):
        return pad_packed_sequence(out, total_length=5)[0]

    _compare(module, x_padded, hx, lengths, training=False, ours_input=packed, unpack=unpack)


def test_all_variants_together_in_training():
    kwargs = dict(peephole=True, layer_norm=True, zoneout_cell=0.2, zoneout_hidden=0.3, weight_dropout=0.25,
                  cell_clip=0.8, grad_clip=0.05)
    module = _make(kwargs, dict(num_layers=2, bidirectional=True, proj_size=2, dropout=0.2))
    x, hx = _inputs(module)
    _compare(module, x, hx, [x.shape[0]] * x.shape[1], training=True)


@pytest.mark.parametrize("variant", SINGLE_VARIANTS)
def test_gradcheck_each_variant(variant):
    # A reached grad_clip makes the backward differ from the forward's derivative on purpose, so
    # gradcheck runs the clipping code path with a bound that is never reached.
    kwargs = dict(grad_clip=1e6) if variant == "grad_clip" else SINGLE_VARIANTS[variant]
    module = _make(kwargs, dict(bidirectional=True, proj_size=2))
    module.train(variant in TRAINING)
    x, hx = _inputs(module, T=3, B=2)
    names = [n for n, _ in module.named_parameters()]

    def fn(x, h0, c0, *weights):
        torch.manual_seed(5)  # the same masks at every evaluation
        out, (h_n, c_n) = torch.func.functional_call(module, dict(zip(names, weights)), (x, (h0, c0)))
        return out, h_n, c_n

    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    assert gradcheck(fn, (x, *hx, *params))


def test_zoneout_one_in_training_keeps_the_initial_state():
    module = _make(dict(zoneout_cell=1.0, zoneout_hidden=1.0), dict(num_layers=1))
    x, (h0, c0) = _inputs(module)
    out, (h_n, c_n) = module.train()(x, (h0, c0))
    torch.testing.assert_close(out, h0.expand(x.shape[0], -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(h_n, h0, rtol=0, atol=0)
    torch.testing.assert_close(c_n, c0, rtol=0, atol=0)


@pytest.mark.parametrize("training", [True, False])
def test_zoneout_zero_and_huge_clips_equal_nn_lstm(training):
    kwargs = dict(zoneout_cell=0.0, zoneout_hidden=0.0, grad_clip=1e9, cell_clip=1e9)
    ours = torch_lstm_ext.LSTM(I, H, num_layers=2, proj_size=2, dtype=DT, **kwargs).train(training)
    ref = nn.LSTM(I, H, num_layers=2, proj_size=2, dtype=DT).train(training)
    ours.load_state_dict(ref.state_dict())
    x, hx = _inputs(ours)
    expected = ref(x, hx)
    actual = ours(x, hx)
    assert_close(actual[0], expected[0], DT, "output")
    leaves = [x, *hx, *ref.parameters()]
    e = _loss_and_grads((expected[0], *expected[1]), leaves)
    a = _loss_and_grads((actual[0], *actual[1]), [x, *hx, *ours.parameters()])
    for name, ga, ge in zip(["x", "h0", "c0"] + [n for n, _ in ref.named_parameters()], a, e):
        assert_close(ga, ge, DT, name)


def test_small_grad_clip_changes_gradients_but_not_outputs():
    plain = _make(dict(), dict())
    clipped = _make(dict(grad_clip=1e-3), dict())
    clipped.load_state_dict(plain.state_dict())
    x, hx = _inputs(plain)
    out_plain, out_clipped = plain(x, hx), clipped(x, hx)
    torch.testing.assert_close(out_clipped[0], out_plain[0], rtol=0, atol=0)
    g_plain = torch.autograd.grad(out_plain[0].sum(), plain.weight_hh_l0)[0]
    g_clipped = torch.autograd.grad(out_clipped[0].sum(), clipped.weight_hh_l0)[0]
    assert not torch.allclose(g_plain, g_clipped)


def test_cell_clip_bounds_every_cell_state():
    module = _make(dict(cell_clip=0.5), dict())
    x = 5 * torch.randn(8, 2, I, dtype=DT)
    for t in range(1, 9):
        _, (_, c_t) = module(x[:t])
        assert c_t.abs().max() <= 0.5
    unclipped = _make(dict(), dict())
    unclipped.load_state_dict(module.state_dict())
    assert unclipped(x)[1][1].abs().max() > 0.5  # the bound is actually reached


def test_variant_parameters_names_init_and_state_dict():
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    ours = torch_lstm_ext.LSTM(I, H, num_layers=2, bidirectional=True, peephole=True, layer_norm=True)
    base = dict(ref.named_parameters())
    variant_names = set()
    for name, p in ours.named_parameters():
        if name in base:
            assert torch.equal(p, base[name]), name  # nn.LSTM's draws are unchanged
        else:
            variant_names.add(name)
    expected = {
        f"{kind}_l{k}{sfx}"
        for k in range(2) for sfx in ("", "_reverse")
        for kind in ("weight_ci", "weight_cf", "weight_co", "ln_ih_weight", "ln_hh_weight", "ln_c_weight", "ln_c_bias")
    }
    assert variant_names == expected
    assert torch.equal(ours.ln_hh_weight_l1, torch.ones(4 * H)) and torch.equal(ours.ln_c_bias_l0, torch.zeros(H))
    bound = 1 / H**0.5
    assert 0 < ours.weight_ci_l0.abs().max() <= bound
    result = ours.load_state_dict(ref.state_dict(), strict=False)
    assert set(result.missing_keys) == expected and result.unexpected_keys == []
    assert "peephole=True" in repr(ours) and "layer_norm=True" in repr(ours)
    assert "zoneout" not in repr(ours)


BAD_VARIANTS = {
    "zoneout_cell=1.5": (dict(zoneout_cell=1.5), ValueError),
    "zoneout_hidden=-0.1": (dict(zoneout_hidden=-0.1), ValueError),
    "weight_dropout=1": (dict(weight_dropout=1.0), ValueError),
    "cell_clip=0": (dict(cell_clip=0.0), ValueError),
    "grad_clip=-1": (dict(grad_clip=-1.0), ValueError),
    "peephole=1": (dict(peephole=1), TypeError),
    "checkpoint='yes'": (dict(checkpoint="yes"), TypeError),
}


@pytest.mark.parametrize("kwargs,error", BAD_VARIANTS.values(), ids=BAD_VARIANTS.keys())
def test_bad_variant_arguments(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        torch_lstm_ext.LSTM(I, H, **kwargs)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gradgradcheck_with_variants(training):
    """Second-order gradients (the torch-ops recomputation) with every recurrence variant."""
    kwargs = dict(peephole=True, layer_norm=True, zoneout_cell=0.3, zoneout_hidden=0.2, cell_clip=5.0, grad_clip=1e6)
    module = _make(kwargs, dict(proj_size=2)).train(training)
    x, hx = _inputs(module, T=3, B=2)
    names = [n for n, _ in module.named_parameters()]

    def fn(x, h0, c0, *weights):
        torch.manual_seed(5)
        out, (h_n, c_n) = torch.func.functional_call(module, dict(zip(names, weights)), (x, (h0, c0)))
        return out, h_n, c_n

    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    assert torch.autograd.gradgradcheck(fn, (x, *hx, *params))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_create_graph_gradients_equal_the_kernel_gradients(training):
    """With create_graph=True the backward runs the torch-ops recomputation instead of the
    kernels; its first-order gradients must be the kernels' (gradgradcheck alone would accept a
    recomputation that is self-consistent but wrong)."""
    kwargs = dict(peephole=True, layer_norm=True, zoneout_cell=0.3, zoneout_hidden=0.2, cell_clip=0.5,
                  grad_clip=0.05)
    module = _make(kwargs, dict(proj_size=2, bidirectional=True)).train(training)
    x, hx = _inputs(module)
    results = []
    for create_graph in (False, True):
        torch.manual_seed(5)
        out, (h_n, c_n) = module(x, hx)
        loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=DT)).sum() + h_n.pow(2).sum() + c_n.sum()
        results.append(torch.autograd.grad(loss, [x, *hx, *module.parameters()], create_graph=create_graph))
    for kernel, recomputed in zip(*results):
        assert_close(recomputed.detach(), kernel)
