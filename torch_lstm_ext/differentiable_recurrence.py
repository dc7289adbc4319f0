"""The LSTM step's equations, written once in differentiable torch ops (the host reference).

The NumPy kernels (numpy_backend/) and the Triton kernels compute these equations; this module
states them and runs them with autograd recording. `LSTMFunction`'s backward uses it only when a
graph of the gradient is requested (`create_graph=True`, and every torch.func transform): it
re-runs the forward here and differentiates that, so gradient penalties, Hessian-vector
products, gradgradcheck and nested transforms work. Same arguments and layout rules as the ops.

Per step, with c_p / h_p the previous states (per active row: gates 4H, cells H, h P), gates in
PyTorch's order i, f, g, o, sigma the logistic function:
    z      = gates_x + LN_hh(h_p @ W_hh^T) * ln_hh                     (LN only with layer_norm)
    i, f   = sigma(z_i + w_ci * c_p), sigma(z_f + w_cf * c_p)           (peephole terms optional)
    g      = tanh(z_g)
    c~     = clip(f * c_p + i * g, -cell_clip, cell_clip)               (clip optional)
    o      = sigma(z_o + w_co * c~)
    h~     = o * tanh(LN_c(c~) * ln_c_gain + ln_c_bias)   [@ W_hr^T with projection]
    c, h   = m_c * c_p + (1 - m_c) * c~,  m_h * h_p + (1 - m_h) * h~    (zoneout; m = mask or z)
LN is normalization.py's layer norm over the row (no affine part, biased variance). In the backward,
the gradient of each step's four gate pre-activations (peephole terms included) is clamped to
[-grad_clip, grad_clip] before it flows on. With every variant off this is nn.LSTM's cell.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from torch_lstm_ext.normalization import LN_EPS
from torch_lstm_ext.params import RecurrenceParams
from torch_lstm_ext.schedule import as_rows, step_rows, walk_batch_sizes


class _ClampGrad(torch.autograd.Function):
    """Identity whose backward clamps the incoming gradient (the grad_clip variant)."""

    @staticmethod
    def forward(x, bound):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.bound = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(-ctx.bound, ctx.bound), None

    @staticmethod
    def vmap(info, in_dims, x, bound):
        return _ClampGrad.apply(x, bound), in_dims[0]


def layer_norm(x: Tensor) -> Tensor:
    """LN over the last axis without affine part (the variants' normalisation)."""
    return F.layer_norm(x, x.shape[-1:], eps=LN_EPS)


def lstm_recurrence(
    gates_x: Tensor, h0: Tensor, c0: Tensor, p: RecurrenceParams, batch_sizes: Tensor | None, reverse: bool,
    *, units: bool = False,
) -> tuple[Tensor, ...]:
    """y [..., P], h_n [B, P], c_n [B, H] for gates_x [T, B, 4H] or packed [N, 4H]; with `units`
    also each row's h~ before the projection and zoneout, o * tanh(c~) [..., H] (what pruning
    scores a hidden unit by)."""
    w_hh, w_hr, v = p.w_hh, p.w_hr, p.variants
    flat = as_rows(gates_x)
    zc = None if v.zoneout_c is None else as_rows(v.zoneout_c)
    zh = None if v.zoneout_h is None else as_rows(v.zoneout_h)
    B = h0.shape[0]

    def clip_grad(x: Tensor) -> Tensor:
        return x if v.grad_clip is None else _ClampGrad.apply(x, v.grad_clip)

    h, c = h0, c0
    outputs: dict[int, Tensor] = {}
    unit_outputs: dict[int, Tensor] = {}
    w = walk_batch_sizes(None if batch_sizes is None else batch_sizes.cpu(), flat.shape[0], B, reverse)
    for step in w.steps:
        n, rows = step.n, step_rows(w, step)
        h_p, c_p = h[:n], c[:n]
        hh = h_p @ w_hh.T
        if v.ln_hh is not None:
            hh = layer_norm(hh) * v.ln_hh
        zi, zf, zg, zo = (flat[rows] + hh).chunk(4, dim=1)
        if v.peephole is not None:
            zi, zf = zi + v.peephole[0] * c_p, zf + v.peephole[1] * c_p
        i, f, g = torch.sigmoid(clip_grad(zi)), torch.sigmoid(clip_grad(zf)), torch.tanh(clip_grad(zg))
        c_new = f * c_p + i * g
        if v.cell_clip is not None:
            c_new = c_new.clamp(-v.cell_clip, v.cell_clip)
        if v.peephole is not None:
            zo = zo + v.peephole[2] * c_new
        o = torch.sigmoid(clip_grad(zo))
        c_out = c_new if v.ln_c is None else layer_norm(c_new) * v.ln_c[0] + v.ln_c[1]
        h_new = o * torch.tanh(c_out)
        unit_outputs[step.t] = h_new
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        if zc is not None:
            c_new = zc[rows] * c_p + (1 - zc[rows]) * c_new
        if zh is not None:
            h_new = zh[rows] * h_p + (1 - zh[rows]) * h_new
        outputs[step.t] = h_new
        h = torch.cat((h_new, h[n:]))
        c = torch.cat((c_new, c[n:]))
    def rows(per_step: dict[int, Tensor], width: int) -> Tensor:
        # An empty batch takes no steps (schedule.walk), and its output has no rows.
        y = torch.cat([per_step[t] for t in sorted(per_step)]) if per_step else flat.new_zeros(0, width)
        return y.reshape(*gates_x.shape[:-1], width)

    y = rows(outputs, h0.shape[-1])
    return (y, h, c, rows(unit_outputs, c0.shape[-1])) if units else (y, h, c)
