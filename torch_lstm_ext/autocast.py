"""LSTM and LSTMCell under torch.autocast: the dtypes torch.nn.LSTM / nn.LSTMCell compute in and
return, worked out in one place from the device type and the argument dtypes.

torch's autocast has no rule for `lstm` itself: it casts inside whichever kernel nn.LSTM's
dispatch (aten/src/ATen/native/RNN.cpp) picks, so the result dtypes follow that kernel's rule
(autocast_mode.cpp's op lists, cuDNN's wrapper aten/src/ATen/cudnn/AutocastRNN.cpp). With A the
autocast dtype:

- CPU, oneDNN path (see `_cpu_takes_onednn`): `mkldnn_rnn_layer` is lower_precision_fp, so the
  input, states and weights are cast to A, and output, h_n, c_n are A.
- CPU, otherwise (projection, ragged packed input, oneDNN off or unable): the native cell loop, in
  which only the GEMMs (linear, matmul) are autocast and the cell update promotes: c' = f*c + i*g
  is promote(A, c0's dtype); h' = o * tanh(c') likewise, or A when the projection GEMM makes it.
  nn.LSTMCell is this cell (CPU's lists have no lstm_cell).
- CUDA, cuDNN path (see `_cuda_takes_cudnn`): `_cudnn_rnn`'s autocast wrapper casts input, states
  and weights to float16, whatever A is (bfloat16 too): output, h_n, c_n are float16.
- CUDA, otherwise (cuDNN off): the native loop's matmuls and `_thnn_fused_lstm_cell` are
  lower_precision_fp: everything is A. nn.LSTMCell: `lstm_cell` is lower_precision_fp: A.
- float64 is never cast: with float64 GEMM operands the call runs in float64 (on the CPU a
  narrower c0 is promoted to it); validation.py refuses float64 mixed with the dtypes autocast
  does cast, which nn.LSTM's GEMMs refuse.

Where nn.LSTM's CPU kernels raise under autocast by accidents of their own, we return what the
rule above gives: oneDNN without fp16 LSTM kernels (most CPUs) under float16 autocast, and
bidirectional ragged packed input with h0 in the half type autocast does not use (the reverse
direction's torch.cat of state rows falls under the promote policy, which refuses that type).

We run the recurrence in the dtype nn.LSTM's GEMMs see (`run`) and cast the results to the dtypes
nn.LSTM returns. Where those are wider (CPU native path, float32 c0) little is lost: our kernels
keep the cell state in float32 between steps, so the only rounding nn.LSTM's float32 c_n does not
have is c_n's own, to A, on top of the gates it sums, which are rounded to A in both.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import Tensor

from torch_lstm_ext.projection import LayerWeights

# Whether oneDNN has bf16 / fp16 RNN kernels on this CPU (RNN.cpp's mkldnn_*_device_check), read
# once here: the CPU does not change, and torch.compile traces module-level constants.
_ONEDNN = torch.backends.mkldnn.is_available()
_ONEDNN_BF16 = _ONEDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported()
_ONEDNN_FP16 = _ONEDNN and torch.ops.mkldnn._is_mkldnn_fp16_supported()
# cuDNN's RNN takes bfloat16 from cuDNN 9.13 on sm_80+ (CUDAHooks::supportsBFloat16RNNWithCuDNN).
_CUDNN_BF16_RNN_VERSION = 91300


class AutocastDtypes(NamedTuple):
    """run: what input, states and weights are cast to for the recurrence; hidden: the dtype of
    output and h_n (LSTMCell: h'); cell: of c_n (LSTMCell: c')."""

    run: torch.dtype
    hidden: torch.dtype
    cell: torch.dtype


def enabled(device_type: str) -> bool:
    """Whether autocast is on for `device_type`, among the devices this package runs on."""
    return device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type)


def lstm_dtypes(data: Tensor, c0: Tensor, proj_size: int,
                batch_sizes: Tensor | None) -> AutocastDtypes | None:
    """nn.LSTM's dtypes for this call, or None outside autocast on data's device.

    data: the user's input, time-major [T, B, I] or packed [N, I] (batch_sizes int64 [T]); c0 the
    initial cell state [L*D, B, H]. Call after validation.check_lstm_forward_args.
    """
    device = data.device.type
    if not enabled(device):
        return None
    if data.dtype == torch.float64:  # validated: then everything is float64
        return AutocastDtypes(torch.float64, torch.float64, torch.float64)
    lower = torch.get_autocast_dtype(device)
    if device == "cuda":
        run = torch.float16 if _cuda_takes_cudnn(data) else lower
        return AutocastDtypes(run, run, run)
    if _cpu_takes_onednn(data, proj_size, batch_sizes):
        return AutocastDtypes(lower, lower, lower)
    cell = torch.promote_types(lower, c0.dtype)
    return AutocastDtypes(lower, lower if proj_size else cell, cell)


def cell_dtypes(input: Tensor, c: Tensor) -> AutocastDtypes | None:
    """nn.LSTMCell's dtypes for this call, or None outside autocast on input's device.

    input [B, I]; c [B, H]. Call after validation.check_cell_forward_args (on the CPU it lets a
    float64 c through with the GEMM operands in a cast dtype, as nn.LSTMCell does).
    """
    device = input.device.type
    if not enabled(device):
        return None
    gates = torch.float64 if input.dtype == torch.float64 else torch.get_autocast_dtype(device)
    if device == "cuda":
        return AutocastDtypes(gates, gates, gates)
    cell = torch.promote_types(gates, c.dtype)
    return AutocastDtypes(gates, cell, cell)


def _cpu_takes_onednn(data: Tensor, proj_size: int, batch_sizes: Tensor | None) -> bool:
    """Whether nn.LSTM runs this CPU call through oneDNN: RNN.cpp's use_mkldnn (on the user's
    input dtype: CPU autocast has no rule for lstm, so nothing is cast before it), for unpacked
    input or packed input whose batch sizes are all equal, never with a projection."""
    if not (_ONEDNN and torch.backends.mkldnn.enabled) or proj_size or data.numel() == 0:
        return False
    # Batch sizes never grow, so they are all equal when the last is the first.
    if batch_sizes is not None and int(batch_sizes[-1]) != int(batch_sizes[0]):
        return False
    dtype = data.dtype
    return (dtype == torch.float32 or (dtype == torch.bfloat16 and _ONEDNN_BF16)
            or (dtype == torch.float16 and _ONEDNN_FP16 and not torch.is_grad_enabled()))


def _cuda_takes_cudnn(data: Tensor) -> bool:
    """RNN.cpp's use_cudnn on the user's input (CUDA autocast casts only inside _cudnn_rnn)."""
    if not torch.backends.cudnn.enabled or data.numel() == 0:
        return False
    return _cudnn_takes(data.dtype == torch.bfloat16, data.device.index)


def _cudnn_takes(bfloat16: bool, device_index: int) -> bool:
    """Whether this build and GPU run cuDNN's RNN on such input: any float dtype, bfloat16 only
    from cuDNN 9.13 on sm_80+. Constants of the machine, so compiled code asks once."""
    if not torch.backends.cudnn.is_available():
        return False
    if not bfloat16:
        return True
    version = torch.backends.cudnn.version() or 0
    return version >= _CUDNN_BF16_RNN_VERSION and torch.cuda.get_device_capability(device_index)[0] >= 8


# What torch.compiler.assume_constant_result(_cudnn_takes) does (torch/_dynamo/decorators.py),
# without its `import torch._dynamo`, which costs ~1 s at import and made `import torch_lstm_ext`
# slow (tests/test_op_contract.py checks that Dynamo stays unimported).
_cudnn_takes._dynamo_marked_constant = True


# The LayerWeights fields a quantized LSTM stores quantized: dequantized where they are used.
_MATRICES = ("w_ih", "w_hh", "w_hr")


def cast_weights(weights: list[LayerWeights], dtype: torch.dtype,
                 keep_matrices: bool = False) -> list[LayerWeights]:
    """Every layer's weights (variant parameters too) in `dtype`, differentiably; with
    `keep_matrices` (a quantized LSTM), W_ih, W_hh and W_hr stay in their storage dtype."""
    return [
        LayerWeights(*(t if t is None or (keep_matrices and name in _MATRICES) else t.to(dtype)
                       for name, t in zip(LayerWeights._fields, w)))
        for w in weights
    ]


def suspended(device_type: str, dtypes: AutocastDtypes | None) -> contextlib.AbstractContextManager:
    """Autocast off for a call whose tensors `dtypes` already cast (our input GEMM must not recast
    them); a no-op outside autocast (dtypes None)."""
    return contextlib.nullcontext() if dtypes is None else torch.autocast(device_type, enabled=False)
