"""The LSTM variants as users write them today: a Python loop of per-step torch ops.

The baseline of scripts/bench_variants.py. One layer, one direction, time-major [T, B, I]
input, reading the parameters of a torch_lstm_ext.LSTM (shared, not copied), so both compute
the same function and the benchmark can check that before timing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torch_lstm_ext

EPS = 1e-5


class VariantLoopLSTM(nn.Module):
    """forward(x [T, B, I], masks) -> output [T, B, H]; masks: (weight_hh mask or None,
    zoneout weights [T, B, H] for c and h or None), drawn by the caller."""

    def __init__(self, ours: torch_lstm_ext.LSTM) -> None:
        super().__init__()
        if ours.num_layers != 1 or ours.bidirectional or ours.proj_size:
            raise ValueError("the loop baseline covers one unidirectional layer without projection")
        self.ours = ours
        self.v = ours.variants

    def _ln(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps=EPS)

    def forward(self, x: Tensor, w_hh: Tensor, zoneout_c: Tensor | None, zoneout_h: Tensor | None) -> Tensor:
        p, v = self.ours, self.v
        T, B, _ = x.shape
        H = p.hidden_size
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        bias = p.bias_ih_l0 + p.bias_hh_l0
        outputs = []
        for t in range(T):
            gi, gh = x[t] @ p.weight_ih_l0.T, h @ w_hh.T
            if v.layer_norm:
                gates = self._ln(gi, p.ln_ih_weight_l0) + self._ln(gh, p.ln_hh_weight_l0) + bias
            else:
                gates = gi + gh + bias
            zi, zf, zg, zo = gates.chunk(4, dim=1)
            if v.peephole:
                zi, zf = zi + p.weight_ci_l0 * c, zf + p.weight_cf_l0 * c
            if v.grad_clip is not None and torch.is_grad_enabled():
                for z in (zi, zf, zg):
                    z.register_hook(lambda g: g.clamp(-v.grad_clip, v.grad_clip))
            c_new = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
            if v.cell_clip is not None:
                c_new = c_new.clamp(-v.cell_clip, v.cell_clip)
            if v.peephole:
                zo = zo + p.weight_co_l0 * c_new
            if v.grad_clip is not None and torch.is_grad_enabled():
                zo.register_hook(lambda g: g.clamp(-v.grad_clip, v.grad_clip))
            shown = self._ln(c_new, p.ln_c_weight_l0, p.ln_c_bias_l0) if v.layer_norm else c_new
            h_new = torch.sigmoid(zo) * torch.tanh(shown)
            if zoneout_c is not None:
                c_new = zoneout_c[t] * c + (1 - zoneout_c[t]) * c_new
            if zoneout_h is not None:
                h_new = zoneout_h[t] * h + (1 - zoneout_h[t]) * h_new
            h, c = h_new, c_new
            outputs.append(h)
        return torch.stack(outputs)


def draw_masks(ours: torch_lstm_ext.LSTM, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(weight_hh after DropConnect, zoneout weights of c, of h), drawn in the order
    torch_lstm_ext.LSTM draws them: with the same seed both see the same masks."""
    v = ours.variants
    w_hh = ours.weight_hh_l0
    if v.weight_dropout:
        w_hh = F.dropout(w_hh, v.weight_dropout, training=True)
    shape = (*x.shape[:2], ours.hidden_size)
    zc = x.new_empty(shape).bernoulli_(v.zoneout_cell) if v.zoneout_cell else None
    zh = x.new_empty(shape).bernoulli_(v.zoneout_hidden) if v.zoneout_hidden else None
    return w_hh, zc, zh


def call_with_fresh_masks(loop: VariantLoopLSTM, x: Tensor) -> Tensor:
    """Draw the masks (draw_masks), then run the loop."""
    return loop(x, *draw_masks(loop.ours, x))
