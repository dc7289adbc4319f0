"""Prune half the hidden units of a trained character LM, fine-tune it, and time both LSTMs.

The model, corpus and training loop are scripts/demo.py's (embedding -> 2-layer LSTM -> linear
head, on scripts/data/python_docs.txt). The script trains it with nn.LSTM on the first 90% of the
text, then `torch_lstm_ext.prune_hidden_units` removes --amount of the units of every layer
(criterion "activation", measured on training batches) and `prune_linear_inputs` cuts the head
to the kept features. It reports held-out loss and next-character accuracy for: the trained
model, the same model trained --finetune steps more (the control), the pruned model by either
criterion before fine-tuning, and the activation-pruned model after --finetune steps. Then it
times the forward pass of the original and the pruned LSTM alone, side by side (interleaved
calls, medians, inference mode), as torch_lstm_ext.LSTM and as nn.LSTM with the same weights.

    python scripts/prune_example.py [--quick] [--steps N] [--finetune N] [--amount A] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time

import demo
import torch
from bench_measure import interleaved_medians
from torch import nn

import torch_lstm_ext

HELD_OUT = 0.1  # the last 10% of the text: evaluation windows never overlap training ones
EVAL_BATCHES = 8
SCORE_BATCHES = 4  # training batches the activation statistic is measured on
# Run lengths; --quick also halves the batches (demo.Config's 32 x 64 characters).
FULL = dict(steps=300, finetune=100, repeats=50, timing_budget_s=60.0)
QUICK = dict(steps=10, finetune=3, repeats=5, timing_budget_s=2.0, batch_size=16, seq_len=32)


@torch.no_grad()
def evaluate(model: demo.CharLM, batches) -> tuple[float, float]:
    """Mean cross-entropy and next-character accuracy over `batches`, in eval mode."""
    model.eval()
    loss, correct, count = 0.0, 0, 0
    for x, y in batches:
        logits, _ = model(x)
        loss += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                            reduction="sum").item()
        correct += int((logits.argmax(-1) == y).sum())
        count += y.numel()
    return loss / count, correct / count


def pruned_model(model: demo.CharLM, amount: float, criterion: str, score_batches) -> demo.CharLM:
    """A copy of `model` with its LSTM's units pruned and the head cut to the kept features."""
    data = None
    if criterion == "activation":
        with torch.no_grad():
            data = torch.cat([model.embed(x) for x, _ in score_batches])  # [batches * B, T, E]
    lstm, kept = torch_lstm_ext.prune_hidden_units(model.lstm, amount, criterion, data)
    pruned = copy.deepcopy(model)
    pruned.lstm = lstm
    pruned.head = torch_lstm_ext.prune_linear_inputs(model.head, kept[-1], model.lstm.hidden_size)
    return pruned


def as_nn_lstm(lstm: nn.Module) -> nn.LSTM:
    """An nn.LSTM with `lstm`'s configuration and weights (plain LSTMs only)."""
    twin = nn.LSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias, lstm.batch_first,
                   lstm.dropout, lstm.bidirectional, lstm.proj_size)
    twin.load_state_dict(lstm.state_dict())
    return twin


def time_forwards(original: nn.LSTM, pruned: torch_lstm_ext.LSTM, x: torch.Tensor, repeats: int,
                  budget_s: float) -> tuple[dict[str, float], int]:
    """Median forward ms of both LSTMs, as ours and as nn.LSTM, interleaved call by call, and the
    number of timed calls of each (`repeats`, fewer if `budget_s` runs out first, at least 3)."""
    modules = {
        f"ours H={original.hidden_size}": torch_lstm_ext.LSTM.from_torch(original),
        f"ours H={pruned.hidden_size}": pruned,
        f"nn.LSTM H={original.hidden_size}": original,
        f"nn.LSTM H={pruned.hidden_size}": as_nn_lstm(pruned),
    }
    for module in modules.values():
        module.eval()
    calls = {name: (lambda m=module: m(x)) for name, module in modules.items()}
    with torch.inference_mode():
        medians, rounds = interleaved_medians(calls, {name: lambda: None for name in calls}, "cpu",
                                              repeats, budget_s)
    return {name: seconds * 1e3 for name, seconds in medians.items()}, rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short run: fewer and smaller batches, fewer repeats (under 30 s)")
    parser.add_argument("--steps", type=int, help="training steps before pruning (default 300)")
    parser.add_argument("--finetune", type=int, help="fine-tuning steps after pruning (default 100)")
    parser.add_argument("--amount", type=float, default=0.5, help="fraction of hidden units removed")
    parser.add_argument("--repeats", type=int, help="timed forward calls of each LSTM (default 50)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    quick = QUICK if args.quick else FULL
    steps = args.steps if args.steps is not None else quick["steps"]
    finetune = args.finetune if args.finetune is not None else quick["finetune"]
    repeats = args.repeats if args.repeats is not None else quick["repeats"]
    if steps < 1 or finetune < 1 or repeats < 3:
        parser.error("--steps and --finetune must be at least 1, --repeats at least 3")
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    text, vocab = demo.load_corpus()
    split = int(len(text) * (1 - HELD_OUT))
    shape = {key: quick[key] for key in ("batch_size", "seq_len") if key in quick}
    cfg = demo.Config(steps=steps, **shape)
    train_batches = demo.make_batches(text[:split], cfg)
    # Distinct seeds per draw: the same generator seed would repeat the training windows.
    finetune_batches = demo.make_batches(text[:split],
                                         dataclasses.replace(cfg, steps=finetune, seed=cfg.seed + 10))
    eval_batches = demo.make_batches(text[split:],
                                     dataclasses.replace(cfg, steps=EVAL_BATCHES, seed=cfg.seed + 20))

    model = demo.build(len(vocab), cfg, ours=False)
    demo.train(model, train_batches, cfg, "train nn.LSTM")
    control = copy.deepcopy(model)
    demo.train(control, finetune_batches, cfg, "control")
    pruning_start = time.perf_counter()
    by_activation = pruned_model(model, args.amount, "activation", train_batches[:SCORE_BATCHES])
    pruning_s = time.perf_counter() - pruning_start
    by_weight = pruned_model(model, args.amount, "weight", None)
    finetuned = copy.deepcopy(by_activation)
    demo.train(finetuned, finetune_batches, cfg, "fine-tune")

    hidden, kept = model.lstm.hidden_size, by_activation.lstm.hidden_size
    rows = [
        (f"trained, H={hidden} ({steps} steps)", model),
        (f"trained + {finetune} more steps (control)", control),
        (f"pruned to H={kept} by activation", by_activation),
        (f"pruned to H={kept} by weight norm", by_weight),
        (f"pruned by activation + {finetune} fine-tune steps", finetuned),
    ]
    print(f"\npruning by activation on {SCORE_BATCHES} training batches took {pruning_s:.2f} s")
    print(f"held-out: {EVAL_BATCHES} batches of {cfg.batch_size} x {cfg.seq_len} characters "
          f"from the last {HELD_OUT:.0%} of the text")
    print("| model | parameters | loss | accuracy |\n| --- | ---: | ---: | ---: |")
    for name, m in rows:
        loss, accuracy = evaluate(m, eval_batches)
        print(f"| {name} | {sum(p.numel() for p in m.parameters())} | {loss:.3f} | {accuracy:.1%} |")

    x = model.embed(eval_batches[0][0]).detach()
    times, rounds = time_forwards(model.lstm, finetuned.lstm, x, repeats, quick["timing_budget_s"])
    print(f"\nLSTM forward, inference, input [{cfg.batch_size}, {cfg.seq_len}, {cfg.embed_size}] "
          f"(batch_first), {cfg.num_layers} layers, median of {rounds} interleaved calls, "
          f"{torch.get_num_threads()} threads:")
    print("| LSTM | original ms | pruned ms | speed-up |\n| --- | ---: | ---: | ---: |")
    for impl in ("ours", "nn.LSTM"):
        before, after = times[f"{impl} H={hidden}"], times[f"{impl} H={kept}"]
        print(f"| {impl} | {before:.2f} | {after:.2f} | {before / after:.2f}x |")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
