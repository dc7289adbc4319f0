"""The outputs of scripts/train_seq2seq.py: the printed tables, the curves' JSON and their PNG."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from pathlib import Path

import torch
from bench_measure import cpu_name
from seq2seq_model import LABELS, NN, OURS, OURS_GRAD_CLIP, RUNS
from seq2seq_train import Config, Run


def max_diff(a: list[float], b: list[float]) -> float:
    """Largest |a - b| over two equally long curves; NaN if either holds a NaN (max() would skip it)."""
    if len(a) != len(b):
        raise ValueError(f"curves of different lengths: {len(a)} and {len(b)}")
    return (torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)).abs().max().item()


def differences(runs: dict[str, Run]) -> dict[str, float]:
    """nn.LSTM against ours (training and evaluation loss), and ours against ours with grad_clip."""
    ref, ours, clipped = runs[NN], runs[OURS], runs[OURS_GRAD_CLIP]
    return {"train_loss": max_diff(ref.train_loss, ours.train_loss),
            "eval_loss": max_diff(ref.eval_loss, ours.eval_loss),
            "grad_clip_train_loss": max_diff(ours.train_loss, clipped.train_loss)}


def tables(runs: dict[str, Run], cfg: Config, tolerance: float) -> str:
    """Markdown: the curves at every evaluation, then one row per run."""
    ref, ours, clipped = runs[NN], runs[OURS], runs[OURS_GRAD_CLIP]
    lines = ["| step | lr | teacher ratio | train loss nn.LSTM | ours | \\|diff\\| "
             "| eval loss nn.LSTM | ours | \\|diff\\| | exact match nn.LSTM | ours | ours, grad_clip |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k, step in enumerate(ref.eval_step):
        i = step - 1
        a, b = ref.train_loss[i], ours.train_loss[i]
        ea, eb = ref.eval_loss[k], ours.eval_loss[k]
        lines.append(f"| {step} | {ref.lr[i]:.2e} | {ref.teacher_ratio[i]:.2f} | {a:.5f} | {b:.5f} | "
                     f"{abs(a - b):.1e} | {ea:.5f} | {eb:.5f} | {abs(ea - eb):.1e} | "
                     f"{ref.eval_accuracy[k]:.3f} | {ours.eval_accuracy[k]:.3f} | "
                     f"{clipped.eval_accuracy[k]:.3f} |")
    lines += ["", "| run | best exact match (step) | final train loss | final eval loss "
              "| steps clipped by clip_grad_norm_ | time (s) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in RUNS:
        run = runs[name]
        clipped_steps = sum(norm > cfg.clip for norm in run.grad_norm)
        lines.append(f"| {LABELS[name]} | {run.best_accuracy:.3f} ({run.best_step}) "
                     f"| {run.train_loss[-1]:.5f} | {run.eval_loss[-1]:.5f} "
                     f"| {clipped_steps} / {cfg.steps} | {run.seconds:.1f} |")
    diff = differences(runs)
    lines += ["", f"max |diff| nn.LSTM vs ours over all {cfg.steps} steps: "
              f"train loss {diff['train_loss']:.1e}, eval loss {diff['eval_loss']:.1e} "
              f"(tolerance {tolerance:.0e}); ours vs ours with grad_clip={cfg.grad_clip:g}: "
              f"train loss {diff['grad_clip_train_loss']:.1e}"]
    return "\n".join(lines)


def write_json(path: Path, runs: dict[str, Run], cfg: Config, tolerance: float, quick: bool) -> None:
    """The configuration, every curve, the differences and the machine, for tests and plots."""
    payload = {"config": asdict(cfg), "quick": quick, "tolerance": tolerance,
               "max_diff": differences(runs), "runs": {name: asdict(run) for name, run in runs.items()},
               "checkpoints": {name: f"best_{name}.pt" for name in runs},
               "machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "cpu": cpu_name()}}
    path.write_text(json.dumps(payload, indent=1))


def plot(path: Path, runs: dict[str, Run], cfg: Config) -> None:
    """Training loss per step and exact-match accuracy per evaluation, all three runs."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    styles = {NN: {"linewidth": 3, "alpha": 0.5}, OURS: {"linewidth": 1, "linestyle": "--"},
              OURS_GRAD_CLIP: {"linewidth": 1, "alpha": 0.8}}
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in runs.items():
        loss_ax.plot(range(1, len(run.train_loss) + 1), run.train_loss, label=LABELS[name], **styles[name])
        acc_ax.plot(run.eval_step, run.eval_accuracy, marker="o", markersize=3, label=LABELS[name],
                    **styles[name])
    diff = differences(runs)
    loss_ax.set(xlabel="step", ylabel="training loss (cross-entropy)", yscale="log",
                title=f"{cfg.task}: nn.LSTM vs ours, max |diff| = {diff['train_loss']:.1e}")
    acc_ax.set(xlabel="step", ylabel="exact match, greedy decoding", ylim=(0, 1), title="held-out accuracy")
    loss_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
