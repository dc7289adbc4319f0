"""Triton kernels of the LSTM recurrence, imported as torch_lstm_ext.triton_kernels."""
