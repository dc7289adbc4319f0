"""The recurrence as two custom ops, `torch.ops.torch_lstm_ext.lstm_fwd` / `lstm_bwd`.

One layer, one direction. Both ops take any device; the backend is chosen here, inside the
kernel, on real tensors (Dynamo never sees the choice):

- numpy: `reference.py` (the CPU default; on CUDA tensors it round-trips through host memory),
- triton: `torch_lstm_ext.triton_kernels` (the CUDA default; on CPU only under TRITON_INTERPRET=1).

Shapes (T time, B batch, H hidden, P output size, N = T*B or sum(batch_sizes)):
    gates_x [T, B, 4H] or packed [N, 4H]; w_hh [4H, P]; w_hr [P, H] or None; h0 [B, P];
    c0 [B, H]; batch_sizes int64 [T] on the CPU, or None.
lstm_fwd returns y [..., P] (storage dtype), h_n [B, P], c_n [B, H], and for the backward the
activated gates [..., 4H] and the cells [..., H] in the compute dtype (float64 or float32).
lstm_bwd returns d_gates_x, d_w_hh, d_w_hr (an empty tensor without projection), d_h0, d_c0,
and the gradients of the variant parameters d_peephole, d_ln_hh_weight, d_ln_c (empty when off).

Variant inputs (all optional; see variant_reference.py for the equations): peephole [3, H]
(w_ci, w_cf, w_co), ln_hh_weight [4H], ln_c [2, H] (gain, bias), zoneout_c [..., H] and
zoneout_h [..., P] (per-row weight of the previous state), cell_clip, and for the backward
grad_clip. With all of them off the plain kernels run, unchanged.
"""

import numpy as np
import torch
from torch import Tensor

from torch_lstm_ext import reference
from torch_lstm_ext.config import BACKEND_ENV, INTERPRETER_ENV, requested_backend, triton_interpreter_enabled
from torch_lstm_ext.dtypes import compute_dtype
from torch_lstm_ext.profiling import stage
from torch_lstm_ext.schedule import as_rows
from torch_lstm_ext.variant_reference import Variants, lstm_variant_backward, lstm_variant_forward


def select_backend(device: torch.device) -> str:
    """'numpy' or 'triton' for tensors on `device`, as TORCH_LSTM_EXT_BACKEND asks."""
    requested = requested_backend()
    if requested == "auto":
        return "triton" if device.type == "cuda" else "numpy"
    if requested == "triton" and device.type == "cpu" and not triton_interpreter_enabled():
        raise RuntimeError(
            f"{BACKEND_ENV}=triton was requested for CPU tensors, which needs Triton's "
            f"interpreter: set {INTERPRETER_ENV}=1 before torch_lstm_ext is imported, or use "
            f"{BACKEND_ENV}=numpy"
        )
    return requested


def _as_numpy(t: Tensor | None, dtype: torch.dtype) -> np.ndarray | None:
    if t is None:
        return None
    return t.detach().to(device="cpu", dtype=dtype).numpy()


def _to_torch(a: np.ndarray | None, like: Tensor, dtype: torch.dtype) -> Tensor:
    if a is None:
        return like.new_empty(0)
    return torch.from_numpy(a).to(device=like.device, dtype=dtype)


def _batch_sizes_numpy(batch_sizes: Tensor | None) -> np.ndarray | None:
    return None if batch_sizes is None else batch_sizes.detach().cpu().numpy()


def _numpy_variants(acc: torch.dtype, peephole, ln_hh_weight, ln_c, zoneout_c, zoneout_h,
                    cell_clip, grad_clip=None) -> Variants:
    return Variants(
        _as_numpy(peephole, acc),
        _as_numpy(ln_hh_weight, acc),
        _as_numpy(ln_c, acc),
        None if zoneout_c is None else _as_numpy(as_rows(zoneout_c), acc),
        None if zoneout_h is None else _as_numpy(as_rows(zoneout_h), acc),
        cell_clip,
        grad_clip,
    )


@torch.library.custom_op("torch_lstm_ext::lstm_fwd", mutates_args=())
def lstm_fwd(
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    with stage("recurrence"):
        return _lstm_fwd(gates_x, w_hh, w_hr, h0, c0, batch_sizes, reverse,
                         (peephole, ln_hh_weight, ln_c, zoneout_c, zoneout_h, cell_clip))


def _lstm_fwd(gates_x, w_hh, w_hr, h0, c0, batch_sizes, reverse, variants):
    if select_backend(gates_x.device) == "triton":
        from torch_lstm_ext import triton_kernels

        return triton_kernels.lstm_forward(gates_x, w_hh, w_hr, h0, c0, batch_sizes, reverse, *variants)

    acc = compute_dtype(gates_x.dtype)
    args = (
        _as_numpy(as_rows(gates_x), acc),
        _as_numpy(w_hh, acc),
        _as_numpy(w_hr, acc),
        _as_numpy(h0, acc),
        _as_numpy(c0, acc),
        _batch_sizes_numpy(batch_sizes),
        reverse,
    )
    if any(v is not None for v in variants):
        y, h_n, c_n, gates, cells = lstm_variant_forward(*args, _numpy_variants(acc, *variants))
    else:
        y, h_n, c_n, gates, cells = reference.lstm_forward(*args)
    lead = gates_x.shape[:-1]
    return (
        _to_torch(y, gates_x, gates_x.dtype).reshape(*lead, y.shape[-1]),
        _to_torch(h_n, h0, h0.dtype),
        _to_torch(c_n, c0, c0.dtype),
        _to_torch(gates, gates_x, acc).reshape(gates_x.shape),
        _to_torch(cells, gates_x, acc).reshape(*lead, cells.shape[-1]),
    )


@lstm_fwd.register_fake
def _lstm_fwd_fake(gates_x, w_hh, w_hr, h0, c0, batch_sizes, reverse, *variants):
    acc = compute_dtype(gates_x.dtype)
    lead = gates_x.shape[:-1]
    return (
        gates_x.new_empty((*lead, h0.shape[-1])),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
        gates_x.new_empty(gates_x.shape, dtype=acc),
        gates_x.new_empty((*lead, c0.shape[-1]), dtype=acc),
    )


@torch.library.custom_op("torch_lstm_ext::lstm_bwd", mutates_args=())
def lstm_bwd(
    grad_y: Tensor,
    grad_hn: Tensor,
    grad_cn: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    batch_sizes: Tensor | None,
    reverse: bool,
    y: Tensor,
    gates: Tensor,
    cells: Tensor,
    peephole: Tensor | None = None,
    ln_hh_weight: Tensor | None = None,
    ln_c: Tensor | None = None,
    zoneout_c: Tensor | None = None,
    zoneout_h: Tensor | None = None,
    cell_clip: float | None = None,
    grad_clip: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    with stage("backward_recurrence"):
        return _lstm_bwd(grad_y, grad_hn, grad_cn, w_hh, w_hr, h0, c0, batch_sizes, reverse, y, gates,
                         cells, (peephole, ln_hh_weight, ln_c, zoneout_c, zoneout_h, cell_clip, grad_clip))


def _lstm_bwd(grad_y, grad_hn, grad_cn, w_hh, w_hr, h0, c0, batch_sizes, reverse, y, gates, cells,
              variants):
    if select_backend(grad_y.device) == "triton":
        from torch_lstm_ext import triton_kernels

        return triton_kernels.lstm_backward(
            grad_y, grad_hn, grad_cn, w_hh, w_hr, h0, c0, batch_sizes, reverse, y, gates, cells, *variants
        )

    acc = gates.dtype
    args = (
        _as_numpy(as_rows(grad_y), acc),
        _as_numpy(grad_hn, acc),
        _as_numpy(grad_cn, acc),
        _as_numpy(w_hh, acc),
        _as_numpy(w_hr, acc),
        _as_numpy(h0, acc),
        _as_numpy(c0, acc),
        _batch_sizes_numpy(batch_sizes),
        reverse,
        _as_numpy(as_rows(y), acc),
        _as_numpy(as_rows(gates), acc),
        _as_numpy(as_rows(cells), acc),
    )
    if any(v is not None for v in variants):
        d_gates, d_w_hh, d_w_hr, d_h0, d_c0, d_variants = lstm_variant_backward(
            *args, _numpy_variants(acc, *variants)
        )
    else:
        d_gates, d_w_hh, d_w_hr, d_h0, d_c0 = reference.lstm_backward(*args)
        d_variants = (None, None, None)
    return (
        _to_torch(d_gates, grad_y, grad_y.dtype).reshape(gates.shape),
        _to_torch(d_w_hh, w_hh, w_hh.dtype),
        _to_torch(d_w_hr, w_hh, w_hh.dtype),
        _to_torch(d_h0, h0, h0.dtype),
        _to_torch(d_c0, c0, c0.dtype),
        _to_torch(d_variants[0], w_hh, w_hh.dtype),
        _to_torch(d_variants[1], w_hh, w_hh.dtype),
        _to_torch(d_variants[2], w_hh, w_hh.dtype),
    )


@lstm_bwd.register_fake
def _lstm_bwd_fake(grad_y, grad_hn, grad_cn, w_hh, w_hr, h0, c0, batch_sizes, reverse, y, gates, cells,
                   peephole=None, ln_hh_weight=None, ln_c=None, *rest):
    def like(t: Tensor | None) -> Tensor:
        return w_hh.new_empty(t.shape if t is not None else (0,))

    return (
        grad_y.new_empty(gates.shape),
        w_hh.new_empty(w_hh.shape),
        like(w_hr),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
        like(peephole),
        like(ln_hh_weight),
        like(ln_c),
    )
