"""The NumPy backend of the lstm_fwd / lstm_bwd ops: tensors in, NumPy kernels, tensors out.

The CPU default, and the float64 path on every device (the Triton kernels compute in fp32):
tensors on another device round-trip through host memory. The kernels compute in
`compute_dtype` (float64 stays, the rest runs in float32); results come back in the dtypes the
ops document (ops.py). `plain.py` runs when no variant is on, `variants.py` otherwise.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from torch_lstm_ext.dtypes import compute_dtype
from torch_lstm_ext.numpy_backend import plain, variants
from torch_lstm_ext.params import RecurrenceGrads, RecurrenceParams
from torch_lstm_ext.schedule import as_rows
from torch_lstm_ext.weight_quantization import dequantized_params


def _host(t: Tensor | None, dtype: torch.dtype) -> np.ndarray | None:
    """t as a host array of `dtype` (None stays None)."""
    if t is None:
        return None
    return t.detach().to(device="cpu", dtype=dtype).numpy()


def _host_rows(t: Tensor, dtype: torch.dtype) -> np.ndarray:
    return _host(as_rows(t), dtype)


def _back(a: np.ndarray | None, like: Tensor, dtype: torch.dtype) -> Tensor | None:
    return None if a is None else torch.from_numpy(a).to(device=like.device, dtype=dtype)


def _sizes(batch_sizes: Tensor | None) -> np.ndarray | None:
    return None if batch_sizes is None else batch_sizes.detach().cpu().numpy()


def lstm_forward(
    gates_x: Tensor, h0: Tensor, c0: Tensor, p: RecurrenceParams, batch_sizes: Tensor | None, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """lstm_fwd's results (ops.py) from the NumPy kernels."""
    acc = compute_dtype(gates_x.dtype)
    kernel = variants.lstm_variant_forward if p.variants.on else plain.lstm_forward
    # Quantized W_hh / W_hr: dequantized once for the call, as every step's GEMM reads them.
    arrays = dequantized_params(p.map_arrays(lambda t: _host(t, acc)))
    y, h_n, c_n, gates, cells = kernel(
        _host_rows(gates_x, acc), _host(h0, acc), _host(c0, acc), arrays, _sizes(batch_sizes), reverse,
    )
    lead = gates_x.shape[:-1]
    return (
        _back(y, gates_x, gates_x.dtype).reshape(*lead, y.shape[-1]),
        _back(h_n, h0, h0.dtype),
        _back(c_n, c0, c0.dtype),
        _back(gates, gates_x, acc).reshape(gates_x.shape),
        _back(cells, gates_x, acc).reshape(*lead, cells.shape[-1]),
    )


def lstm_backward(
    grad_y: Tensor, grad_hn: Tensor, grad_cn: Tensor, h0: Tensor, c0: Tensor, p: RecurrenceParams,
    batch_sizes: Tensor | None, reverse: bool, y: Tensor, gates: Tensor, cells: Tensor,
) -> RecurrenceGrads:
    """lstm_bwd's results (ops.py) from the NumPy kernels: gradients in their inputs' dtypes."""
    acc = gates.dtype
    kernel = variants.lstm_variant_backward if p.variants.on else plain.lstm_backward
    g = kernel(
        _host_rows(grad_y, acc), _host(grad_hn, acc), _host(grad_cn, acc), _host(h0, acc), _host(c0, acc),
        p.map_arrays(lambda t: _host(t, acc)), _sizes(batch_sizes), reverse,
        _host_rows(y, acc), _host_rows(gates, acc), _host_rows(cells, acc),
    )
    w = p.w_hh
    return RecurrenceGrads(
        _back(g.gates_x, grad_y, grad_y.dtype).reshape(gates.shape),
        _back(g.h0, h0, h0.dtype),
        _back(g.c0, c0, c0.dtype),
        *(_back(d, w, w.dtype) for d in g[3:]),
    )
