"""The digit-string tasks of scripts/train_seq2seq.py: generated examples, padded batches, scoring.

Tokens: PAD, SOS, EOS, PLUS, then the digits 0-9. A source is a string of digits ("add": two
numbers joined by PLUS); its target is the answer's digits followed by EOS. Everything is drawn
from a torch.Generator the caller seeds, so a batch is a pure function of the seed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

PAD, SOS, EOS, PLUS = 0, 1, 2, 3
DIGIT0 = 4  # token of the digit 0; digit d is DIGIT0 + d
VOCAB_SIZE = DIGIT0 + 10
TASKS = ("reverse", "sort", "add")


class Batch(NamedTuple):
    """src [B, S] source tokens padded with PAD; src_len [B] (int64, CPU) unpadded source lengths;
    tgt [B, T] target tokens, each row's answer then EOS, padded with PAD."""

    src: torch.Tensor
    src_len: torch.Tensor
    tgt: torch.Tensor


def answer(task: str, digits: list[int], split: int | None = None) -> list[int]:
    """The target digits for source `digits`; for "add", the operands are digits[:split] and
    digits[split:] (most significant digit first)."""
    if task == "reverse":
        return digits[::-1]
    if task == "sort":
        return sorted(digits)
    if task == "add":
        total = int("".join(map(str, digits[:split]))) + int("".join(map(str, digits[split:])))
        return [int(ch) for ch in str(total)]
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def _example(task: str, gen: torch.Generator, min_len: int, max_len: int) -> tuple[list[int], list[int]]:
    """One (source tokens, target tokens) pair; each string (each operand for "add") has a length
    drawn uniformly from [min_len, max_len]."""
    def digits() -> list[int]:
        length = int(torch.randint(min_len, max_len + 1, (), generator=gen))
        return torch.randint(0, 10, (length,), generator=gen).tolist()

    if task == "add":
        a, b = digits(), digits()
        source = [DIGIT0 + d for d in a] + [PLUS] + [DIGIT0 + d for d in b]
        target = answer(task, a + b, split=len(a))
    else:
        a = digits()
        source = [DIGIT0 + d for d in a]
        target = answer(task, a)
    return source, [DIGIT0 + d for d in target] + [EOS]


def _pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def make_batch(task: str, size: int, gen: torch.Generator, min_len: int, max_len: int) -> Batch:
    """`size` examples of `task` drawn from `gen`, padded into one Batch."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    pairs = [_example(task, gen, min_len, max_len) for _ in range(size)]
    sources, targets = zip(*pairs)
    return Batch(_pad(sources), torch.tensor([len(s) for s in sources]), _pad(targets))


def exact_match(pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """bool [B]: pred [B, >=T] equals tgt [B, T] up to and including tgt's EOS (what pred holds
    after its EOS does not count: greedy decoding runs every row for the same number of steps)."""
    pred = pred[:, : tgt.shape[1]]
    return ((pred == tgt) | (tgt == PAD)).all(dim=1)
