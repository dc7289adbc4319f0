"""The LSTM variants (peephole, layer norm, zoneout, cell / gradient clipping) on the Triton
backend through Triton's interpreter, against the NumPy backend (numpy_backend/variants.py, itself
tested against a step-by-step autograd model in test_variants.py). Run in its own process:
`make test-interpreter`.

Every buffer a kernel writes starts NaN-filled (buffers.POISON). Shapes are small but GPU-legal
(tl.dot tiles >= 16); H = 20 / P = 12 leave masked columns in every tile, which the layer
norms' row sums must skip.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 set before import: run `make test-interpreter`",
                allow_module_level=True)

import torch
from support import LAYER_NORM_BF16_TOLERANCE, assert_same_results, outputs_and_grads
from torch.nn.utils.rnn import pack_sequence
from triton_support import (
    assert_matches_reference,
    count_triton_calls,
    make_case,
    run_kernel,
    run_op,
    with_variants,
)

import torch_lstm_ext
from torch_lstm_ext.config import BACKEND_ENV
from torch_lstm_ext.triton_kernels import buffers
from torch_lstm_ext.triton_kernels.dispatch import choose_kernel

pytestmark = pytest.mark.interpreter

SINGLE_VARIANTS = {
    "peephole": dict(peephole=True),
    "layer_norm": dict(layer_norm=True),
    "zoneout_eval": dict(zoneout="eval"),
    "zoneout_train": dict(zoneout="train"),
    "cell_clip": dict(cell_clip=0.5),
    "grad_clip": dict(grad_clip=0.05),
}
ALL_VARIANTS = dict(peephole=True, layer_norm=True, zoneout="train", cell_clip=0.5, grad_clip=0.05)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(buffers, "POISON", True)


def _assert_clips_reached(case, expected) -> None:
    """The clips in `case` actually bind in the NumPy results, so the comparison tests them."""
    (_, _, _, _, cells), (d_gates, *_) = expected
    if case.grad_clip is not None:
        bound = torch.tensor(case.grad_clip, dtype=d_gates.dtype)
        assert d_gates.abs().max() == bound, "grad_clip never binds"
    cell_clip, zoneout_c = case.variants[5], case.variants[3]
    if cell_clip is not None and zoneout_c is None:  # zoneout mixes the clipped cell with c_{t-1}
        assert cells.abs().max() == torch.tensor(cell_clip, dtype=cells.dtype), "cell_clip never binds"


@pytest.mark.parametrize("proj", [0, 16], ids=["no_proj", "proj"])
@pytest.mark.parametrize("variant", SINGLE_VARIANTS)
def test_each_variant_matches_numpy(variant, proj, monkeypatch):
    case = make_case(T=4, B=3, H=16, proj=proj, packed=False, reverse=False, dtype=torch.float32, seed=5)
    case = with_variants(case, **SINGLE_VARIANTS[variant], seed=6)
    expected = run_op(case, "numpy", monkeypatch)
    _assert_clips_reached(case, expected)
    assert_matches_reference(run_op(case, "triton", monkeypatch), expected, torch.float32)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("H,proj", [(16, 16), (20, 12)])
def test_all_variants_packed_match_numpy(H, proj, reverse, monkeypatch):
    case = make_case(T=5, B=3, H=H, proj=proj, packed=True, reverse=reverse, dtype=torch.float32, seed=7)
    case = with_variants(case, **ALL_VARIANTS, seed=8)
    expected = run_op(case, "numpy", monkeypatch)
    _assert_clips_reached(case, expected)
    assert_matches_reference(run_op(case, "triton", monkeypatch), expected, torch.float32)


@pytest.mark.parametrize("layer_norm", [False, True], ids=["no_ln", "ln"])
def test_variants_bfloat16_match_numpy(layer_norm, monkeypatch):
    # No clips: cell_clip's derivative steps at the bound, which a bf16-rounded cell can cross
    # for one backend only; grad_clip caps the gradients below the rounding errors they carry
    # from the unclipped upstream gradient, which no storage-relative tolerance fits.
    variants = dict(peephole=True, layer_norm=layer_norm, zoneout="train")
    case = make_case(T=5, B=3, H=16, proj=16, packed=True, reverse=True, dtype=torch.bfloat16, seed=9)
    case = with_variants(case, **variants, seed=10)
    assert_matches_reference(run_op(case, "triton", monkeypatch), run_op(case, "numpy", monkeypatch),
                             torch.bfloat16, of_max=LAYER_NORM_BF16_TOLERANCE if layer_norm else None)


def test_float64_variants_take_the_reference_path(monkeypatch):
    case = make_case(T=4, B=3, H=16, proj=8, packed=True, reverse=True, dtype=torch.float64, seed=11)
    case = with_variants(case, **ALL_VARIANTS, seed=12)
    actual, expected = run_op(case, "triton", monkeypatch), run_op(case, "numpy", monkeypatch)
    for got, want in zip(actual[0] + actual[1], expected[0] + expected[1], strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_variants_run_in_the_per_step_kernels_only():
    assert choose_kernel(16, 16, False, torch.float32, True) == "step"
    assert choose_kernel(16, 16, False, torch.float32, False) == "persistent"
    case = with_variants(make_case(T=2, B=2, H=16, proj=0, packed=False, reverse=False, dtype=torch.float32),
                         peephole=True)
    with pytest.raises(ValueError, match="no variant form"):
        run_kernel(case, "persistent")


PER_ELEMENT_VARIANTS = dict(peephole=True, zoneout="train", cell_clip=0.5, grad_clip=0.05)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("H,proj", [(16, 0), (20, 12)])
def test_per_element_variants_in_the_cooperative_kernels_match_numpy(H, proj, reverse, monkeypatch):
    """Through recurrence.py's wiring: packed rows padded (zoneout weights too), the weight GEMMs."""
    case = make_case(T=5, B=3, H=H, proj=proj, packed=True, reverse=reverse, dtype=torch.float32, seed=13)
    case = with_variants(case, **PER_ELEMENT_VARIANTS, seed=14)
    expected = run_op(case, "numpy", monkeypatch)
    _assert_clips_reached(case, expected)
    assert_matches_reference(run_kernel(case, "cooperative"), expected, torch.float32)


def test_the_cooperative_kernels_refuse_layer_norm():
    case = with_variants(make_case(T=2, B=2, H=16, proj=0, packed=False, reverse=False, dtype=torch.float32),
                         layer_norm=True)
    with pytest.raises(ValueError, match="no layer norm"):
        run_kernel(case, "cooperative")


def _packed_input(T: int, B: int, input_size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    lengths = [max(1, (T * (k + 1)) // B) for k in range(B)][::-1][1:] + [T]
    x = pack_sequence([torch.randn(n, input_size, generator=gen) for n in lengths], enforce_sorted=False)
    x.data.requires_grad_()
    return x


def _module_results(module, x, hx, backend: str, monkeypatch, seed: int = 3):
    with monkeypatch.context() as m:
        m.setenv(BACKEND_ENV, backend)
        torch.manual_seed(seed)  # the same zoneout and weight-dropout masks for both backends
        return outputs_and_grads(module, x, hx)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_module_with_variants_matches_numpy_backend(training, monkeypatch):
    T, B, I, H, P = 4, 3, 8, 16, 12
    torch.manual_seed(0)
    module = torch_lstm_ext.LSTM(
        I, H, num_layers=2, bidirectional=True, proj_size=P, peephole=True, layer_norm=True,
        zoneout_cell=0.3, zoneout_hidden=0.2, weight_dropout=0.25, cell_clip=0.8, grad_clip=0.5,
    ).train(training)
    with torch.no_grad():  # LN gains / biases away from their init, so they matter
        for name, p in module.named_parameters():
            if name.startswith("ln_"):
                p.add_(0.3 * torch.randn_like(p))
    x = _packed_input(T, B, I, seed=1)
    gen = torch.Generator().manual_seed(2)
    hx = (torch.randn(4, B, P, generator=gen).requires_grad_(), torch.randn(4, B, H, generator=gen).requires_grad_())
    expected = _module_results(module, x, hx, "numpy", monkeypatch)
    calls = count_triton_calls(monkeypatch)
    actual = _module_results(module, x, hx, "triton", monkeypatch)
    assert calls == {"forward": 4, "backward": 4}
    assert any(name.startswith("param.weight_ci") for name in actual[3])
    assert_same_results(expected, actual, torch.float32)
