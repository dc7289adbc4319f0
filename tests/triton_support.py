"""Helpers of the Triton kernel tests (interpreter and CUDA): recurrence cases, the NumPy
reference run through the op. Tolerances live in support.py with the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from support import KERNEL_TOLERANCES
from torch import Tensor
from torch.nn.utils.rnn import pack_sequence

from torch_lstm_ext import triton_kernels
from torch_lstm_ext.config import BACKEND_ENV
from torch_lstm_ext.params import RecurrenceGrads, RecurrenceParams, Variants
from torch_lstm_ext.triton_kernels import step_graphs
from torch_lstm_ext.triton_kernels.layout import Layout, device_index
from torch_lstm_ext.triton_kernels.step_backward import step_backward
from torch_lstm_ext.triton_kernels.step_forward import step_forward
from torch_lstm_ext.triton_kernels.variant_backward import variant_backward
from torch_lstm_ext.triton_kernels.variant_step_forward import variant_step_forward

FORWARD_NAMES = ("y", "h_n", "c_n", "gates", "cells")
NO_VARIANTS = (None,) * 6


@dataclass
class Case:
    """Arguments of lstm_fwd (`forward`, then `variants`: peephole, ln_hh_weight, ln_c,
    zoneout_c, zoneout_h, cell_clip), lstm_bwd's grad_clip, and the upstream gradients
    (grad_y, grad_hn, grad_cn)."""

    forward: tuple
    upstream: tuple[Tensor, Tensor, Tensor]
    variants: tuple = NO_VARIANTS
    grad_clip: float | None = None


def make_case(
    T: int, B: int, H: int, proj: int, packed: bool, reverse: bool, dtype: torch.dtype,
    device: str = "cpu", seed: int = 0,
) -> Case:
    """A random recurrence; packed input has unsorted lengths T, 1, ... (pack_sequence sorts)."""
    gen = torch.Generator().manual_seed(seed)
    P = proj or H

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).to(device=device, dtype=dtype)

    if packed:
        lengths = [max(1, (T * (k + 1)) // B) for k in range(B)][::-1][1:] + [T]
        seqs = [torch.zeros(n, 1) for n in lengths]
        batch_sizes = pack_sequence(seqs, enforce_sorted=False).batch_sizes
        gates_x = randn(int(batch_sizes.sum()), 4 * H)
        rows = gates_x.shape[:1]
    else:
        batch_sizes = None
        gates_x = randn(T, B, 4 * H)
        rows = gates_x.shape[:2]
    scale = 1.0 / P**0.5
    forward = (
        gates_x, randn(4 * H, P, scale=scale), randn(P, H, scale=1.0 / H**0.5) if proj else None,
        randn(B, P), randn(B, H), batch_sizes, reverse,
    )
    return Case(forward, (randn(*rows, P), randn(B, P), randn(B, H)))


def with_variants(
    case: Case, *, peephole: bool = False, layer_norm: bool = False, zoneout: str | None = None,
    cell_clip: float | None = None, grad_clip: float | None = None, seed: int = 0,
) -> Case:
    """`case` with variant inputs: random peephole weights, LN gains / biases away from their
    init, zoneout weights ('eval': the probabilities 0.3 (cell) / 0.2 (hidden); 'train': 0/1
    masks drawn with them), in the case's dtype and device."""
    gates_x, _, _, h0, c0 = case.forward[:5]
    gen = torch.Generator().manual_seed(seed)
    H, P = c0.shape[1], h0.shape[1]
    rows = gates_x.shape[:-1]

    def tensor(t: Tensor) -> Tensor:
        return t.to(device=gates_x.device, dtype=gates_x.dtype)

    def zoneout_weights(p: float, width: int) -> Tensor:
        if zoneout == "train":
            return tensor(torch.bernoulli(torch.full((*rows, width), p), generator=gen))
        return tensor(torch.full((*rows, width), p))

    variants = (
        tensor(0.5 * torch.randn(3, H, generator=gen)) if peephole else None,
        tensor(1 + 0.3 * torch.randn(4 * H, generator=gen)) if layer_norm else None,
        tensor(torch.stack((1 + 0.3 * torch.randn(H, generator=gen), 0.3 * torch.randn(H, generator=gen))))
        if layer_norm else None,
        zoneout_weights(0.3, H) if zoneout else None,
        zoneout_weights(0.2, P) if zoneout else None,
        cell_clip,
    )
    return Case(case.forward, case.upstream, variants, grad_clip)


def case_params(case: Case) -> RecurrenceParams:
    """The case's RecurrenceParams (weights, variants, clips)."""
    _, w_hh, w_hr, _, _, _, _ = case.forward
    *tensors, cell_clip = case.variants
    return RecurrenceParams(w_hh, w_hr, Variants(*tensors, cell_clip, case.grad_clip))


def _forward_args(case: Case) -> tuple:
    gates_x, _, _, h0, c0, batch_sizes, reverse = case.forward
    p = case_params(case)
    return (gates_x, h0, c0, *p.op_args(), batch_sizes, reverse, p.variants.cell_clip)


def _backward_args(case: Case, forward_out) -> tuple:
    _, _, _, h0, c0, batch_sizes, reverse = case.forward
    y, _, _, gates, cells = forward_out
    p = case_params(case)
    return (*case.upstream, h0, c0, *p.op_args(), batch_sizes, reverse, y, gates, cells, p.variants.cell_clip,
            p.variants.grad_clip)


def run_op(case: Case, backend: str, monkeypatch: pytest.MonkeyPatch) -> tuple[tuple, RecurrenceGrads]:
    """(lstm_fwd outputs, lstm_bwd's gradients) through the ops with `backend`."""
    with monkeypatch.context() as m:
        m.setenv(BACKEND_ENV, backend)
        forward_out = torch.ops.torch_lstm_ext.lstm_fwd(*_forward_args(case))
        backward_out = torch.ops.torch_lstm_ext.lstm_bwd(*_backward_args(case, forward_out))
    return tuple(forward_out), RecurrenceGrads.from_op(backward_out, case_params(case))


def run_backward(case: Case, forward_out: tuple, backend: str, monkeypatch: pytest.MonkeyPatch) -> RecurrenceGrads:
    """lstm_bwd's gradients through the ops with `backend`, from lstm_fwd's outputs `forward_out`
    (e.g. a kernel's: the backward then checks that they are what it consumes)."""
    with monkeypatch.context() as m:
        m.setenv(BACKEND_ENV, backend)
        backward_out = torch.ops.torch_lstm_ext.lstm_bwd(*_backward_args(case, forward_out))
    return RecurrenceGrads.from_op(backward_out, case_params(case))


def run_kernel(case: Case, kernel: str) -> tuple[tuple, RecurrenceGrads]:
    """The same through triton_kernels with the kernel forced (one of dispatch.py's)."""
    gates_x, _, _, h0, c0, batch_sizes, reverse = case.forward
    p = case_params(case)
    forward_out = triton_kernels.lstm_forward(gates_x, h0, c0, p, batch_sizes, reverse, kernel=kernel)
    y, _, _, gates, cells = forward_out
    backward_out = triton_kernels.lstm_backward(*case.upstream, h0, c0, p, batch_sizes, reverse, y, gates, cells,
                                                kernel=kernel)
    return tuple(forward_out), backward_out


def assert_matches_reference(
    actual: tuple[tuple, tuple], expected: tuple[tuple, tuple], dtype, of_max: float | None = None,
) -> None:
    """Every forward output and gradient: same shape and dtype, no NaN, close at the dtype's
    tolerance, or with `of_max` within that fraction of the expected tensor's largest magnitude."""
    rtol, atol = KERNEL_TOLERANCES[dtype]
    for names, got, want in zip((FORWARD_NAMES, RecurrenceGrads._fields), actual, expected, strict=True):
        for name, a, b in zip(names, got, want, strict=True):
            assert (a is None) == (b is None), f"{name}: {a is None=} but {b is None=}"
            if a is None:
                continue
            assert a.shape == b.shape and a.dtype == b.dtype, f"{name}: {a.shape} {a.dtype} != {b.shape} {b.dtype}"
            assert a.device == b.device, f"{name}: on {a.device}, expected {b.device}"
            assert not a.isnan().any(), f"{name} has NaN (an unwritten row?)"
            a, b = a.cpu().double(), b.cpu().double()
            if of_max is None:
                torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
            elif b.numel():
                error, scale = (a - b).abs().max().item(), b.abs().max().item()
                assert error <= of_max * scale, f"{name}: max error {error:.3g} > {of_max:.3g} * {scale:.3g}"


def count_triton_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts calls into the Triton backend (live dict), so a test can prove the ops went through it."""
    calls = {"forward": 0, "backward": 0}
    forward, backward = triton_kernels.lstm_forward, triton_kernels.lstm_backward

    def counted_forward(*args, **kwargs):
        calls["forward"] += 1
        return forward(*args, **kwargs)

    def counted_backward(*args, **kwargs):
        calls["backward"] += 1
        return backward(*args, **kwargs)

    monkeypatch.setattr(triton_kernels, "lstm_forward", counted_forward)
    monkeypatch.setattr(triton_kernels, "lstm_backward", counted_backward)
    return calls


def outputs_and_grads_on_device(module: torch.nn.Module, input, seed: int = 0):
    """support.outputs_and_grads for modules on any device (that one draws its weighting on the
    CPU and multiplies it into the outputs, which fails for CUDA outputs): (output, h_n, c_n,
    {name: grad}) with the grads of every parameter and of the input."""
    output, (h_n, c_n) = module(input)
    out = output.data if isinstance(output, torch.nn.utils.rnn.PackedSequence) else output
    gen = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=gen).to(t.device, t.dtype)).sum() for t in (out, h_n, c_n))
    # A torch.compile'd module names its parameters "_orig_mod.<name>": report the plain names.
    named = getattr(module, "_orig_mod", module).named_parameters()
    leaves = {f"param.{name}": p for name, p in named}
    leaves["input"] = input.data if isinstance(input, torch.nn.utils.rnn.PackedSequence) else input
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return out, h_n, c_n, dict(zip(leaves, grads, strict=True))


def run_step_launchers(case: Case, graphed: bool) -> tuple[tuple, tuple]:
    """(forward, backward) results of the per-step launchers on `case`'s rows: step_forward and
    step_backward, or variant_step_forward and variant_backward when the case has variants; their
    CUDA-graph twins (step_graphs.py) when `graphed`. The backward takes the forward's gates and
    cells."""
    gates_x, w_hh, w_hr, h0, c0, batch_sizes, reverse = case.forward
    gates_x = gates_x.reshape(-1, gates_x.shape[-1])
    grad_y, grad_hn, grad_cn = case.upstream
    grad_y = grad_y.reshape(-1, grad_y.shape[-1])
    layout = Layout.of(batch_sizes, gates_x.shape[0], h0.shape[0], reverse)
    if case.variants == NO_VARIANTS:
        forward = step_graphs.graphed_step_forward if graphed else step_forward
        backward = step_graphs.graphed_step_backward if graphed else step_backward
        forward_out = forward(gates_x, w_hh, w_hr, h0, c0, layout)
        _, gates, cells = forward_out
        return forward_out, backward(grad_y, grad_hn, grad_cn, w_hh, w_hr, c0, gates, cells, layout)
    v = case_params(case).variants.as_rows()
    forward = step_graphs.graphed_variant_step_forward if graphed else variant_step_forward
    backward = step_graphs.graphed_variant_backward if graphed else variant_backward
    forward_out = forward(gates_x, w_hh, w_hr, h0, c0, layout, v)
    y, gates, cells = forward_out
    h_prev = torch.cat((y, h0)).index_select(0, device_index(layout, "previous_rows", y.device))
    return forward_out, backward(grad_y, grad_hn, grad_cn, w_hh, w_hr, h0, c0, gates, cells, h_prev, layout, v)
