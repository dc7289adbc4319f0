"""Compiling Triton kernels for an H100 / H200 (sm_90a) on a CPU-only machine, with ptxas's report.

The interpreter does not enforce GPU rules (tl.dot shapes and dtypes, loop-carried types, the
16-bit tensor-core branch it never takes); the real compiler does, and Triton ships ptxas, so the
kernel tests compile ahead of time here and read registers, spills and shared memory.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from torch_lstm_ext.triton_kernels.grid_sync import KernelFootprint, SmLimits

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"

STORAGE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
TL_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
# Pointer arguments held in fp32 whatever the storage dtype (saved gates / cells, scratch).
FP32_POINTERS = {"gates_ptr", "cells_ptr", "dc_ptr", "d_out_ptr", "hh_ptr", "dr_ptr", "r_rows_ptr",
                 "d_peephole_ptr", "d_ln_hh_ptr", "d_ln_c_ptr"}
INT32_POINTERS = {"lengths_ptr", "counters_ptr"}
# int8 weights with float32 per-row scales (weight_quantization.py), as `pointer_types`.
INT8_WEIGHT_POINTERS = {"w_hh_ptr": "*i8", "w_hr_ptr": "*i8", "w_hh_scale_ptr": "*fp32", "w_hr_scale_ptr": "*fp32"}
FLOAT_SCALARS = {"cell_clip", "grad_clip"}

# An H200's (and H100 SXM's) SMs: 132 of them, each 64 Ki 32-bit registers, 228 KiB shared
# memory (227 KiB usable by one block) and 2048 threads (CUDA programming guide, compute
# capability 9.0).
H200_SMS = SmLimits(count=132, registers=65536, shared_bytes=233472, threads=2048)


class Sm90Build(NamedTuple):
    """ptxas -v's registers per thread and spill-store bytes; Triton's shared memory bytes."""

    registers: int
    spills: int
    shared_bytes: int
    num_warps: int

    @property
    def footprint(self) -> KernelFootprint:
        return KernelFootprint(self.registers, self.shared_bytes, self.num_warps)


def compile_for_sm90(kernel, dtype: torch.dtype, constexprs: dict, num_warps: int, num_stages: int,
                     pointer_types: dict[str, str] | None = None, maxnreg: int | None = None) -> Sm90Build:
    """Compile `kernel` (JITFunction or Autotuner) for sm_90a with storage `dtype` pointers;
    maxnreg: the launch option of that name (a per-thread register cap for ptxas), if set.

    Pointer arguments are `*<storage>` unless named in FP32_POINTERS / INT32_POINTERS or in
    `pointer_types` (name -> Triton type string, e.g. "*fp32"); other non-constexpr arguments
    are i32, or fp32 when named in FLOAT_SCALARS.
    """
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    pointer_types = pointer_types or {}
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointer_types:
            signature[name] = pointer_types[name]
        elif name in INT32_POINTERS:
            signature[name] = "*i32"
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in FP32_POINTERS else f"*{STORAGE[dtype]}"
        elif name in FLOAT_SCALARS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    compiled = triton.compile(
        ASTSource(fn, signature, constexprs=constexprs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": num_warps, "num_stages": num_stages,
                 **({} if maxnreg is None else {"maxnreg": maxnreg})},
    )
    ptx = Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / f"{fn.__name__}_{os.getpid()}.ptx"
    ptx.write_text(compiled.asm["ptx"])
    report = subprocess.run([str(PTXAS), "-arch=sm_90a", "-v", str(ptx), "-o", os.devnull],
                            capture_output=True, text=True, check=True).stderr
    ptx.unlink()
    registers = int(re.search(r"Used (\d+) registers", report).group(1))
    spills = int(re.search(r"(\d+) bytes spill stores", report).group(1))
    return Sm90Build(registers, spills, compiled.metadata.shared, num_warps)


# --- The cooperative kernels' compile checks (tests/test_cooperative_*compile.py) -------------

# Shared memory one block may use on compute capability 9.0 (of the SM's 228 KiB).
MAX_BLOCK_SHARED = 227 * 1024
COOPERATIVE_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# H, and P = H or P = H / 2 with a projection; batch sizes; 1 or 2 directions.
COOPERATIVE_SHAPES = [(H, P) for H in (128, 256, 512, 1024) for P in (H, H // 2)]
COOPERATIVE_BATCHES = (16, 64)


def planned_cases(plan):
    """(H, P, B, dtype, directions, plan(...)) of every shape the cooperative checks cover."""
    for dtype in COOPERATIVE_DTYPES:
        for H, P in COOPERATIVE_SHAPES:
            for B in COOPERATIVE_BATCHES:
                for directions in (1, 2):
                    yield H, P, B, dtype, directions, plan(H, P, B, dtype, directions, H200_SMS.count)


def planned_builds(plan, key, build) -> dict:
    """{key(...): build(key(...))} for every covered case's plan, plain and with its variants on,
    each distinct key compiled once in parallel worker processes."""
    keys = {key(H, P, dtype, config, variants) for H, P, _, dtype, _, config in planned_cases(plan)
            if config is not None for variants in (False, True)}
    return _compile_in_pool(build, keys)


def _compile_in_pool(build, keys) -> dict:
    """{key: build(key)} for every key, compiled in parallel worker processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    keys = sorted(keys)
    # spawn: a forked child would inherit torch's thread pools mid-use.
    with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip(keys, pool.map(build, keys), strict=True))


def launch_failures(cases, builds: dict, key) -> list[str]:
    """What keeps each planned case from launching safely: no plan, spills, shared memory past
    one block's share, or a grid whose programs cannot all be resident (its barrier would hang).
    key(H, P, dtype, config, variants) names the case's build in `builds`."""
    import math

    from torch_lstm_ext.triton_kernels.grid_sync import resident_programs

    failures = []
    for H, P, B, dtype, directions, config in cases:
        case = f"H={H} P={P} B={B} {COOPERATIVE_DTYPES[dtype]} D={directions}"
        if config is None:
            failures.append(f"{case}: no plan")
            continue
        for variants in (False, True):
            build = builds[key(H, P, dtype, config, variants)]
            where = f"{case} variants={variants} {config}: {build}"
            if build.spills:
                failures.append(f"{where}: {build.spills} bytes spilled")
            if build.shared_bytes > MAX_BLOCK_SHARED:
                failures.append(f"{where}: shared memory over {MAX_BLOCK_SHARED} bytes")
            if resident_programs(build.footprint, H200_SMS) < math.prod(config.grid):
                failures.append(f"{where}: grid not resident")
    return failures
