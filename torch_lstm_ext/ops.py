"""The recurrence as two operators, `torch.ops.torch_lstm_ext.lstm_fwd` / `lstm_bwd`.

One layer, one direction. Registered with torch.library's low-level API (Library.define /
impl / register_fake): `torch.library.custom_op` imports Dynamo on its first call, which cost
~1 s of cold start. Their autograd and vmap rules are registered by autograd.py (the backward
is LSTMFunction's), so eager mode, torch.compile, torch.export and torch.func all see one
differentiable op. The backend is chosen here, inside the kernel, on real tensors (Dynamo never
sees the choice):

- numpy (numpy_backend/): the CPU default, and float64 on every device (the Triton kernels
  compute in fp32; other devices round-trip through host memory);
- triton (torch_lstm_ext.triton_kernels): the CUDA default; on CPU only under TRITON_INTERPRET=1.

Signatures (T time, B batch, H hidden, P output size, N = T*B or sum(batch_sizes)):
    lstm_fwd(gates_x, h0, c0, params, param_names, batch_sizes, reverse, cell_clip=None,
             grad_clip=None)
        -> y [..., P] (gates_x's dtype), h_n [B, P], c_n [B, H], gates [..., 4H], cells [..., H]
    lstm_bwd(grad_y, grad_hn, grad_cn, h0, c0, params, param_names, batch_sizes, reverse, y, gates,
             cells, cell_clip=None, grad_clip=None)
        -> d_gates_x, d_h0, d_c0, [d_weight for each weight in params, in their order]
gates_x [T, B, 4H] or packed [N, 4H]; h0 [B, P]; c0 [B, H]; batch_sizes int64 [T] on the CPU, or
None; params / param_names: the present tensors and their names, RecurrenceParams.op_args()
(names and shapes in params.py: w_hh always, then any of w_hr, peephole, ln_hh, ln_c, zoneout_c,
zoneout_h). gates (activated) and cells are saved for the backward, in the compute dtype
(float64, else float32). lstm_fwd ignores grad_clip: it is there so that the op's own autograd
(an exported program's backward) knows it. The weights are every param but the zoneout ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torch_lstm_ext import numpy_backend
from torch_lstm_ext.config import BACKEND_ENV, INTERPRETER_ENV, requested_backend, triton_interpreter_enabled
from torch_lstm_ext.dtypes import compute_dtype
from torch_lstm_ext.params import RecurrenceGrads, RecurrenceParams
from torch_lstm_ext.profiling import stage

_LIB = torch.library.Library("torch_lstm_ext", "DEF")
_LIB.define(
    "lstm_fwd(Tensor gates_x, Tensor h0, Tensor c0, Tensor[] params, str[] param_names, Tensor? batch_sizes, "
    "bool reverse, float? cell_clip=None, float? grad_clip=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_LIB.define(
    "lstm_bwd(Tensor grad_y, Tensor grad_hn, Tensor grad_cn, Tensor h0, Tensor c0, Tensor[] params, "
    "str[] param_names, Tensor? batch_sizes, bool reverse, Tensor y, Tensor gates, Tensor cells, "
    "float? cell_clip=None, float? grad_clip=None) -> (Tensor, Tensor, Tensor, Tensor[])"
)


def select_backend(t: Tensor) -> str:
    """'numpy' or 'triton' for the op's tensors like `t`, as TORCH_LSTM_EXT_BACKEND asks."""
    requested = requested_backend()
    if t.dtype == torch.float64:
        return "numpy"
    if requested == "auto":
        return "triton" if t.device.type == "cuda" else "numpy"
    if requested == "triton" and t.device.type == "cpu" and not triton_interpreter_enabled():
        raise RuntimeError(
            f"{BACKEND_ENV}=triton was requested for CPU tensors, which needs Triton's "
            f"interpreter: set {INTERPRETER_ENV}=1 before torch_lstm_ext is imported, or use "
            f"{BACKEND_ENV}=numpy"
        )
    return requested


def _backend(t: Tensor):
    if select_backend(t) == "triton":
        from torch_lstm_ext import triton_kernels  # imported on first use: Triton is slow to import

        return triton_kernels
    return numpy_backend


def _lstm_fwd(gates_x: Tensor, h0: Tensor, c0: Tensor, params: list[Tensor], param_names: list[str],
              batch_sizes: Tensor | None, reverse: bool, cell_clip: float | None = None,
              grad_clip: float | None = None):
    p = RecurrenceParams.from_op(params, param_names, cell_clip, None)
    with stage("recurrence"):
        return _backend(gates_x).lstm_forward(gates_x, h0, c0, p, batch_sizes, reverse)


def _lstm_bwd(grad_y: Tensor, grad_hn: Tensor, grad_cn: Tensor, h0: Tensor, c0: Tensor, params: list[Tensor],
              param_names: list[str], batch_sizes: Tensor | None, reverse: bool, y: Tensor, gates: Tensor,
              cells: Tensor, cell_clip: float | None = None, grad_clip: float | None = None):
    p = RecurrenceParams.from_op(params, param_names, cell_clip, grad_clip)
    if p.int8:
        raise RuntimeError("quantized LSTM is inference-only: lstm_bwd has no gradient for int8 weights")
    with stage("backward_recurrence"):
        grads = _backend(gates).lstm_backward(grad_y, grad_hn, grad_cn, h0, c0, p, batch_sizes, reverse, y,
                                              gates, cells)
    return grads.op_outputs(p)


for _device in ("CPU", "CUDA"):
    _LIB.impl("lstm_fwd", _lstm_fwd, _device)
    _LIB.impl("lstm_bwd", _lstm_bwd, _device)


@torch.library.register_fake("torch_lstm_ext::lstm_fwd", lib=_LIB)
def _lstm_fwd_fake(gates_x, h0, c0, params, param_names, batch_sizes, reverse, cell_clip=None,
                   grad_clip=None):
    acc = compute_dtype(gates_x.dtype)
    lead = gates_x.shape[:-1]
    return (
        gates_x.new_empty((*lead, h0.shape[-1])),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
        gates_x.new_empty(gates_x.shape, dtype=acc),
        gates_x.new_empty((*lead, c0.shape[-1]), dtype=acc),
    )


@torch.library.register_fake("torch_lstm_ext::lstm_bwd", lib=_LIB)
def _lstm_bwd_fake(grad_y, grad_hn, grad_cn, h0, c0, params, param_names, batch_sizes, reverse, y, gates,
                   cells, cell_clip=None, grad_clip=None):
    p = RecurrenceParams.from_op(params, param_names, cell_clip, grad_clip)
    w = p.w_hh

    def like(t: Tensor | None) -> Tensor | None:
        return None if t is None else w.new_empty(t.shape)

    v = p.variants
    return RecurrenceGrads(
        grad_y.new_empty(gates.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape), like(w), like(p.w_hr),
        like(v.peephole), like(v.ln_hh), like(v.ln_c),
    ).op_outputs(p)
