"""The cooperative backward compiled for an H200 (sm_90a) on this CPU-only machine (sm90_compile.py),
at every configuration `plan` returns for H in {128, 256, 512, 1024}, P = H and P = H / 2 with a
projection, B in {16, 64}, fp32 / fp16 / bf16 and 1 or 2 directions: no register spills, shared
memory within what one block may use, and a grid whose programs are all resident at once (its
step barrier would hang otherwise).

Each distinct configuration compiles once, plain and with every per-element variant on (they add
live values), in a process pool. Skipped under TRITON_INTERPRET=1 (kernels are interpreted there)
and where Triton's bundled ptxas is missing.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiles the kernels, which TRITON_INTERPRET=1 replaces", allow_module_level=True)

import torch
from sm90_compile import H200_SMS, PTXAS, TL_DTYPE, Sm90Build, compile_for_sm90

from torch_lstm_ext.triton_kernels.cooperative_backward import (
    CooperativePlan,
    lstm_cooperative_backward_kernel,
    plan,
)
from torch_lstm_ext.triton_kernels.grid_sync import resident_programs

pytestmark = pytest.mark.skipif(not PTXAS.exists(), reason="Triton's bundled ptxas is missing")

# Shared memory one block may use on compute capability 9.0 (of the SM's 228 KiB).
MAX_BLOCK_SHARED = 227 * 1024
DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
SHAPES = [(H, P) for H in (128, 256, 512, 1024) for P in (H, H // 2)]
BATCHES = (16, 64)
VARIANT_FLAGS = ("PEEPHOLE", "ZONEOUT_C", "ZONEOUT_H", "CELL_CLIP", "GRAD_CLIP")


def _key(H: int, P: int, dtype: torch.dtype, config: CooperativePlan, variants: bool) -> tuple:
    """What the compiled kernel depends on (not B, the grid or the directions: runtime values)."""
    return (H, P, DTYPES[dtype], config.block_b, config.block_u, config.block_kh, config.block_kp,
            config.num_warps, config.max_registers, config.weights_on_chip, variants)


def _build(key: tuple) -> Sm90Build:
    H, P, storage, block_b, block_u, block_kh, block_kp, num_warps, max_registers, on_chip, variants = key
    dtype = next(d for d, name in DTYPES.items() if name == storage)
    constexprs = dict(
        H=H, P=P, REVERSE=False, HAS_PROJ=P != H, **dict.fromkeys(VARIANT_FLAGS, variants),
        DOT_DTYPE=TL_DTYPE[dtype], BLOCK_B=block_b, BLOCK_U=block_u, BLOCK_KH=block_kh, BLOCK_KP=block_kp,
        STORE_R=variants and P != H, WEIGHTS_ON_CHIP=on_chip, STEP_PER_LAUNCH=False, PHASE=0,
    )
    return compile_for_sm90(lstm_cooperative_backward_kernel, dtype, constexprs, num_warps, 1,
                            maxnreg=max_registers)


def _cases():
    """(H, P, B, dtype, directions, plan) of every shape the test covers."""
    for dtype in DTYPES:
        for H, P in SHAPES:
            for B in BATCHES:
                for directions in (1, 2):
                    yield H, P, B, dtype, directions, plan(H, P, B, dtype, directions, H200_SMS.count)


@pytest.fixture(scope="module")
def builds() -> dict[tuple, Sm90Build]:
    """Every distinct configuration's build, plain and with the variants, compiled in parallel."""
    keys = sorted({_key(H, P, dtype, config, variants) for H, P, _, dtype, _, config in _cases()
                   if config is not None for variants in (False, True)})
    # spawn: a forked child would inherit torch's thread pools mid-use.
    with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip(keys, pool.map(_build, keys), strict=True))


def test_every_planned_configuration_compiles_without_spills_and_is_resident(builds):
    failures = []
    for H, P, B, dtype, directions, config in _cases():
        case = f"H={H} P={P} B={B} {DTYPES[dtype]} D={directions}"
        if config is None:
            failures.append(f"{case}: no plan")
            continue
        for variants in (False, True):
            build = builds[_key(H, P, dtype, config, variants)]
            where = f"{case} variants={variants} {config}: {build}"
            if build.spills:
                failures.append(f"{where}: {build.spills} bytes spilled")
            if build.shared_bytes > MAX_BLOCK_SHARED:
                failures.append(f"{where}: shared memory over {MAX_BLOCK_SHARED} bytes")
            if resident_programs(build.footprint, H200_SMS) < math.prod(config.grid):
                failures.append(f"{where}: grid not resident")
    assert not failures, "\n".join(failures)


def test_plans_cover_both_modes():
    """The covered shapes exercise the weights on chip and streamed."""
    assert {config.weights_on_chip for *_, config in _cases()} == {False, True}


def test_plan_keeps_the_grid_within_the_sms():
    for *_, config in _cases():
        assert math.prod(config.grid) <= H200_SMS.count
    # B = 256 in 16-row tiles, two directions: 32 tiles leave 4 programs per tile, BLOCK_U 256.
    assert plan(1024, 1024, 256, torch.float16, 2, H200_SMS.count) is None
    assert plan(1024, 1024, 128, torch.float16, 1, H200_SMS.count).block_u == 64
