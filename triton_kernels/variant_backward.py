"""The whole-sequence side of the variants' backward: the step loop (variant_step_backward.py),
then in torch the gradient reaching h0 and ONE GEMM per weight gradient over all rows, as the
plain path does, plus the variant parameters' gradients summed over the batch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from torch_lstm_ext.params import Variants
from torch_lstm_ext.triton_kernels.layout import Layout, device_index
from torch_lstm_ext.triton_kernels.variant_step_backward import StepGrads, variant_step_backward


def variant_backward(
    grad_y: Tensor, grad_hn: Tensor, grad_cn: Tensor, w_hh: Tensor, w_hr: Tensor | None,
    h0: Tensor, c0: Tensor, gates: Tensor, cells: Tensor, h_prev: Tensor,
    layout: Layout, v: Variants, *, step_loop: Callable[..., StepGrads] = variant_step_backward,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """d_gates_x [N, 4H] (grad_y's dtype), d_w_hh [4H, P], d_w_hr [P, H], d_h0 [B, P], d_c0
    [B, H], d_peephole [3, H], d_ln_hh [4H], d_ln_c [2, H] (weights' dtype; empty when off).

    Rows flat and contiguous: grad_y [N, P], gates [N, 4H], cells [N, H] (fp32 as saved),
    h_prev [N, P] each row's previous h; grad_hn, h0 [B, P]; grad_cn, c0 [B, H]. step_loop runs
    the steps: variant_step_backward, or its graphed twin (step_graphs.py).
    """
    H = c0.shape[1]
    acc = torch.float32
    s = step_loop(grad_y, grad_hn, grad_cn, w_hh, w_hr, c0, gates, cells, h_prev, layout, v)

    # dL/dh0: the first processed step's d_hh through W_hh plus, with zoneout, its kept share.
    first = device_index(layout, "first_rows", grad_y.device)
    d_h0 = grad_hn.to(acc, copy=True)
    d_h0[: len(first)] = s.d_hh.index_select(0, first).to(acc) @ w_hh.to(acc)
    if v.zoneout_h is not None:
        d_h0[: len(first)] += (v.zoneout_h.index_select(0, first).to(acc)
                               * s.d_out.index_select(0, first))

    d_w_hh = (s.d_hh.to(acc).T @ h_prev.to(acc)).to(w_hh.dtype)
    if w_hr is None:
        d_w_hr = w_hh.new_empty(0)
    else:
        d_h_cand = s.d_out if v.zoneout_h is None else s.d_out * (1.0 - v.zoneout_h.to(acc))
        d_w_hr = (d_h_cand.T @ s.r).to(w_hh.dtype)

    def parameter(per_row: Tensor | None, shape: tuple[int, ...]) -> Tensor:
        return w_hh.new_empty(0) if per_row is None else per_row.sum(0).reshape(shape).to(w_hh.dtype)

    return (
        s.d_gates, d_w_hh, d_w_hr, d_h0.to(h0.dtype), s.dc.to(c0.dtype),
        parameter(s.d_peephole, (3, H)), parameter(s.d_ln_hh, (4 * H,)), parameter(s.d_ln_c, (2, H)),
    )
