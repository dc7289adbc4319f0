"""The recurrence written in differentiable torch ops, for second-order gradients.

`LSTMFunction.backward` uses it only when a graph of the gradient is requested
(`create_graph=True`): it re-runs the forward with autograd recording and differentiates that,
so gradient penalties, Hessian-vector products and gradgradcheck work. Same arguments and
layout rules as `reference.lstm_forward`, on tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torch_lstm_ext.schedule import step_schedule


def lstm_recurrence(
    gates_x: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    batch_sizes: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """y [..., P], h_n [B, P], c_n [B, H] for gates_x [T, B, 4H] or packed [N, 4H]."""
    flat = gates_x.reshape(-1, gates_x.shape[-1])
    B = h0.shape[0]
    sizes = None if batch_sizes is None else batch_sizes.cpu().numpy()
    h, c = h0, c0
    outputs: dict[int, Tensor] = {}
    for step in step_schedule(sizes, flat.shape[0], B, reverse):
        n = step.n
        pre = flat[step.offset : step.offset + n] + h[:n] @ w_hh.T
        i, f, g, o = pre.chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c[:n] + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        outputs[step.offset] = h_new
        h = torch.cat((h_new, h[n:]))
        c = torch.cat((c_new, c[n:]))
    y = torch.cat([outputs[offset] for offset in sorted(outputs)])
    return y.reshape(*gates_x.shape[:-1], y.shape[-1]), h, c
