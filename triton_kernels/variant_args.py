"""The variant inputs of the Triton recurrence, as the kernels take them."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


def _rows(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.reshape(-1, t.shape[-1]).contiguous()


class Variants(NamedTuple):
    """None means off; the equations are in torch_lstm_ext/variant_reference.py.

    peephole [3, H] (w_ci, w_cf, w_co), ln_hh [4H] (gain of LN_hh), ln_c [2, H] (gain, bias of
    LN_c), in the weights' dtype; zoneout_c [N, H] / zoneout_h [N, P]: per row, the weight of
    the previous state (rows as gates_x's); cell_clip, grad_clip: positive floats.
    """

    peephole: Tensor | None = None
    ln_hh: Tensor | None = None
    ln_c: Tensor | None = None
    zoneout_c: Tensor | None = None
    zoneout_h: Tensor | None = None
    cell_clip: float | None = None
    grad_clip: float | None = None

    @classmethod
    def of(cls, peephole=None, ln_hh=None, ln_c=None, zoneout_c=None, zoneout_h=None, cell_clip=None,
           grad_clip=None) -> Variants:
        """From the ops' arguments: contiguous tensors, zoneout flattened to rows [N, F]."""
        return cls(
            None if peephole is None else peephole.contiguous(),
            None if ln_hh is None else ln_hh.contiguous(),
            None if ln_c is None else ln_c.contiguous(),
            _rows(zoneout_c),
            _rows(zoneout_h),
            cell_clip,
            grad_clip,
        )

    @property
    def on(self) -> bool:
        """True when any variant is on (the plain kernels run otherwise)."""
        return any(v is not None for v in self)

    def tensors(self, stand_in: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(peephole, ln_hh, ln_c, zoneout_c, zoneout_h) as kernel pointers: `stand_in` for the
        ones that are off, which the kernels' constexpr flags never let them read."""
        return tuple(stand_in if t is None else t for t in self[:5])

    def flags(self) -> dict[str, bool]:
        """The forward kernels' constexpr switches."""
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
