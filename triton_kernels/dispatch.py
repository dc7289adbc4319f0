"""Which kernel runs a recurrence: the per-step pair or the persistent pair.

The rule: persistent when the recurrent weights one program keeps on chip (W_hh, plus W_hr with
a projection, padded to powers of two, in the storage dtype) fit the budget of its dtype, so the
whole sequence runs in one launch without register spills; otherwise the per-step kernels, which
tile the hidden axis over many programs and stream W_hh from L2 each step.

Budgets, from `ptxas -v` on the kernels compiled for sm_90a (8 warps; tests/test_triton_compile.py
checks them): fp16 / bf16 weights feed tensor-core dots and spill at most a few bytes up to
64 KiB (H = P = 64 with projection, H = 128 with P = 32); fp32 weights feed IEEE FMA dots, whose
operand layout holds more copies per thread, and spill past 16 KiB (H = P = 32; H = P = 64 spills
kilobytes). Speed at the boundary is for scripts/gpu_bench.py to measure.

Any variant (peephole, layer norm, zoneout, cell or gradient clipping) goes to the per-step
kernels, in their variant form (variant_step_forward.py / variant_step_backward.py), whatever
the shape: the persistent kernels have no variant form (their budgets above leave no room for
the extra whole-row state), so the variants cost a few launches per step; whether a persistent
variant kernel pays off is for scripts/gpu_bench.py to show first.
"""

from __future__ import annotations

from typing import Literal

import torch

from torch_lstm_ext.triton_kernels.tuning import feature_block

Kernel = Literal["step", "persistent"]
PERSISTENT_WEIGHT_BYTES = {torch.float32: 16 * 1024, torch.float16: 64 * 1024, torch.bfloat16: 64 * 1024}


def persistent_weight_bytes(hidden: int, out_size: int, has_proj: bool, dtype: torch.dtype) -> int:
    """On-chip bytes of one persistent program's weights: 4 (+1 with W_hr) padded H x P blocks."""
    matrices = 5 if has_proj else 4
    return matrices * feature_block(hidden) * feature_block(out_size) * dtype.itemsize


def choose_kernel(
    hidden: int, out_size: int, has_proj: bool, dtype: torch.dtype, has_variants: bool = False
) -> Kernel:
    """'persistent' or 'step' for hidden size H, output size P, the storage dtype and whether
    any variant is on."""
    if has_variants:
        return "step"
    fits = persistent_weight_bytes(hidden, out_size, has_proj, dtype) <= PERSISTENT_WEIGHT_BYTES[dtype]
    return "persistent" if fits else "step"
