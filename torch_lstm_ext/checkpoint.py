"""Gradient checkpointing of one LSTM layer (input projection + recurrence).

The forward runs the layer segment by segment (about sqrt(T) steps each) under no_grad and keeps
only the input, the output and the (h, c) state at each segment's start. The backward walks the
segments in reverse: it recomputes the segment's input projection and gates with the same ops
(the same masks, which were drawn once before the forward), runs the recurrence backward from
the gradient flowing in at the segment's end, and then the projection's backward, written out
(torch.compile cannot trace autograd.grad inside a backward). The whole layer is inside, so
neither the [N, 4H] gate pre-activations nor the saved gates outlive a segment.

Outputs equal the stored-activation path bitwise on CPU: the recurrence runs the same kernel
per step, and the input GEMM over a block of rows gives the same bits as over the whole
sequence once the block has enough rows (CPU BLAS switches to other kernels for a handful of
rows; 16 rows sufficed for every shape measured, segments keep at least MIN_SEGMENT_ROWS).
Weight gradients are summed per segment instead of in one GEMM, so they agree to rounding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from torch_lstm_ext.projection import LayerWeights, input_projection, input_projection_backward
from torch_lstm_ext.variants import VariantConfig


class Segment(NamedTuple):
    """Time steps [t0, t1) of the sequence and, along the leading axis of the time-major
    tensors (time for [T, B, ...], rows for packed [N, ...]), the slice [lo, hi) they occupy."""

    t0: int
    t1: int
    lo: int
    hi: int


MIN_SEGMENT_ROWS = 32


def segments(num_steps: int, batch: int, batch_sizes: Tensor | None, reverse: bool) -> list[Segment]:
    """Segments of at least sqrt(T) steps and MIN_SEGMENT_ROWS rows (a shorter tail joins the
    last one), in the order the forward processes them."""
    sizes = [batch] * num_steps if batch_sizes is None else batch_sizes.tolist()
    length = max(1, math.isqrt(num_steps))
    bounds: list[tuple[int, int]] = []
    t0, rows = 0, 0
    for t, n in enumerate(sizes):
        rows += n
        if t + 1 - t0 >= length and rows >= MIN_SEGMENT_ROWS:
            bounds.append((t0, t + 1))
            t0, rows = t + 1, 0
    if t0 < num_steps:
        bounds = bounds[:-1] + [(bounds[-1][0] if bounds else 0, num_steps)]
    if batch_sizes is None:
        result = [Segment(t0, t1, t0, t1) for t0, t1 in bounds]
    else:
        offsets = [0, *torch.cumsum(batch_sizes, 0).tolist()]
        result = [Segment(t0, t1, offsets[t0], offsets[t1]) for t0, t1 in bounds]
    return result[::-1] if reverse else result


def _recurrence_args(w: LayerWeights, zoneout_c, zoneout_h, seg: Segment, variants: VariantConfig):
    """The variant arguments of lstm_fwd for one segment."""
    zc = None if zoneout_c is None else zoneout_c[seg.lo : seg.hi]
    zh = None if zoneout_h is None else zoneout_h[seg.lo : seg.hi]
    return (w.peephole, w.ln_hh, w.ln_c, zc, zh, variants.cell_clip)


class CheckpointedLayer(torch.autograd.Function):
    """apply(x, h0, c0, batch_sizes, reverse, zoneout_c, zoneout_h, variants, *weights)
    -> (y, h_n, c_n); weights are the nine LayerWeights fields (None where absent)."""

    @staticmethod
    def forward(ctx, x, h0, c0, batch_sizes, reverse, zoneout_c, zoneout_h, variants, *weights):
        w = LayerWeights(*weights)
        num_steps = x.shape[0] if batch_sizes is None else batch_sizes.shape[0]
        segs = segments(num_steps, h0.shape[0], batch_sizes, reverse)
        h, c = h0, c0
        starts = []
        output = x.new_empty((*x.shape[:-1], h0.shape[-1]))
        for seg in segs:
            starts += [h, c]
            sizes = None if batch_sizes is None else batch_sizes[seg.t0 : seg.t1]
            y, h, c, _, _ = torch.ops.torch_lstm_ext.lstm_fwd(
                input_projection(x[seg.lo : seg.hi], w), w.w_hh, w.w_hr, h, c, sizes, reverse,
                *_recurrence_args(w, zoneout_c, zoneout_h, seg, variants),
            )
            output[seg.lo : seg.hi] = y
        ctx.save_for_backward(x, batch_sizes, zoneout_c, zoneout_h, *weights, *starts)
        ctx.reverse, ctx.variants, ctx.segs = reverse, variants, segs
        return output, h, c

    @staticmethod
    def backward(ctx, grad_y, grad_hn, grad_cn):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "LSTM(checkpoint=True) has no second-order gradients (create_graph=True): "
                "use checkpoint=False for gradient penalties or Hessian-vector products"
            )
        x, batch_sizes, zoneout_c, zoneout_h, *rest = ctx.saved_tensors
        w = LayerWeights(*rest[:9])
        starts = rest[9:]
        dx = torch.empty_like(x)
        sums: dict[str, Tensor] = {}  # weight gradients summed over the segments

        def add(name: str, grad: Tensor | None) -> None:
            if grad is not None and grad.numel():
                sums[name] = grad if name not in sums else sums[name] + grad

        dh, dc = grad_hn.contiguous(), grad_cn.contiguous()
        for k in reversed(range(len(ctx.segs))):
            seg = ctx.segs[k]
            h_start, c_start = starts[2 * k], starts[2 * k + 1]
            sizes = None if batch_sizes is None else batch_sizes[seg.t0 : seg.t1]
            x_seg = x[seg.lo : seg.hi]
            variant_args = _recurrence_args(w, zoneout_c, zoneout_h, seg, ctx.variants)
            y, _, _, gates, cells = torch.ops.torch_lstm_ext.lstm_fwd(
                input_projection(x_seg, w), w.w_hh, w.w_hr, h_start, c_start, sizes, ctx.reverse,
                *variant_args,
            )
            grads = torch.ops.torch_lstm_ext.lstm_bwd(
                grad_y[seg.lo : seg.hi].contiguous(), dh, dc, w.w_hh, w.w_hr, h_start, c_start, sizes,
                ctx.reverse, y, gates, cells, *variant_args, ctx.variants.grad_clip,
            )
            d_gates_x, d_w_hh, d_w_hr, dh, dc, d_peep, d_ln_hh, d_ln_c = grads
            projection = input_projection_backward(x_seg, w, d_gates_x)
            dx[seg.lo : seg.hi] = projection.x
            for name, grad in (
                ("w_ih", projection.w_ih), ("bias", projection.bias), ("ln_ih", projection.ln_ih),
                ("w_hh", d_w_hh), ("w_hr", d_w_hr), ("peephole", d_peep),
                ("ln_hh", d_ln_hh), ("ln_c", d_ln_c),
            ):
                add(name, grad)
        bias = sums.get("bias")
        weight_grads = (sums.get("w_ih"), sums.get("w_hh"), bias, bias, sums.get("w_hr"),
                        sums.get("peephole"), sums.get("ln_ih"), sums.get("ln_hh"), sums.get("ln_c"))
        return (dx, dh, dc, None, None, None, None, None, *weight_grads)


def checkpointed_layer(
    x: Tensor,
    w: LayerWeights,
    h0: Tensor,
    c0: Tensor,
    batch_sizes: Tensor | None,
    reverse: bool,
    zoneout_c: Tensor | None,
    zoneout_h: Tensor | None,
    variants: VariantConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """Like projecting x [T, B, I] (or packed [N, I]) and running the recurrence, with gradient
    checkpointing: returns (y, h_n, c_n)."""
    return CheckpointedLayer.apply(x, h0, c0, batch_sizes, reverse, zoneout_c, zoneout_h, variants, *w)
