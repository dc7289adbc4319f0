"""`LSTM` and `LSTMCell`: drop-in replacements for torch.nn.LSTM / torch.nn.LSTMCell.

Plain nn.Modules (not RNNBase subclasses, which Dynamo refuses to trace) with nn.LSTM's
constructor, validation, parameter names, order and initialisation, and forward contract.
Weights are read by name on every call, so in-place edits, reassigned Parameters and
torch.func.functional_call take effect at once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence

from torch_lstm_ext import autocast, functional, weight_quantization
from torch_lstm_ext.projection import LayerWeights
from torch_lstm_ext.validation import (
    check_cell_forward_args,
    check_lstm_config,
    check_lstm_forward_args,
    lstm_hidden_states,
    two_states,
)
from torch_lstm_ext.variants import VariantConfig, variant_parameter_shapes


class _StorageChecked(nn.Module):
    """LSTM's and LSTMCell's load_state_dict refuses matrices stored otherwise than its own
    (weight_quantization.storage_mismatches), before copying anything: the module stays as it was."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        refused = weight_quantization.storage_mismatches(self, state_dict, prefix)
        if refused:
            error_msgs.extend(refused)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class LSTM(_StorageChecked):
    """Multi-layer LSTM with torch.nn.LSTM's constructor, parameters and forward.

    forward(input, hx=None) -> (output, (h_n, c_n)), input [T, B, I] ([B, T, I] with
    batch_first), unbatched [T, I], or a PackedSequence; hx = (h0 [L*D, B, P], c0 [L*D, B, H]).

    Keyword-only variants (all off by default; see README and differentiable_recurrence.py):
    peephole, layer_norm, zoneout_cell, zoneout_hidden, weight_dropout, cell_clip, grad_clip,
    checkpoint. Their parameters are registered after nn.LSTM's, so with the same seed the
    shared parameters are initialised exactly as nn.LSTM's.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        peephole: bool = False,
        layer_norm: bool = False,
        zoneout_cell: float = 0.0,
        zoneout_hidden: float = 0.0,
        weight_dropout: float = 0.0,
        cell_clip: float | None = None,
        grad_clip: float | None = None,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        check_lstm_config(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size)
        variants = VariantConfig(peephole, layer_norm, zoneout_cell, zoneout_hidden, weight_dropout,
                                 cell_clip, grad_clip, checkpoint)
        self._set_config(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, variants)
        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        for index, names in enumerate(self._all_weights):
            layer = index // directions
            for name in names:
                setattr(self, name, nn.Parameter(torch.empty(self._param_shape(name, layer), **factory)))
        for suffix in self._suffixes():
            for prefix, shape in variant_parameter_shapes(variants, hidden_size).items():
                setattr(self, f"{prefix}_{suffix}", nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    def _set_config(self, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                    bidirectional, proj_size, variants: VariantConfig) -> None:
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.variants = variants
        # torch.int8 / torch.float16 after weight_quantization.quantize_weights, else None.
        self.weight_quantization: torch.dtype | None = None
        self._all_weights = _parameter_names(num_layers, bidirectional, bias, proj_size)
        self._flat_weights_names = [name for names in self._all_weights for name in names]

    def _suffixes(self) -> list[str]:
        """'l{k}' / 'l{k}_reverse' per layer and direction, in parameter order."""
        return [names[0][len("weight_ih_") :] for names in self._all_weights]

    def _param_shape(self, name: str, layer: int) -> tuple[int, ...]:
        gates = 4 * self.hidden_size
        out = self.proj_size or self.hidden_size
        directions = 2 if self.bidirectional else 1
        if name.startswith("weight_ih"):
            return (gates, self.input_size if layer == 0 else out * directions)
        if name.startswith("weight_hh"):
            return (gates, out)
        if name.startswith("weight_hr"):
            return (self.proj_size, self.hidden_size)
        return (gates,)

    @classmethod
    def from_torch(cls, lstm: nn.LSTM) -> LSTM:
        """An LSTM sharing `lstm`'s Parameter objects, config and train/eval mode.

        Consumes no random numbers and copies no data: optimizers built on `lstm`'s
        parameters keep working, and state_dict keys are unchanged.
        """
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._set_config(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias,
                           lstm.batch_first, lstm.dropout, lstm.bidirectional, lstm.proj_size,
                           VariantConfig())
        for name in module._flat_weights_names:
            setattr(module, name, getattr(lstm, name))
        module.train(lstm.training)
        return module

    def reset_parameters(self) -> None:
        """nn.LSTM's init: every weight ~ U(-1/sqrt(H), 1/sqrt(H)) in registration order, peephole
        weights included; layer-norm gains 1 and biases 0."""
        if self.weight_quantization is not None:
            raise RuntimeError("a quantized LSTM cannot be re-initialised: initialise a float LSTM, then "
                               "quantize it")
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, weight in self.named_parameters():
            if name.startswith("ln_"):
                nn.init.constant_(weight, 0.0 if "_bias_" in name else 1.0)
            else:
                nn.init.uniform_(weight, -bound, bound)

    def flatten_parameters(self) -> None:
        """No-op, kept for nn.LSTM compatibility (there is no cuDNN weight buffer to pack)."""

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    @property
    def _flat_weights(self) -> list[Tensor | None]:
        """nn.LSTM's private list of the current weights in `_flat_weights_names` order (None for
        a missing one), which third-party code reads: weight-drop wrappers, the weight-norm and
        pruning tests. Read by name on each access, so it follows reassigned Parameters,
        weight_norm, pruning, parametrizations and .to() with no cache to refresh (nn.LSTM
        refreshes its cache at the next forward)."""
        return [getattr(self, name, None) for name in self._flat_weights_names]

    @_flat_weights.setter
    def _flat_weights(self, weights: list[Tensor | None]) -> None:
        # Weight-drop wrappers swap a weight attribute, then rebuild nn.LSTM's cache with
        # `lstm._flat_weights = [getattr(lstm, n) for n in lstm._flat_weights_names]`. We read
        # weights by name, so such a list is accepted as is; one naming other tensors than the
        # attributes (which nn.LSTM would compute with) is refused rather than ignored. A
        # parametrized weight is a fresh tensor on every read, and nn.LSTM recomputes it at
        # every forward too, so its entry is not compared.
        current = self._flat_weights
        if len(weights) != len(current) or any(
            new is not old and not parametrize.is_parametrized(self, name)
            for name, new, old in zip(self._flat_weights_names, weights, current)
        ):
            raise ValueError(
                "LSTM reads its weights by name: assign the weight attributes (e.g. "
                "setattr(lstm, 'weight_hh_l0', w)) instead of _flat_weights entries that differ from them"
            )

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        s = s.format(**self.__dict__)
        for name in self.variants.active():
            s += f", {name}={getattr(self.variants, name)}"
        if self.weight_quantization is not None:
            s += f", weight_quantization={self.weight_quantization}"
        return s

    def _layer_weights(self) -> list[LayerWeights]:
        def get(name: str) -> Tensor:
            return getattr(self, name)

        def scale(name: str) -> Tensor | None:
            return getattr(self, name + weight_quantization.SCALE_SUFFIX, None)

        v = self.variants
        result = []
        for suffix in self._suffixes():
            result.append(LayerWeights(
                get("weight_ih_" + suffix),
                get("weight_hh_" + suffix),
                get("bias_ih_" + suffix) if self.bias else None,
                get("bias_hh_" + suffix) if self.bias else None,
                get("weight_hr_" + suffix) if self.proj_size else None,
                (torch.stack([get(f"weight_{g}_{suffix}") for g in ("ci", "cf", "co")])
                 if v.peephole else None),
                get("ln_ih_weight_" + suffix) if v.layer_norm else None,
                get("ln_hh_weight_" + suffix) if v.layer_norm else None,
                (torch.stack([get("ln_c_weight_" + suffix), get("ln_c_bias_" + suffix)])
                 if v.layer_norm else None),
                scale("weight_ih_" + suffix),
                scale("weight_hh_" + suffix),
                scale("weight_hr_" + suffix),
            ))
        return result

    def forward(self, input, hx=None):
        directions = 2 if self.bidirectional else 1
        out_size = self.proj_size or self.hidden_size
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0])
            is_batched = True
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            data, batch_sizes, sorted_indices, unsorted_indices = input, None, None, None
            is_batched = input.dim() == 3
            if not is_batched:
                data = data.unsqueeze(0 if self.batch_first else 1)
            if self.batch_first:
                data = data.transpose(0, 1)
            batch = data.size(1)

        if hx is None:
            shape = (self.num_layers * directions, batch)
            h0 = torch.zeros(*shape, out_size, dtype=data.dtype, device=data.device)
            c0 = torch.zeros(*shape, self.hidden_size, dtype=data.dtype, device=data.device)
        else:
            h0, c0 = lstm_hidden_states(hx, packed, is_batched)
            if not is_batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        check_lstm_forward_args(self, data, h0, c0, batch, packed)
        weight_quantization.check_inference(self, [data, h0, c0])
        if self.weight_quantization is not None and self.training and self.variants.weight_dropout:
            raise RuntimeError("quantized LSTM: weight_dropout needs float weights; call .eval() first")
        if sorted_indices is not None:
            h0, c0 = h0.index_select(1, sorted_indices), c0.index_select(1, sorted_indices)

        weights = self._layer_weights()
        # Under autocast: run in the dtype nn.LSTM's GEMMs see and return the dtypes it returns.
        dtypes = autocast.lstm_dtypes(data, c0, self.proj_size, batch_sizes)
        if dtypes is not None:
            data, h0, c0 = data.to(dtypes.run), h0.to(dtypes.run), c0.to(dtypes.run)
            weights = autocast.cast_weights(weights, dtypes.run,
                                            keep_matrices=self.weight_quantization is not None)
        with autocast.suspended(data.device.type, dtypes):
            output, h_n, c_n = functional.lstm(
                data, h0, c0, weights, self.num_layers, self.dropout, self.training,
                self.bidirectional, batch_sizes, self.variants,
            )
        if dtypes is not None:
            output, h_n, c_n = output.to(dtypes.hidden), h_n.to(dtypes.hidden), c_n.to(dtypes.cell)

        if unsorted_indices is not None:
            h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
        if packed:
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)


def _parameter_names(num_layers: int, bidirectional: bool, bias: bool, proj_size: int) -> list[list[str]]:
    """nn.LSTM's parameter names per (layer, direction), in its registration order."""
    names = []
    for layer in range(num_layers):
        for suffix in ("", "_reverse")[: 2 if bidirectional else 1]:
            kinds = ["weight_ih", "weight_hh"]
            if bias:
                kinds += ["bias_ih", "bias_hh"]
            if proj_size > 0:
                kinds.append("weight_hr")
            names.append([f"{kind}_l{layer}{suffix}" for kind in kinds])
    return names


class LSTMCell(_StorageChecked):
    """torch.nn.LSTMCell's contract: forward(input [B, I] or [I], hx=(h [B, H], c [B, H])) -> (h', c')."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.weight_quantization: torch.dtype | None = None  # as LSTM's
        self.weight_ih = nn.Parameter(torch.empty((4 * hidden_size, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((4 * hidden_size, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    @classmethod
    def from_torch(cls, cell: nn.LSTMCell) -> LSTMCell:
        """An LSTMCell sharing `cell`'s Parameter objects (no copies, no random numbers)."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.input_size, module.hidden_size, module.bias = cell.input_size, cell.hidden_size, cell.bias
        module.weight_quantization = None
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            value = getattr(cell, name)
            if value is None:
                module.register_parameter(name, None)
            else:
                setattr(module, name, value)
        module.train(cell.training)
        return module

    def reset_parameters(self) -> None:
        if self.weight_quantization is not None:
            raise RuntimeError("a quantized LSTMCell cannot be re-initialised: initialise a float LSTMCell, "
                               "then quantize it")
        # nn.LSTMCell takes hidden_size=0 (its weights are empty then).
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.weight_quantization is not None:
            s += ", weight_quantization={weight_quantization}"
        return s.format(**self.__dict__)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(
                        f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead"
                    )
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            h, c = zeros, zeros
        elif is_batched:
            h, c = two_states(hx, "lstm_cell")
        else:
            # nn.LSTMCell reads hx[0] and hx[1] first here: IndexError when there are fewer.
            h, c = hx[0].unsqueeze(0), hx[1].unsqueeze(0)
            two_states(hx, "lstm_cell")
        check_cell_forward_args(self, input, h, c)
        weight_quantization.check_inference(self, [input, h, c])
        w_ih, w_hh, b_ih, b_hh = self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        w_ih_scale = getattr(self, "weight_ih" + weight_quantization.SCALE_SUFFIX, None)
        w_hh_scale = getattr(self, "weight_hh" + weight_quantization.SCALE_SUFFIX, None)
        # Under autocast, as in LSTM.forward, with nn.LSTMCell's dtypes.
        dtypes = autocast.cell_dtypes(input, c)
        if dtypes is not None:
            input, h, c = (t.to(dtypes.run) for t in (input, h, c))
            if self.weight_quantization is None:  # quantized weights are dequantized where used
                w_ih, w_hh = w_ih.to(dtypes.run), w_hh.to(dtypes.run)
            b_ih, b_hh, w_ih_scale, w_hh_scale = (None if t is None else t.to(dtypes.run)
                                                  for t in (b_ih, b_hh, w_ih_scale, w_hh_scale))
        with autocast.suspended(input.device.type, dtypes):
            weights = LayerWeights(w_ih, w_hh, b_ih, b_hh, None, w_ih_scale=w_ih_scale, w_hh_scale=w_hh_scale)
            h_new, c_new = functional.lstm_cell(input, h, c, weights)
        if dtypes is not None:
            h_new, c_new = h_new.to(dtypes.hidden), c_new.to(dtypes.cell)
        if not is_batched:
            return h_new.squeeze(0), c_new.squeeze(0)
        return h_new, c_new

