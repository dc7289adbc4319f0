"""lstm_forward / lstm_backward: the Triton backend of the lstm_fwd / lstm_bwd ops.

Same arguments, shapes, dtypes and semantics as the NumPy backend (ops.py). This module picks
the kernel (dispatch.py), moves packed input to and from the persistent kernels' padded layout,
and does the whole-sequence work in torch: the final-state gathers and the weight gradients,
each ONE GEMM over all rows. The kernels compute in fp32: float64 never comes here (ops.py
sends it to the NumPy backend).

Kernels (dispatch.py names them): "step" launches per-step kernels eagerly, "step_graph" replays
the same launches from a CUDA graph (step_graphs.py), "persistent" runs one program per batch
tile over the whole sequence, "cooperative" splits the hidden units over many programs of one
launch (cooperative_forward.py, cooperative_backward.py). The padded kernels (persistent,
cooperative) get packed input scattered to padded rows here. The variants (peephole, layer
norm, zoneout, cell / gradient clipping) run in the per-step variant kernels
(variant_step_forward.py, variant_step_backward.py, variant_backward.py) or, all but layer
norm, in the cooperative ones; with every variant off, the plain kernels run.

Quantized weights (weight_quantization.py), forward only (the ops refuse int8 in the backward):
every forward launcher takes W_hh / W_hr as stored, int8 or float16, and the int8 per-row scales
p.w_hh_scale / p.w_hr_scale; the kernels convert the weights in registers and scale the dots'
columns (tiles.py). dispatch.py's rule is unchanged; it is asked with the dtype the kernels hold
the weights in (tiles.weight_operand_dtype): int8 weights are held in gates_x's dot dtype, so
that dtype's budget holds for them as measured, and float16 weights beside bfloat16 activations
are held in float32 and take its budget.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torch_lstm_ext.params import RecurrenceGrads, RecurrenceParams, Variants
from torch_lstm_ext.schedule import as_rows
from torch_lstm_ext.triton_kernels.cooperative_backward import (
    cooperative_backward,
    cooperative_variant_backward,
)
from torch_lstm_ext.triton_kernels.cooperative_forward import cooperative_forward
from torch_lstm_ext.triton_kernels.dispatch import Kernel, check_kernel, choose_kernel
from torch_lstm_ext.triton_kernels.layout import Layout, device_index
from torch_lstm_ext.triton_kernels.persistent_backward import persistent_backward
from torch_lstm_ext.triton_kernels.persistent_forward import persistent_forward
from torch_lstm_ext.triton_kernels.step_backward import step_backward
from torch_lstm_ext.triton_kernels.step_forward import step_forward
from torch_lstm_ext.triton_kernels.step_graphs import (
    graphed_step_backward,
    graphed_step_forward,
    graphed_variant_backward,
    graphed_variant_step_forward,
)
from torch_lstm_ext.triton_kernels.tiles import weight_operand_dtype
from torch_lstm_ext.triton_kernels.variant_backward import variant_backward
from torch_lstm_ext.triton_kernels.variant_step_forward import variant_step_forward

# The per-step launchers of each step kernel: (plain forward, variant forward, plain backward,
# variant backward), eager or replayed from CUDA graphs with the same arguments and results.
_STEP_LAUNCHERS = {
    "step": (step_forward, variant_step_forward, step_backward, variant_backward),
    "step_graph": (graphed_step_forward, graphed_variant_step_forward, graphed_step_backward,
                   graphed_variant_backward),
}


def _flat(t: Tensor) -> Tensor:
    return as_rows(t).contiguous()


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _present(t: Tensor) -> Tensor | None:
    """None for the empty tensor a variant launcher returns for a parameter that is absent."""
    return None if t.numel() == 0 else t


def _to_padded(packed: Tensor, padded_rows: Tensor | None, num_padded: int) -> Tensor:
    """Packed rows [N, F] scattered into a zero-filled padded [num_padded, F] (None: already padded)."""
    if padded_rows is None:
        return packed
    padded = packed.new_zeros((num_padded, packed.shape[1]))
    return padded.index_copy_(0, padded_rows, packed)


def _from_padded(padded: Tensor, padded_rows: Tensor | None) -> Tensor:
    return padded if padded_rows is None else padded.index_select(0, padded_rows)


def _final_rows(rows: Tensor, initial: Tensor, active_rows: Tensor) -> Tensor:
    """[B, F]: rows[active_rows] for the first len(active_rows) sequences, `initial` for the rest."""
    out = initial.clone()
    out[: len(active_rows)] = rows.index_select(0, active_rows).to(out.dtype)
    return out


def _previous_h(flat_y: Tensor, h0: Tensor, layout: Layout) -> Tensor:
    """Every row's previous h, [N, P]: y's row of the previous step, or h0."""
    return torch.cat((flat_y, h0)).index_select(0, device_index(layout, "previous_rows", flat_y.device))


def _padding(layout: Layout, batch_sizes: Tensor | None, device: torch.device):
    """(lengths int32 [B], packed -> padded row index or None when the input is already padded)."""
    lengths = device_index(layout, "lengths", device)
    rows = None if batch_sizes is None else device_index(layout, "padded_rows", device)
    return lengths, rows


def _check_scale(name: str, w: Tensor | None, scale: Tensor | None) -> None:
    """Raise ValueError unless int8 weights come with their scales and float weights without."""
    if w is not None and (w.dtype == torch.int8) != (scale is not None):
        raise ValueError(f"{name}: int8 weights need their per-row scales, float weights none; got "
                         f"{w.dtype} weights with{'out' if scale is None else ''} a scale")


def _padded_variants(v: Variants, padded_rows: Tensor | None, num_padded: int) -> Variants:
    """v with its per-row zoneout weights scattered to the padded rows, as gates_x is."""
    return v._replace(**{
        name: _to_padded(t, padded_rows, num_padded)
        for name, t in (("zoneout_c", v.zoneout_c), ("zoneout_h", v.zoneout_h)) if t is not None
    })


def lstm_forward(
    gates_x: Tensor,
    h0: Tensor,
    c0: Tensor,
    p: RecurrenceParams,
    batch_sizes: Tensor | None,
    reverse: bool,
    *,
    kernel: Kernel | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The recurrence: y [..., P] (gates_x's dtype), h_n [B, P], c_n [B, H], gates [..., 4H] and
    cells [..., H] (float32), for gates_x [T, B, 4H] or packed [N, 4H] (fp32, fp16 or bf16);
    p's shapes in params.py. See ops.py. W_hh / W_hr: float, or int8 with their scales
    p.w_hh_scale / p.w_hr_scale (weight_quantization.py).

    kernel: force one of dispatch.py's kernels (tests, benchmarks); None applies its rule.
    """
    v = p.variants.as_rows()
    flat = _flat(gates_x)
    w_hh, w_hr, h0, c0 = p.w_hh.contiguous(), _contiguous(p.w_hr), h0.contiguous(), c0.contiguous()
    _check_scale("w_hh", w_hh, p.w_hh_scale)
    _check_scale("w_hr", w_hr, p.w_hr_scale)
    scales = dict(w_hh_scale=_contiguous(p.w_hh_scale), w_hr_scale=_contiguous(p.w_hr_scale))
    B, P = h0.shape
    H = c0.shape[1]
    layout = Layout.of(batch_sizes, flat.shape[0], B, reverse)
    held = weight_operand_dtype(gates_x.dtype, w_hh, w_hr)
    kernel = kernel or choose_kernel(H, P, w_hr is not None, held, v.on)
    check_kernel(kernel, v.on, v.has_layer_norm)
    if kernel in ("persistent", "cooperative"):
        lengths, padded_rows = _padding(layout, batch_sizes, flat.device)
        num_padded = len(layout.sizes) * B
        padded = _to_padded(flat, padded_rows, num_padded)
        if kernel == "persistent":
            y, h_n, c_n, gates, cells = persistent_forward(padded, w_hh, w_hr, h0, c0, lengths, reverse,
                                                           **scales)
        else:
            y, h_n, c_n, gates, cells = cooperative_forward(
                padded, w_hh, w_hr, h0, c0, lengths, reverse, _padded_variants(v, padded_rows, num_padded),
                **scales,
            )
        y, gates, cells = (_from_padded(t, padded_rows) for t in (y, gates, cells))
    else:
        plain_forward, variants_forward, _, _ = _STEP_LAUNCHERS[kernel]
        if v.on:
            y, gates, cells = variants_forward(flat, w_hh, w_hr, h0, c0, layout, v, **scales)
        else:
            y, gates, cells = plain_forward(flat, w_hh, w_hr, h0, c0, layout, **scales)
        last = device_index(layout, "last_rows", flat.device)
        h_n = _final_rows(y, h0, last)
        c_n = _final_rows(cells, c0, last)
    lead = gates_x.shape[:-1]
    return y.reshape(*lead, P), h_n, c_n, gates.reshape(gates_x.shape), cells.reshape(*lead, H)


def lstm_backward(
    grad_y: Tensor,
    grad_hn: Tensor,
    grad_cn: Tensor,
    h0: Tensor,
    c0: Tensor,
    p: RecurrenceParams,
    batch_sizes: Tensor | None,
    reverse: bool,
    y: Tensor,
    gates: Tensor,
    cells: Tensor,
    *,
    kernel: Kernel | None = None,
) -> RecurrenceGrads:
    """Gradients of lstm_forward: gates_x [..., 4H] (grad_y's dtype), h0 [B, P], c0 [B, H],
    w_hh [4H, P], w_hr [P, H], peephole [3, H], ln_hh [4H], ln_c [2, H] (None where absent; the
    weights' dtype).

    kernel: as for lstm_forward (the backward may use either kernel, whichever the forward used).
    """
    v = p.variants.as_rows()
    flat_grad_y, flat_y, flat_gates, flat_cells = (_flat(t) for t in (grad_y, y, gates, cells))
    w_hh, w_hr, h0, c0 = p.w_hh.contiguous(), _contiguous(p.w_hr), h0.contiguous(), c0.contiguous()
    grad_hn = grad_hn.to(h0.dtype).contiguous()
    grad_cn = grad_cn.to(c0.dtype).contiguous()
    B, P = h0.shape
    H = c0.shape[1]
    device = flat_y.device
    layout = Layout.of(batch_sizes, flat_y.shape[0], B, reverse)
    kernel = kernel or choose_kernel(H, P, w_hr is not None, grad_y.dtype, v.on)
    check_kernel(kernel, v.on, v.has_layer_norm)
    if v.on and kernel == "cooperative":
        return _cooperative_variant_backward(flat_grad_y, grad_hn, grad_cn, w_hh, w_hr, h0, c0, flat_y,
                                             flat_gates, flat_cells, batch_sizes, layout, v, gates.shape)
    if v.on:
        d_gates, d_w_hh, d_w_hr, d_h0, d_c0, d_peephole, d_ln_hh, d_ln_c = _STEP_LAUNCHERS[kernel][3](
            flat_grad_y, grad_hn, grad_cn, w_hh, w_hr, h0, c0, flat_gates, flat_cells,
            _previous_h(flat_y, h0, layout), layout, v,
        )
        return RecurrenceGrads(d_gates.reshape(gates.shape), d_h0, d_c0, d_w_hh, _present(d_w_hr),
                               _present(d_peephole), _present(d_ln_hh), _present(d_ln_c))
    if kernel in ("persistent", "cooperative"):
        lengths, padded_rows = _padding(layout, batch_sizes, device)
        num_padded = len(layout.sizes) * B
        padded_backward = persistent_backward if kernel == "persistent" else cooperative_backward
        d_gates, d_out, d_h0, d_c0 = padded_backward(
            _to_padded(flat_grad_y, padded_rows, num_padded), grad_hn, grad_cn, w_hh, w_hr, c0,
            _to_padded(flat_gates, padded_rows, num_padded),
            _to_padded(flat_cells, padded_rows, num_padded), lengths, reverse,
        )
        d_gates = _from_padded(d_gates, padded_rows)
        d_out = None if d_out is None else _from_padded(d_out, padded_rows)
    else:
        d_gates, d_out, dc = _STEP_LAUNCHERS[kernel][2](
            flat_grad_y, grad_hn, grad_cn, w_hh, w_hr, c0, flat_gates, flat_cells, layout
        )
        first = device_index(layout, "first_rows", device)
        d_h0 = grad_hn.to(torch.float32, copy=True)
        d_h0[: len(first)] = d_gates.index_select(0, first).float() @ w_hh.float()
        d_h0, d_c0 = d_h0.to(h0.dtype), dc.to(c0.dtype)

    # The weight gradients: one fp32 GEMM each over all rows of the sequence.
    acc = torch.float32
    h_prev = _previous_h(flat_y, h0, layout)
    d_w_hh = (d_gates.to(acc).T @ h_prev.to(acc)).to(w_hh.dtype)
    d_w_hr = None
    if w_hr is not None:
        r = flat_gates[:, 3 * H :] * torch.tanh(flat_cells)
        d_w_hr = (d_out.T @ r).to(w_hh.dtype)
    return RecurrenceGrads(d_gates.reshape(gates.shape), d_h0, d_c0, d_w_hh, d_w_hr)


def _cooperative_variant_backward(
    grad_y: Tensor, grad_hn: Tensor, grad_cn: Tensor, w_hh: Tensor, w_hr: Tensor | None, h0: Tensor,
    c0: Tensor, y: Tensor, gates: Tensor, cells: Tensor, batch_sizes: Tensor | None, layout: Layout,
    v: Variants, gates_shape: torch.Size,
) -> RecurrenceGrads:
    """lstm_backward's results for the per-element variants through the cooperative kernel:
    its recurrence on the padded rows, then the weight GEMMs over all rows (as variant_backward)."""
    lengths, padded_rows = _padding(layout, batch_sizes, grad_y.device)
    num_padded = len(layout.sizes) * layout.batch

    def pad(t: Tensor) -> Tensor:
        return _to_padded(t, padded_rows, num_padded)

    s = cooperative_variant_backward(pad(grad_y), grad_hn, grad_cn, w_hh, w_hr, c0, pad(gates), pad(cells),
                                     lengths, layout.reverse, _padded_variants(v, padded_rows, num_padded))
    acc = torch.float32
    d_gates = _from_padded(s.d_gates, padded_rows)
    d_w_hh = (d_gates.to(acc).T @ _previous_h(y, h0, layout).to(acc)).to(w_hh.dtype)
    d_w_hr = None
    if w_hr is not None:
        d_out = _from_padded(s.d_out, padded_rows)
        d_h_cand = d_out if v.zoneout_h is None else d_out * (1.0 - v.zoneout_h.to(acc))
        d_w_hr = (d_h_cand.T @ _from_padded(s.r, padded_rows)).to(w_hh.dtype)
    return RecurrenceGrads(d_gates.reshape(gates_shape), s.d_h0.to(h0.dtype), s.d_c0.to(c0.dtype), d_w_hh,
                           d_w_hr, s.d_peephole)
