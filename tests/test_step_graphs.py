"""CUDA-graph replay of the per-step launchers (graph_replay.py, step_graphs.py), on the CPU: the
cache key, the LRU and capture policy, and the eager fall-through. That a replay equals the eager
launches (and stale buffers never leak) needs a GPU: tests/test_cuda.py.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from triton_support import make_case, run_step_launchers, with_variants

from torch_lstm_ext.triton_kernels import buffers, graph_replay
from torch_lstm_ext.triton_kernels.graph_replay import GraphCache, graph_key, replay
from torch_lstm_ext.triton_kernels.layout import Layout

T, B, H = 5, 3, 4


def _tensors(dtype=torch.float32, proj: bool = False):
    """step_forward's tensor arguments: gates_x [T*B, 4H], w_hh, w_hr or None, h0, c0."""
    P = 2 if proj else H
    return (torch.zeros(T * B, 4 * H, dtype=dtype), torch.zeros(4 * H, P, dtype=dtype),
            torch.zeros(P, H, dtype=dtype) if proj else None, torch.zeros(B, P, dtype=dtype),
            torch.zeros(B, H, dtype=dtype))


def _key(tensors=None, layout=None, name="step_forward", scalars=()):
    return graph_key(name, tensors or _tensors(), layout or Layout.of(None, T * B, B, False), scalars)


def test_layout_equal_calls_share_a_key():
    padded = Layout.of(None, T * B, B, reverse=False)
    packed_full = Layout.of(torch.full((T,), B), T * B, B, reverse=False)
    assert _key(layout=padded) == _key(layout=packed_full)
    # New tensors with other values but the same shapes: the same key.
    assert _key(tensors=_tensors()) == _key(tensors=tuple(None if t is None else t + 1 for t in _tensors()))


@pytest.mark.parametrize("change", ["sizes", "reverse", "batch_tail", "dtype", "projection", "name", "clip"])
def test_whatever_changes_the_launches_changes_the_key(change):
    base = _key()
    changed = {
        "sizes": lambda: _key(layout=Layout.of(None, (T - 1) * B, B, False)),
        "reverse": lambda: _key(layout=Layout.of(None, T * B, B, True)),
        "batch_tail": lambda: _key(layout=Layout.of(torch.tensor([3, 3, 2, 2, 1]), 11, B, False)),
        "dtype": lambda: _key(tensors=_tensors(torch.bfloat16)),
        "projection": lambda: _key(tensors=_tensors(proj=True)),
        "name": lambda: _key(name="step_backward"),
        "clip": lambda: _key(scalars=(0.5, None)),
    }[change]()
    assert changed != base
    hash(changed)


def test_poisoned_buffers_get_their_own_key(monkeypatch):
    base = _key()
    monkeypatch.setattr(buffers, "POISON", True)
    assert _key() != base


def test_cache_keeps_the_most_recently_used_graphs():
    cache = GraphCache(max_graphs=2)
    cache.put("a", "graph a")
    cache.put("b", "graph b")
    assert cache.get("a") == "graph a"  # now b is the least recently used
    cache.put("c", "graph c")
    assert list(cache.graphs) == ["a", "c"] and cache.get("b") is None


def test_a_key_is_captured_on_its_second_call_and_sightings_are_bounded():
    cache = GraphCache(capture_after=2, max_sightings=2)
    assert not cache.due("a") and cache.due("a")
    assert not cache.due("a")  # counted afresh: a graph evicted later is captured again on demand
    for key in ("b", "c"):
        cache.due(key)
    assert not cache.due("a")  # "a" was the oldest sighting, dropped when "c" came


def test_off_cuda_the_launcher_runs_eagerly_and_nothing_is_cached():
    cache = GraphCache()
    calls = []

    def launcher(*tensors):
        calls.append(tensors)
        return tensors[0] + 1

    tensors = _tensors()
    for _ in range(3):
        out = replay("step_forward", launcher, tensors, Layout.of(None, T * B, B, False), cache=cache)
    assert len(calls) == 3 and all(a is b for a, b in zip(calls[0], tensors)) and torch.equal(out, tensors[0] + 1)
    assert not cache.graphs and not cache.stats


class _FakeGraph:
    """A CUDA graph's semantics on the CPU: replay reruns the captured launcher on the captured
    inputs and writes into the captured outputs, in place."""

    def __init__(self, launcher, inputs, outputs):
        self.launcher, self.inputs, self.outputs = launcher, inputs, outputs

    def replay(self):
        for buffer, value in zip(self.outputs, self.launcher(*self.inputs), strict=True):
            if buffer is not None:
                buffer.copy_(value)


def _fake_capture(launcher, tensors):
    inputs = tuple(None if t is None else t.clone() for t in tensors)
    outputs = launcher(*inputs)
    return graph_replay.Captured(_FakeGraph(launcher, inputs, outputs), inputs, outputs)


def test_replay_refills_its_inputs_and_hands_out_clones(monkeypatch):
    """With a fake graph: a later call's new values reach the graph, an earlier result is never
    overwritten, and a tensor returned twice stays one tensor."""
    monkeypatch.setattr(graph_replay, "_graphable", lambda tensors: True)
    monkeypatch.setattr(graph_replay, "_capture", _fake_capture)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    cache = GraphCache(capture_after=2)
    layout = Layout.of(None, T * B, B, False)

    def launcher(a, b):
        total = a + b
        return total, total, a * b

    def call(a, b):
        return replay("toy", launcher, (a, b), layout, cache=cache)

    a, b = torch.randn(3), torch.randn(3)
    eager, captured = call(a, b), call(a, b)
    a2, b2 = torch.randn(3), torch.randn(3)
    later = call(a2, b2)
    assert dict(cache.stats) == {"eager": 1, "captures": 1, "hits": 1}
    for got, (x, y) in ((eager, (a, b)), (captured, (a, b)), (later, (a2, b2))):
        assert torch.equal(got[0], x + y) and torch.equal(got[2], x * y) and got[0] is got[1]
    entry = next(iter(cache.graphs.values()))
    assert all(t is not s for t in later for s in entry.outputs)


@pytest.mark.interpreter
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (make test-interpreter)")
@pytest.mark.parametrize("proj,variants", [(0, False), (6, False), (6, True)], ids=["plain", "proj", "variants"])
def test_graphed_launchers_take_and_return_what_the_eager_ones_do(proj, variants):
    """Under the interpreter the graphed functions fall through to the eager launchers: their
    argument plumbing (the variants' tensors and clips, variant_backward's step loop) is the same."""
    case = make_case(T=4, B=3, H=16, proj=proj, packed=True, reverse=True, dtype=torch.float32)
    if variants:
        case = with_variants(case, peephole=True, layer_norm=True, zoneout="train", cell_clip=0.5, grad_clip=0.1)
    eager, graphed = run_step_launchers(case, graphed=False), run_step_launchers(case, graphed=True)
    for want, got in zip(eager[0] + eager[1], graphed[0] + graphed[1], strict=True):
        assert (want is None) == (got is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=0, atol=0)
