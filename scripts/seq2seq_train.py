"""One training run of scripts/train_seq2seq.py: the recipe, its schedules, evaluation, checkpoint.

Adam; learning rate warmed up linearly, then cosine-decayed; teacher forcing whose ratio falls
linearly over training, its per-token coin flips drawn from a dedicated generator (so every run
draws the same ones whatever its model predicts); clip_grad_norm_ after every backward;
evaluation every `eval_every` steps by teacher-forced loss and by exact-match accuracy under
greedy decoding; the model with the best accuracy so far saved as <out>/best_<run>.pt.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from seq2seq_data import PAD, Batch, exact_match, make_batch
from seq2seq_model import Seq2Seq, build


@dataclass
class Config:
    """The task, model and recipe; the defaults are the full run, QUICK the one for --quick."""

    task: str = "reverse"
    min_len: int = 1
    max_len: int = 7
    steps: int = 1500
    batch_size: int = 64
    embed_size: int = 32
    hidden_size: int = 128
    num_layers: int = 2
    dropout: float = 0.1  # between the LSTM layers; our LSTM draws nn.LSTM's masks
    norm: str = "batch"  # input normalisation of the source embedding: "batch" or "layer"
    lr: float = 3e-3
    warmup: int = 100  # steps of linear warmup before the cosine decay
    min_lr_ratio: float = 0.05  # the cosine decays to lr * min_lr_ratio
    tf_start: float = 1.0  # teacher-forcing ratio at the first step ...
    tf_end: float = 0.5  # ... falling linearly to this at the last
    # clip_grad_norm_'s max_norm, every run: near the median gradient norm (measured over
    # --quick: median 0.28, at most 0.51), so it acts on the larger steps.
    clip: float = 0.3
    # Our LSTM's gate-gradient clamp, the third run only. A mean over the batch's tokens makes
    # these gradients small: over --quick (measured with a step-by-step autograd LSTM) each
    # step's largest was 6e-4 to 3e-3 and the median ~1e-6, so 1e-3 clamps the top 0.02-0.06%
    # of them (none at step 1) and still moves the loss curve by ~5e-2.
    grad_clip: float = 1e-3
    eval_every: int = 100
    eval_size: int = 512
    seed: int = 0
    # Of every parameter and activation: "float32" or "float64". The full run is float64: over
    # ~300 steps training itself amplifies float32 rounding past 1e-4 (nn.LSTM against nn.LSTM
    # with weights moved by one ulp, measured: 1e-4 by step 350, 2e-2 by 500, 6e-2 by 600), which
    # would hide what the comparison is for; in float64 ours tracked nn.LSTM to 4.6e-12 over the
    # full run's 1500 steps (measured).
    dtype: str = "float64"


# --quick: about 10 s of training for all three runs on 2 busy cores, and still ~92% exact
# matches at the end, so a checkpoint that failed to load would show.
QUICK = {"dtype": "float32", "max_len": 4, "steps": 100, "hidden_size": 64, "num_layers": 1,
         "dropout": 0.0, "lr": 8e-3, "warmup": 10, "eval_every": 25, "eval_size": 256}


@dataclass
class Run:
    """One run's curves: per step the training loss, learning rate and teacher-forcing ratio; per
    evaluation its step (1-based), teacher-forced loss and exact-match accuracy; the best one.
    grad_norm is the total gradient norm before clip_grad_norm_ (above cfg.clip: clipped)."""

    name: str
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    teacher_ratio: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    best_step: int = 0
    best_accuracy: float = -1.0
    seconds: float = 0.0


def model_for(run: str, cfg: Config, seed: int | None = None) -> Seq2Seq:
    """The model of `run` built from cfg (seed: cfg.seed unless given), in cfg.dtype."""
    model = build(run, cfg.seed if seed is None else seed, cfg.embed_size, cfg.hidden_size,
                  cfg.num_layers, cfg.dropout, cfg.norm, cfg.grad_clip)
    return model.to(getattr(torch, cfg.dtype))


def training_batches(cfg: Config) -> list[Batch]:
    """Every step's batch, drawn once up front from their own generator so all runs see the same."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    return [make_batch(cfg.task, cfg.batch_size, gen, cfg.min_len, cfg.max_len) for _ in range(cfg.steps)]


def eval_batch(cfg: Config) -> Batch:
    """The held-out set, from a generator of its own (its examples may recur in training: the
    space of short digit strings is small, and the task is to compare runs, not to generalise)."""
    return make_batch(cfg.task, cfg.eval_size, torch.Generator().manual_seed(cfg.seed + 2),
                      cfg.min_len, cfg.max_len)


def lr_factor(step: int, cfg: Config) -> float:
    """Multiplier of cfg.lr at 0-based `step`: linear warmup to 1, then cosine to min_lr_ratio."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - 1 - cfg.warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def teacher_ratio(step: int, cfg: Config) -> float:
    """Probability that a target token is fed to the next decoder step at 0-based `step`."""
    return cfg.tf_start + (cfg.tf_end - cfg.tf_start) * step / max(1, cfg.steps - 1)


def loss_of(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the target tokens (EOS included, padding not)."""
    return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=PAD)


@torch.no_grad()
def evaluate(model: Seq2Seq, batch: Batch) -> tuple[float, float]:
    """(teacher-forced loss, exact-match accuracy under greedy decoding) on `batch`, in eval mode
    (BatchNorm's running statistics, no dropout); restores the model's mode."""
    was_training = model.training
    model.eval()
    try:
        all_teacher = torch.ones(batch.tgt.shape, dtype=torch.bool)
        loss = loss_of(model(batch.src, batch.src_len, batch.tgt, all_teacher), batch.tgt).item()
        pred = model.greedy(batch.src, batch.src_len, batch.tgt.shape[1])
        accuracy = exact_match(pred, batch.tgt).float().mean().item()
    finally:
        model.train(was_training)
    return loss, accuracy


def save_checkpoint(path: Path, model: Seq2Seq, cfg: Config, run: str, step: int, accuracy: float) -> None:
    torch.save({"run": run, "config": asdict(cfg), "step": step, "accuracy": accuracy,
                "state_dict": model.state_dict()}, path)


def load_checkpoint(path: Path) -> tuple[Seq2Seq, dict]:
    """A fresh model of the checkpoint's run (built from another seed, so nothing of the
    original's initialisation survives but what the file holds) with the saved weights."""
    checkpoint = torch.load(path, weights_only=True)
    cfg = Config(**checkpoint["config"])
    model = model_for(checkpoint["run"], cfg, seed=cfg.seed + 1000)
    model.load_state_dict(checkpoint["state_dict"])
    return model, checkpoint


def train(run: str, cfg: Config, batches: list[Batch], held_out: Batch, out: Path) -> Run:
    """Train the model of `run` on `batches`, evaluating on `held_out` and checkpointing the best."""
    start = time.perf_counter()
    model = model_for(run, cfg)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg))
    coins = torch.Generator().manual_seed(cfg.seed + 3)
    result = Run(run)
    for step, batch in enumerate(batches):
        ratio = teacher_ratio(step, cfg)
        teacher = torch.rand(batch.tgt.shape, generator=coins) < ratio
        loss = loss_of(model(batch.src, batch.src_len, batch.tgt, teacher), batch.tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        result.grad_norm.append(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip).item())
        result.lr.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
        result.train_loss.append(loss.item())
        result.teacher_ratio.append(ratio)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            eval_loss, accuracy = evaluate(model, held_out)
            result.eval_step.append(step + 1)
            result.eval_loss.append(eval_loss)
            result.eval_accuracy.append(accuracy)
            if accuracy > result.best_accuracy:
                result.best_step, result.best_accuracy = step + 1, accuracy
                save_checkpoint(out / f"best_{run}.pt", model, cfg, run, step + 1, accuracy)
    result.seconds = time.perf_counter() - start
    return result
