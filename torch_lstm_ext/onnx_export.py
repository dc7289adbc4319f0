"""ONNX export: `lstm_fwd` as ONNX's LSTM operator, for torch.onnx.export(..., dynamo=True).

    torch.onnx.export(model, (x,), dynamo=True,
                      custom_translation_table=torch_lstm_ext.onnx_translation_table())

Each call of the op (one layer, one direction) becomes one ONNX LSTM node. ONNX orders the
gates i, o, f, c, PyTorch i, f, g, o, so every gate-indexed weight is reordered by a Gather.

The op receives gates_x = x @ W_ih^T + b_ih + b_hh [T, B, 4H], already projected. When the graph
computed it as MatMul(x, Transpose(W_ih)) (+ bias), which is how the exporter lowers the
module's F.linear, the node takes x, W_ih and the bias themselves, as nn.LSTM's own export
does, and the MatMul / Add are left without consumers for the exporter's optimizer to drop.
Any other gates_x (the functional entry fed gates from elsewhere) goes in as X with a constant
0/1 matrix W [1, 4H, 4H] that only reorders the gates: exact (products by 1 and 0), but
T * B * 16 H^2 more multiply-adds: 1.8-4.5x slower in onnxruntime (.drafts/onnx.md).

Supported: layers, bidirectional (a reverse-direction node), batch_first, given or default
h0 / c0, dynamic T and B, peephole (ONNX's P input, order i, o, f). Refused with
torch.onnx.errors.OnnxExporterError, naming the feature: packed input, proj_size, layer norm,
zoneout, cell_clip, none of which ONNX's LSTM has. weight_dropout and grad_clip never reach
the op at inference (eval mode), so they export as the plain LSTM.

onnxscript and torch.onnx are imported only when a node is translated: `import torch_lstm_ext`
must not pay for them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

import torch_lstm_ext.ops  # noqa: F401  (registers torch.ops.torch_lstm_ext.lstm_fwd)


class OpArguments(NamedTuple):
    """The arguments of one lstm_fwd call that the translation reads (shapes of ops.py):
    ir.Value tensors (None when absent), and Python values for reverse and cell_clip."""

    gates_x: Any
    w_hh: Any
    w_hr: Any
    h0: Any
    c0: Any
    batch_sizes: Any
    reverse: bool
    peephole: Any
    ln_hh: Any
    ln_c: Any
    zoneout_c: Any
    zoneout_h: Any
    cell_clip: float | None
    w_hh_scale: Any = None


def _op_arguments(gates_x, h0, c0, params, param_names, batch_sizes=None, reverse=False, cell_clip=None,
                  grad_clip=None) -> OpArguments:
    """lstm_fwd's arguments, in its schema's order and names (the exporter passes them as the
    FX node holds them; params as a list of values named by param_names, as
    RecurrenceParams.op_args() makes them). The one place that knows the schema. grad_clip acts
    in the backward only."""
    named = dict(zip(param_names, params))
    return OpArguments(gates_x, named["w_hh"], named.get("w_hr"), h0, c0, batch_sizes, bool(reverse),
                       named.get("peephole"), named.get("ln_hh"), named.get("ln_c"), named.get("zoneout_c"),
                       named.get("zoneout_h"), cell_clip, named.get("w_hh_scale"))


def _refuse_what_onnx_lacks(args: OpArguments) -> None:
    """OnnxExporterError naming each feature of this call that ONNX's LSTM cannot express."""
    unsupported = [
        name for name, present in (
            ("packed input (PackedSequence)", args.batch_sizes is not None),
            ("proj_size", args.w_hr is not None),
            ("layer_norm", args.ln_hh is not None or args.ln_c is not None),
            ("zoneout_cell", args.zoneout_c is not None),
            ("zoneout_hidden", args.zoneout_h is not None),
            ("cell_clip", args.cell_clip is not None),
            ("int8 weights (quantize_weights)", args.w_hh_scale is not None),
        ) if present
    ]
    if unsupported:
        from torch.onnx.errors import OnnxExporterError  # torch.onnx costs ~0.1 s to import

        raise OnnxExporterError(
            "torch_lstm_ext ONNX export: ONNX's LSTM operator cannot express "
            + ", ".join(unsupported)
            + "; it supports layers, bidirectional, batch_first, h0/c0, peephole and dynamic T and B"
        )


def _gate_order(hidden: int) -> np.ndarray:
    """Indices [4H] that take PyTorch's gate rows (i, f, g, o) to ONNX's (i, o, f, c)."""
    blocks = (0, 3, 1, 2)  # ONNX's i, o, f, c are PyTorch's blocks 0, 3, 1, 2
    return np.concatenate([np.arange(b * hidden, (b + 1) * hidden) for b in blocks])


def _static_shape(value) -> tuple | None:
    """The value's shape as a tuple (ints, or symbolic dims), None when unknown."""
    return None if value is None or value.shape is None else tuple(value.shape)


def _producer(value, op_type: str):
    """The node of type `op_type` (default ONNX domain) that computes `value`, else None."""
    node = None if value is None else value.producer()
    return node if node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx") else None


def _linear_operands(value, gates: int):
    """(x [T, B, I], w [gates, I]) when `value` = MatMul(x, Transpose(w)), the exporter's
    lowering of F.linear's product, else None."""
    matmul = _producer(value, "MatMul")
    transpose = _producer(matmul.inputs[1], "Transpose") if matmul is not None else None
    if transpose is None or tuple(transpose.attributes["perm"].value) != (1, 0):
        return None
    x, w = matmul.inputs[0], transpose.inputs[0]
    x_shape, w_shape = _static_shape(x), _static_shape(w)
    if x_shape is None or w_shape is None or len(x_shape) != 3 or len(w_shape) != 2 or w_shape[0] != gates:
        return None
    return x, w


def _input_projection(gates_x, gates: int):
    """(x [T, B, I], w [gates, I], bias [gates] or None) when the graph computed gates_x as
    x @ w^T (+ bias), else None."""
    add = _producer(gates_x, "Add")
    if add is None:
        operands = _linear_operands(gates_x, gates)
        return None if operands is None else (*operands, None)
    for product, bias in (add.inputs, add.inputs[::-1]):
        operands = _linear_operands(product, gates)
        if operands is not None and _static_shape(bias) == (gates,):
            return (*operands, bias)
    return None


def lstm_fwd_to_onnx(*args, **kwargs):
    """Translation of one lstm_fwd call: (y [T, B, H], h_n [B, H], c_n [B, H]).

    The op's last two outputs, the gates and cells kept for its backward, are not returned:
    an exported inference graph never reads them, so no node computes them.
    """
    from onnxscript import ir
    from onnxscript import opset18 as op

    a = _op_arguments(*args, **kwargs)
    _refuse_what_onnx_lacks(a)
    hidden = a.w_hh.shape[0] // 4
    dtype = a.gates_x.dtype.numpy()
    order = op.Constant(value=ir.tensor(_gate_order(hidden)))
    projection = _input_projection(a.gates_x, 4 * hidden)
    if projection is not None:  # ONNX's LSTM computes X @ W^T + Wb + Rb itself
        x, w_ih, bias = projection
        weight = op.Unsqueeze(op.Gather(w_ih, order, axis=0), [0])  # [1, 4H, I]
        if bias is not None:  # Wb = the summed bias, Rb = 0: [1, 8H]
            zeros = op.Constant(value=ir.tensor(np.zeros(4 * hidden, dtype=dtype)))
            bias = op.Unsqueeze(op.Concat(op.Gather(bias, order, axis=0), zeros, axis=0), [0])
    else:
        x, bias = a.gates_x, None
        reorder = np.eye(4 * hidden, dtype=dtype)[_gate_order(hidden)][None]  # [1, 4H, 4H] of 0 / 1
        weight = op.Constant(value=ir.tensor(reorder))
    # float16 W_hh (quantize_weights) beside float32 gates: ONNX's LSTM wants one dtype T.
    w_hh = a.w_hh if a.w_hh.dtype == a.gates_x.dtype else op.CastLike(a.w_hh, a.gates_x)
    recurrent = op.Unsqueeze(op.Gather(w_hh, order, axis=0), [0])  # [1, 4H, H]
    peephole = None
    if a.peephole is not None:  # ours [3, H] (w_ci, w_cf, w_co); ONNX's P [1, 3H] (i, o, f)
        peephole = op.Reshape(op.Gather(a.peephole, op.Constant(value_ints=[0, 2, 1]), axis=0), [1, -1])
    y, h_n, c_n = op.LSTM(
        x, weight, recurrent, bias, None, op.Unsqueeze(a.h0, [0]), op.Unsqueeze(a.c0, [0]), peephole,
        hidden_size=hidden, direction="reverse" if a.reverse else "forward",
    )
    return op.Squeeze(y, [1]), op.Squeeze(h_n, [0]), op.Squeeze(c_n, [0])


def onnx_translation_table() -> dict:
    """{lstm_fwd: its ONNX translation}, for torch.onnx.export's custom_translation_table= (merge
    it with your own entries, if any)."""
    return {torch.ops.torch_lstm_ext.lstm_fwd.default: lstm_fwd_to_onnx}
