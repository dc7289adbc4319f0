"""The cases of scripts/gpu_bench.py: the grids, where cuDNN's persistent algorithm applies, and
how long a case takes (for the time budget).

--grid full is issue 11's grid: one layer, I = H, H in {128, 256, 512, 1024}, B in {16, 64},
T in {128, 512}, in bf16, fp16 and fp32; plus two cases at H = 512 (B 64, the largest T), in each
dtype: 2 layers bidirectional, and packed with lengths uniform in [T/4, T]. --grid quick is the
subset gpu_check.sh runs inside its time budget. "dry" is the CPU smoke run's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Case:
    """One module configuration and input: T steps, batch B, hidden H (input size I = H)."""

    T: int
    B: int
    H: int
    dtype: str
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False

    @property
    def I(self) -> int:  # noqa: E743 (the LSTM's own name for the input size)
        return self.H

    @property
    def label(self) -> str:
        extra = (" 2L-bidir" if self.bidirectional else "") + (" packed" if self.packed else "")
        return f"T{self.T} B{self.B} H{self.H}{extra}"

    @property
    def recurrences(self) -> int:
        """Recurrences one call runs, one after another: layers x directions."""
        return self.layers * (2 if self.bidirectional else 1)


@dataclass(frozen=True)
class Grid:
    H: tuple[int, ...]
    B: tuple[int, ...]
    T: tuple[int, ...]
    dtypes: tuple[str, ...]
    extra_H: int
    extra_dtypes: tuple[str, ...]

    def cases(self) -> list[Case]:
        """Shortest sequences first, so a time budget drops the longest cases."""
        product = itertools.product(self.T, self.H, self.B, self.dtypes)
        grid = [Case(T, B, H, dtype) for T, H, B, dtype in product]
        T, B, H = max(self.T), max(self.B), self.extra_H
        extras = [Case(T, B, H, dtype, layers=2, bidirectional=True) for dtype in self.extra_dtypes]
        extras += [Case(T, B, H, dtype, packed=True) for dtype in self.extra_dtypes]
        return grid + extras


GRIDS = {
    "full": Grid(H=(128, 256, 512, 1024), B=(16, 64), T=(128, 512), dtypes=tuple(DTYPES), extra_H=512,
                 extra_dtypes=tuple(DTYPES)),
    "quick": Grid(H=(128, 512, 1024), B=(64,), T=(128,), dtypes=tuple(DTYPES), extra_H=512,
                  extra_dtypes=("bf16",)),
    "dry": Grid(H=(16,), B=(3,), T=(6,), dtypes=("fp32", "bf16"), extra_H=16, extra_dtypes=("fp32",)),
}


def cudnn_persistent(case: Case, device: torch.device) -> bool | None:
    """Whether nn.LSTM runs cuDNN's persistent algorithm on `case` (PyTorch's get_algo in
    aten/src/ATen/native/cudnn/RNN.cpp, as ../shared/notes/gpu_persistent_facts.md reads it):
    fp16, one layer, unidirectional, unpacked, H <= 1024, H and I multiples of 128, and on sm80+
    with >= 98 SMs a batch that is a multiple of 8 and at most 128. None where that device rule
    does not decide it (another GPU, the CPU)."""
    shape_ok = (case.dtype == "fp16" and case.layers == 1 and not case.bidirectional and not case.packed
                and case.H <= 1024 and case.H % 128 == 0 and case.I % 128 == 0)
    if not shape_ok:
        return False
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    if props.major < 8 or props.multi_processor_count < 98:
        return None
    return case.B % 8 == 0 and case.B <= 128


# From scripts/results/gpu_h200/run3 (H200): the eager per-step path costs 80-110 us per time step
# in an inference forward and about 200 us in a training forward + backward, nearly whatever the
# size up to H = 512; a case's first call also compiles and autotunes its kernels (a few seconds).
STEP_SECONDS = {"inference": 110e-6, "training": 220e-6}
COMPILE_SECONDS = 5.0


def estimate_seconds(case: Case, implementations: int, calls: int) -> float:
    """A generous estimate of one case's time: every implementation priced as the eager per-step
    path (cuDNN and graphs are faster), `calls` calls of each per pass, both passes."""
    per_call = sum(STEP_SECONDS.values()) * case.T * case.recurrences
    return COMPILE_SECONDS + implementations * calls * per_call
