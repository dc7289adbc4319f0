"""Environment variables read by torch_lstm_ext: the one place they are defined.

Read on every call (never cached, never traced by Dynamo: only the op kernels read them), so a
test or a user can switch backends between calls.
"""

from __future__ import annotations

import os

BACKEND_ENV = "TORCH_LSTM_EXT_BACKEND"
BACKENDS = ("auto", "numpy", "triton")
INTERPRETER_ENV = "TRITON_INTERPRET"


def requested_backend() -> str:
    """The backend asked for by TORCH_LSTM_EXT_BACKEND: 'auto' (default), 'numpy' or 'triton'."""
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def triton_interpreter_enabled() -> bool:
    """True when Triton kernels run on the CPU through Triton's interpreter."""
    return os.environ.get(INTERPRETER_ENV, "0") == "1"
