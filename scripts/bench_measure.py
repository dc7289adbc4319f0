"""Timing and peak-memory measurement for bench.py (and the machine's CPU name, for every report).

Timing: every implementation runs its warm-up, then the implementations take turns, call by
call, in a rotating order, so load from elsewhere on the machine hits all of them alike; the
result is the median per implementation.

Memory, CPU: the growth of the process's peak resident set (VmHWM) over its resident set at
the start of one call, after handing freed heap back to the OS (malloc_trim) and resetting the
peak (/proc/self/clear_refs). It counts every page the call touches for the first time: torch's
and NumPy's buffers alike (torch.profiler's memory view would miss NumPy's), saved activations,
outputs and temporaries. Linux only; NaN elsewhere. CUDA: torch.cuda.max_memory_allocated growth.
"""

from __future__ import annotations

import ctypes
import gc
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(
    calls: dict[str, Callable[[], None]],
    resets: dict[str, Callable[[], None]],
    device: str,
    repeats: int,
    budget_s: float,
    warmup: int = 2,
) -> tuple[dict[str, float], int]:
    """Median seconds per call for each named call, and the number of timed rounds.

    `resets[name]` runs untimed before each call (e.g. clearing .grad). Rounds stop at
    `repeats` or when `budget_s` is spent, whichever first, but never below 3.
    """
    names = list(calls)
    started = time.perf_counter()
    for _ in range(warmup):
        for name in names:
            resets[name]()
            calls[name]()
    _sync(device)
    round_s = (time.perf_counter() - started) / warmup
    rounds = max(3, min(repeats, int(budget_s / max(round_s, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            resets[name]()
            _sync(device)
            t0 = time.perf_counter()
            calls[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}, rounds


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_memory_mib(call: Callable[[], None], device: str) -> float:
    """Extra peak memory (MiB) of one call of `call`; see the module docstring."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        base = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return math.nan
    call()
    return (_status_kib("VmHWM") - base) / 1024
