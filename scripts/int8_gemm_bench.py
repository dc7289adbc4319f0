"""How the NumPy backend should multiply by int8 W_hh: the recurrent step's GEMM, three ways.

Per step the recurrence computes h [B, P] @ W_hh^T [P, 4H]. With W_hh stored as int8 values q and
per-row scales s (weight_quantization.py), the CPU can:

- "dequantized": dequantize once per call (W = q * s, float32) and run the float32 GEMM every
  step: what the backend does. Its one-off cost is timed separately ("dequantize once").
- "dequantize per step": dequantize inside every step (no float copy kept between steps).
- "int8 GEMM": quantize h per row each step (symmetric, like torch.ao's dynamic quantization),
  torch._int_mm (int8 x int8 -> int32), and rescale. This also rounds the activations to int8,
  so it is not weight-only: its results differ from the dequantized weights' by more than
  float32 rounding (the relative error is printed).

Times are medians of interleaved repeats, per step, at the given threads.

    python scripts/int8_gemm_bench.py [--threads N] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_measure import cpu_name

from torch_lstm_ext.weight_quantization import dequantize, quantize_rows

SHAPES = [(32, 256, 256), (32, 512, 512), (64, 1024, 1024), (1, 512, 512)]  # (B, P, H)


def measure(B: int, P: int, H: int, repeats: int, gen: torch.Generator) -> str:
    """One table row: microseconds per step of each way, and the int8 GEMM's relative error."""
    w = torch.randn(4 * H, P, generator=gen) / P**0.5
    h = torch.randn(B, P, generator=gen).tanh()
    q, s = quantize_rows(w)
    # As the backend holds it: the dequantized matrix, multiplied through a transposed view.
    w_t = dequantize(q.float(), s).T
    q_t = q.T.contiguous()
    out = torch.empty(B, 4 * H)

    def dequantized():
        torch.mm(h, w_t, out=out)

    def per_step():
        torch.mm(h, dequantize(q.float(), s).T, out=out)

    def int8_gemm():
        hq, hs = quantize_rows(h)
        torch.mul(torch._int_mm(hq, q_t).float(), hs[:, None] * s[None, :], out=out)

    def dequantize_once():
        dequantize(q.float(), s)

    ways = {"dequantized": dequantized, "per_step": per_step, "int8": int8_gemm, "once": dequantize_once}
    times = {name: [] for name in ways}
    for fn in ways.values():
        fn()
    for _ in range(repeats):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    us = {name: statistics.median(t) * 1e6 for name, t in times.items()}
    exact = h @ w_t
    int8_gemm()
    error = ((out - exact).abs().max() / exact.abs().max()).item()
    return (f"| {B} | {P} | {4 * H} | {us['dequantized']:.1f} | {us['per_step']:.1f} | {us['int8']:.1f} "
            f"| {us['once']:.1f} | {error:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"median of {args.repeats} interleaved repeats, microseconds per step\n")
    print("| B | P | 4H | dequantized | dequantize per step | int8 GEMM | dequantize once "
          "| int8 GEMM rel. error |")
    print("|---|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for B, P, H in SHAPES:
        print(measure(B, P, H, args.repeats, gen))


if __name__ == "__main__":
    main()
