"""The float64 path of the Triton backend: the NumPy reference, through host memory.

The Triton kernels compute in fp32 (and fp64 tl.dot has no tensor-core path), so float64 on
CUDA (or under the interpreter) runs reference.py on the CPU (variant_reference.py when a variant
is on) and copies the results back to the tensors' device: exact float64 numerics, at host
speed. Same arguments and results as recurrence.lstm_forward / lstm_backward.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from torch_lstm_ext import reference
from torch_lstm_ext.triton_kernels.variant_args import Variants
from torch_lstm_ext.variant_reference import Variants as HostVariants
from torch_lstm_ext.variant_reference import lstm_variant_backward, lstm_variant_forward


def _host(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(device="cpu", dtype=torch.float64).numpy()


def _flat_host(t: Tensor) -> np.ndarray:
    return _host(t.reshape(-1, t.shape[-1]))


def _sizes(batch_sizes: Tensor | None) -> np.ndarray | None:
    return None if batch_sizes is None else batch_sizes.detach().cpu().numpy()


def _back(a: np.ndarray, like: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.from_numpy(a).to(device=like.device, dtype=dtype)


def _host_variants(v: Variants) -> HostVariants:
    return HostVariants(*(_host(t) for t in v[:5]), v.cell_clip, v.grad_clip)


def float64_forward(
    gates_x: Tensor, w_hh: Tensor, w_hr: Tensor | None, h0: Tensor, c0: Tensor,
    batch_sizes: Tensor | None, reverse: bool, v: Variants,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """See recurrence.lstm_forward; gates and cells come back in float64."""
    args = (_flat_host(gates_x), _host(w_hh), _host(w_hr), _host(h0), _host(c0), _sizes(batch_sizes), reverse)
    if v.on:
        y, h_n, c_n, gates, cells = lstm_variant_forward(*args, _host_variants(v))
    else:
        y, h_n, c_n, gates, cells = reference.lstm_forward(*args)
    lead = gates_x.shape[:-1]
    f64 = torch.float64
    return (
        _back(y, gates_x, gates_x.dtype).reshape(*lead, y.shape[-1]),
        _back(h_n, h0, h0.dtype),
        _back(c_n, c0, c0.dtype),
        _back(gates, gates_x, f64).reshape(gates_x.shape),
        _back(cells, gates_x, f64).reshape(*lead, cells.shape[-1]),
    )


def float64_backward(
    grad_y: Tensor, grad_hn: Tensor, grad_cn: Tensor, w_hh: Tensor, w_hr: Tensor | None,
    h0: Tensor, c0: Tensor, batch_sizes: Tensor | None, reverse: bool,
    y: Tensor, gates: Tensor, cells: Tensor, v: Variants,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """See recurrence.lstm_backward."""
    args = (
        _flat_host(grad_y), _host(grad_hn), _host(grad_cn), _host(w_hh), _host(w_hr), _host(h0),
        _host(c0), _sizes(batch_sizes), reverse, _flat_host(y), _flat_host(gates), _flat_host(cells),
    )
    if v.on:
        d_gates, d_w_hh, d_w_hr, d_h0, d_c0, d_variants = lstm_variant_backward(*args, _host_variants(v))
    else:
        d_gates, d_w_hh, d_w_hr, d_h0, d_c0 = reference.lstm_backward(*args)
        d_variants = (None, None, None)

    def weight_like(a: np.ndarray | None) -> Tensor:
        return w_hh.new_empty(0) if a is None else _back(a, w_hh, w_hh.dtype)

    return (
        _back(d_gates, grad_y, grad_y.dtype).reshape(gates.shape),
        weight_like(d_w_hh),
        weight_like(d_w_hr),
        _back(d_h0, h0, h0.dtype),
        _back(d_c0, c0, c0.dtype),
        *(weight_like(d) for d in d_variants),
    )
