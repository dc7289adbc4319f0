"""Launch parameters: autotune configs, batch tile, dot dtype (interpreter-aware)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from torch_lstm_ext.config import triton_interpreter_enabled

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _step_configs() -> list[triton.Config]:
    """Autotune configs of the per-step kernels (BLOCK_H tiles the output axis, BLOCK_K the
    reduction). On the GPU: the ones ptxas compiles without spills for sm_90a at every batch tile
    (tests/test_triton_compile.py). Under TRITON_INTERPRET=1 only one, as several crash there: small
    but GPU-legal tiles (>= 16), so tiny test shapes still run several tiles per axis. Read at
    import, like the interpreter flag itself.
    """
    if triton_interpreter_enabled():
        return [triton.Config({"BLOCK_H": 16, "BLOCK_K": 16}, num_warps=4)]
    return [
        triton.Config({"BLOCK_H": 32, "BLOCK_K": 32}, num_warps=4),
        triton.Config({"BLOCK_H": 64, "BLOCK_K": 32}, num_warps=8),
    ]


STEP_CONFIGS = _step_configs()


def dot_dtype(storage: torch.dtype) -> tl.dtype:
    """The dtype of tl.dot operands: the storage dtype on the GPU (fp16 / bf16 on tensor cores),
    float32 in the interpreter, whose bf16 dot is wrong (the operands are storage-exact either way,
    so only the summation order differs)."""
    if storage not in _TL_DTYPES:
        raise TypeError(f"the Triton kernels take float32, float16 or bfloat16, not {storage}")
    return tl.float32 if triton_interpreter_enabled() else _TL_DTYPES[storage]


def step_grid(n: int, block_b: int, width: int) -> Callable[[dict], tuple[int, int]]:
    """Grid of a per-step launch: (batch tiles of the n active rows, BLOCK_H tiles of `width`)."""
    return lambda meta: (triton.cdiv(n, block_b), triton.cdiv(width, meta["BLOCK_H"]))


MAX_BATCH_BLOCK = 32


def batch_block(batch: int) -> int:
    """Rows of the batch one per-step program owns: a power of two in [16, 32] (tl.dot needs
    M >= 16; at 64 the four fp32 gate accumulators spill)."""
    return min(MAX_BATCH_BLOCK, max(16, triton.next_power_of_2(batch)))


def feature_block(size: int) -> int:
    """A whole feature axis as one tile: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(size))


# Elements of one whole-row tile ([rows, feature_block(H)]) in the variant kernels, whose layer
# norms need whole rows in one program, and how many of them one thread holds: about 20 such
# tiles are live at once in the backward, which spills on sm_90a at 16 elements per thread
# (tests/test_triton_compile.py).
ROW_TILE_ELEMENTS = 1024
ELEMENTS_PER_THREAD = 8


def row_block(hidden: int) -> int:
    """Rows one whole-row (variant pointwise) program owns: a power of two in [1, 16]. These
    kernels have no tl.dot, so no minimum of 16; fewer rows for wide H keep the tiles in registers."""
    return max(1, min(16, ROW_TILE_ELEMENTS // feature_block(hidden)))


def row_warps(hidden: int) -> int:
    """Warps of a whole-row program: ELEMENTS_PER_THREAD per thread of each tile, within [4, 16].
    Spill-free on sm_90a up to H = 2048; at 4096 the backward spills a few stack slots, as 16
    warps cap a thread at 128 registers (past 4096 a single row holds more per thread)."""
    elements = row_block(hidden) * feature_block(hidden)
    return min(16, max(4, elements // (32 * ELEMENTS_PER_THREAD)))
