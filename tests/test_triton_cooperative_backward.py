"""The cooperative backward (triton_kernels/cooperative_backward.py) through Triton's interpreter,
against the NumPy backend's lstm_bwd. Run in its own process: `make test-interpreter`.

The interpreter runs the kernel one step (one phase) per launch: this tests the arithmetic, the
tiling and the carried state, never the programs' synchronisation, which only a GPU can.
The kernel's outputs are turned into lstm_bwd's the way the whole-sequence side does it (the
padded rows back to packed ones, one GEMM per weight gradient), then compared with
assert_matches_reference. Every kernel-written buffer starts NaN-filled (buffers.POISON).
Shapes span two unit blocks (H = 32 at fp32's BLOCK_U of 16, H = 64 at fp16 / bf16's 32: `plan`'s
smallest tiles) and, with B = 20, two batch tiles of 16 rows, the second partial.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 set before import: run `make test-interpreter`",
                allow_module_level=True)

import torch
from support import KERNEL_TOLERANCES
from torch import Tensor
from triton_support import Case, assert_matches_reference, make_case, run_op, with_variants

from torch_lstm_ext.params import RecurrenceGrads, Variants
from torch_lstm_ext.triton_kernels import buffers
from torch_lstm_ext.triton_kernels.cooperative_backward import (
    INTERPRETER_SMS,
    cooperative_backward,
    cooperative_variant_backward,
    plan,
)
from torch_lstm_ext.triton_kernels.layout import Layout
from torch_lstm_ext.triton_kernels.persistent_backward import persistent_backward

pytestmark = pytest.mark.interpreter

T, B, H = 5, 20, 32


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(buffers, "POISON", True)


class Direction:
    """One direction's case, its NumPy forward and backward, and its padded kernel inputs."""

    def __init__(self, case: Case, monkeypatch: pytest.MonkeyPatch):
        self.case = case
        self.expected = run_op(case, "numpy", monkeypatch)
        gates_x, self.w_hh, self.w_hr, self.h0, self.c0, batch_sizes, reverse = case.forward
        self.y, _, _, gates, cells = self.expected[0]
        self.B = self.h0.shape[0]
        self.layout = Layout.of(batch_sizes, gates.reshape(-1, gates.shape[-1]).shape[0], self.B, reverse)
        self.rows = torch.from_numpy(self.layout.padded_rows())
        grad_y, self.grad_hn, self.grad_cn = case.upstream
        zoneout_c, zoneout_h = case.variants[3:5]
        self.padded = {name: self.pad(t) for name, t in
                       dict(grad_y=grad_y, gates=gates, cells=cells, zoneout_c=zoneout_c, zoneout_h=zoneout_h).items()}

    def pad(self, t: Tensor | None) -> Tensor | None:
        """Rows [..., F] of the case into the padded [T*B, F] layout (zeros in the padding)."""
        if t is None:
            return None
        flat = t.reshape(-1, t.shape[-1])
        padded = flat.new_zeros((len(self.layout.sizes) * self.B, flat.shape[1]))
        return padded.index_copy_(0, self.rows, flat)

    def lstm_bwd(self, d_gates: Tensor, d_out: Tensor | None, r: Tensor | None, d_h0: Tensor, d_c0: Tensor,
                 d_peephole: Tensor | None) -> RecurrenceGrads:
        """lstm_bwd's gradients from this direction's kernel outputs (padded rows)."""
        d_gates, d_out, r = (None if t is None else t.index_select(0, self.rows) for t in (d_gates, d_out, r))
        flat_y = self.y.reshape(-1, self.y.shape[-1])
        h_prev = torch.cat((flat_y, self.h0)).index_select(0, torch.from_numpy(self.layout.previous_rows()))
        acc = torch.float32
        d_w_hh = (d_gates.to(acc).T @ h_prev.to(acc)).to(self.w_hh.dtype)
        d_w_hr = None
        if self.w_hr is not None:
            zoneout_h = self.case.variants[4]
            if zoneout_h is not None:
                d_out = d_out * (1.0 - zoneout_h.reshape(d_out.shape).to(acc))
            d_w_hr = (d_out.T @ r).to(self.w_hh.dtype)
        d_gates_x = d_gates.reshape(self.expected[1][0].shape)
        return RecurrenceGrads(d_gates_x, d_h0, d_c0, d_w_hh, d_w_hr, d_peephole)


def _stack(tensors: list[Tensor | None]) -> Tensor | None:
    return None if tensors[0] is None else torch.stack(tensors)


def run_cooperative(directions: list[Direction], **config_changes) -> list[tuple]:
    """Both directions in one cooperative_variant_backward call (a leading axis when two), at
    `plan`'s configuration with `config_changes`; returns each direction's lstm_bwd outputs."""
    first = directions[0]
    P, H = first.h0.shape[1], first.c0.shape[1]
    dtype = first.padded["grad_y"].dtype
    config = plan(H, P, first.B, dtype, len(directions), INTERPRETER_SMS)._replace(**config_changes)
    v = Variants(_stack([d.case.variants[0] for d in directions]), None, None,
                 _stack([d.padded["zoneout_c"] for d in directions]),
                 _stack([d.padded["zoneout_h"] for d in directions]), first.case.variants[5], first.case.grad_clip)
    grads = cooperative_variant_backward(
        *(_stack([d.padded["grad_y"] for d in directions]),
          _stack([d.grad_hn for d in directions]), _stack([d.grad_cn for d in directions]),
          _stack([d.w_hh for d in directions]), _stack([d.w_hr for d in directions]),
          _stack([d.c0 for d in directions]), _stack([d.padded["gates"] for d in directions]),
          _stack([d.padded["cells"] for d in directions])),
        torch.from_numpy(first.layout.lengths().astype("int32")), first.layout.reverse, v, config=config,
    )
    if grads.r is None and first.w_hr is not None:
        # Without variants the kernel leaves r to the caller, which has it from the forward.
        gates, cells = (_stack([d.padded[n] for d in directions]) for n in ("gates", "cells"))
        grads = grads._replace(r=gates[..., 3 * H:] * torch.tanh(cells))
    return [d.lstm_bwd(*(None if t is None else t[k] for t in grads)) for k, d in enumerate(directions)]


def assert_backward_matches(directions: list[Direction], results: list[tuple], dtype: torch.dtype) -> None:
    for d, got in zip(directions, results, strict=True):
        assert_matches_reference((d.expected[0], got), d.expected, dtype)


def directions_of(monkeypatch, *, bidirectional: bool = False, variants: dict | None = None,
                  grad_clip: float | None = None, **case_args) -> list[Direction]:
    cases = [make_case(**case_args)]
    if bidirectional:
        cases.append(make_case(**{**case_args, "reverse": not case_args["reverse"],
                                  "seed": case_args.get("seed", 0) + 100}))
    if variants is not None or grad_clip is not None:
        cases = [with_variants(c, **(variants or {}), grad_clip=grad_clip, seed=k) for k, c in enumerate(cases)]
    return [Direction(c, monkeypatch) for c in cases]


@pytest.mark.parametrize("on_chip", [False, True], ids=["streamed", "on_chip"])
@pytest.mark.parametrize("proj,packed,reverse", [(0, True, False), (16, True, True), (0, False, True)],
                         ids=["packed", "packed-proj-rev", "padded-rev"])
def test_float32_matches_numpy(proj, packed, reverse, on_chip, monkeypatch):
    dirs = directions_of(monkeypatch, T=T, B=B, H=H, proj=proj, packed=packed, reverse=reverse,
                         dtype=torch.float32, seed=1)
    # 16-row weight chunks: two per gate block.
    config = dict(weights_on_chip=on_chip, block_kh=16, block_kp=16)
    assert_backward_matches(dirs, run_cooperative(dirs, **config), torch.float32)


@pytest.mark.parametrize("proj", [0, 16], ids=["no_proj", "proj"])
def test_drop_in_for_persistent_backward(proj, monkeypatch):
    """Same call, no direction axis: the same results as persistent_backward's, to rounding."""
    d = directions_of(monkeypatch, T=T, B=B, H=H, proj=proj, packed=True, reverse=False, dtype=torch.float32,
                      seed=7)[0]
    args = (d.padded["grad_y"], d.grad_hn, d.grad_cn, d.w_hh, d.w_hr, d.c0, d.padded["gates"], d.padded["cells"],
            torch.from_numpy(d.layout.lengths().astype("int32")), d.layout.reverse)
    got, want = cooperative_backward(*args), persistent_backward(*args)
    rtol, atol = KERNEL_TOLERANCES[torch.float32]
    for name, a, b, rows in zip(("d_gates", "d_out", "d_h0", "d_c0"), got, want, (d.rows, d.rows, None, None),
                                strict=True):
        if b is None:
            assert a is None, name
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if rows is not None:  # rows past a sequence's end are left unwritten by both
            a, b = a.index_select(0, rows), b.index_select(0, rows)
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("T_,B_,H_,proj", [
    (1, 1, 16, 0),   # one step, one sequence, one program
    (3, 2, 24, 20),  # H and P not multiples of the tiles: masked edges everywhere
], ids=["tiny", "ragged"])
def test_awkward_shapes_match_numpy(T_, B_, H_, proj, monkeypatch):
    dirs = directions_of(monkeypatch, bidirectional=True, T=T_, B=B_, H=H_, proj=proj, packed=False,
                         reverse=True, dtype=torch.float32, seed=8)
    assert_backward_matches(dirs, run_cooperative(dirs), torch.float32)


def test_bidirectional_runs_in_one_launch(monkeypatch):
    dirs = directions_of(monkeypatch, bidirectional=True, T=T, B=B, H=H, proj=16, packed=True, reverse=False,
                         dtype=torch.float32, seed=2)
    assert_backward_matches(dirs, run_cooperative(dirs), torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("proj,bidirectional", [(0, True), (16, False)], ids=["bidir", "proj"])
def test_half_types_match_numpy(dtype, proj, bidirectional, monkeypatch):
    dirs = directions_of(monkeypatch, bidirectional=bidirectional, T=6, B=B, H=2 * H, proj=proj, packed=True,
                         reverse=True, dtype=dtype, seed=3)
    assert_backward_matches(dirs, run_cooperative(dirs), dtype)


VARIANTS = {
    "peephole": dict(variants=dict(peephole=True)),
    "zoneout_train": dict(variants=dict(zoneout="train")),
    "zoneout_eval": dict(variants=dict(zoneout="eval")),
    "cell_clip": dict(variants=dict(cell_clip=0.5)),
    "grad_clip": dict(grad_clip=0.05),
    "all": dict(variants=dict(peephole=True, zoneout="train", cell_clip=0.5), grad_clip=0.05),
}


def _assert_clips_bind(directions: list[Direction]) -> None:
    """The clips bind in the NumPy results, so the comparison exercises them."""
    for d in directions:
        (_, _, _, _, cells), (d_gates, *_) = d.expected
        if d.case.grad_clip is not None:
            assert d_gates.abs().max().item() == pytest.approx(d.case.grad_clip), "grad_clip never binds"
        cell_clip, zoneout_c = d.case.variants[5], d.case.variants[3]
        if cell_clip is not None and zoneout_c is None:
            assert cells.abs().max().item() == pytest.approx(cell_clip), "cell_clip never binds"


@pytest.mark.parametrize("proj", [0, 16], ids=["no_proj", "proj"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_match_numpy(variant, proj, monkeypatch):
    dirs = directions_of(monkeypatch, T=4, B=B, H=H, proj=proj, packed=True, reverse=proj > 0,
                         dtype=torch.float32, seed=4, **VARIANTS[variant])
    _assert_clips_bind(dirs)
    assert_backward_matches(dirs, run_cooperative(dirs), torch.float32)


def test_all_variants_bidirectional_streamed(monkeypatch):
    # plan() puts these small fp32 slices on chip; the other path, in two chunks per gate block.
    dirs = directions_of(monkeypatch, bidirectional=True, T=4, B=B, H=H, proj=16, packed=True, reverse=False,
                         dtype=torch.float32, seed=5, **VARIANTS["all"])
    config = dict(weights_on_chip=False, block_kh=16, block_kp=16)
    assert_backward_matches(dirs, run_cooperative(dirs, **config), torch.float32)


def test_variants_bfloat16_match_numpy(monkeypatch):
    # No clips, as in test_triton_variants.py: a bf16-rounded value can cross a clip's bound for
    # one backend only.
    dirs = directions_of(monkeypatch, T=5, B=B, H=2 * H, proj=16, packed=True, reverse=True,
                         dtype=torch.bfloat16, seed=6, variants=dict(peephole=True, zoneout="train"))
    assert_backward_matches(dirs, run_cooperative(dirs), torch.bfloat16)


def test_layer_norm_is_refused(monkeypatch):
    d = directions_of(monkeypatch, T=2, B=2, H=16, proj=0, packed=False, reverse=False, dtype=torch.float32,
                      variants=dict(layer_norm=True))[0]
    with pytest.raises(ValueError, match="layer norm"):
        cooperative_variant_backward(d.padded["grad_y"], d.grad_hn, d.grad_cn, d.w_hh, None, d.c0,
                                     d.padded["gates"], d.padded["cells"], torch.ones(2, dtype=torch.int32),
                                     False, Variants(ln_hh=d.case.variants[1]))
