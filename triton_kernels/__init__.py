"""Triton kernels of the LSTM recurrence, imported as torch_lstm_ext.triton_kernels.

lstm_forward / lstm_backward (recurrence.py) are the Triton backend of the lstm_fwd / lstm_bwd
ops. Kernels: per-step forward / backward (step_forward.py, step_backward.py) and persistent
forward / backward (persistent_forward.py, persistent_backward.py); dispatch.py picks one.
"""

from torch_lstm_ext.triton_kernels.recurrence import lstm_backward, lstm_forward

__all__ = ["lstm_backward", "lstm_forward"]
