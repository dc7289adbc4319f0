"""Layer norm without affine part over the last axis: the variants' normalisation (biased
variance, eps LN_EPS), written once for the host. Each function takes NumPy arrays (the NumPy
backend) or torch tensors (the checkpointed input projection's written-out backward)."""

from __future__ import annotations

import numpy as np
import torch

LN_EPS = 1e-5


def _sqrt(x):
    return np.sqrt(x) if isinstance(x, np.ndarray) else torch.sqrt(x)


def normalize(x):
    """(x_hat, rstd): x [..., F] normalised over F, and 1 / std [..., 1]."""
    centered = x - x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / _sqrt((centered * centered).mean(axis=-1, keepdims=True) + LN_EPS)
    return centered * rstd, rstd


def normalize_backward(d_xhat, xhat, rstd):
    """The gradient through normalize: d_x [..., F] from d_x_hat and normalize's results."""
    return rstd * (
        d_xhat - d_xhat.mean(axis=-1, keepdims=True) - xhat * (d_xhat * xhat).mean(axis=-1, keepdims=True)
    )
