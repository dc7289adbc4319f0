"""Triton kernels of the LSTM recurrence, imported as torch_lstm_ext.triton_kernels.

lstm_forward / lstm_backward (recurrence.py) are the Triton backend of the lstm_fwd / lstm_bwd
ops. Kernels: per-step forward / backward (step_forward.py, step_backward.py) and persistent
forward / backward (persistent_forward.py, persistent_backward.py); dispatch.py picks one. The
variants (peephole, layer norm, zoneout, clipping) have per-step kernels of their own
(variant_step_forward.py, variant_step_backward.py, with variant_backward.py's whole-sequence
work and layer_norm.py's row reductions).
"""

from torch_lstm_ext.triton_kernels.recurrence import lstm_backward, lstm_forward

__all__ = ["lstm_backward", "lstm_forward"]
