"""The input projection's blockwise backward op against autograd through the projection."""

from __future__ import annotations

import pytest
import torch

import torch_lstm_ext  # noqa: F401  (registers the ops)
from torch_lstm_ext.projection import LayerWeights, input_projection


@pytest.mark.parametrize("bias,layer_norm,packed", [(True, False, False), (False, True, True), (True, True, True)])
def test_input_projection_bwd_matches_autograd(bias, layer_norm, packed, small_blocks):
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    batch_sizes = torch.tensor([4] * 30 + [2] * 20 + [1] * 9) if packed else None
    lead = (int(batch_sizes.sum()),) if packed else (60, 3)  # several blocks
    x, w_ih = randn(*lead, 5), randn(8, 5)
    b_ih, b_hh = (randn(8), randn(8)) if bias else (None, None)
    ln_ih = randn(8) if layer_norm else None
    d_gates = torch.randn(*lead, 8, generator=gen, dtype=torch.float64)
    leaves = [t for t in (x, w_ih, b_ih, ln_ih) if t is not None]
    expected = torch.autograd.grad(input_projection(x, LayerWeights(w_ih, None, b_ih, b_hh, None, ln_ih=ln_ih)),
                                   leaves, d_gates)
    dx, d_w_ih, d_bias, d_ln = torch.ops.torch_lstm_ext.input_projection_bwd(
        d_gates, x.detach(), w_ih.detach(), None if ln_ih is None else ln_ih.detach(), bias, True, batch_sizes,
        False)
    actual = [dx, d_w_ih] + ([d_bias] if bias else []) + ([d_ln] if layer_norm else [])
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
