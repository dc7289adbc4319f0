"""The LSTM variants nn.LSTM lacks: their configuration, parameter names and random masks.

Equations: see differentiable_recurrence.py. Keyword-only arguments of `torch_lstm_ext.LSTM`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass(frozen=True)
class VariantConfig:
    """peephole, layer_norm: extra parameters; zoneout_cell / zoneout_hidden: probability that a
    unit keeps its previous value (training) or the mixing weight (eval); weight_dropout:
    DropConnect on weight_hh in training; cell_clip: bound of the candidate cell; grad_clip:
    bound of the gate pre-activation gradients; checkpoint: recompute instead of storing."""

    peephole: bool = False
    layer_norm: bool = False
    zoneout_cell: float = 0.0
    zoneout_hidden: float = 0.0
    weight_dropout: float = 0.0
    cell_clip: float | None = None
    grad_clip: float | None = None
    checkpoint: bool = False

    def __post_init__(self) -> None:
        for name in ("peephole", "layer_norm", "checkpoint"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
        for name in ("zoneout_cell", "zoneout_hidden", "weight_dropout"):
            value = getattr(self, name)
            upper_open = name == "weight_dropout"  # p = 1 would divide by zero in 1 / (1 - p)
            if (not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value <= 1
                    or (upper_open and value == 1)):
                interval = "[0, 1)" if upper_open else "[0, 1]"
                raise ValueError(f"{name} should be a number in range {interval}, got {value!r}")
        for name in ("cell_clip", "grad_clip"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, numbers.Real) or isinstance(value, bool)
                                      or not value > 0):
                raise ValueError(f"{name} should be None or a positive number, got {value!r}")

    def active(self) -> list[str]:
        """Names of the variants that are on, for extra_repr."""
        return [f.name for f in fields(self) if getattr(self, f.name) != f.default]

    @property
    def recurrence_is_plain(self) -> bool:
        """True when the recurrence op gets no variant input (zoneout, clips, peephole, LN)."""
        return not (self.peephole or self.layer_norm or self.zoneout_cell or self.zoneout_hidden
                    or self.cell_clip is not None or self.grad_clip is not None)


def variant_parameter_shapes(config: VariantConfig, hidden_size: int) -> dict[str, tuple[int, ...]]:
    """Extra parameters of one layer and direction: name prefix -> shape (suffix l{k}{sfx} added)."""
    shapes: dict[str, tuple[int, ...]] = {}
    if config.peephole:
        for gate in ("ci", "cf", "co"):
            shapes[f"weight_{gate}"] = (hidden_size,)
    if config.layer_norm:
        shapes["ln_ih_weight"] = (4 * hidden_size,)
        shapes["ln_hh_weight"] = (4 * hidden_size,)
        shapes["ln_c_weight"] = (hidden_size,)
        shapes["ln_c_bias"] = (hidden_size,)
    return shapes


def zoneout_weights(
    probability: float, shape: tuple[int, ...], like: Tensor, training: bool
) -> Tensor | None:
    """Per-element weight of the previous state: a 0/1 mask drawn from torch's RNG in training
    (1 with `probability`), the constant `probability` in eval; None when zoneout is off."""
    if probability == 0:
        return None
    if training:
        return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(probability)
    return torch.full(shape, probability, dtype=like.dtype, device=like.device)
