"""The recurrence written in differentiable torch ops, for second-order gradients.

`LSTMFunction.backward` uses it only when a graph of the gradient is requested
(`create_graph=True`): it re-runs the forward with autograd recording and differentiates that,
so gradient penalties, Hessian-vector products and gradgradcheck work. Same arguments, layout
rules and variant equations as `reference.lstm_forward` / `variant_reference`, on tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from torch_lstm_ext.schedule import step_rows, walk_batch_sizes
from torch_lstm_ext.variant_reference import LN_EPS


class _ClampGrad(torch.autograd.Function):
    """Identity whose backward clamps the incoming gradient (the grad_clip variant)."""

    @staticmethod
    def forward(ctx, x, bound):
        ctx.bound = bound
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(-ctx.bound, ctx.bound), None


def _layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=LN_EPS)


def lstm_recurrence(
    gates_x: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    batch_sizes: Tensor | None,
    reverse: bool,
    peephole: Tensor | None = None,
    ln_hh_weight: Tensor | None = None,
    ln_c: Tensor | None = None,
    zoneout_c: Tensor | None = None,
    zoneout_h: Tensor | None = None,
    cell_clip: float | None = None,
    grad_clip: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """y [..., P], h_n [B, P], c_n [B, H] for gates_x [T, B, 4H] or packed [N, 4H]."""
    flat = gates_x.reshape(-1, gates_x.shape[-1])
    zc = None if zoneout_c is None else zoneout_c.reshape(-1, zoneout_c.shape[-1])
    zh = None if zoneout_h is None else zoneout_h.reshape(-1, zoneout_h.shape[-1])
    B = h0.shape[0]

    def clip_grad(x: Tensor) -> Tensor:
        return x if grad_clip is None else _ClampGrad.apply(x, grad_clip)

    h, c = h0, c0
    outputs: dict[int, Tensor] = {}
    w = walk_batch_sizes(None if batch_sizes is None else batch_sizes.cpu(), flat.shape[0], B, reverse)
    for step in w.steps:
        n, rows = step.n, step_rows(w, step)
        h_p, c_p = h[:n], c[:n]
        hh = h_p @ w_hh.T
        if ln_hh_weight is not None:
            hh = _layer_norm(hh) * ln_hh_weight
        zi, zf, zg, zo = (flat[rows] + hh).chunk(4, dim=1)
        if peephole is not None:
            zi, zf = zi + peephole[0] * c_p, zf + peephole[1] * c_p
        i, f, g = torch.sigmoid(clip_grad(zi)), torch.sigmoid(clip_grad(zf)), torch.tanh(clip_grad(zg))
        c_new = f * c_p + i * g
        if cell_clip is not None:
            c_new = c_new.clamp(-cell_clip, cell_clip)
        if peephole is not None:
            zo = zo + peephole[2] * c_new
        o = torch.sigmoid(clip_grad(zo))
        c_out = c_new if ln_c is None else _layer_norm(c_new) * ln_c[0] + ln_c[1]
        h_new = o * torch.tanh(c_out)
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        if zc is not None:
            c_new = zc[rows] * c_p + (1 - zc[rows]) * c_new
        if zh is not None:
            h_new = zh[rows] * h_p + (1 - zh[rows]) * h_new
        outputs[step.t] = h_new
        h = torch.cat((h_new, h[n:]))
        c = torch.cat((c_new, c[n:]))
    # An empty batch takes no steps (schedule.walk), and its output has no rows.
    y = torch.cat([outputs[t] for t in sorted(outputs)]) if outputs else flat.new_zeros(0, h0.shape[-1])
    return y.reshape(*gates_x.shape[:-1], y.shape[-1]), h, c
