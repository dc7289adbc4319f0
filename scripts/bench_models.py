"""What bench.py times: the three LSTMs of a Case, their inputs, the modes, and the parity gate.

The three implementations share one set of weights (nn.LSTM's, copied):
    ours     torch_lstm_ext.LSTM
    nn.LSTM  torch.nn.LSTM (oneDNN on CPU, cuDNN on CUDA)
    cells    a Python loop over nn.LSTMCell, the hand-written baseline (no proj_size support)
Input is time-major x [T, B, I] float32, or a PackedSequence of it with lengths spread over 1..T.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from bench_shapes import Case
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import torch_lstm_ext

IMPLS = ("ours", "nn.LSTM", "cells")
MODES = ("inference", "train_fwd", "train_fwd_bwd")


class CellLoop(nn.Module):
    """nn.LSTM's computation as a Python loop of nn.LSTMCell steps (what users write by hand).

    Packed input runs step by step on the active prefix of the batch, like PackedSequence's
    batch_sizes say. forward(x [T, B, I] or PackedSequence) -> (output, (h_n, c_n)).
    """

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.directions = 2 if lstm.bidirectional else 1
        self.cells = nn.ModuleList()
        for layer in range(lstm.num_layers):
            for suffix in ("", "_reverse")[: self.directions]:
                w_ih = getattr(lstm, f"weight_ih_l{layer}{suffix}")
                cell = nn.LSTMCell(w_ih.shape[1], lstm.hidden_size, device=w_ih.device, dtype=w_ih.dtype)
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, name).data.copy_(getattr(lstm, f"{name}_l{layer}{suffix}").data)
                self.cells.append(cell)

    def _direction(self, cell: nn.LSTMCell, data: Tensor, sizes: list[int], reverse: bool):
        offsets = [0]
        for n in sizes[:-1]:
            offsets.append(offsets[-1] + n)
        h = data.new_zeros(sizes[0], cell.hidden_size)
        c = torch.zeros_like(h)
        outputs: list[Tensor | None] = [None] * len(sizes)
        for t in (reversed(range(len(sizes))) if reverse else range(len(sizes))):
            n = sizes[t]
            h_t, c_t = cell(data[offsets[t] : offsets[t] + n], (h[:n], c[:n]))
            outputs[t] = h_t
            h, c = torch.cat((h_t, h[n:])), torch.cat((c_t, c[n:]))
        return torch.cat(outputs), h, c

    def forward(self, input):
        packed = isinstance(input, PackedSequence)
        if packed:
            data, sizes = input.data, input.batch_sizes.tolist()
        else:
            data, sizes = input.reshape(-1, input.shape[-1]), [input.shape[1]] * input.shape[0]
        h_n, c_n = [], []
        for layer in range(len(self.cells) // self.directions):
            outs = []
            for d in range(self.directions):
                y, h, c = self._direction(self.cells[layer * self.directions + d], data, sizes, d == 1)
                outs.append(y)
                h_n.append(h)
                c_n.append(c)
            data = torch.cat(outs, dim=-1)
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        if packed:
            out = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            order = input.unsorted_indices
            return out, (h_n.index_select(1, order), c_n.index_select(1, order))
        return data.reshape(*input.shape[:2], -1), (h_n, c_n)


def build(case: Case, device: str, seed: int = 0) -> dict[str, nn.Module]:
    """The implementations of `case` (cells left out when proj_size is set), same weights."""
    torch.manual_seed(seed)
    ref = nn.LSTM(case.I, case.H, case.layers, bidirectional=case.bidirectional, proj_size=case.proj,
                  device=device)
    ours = torch_lstm_ext.LSTM(case.I, case.H, case.layers, bidirectional=case.bidirectional,
                               proj_size=case.proj, device=device)
    ours.load_state_dict(ref.state_dict())
    models = {"ours": ours, "nn.LSTM": ref}
    if not case.proj:
        models["cells"] = CellLoop(ref)
    return models


def make_input(case: Case, device: str, seed: int = 0):
    """x [T, B, I] requiring grad, or a PackedSequence whose data is a leaf requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case.T, case.B, case.I, generator=gen).to(device)
    if not case.packed:
        return x.requires_grad_()
    lengths = torch.randint(1, case.T + 1, (case.B,), generator=gen)
    lengths[0] = case.T
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    # A leaf, so every timed backward ends at it instead of re-entering the packing graph.
    return PackedSequence(packed.data.detach().requires_grad_(), packed.batch_sizes,
                          packed.sorted_indices, packed.unsorted_indices)


def _data(output) -> Tensor:
    return output.data if isinstance(output, PackedSequence) else output


def runner(model: nn.Module, x, mode: str) -> Callable[[], None]:
    """A no-argument call running `mode` once (gradients are reset outside the timed call)."""
    if mode == "inference":
        model.eval()

        def run() -> None:
            with torch.no_grad():
                model(x)
        return run
    model.train()
    if mode == "train_fwd":
        return lambda: model(x)

    def run_fwd_bwd() -> None:
        out, (h_n, c_n) = model(x)
        (_data(out).sum() + h_n.sum() + c_n.sum()).backward()
    return run_fwd_bwd


def reset_grads(model: nn.Module, x) -> None:
    model.zero_grad(set_to_none=True)
    _data(x).grad = None


def _results(model: nn.Module, x) -> list[Tensor]:
    reset_grads(model, x)
    out, (h_n, c_n) = model(x)
    gen = torch.Generator().manual_seed(1)
    tensors = (_data(out), h_n, c_n)
    loss = sum((t * torch.randn(t.shape, generator=gen).to(t.device)).sum() for t in tensors)
    loss.backward()
    grads = [p.grad for p in model.parameters()] if not isinstance(model, CellLoop) else []
    return [*tensors, _data(x).grad, *grads]


def disagreement(models: dict[str, nn.Module], x) -> dict[str, float]:
    """Worst relative difference to nn.LSTM per implementation, over outputs, h_n, c_n, the
    input gradient and (for ours) every parameter gradient: max|a-b| / (1 + max|b|)."""
    expected = _results(models["nn.LSTM"], x)
    worst = {}
    for name, model in models.items():
        if name == "nn.LSTM":
            continue
        got = _results(model, x)
        worst[name] = max(((a - b).abs().max() / (1 + b.abs().max())).item()
                          for a, b in zip(got, expected))
        reset_grads(model, x)
    reset_grads(models["nn.LSTM"], x)
    return worst
