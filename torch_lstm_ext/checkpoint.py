"""Gradient checkpointing of one LSTM layer (input projection + recurrence).

The forward runs the layer block by block (schedule.time_blocks: about sqrt(T) steps each) under
no_grad and keeps only the input and the (h, c) state at each block's start. The backward walks
the blocks in reverse: it recomputes the block's input projection and gates with the same ops
(the same masks, which were drawn once before the forward), runs the recurrence backward from
the gradient flowing in at the block's end, and then the projection's backward, written out
(torch.compile cannot trace autograd.grad inside a backward). The whole layer is inside, so
neither the [N, 4H] gate pre-activations nor the saved gates outlive a block.

Results equal the stored-activation path to rounding, not bit for bit: both compute the same
function from the same masks, but the input GEMM runs over a block's rows instead of the whole
sequence (BLAS picks its kernel, and so its rounding, by shape) and the weight gradients are
summed block by block instead of in one reduction. Per tensor, the difference stays within
T * eps * max|stored| (eps of the dtype), except where layer norm amplifies rounding, the
stored path's own as much: tests/support.py states the bound and what it was measured on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torch_lstm_ext.dtypes import compute_dtype
from torch_lstm_ext.params import RecurrenceGrads, RecurrenceParams, Variants
from torch_lstm_ext.profiling import stage
from torch_lstm_ext.projection import LayerWeights, input_projection, input_projection_backward
from torch_lstm_ext.schedule import Block, as_rows, time_blocks


class GradSums:
    """Running sums of named gradients over the blocks, kept in the compute dtype (float32 for
    half types) and rounded to the storage dtype once, by `get`: summing per-block bf16
    gradients in bf16 was 2.3x less accurate than nn.LSTM's."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}

    def add(self, name: str, grad: Tensor | None) -> None:
        if grad is not None and grad.numel():
            grad = grad.to(compute_dtype(grad.dtype))
            self.sums[name] = grad if name not in self.sums else self.sums[name] + grad

    def get(self, name: str, dtype: torch.dtype) -> Tensor | None:
        total = self.sums.get(name)
        return None if total is None else total.to(dtype)


def _part(t: Tensor | None, block: Block, packed: bool) -> Tensor | None:
    """A block's slice of a time-major [T, B, ...] (by steps) or packed [N, ...] (by rows) tensor."""
    if t is None:
        return None
    return t[block.lo : block.hi] if packed else t[block.t0 : block.t1]


def _block_params(p: RecurrenceParams, block: Block, packed: bool) -> RecurrenceParams:
    """p with the per-row zoneout weights cut to one block."""
    v = p.variants
    return p._replace(variants=v._replace(zoneout_c=_part(v.zoneout_c, block, packed),
                                          zoneout_h=_part(v.zoneout_h, block, packed)))


def _params(w: LayerWeights, zoneout_c: Tensor | None, zoneout_h: Tensor | None,
            clips: tuple) -> RecurrenceParams:
    """The recurrence's parameters over all rows; clips = (cell_clip, grad_clip)."""
    variants = Variants(w.peephole, w.ln_hh, w.ln_c, zoneout_c, zoneout_h, *clips)
    return RecurrenceParams(w.w_hh, w.w_hr, variants, w.w_hh_scale, w.w_hr_scale)


class CheckpointedLayer(torch.autograd.Function):
    """apply(x, h0, c0, batch_sizes, reverse, zoneout_c, zoneout_h, clips, *weights)
    -> (y, h_n, c_n); weights are the LayerWeights fields (None where absent), zoneout_c /
    zoneout_h the per-row weights over all rows (or None), clips = (cell_clip, grad_clip)."""

    @staticmethod
    def forward(ctx, x, h0, c0, batch_sizes, reverse, zoneout_c, zoneout_h, clips, *weights):
        w = LayerWeights(*weights)
        p = _params(w, zoneout_c, zoneout_h, clips)
        variants = p.variants
        packed = batch_sizes is not None
        blocks = time_blocks(batch_sizes, as_rows(x).shape[0], h0.shape[0], reverse)
        h, c = h0, c0
        starts = []
        output = x.new_empty((*x.shape[:-1], h0.shape[-1]))
        for block in blocks:
            starts += [h, c]
            sizes = None if not packed else batch_sizes[block.t0 : block.t1]
            block_params = _block_params(p, block, packed).op_args()
            with stage("input_gemm"):
                gates_x = input_projection(_part(x, block, packed), w)
            y, h, c, _, _ = torch.ops.torch_lstm_ext.lstm_fwd(
                gates_x, h, c, *block_params, sizes, reverse, variants.cell_clip, variants.grad_clip,
            )
            _part(output, block, packed).copy_(y)
        ctx.save_for_backward(x, batch_sizes, zoneout_c, zoneout_h, *weights, *starts)
        ctx.reverse, ctx.clips, ctx.blocks = reverse, clips, blocks
        return output, h, c

    @staticmethod
    def backward(ctx, grad_y, grad_hn, grad_cn):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "LSTM(checkpoint=True) has no second-order gradients (create_graph=True): "
                "use checkpoint=False for gradient penalties or Hessian-vector products"
            )
        x, batch_sizes, zoneout_c, zoneout_h, *rest = ctx.saved_tensors
        fields = len(LayerWeights._fields)
        w = LayerWeights(*rest[:fields])
        starts = rest[fields:]
        p = _params(w, zoneout_c, zoneout_h, ctx.clips)
        v = p.variants
        packed = batch_sizes is not None
        dx = torch.empty_like(x)
        sums = GradSums()
        dh, dc = grad_hn.contiguous(), grad_cn.contiguous()
        for k in reversed(range(len(ctx.blocks))):
            block = ctx.blocks[k]
            h_start, c_start = starts[2 * k], starts[2 * k + 1]
            sizes = None if not packed else batch_sizes[block.t0 : block.t1]
            x_block = _part(x, block, packed)
            block_params = _block_params(p, block, packed).op_args()
            with stage("input_gemm"):
                gates_x = input_projection(x_block, w)
            y, _, _, gates, cells = torch.ops.torch_lstm_ext.lstm_fwd(
                gates_x, h_start, c_start, *block_params, sizes, ctx.reverse, v.cell_clip, v.grad_clip,
            )
            g = RecurrenceGrads.from_op(torch.ops.torch_lstm_ext.lstm_bwd(
                _part(grad_y, block, packed).contiguous(), dh, dc, h_start, c_start, *block_params, sizes,
                ctx.reverse, y, gates, cells, v.cell_clip, v.grad_clip,
            ), p)
            dh, dc = g.h0, g.c0
            with stage("input_projection_backward"):
                projection = input_projection_backward(as_rows(x_block), w.w_ih, w.ln_ih, w.b_ih is not None,
                                                       as_rows(g.gates_x))
            _part(dx, block, packed).copy_(projection.x.reshape(x_block.shape))
            block_grads = dict(w_ih=projection.w_ih, bias=projection.bias, ln_ih=projection.ln_ih,
                               w_hh=g.w_hh, w_hr=g.w_hr, peephole=g.peephole, ln_hh=g.ln_hh, ln_c=g.ln_c)
            for name, grad in block_grads.items():
                sums.add(name, grad)
        dtype = w.w_ih.dtype
        bias = sums.get("bias", dtype)
        # b_ih and b_hh get the same gradient but each its own tensor, a row of one [2, 4H]
        # copy: one tensor returned twice ends up as both .grad in compiled training
        # (projection.summed_biases says how; a clone would be dropped as a no-op).
        d_b_ih, d_b_hh = (None, None) if bias is None else torch.stack((bias, bias))
        w_ih, w_hh, w_hr = (sums.get(name, dtype) for name in ("w_ih", "w_hh", "w_hr"))
        weight_grads = (w_ih, w_hh, d_b_ih, d_b_hh, w_hr,
                        sums.get("peephole", dtype), sums.get("ln_ih", dtype), sums.get("ln_hh", dtype),
                        sums.get("ln_c", dtype), None, None, None)  # no int8 scales: inference-only
        return (dx, dh, dc, None, None, None, None, None, *weight_grads)


def checkpointed_layer(
    x: Tensor,
    w: LayerWeights,
    h0: Tensor,
    c0: Tensor,
    p: RecurrenceParams,
    batch_sizes: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Like projecting x [T, B, I] (or packed [N, I]) and running the recurrence with `p`
    (whose tensors are w's, plus the zoneout weights), with gradient checkpointing:
    returns (y, h_n, c_n)."""
    v = p.variants
    return CheckpointedLayer.apply(x, h0, c0, batch_sizes, reverse, v.zoneout_c, v.zoneout_h,
                                   (v.cell_clip, v.grad_clip), *w)
