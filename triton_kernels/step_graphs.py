"""The "step_graph" kernel: the per-step launchers replayed from CUDA graphs (graph_replay.py).

Each function takes the arguments and returns the results of its eager counterpart, so a caller
picks one or the other: graphed_step_forward for step_forward.step_forward, graphed_step_backward
for step_backward.step_backward, graphed_variant_step_forward and graphed_variant_backward for
the variant ones. Results are fresh tensors, never a graph's buffers (graph_replay.py).
"""

from __future__ import annotations

from torch import Tensor

from torch_lstm_ext.params import Variants
from torch_lstm_ext.triton_kernels.graph_replay import replay
from torch_lstm_ext.triton_kernels.layout import Layout
from torch_lstm_ext.triton_kernels.step_backward import step_backward
from torch_lstm_ext.triton_kernels.step_forward import step_forward
from torch_lstm_ext.triton_kernels.variant_backward import variant_backward
from torch_lstm_ext.triton_kernels.variant_step_backward import StepGrads, variant_step_backward
from torch_lstm_ext.triton_kernels.variant_step_forward import variant_step_forward


def graphed_step_forward(
    gates_x: Tensor, w_hh: Tensor, w_hr: Tensor | None, h0: Tensor, c0: Tensor, layout: Layout,
    w_hh_scale: Tensor | None = None, w_hr_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """step_forward from a graph: y [N, P] (storage dtype), gates [N, 4H], cells [N, H] (fp32).
    The int8 scales are graph inputs like the weights (None for float weights)."""

    def launch(*t: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        return step_forward(*t[:5], layout, *t[5:])

    return replay("step_forward", launch, (gates_x, w_hh, w_hr, h0, c0, w_hh_scale, w_hr_scale), layout)


def graphed_step_backward(
    grad_y: Tensor, grad_hn: Tensor, grad_cn: Tensor, w_hh: Tensor, w_hr: Tensor | None,
    c0: Tensor, gates: Tensor, cells: Tensor, layout: Layout,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """step_backward from a graph: d_gates [N, 4H], d_out [N, P] fp32 or None, dc [B, H] fp32."""
    tensors = (grad_y, grad_hn, grad_cn, w_hh, w_hr, c0, gates, cells)
    return replay("step_backward", lambda *t: step_backward(*t, layout), tensors, layout)


def graphed_variant_step_forward(
    gates_x: Tensor, w_hh: Tensor, w_hr: Tensor | None, h0: Tensor, c0: Tensor, layout: Layout,
    v: Variants, w_hh_scale: Tensor | None = None, w_hr_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """variant_step_forward from a graph: y [N, P], gates [N, 4H], cells [N, H] (the int8 scales
    as in graphed_step_forward)."""

    def launch(*t: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        return variant_step_forward(*t[:5], layout, v.with_tensors(t[7:]), *t[5:7])

    tensors = (gates_x, w_hh, w_hr, h0, c0, w_hh_scale, w_hr_scale, *v.tensors())
    return replay("variant_step_forward", launch, tensors, layout, (v.cell_clip, v.grad_clip))


def graphed_variant_step_backward(
    grad_y: Tensor, grad_hn: Tensor, grad_cn: Tensor, w_hh: Tensor, w_hr: Tensor | None,
    c0: Tensor, gates: Tensor, cells: Tensor, h_prev: Tensor, layout: Layout, v: Variants,
) -> StepGrads:
    """variant_step_backward from a graph (its StepGrads; d_hh is d_gates without LN_hh, as there)."""

    def launch(*t: Tensor | None) -> StepGrads:
        return variant_step_backward(*t[:9], layout, v.with_tensors(t[9:]))

    tensors = (grad_y, grad_hn, grad_cn, w_hh, w_hr, c0, gates, cells, h_prev, *v.tensors())
    return replay("variant_step_backward", launch, tensors, layout, (v.cell_clip, v.grad_clip))


def graphed_variant_backward(
    grad_y: Tensor, grad_hn: Tensor, grad_cn: Tensor, w_hh: Tensor, w_hr: Tensor | None,
    h0: Tensor, c0: Tensor, gates: Tensor, cells: Tensor, h_prev: Tensor,
    layout: Layout, v: Variants,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """variant_backward with its step loop from a graph (the whole-sequence GEMMs run eagerly:
    one launch each)."""
    return variant_backward(grad_y, grad_hn, grad_cn, w_hh, w_hr, h0, c0, gates, cells, h_prev, layout, v,
                            step_loop=graphed_variant_step_backward)
