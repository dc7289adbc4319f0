"""The recurrence's parameters as the ops carry them: one typed holder, read by name everywhere.

The ops take the present tensors as `params: Tensor[]` with their names `param_names: str[]`
(`RecurrenceParams.op_args()`), plus the two clip scalars; everything above and below the op
boundary (the autograd Function, both backends, the Triton launchers) holds a
`RecurrenceParams` and reads its fields. A list of names rather than a `Tensor?[]` holding None:
torch.library's autograd treats a list with a None in it as one non-differentiable argument,
which would cut the weights' gradients in an exported program. The equations the fields enter
are in differentiable_recurrence.py. Fields hold torch tensors, or NumPy arrays inside the NumPy
backend (`map_arrays`).

Shapes (H hidden, P output size, N rows of gates_x):
    w_hh [4H, P]; w_hr [P, H] or None (proj_size);
    variants (None when off): peephole [3, H] (w_ci, w_cf, w_co); ln_hh [4H] gain of LN_hh;
    ln_c [2, H] gain and bias of LN_c; zoneout_c [..., H] / zoneout_h [..., P]: per row of gates_x,
    the weight of the previous state (a 0/1 mask in training, the probability in eval);
    cell_clip, grad_clip: positive floats (grad_clip acts in the backward only);
    w_hh_scale [4H] / w_hr_scale [P]: per-row scales of int8 weights (None for float weights),
    W = w * scale[:, None] (weight_quantization.py). Float16 weights need none: the backends read
    any float dtype and compute in the compute dtype. Quantized weights are inference-only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from torch import Tensor

from torch_lstm_ext.schedule import as_rows


class Variants(NamedTuple):
    """The variant inputs of the recurrence; None means off (see the module docstring)."""

    peephole: Any = None
    ln_hh: Any = None
    ln_c: Any = None
    zoneout_c: Any = None
    zoneout_h: Any = None
    cell_clip: float | None = None
    grad_clip: float | None = None

    @property
    def on(self) -> bool:
        """True when any variant is on (the plain kernels run otherwise)."""
        return any(v is not None for v in self)

    @property
    def has_layer_norm(self) -> bool:
        return self.ln_hh is not None or self.ln_c is not None

    def tensors(self, stand_in: Any = None) -> tuple:
        """(peephole, ln_hh, ln_c, zoneout_c, zoneout_h), with `stand_in` for the ones that are off
        (for kernels, whose constexpr flags never let them read it)."""
        return tuple(stand_in if t is None else t for t in self[:5])

    def with_tensors(self, tensors: Sequence) -> Variants:
        """The same scalars with these five tensors (tensors()'s order)."""
        return Variants(*tensors, self.cell_clip, self.grad_clip)

    def as_rows(self) -> Variants:
        """Contiguous tensors, the per-row zoneout weights flattened to rows [N, F]."""
        return self.with_tensors([
            None if t is None else (as_rows(t) if name.startswith("zoneout") else t).contiguous()
            for name, t in zip(self._fields, self.tensors())
        ])

    def flags(self) -> dict[str, bool]:
        """The Triton forward kernels' constexpr switches."""
        return dict(
            PEEPHOLE=self.peephole is not None,
            LN_HH=self.ln_hh is not None,
            LN_C=self.ln_c is not None,
            ZONEOUT_C=self.zoneout_c is not None,
            ZONEOUT_H=self.zoneout_h is not None,
            CELL_CLIP=self.cell_clip is not None,
        )

    @property
    def cell_clip_value(self) -> float:
        """cell_clip as a kernel scalar (unused when off)."""
        return 0.0 if self.cell_clip is None else float(self.cell_clip)

    @property
    def grad_clip_value(self) -> float:
        """grad_clip as a kernel scalar (unused when off)."""
        return 0.0 if self.grad_clip is None else float(self.grad_clip)


NO_VARIANTS = Variants()


# The names the ops accept in param_names, in RecurrenceParams' order. The zoneout weights are
# per-row inputs (masks or constants) and get no gradient; the int8 scales are shared like the
# weights but get none either (inference-only); the others are the weights.
VARIANT_NAMES = ("peephole", "ln_hh", "ln_c", "zoneout_c", "zoneout_h")
PER_ROW_NAMES = ("zoneout_c", "zoneout_h")
SCALE_NAMES = ("w_hh_scale", "w_hr_scale")
PARAM_NAMES = ("w_hh", "w_hr", *VARIANT_NAMES, *SCALE_NAMES)
WEIGHT_NAMES = PARAM_NAMES[:5]


class RecurrenceParams(NamedTuple):
    """Everything the recurrence reads besides gates_x and the initial states."""

    w_hh: Any
    w_hr: Any = None
    variants: Variants = NO_VARIANTS
    w_hh_scale: Any = None
    w_hr_scale: Any = None

    @property
    def int8(self) -> bool:
        """Whether the recurrent weights are int8 with per-row scales (inference-only: the
        backward refuses them)."""
        return self.w_hh_scale is not None

    def named_tensors(self) -> dict[str, Any]:
        """The present tensors by PARAM_NAMES name, in that order."""
        tensors = (self.w_hh, self.w_hr, *self.variants.tensors(), self.w_hh_scale, self.w_hr_scale)
        return {name: t for name, t in zip(PARAM_NAMES, tensors) if t is not None}

    def op_args(self) -> tuple[list, list[str]]:
        """The ops' (params, param_names) arguments."""
        named = self.named_tensors()
        return list(named.values()), list(named)

    @classmethod
    def from_op(cls, params: Sequence, names: Sequence[str], cell_clip: float | None,
                grad_clip: float | None) -> RecurrenceParams:
        """The holder of an op call's params, param_names and clips (op_args' inverse)."""
        if len(params) != len(names) or "w_hh" not in names or not set(names) <= set(PARAM_NAMES):
            raise ValueError(f"torch_lstm_ext ops take params named from {PARAM_NAMES} with w_hh among them, "
                             f"one name per tensor; got {len(params)} tensors named {list(names)}")
        t = dict(zip(names, params))
        variants = Variants(*(t.get(name) for name in VARIANT_NAMES), cell_clip, grad_clip)
        return cls(t["w_hh"], t.get("w_hr"), variants, t.get("w_hh_scale"), t.get("w_hr_scale"))

    def map_arrays(self, convert: Callable[[Any], Any]) -> RecurrenceParams:
        """Every tensor field passed through `convert` (None stays None), zoneout as rows first."""
        v = self.variants.as_rows()

        def optional(t: Any) -> Any:
            return None if t is None else convert(t)

        return RecurrenceParams(convert(self.w_hh), optional(self.w_hr),
                                v.with_tensors([optional(t) for t in v.tensors()]),
                                optional(self.w_hh_scale), optional(self.w_hr_scale))


class RecurrenceGrads(NamedTuple):
    """Gradients of one recurrence call (None for a parameter that is absent): gates_x like
    gates_x, h0 [B, P], c0 [B, H], and the weights' (w_hh, w_hr, peephole, ln_hh, ln_c)."""

    gates_x: Tensor
    h0: Tensor
    c0: Tensor
    w_hh: Tensor
    w_hr: Tensor | None = None
    peephole: Tensor | None = None
    ln_hh: Tensor | None = None
    ln_c: Tensor | None = None

    def op_outputs(self, params: RecurrenceParams) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """As the lstm_bwd op returns them: (d_gates_x, d_h0, d_c0, [the gradient of each weight
        present in `params`, in param_names' order])."""
        present = params.named_tensors()
        weights = [getattr(self, name) for name in WEIGHT_NAMES if name in present]
        return self.gates_x, self.h0, self.c0, weights

    @classmethod
    def from_op(cls, outputs: Sequence, params: RecurrenceParams) -> RecurrenceGrads:
        """op_outputs' inverse."""
        d_gates_x, d_h0, d_c0, d_weights = outputs
        present = [name for name in WEIGHT_NAMES if name in params.named_tensors()]
        return cls(d_gates_x, d_h0, d_c0, **dict(zip(present, d_weights)))
