"""The variants on a GPU: speed vs the same variant as a Python loop, and checkpointing's memory.

Training mode, forward + backward, fp32, TF32 off. For each variant: ours (Triton) vs
scripts/variant_loop.py on the same parameters and masks, after checking that ours is as accurate
as the loop. Then checkpoint=True vs False at T = 1024: the growth of
torch.cuda.max_memory_allocated over one training step (exact on CUDA, unlike the CPU's resident
set) and the time ratio, both measured side by side in this run.

    python scripts/gpu_bench_variants.py --out DIR          # on a GPU
    python scripts/gpu_bench_variants.py --dry-run          # tiny shapes on the CPU: a smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from bench_measure import interleaved_medians, peak_memory_mib
from bench_variants import LOSSES
from variant_loop import VariantLoopLSTM, call_with_fresh_masks, draw_masks

import torch_lstm_ext

VARIANTS: dict[str, dict] = {
    "peephole": dict(peephole=True),
    "layer_norm": dict(layer_norm=True),
    "zoneout": dict(zoneout_cell=0.1, zoneout_hidden=0.1),
    "all": dict(peephole=True, layer_norm=True, zoneout_cell=0.1, zoneout_hidden=0.1, weight_dropout=0.2,
                cell_clip=3.0, grad_clip=1.0),
}


def _max_errors(ours: torch_lstm_ext.LSTM, x: torch.Tensor) -> tuple[float, float]:
    """Max abs error of ours and of the loop, both fp32, against the loop in float64, all three
    with the same masks (drawn once in fp32: the RNG draws other masks for float64 tensors).
    Float64 on CUDA would run our NumPy path rather than the Triton kernels, hence this test of
    accuracy instead of a float64 comparison; and a fixed fp32 bound says little, as layer norm's
    fp32 rounding grows to ~1e-3 over a hundred steps in both."""
    with torch.no_grad():
        torch.manual_seed(1)
        masks = draw_masks(ours, x)
        torch.manual_seed(1)
        ours_out = ours(x)[0].double()
        loop_out = VariantLoopLSTM(ours)(x, *masks).double()
        masks64 = [None if m is None else m.double() for m in masks]
        truth = VariantLoopLSTM(copy.deepcopy(ours).double())(x.double(), *masks64)
    return (ours_out - truth).abs().max().item(), (loop_out - truth).abs().max().item()


def bench_variant(name: str, shape: tuple[int, int, int, int], device: str, budget_s: float) -> dict:
    T, B, I, H = shape
    torch.manual_seed(0)
    ours = torch_lstm_ext.LSTM(I, H, device=device, **VARIANTS[name]).train()
    loop = VariantLoopLSTM(ours)
    x = torch.randn(T, B, I, device=device)
    ours_error, loop_error = _max_errors(ours, x)
    # The fp32 loop far from its float64 self means the three did not share their masks.
    if not loop_error <= 1e-2:
        raise SystemExit(f"{name}: the fp32 loop is off by {loop_error:.2e} against float64; masks differ?")
    # Ours may be no less accurate than the loop users write (with slack for a tiny loop error).
    if not ours_error <= 2 * loop_error + 1e-5:
        raise SystemExit(f"{name}: ours is off by {ours_error:.2e} against float64, "
                         f"the loop by {loop_error:.2e}")
    calls = {"ours": lambda: ours(x)[0].sum().backward(),
             "loop": lambda: call_with_fresh_masks(loop, x).sum().backward()}
    resets = {n: (lambda: ours.zero_grad(set_to_none=True)) for n in calls}
    medians, rounds = interleaved_medians(calls, resets, device, repeats=15, budget_s=budget_s)
    return dict(variant=name, shape=list(shape), ours_ms=1e3 * medians["ours"], loop_ms=1e3 * medians["loop"],
                speedup=medians["loop"] / medians["ours"], rounds=rounds, ours_error=ours_error,
                loop_error=loop_error)


def bench_checkpoint(shape: tuple[int, int, int, int], layers: int, device: str, budget_s: float) -> dict:
    """Peak memory of a training step per loss (bench_variants.LOSSES: "sum" adds no memory of
    its own, "mean_square" two [T, B, H] tensors), stored vs checkpointed, and the time ratio."""
    T, B, I, H = shape
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    steps, resets, peaks = {}, {}, {}
    for name in ("stored", "checkpoint"):
        torch.manual_seed(0)
        lstm = torch_lstm_ext.LSTM(I, H, num_layers=layers, device=device, checkpoint=name == "checkpoint")

        def reset(lstm=lstm) -> None:
            lstm.zero_grad(set_to_none=True)
            x.grad = None

        for loss_name, loss in LOSSES.items():
            def step(lstm=lstm, loss=loss) -> None:
                loss(lstm(x)[0]).backward()

            step()  # warm-up: Triton compiles, the allocator settles
            reset()
            peaks[f"{name}_{loss_name}"] = peak_memory_mib(step, device)
            reset()
        steps[name], resets[name] = step, reset
    medians, rounds = interleaved_medians(steps, resets, device, repeats=10, budget_s=budget_s, warmup=1)
    reduction = {loss: peaks[f"stored_{loss}"] / peaks[f"checkpoint_{loss}"] for loss in LOSSES}
    return dict(shape=list(shape), layers=layers, peaks_mib=peaks, memory_reduction=reduction,
                stored_ms=1e3 * medians["stored"], checkpoint_ms=1e3 * medians["checkpoint"],
                time_ratio=medians["checkpoint"] / medians["stored"], rounds=rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (NumPy backend)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.dry_run:
        device, budget = "cpu", 0.1
        variant_shape, checkpoint_shape = (6, 2, 4, 8), (40, 2, 4, 8)
    else:
        device, budget = "cuda", 8.0
        variant_shape, checkpoint_shape = (100, 64, 128, 256), (1024, 32, 128, 256)
    results: dict[str, list] = {"variants": [], "checkpoint": []}
    for name in VARIANTS:
        row = bench_variant(name, variant_shape, device, budget)
        results["variants"].append(row)
        print(json.dumps(row), flush=True)
    for layers in (1, 2):
        row = bench_checkpoint(checkpoint_shape, layers, device, budget)
        results["checkpoint"].append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("gpu_bench_variants_dry_run.json" if args.dry_run else "gpu_bench_variants.json")
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
