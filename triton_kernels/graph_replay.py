"""CUDA-graph replay of a per-step launcher: its launches are captured once per launch sequence
and replayed after.

A per-step launcher (step_forward.py and the like) issues one to three Triton launches per time
step, and each costs 80-100 us of host work (autotune dispatch, argument binding, the launch)
however little the step computes. Captured in a torch.cuda.CUDAGraph, the whole sequence is one
replay.

The key (graph_key) holds everything a captured graph bakes in: the launcher's name (forward or
backward, plain or variant), every tensor argument's device, shape and dtype (None for one that
is off: the projection, each variant), the layout (step sizes, batch, direction: the grids and
row offsets of every launch), the scalar arguments (the clip values) and buffers.POISON (a
poisoned run launches fills). No data pointer is in it: a graph reads and writes only its own
static buffers.

A call of a key:
- first call: the launcher runs eagerly on the caller's tensors (CAPTURE_AFTER), so a layout
  seen once (packed batches of fresh lengths) never pays for a capture;
- second call: capture. The inputs are copied into new static buffers, the launcher runs once on
  them on a side stream (warm-up: Triton compiles, autotunes and loads its modules there; none of
  that may happen inside a capture), a second run is captured into the graph's private memory
  pool (its allocations land there), and the graph is replayed;
- later calls: the inputs are copied into the static buffers and the graph is replayed.
The result is always a CLONE of the graph's outputs, never the graph's own buffers, which the
next replay of that key overwrites (autograd keeps a forward's outputs until the backward). So a
graphed call costs the replay plus one device copy of each input and output.

Memory: at most MAX_GRAPHS graphs are kept, the least recently used evicted; each holds a copy of
its inputs and its outputs and scratch, about one eager call's inputs + outputs (1.3 GiB at T512
B64 H1024 fp32). CACHE.max_graphs changes the bound, CACHE.clear() drops them all. More keys in
turn than MAX_GRAPHS means a capture on (nearly) every call.

Where no graph can run, the launcher runs eagerly: on tensors off CUDA (the CPU, Triton's
interpreter), and while the current stream is capturing (the caller's own graph then records
the launches). One stream at a time per key: two streams replaying one graph would share its
buffers.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torch_lstm_ext.config import triton_interpreter_enabled
from torch_lstm_ext.triton_kernels import buffers
from torch_lstm_ext.triton_kernels.layout import Layout

MAX_GRAPHS = 8  # a two-direction stack's forward and backward are 4 keys per distinct layer shape
CAPTURE_AFTER = 2  # calls of a key before it is captured
MAX_SIGHTINGS = 256  # keys counted while not captured yet (each a few hundred bytes)


def graph_key(name: str, tensors: Sequence[Tensor | None], layout: Layout, scalars: tuple = ()) -> tuple:
    """The cache key of launcher `name` on `tensors` (see the module docstring): hashable."""
    specs = tuple(None if t is None else (t.device, tuple(t.shape), t.dtype) for t in tensors)
    return (name, specs, layout.sizes.tobytes(), layout.batch, layout.reverse, tuple(scalars), buffers.POISON)


@dataclass
class Captured:
    """A captured launch sequence: the graph, the static inputs it reads (None where the
    launcher took None) and the outputs it writes (what the launcher returned in the capture)."""

    graph: Any  # torch.cuda.CUDAGraph (absent from CPU builds' type stubs)
    inputs: tuple[Tensor | None, ...]
    outputs: Any


class GraphCache:
    """Captured graphs by key, least recently used first, and the calls of keys not captured yet.

    stats counts the calls: "eager" (a key's calls before its capture), "captures", "hits".
    """

    def __init__(self, max_graphs: int = MAX_GRAPHS, capture_after: int = CAPTURE_AFTER,
                 max_sightings: int = MAX_SIGHTINGS) -> None:
        self.max_graphs = max_graphs
        self.capture_after = capture_after
        self.max_sightings = max_sightings
        self.graphs: OrderedDict[Hashable, Captured] = OrderedDict()
        self._sightings: OrderedDict[Hashable, int] = OrderedDict()
        self.stats: Counter[str] = Counter()

    def get(self, key: Hashable) -> Captured | None:
        """The graph of `key`, now the most recently used, or None."""
        entry = self.graphs.get(key)
        if entry is not None:
            self.graphs.move_to_end(key)
        return entry

    def due(self, key: Hashable) -> bool:
        """Count a call of uncaptured `key`: True when this call should capture it."""
        count = self._sightings.pop(key, 0) + 1
        if count >= self.capture_after:
            return True
        self._sightings[key] = count
        while len(self._sightings) > self.max_sightings:
            self._sightings.popitem(last=False)
        return False

    def put(self, key: Hashable, entry: Captured) -> None:
        """Keep `entry`, evicting the least recently used graphs past max_graphs (dropping a graph
        frees its pool and static buffers once no caller holds them)."""
        self.graphs[key] = entry
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)

    def clear(self) -> None:
        self.graphs.clear()
        self._sightings.clear()
        self.stats.clear()


CACHE = GraphCache()


def _graphable(tensors: Sequence[Tensor | None]) -> bool:
    first = next(t for t in tensors if t is not None)
    return first.is_cuda and not triton_interpreter_enabled() and not torch.cuda.is_current_stream_capturing()


def _capture(launcher: Callable[..., Any], tensors: Sequence[Tensor | None]) -> Captured:
    """Static copies of `tensors`, a warm-up run on them, then the captured run (not replayed)."""
    # Outside inference mode: inference tensors could not be refilled by a later call outside it.
    with torch.inference_mode(False):
        inputs = tuple(None if t is None else t.clone(memory_format=torch.contiguous_format) for t in tensors)
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            launcher(*inputs)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = launcher(*inputs)
    return Captured(graph, inputs, outputs)


def _clone(outputs: Any) -> Any:
    """`outputs` (a tensor, or a tuple / NamedTuple of tensors and None) with each tensor cloned
    once: a tensor returned twice (d_hh is d_gates without LN_hh) stays one tensor."""
    clones: dict[int, Tensor] = {}

    def one(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        if id(t) not in clones:
            clones[id(t)] = t.clone()
        return clones[id(t)]

    if isinstance(outputs, Tensor):
        return one(outputs)
    values = [one(t) for t in outputs]
    return outputs._make(values) if hasattr(outputs, "_make") else tuple(values)


def replay(name: str, launcher: Callable[..., Any], tensors: Sequence[Tensor | None], layout: Layout,
           scalars: tuple = (), cache: GraphCache = CACHE) -> Any:
    """launcher(*tensors), from a CUDA graph where one can run (see the module docstring).

    `launcher` must read no tensor but `tensors` and write none of them; `layout` and `scalars`
    (hashable) are all else it depends on. Returns fresh tensors on every path.
    """
    if not _graphable(tensors):
        return launcher(*tensors)
    key = graph_key(name, tensors, layout, scalars)
    device = next(t for t in tensors if t is not None).device
    with torch.no_grad(), torch.cuda.device(device):
        entry = cache.get(key)
        if entry is None:
            if not cache.due(key):
                cache.stats["eager"] += 1
                return launcher(*tensors)
            entry = _capture(launcher, tensors)
            cache.put(key, entry)
            cache.stats["captures"] += 1
        else:
            for static, t in zip(entry.inputs, tensors, strict=True):
                if static is not None:
                    static.copy_(t)
            cache.stats["hits"] += 1
        entry.graph.replay()
        return _clone(entry.outputs)
