"""The cooperative forward compiled for an H200 (sm_90a) on this CPU-only machine (sm90_compile.py),
at every configuration `plan` returns for H in {128, 256, 512, 1024}, P = H and P = H / 2 with a
projection, B in {16, 64}, fp32 / fp16 / bf16 and 1 or 2 directions: no register spills, shared
memory within what one block may use, and a grid whose programs are all resident at once (its
step barrier would hang otherwise).

Each distinct configuration compiles once, plain and with every variant it supports on (the
variants add live values), in a process pool: about 100 compilations, a minute on two cores.
Skipped under TRITON_INTERPRET=1 (kernels are interpreted there) and where Triton's bundled ptxas
is missing.
"""

from __future__ import annotations

import math
import os

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiles the kernels, which TRITON_INTERPRET=1 replaces", allow_module_level=True)

import torch
from sm90_compile import (
    COOPERATIVE_DTYPES,
    H200_SMS,
    INT8_WEIGHT_POINTERS,
    PTXAS,
    TL_DTYPE,
    Sm90Build,
    compile_for_sm90,
    launch_failures,
    planned_builds,
    planned_cases,
)

from torch_lstm_ext.triton_kernels.cooperative_forward import (
    BLOCK_K,
    MAX_REGISTERS,
    ForwardPlan,
    lstm_cooperative_forward_kernel,
    plan,
)
from torch_lstm_ext.triton_kernels.tuning import feature_block

pytestmark = pytest.mark.skipif(not PTXAS.exists(), reason="Triton's bundled ptxas is missing")

DTYPES = COOPERATIVE_DTYPES
VARIANT_FLAGS = ("PEEPHOLE", "ZONEOUT_C", "ZONEOUT_H", "CELL_CLIP")


def _key(H: int, P: int, dtype: torch.dtype, config: ForwardPlan, variants: bool) -> tuple:
    """What the compiled kernel depends on (not B, the grid or the directions: runtime values)."""
    return H, P, DTYPES[dtype], config.block_b, config.block_u, config.block_q, config.num_warps, \
        config.weights_on_chip, variants


def _build(key: tuple, int8: bool = False) -> Sm90Build:
    """The kernel of `key` compiled; with int8 weights and float32 scales when `int8`."""
    H, P, storage, block_b, block_u, block_q, num_warps, on_chip, variants = key
    dtype = next(d for d, name in DTYPES.items() if name == storage)
    constexprs = dict(
        H=H, P=P, HAS_PROJ=P != H, **dict.fromkeys(VARIANT_FLAGS, variants), DOT_DTYPE=TL_DTYPE[dtype],
        BLOCK_B=block_b, BLOCK_U=block_u, BLOCK_Q=block_q, BLOCK_K=BLOCK_K, BLOCK_P=feature_block(P),
        BLOCK_H=feature_block(H), WEIGHTS_ON_CHIP=on_chip, STEP_PER_LAUNCH=False, PHASE=0,
        W_HH_SCALED=int8, W_HR_SCALED=int8 and P != H,
    )
    return compile_for_sm90(lstm_cooperative_forward_kernel, dtype, constexprs, num_warps, 1,
                            INT8_WEIGHT_POINTERS if int8 else None, maxnreg=MAX_REGISTERS)


def _cases():
    return planned_cases(plan)


@pytest.fixture(scope="module")
def builds() -> dict[tuple, Sm90Build]:
    """Every distinct configuration's build, plain and with the variants, compiled in parallel."""
    return planned_builds(plan, _key, _build)


def test_every_planned_configuration_compiles_without_spills_and_is_resident(builds):
    failures = launch_failures(_cases(), builds, _key)
    assert not failures, "\n".join(failures)


def test_plans_cover_both_modes():
    """The covered shapes exercise the weights on chip and streamed, and plan() puts the 16-bit
    H = P = 1024 slice (64 KiB at B = 16, one direction) on chip."""
    modes = {config.weights_on_chip for *_, config in _cases()}
    assert modes == {False, True}
    assert plan(1024, 1024, 16, torch.bfloat16, 1, H200_SMS.count).weights_on_chip


def test_plan_refuses_a_grid_the_sms_cannot_hold():
    # B = 256 in 64-row tiles needs BLOCK_U 32 for H = 1024 in two directions: past MAX_BLOCK_U.
    assert plan(1024, 1024, 256, torch.float16, 2, H200_SMS.count) is None
    config = plan(1024, 1024, 128, torch.float16, 1, H200_SMS.count)
    assert math.prod(config.grid) <= H200_SMS.count


# int8 weights (converted to DOT_DTYPE as loaded, the dots' columns scaled) at the planned
# configurations nearest the limits, (H, P, B, dtype, directions): fp32 on chip in 16-unit
# blocks, where scaling the fused gate dot instead of the split gate tiles took 255 registers and
# spilled 56 bytes (125 without scales); the largest 16-bit slice on chip (96 KiB); the widest
# fp32 streamed tile. Every configuration `plan` returns above also compiled with int8 weights
# without spills (once, by hand: too slow for CI).
INT8_CASES = [(256, 128, 64, torch.float32, 2), (1024, 512, 16, torch.float16, 2),
              (1024, 512, 64, torch.float32, 2)]


def test_int8_weights_compile_without_spills_and_are_resident():
    cases = [(H, P, B, dtype, D, plan(H, P, B, dtype, D, H200_SMS.count)) for H, P, B, dtype, D in INT8_CASES]
    keys = {_key(H, P, dtype, config, variants) for H, P, _, dtype, _, config in cases for variants in (False, True)}
    builds = {key: _build(key, int8=True) for key in keys}
    failures = launch_failures(cases, builds, _key)
    assert not failures, "\n".join(failures)
