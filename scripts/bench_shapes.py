"""The benchmark grids: the one place benchmark shapes live.

A Case is one LSTM configuration: sequence length T, batch B, input size I, hidden size H,
layers, bidirectional, packed (a PackedSequence with lengths spread over 1..T), proj_size.
`sweep` marks the cases that only feed the plot's time-vs-T and time-vs-H lines; the ratio
table and its geometric mean are over the cases without it. `cells=False` skips the slow
LSTMCell-loop baseline (the quick grid's sweeps).
"""

from __future__ import annotations

from typing import NamedTuple


class Case(NamedTuple):
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False
    proj: int = 0
    sweep: str = ""
    cells: bool = True

    @property
    def label(self) -> str:
        extras = [f"L{self.layers}"] if self.layers > 1 else []
        extras += ["bi"] if self.bidirectional else []
        extras += ["packed"] if self.packed else []
        extras += [f"proj{self.proj}"] if self.proj else []
        return f"T{self.T} B{self.B} I{self.I} H{self.H}" + "".join(f" {e}" for e in extras)


# The five shapes, then the layers / bidirectional / packed / proj configurations.
CORE = [
    Case(50, 32, 128, 256),
    Case(200, 16, 64, 128),
    Case(100, 64, 256, 512),
    Case(20, 1, 32, 64),
    Case(500, 8, 32, 32),
]
_FEATURES = [
    Case(50, 32, 128, 256, layers=2),
    Case(100, 16, 64, 128, bidirectional=True),
    Case(100, 16, 64, 128, packed=True),
    Case(100, 16, 64, 128, layers=2, bidirectional=True, packed=True),
    Case(50, 32, 128, 256, proj=64),
]


def _sweeps(lengths: list[int], hiddens: list[int], B: int = 16, I: int = 64,
            cells: bool = True) -> list[Case]:
    """Time vs sequence length (at H = 128) and vs hidden size (at T = 100), for the plot.

    The shape both lines share is one case, marked "TH".
    """
    marks: dict[tuple[int, int], str] = {}
    for T in lengths:
        marks[(T, 128)] = marks.get((T, 128), "") + "T"
    for H in hiddens:
        marks[(100, H)] = marks.get((100, H), "") + "H"
    return [Case(T, B, I, H, sweep=mark, cells=cells) for (T, H), mark in marks.items()]


GRIDS: dict[str, list[Case]] = {
    "standard": CORE + _FEATURES + _sweeps([25, 50, 100, 200, 400], [32, 64, 128, 256, 512]),
    # Under 2 minutes on a 2-core machine: the shapes but the largest, one of each feature.
    "quick": [c for c in CORE if c.H < 512]
    + [_FEATURES[1], _FEATURES[2]]
    + _sweeps([25, 100, 400], [32, 128, 512], cells=False),
    # CUDA: shapes where a GPU LSTM is worth timing (ours-Triton vs cuDNN).
    "gpu": [
        Case(50, 32, 128, 256),
        Case(100, 64, 256, 512),
        Case(200, 128, 256, 1024),
        Case(100, 64, 256, 512, layers=2, bidirectional=True),
    ],
}

# Variants vs the same variant as a Python loop (scripts/bench_variants.py): one layer, one
# direction, training forward + backward.
VARIANT_CASES: list[Case] = [Case(100, 32, 64, 128), Case(50, 16, 128, 256)]
VARIANT_QUICK: list[Case] = [Case(50, 16, 64, 128)]
# Checkpointing's memory and time at the T = 1024, for one and two layers.
CHECKPOINT_CASES: list[Case] = [Case(1024, 32, 128, 256), Case(1024, 32, 128, 256, layers=2)]
