"""Weight-only quantization of a trained character LM: accuracy, memory and CPU inference speed.

The model, corpus and training loop are scripts/demo.py's (embedding -> 2-layer LSTM -> linear
head, on scripts/data/python_docs.txt), trained with nn.LSTM on the first 90% of the text as in
scripts/prune_example.py, then turned into torch_lstm_ext.LSTM by replace_lstm. Copies of it get
`torch_lstm_ext.quantize_weights(model, int8)` and `(model, float16)`; torch.ao's
`quantize_dynamic(nn.LSTM model, {nn.LSTM}, qint8)` is the anchor. The script reports:

- accuracy on the held-out last 10%: loss (mean cross-entropy), perplexity, their relative
  differences to fp32, and the largest |difference| of the LSTM outputs and of the logits;
- memory: the bytes of the LSTM's matrices (W_ih, W_hh, W_hr, with the int8 scales) and of its
  whole state_dict (biases included), per storage;
- speed: the LSTM forward alone, inference mode, side by side (interleaved calls, medians) for
  nn.LSTM fp32, ours fp32 / int8 / fp16 and torch.ao's qint8 LSTM on the same weights, at the
  trained model's shape and at larger standard ones; and, timed in the same rounds, the
  dequantization ours does once per layer call, to show where int8's and fp16's extra time goes.

The bars: int8 loss and perplexity within 1% of fp32, float16 within 0.1%; int8 weights at most
0.3x the fp32 bytes, float16 at most 0.55x. PASS/FAIL is printed per bar, and a full run exits
with status 1 when one fails (so it doubles as a check); --quick only reports.

    python scripts/quantize_report.py [--quick] [--steps N] [--repeats N] [--threads N] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import sys
import time
import warnings
from pathlib import Path

import demo
import numpy as np
import torch
from bench_measure import cpu_name, interleaved_medians
from torch import nn

import torch_lstm_ext
from torch_lstm_ext.weight_quantization import SCALE_SUFFIX, dequantized_matrix, matrix_names

HELD_OUT = 0.1  # the last 10% of the text: evaluation windows never overlap training ones
# The bars: |relative difference| of loss and perplexity to fp32, and weight-bytes ratios.
ACCURACY_BARS = {"int8": 0.01, "fp16": 0.001}
MEMORY_BARS = {"int8": 0.3, "fp16": 0.55}
STORAGES = {"int8": torch.int8, "fp16": torch.float16}
# Timed standard shapes besides the trained LM's LSTM: (T, B, I, H, layers), sequence-first.
FULL_SHAPES = [(100, 32, 256, 256, 1), (100, 32, 256, 256, 2), (100, 32, 512, 512, 1), (100, 32, 512, 512, 2)]
QUICK_SHAPES = [(10, 4, 16, 16, 1)]
# Run lengths; --quick also halves the batches (demo.Config's 32 x 64 characters). timing_budget_s
# is per timed shape. 300 steps: the held-out loss is lowest around 300-350 (measured at 2 threads,
# every 50 steps: 2.77 at 50, 1.84 at 300, 1.82 at 350, then up to 2.02 at 600 as the model
# memorises the 14 KB of training text), and the training takes about a minute on 2 cores.
FULL = dict(steps=300, eval_batches=16, repeats=60, timing_budget_s=40.0, shapes=FULL_SHAPES)
QUICK = dict(steps=10, eval_batches=4, repeats=5, timing_budget_s=1.0, shapes=QUICK_SHAPES,
             batch_size=16, seq_len=32)
LOAD_WARNING = 2.0  # the machine has 2 cores: a higher 1-minute load means timings shared them


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, as uptime prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


@torch.no_grad()
def evaluate(model: demo.CharLM, reference: demo.CharLM, batches) -> dict[str, float]:
    """Loss, perplexity and next-character accuracy of `model` over `batches`, and the largest
    |difference| of its LSTM outputs and logits to `reference`'s, both in eval mode. no_grad:
    a quantized LSTM is inference-only."""
    model.eval()
    reference.eval()
    loss, correct, count, out_err, logit_err = 0.0, 0, 0, 0.0, 0.0
    for x, y in batches:
        out, _ = model.lstm(model.embed(x))
        logits = model.head(out)
        ref_out, _ = reference.lstm(reference.embed(x))
        out_err = max(out_err, (out - ref_out).abs().max().item())
        logit_err = max(logit_err, (logits - reference.head(ref_out)).abs().max().item())
        loss += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                            reduction="sum").item()
        correct += int((logits.argmax(-1) == y).sum())
        count += y.numel()
    loss /= count
    return dict(loss=loss, perplexity=math.exp(loss), accuracy=correct / count, out_err=out_err,
                logit_err=logit_err)


def quantized(model: nn.Module, storage: str) -> nn.Module:
    """A copy of `model` (holding our LSTM) with its LSTM's weights in `storage`."""
    return torch_lstm_ext.quantize_weights(copy.deepcopy(model), STORAGES[storage])


def ao_quantized(model: nn.Module) -> nn.Module:
    """torch.ao's dynamic qint8 quantization of the nn.LSTMs in a copy of `model` (only those:
    the head stays fp32, as in our quantized models). torch 2.13 deprecates torch.ao.quantization
    and its quantized tensors; it is still the reference point, so its two warnings are muted."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.LSTM}, dtype=torch.qint8)


def weight_bytes(lstm: nn.Module) -> int:
    """Bytes of the LSTM's matrices W_ih, W_hh, W_hr and, for int8, their per-row scales."""
    total = 0
    for name in matrix_names(lstm):
        for t in (getattr(lstm, name), getattr(lstm, name + SCALE_SUFFIX, None)):
            if t is not None:
                total += t.numel() * t.element_size()
    return total


def state_dict_bytes(lstm: nn.Module) -> int:
    """Bytes of every tensor in the LSTM's state_dict (biases included)."""
    return sum(t.numel() * t.element_size() for t in lstm.state_dict().values())


def dequantize_all(lstm: nn.Module) -> None:
    """What our int8 / fp16 LSTM does with its matrices on every call, at once: each becomes a
    float32 matrix (W_ih in the input projection, W_hh / W_hr in the NumPy backend, which then
    reuses them for all T steps). The fp32 LSTM skips this work."""
    for name in matrix_names(lstm):
        dequantized_matrix(getattr(lstm, name), getattr(lstm, name + SCALE_SUFFIX, None), torch.float32)


def time_lstms(lstm: nn.LSTM, x: torch.Tensor, repeats: int, budget_s: float) -> tuple[dict[str, float], int]:
    """Median forward ms of nn.LSTM `lstm` and, on the same weights, ours fp32 / int8 / fp16 and
    torch.ao's qint8 LSTM, plus the dequantization of our int8 and fp16 matrices, all interleaved
    call by call in inference mode; and the number of timed rounds."""
    ours = torch_lstm_ext.LSTM.from_torch(copy.deepcopy(lstm))
    int8, fp16 = (torch_lstm_ext.quantize_weights(copy.deepcopy(ours), STORAGES[s]) for s in ("int8", "fp16"))
    modules = {"nn.LSTM fp32": lstm, "ours fp32": ours, "ours int8": int8, "ours fp16": fp16,
               "torch.ao qint8": ao_quantized(nn.Sequential(lstm))[0]}
    for module in modules.values():
        module.eval()
    calls = {name: (lambda m=module: m(x)) for name, module in modules.items()}
    calls["dequantize int8"] = lambda: dequantize_all(int8)
    calls["dequantize fp16"] = lambda: dequantize_all(fp16)
    with torch.inference_mode():
        medians, rounds = interleaved_medians(calls, {name: lambda: None for name in calls}, "cpu",
                                              repeats, budget_s)
    return {name: seconds * 1e3 for name, seconds in medians.items()}, rounds


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def accuracy_section(lines: list[str], models: dict[str, nn.Module], eval_batches, cfg) -> list[bool]:
    """The accuracy table and its bars (appended to `lines`); returns the bars' outcomes."""
    def reference(name: str) -> str:  # ours compare with ours fp32, torch's with nn.LSTM fp32
        return "ours fp32" if name.startswith("ours") else "nn.LSTM fp32"

    results = {name: evaluate(model, models[reference(name)], eval_batches) for name, model in models.items()}
    lines += ["## Accuracy (held-out)", "",
              f"{len(eval_batches)} batches of {cfg.batch_size} x {cfg.seq_len} characters from the last "
              f"{HELD_OUT:.0%} of the text. Differences: ours vs ours fp32, torch.ao vs nn.LSTM fp32.", "",
              "| model | loss | perplexity | accuracy | loss rel. diff | perplexity rel. diff "
              "| max abs diff LSTM output | max abs diff logits |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rel = {}
    for name, r in results.items():
        base = results[reference(name)]
        rel[name] = (r["loss"] / base["loss"] - 1, r["perplexity"] / base["perplexity"] - 1)
        lines.append(f"| {name} | {r['loss']:.5f} | {r['perplexity']:.4f} | {r['accuracy']:.2%} "
                     f"| {rel[name][0]:+.3e} | {rel[name][1]:+.3e} | {r['out_err']:.2e} "
                     f"| {r['logit_err']:.2e} |")
    fp32_gap = abs(results["ours fp32"]["loss"] - results["nn.LSTM fp32"]["loss"])
    lines += ["", f"ours fp32 vs nn.LSTM fp32 (same weights): |loss difference| {fp32_gap:.1e}", ""]
    outcomes = []
    for storage, bar in ACCURACY_BARS.items():
        loss_rel, ppl_rel = rel[f"ours {storage}"]
        for what, value in (("loss", loss_rel), ("perplexity", ppl_rel)):
            ok = abs(value) <= bar
            outcomes.append(ok)
            lines.append(f"- {verdict(ok)}: {storage} {what} within {bar:.1%} of fp32 ({value:+.3%})")
    return outcomes


def memory_section(lines: list[str], lstms: dict[str, nn.Module]) -> list[bool]:
    """The memory table of the trained LM's LSTM per storage and its bars; returns the outcomes."""
    base_w, base_sd = weight_bytes(lstms["fp32"]), state_dict_bytes(lstms["fp32"])
    lines += ["", "## Memory (the trained LM's LSTM)", "",
              "| storage | weight bytes (W_ih, W_hh, scales) | vs fp32 | state_dict bytes | vs fp32 |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for storage, lstm in lstms.items():
        w, sd = weight_bytes(lstm), state_dict_bytes(lstm)
        lines.append(f"| {storage} | {w} | {w / base_w:.3f}x | {sd} | {sd / base_sd:.3f}x |")
    lines.append("")
    outcomes = []
    for storage, bar in MEMORY_BARS.items():
        ratio = weight_bytes(lstms[storage]) / base_w
        outcomes.append(ratio <= bar)
        lines.append(f"- {verdict(ratio <= bar)}: {storage} weight bytes at most {bar}x fp32 ({ratio:.3f}x)")
    return outcomes


def speed_section(lines: list[str], shapes: list[tuple[str, nn.LSTM, torch.Tensor]], repeats: int,
                  budget_s: float) -> None:
    """The timing tables: ms per LSTM forward, ratios, and where the extra int8 / fp16 time goes."""
    times = []
    for label, lstm, x in shapes:
        ms, rounds = time_lstms(lstm, x, repeats, budget_s)
        times.append((label, ms, rounds))
        print(f"timed {label}: {rounds} rounds", file=sys.stderr)
    lines += ["", "## Speed (CPU inference, LSTM forward alone)", "",
              f"Median ms of interleaved calls under torch.inference_mode, {torch.get_num_threads()} "
              "threads, the same weights in every column; rounds per shape in the last column.", "",
              "| shape | nn.LSTM fp32 | ours fp32 | ours int8 | ours fp16 | torch.ao qint8 | rounds |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, ms, rounds in times:
        lines.append(f"| {label} | {ms['nn.LSTM fp32']:.2f} | {ms['ours fp32']:.2f} | {ms['ours int8']:.2f} "
                     f"| {ms['ours fp16']:.2f} | {ms['torch.ao qint8']:.2f} | {rounds} |")
    lines += ["", "Ratios (time / time of the reference; below 1: faster):", "",
              "| shape | nn.LSTM / ours fp32 | int8 / ours fp32 | fp16 / ours fp32 | ours fp32 / torch.ao "
              "| int8 / torch.ao | fp16 / torch.ao |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, ms, _ in times:
        f32, ao = ms["ours fp32"], ms["torch.ao qint8"]
        lines.append(f"| {label} | {ms['nn.LSTM fp32'] / f32:.2f} | {ms['ours int8'] / f32:.2f} "
                     f"| {ms['ours fp16'] / f32:.2f} | {f32 / ao:.2f} | {ms['ours int8'] / ao:.2f} "
                     f"| {ms['ours fp16'] / ao:.2f} |")
    lines += ["", "Where the extra time goes: our quantized LSTM turns each stored matrix into a float32 "
              "one once per layer call (W_ih for the input projection, W_hh for the NumPy step loop), "
              "then runs exactly the fp32 computation. The dequantization of all the LSTM's matrices "
              "was timed in the same rounds:", "",
              "| shape | ours int8 - ours fp32 ms | dequantize int8 ms | share of ours fp32 "
              "| ours fp16 - ours fp32 ms | convert fp16 ms | share of ours fp32 |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, ms, _ in times:
        f32 = ms["ours fp32"]
        lines.append(f"| {label} | {ms['ours int8'] - f32:+.2f} | {ms['dequantize int8']:.2f} "
                     f"| {ms['dequantize int8'] / f32:.1%} | {ms['ours fp16'] - f32:+.2f} "
                     f"| {ms['dequantize fp16']:.2f} | {ms['dequantize fp16'] / f32:.1%} |")
    # Said from the numbers: how large the dequantization is next to the measured differences.
    shares = [ms[f"dequantize {s}"] / ms["ours fp32"] for _, ms, _ in times for s in STORAGES]
    diffs = [ms[f"ours {s}"] / ms["ours fp32"] - 1 for _, ms, _ in times for s in STORAGES]
    lines += ["", f"The dequantization costs {min(shares):.1%} to {max(shares):.1%} of an fp32 call; "
              f"the quantized calls measured {min(diffs):+.1%} to {max(diffs):+.1%} against ours fp32."]


def standard_shapes(shapes, seed: int) -> list[tuple[str, nn.LSTM, torch.Tensor]]:
    """(label, nn.LSTM with seeded random weights, input [T, B, I]) per (T, B, I, H, layers)."""
    torch.manual_seed(seed)
    return [(f"T{T} B{B} I{I} H{H} L{L}", nn.LSTM(I, H, L), torch.randn(T, B, I)) for T, B, I, H, L in shapes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short run: tiny training, tiny shapes, few repeats (under 60 s); never fails")
    parser.add_argument("--steps", type=int, help=f"training steps (default {FULL['steps']})")
    parser.add_argument("--repeats", type=int, help=f"timed calls per shape (default {FULL['repeats']})")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, metavar="PATH", help="also write the markdown report here")
    args = parser.parse_args(argv)
    run = QUICK if args.quick else FULL
    steps = args.steps if args.steps is not None else run["steps"]
    repeats = args.repeats if args.repeats is not None else run["repeats"]
    if steps < 1 or repeats < 3 or args.threads < 1:
        parser.error("--steps and --threads must be at least 1, --repeats at least 3")
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    load_before = load_average()
    text, vocab = demo.load_corpus()
    split = int(len(text) * (1 - HELD_OUT))
    cfg = demo.Config(steps=steps, **{key: run[key] for key in ("batch_size", "seq_len") if key in run})
    train_batches = demo.make_batches(text[:split], cfg)
    # A distinct seed: the same generator seed would draw the training windows' start offsets.
    eval_batches = demo.make_batches(text[split:],
                                     dataclasses.replace(cfg, steps=run["eval_batches"], seed=cfg.seed + 20))

    model = demo.build(len(vocab), cfg, ours=False)
    curve = demo.train(model, train_batches, cfg, "train nn.LSTM")
    train_s = time.perf_counter() - start
    model.eval()
    ours = torch_lstm_ext.replace_lstm(copy.deepcopy(model))
    models = {"nn.LSTM fp32": model, "ours fp32": ours, "ours int8": quantized(ours, "int8"),
              "ours fp16": quantized(ours, "fp16"), "torch.ao qint8": ao_quantized(model)}

    command = " ".join(["python", "scripts/quantize_report.py", *(sys.argv[1:] if argv is None else argv)])
    lines = ["# Weight-only quantization of the character LM: accuracy, memory, CPU speed", "",
             f"`{command}`", "",
             f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, numpy {np.__version__}, "
             f"{torch.get_num_threads()} threads; load average at the start: {load_before}", "",
             f"Trained with nn.LSTM for {steps} steps ({cfg.batch_size} x {cfg.seq_len} characters, "
             f"{cfg.num_layers} layers, H={cfg.hidden_size}, embedding {cfg.embed_size}) in {train_s:.0f} s: "
             f"training loss {curve.losses[0]:.3f} at step 1, {curve.losses[-1]:.3f} at the last step.", ""]
    outcomes = accuracy_section(lines, models, eval_batches, cfg)
    outcomes += memory_section(lines, {"fp32": ours.lstm, "int8": models["ours int8"].lstm,
                                       "fp16": models["ours fp16"].lstm})

    lm_input = model.embed(eval_batches[0][0]).detach()
    lm_label = (f"char LM: T{cfg.seq_len} B{cfg.batch_size} I{cfg.embed_size} H{cfg.hidden_size} "
                f"L{cfg.num_layers} (trained)")
    shapes = [(lm_label, model.lstm, lm_input), *standard_shapes(run["shapes"], cfg.seed)]
    speed_section(lines, shapes, repeats, run["timing_budget_s"])

    load_after = load_average()
    busy = max(os.getloadavg()[0], float(load_before.split(",")[0])) > LOAD_WARNING
    lines += ["", f"Load average at the end: {load_after}"
              + (f" (above {LOAD_WARNING:g} on this machine: other work shared the CPUs during the run)"
                 if busy else ""),
              f"Total {time.perf_counter() - start:.1f} s.", ""]
    failed = not all(outcomes)
    if args.quick:
        lines.append("--quick: bars reported, not enforced.")
    else:
        lines.append("Result: " + ("FAIL: a bar is not met" if failed else "PASS: every bar is met"))
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    return 1 if failed and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
