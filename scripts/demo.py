"""Train a small character-level language model with torch.nn.LSTM, then with torch_lstm_ext.

The model is embedding -> 2-layer nn.LSTM (dropout between the layers) -> linear, trained on
scripts/data/python_docs.txt (Python documentation text, PSF license; see scripts/data/README.md).
It is trained twice from the same seed on the same batches: once as built, once after
`torch_lstm_ext.replace_lstm(model)`. Because our dropout draws the same random masks as nn.LSTM
on CPU and replace_lstm draws no random numbers, the two loss curves must agree up to float32
rounding; the script prints them side by side with the time per step of each and a text sample
from the replaced model, and exits with status 1 if the curves diverge (so it doubles as a check).

    python scripts/demo.py [--steps N] [--plot curves.png] [--sample N] [--tolerance X]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import torch_lstm_ext

DATA = Path(__file__).resolve().parent / "data" / "python_docs.txt"
PROMPT = "Beautiful is"  # the sample continues the first words of the Zen of Python
TEMPERATURE = 0.5  # below 1: fewer misspelt words than plain sampling, yet no greedy loops

# Largest |loss_nn - loss_ours| accepted at any step. Both runs start from the same weights and see
# the same batches and dropout masks, so they differ only by float32 rounding: the two backends
# (torch's CPU LSTM, our NumPy kernels) add the same products in different orders. With the
# default settings the two curves stay within a few float32 ulps of each other (measured: <= 6e-7
# over 200 steps, the same as nn.LSTM run with 1 thread against itself with 2); 1e-4 is ~200x
# that, room for other BLAS builds and thread counts, yet below what real bugs do: dropout masks
# drawn one RNG call off, or a bias left without gradient, move the loss by 5e-3 to 1e-2 within
# four steps (measured). Not every bug shows in a loss curve: Adam is invariant to the scale of a
# gradient, so one that is 1% too large changes nothing here; tests/ compare gradients directly.
# The learning rate is part of this budget: from about 7e-3 on, training becomes chaotic after
# ~150 steps and amplifies ulp-level differences to 1e-3, for nn.LSTM alone too (1 thread vs 2
# threads: 1e-4 at lr 7e-3; float32 vs float64 at lr 1e-2: 3e-3), while in float64 ours still
# tracks nn.LSTM to 1e-9. So longer or hotter runs than the defaults may need --tolerance.
TOLERANCE = 1e-4


@dataclass
class Config:
    """Model and training settings; the defaults keep the whole demo well under a minute."""

    steps: int = 200
    seed: int = 0
    batch_size: int = 32
    seq_len: int = 64
    embed_size: int = 32
    hidden_size: int = 128
    num_layers: int = 2
    dropout: float = 0.2
    lr: float = 5e-3  # below the chaotic regime, see TOLERANCE
    clip: float = 1.0


class CharLM(nn.Module):
    """Embedding -> multi-layer nn.LSTM -> linear head over the vocabulary."""

    def __init__(self, vocab_size: int, cfg: Config) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embed_size)
        self.lstm = nn.LSTM(cfg.embed_size, cfg.hidden_size, cfg.num_layers,
                            dropout=cfg.dropout, batch_first=True)
        self.head = nn.Linear(cfg.hidden_size, vocab_size)

    def forward(self, x: torch.Tensor, state=None):
        out, state = self.lstm(self.embed(x), state)
        return self.head(out), state


@dataclass
class Run:
    """One training run: the loss and wall time of every step."""

    losses: list[float]
    times: list[float]


@dataclass
class Result:
    """Both runs and the text sampled from the replaced model."""

    reference: Run  # nn.LSTM
    ours: Run  # after replace_lstm
    sample: str

    @property
    def max_diff(self) -> float:
        """Largest |difference| between the curves; NaN if either has a NaN (Python's max would skip it)."""
        ref = torch.tensor(self.reference.losses, dtype=torch.float64)
        return (ref - torch.tensor(self.ours.losses, dtype=torch.float64)).abs().max().item()


def load_corpus(path: Path = DATA) -> tuple[torch.Tensor, list[str]]:
    """The text as a 1-D tensor of character ids, and the sorted vocabulary."""
    text = path.read_text(encoding="utf-8")
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    return torch.tensor([index[ch] for ch in text], dtype=torch.long), vocab


def make_batches(data: torch.Tensor, cfg: Config) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every step's (input, target) windows, drawn once up front so both runs see the same ones.

    A private generator keeps the draws off the global RNG, which the dropout masks use.
    """
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    starts = torch.randint(0, len(data) - cfg.seq_len - 1, (cfg.steps, cfg.batch_size), generator=gen)
    window = torch.arange(cfg.seq_len + 1)
    batches = []
    for step_starts in starts:
        chunk = data[step_starts[:, None] + window]  # [batch, seq_len + 1]
        batches.append((chunk[:, :-1], chunk[:, 1:]))
    return batches


def train(model: CharLM, batches, cfg: Config, desc: str) -> Run:
    """Adam with gradient clipping over `batches`, timing each whole step (forward to update)."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    losses, times = [], []
    bar = tqdm(batches, desc=f"{desc:>14}", unit="step", leave=True)
    for step, (x, y) in enumerate(bar):
        start = time.perf_counter()
        logits, _ = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return Run(losses, times)


@torch.no_grad()
def generate(model: CharLM, vocab: list[str], prompt: str, length: int, temperature: float,
             seed: int) -> str:
    """Sample `length` characters after `prompt`, carrying the LSTM state one character at a time."""
    model.eval()
    index = {ch: i for i, ch in enumerate(vocab)}
    gen = torch.Generator().manual_seed(seed)
    # One character per call is far too little work to share between threads: waking the pool
    # costs more than it saves (on a busy 2-core machine, 0.3 ms vs 4 ms per nn.LSTM call).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        logits, state = model(torch.tensor([[index[ch] for ch in prompt]]))
        out = list(prompt)
        for _ in range(length):
            probs = torch.softmax(logits[0, -1] / temperature, dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=gen))
            out.append(vocab[nxt])
            logits, state = model(torch.tensor([[nxt]]), state)
    finally:
        torch.set_num_threads(threads)
    return "".join(out)


def build(vocab_size: int, cfg: Config, ours: bool) -> CharLM:
    """The model from `cfg.seed`; with `ours`, its nn.LSTM swapped in place by replace_lstm.

    The global seed is set here, before the initialisation, so the dropout masks drawn later in
    training come from the same RNG stream in both runs.
    """
    torch.manual_seed(cfg.seed)
    model = CharLM(vocab_size, cfg)
    if ours:
        torch_lstm_ext.replace_lstm(model)
        assert isinstance(model.lstm, torch_lstm_ext.LSTM)
    return model


def run(cfg: Config, sample_length: int = 300) -> Result:
    """Train with nn.LSTM, then the identical model after replace_lstm; sample from the latter."""
    data, vocab = load_corpus()
    batches = make_batches(data, cfg)
    reference = train(build(len(vocab), cfg, ours=False), batches, cfg, "nn.LSTM")
    model = build(len(vocab), cfg, ours=True)
    ours = train(model, batches, cfg, "torch_lstm_ext")
    sample = generate(model, vocab, PROMPT, sample_length, TEMPERATURE, cfg.seed) if sample_length else ""
    return Result(reference, ours, sample)


def report(result: Result, cfg: Config, tolerance: float) -> None:
    """Both loss curves side by side, the largest difference, the time per step and the sample."""
    ref, ours = result.reference, result.ours
    every = max(1, cfg.steps // 10)  # about ten rows: step 1, then every `every` steps, then the last
    rows = sorted({0, cfg.steps - 1} | set(range(every - 1, cfg.steps, every)))
    print(f"\n{'step':>6}  {'nn.LSTM':>10}  {'ours':>10}  {'|diff|':>9}")
    for i in rows:
        a, b = ref.losses[i], ours.losses[i]
        print(f"{i + 1:>6}  {a:>10.6f}  {b:>10.6f}  {abs(a - b):>9.2e}")
    print(f"\nmax |diff| over all {cfg.steps} steps: {result.max_diff:.2e} (tolerance {tolerance:.0e})")
    # The first steps include one-off warm-up costs (allocations, kernel setup): the median
    # ignores them without picking an arbitrary number of steps to drop.
    t_ref, t_ours = statistics.median(ref.times), statistics.median(ours.times)
    print(f"median time per step: nn.LSTM {t_ref * 1e3:.1f} ms, torch_lstm_ext {t_ours * 1e3:.1f} ms "
          f"(ours / nn.LSTM = {t_ours / t_ref:.2f}x; {torch.get_num_threads()} torch threads)")
    if result.sample:
        print(f"\nsample from the replaced model (temperature {TEMPERATURE}, seed {cfg.seed}):\n" + "-" * 60)
        print(result.sample)
        print("-" * 60)


def plot(result: Result, path: Path) -> None:
    """Save both loss curves to a PNG (matplotlib imported only when asked for)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = range(1, len(result.reference.losses) + 1)
    ax.plot(steps, result.reference.losses, label="torch.nn.LSTM", linewidth=3, alpha=0.5)
    ax.plot(steps, result.ours.losses, label="torch_lstm_ext (replace_lstm)", linewidth=1, linestyle="--")
    ax.set(xlabel="step", ylabel="training loss (cross-entropy)",
           title=f"char-level LM, max |diff| = {result.max_diff:.1e}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot saved to {path}")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 when the two loss curves agree within the tolerance, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=Config.steps, help="training steps per run")
    parser.add_argument("--plot", type=Path, metavar="PATH", help="save both loss curves to this PNG")
    parser.add_argument("--sample", type=int, default=300, metavar="N",
                        help="characters to generate after training (0: none)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"largest accepted |loss difference| at any step (default {TOLERANCE:g})")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.sample < 0:
        parser.error("--steps must be at least 1 and --sample at least 0")
    if not args.tolerance >= 0:
        parser.error("--tolerance must be >= 0")

    cfg = Config(steps=args.steps)
    start = time.perf_counter()
    result = run(cfg, sample_length=args.sample)
    report(result, cfg, args.tolerance)
    if args.plot:
        plot(result, args.plot)
    print(f"total {time.perf_counter() - start:.1f} s")
    if not result.max_diff <= args.tolerance:  # written so that a NaN loss fails too
        print(f"FAIL: the loss curves differ by {result.max_diff:.2e} > {args.tolerance:.0e}",
              file=sys.stderr)
        return 1
    print("OK: the curves agree within the tolerance; torch_lstm_ext trains like nn.LSTM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
