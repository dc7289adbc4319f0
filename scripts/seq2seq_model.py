"""The encoder-decoder of scripts/train_seq2seq.py, and how each of its runs builds it.

Embedding -> input normalisation -> encoder LSTM over the packed source; its final (h, c) starts
the decoder LSTM, which runs one step per call (so scheduled teacher forcing can feed it its own
predictions) and a linear head turns each step's output into logits over the vocabulary. The
LSTM class is a parameter: nn.LSTM, or ours. Every run calls the same modules in the same order,
so the LSTMs' results are all that differs between them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from seq2seq_data import PAD, SOS, VOCAB_SIZE
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import torch_lstm_ext
from torch_lstm_ext.init import xavier_orthogonal_

# The runs of one training, by name: the name is also the checkpoint's file name (best_<name>.pt).
NN, OURS, OURS_GRAD_CLIP = "nn_lstm", "ours", "ours_grad_clip"
RUNS = (NN, OURS, OURS_GRAD_CLIP)
LABELS = {NN: "torch.nn.LSTM", OURS: "torch_lstm_ext (replace_lstm)",
          OURS_GRAD_CLIP: "torch_lstm_ext, grad_clip"}


class Seq2Seq(nn.Module):
    """Encoder-decoder over the digit-string tokens; `lstm` builds both LSTMs (nn.LSTM's signature).

    norm: "batch" (BatchNorm1d) or "layer" (LayerNorm) over the source embedding's features; the
    batch statistics are taken over the packed sequence's rows, so padding does not enter them.
    """

    def __init__(self, embed_size: int, hidden_size: int, num_layers: int, dropout: float, norm: str,
                 lstm: Callable[..., nn.Module] = nn.LSTM) -> None:
        super().__init__()
        if norm not in ("batch", "layer"):
            raise ValueError(f"norm must be 'batch' or 'layer', got {norm!r}")
        self.src_embed = nn.Embedding(VOCAB_SIZE, embed_size, padding_idx=PAD)
        self.norm = nn.BatchNorm1d(embed_size) if norm == "batch" else nn.LayerNorm(embed_size)
        self.encoder = lstm(embed_size, hidden_size, num_layers, dropout=dropout, batch_first=True)
        self.tgt_embed = nn.Embedding(VOCAB_SIZE, embed_size, padding_idx=PAD)
        self.decoder = lstm(embed_size, hidden_size, num_layers, dropout=dropout, batch_first=True)
        self.head = nn.Linear(hidden_size, VOCAB_SIZE)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src [B, S], src_len [B] -> the encoder's final (h_n, c_n), each [num_layers, B, H]."""
        packed = pack_padded_sequence(self.src_embed(src), src_len, batch_first=True, enforce_sorted=False)
        normed = PackedSequence(self.norm(packed.data), packed.batch_sizes, packed.sorted_indices,
                                packed.unsorted_indices)
        _, state = self.encoder(normed)
        return state

    def step(self, token: torch.Tensor, state):
        """One decoder step: token [B] and state -> logits [B, V] and the next state."""
        out, state = self.decoder(self.tgt_embed(token).unsqueeze(1), state)
        return self.head(out[:, 0]), state

    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt: torch.Tensor,
                teacher: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for tgt [B, T]. Step t > 0 reads tgt[:, t-1] where teacher[:, t] is True
        (teacher forcing), else the previous step's argmax (step 0 reads SOS; teacher[:, 0] is unused)."""
        state = self.encode(src, src_len)
        token = torch.full((tgt.shape[0],), SOS, dtype=torch.long, device=tgt.device)
        logits = []
        for t in range(tgt.shape[1]):
            if t > 0:
                token = torch.where(teacher[:, t], tgt[:, t - 1], logits[-1].argmax(dim=-1))
            step_logits, state = self.step(token, state)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, src_len: torch.Tensor, steps: int) -> torch.Tensor:
        """Greedy decoding: [B, steps] tokens, each step fed the previous step's argmax."""
        state = self.encode(src, src_len)
        token = torch.full((src.shape[0],), SOS, dtype=torch.long, device=src.device)
        out = []
        for _ in range(steps):
            logits, state = self.step(token, state)
            token = logits.argmax(dim=-1)
            out.append(token)
        return torch.stack(out, dim=1)


def build(run: str, seed: int, embed_size: int, hidden_size: int, num_layers: int, dropout: float,
          norm: str, grad_clip: float) -> Seq2Seq:
    """The model of `run` (one of RUNS), initialised from `seed`, the same weights for every run.

    Xavier-uniform input weights, orthogonal recurrent weights and forget bias 1 in both LSTMs.
    NN: as built; OURS: after replace_lstm, which keeps the Parameters and draws no random numbers;
    OURS_GRAD_CLIP: built with our LSTM(grad_clip=...), which registers nn.LSTM's parameters in
    nn.LSTM's order and no others, so the same seed initialises it identically. The global seed is
    set here, so the LSTMs' dropout masks, drawn in training, come from the same stream in every run.
    """
    if run not in RUNS:
        raise ValueError(f"unknown run {run!r}; expected one of {RUNS}")
    lstm = functools.partial(torch_lstm_ext.LSTM, grad_clip=grad_clip) if run == OURS_GRAD_CLIP else nn.LSTM
    torch.manual_seed(seed)
    model = Seq2Seq(embed_size, hidden_size, num_layers, dropout, norm, lstm)
    xavier_orthogonal_(model.encoder, forget_bias=1.0)
    xavier_orthogonal_(model.decoder, forget_bias=1.0)
    if run == OURS:
        torch_lstm_ext.replace_lstm(model)
    return model
