"""Which kernel runs a recurrence: the per-step pair or the persistent pair.

The rule: persistent when the recurrent weights of one program (W_hh, plus W_hr with a
projection, padded to powers of two, in the dot operand dtype) take at most 64 KiB, i.e. at most
64 32-bit registers per thread for a program of 8 warps, which leaves room for the h / c / gate
tiles under the 255-register limit. Then one launch runs the whole sequence with the weights on
chip. Past that, the weights would spill, and the per-step kernels, which tile the hidden axis
over many programs and stream W_hh from L2 each step, are the better choice.
(64 KiB: fp32 H = P = 64, fp16 / bf16 H = P = 64 with or without projection, H = 128 with
P = 32. The threshold is a first estimate; scripts/gpu_bench.py measures both kernels.)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch_lstm_ext.triton_kernels.tuning import feature_block

Kernel = Literal["step", "persistent"]
PERSISTENT_WEIGHT_BYTES = 64 * 1024


def choose_kernel(hidden: int, out_size: int, has_proj: bool, dtype: torch.dtype) -> Kernel:
    """'persistent' or 'step' for hidden size H, output size P and the storage dtype."""
    matrices = 5 if has_proj else 4
    weight_bytes = matrices * feature_block(hidden) * feature_block(out_size) * dtype.itemsize
    return "persistent" if weight_bytes <= PERSISTENT_WEIGHT_BYTES else "step"
