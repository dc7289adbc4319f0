"""Argument checks of LSTM and LSTMCell, with torch.nn.LSTM's / nn.LSTMCell's exception types and
messages."""

from __future__ import annotations

import numbers
import warnings

import torch
from torch import Tensor

from torch_lstm_ext.autocast import enabled as autocast_enabled
from torch_lstm_ext.weight_quantization import matrix_names


def check_lstm_config(
    input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size
) -> None:
    """The constructor checks of nn.LSTM (TypeError for wrong types, ValueError for values)."""
    float(dropout)  # nn.LSTM converts it first: TypeError for None, ValueError for "x"
    if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an "
            "element being zeroed"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
            f"expects num_layers greater than 1, but got dropout={dropout} and "
            f"num_layers={num_layers}",
            stacklevel=3,
        )
    if not isinstance(bias, bool):
        raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
    if not isinstance(batch_first, bool):
        raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
    if not isinstance(input_size, int):
        raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
    if input_size <= 0:
        raise ValueError("input_size must be greater than zero")
    if not isinstance(hidden_size, int):
        raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
    if hidden_size <= 0:
        raise ValueError("hidden_size must be greater than zero")
    if num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")


def two_states(hx, op: str) -> tuple[Tensor, Tensor]:
    """(h, c) from hx, checked as torch's `op` kernel ('lstm' or 'lstm_cell') checks it: a tuple or
    list of tensors (TypeError) holding exactly two (RuntimeError)."""
    if not isinstance(hx, (tuple, list)) or not all(isinstance(t, Tensor) for t in hx):
        raise TypeError(f"{op}(): argument 'hx' must be a tuple of Tensors, not {type(hx).__name__}")
    if len(hx) != 2:
        raise RuntimeError(f"{op} expects two hidden states")
    return hx[0], hx[1]


def lstm_hidden_states(hx, packed: bool, batched: bool) -> tuple[Tensor, Tensor]:
    """(h0, c0) from LSTM.forward's hx, with nn.LSTM's checks and exception types.

    For unpacked input nn.LSTM reads hx[0] and hx[1] first (IndexError when there are fewer)
    and checks their dims (RuntimeError); its kernel then wants a tuple of exactly two tensors.
    We hold every input kind to that, where nn.LSTM's unbatched and unsorted packed paths
    rebuild hx from hx[0] and hx[1] and silently drop anything after them.
    """
    if packed:
        h0, c0 = two_states(hx, "lstm")
        if h0.dim() != 3 or c0.dim() != 3:
            # nn.LSTM checks a packed input's states only in its kernel, which reads size(2).
            raise IndexError(
                f"For packed input, hx and cx should be 3-D but got ({h0.dim()}-D, {c0.dim()}-D) tensors"
            )
        return h0, c0
    expected = 3 if batched else 2
    if hx[0].dim() != expected or hx[1].dim() != expected:
        kind = "batched 3-D" if batched else "unbatched 2-D"
        raise RuntimeError(
            f"For {kind} input, hx and cx should also be {expected}-D but got "
            f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
        )
    return two_states(hx, "lstm")


def _input_dtype(module) -> torch.dtype | None:
    """The dtype an LSTM's or LSTMCell's forward takes input in: the weights' (nn.LSTM's rule;
    `module` may be one). For a quantized module, the dtype of its float tensors (int8 scales,
    biases, variant parameters), or None (any floating dtype) when it has none (float16 weights
    without bias or variants)."""
    names = matrix_names(module)
    if getattr(module, "weight_quantization", None) is None:
        return getattr(module, names[0]).dtype
    # The quantized matrices are buffers: the parameters and scales are what stays float.
    floats = [t for name, t in (*module.named_parameters(), *module.named_buffers()) if name not in names]
    return floats[0].dtype if floats else None


def _check_floating(input: Tensor, expected: torch.dtype | None) -> None:
    """A quantized module without float tensors (expected None) takes any floating input."""
    if expected is None and not input.is_floating_point():
        raise ValueError(f"input must be floating point, got {input.dtype}")


def check_lstm_forward_args(
    lstm, data: Tensor, h0: Tensor, c0: Tensor, batch: int, packed: bool
) -> None:
    """nn.LSTM's forward checks on the time-major input and 3-D states.

    data: [T, B, I] or packed [N, I]; h0 [L*D, B, P]; c0 [L*D, B, H].
    """
    weight_dtype = _input_dtype(lstm)
    autocast = autocast_enabled(data.device.type)
    _check_floating(data, weight_dtype)
    if weight_dtype is not None and data.dtype != weight_dtype and not autocast:
        # nn.LSTM checks a packed input's dtype only in its kernel, which raises RuntimeError.
        raise (RuntimeError if packed else ValueError)(
            f"RNN input dtype ({data.dtype}) does not match weight dtype ({weight_dtype}). "
            f"Convert input: input.to({weight_dtype}), or convert model: model.to({data.dtype})"
        )
    expected_dim = 2 if packed else 3
    if data.dim() != expected_dim:
        raise RuntimeError(f"input must have {expected_dim} dimensions, got {data.dim()}")
    if data.size(-1) != lstm.input_size:
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. Expected {lstm.input_size}, "
            f"got {data.size(-1)}"
        )
    layers = lstm.num_layers * (2 if lstm.bidirectional else 1)
    expected_h = (layers, batch, lstm.proj_size or lstm.hidden_size)
    expected_c = (layers, batch, lstm.hidden_size)
    if tuple(h0.shape) != expected_h:
        raise RuntimeError(f"Expected hidden[0] size {expected_h}, got {list(h0.shape)}")
    if tuple(c0.shape) != expected_c:
        raise RuntimeError(f"Expected hidden[1] size {expected_c}, got {list(c0.shape)}")
    if not packed and data.size(0) == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    for name, state in (("hx", h0), ("cx", c0)):
        if state.dtype != data.dtype and not autocast:
            raise RuntimeError(
                f"Expected {name} to have the same dtype as input ({data.dtype}), got {state.dtype}"
            )
        if state.device != data.device:
            raise RuntimeError(
                f"Expected {name} to be on the same device as input ({data.device}), "
                f"got {state.device}"
            )
    if autocast:
        # A quantized LSTM's matrices are dequantized to the autocast dtype where they are used.
        quantized = getattr(lstm, "weight_quantization", None) is not None
        weights = {n: w for n, w in zip(lstm._flat_weights_names, lstm._flat_weights)
                   if w is not None and not (quantized and not n.startswith("bias"))}
        gemm = {"input": data, "hx": h0, **weights}
        if data.device.type == "cpu":
            # c0 meets only the cell update, which promotes: fine with float64 GEMMs, but a
            # float64 c0 next to cast GEMMs makes h float64, which the next step's GEMM refuses.
            _check_autocast_dtypes("LSTM", gemm, {"cx": c0})
            if c0.dtype == torch.float64 and data.dtype != torch.float64:
                raise RuntimeError(
                    f"LSTM under autocast: cx float64 but input {data.dtype}: autocast does not cast "
                    "float64, so the recurrent GEMM would mix dtypes; make them all float64 or none"
                )
        else:  # cuDNN's autocast wrapper casts c0 with the rest
            _check_autocast_dtypes("LSTM", {**gemm, "cx": c0}, {})
    # nn.LSTM's constructor takes these as given; its kernel's argument parser refuses them.
    if not isinstance(lstm.bidirectional, bool):
        raise TypeError(f"bidirectional should be of type bool, got: {type(lstm.bidirectional).__name__}")
    if isinstance(lstm.num_layers, bool):
        raise TypeError("num_layers should be of type int, got: bool")


def check_cell_forward_args(cell, input: Tensor, h: Tensor, c: Tensor) -> None:
    """The checks nn.LSTMCell's kernel makes, with its exception type (RuntimeError).

    input [B, I]; h, c [B, H].
    """
    if input.size(1) != cell.input_size:
        raise RuntimeError(
            f"input has inconsistent input_size: got {input.size(1)} expected {cell.input_size}"
        )
    for idx, state in enumerate((h, c)):
        if state.size(0) != input.size(0):
            raise RuntimeError(
                f"Input batch size {input.size(0)} doesn't match hidden{idx} batch size {state.size(0)}"
            )
        if state.size(1) != cell.hidden_size:
            raise RuntimeError(
                f"hidden{idx} has inconsistent hidden_size: got {state.size(1)}, expected {cell.hidden_size}"
            )
    autocast = autocast_enabled(input.device.type)
    weight_dtype = _input_dtype(cell)
    _check_floating(input, weight_dtype)
    for t in (input, h, c):
        if weight_dtype is not None and t.dtype != weight_dtype and not autocast:
            raise RuntimeError(f"expected scalar type {weight_dtype} but found {t.dtype}")
        if t.device != cell.weight_ih.device:
            raise RuntimeError(
                f"Expected all tensors to be on the same device as the weights ({cell.weight_ih.device}), "
                f"got {t.device}"
            )
    if autocast:
        # On the CPU nn.LSTMCell's c only meets the gates in the (promoting) cell update; on CUDA
        # its lstm_cell kernel sees every tensor.
        gemm = {"input": input, "hx": h}
        # A quantized cell's matrices are dequantized to the autocast dtype where they are used.
        names = ("bias_ih", "bias_hh") if cell.weight_quantization is not None else (
            "weight_ih", "weight_hh", "bias_ih", "bias_hh")
        for name in names:
            if getattr(cell, name) is not None:
                gemm[name] = getattr(cell, name)
        on_cpu = input.device.type == "cpu"
        _check_autocast_dtypes("LSTMCell", gemm if on_cpu else {**gemm, "cx": c}, {"cx": c} if on_cpu else {})


def _check_autocast_dtypes(op: str, gemm: dict[str, Tensor], others: dict[str, Tensor]) -> None:
    """Under autocast nn.LSTM / nn.LSTMCell take any mix of floating dtypes, as autocast casts the
    GEMM operands `gemm` (weights included) to one dtype. It leaves float64 as it is, so float64
    runs only with every GEMM operand float64: a mix fails in nn.LSTM's GEMMs (RuntimeError).
    `others` (tensors no GEMM reads) only need to be floating point."""
    for name, t in {**gemm, **others}.items():
        if not t.is_floating_point():
            raise RuntimeError(f"{op} under autocast: expected {name} to be floating point, got {t.dtype}")
    wide = [name for name, t in gemm.items() if t.dtype == torch.float64]
    narrow = [f"{name} ({t.dtype})" for name, t in gemm.items() if t.dtype != torch.float64]
    if wide and narrow:
        raise RuntimeError(
            f"{op} under autocast: {', '.join(wide)} float64 but {', '.join(narrow)} not: autocast "
            "does not cast float64, so the GEMMs would mix dtypes; make them all float64 or none"
        )
