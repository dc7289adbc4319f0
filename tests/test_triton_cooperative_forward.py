"""The cooperative forward (triton_kernels/cooperative_forward.py) through Triton's interpreter,
against the NumPy backend's lstm_fwd. Run in its own process: `make test-interpreter`.

The interpreter runs the kernel one step (one phase) per launch: this tests the arithmetic, the
tiling, the carried state and the direction axis, never the programs' synchronisation, which
only a GPU can. Every kernel-written buffer starts NaN-filled (buffers.POISON), so a row the
caller keeps and the kernel never wrote fails. The kernel's outputs also go through the NumPy
backend's lstm_bwd, whose gradients then match only if they are what the backward consumes
(activated gates, the carried cells, the zoned-out h).

Configurations come from `plan` at an SM count that makes BLOCK_U 16, so that these small shapes
(H = 32, B = 20) span two unit blocks and two batch tiles of 16 rows, the second partial.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 set before import: run `make test-interpreter`",
                allow_module_level=True)

import torch
import triton
from support import KERNEL_TOLERANCES
from torch import Tensor
from triton_support import Case, assert_matches_reference, make_case, run_backward, run_op, with_variants

from torch_lstm_ext.params import Variants
from torch_lstm_ext.triton_kernels import buffers
from torch_lstm_ext.triton_kernels.cooperative_forward import ForwardPlan, cooperative_forward, plan
from torch_lstm_ext.triton_kernels.layout import Layout
from torch_lstm_ext.triton_kernels.persistent_forward import persistent_forward

pytestmark = pytest.mark.interpreter

T, B, H = 5, 20, 32


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(buffers, "POISON", True)


def small_plan(H: int, P: int, B: int, dtype: torch.dtype, directions: int) -> ForwardPlan:
    """plan()'s configuration at as many SMs as BLOCK_U = 16 needs programs."""
    sm_count = triton.cdiv(H, 16) * triton.cdiv(B, 16) * directions
    config = plan(H, P, B, dtype, directions, sm_count)
    assert config.block_u == 16 and config.block_b == 16, config
    return config


class Padded:
    """A case's rows in the kernel's padded [T*B] layout and back."""

    def __init__(self, case: Case):
        gates_x, _, _, h0, _, batch_sizes, reverse = case.forward
        self.layout = Layout.of(batch_sizes, gates_x.reshape(-1, gates_x.shape[-1]).shape[0], h0.shape[0], reverse)
        self.rows = torch.from_numpy(self.layout.padded_rows())
        self.num_padded = len(self.layout.sizes) * h0.shape[0]

    def pad(self, t: Tensor | None) -> Tensor | None:
        """Rows [..., F] of the case into padded [T*B, F] (zeros in the padding)."""
        if t is None:
            return None
        flat = t.reshape(-1, t.shape[-1])
        return flat.new_zeros((self.num_padded, flat.shape[1])).index_copy_(0, self.rows, flat)

    def unpad(self, t: Tensor, like: Tensor) -> Tensor:
        """Padded rows back to the case's rows, shaped as `like`'s leading axes."""
        return t.index_select(0, self.rows).reshape(*like.shape[:-1], t.shape[-1])


def _stack(tensors: list[Tensor | None]) -> Tensor | None:
    return None if tensors[0] is None else torch.stack(tensors)


def run_cooperative(cases: list[Case], on_chip: bool | None = None) -> list[tuple]:
    """All cases (one per direction; the second runs the other way in time) in ONE
    cooperative_forward call at small_plan's configuration (weights_on_chip overridden when
    given); returns each direction's lstm_fwd outputs."""
    gates_x, w_hh, w_hr, h0, c0, _, reverse = cases[0].forward
    P, Hc, Bc = h0.shape[1], c0.shape[1], h0.shape[0]
    config = small_plan(Hc, P, Bc, gates_x.dtype, len(cases))
    if on_chip is not None:
        config = config._replace(weights_on_chip=on_chip)
    pads = [Padded(case) for case in cases]
    v = Variants(
        _stack([case.variants[0] for case in cases]), None, None,
        _stack([p.pad(case.variants[3]) for p, case in zip(pads, cases, strict=True)]),
        _stack([p.pad(case.variants[4]) for p, case in zip(pads, cases, strict=True)]),
        cases[0].variants[5],
    ).as_rows()
    y, h_n, c_n, gates, cells = cooperative_forward(
        _stack([p.pad(case.forward[0]) for p, case in zip(pads, cases, strict=True)]),
        *(_stack([case.forward[k] for case in cases]) for k in range(1, 5)),
        torch.from_numpy(pads[0].layout.lengths().astype("int32")), reverse, v, config=config,
    )
    outputs = []
    for d, (p, case) in enumerate(zip(pads, cases, strict=True)):
        x = case.forward[0]
        outputs.append((p.unpad(y[d], x), h_n[d], c_n[d], p.unpad(gates[d], x), p.unpad(cells[d], x)))
    return outputs


def cases_of(*, bidirectional: bool = False, variants: dict | None = None, **case_args) -> list[Case]:
    """One case per direction, the second with other weights and the other time direction."""
    cases = [make_case(**case_args)]
    if bidirectional:
        cases.append(make_case(**{**case_args, "reverse": not case_args["reverse"],
                                  "seed": case_args.get("seed", 0) + 100}))
    if variants is not None:
        cases = [with_variants(c, **variants, seed=k) for k, c in enumerate(cases)]
    return cases


def assert_forward_matches(cases: list[Case], monkeypatch, on_chip: bool | None = None,
                           of_max: float | None = None) -> None:
    """Each direction's forward and the NumPy backward run on it, against the NumPy backend."""
    dtype = cases[0].forward[0].dtype
    for case, got in zip(cases, run_cooperative(cases, on_chip), strict=True):
        expected = run_op(case, "numpy", monkeypatch)
        assert_matches_reference((got, run_backward(case, got, "numpy", monkeypatch)), expected, dtype, of_max)


@pytest.mark.parametrize("on_chip", [False, True], ids=["streamed", "on_chip"])
@pytest.mark.parametrize("proj,packed,reverse", [(0, False, False), (16, True, True), (0, True, True)],
                         ids=["padded", "packed-proj-rev", "packed-rev"])
def test_float32_matches_numpy(proj, packed, reverse, on_chip, monkeypatch):
    cases = cases_of(T=T, B=B, H=H, proj=proj, packed=packed, reverse=reverse, dtype=torch.float32, seed=1)
    assert_forward_matches(cases, monkeypatch, on_chip)


@pytest.mark.parametrize("on_chip", [False, True], ids=["streamed", "on_chip"])
@pytest.mark.parametrize("proj", [0, 24], ids=["no_proj", "proj"])
def test_masked_edges_match_numpy(proj, on_chip, monkeypatch):
    # H = 40: three unit blocks, the last partial, and (streamed, BLOCK_K 32) two K chunks over
    # P = 40 or, with P = 24, over H in phase 2; P = 24: two phase-2 programs, the second
    # partial, and a third unit block without output columns.
    cases = cases_of(T=4, B=B, H=40, proj=proj, packed=True, reverse=False, dtype=torch.float32, seed=2)
    assert_forward_matches(cases, monkeypatch, on_chip)


def test_one_step_one_sequence_matches_numpy(monkeypatch):
    cases = cases_of(T=1, B=1, H=H, proj=0, packed=False, reverse=True, dtype=torch.float32, seed=3)
    assert_forward_matches(cases, monkeypatch)


@pytest.mark.parametrize("proj,on_chip", [(0, False), (16, True)], ids=["streamed", "proj-on_chip"])
def test_bidirectional_runs_in_one_launch(proj, on_chip, monkeypatch):
    cases = cases_of(bidirectional=True, T=T, B=B, H=H, proj=proj, packed=True, reverse=False,
                     dtype=torch.float32, seed=4)
    assert_forward_matches(cases, monkeypatch, on_chip)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("proj,packed,bidirectional", [(0, True, True), (16, False, False)],
                         ids=["packed-bidir", "padded-proj"])
def test_half_types_match_numpy(dtype, proj, packed, bidirectional, monkeypatch):
    cases = cases_of(bidirectional=bidirectional, T=6, B=B, H=H, proj=proj, packed=packed, reverse=True,
                     dtype=dtype, seed=5)
    assert_forward_matches(cases, monkeypatch)


VARIANTS = {
    "peephole_clip": dict(peephole=True, cell_clip=0.5),
    "zoneout_train": dict(zoneout="train"),
    "zoneout_eval": dict(zoneout="eval", peephole=True),
    "all": dict(peephole=True, zoneout="train", cell_clip=0.5),
}


@pytest.mark.parametrize("proj", [0, 16], ids=["no_proj", "proj"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_match_numpy(variant, proj, monkeypatch):
    cases = cases_of(bidirectional=True, variants=VARIANTS[variant], T=4, B=B, H=H, proj=proj, packed=True,
                     reverse=False, dtype=torch.float32, seed=6)
    cell_clip, zoneout_c = cases[0].variants[5], cases[0].variants[3]
    if cell_clip is not None and zoneout_c is None:  # zoneout mixes the clipped cell with c_{t-1}
        cells = run_op(cases[0], "numpy", monkeypatch)[0][4]
        assert cells.abs().max().item() == pytest.approx(cell_clip), "cell_clip never binds"
    assert_forward_matches(cases, monkeypatch, on_chip=proj == 0)


def test_variants_bfloat16_match_numpy(monkeypatch):
    # No clip, as in test_triton_variants.py: a bf16-rounded cell can cross the bound for one
    # backend only.
    cases = cases_of(bidirectional=True, variants=dict(peephole=True, zoneout="train"), T=5, B=B, H=H, proj=16,
                     packed=True, reverse=True, dtype=torch.bfloat16, seed=7)
    assert_forward_matches(cases, monkeypatch)


@pytest.mark.parametrize("proj", [0, 16], ids=["no_proj", "proj"])
def test_drop_in_for_persistent_forward(proj, monkeypatch):
    """Same call, no direction axis: persistent_forward's results, to rounding, on the rows the
    caller keeps."""
    case = make_case(T=T, B=B, H=H, proj=proj, packed=True, reverse=True, dtype=torch.float32, seed=8)
    p = Padded(case)
    gates_x, w_hh, w_hr, h0, c0, _, reverse = case.forward
    args = (p.pad(gates_x), w_hh, w_hr, h0, c0, torch.from_numpy(p.layout.lengths().astype("int32")), reverse)
    got = cooperative_forward(*args, config=small_plan(H, h0.shape[1], B, torch.float32, 1))
    want = persistent_forward(*args)
    rtol, atol = KERNEL_TOLERANCES[torch.float32]
    for name, a, b in zip(("y", "h_n", "c_n", "gates", "cells"), got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if a.shape[0] == p.num_padded:  # rows past a sequence's end: dropped by the caller
            a, b = a.index_select(0, p.rows), b.index_select(0, p.rows)
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


def test_layer_norm_is_refused():
    case = with_variants(make_case(T=2, B=2, H=16, proj=0, packed=False, reverse=False, dtype=torch.float32),
                         layer_norm=True)
    gates_x, w_hh, _, h0, c0, _, _ = case.forward
    with pytest.raises(ValueError, match="layer norm"):
        cooperative_forward(gates_x.reshape(4, -1), w_hh, None, h0, c0, torch.full((2,), 2, dtype=torch.int32),
                            False, Variants(ln_hh=case.variants[1]))
