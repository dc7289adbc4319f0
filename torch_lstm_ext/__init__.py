"""torch_lstm_ext: a fast, compile-friendly drop-in replacement for torch.nn.LSTM."""

from torch_lstm_ext import init, quantization  # noqa: F401  quantization wraps quantize_dynamic on import
from torch_lstm_ext.autograd import LSTMFunction, lstm_layer
from torch_lstm_ext.module import LSTM, LSTMCell
from torch_lstm_ext.onnx_export import onnx_translation_table as onnx_translation_table
from torch_lstm_ext.pruning import prune_hidden_units, prune_linear_inputs
from torch_lstm_ext.replace import replace_lstm
from torch_lstm_ext.weight_quantization import quantize_weights

__all__ = ["LSTM", "LSTMCell", "LSTMFunction", "init", "lstm_layer", "prune_hidden_units",
           "prune_linear_inputs", "quantize_weights", "replace_lstm"]
