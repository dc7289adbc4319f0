"""Train an encoder-decoder LSTM on a generated digit-string task, with nn.LSTM and with ours.

The task (--task): reverse a digit string, sort it, or add two numbers. The recipe: Xavier /
orthogonal initialisation with forget bias 1 (torch_lstm_ext.init), batch (or layer)
normalisation of the input features, Adam with linear warmup and cosine decay, scheduled teacher
forcing, gradient clipping, evaluation by exact-match accuracy under greedy decoding, and a
checkpoint of the best model (scripts/seq2seq_train.py has the details).

Three runs from the same seed on the same batches and teacher-forcing coin flips:

- nn_lstm: the model as built, with torch.nn.LSTM;
- ours: the same model after torch_lstm_ext.replace_lstm; its loss curves must match nn_lstm's
  within --tolerance (the script fails otherwise), since both compute the same function from the
  same weights (the full run is float64, as training amplifies float32 rounding: see TOLERANCE);
- ours_grad_clip: our LSTM built with grad_clip=v, which clamps the gradient of every step's gate
  pre-activations inside the recurrence. nn.LSTM cannot do this, so this run has no nn.LSTM twin
  and is only reported: the pair above uses the configuration both can run (clip_grad_norm_,
  which all three runs apply).

Writes to --out: best_<run>.pt (the best model of each run: state_dict, config, step, accuracy),
curves.json (every curve and the differences) and curves.png, and prints the tables.

    python scripts/train_seq2seq.py [--quick] [--task reverse|sort|add] [--norm batch|layer]
                                    [--steps N] [--dtype float32|float64] [--seed N]
                                    [--out DIR] [--threads N] [--tolerance X]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import seq2seq_report
import torch
from seq2seq_data import TASKS
from seq2seq_model import LABELS, RUNS
from seq2seq_train import QUICK, Config, eval_batch, train, training_batches

# Largest |loss_nn - loss_ours| accepted at any step, training and evaluation. Both runs start
# from the same weights and see the same batches and coin flips, so they differ by rounding only
# (torch's CPU LSTM and our NumPy kernels add the same products in other orders): in float32 at
# most 2.4e-7 over --quick's 100 steps (AMD EPYC, 1 and 2 threads; measured), in float64 at most
# 4.6e-12 over the full run's 1500. A difference in what is computed shows far above 1e-4:
# feeding one example its own predictions instead of its targets (one row of coin flips changed
# at step 11 of --quick) moved that step's loss by 2.9e-3 and later ones by up to 1.6e-2
# (measured). Longer float32 runs need a --tolerance: training amplifies float32 rounding past
# 1e-4 within a few hundred steps by itself (seq2seq_train.Config.dtype).
TOLERANCE = 1e-4
DEFAULT_OUT = Path("/tmp/train_seq2seq")
# One decoder step of these models is far too little work to share between threads: on a busy
# 2-core machine --quick took 264 s with torch's 2 threads and 17 s with 1 (measured).
DEFAULT_THREADS = 1


def run_all(cfg: Config, out: Path) -> dict:
    """Train every run of RUNS on the same batches; returns {run: Run}."""
    batches, held_out = training_batches(cfg), eval_batch(cfg)
    runs = {}
    for name in RUNS:
        runs[name] = train(name, cfg, batches, held_out, out)
        print(f"{LABELS[name]:>32}: {runs[name].seconds:5.1f} s, best exact match "
              f"{runs[name].best_accuracy:.3f} at step {runs[name].best_step}", flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    """Train, report, plot; 0 when nn.LSTM's and our curves agree within the tolerance, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a small model and 100 steps (~10 s of training)")
    parser.add_argument("--task", choices=TASKS, default=Config.task)
    parser.add_argument("--norm", choices=("batch", "layer"), default=Config.norm,
                        help="input normalisation: BatchNorm1d or LayerNorm over the embedding")
    parser.add_argument("--steps", type=int, help="training steps per run (default: the preset's)")
    parser.add_argument("--dtype", choices=("float32", "float64"),
                        help="default: float32 with --quick, else float64 (see Config.dtype)")
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"torch threads (default {DEFAULT_THREADS})")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"largest accepted |loss difference| nn.LSTM vs ours (default {TOLERANCE:g})")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if not args.tolerance >= 0:
        parser.error("--tolerance must be >= 0")

    preset = dict(QUICK) if args.quick else {}
    for name in ("steps", "dtype"):
        if getattr(args, name) is not None:
            preset[name] = getattr(args, name)
    cfg = dataclasses.replace(Config(**preset), task=args.task, norm=args.norm, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    runs = run_all(cfg, args.out)
    print("\n" + seq2seq_report.tables(runs, cfg, args.tolerance))
    seq2seq_report.write_json(args.out / "curves.json", runs, cfg, args.tolerance, args.quick)
    seq2seq_report.plot(args.out / "curves.png", runs, cfg)
    print(f"\nwrote {args.out}/curves.json, curves.png, best_<run>.pt; "
          f"total {time.perf_counter() - start:.1f} s ({torch.get_num_threads()} torch threads)")
    diff = seq2seq_report.differences(runs)
    if not (diff["train_loss"] <= args.tolerance and diff["eval_loss"] <= args.tolerance):  # NaN fails too
        print(f"FAIL: nn.LSTM's and our loss curves differ by {diff['train_loss']:.2e} (training), "
              f"{diff['eval_loss']:.2e} (evaluation) > {args.tolerance:.0e}", file=sys.stderr)
        return 1
    print("OK: nn.LSTM's and our curves agree within the tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
