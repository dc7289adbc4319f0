"""Allocation of every buffer a kernel writes, with the test hook that poisons them."""

from __future__ import annotations

import torch
from torch import Tensor

# Tests set this to True (monkeypatch): every kernel-written buffer then starts NaN-filled, so a
# row a kernel forgot to write shows up as NaN instead of as stale but plausible memory.
POISON = False


def kernel_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised buffer for a kernel to fill (NaN-filled while POISON is set)."""
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
