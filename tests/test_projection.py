"""projection.input_projection_backward (checkpointing's written-out projection backward)
against autograd through projection.input_projection."""

from __future__ import annotations

import pytest
import torch
from support import assert_close

from torch_lstm_ext.projection import LayerWeights, input_projection, input_projection_backward


@pytest.mark.parametrize("bias,layer_norm", [(True, False), (False, True), (True, True), (False, False)])
def test_input_projection_backward_matches_autograd(bias, layer_norm):
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    x, w_ih = randn(50, 5), randn(8, 5)  # x [rows, I], w_ih [4H, I]
    b_ih, b_hh = (randn(8), randn(8)) if bias else (None, None)
    ln_ih = randn(8) if layer_norm else None
    d_gates = torch.randn(50, 8, generator=gen, dtype=torch.float64)
    leaves = [t for t in (x, w_ih, b_ih, ln_ih) if t is not None]
    expected = torch.autograd.grad(input_projection(x, LayerWeights(w_ih, None, b_ih, b_hh, None, ln_ih=ln_ih)),
                                   leaves, d_gates)
    grads = input_projection_backward(x.detach(), w_ih.detach(), None if ln_ih is None else ln_ih.detach(), bias,
                                      d_gates)
    assert (grads.bias is None) != bias and (grads.ln_ih is None) != layer_norm
    names = ["x", "w_ih"] + ["bias"] * bias + ["ln_ih"] * layer_norm
    actual = [t for t in grads if t is not None]
    for name, got, want in zip(names, actual, expected, strict=True):
        assert_close(got, want, torch.float64, name)
