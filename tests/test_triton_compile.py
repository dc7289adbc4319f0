"""The Triton kernels compiled for an H100 / H200 (sm_90a) on this CPU-only machine (sm90_compile.py).

`ptxas -v` gives the register spills behind dispatch.py's persistent budgets. Skipped under TRITON_INTERPRET=1 (kernels are interpreted
there) and where Triton's bundled ptxas is missing.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiles the kernels, which TRITON_INTERPRET=1 replaces", allow_module_level=True)

import torch
import triton.language as tl
from sm90_compile import INT8_WEIGHT_POINTERS, PTXAS, TL_DTYPE, compile_for_sm90

from torch_lstm_ext.triton_kernels import (
    persistent_backward,
    persistent_forward,
    step_backward,
    step_forward,
    variant_step_backward,
    variant_step_forward,
)
from torch_lstm_ext.triton_kernels.dispatch import choose_kernel
from torch_lstm_ext.triton_kernels.tuning import MAX_BATCH_BLOCK, feature_block, row_block, row_warps

pytestmark = pytest.mark.skipif(not PTXAS.exists(), reason="Triton's bundled ptxas is missing")

# The dtypes these tests compile for (fp16 takes the same tensor-core path as bf16).
STORAGE = {torch.float32: "fp32", torch.bfloat16: "bf16"}


@pytest.mark.parametrize("dtype", STORAGE, ids=STORAGE.values())
@pytest.mark.parametrize("has_proj", [False, True], ids=["no_proj", "proj"])
def test_per_step_kernels_compile_without_spills(dtype, has_proj):
    H, P = 256, (128 if has_proj else 256)
    kernels = [step_forward.lstm_step_forward_kernel, step_backward.lstm_step_backward_kernel]
    if has_proj:
        kernels += [step_forward.lstm_step_project_kernel, step_backward.lstm_step_grad_h_kernel]
    for kernel in kernels:
        for config in kernel.configs:
            constexprs = {"H": H, "P": P, "DOT_DTYPE": TL_DTYPE[dtype], "BLOCK_B": MAX_BATCH_BLOCK,
                          **config.kwargs}
            if "HAS_PROJ" in kernel.fn.arg_names:
                constexprs["HAS_PROJ"] = has_proj
            if "W_SCALED" in kernel.fn.arg_names:
                constexprs["W_SCALED"] = False
            spills = compile_for_sm90(kernel, dtype, constexprs, config.num_warps, config.num_stages).spills
            assert spills == 0, f"{kernel.fn.__name__} {config}: {spills} bytes spilled"


def _compile_configs_without_spills(kernel, dtype: torch.dtype, constexprs: dict,
                                    pointer_types: dict[str, str] | None = None) -> None:
    """Every autotune config of `kernel` compiles without spills; int8 weights when `pointer_types`
    says so (W_SCALED follows), else float weights of `dtype`."""
    scaled = {"W_SCALED": pointer_types is not None} if "W_SCALED" in kernel.fn.arg_names else {}
    for config in kernel.configs:
        constexprs = {**constexprs, **scaled, "DOT_DTYPE": TL_DTYPE[dtype], "BLOCK_B": MAX_BATCH_BLOCK,
                      **config.kwargs}
        spills = compile_for_sm90(kernel, dtype, constexprs, config.num_warps, config.num_stages,
                                  pointer_types).spills
        assert spills == 0, f"{kernel.fn.__name__} {config}: {spills} bytes spilled"


@pytest.mark.parametrize("dtype", STORAGE, ids=STORAGE.values())
def test_variant_gemm_kernels_compile_without_spills(dtype):
    H, P = 256, 128
    _compile_configs_without_spills(variant_step_forward.lstm_step_hh_kernel, dtype, {"G": 4 * H, "P": P})
    for kernel in (variant_step_forward.lstm_variant_project_kernel,
                   variant_step_backward.lstm_variant_grad_h_kernel,
                   variant_step_backward.lstm_variant_grad_r_kernel):
        _compile_configs_without_spills(kernel, dtype, {"H": H, "P": P, "ZONEOUT_H": True})


def test_forward_gemm_kernels_with_int8_weights_compile_without_spills():
    """The per-step forward GEMMs loading int8 weights into bf16 tensor-core dots (int8 -> bf16,
    then each column times its row's scale), at the shapes of the float checks above."""
    H, P = 256, 128
    for kernel, constexprs in [
        (step_forward.lstm_step_forward_kernel, {"H": H, "P": P, "HAS_PROJ": True}),
        (step_forward.lstm_step_project_kernel, {"H": H, "P": P}),
        (variant_step_forward.lstm_step_hh_kernel, {"G": 4 * H, "P": P}),
        (variant_step_forward.lstm_variant_project_kernel, {"H": H, "P": P, "ZONEOUT_H": True}),
    ]:
        _compile_configs_without_spills(kernel, torch.bfloat16, constexprs, INT8_WEIGHT_POINTERS)


ALL_VARIANTS_ON = {"PEEPHOLE": True, "LN_HH": True, "LN_C": True, "ZONEOUT_C": True, "ZONEOUT_H": True,
                   "CELL_CLIP": True, "GRAD_CLIP": True}


@pytest.mark.parametrize("H", [256, 2048])
@pytest.mark.parametrize("dtype", STORAGE, ids=STORAGE.values())
def test_variant_whole_row_kernels_compile_without_spills(dtype, H):
    """The whole-row kernels with every variant on, at the row tile and warps tuning.py picks:
    from 4 rows of 256 to one row of 2048 per program. (At H = 4096 the backward spills a few
    stack slots, 72 bytes: 16 warps cap a thread at 128 registers, 8 warps hold 255 and more.)"""
    for kernel in (variant_step_forward.lstm_variant_step_kernel,
                   variant_step_backward.lstm_variant_step_backward_kernel):
        constexprs = {"H": H, "P": H, "HAS_PROJ": False, "BLOCK_B": row_block(H), "BLOCK_H": feature_block(H),
                      **{k: v for k, v in ALL_VARIANTS_ON.items() if k in kernel.arg_names}}
        spills = compile_for_sm90(kernel, dtype, constexprs, row_warps(H), 1).spills
        assert spills == 0, f"{kernel.__name__} H={H}: {spills} bytes spilled"


# The largest shapes dispatch.py sends to the persistent kernels, per dtype: (H, P, has_proj).
PERSISTENT_EDGES = [
    (torch.float32, 32, 32, False),
    (torch.float32, 32, 16, True),
    (torch.bfloat16, 64, 64, True),
    (torch.bfloat16, 128, 32, True),
]


@pytest.mark.parametrize("dtype,H,P,has_proj", PERSISTENT_EDGES)
def test_persistent_kernels_fit_on_chip_at_the_dispatch_edge(dtype, H, P, has_proj):
    assert choose_kernel(H, P, has_proj, dtype) == "persistent"
    for kernel, reverse in [(persistent_forward.lstm_persistent_forward_kernel, False),
                            (persistent_backward.lstm_persistent_backward_kernel, True)]:
        constexprs = {"H": H, "P": P, "HAS_PROJ": has_proj, "REVERSE": reverse, "DOT_DTYPE": TL_DTYPE[dtype],
                      "BLOCK_B": persistent_forward.BLOCK_B, "BLOCK_H": feature_block(H),
                      "BLOCK_P": feature_block(P),
                      **{flag: False for flag in ("W_HH_SCALED", "W_HR_SCALED") if flag in kernel.arg_names}}
        spills = compile_for_sm90(kernel, dtype, constexprs, persistent_forward.NUM_WARPS, 1).spills
        # A few bytes of spill (a stack slot or two) are harmless; the weights spilling is kilobytes.
        assert spills <= 64, f"{kernel.__name__} {dtype} H={H} P={P}: {spills} bytes spilled"


def test_fp32_persistent_kernels_spill_past_the_budget():
    """Why fp32's budget is smaller: one size up, the fp32 weights no longer fit."""
    assert choose_kernel(64, 64, False, torch.float32) == "step"
    constexprs = {"H": 64, "P": 64, "HAS_PROJ": False, "REVERSE": False, "DOT_DTYPE": tl.float32,
                  "BLOCK_B": persistent_forward.BLOCK_B, "BLOCK_H": 64, "BLOCK_P": 64,
                  "W_HH_SCALED": False, "W_HR_SCALED": False}
    spills = compile_for_sm90(persistent_forward.lstm_persistent_forward_kernel, torch.float32, constexprs,
                                 persistent_forward.NUM_WARPS, 1).spills
    assert spills > 1024


@pytest.mark.parametrize("dtype,H,P,has_proj", PERSISTENT_EDGES)
def test_persistent_forward_with_int8_weights_fits_at_the_dispatch_edge(dtype, H, P, has_proj):
    """int8 weights, converted to the dot dtype as they are loaded, within the budget of that dtype
    (dispatch.py): at most a few bytes of spill, as for float weights."""
    constexprs = {"H": H, "P": P, "HAS_PROJ": has_proj, "REVERSE": False, "DOT_DTYPE": TL_DTYPE[dtype],
                  "BLOCK_B": persistent_forward.BLOCK_B, "BLOCK_H": feature_block(H), "BLOCK_P": feature_block(P),
                  "W_HH_SCALED": True, "W_HR_SCALED": has_proj}
    spills = compile_for_sm90(persistent_forward.lstm_persistent_forward_kernel, dtype, constexprs,
                              persistent_forward.NUM_WARPS, 1, INT8_WEIGHT_POINTERS).spills
    assert spills <= 64, f"{dtype} H={H} P={P}: {spills} bytes spilled"
