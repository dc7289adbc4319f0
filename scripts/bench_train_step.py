"""A real model's training step with ours vs nn.LSTM, and the speed of the torch code around it.

Model: Embedding(96, 64) -> LSTM(64, 256, 2 layers, batch_first) -> Linear(256, 96), cross
entropy, Adam; tokens [B=32, T=100]. Two numbers, both ours / nn.LSTM, measured interleaved:
  step_ratio   the whole training step (zero_grad, forward, loss, backward, optimizer step);
  after_ratio  the same torch-only workload (the head's forward + backward on [B*T, 256]) timed
               right after an LSTM forward + backward of each kind. A CPU backend whose threads
               keep spinning after it returns (OpenBLAS) slows the torch code that follows it;
               this ratio shows it.
"""

from __future__ import annotations

import copy

import torch
from bench_measure import interleaved_medians
from torch import nn

import torch_lstm_ext

VOCAB, EMBED, HIDDEN, T, B = 96, 64, 256, 100, 32


class CharModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED)
        self.lstm = nn.LSTM(EMBED, HIDDEN, num_layers=2, batch_first=True)
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, tokens):
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


def measure(device: str, repeats: int, budget_s: float, warmup: int = 2) -> dict:
    """{'step_ratio', 'after_ratio', and the medians in ms}."""
    torch.manual_seed(0)
    models = {"nn.LSTM": CharModel().to(device)}
    models["ours"] = torch_lstm_ext.replace_lstm(copy.deepcopy(models["nn.LSTM"]))
    tokens = torch.randint(0, VOCAB, (B, T + 1), device=device)
    x, target = tokens[:, :-1], tokens[:, 1:].reshape(-1)
    optims = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in models.items()}

    def step(name: str):
        def run() -> None:
            optims[name].zero_grad(set_to_none=True)
            logits = models[name](x)
            nn.functional.cross_entropy(logits.reshape(-1, VOCAB), target).backward()
            optims[name].step()
        return run

    steps, _ = interleaved_medians({n: step(n) for n in models}, {n: lambda: None for n in models},
                                   device, repeats, budget_s, warmup)

    features = torch.randn(B * T, HIDDEN, device=device)
    head = models["nn.LSTM"].head

    def lstm_fwd_bwd(name: str):
        def run() -> None:
            out, _ = models[name].lstm(models[name].embed(x))
            out.sum().backward()
        return run

    def torch_workload() -> None:
        head(features).logsumexp(-1).sum().backward()

    after, _ = interleaved_medians({n: torch_workload for n in models},
                                   {n: lstm_fwd_bwd(n) for n in models}, device, repeats, budget_s, warmup)
    return {
        "model": f"Embedding({VOCAB},{EMBED}) + LSTM({EMBED},{HIDDEN},2 layers) + Linear, B{B} T{T}, Adam",
        "step_ours_ms": steps["ours"] * 1e3,
        "step_nn_ms": steps["nn.LSTM"] * 1e3,
        "step_ratio": steps["ours"] / steps["nn.LSTM"],
        "after_ours_ms": after["ours"] * 1e3,
        "after_nn_ms": after["nn.LSTM"] * 1e3,
        "after_ratio": after["ours"] / after["nn.LSTM"],
    }
