"""Weight-only quantization of our LSTM and LSTMCell for inference: `quantize_weights(model, dtype)`.

int8: each of W_ih [4H, I], W_hh [4H, P] and W_hr [P, H] is stored as int8 values q with one
scale per output row, symmetric: scale = max|W_row| / 127, q = round(W / scale) in [-127, 127],
and the LSTM computes with W = q * scale[:, None] (`dequantize`, the one home of that equation;
the Triton kernels apply the same scale to each output column of their fp32 dot). float16: the
three matrices are stored in float16. Biases and variant parameters stay as they are, and the
math runs in the compute dtype of the input (float32, or float64 for a float64 module).

The quantized matrices are buffers under the weights' names (`weight_hh_l0`, ...), the int8
scales buffers named `<weight>_scale`, so the state_dict holds exactly what the model computes
with and loads into a model quantized the same way. Where the weights go:

- W_ih: the input projection (one GEMM per layer in torch) dequantizes it per layer call into a
  transient matrix of the input's dtype (projection.py);
- W_hh, W_hr: travel quantized in the ops' parameter list (params.py: w_hh_scale, w_hr_scale).
  The NumPy backend dequantizes them once per call (its BLAS GEMMs need float operands, and the
  step loop reuses them T times); the Triton kernels load int8 or float16 and convert in
  registers.

No int8 GEMM: weight-only quantization keeps the activations in floating point (an int8 GEMM
would need them quantized too, which changes the numbers beyond the weights' rounding: 3e-3
relative per step's GEMM, scripts/int8_gemm_bench.py, which also times the three ways).

A quantized LSTM (or LSTMCell, the same way) is inference-only: its remaining parameters are
frozen (requires_grad False) and forward raises RuntimeError when autograd would record it
(`check_inference`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from torch_lstm_ext.params import RecurrenceParams

# The storage dtypes quantize_weights offers.
QUANTIZED_DTYPES = (torch.int8, torch.float16)
INT8_MAX = 127
SCALE_SUFFIX = "_scale"


def quantize_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: w [R, C] -> (q int8 [R, C], scale [R] in w's dtype).

    A row of zeros gets scale 1 (q = 0), so that dequantize never divides and gives it back.
    """
    peak = w.detach().abs().amax(dim=1)
    scale = torch.where(peak > 0, peak / INT8_MAX, torch.ones_like(peak))
    q = torch.round(w.detach() / scale[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def dequantize(values: Any, scale: Any) -> Any:
    """W = values * scale[:, None]: values [R, C] already in the compute dtype (torch or NumPy),
    scale [R], or None for float16 storage (values returned as they are)."""
    return values if scale is None else values * scale[:, None]


def dequantized_matrix(values: Tensor, scale: Tensor | None, dtype: torch.dtype) -> Tensor:
    """A stored matrix (int8 with its scales, or float) as a `dtype` tensor."""
    return dequantize(values.to(dtype), None if scale is None else scale.to(dtype))


def dequantized_params(p: RecurrenceParams) -> RecurrenceParams:
    """p (NumPy arrays or tensors, the weights already in the compute dtype) with W_hh and W_hr
    dequantized and no scales."""
    w_hr = None if p.w_hr is None else dequantize(p.w_hr, p.w_hr_scale)
    return p._replace(w_hh=dequantize(p.w_hh, p.w_hh_scale), w_hr=w_hr, w_hh_scale=None, w_hr_scale=None)


def matrix_names(module) -> list[str]:
    """The names of the matrices quantize_weights converts, in parameter order: W_ih, W_hh and
    W_hr of every layer and direction of an LSTM (ours or nn.LSTM), or an LSTMCell's two."""
    names = getattr(module, "_flat_weights_names", ["weight_ih", "weight_hh"])
    return [name for name in names if name.startswith(("weight_ih", "weight_hh", "weight_hr"))]


def check_inference(module, inputs: list[Tensor]) -> None:
    """RuntimeError when a quantized LSTM / LSTMCell would run where autograd records: it has no
    backward. `inputs`: the call's tensors (input, states)."""
    if module.weight_quantization is None:
        return
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*inputs, *module.parameters())):
        raise RuntimeError(
            f"quantized {type(module).__name__} is inference-only (weights in {module.weight_quantization}): "
            "it has no backward. Call it under torch.no_grad() or torch.inference_mode(), or with inputs "
            "and parameters that do not require grad"
        )


def storage_mismatches(module, state_dict: dict, prefix: str) -> list[str]:
    """load_state_dict's error messages for matrices of `state_dict` stored otherwise than
    `module`'s: load_state_dict copies into the existing tensors, which casts, so a float weight
    would land in a quantized buffer and int8 values (without their scales) in a float
    Parameter. float16 values load into a float module, as into nn.LSTM (exactly)."""
    errors = []
    for name in matrix_names(module):
        key = prefix + name
        if key in state_dict:
            have, given = getattr(module, name).dtype, state_dict[key].dtype
            if have != given and (module.weight_quantization is not None or given == torch.int8):
                errors.append(f"{key}: the checkpoint holds {given} but this module {have}; load a "
                              "quantized state_dict into a module quantized the same way "
                              "(torch_lstm_ext.quantize_weights)")
    return errors


def quantize_weights(model: nn.Module, dtype: torch.dtype = torch.int8) -> nn.Module:
    """Convert in place every torch_lstm_ext.LSTM and LSTMCell in `model` (`model` itself too,
    if it is one) to weight-only int8 or float16 inference; returns `model`.

    Raises ValueError for another dtype, for an LSTM already quantized or with parametrized
    weights (weight_norm, pruning masks: quantize after removing them), and TypeError for
    weights that are not floating point.
    """
    from torch_lstm_ext.module import LSTM, LSTMCell  # module.py imports this file

    if dtype not in QUANTIZED_DTYPES:
        raise ValueError(f"quantize_weights: dtype must be torch.int8 or torch.float16, got {dtype}")
    lstms = [m for m in model.modules() if isinstance(m, (LSTM, LSTMCell))]
    for lstm in lstms:  # every check before the first change: a refusal leaves the model as it was
        _check_quantizable(lstm, dtype)
    for lstm in lstms:
        _quantize_lstm(lstm, dtype)
    return model


def _check_quantizable(lstm, dtype: torch.dtype) -> None:
    if lstm.weight_quantization is not None:
        raise ValueError(f"quantize_weights: this {type(lstm).__name__} is already quantized "
                         f"({lstm.weight_quantization})")
    for name in matrix_names(lstm):
        if parametrize.is_parametrized(lstm, name):
            raise ValueError(f"quantize_weights: {name} is parametrized; remove the parametrization "
                             "(torch.nn.utils.parametrize.remove_parametrizations) first")
        weight = getattr(lstm, name)
        if not weight.is_floating_point():
            raise TypeError(f"quantize_weights: {name} is {weight.dtype}, expected floating point")
        if dtype == torch.float16 and weight.detach().abs().amax() > torch.finfo(torch.float16).max:
            raise ValueError(f"quantize_weights: {name} holds values beyond float16's range")


def _quantize_lstm(lstm, dtype: torch.dtype) -> None:
    for name in matrix_names(lstm):
        weight = getattr(lstm, name).detach()
        delattr(lstm, name)  # a Parameter: a buffer takes the name
        if dtype == torch.int8:
            q, scale = quantize_rows(weight)
            lstm.register_buffer(name, q)
            lstm.register_buffer(name + SCALE_SUFFIX, scale)
        else:
            lstm.register_buffer(name, weight.to(torch.float16))
    for p in lstm.parameters():
        p.requires_grad_(False)
    lstm.weight_quantization = dtype
