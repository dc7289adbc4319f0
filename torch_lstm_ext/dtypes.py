"""The dtype each storage dtype is computed in: float64 stays, everything else runs in float32."""

from __future__ import annotations

import torch


def compute_dtype(storage: torch.dtype) -> torch.dtype:
    """float64 -> float64; float32 / float16 / bfloat16 -> float32."""
    return torch.float64 if storage == torch.float64 else torch.float32
