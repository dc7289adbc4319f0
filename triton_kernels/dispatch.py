"""Which kernel runs a recurrence: "step", "step_graph", "persistent" or "cooperative".

- "step": per-step kernels launched eagerly (2-3 launches per step; 80-100 us each on an H200,
  scripts/results/gpu_h200/run3).
- "step_graph": the same launches replayed from a CUDA graph per shape (step_graphs.py).
- "persistent": one program per batch tile holds all of W_hh, one launch per sequence.
- "cooperative": the hidden units split over programs that meet at a per-step barrier, one
  launch per sequence at any H (cooperative_forward.py / cooperative_backward.py; not layer norm).

choose_kernel picks only from measured kernels: "step_graph" and "cooperative" have passed the
interpreter and the sm_90a compile checks but have not run on a GPU yet (no correctness or speed
figure), so the rule still picks "persistent" or "step"; callers (tests, scripts/gpu_bench.py)
force the others. The next GPU run's scripts/gpu_bench.py figures decide where they take over.

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
the extra whole-row state). The cooperative kernels run every variant but layer norm; they are
forced for now (above).
"""

from __future__ import annotations

from typing import Literal

import torch

from torch_lstm_ext.triton_kernels.tuning import feature_block

Kernel = Literal["step", "step_graph", "persistent", "cooperative"]
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


def check_kernel(kernel: Kernel, has_variants: bool, has_layer_norm: bool) -> None:
    """Raise ValueError for a kernel that cannot run the requested variants."""
    if kernel not in ("step", "step_graph", "persistent", "cooperative"):
        raise ValueError(f"unknown Triton kernel {kernel!r}")
    if has_variants and kernel == "persistent":
        raise ValueError("the persistent kernels have no variant form: use step, step_graph or cooperative")
    if has_layer_norm and kernel == "cooperative":
        raise ValueError("the cooperative kernels have no layer norm: use 'step' or 'step_graph'")
