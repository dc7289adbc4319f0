"""The variants nn.LSTM lacks: speed vs the same variant as a Python loop, and checkpointing's
memory and time.

    python scripts/bench_variants.py [--quick] [--out scripts/results]

For each variant (training mode, forward + backward, float32): ours vs scripts/variant_loop.py
reading the same parameters with the same random masks; it refuses to time a variant whose
outputs disagree. Then, for checkpoint=True vs False at T = 1024: the peak memory of one
training step with each of two losses (LOSSES below), each step in a fresh subprocess with
glibc's mmap threshold pinned (MALLOC_MMAP_THRESHOLD_) so freed buffers leave the resident set
and the peak counts live memory, not the allocator's history; and the time ratio, interleaved.
Writes JSON and Markdown.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
from bench_measure import interleaved_medians, peak_memory_mib
from bench_report import geomean
from bench_shapes import CHECKPOINT_CASES, VARIANT_CASES, VARIANT_QUICK, Case
from tqdm import tqdm
from variant_loop import VariantLoopLSTM, call_with_fresh_masks

import torch_lstm_ext

VARIANTS: dict[str, dict] = {
    "plain": {},
    "peephole": dict(peephole=True),
    "layer_norm": dict(layer_norm=True),
    "zoneout": dict(zoneout_cell=0.1, zoneout_hidden=0.1),
    "weight_dropout": dict(weight_dropout=0.2),
    "cell_clip": dict(cell_clip=3.0),
    "grad_clip": dict(grad_clip=1.0),
    "all": dict(peephole=True, layer_norm=True, zoneout_cell=0.1, zoneout_hidden=0.1, weight_dropout=0.2,
                cell_clip=3.0, grad_clip=1.0),
}
# Checked in float64, where rounding cannot hide a wrong equation: in float32 the layer norms of
# near-constant rows (h_0 = 0) amplify rounding by up to 1/sqrt(eps), so float32 disagreement
# says little about correctness.
AGREEMENT = 1e-8
MMAP_THRESHOLD = "131072"


def bench_variant(name: str, case: Case, budget_s: float) -> dict:
    torch.manual_seed(0)
    ours = torch_lstm_ext.LSTM(case.I, case.H, **VARIANTS[name]).train()
    loop = VariantLoopLSTM(ours)
    x = torch.randn(case.T, case.B, case.I)
    ours64 = copy.deepcopy(ours).double()
    torch.manual_seed(1)
    expected = call_with_fresh_masks(VariantLoopLSTM(ours64), x.double())
    torch.manual_seed(1)
    actual = ours64(x.double())[0]
    diff = (actual - expected).abs().max().item()
    if not diff <= AGREEMENT:
        raise SystemExit(f"{name} {case.label}: ours and the loop disagree by {diff:.2e}; not timing it")

    def step(run):
        def call() -> None:
            run().sum().backward()
        return call

    calls = {"ours": step(lambda: ours(x)[0]), "loop": step(lambda: call_with_fresh_masks(loop, x))}
    resets = {n: (lambda: ours.zero_grad(set_to_none=True)) for n in calls}
    medians, rounds = interleaved_medians(calls, resets, "cpu", repeats=15, budget_s=budget_s)
    return dict(variant=name, case=case.label, ours_ms=1e3 * medians["ours"], loop_ms=1e3 * medians["loop"],
                speedup=medians["loop"] / medians["ours"], rounds=rounds, max_abs_diff=diff)


# The loss of the training step. "sum" adds no memory of its own (its gradient is a broadcast
# scalar), so the peak is the LSTM's; "mean_square" materialises two [T, B, H] tensors in its
# backward, as many real losses and heads do, and that memory no checkpointing of the LSTM saves.
LOSSES = {"sum": lambda out: out.sum(), "mean_square": lambda out: out.pow(2).mean()}


def _training_step(case: Case, checkpoint: bool, loss: str):
    torch.manual_seed(0)
    lstm = torch_lstm_ext.LSTM(case.I, case.H, num_layers=case.layers, checkpoint=checkpoint)
    x = torch.randn(case.T, case.B, case.I, requires_grad=True)

    def step() -> None:
        out, _ = lstm(x)
        LOSSES[loss](out).backward()

    def reset() -> None:
        lstm.zero_grad(set_to_none=True)
        x.grad = None

    return step, reset


def memory_child(case: Case, checkpoint: bool, loss: str) -> None:
    """In a fresh process: print the peak MiB of one training step after one warm-up step."""
    step, reset = _training_step(case, checkpoint, loss)
    step()
    reset()
    print(json.dumps({"peak_mib": peak_memory_mib(step, "cpu")}))


def _peak_in_child(case: Case, checkpoint: bool, loss: str) -> float:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD)
    args = [sys.executable, __file__, "--memory-child", json.dumps([list(case), checkpoint, loss]),
            "--threads", str(torch.get_num_threads())]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def bench_checkpoint(case: Case, budget_s: float) -> list[dict]:
    """One row per loss: peak memory of a training step, stored vs checkpointed, and the time
    ratio (measured once, with the "sum" loss)."""
    steps = {name: _training_step(case, name == "checkpoint", "sum") for name in ("stored", "checkpoint")}
    medians, rounds = interleaved_medians(
        {n: s for n, (s, _) in steps.items()}, {n: r for n, (_, r) in steps.items()}, "cpu",
        repeats=7, budget_s=budget_s, warmup=1,
    )
    rows = []
    for loss in LOSSES:
        stored, checkpointed = (_peak_in_child(case, checkpoint, loss) for checkpoint in (False, True))
        rows.append(dict(
            case=case.label, loss=loss, stored_peak_mib=stored, checkpoint_peak_mib=checkpointed,
            memory_reduction=stored / checkpointed, stored_ms=1e3 * medians["stored"],
            checkpoint_ms=1e3 * medians["checkpoint"], time_ratio=medians["checkpoint"] / medians["stored"],
            rounds=rounds,
        ))
    return rows


def markdown(variant_rows: list[dict], checkpoint_rows: list[dict]) -> str:
    lines = [
        "| variant | shape | ours (ms) | Python loop (ms) | speed-up |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['variant']} | {r['case']} | {r['ours_ms']:.1f} | {r['loop_ms']:.1f} | {r['speedup']:.1f}x |"
        for r in variant_rows
    ]
    lines += ["", f"Geometric-mean speed-up over the Python loop: "
              f"{geomean([r['speedup'] for r in variant_rows]):.1f}x", ""]
    lines += [
        "| checkpoint, training step | loss | peak stored (MiB) | peak checkpoint (MiB) | memory / "
        "| time x |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r['case']} | {r['loss']} | {r['stored_peak_mib']:.0f} | {r['checkpoint_peak_mib']:.0f} | "
              f"{r['memory_reduction']:.1f}x | {r['time_ratio']:.2f}x |" for r in checkpoint_rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one shape, short budgets")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--no-checkpoint", action="store_true", help="skip the checkpointing measurement")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads (default: all cores)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        fields, checkpoint, loss = json.loads(args.memory_child)
        memory_child(Case(*fields), checkpoint, loss)
        return 0
    cases = VARIANT_QUICK if args.quick else VARIANT_CASES
    budget = 2.0 if args.quick else 8.0
    jobs = [(name, case) for case in cases for name in VARIANTS]
    variant_rows = [bench_variant(n, c, budget) for n, c in tqdm(jobs, desc="variants")]
    checkpoint_rows = []
    if not args.no_checkpoint:
        for case in tqdm(CHECKPOINT_CASES[:1] if args.quick else CHECKPOINT_CASES, desc="checkpoint"):
            checkpoint_rows += bench_checkpoint(case, 20.0 if args.quick else 60.0)
    meta = dict(machine=platform.machine(), processor=platform.processor(), cpus=os.cpu_count(),
                python=platform.python_version(), torch=torch.__version__, threads=torch.get_num_threads())
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"variants{'_quick' if args.quick else ''}_{args.threads}threads"
    (args.out / f"{stem}.json").write_text(json.dumps(dict(meta=meta, variants=variant_rows,
                                                           checkpoint=checkpoint_rows), indent=1))
    table = markdown(variant_rows, checkpoint_rows)
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
