"""Differential fuzz: random configurations and inputs, our LSTM against torch.nn.LSTM.

Each example builds an nn.LSTM and our LSTM with the same config and weights, runs both on the
same input (and states, when given) and compares the output, h_n, c_n and the gradients of
every parameter, the input, h0 and c0. Where nn.LSTM refuses the input (T = 0), ours must raise
the same exception type.

Settings come from the Hypothesis profile (tests/conftest.py): under `make test` the examples
are derandomized (the same every run); `make fuzz` draws FUZZ_EXAMPLES of them from a printed
seed, and the same FUZZ_SEED and FUZZ_EXAMPLES reproduce a run.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from support import assert_same_results, outputs_and_grads, twin_lstms
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_sequence

# Small shapes: many configurations per second, and every code path (packing, layers, projection) is reached.
MAX_T = 7
MAX_B = 5
MAX_HIDDEN = 9


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for these tiny tensors: threads buy nothing at this size, and on a
    busy 2-core machine two spinning OpenMP threads made this test 5-6x slower (single nn.LSTM
    calls over 100x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclasses.dataclass(frozen=True)
class Case:
    """One drawn example; its repr is the reproducer Hypothesis prints on a failure."""

    config: dict  # nn.LSTM constructor arguments (dtype aside)
    dtype: torch.dtype
    training: bool  # only with dropout == 0: dropout in training mode is random
    kind: str  # "batched" [T, B, I] ([B, T, I] with batch_first), "unbatched" [T, I] or "packed"
    time_steps: int  # batched and unbatched; 0 is an error in nn.LSTM
    batch: int  # batched (unbatched: 1); 0 is legal
    lengths: tuple[int, ...]  # packed: per-sequence lengths, in batch order
    enforce_sorted: bool  # packed: lengths are sorted decreasing and pack_sequence keeps the order
    with_hx: bool
    seed: int  # weights, inputs, states and the loss weighting


@st.composite
def lstm_cases(draw) -> Case:
    hidden = draw(st.integers(1, MAX_HIDDEN))
    num_layers = draw(st.integers(1, 3))
    dropout = draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0, exclude_min=True)))
    config = dict(
        input_size=draw(st.integers(1, 6)),
        hidden_size=hidden,
        num_layers=num_layers,
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        dropout=dropout,
        bidirectional=draw(st.booleans()),
        proj_size=draw(st.integers(0, hidden - 1)),
    )
    kind = draw(st.sampled_from(["batched", "unbatched", "packed"]))
    time_steps, batch, lengths, enforce_sorted = 0, 0, (), False
    if kind == "packed":
        # Short lengths in a short batch: ties and length-1 sequences come often.
        lengths = draw(st.lists(st.integers(1, MAX_T), min_size=1, max_size=MAX_B))
        enforce_sorted = draw(st.booleans())
        if enforce_sorted:
            lengths = sorted(lengths, reverse=True)
        lengths = tuple(lengths)
    else:
        time_steps = draw(st.integers(0, MAX_T))
        batch = draw(st.integers(0, MAX_B)) if kind == "batched" else 1
    return Case(
        config=config,
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        training=draw(st.booleans()) if dropout == 0 else False,
        kind=kind,
        time_steps=time_steps,
        batch=batch,
        lengths=lengths,
        enforce_sorted=enforce_sorted,
        with_hx=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def make_inputs(case: Case) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor] | None]:
    """The input (requiring grad) and, if the case has them, (h0, c0) requiring grad."""
    gen = torch.Generator().manual_seed(case.seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=case.dtype)

    cfg = case.config
    size = cfg["input_size"]
    if case.kind == "packed":
        x = pack_sequence([randn(n, size) for n in case.lengths], enforce_sorted=case.enforce_sorted)
        x.data.requires_grad_()
        state_lead: tuple[int, ...] = (len(case.lengths),)
    elif case.kind == "unbatched":
        x = randn(case.time_steps, size).requires_grad_()
        state_lead = ()
    else:
        T, B = case.time_steps, case.batch
        x = randn(*((B, T, size) if cfg["batch_first"] else (T, B, size))).requires_grad_()
        state_lead = (B,)
    if not case.with_hx:
        return x, None
    layers = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)
    out_size = cfg["proj_size"] or cfg["hidden_size"]
    hx = tuple(randn(layers, *state_lead, n).requires_grad_() for n in (out_size, cfg["hidden_size"]))
    return x, hx


def record_events(case: Case) -> None:
    """What the example covers, for --hypothesis-show-statistics (make fuzz prints them)."""
    event(f"kind={case.kind}")
    event(f"dtype={case.dtype}")
    if case.kind == "packed":
        event(f"packed enforce_sorted={case.enforce_sorted}")
        if len(set(case.lengths)) < len(case.lengths):
            event("packed: tied lengths")
        if 1 in case.lengths:
            event("packed: a length-1 sequence")
        if list(case.lengths) != sorted(case.lengths, reverse=True):
            event("packed: lengths out of order")
    else:
        event(f"T={case.time_steps}" if case.time_steps <= 1 else "T>1")
    if case.kind == "batched":
        event(f"B={case.batch}" if case.batch <= 1 else "B>1")
    if case.config["dropout"] > 0:
        event("dropout > 0 (eval)")


def raised(module, x, hx) -> Exception | None:
    try:
        module(x, hx)
    except Exception as error:  # any type: the test compares them
        return error
    return None


@given(lstm_cases())
def test_matches_nn_lstm(case: Case) -> None:
    record_events(case)
    with warnings.catch_warnings():
        # nn.LSTM and ours both warn about dropout > 0 with one layer; the case is legal.
        warnings.filterwarnings("ignore", "dropout option adds dropout", UserWarning)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(case.seed)
            ref, ours = twin_lstms(case.dtype, **case.config)
    ref.train(case.training)
    ours.train(case.training)
    x, hx = make_inputs(case)

    if case.kind != "packed" and case.time_steps == 0:
        ref_error = raised(ref, x, hx)
        assert ref_error is not None, "nn.LSTM accepted T = 0: this test's premise is outdated"
        our_error = raised(ours, x, hx)
        assert type(our_error) is type(ref_error), (
            f"T = 0: nn.LSTM raised {type(ref_error).__name__} ({ref_error}); ours "
            + ("returned" if our_error is None else f"raised {type(our_error).__name__} ({our_error})")
        )
        return

    ref_results = outputs_and_grads(ref, x, hx, seed=case.seed)
    our_results = outputs_and_grads(ours, x, hx, seed=case.seed)
    assert_same_results(ref_results, our_results, case.dtype)
    if case.kind == "packed":
        # The packing metadata is passed through, not computed: exact equality is the contract.
        ref_out, our_out = ref(x, hx)[0], ours(x, hx)[0]
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            a, b = getattr(our_out, field), getattr(ref_out, field)
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), f"output.{field}"
