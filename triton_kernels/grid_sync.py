"""Synchronisation of the programs of one persistent launch: per-step arrival counters and residency.

A multi-program persistent kernel splits the hidden units over programs; each step's new state
goes through global memory, and the programs sharing a batch tile wait for each other once per
step (twice with a projection). The rules that make that safe:

- Every program must be resident at once, or a waiting program can starve one that has not
  started (a hang, not an error). `resident_programs` bounds the grid from the compiled kernel's
  registers, shared memory and warps and the device's limits, and the launch asks the driver for
  a cooperative grid, which refuses an oversized grid instead of hanging.
- One int32 counter per (phase, step, batch tile) in a zeroed buffer (`arrival_counters`): a
  counter reused across steps could be read after a fast program's next arrival (ABA).
- `arrive` publishes the step's stores: a block barrier (all of this program's threads have
  stored), then a release-ordered add. `wait_for` polls with acquire ordering, so the other
  programs' stores are visible to the loads after it.
- Triton's interpreter runs the programs one after another, so a wait on another program never
  ends there: the kernels have a one-step-per-launch mode in which the launch boundary is the
  synchronisation and these functions are not called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@triton.jit
def arrive(counter_ptr):
    """Count this program in at `counter_ptr` once all its threads' stores are done."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")


@triton.jit
def wait_for(counter_ptr, expected):
    """Spin until `expected` programs have arrived at `counter_ptr` (acquire: their stores are
    visible to every load after this)."""
    # An add of 0 is an acquire load of the counter; Triton 3.6 has no single-thread poll.
    while tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu") < expected:
        pass
    tl.debug_barrier()


def arrival_counters(phases: int, steps: int, tiles: int, device: torch.device) -> torch.Tensor:
    """Zeroed int32 [phases, steps, tiles]: one counter per (phase, step, batch tile)."""
    return torch.zeros((phases, steps, tiles), dtype=torch.int32, device=device)


@dataclass(frozen=True)
class KernelFootprint:
    """What one program of a compiled kernel takes of an SM: registers per thread, shared memory
    bytes and warps (CompiledKernel.n_regs, .metadata.shared, .metadata.num_warps)."""

    registers: int
    shared_bytes: int
    num_warps: int

    @classmethod
    def of(cls, compiled) -> KernelFootprint:
        return cls(compiled.n_regs, compiled.metadata.shared, compiled.metadata.num_warps)


@dataclass(frozen=True)
class SmLimits:
    """Per-SM limits of a device: SM count, 32-bit registers, shared memory bytes, threads."""

    count: int
    registers: int
    shared_bytes: int
    threads: int

    @classmethod
    def of(cls, device: torch.device) -> SmLimits:
        p = torch.cuda.get_device_properties(device)
        return cls(p.multi_processor_count, p.regs_per_multiprocessor,
                   p.shared_memory_per_multiprocessor, p.max_threads_per_multi_processor)


# Registers are allocated per warp in units of 256 (CUDA occupancy calculator, sm_50 and later).
_REGISTER_UNIT = 256


def programs_per_sm(kernel: KernelFootprint, sm: SmLimits) -> int:
    """How many programs of `kernel` one SM holds at once (0: not even one)."""
    threads = 32 * kernel.num_warps
    regs_per_warp = -(-kernel.registers * 32 // _REGISTER_UNIT) * _REGISTER_UNIT
    by_registers = sm.registers // (regs_per_warp * kernel.num_warps) if kernel.registers else sm.threads
    by_shared = sm.shared_bytes // kernel.shared_bytes if kernel.shared_bytes else sm.threads
    return min(by_registers, by_shared, sm.threads // threads)


def resident_programs(kernel: KernelFootprint, sm: SmLimits) -> int:
    """The largest grid of `kernel` whose programs are all resident at once."""
    return programs_per_sm(kernel, sm) * sm.count


def check_resident(grid_size: int, kernel: KernelFootprint, sm: SmLimits, name: str) -> None:
    """Raise before a launch whose programs could not all be resident (it would hang)."""
    limit = resident_programs(kernel, sm)
    if grid_size > limit:
        raise RuntimeError(
            f"{name}: a grid of {grid_size} programs cannot be resident at once on this GPU "
            f"({sm.count} SMs x {programs_per_sm(kernel, sm)} programs of {kernel.registers} registers, "
            f"{kernel.shared_bytes} B shared memory, {kernel.num_warps} warps); its step barrier would hang"
        )


def launch_resident(kernel, grid: tuple[int, ...], device: torch.device, *args, **kwargs) -> None:
    """Launch `kernel[grid](*args, **kwargs)` as a cooperative grid, after checking on the host
    that all its programs fit on `device` at once (GPU only: the interpreter has no driver).

    The launchers pass the kernel's arguments by keyword, named as its parameters; warmup binds
    them as the launch does, so both see the same arguments and compile the same kernel.
    The compiled kernel (warmup compiles or fetches it from Triton's cache) gives the footprint;
    the cooperative launch makes the driver refuse, rather than hang, a grid the check let pass.
    """
    compiled = kernel.warmup(*args, grid=grid, launch_cooperative_grid=True, **kwargs)
    compiled._init_handles()  # loads the binary: n_regs is known only then
    check_resident(math.prod(grid), KernelFootprint.of(compiled), SmLimits.of(device), kernel.fn.__name__)
    kernel[grid](*args, launch_cooperative_grid=True, **kwargs)
