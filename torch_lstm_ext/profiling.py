"""Named torch.profiler ranges for the stages of the LSTM: the input GEMM and its backward, the
recurrence and its backward, the weight gradients."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from torch.profiler import record_function


def _profiling() -> bool:
    # Under torch.compile the ranges are skipped (Dynamo would drop them with a warning on every
    # compile).
    return not torch.compiler.is_compiling() and torch.autograd._profiler_enabled()


def stage(name: str) -> contextlib.AbstractContextManager:
    """A `record_function` range named `lstm_ext::<name>` while a profiler runs, else a no-op.

    Entering record_function costs ~5 us even with no profiler attached, which shows on tiny
    shapes; checking the profiler flag first costs ~0.1 us.
    """
    if not _profiling():
        return contextlib.nullcontext()
    return record_function(f"lstm_ext::{name}")


def label_backward(output: Tensor, name: str, source: Tensor) -> Tensor:
    """`output`, unchanged; while a profiler runs, its computation from `source` gets the range
    `lstm_ext::<name>` around each of its autograd nodes' backward.

    For work whose backward autograd derives (the input projection, F.linear): a node's pre-hook
    opens the range and its post-hook closes it, so the ranges nest exactly around the node's
    work however the engine orders the graph. The nodes are those reachable from output's
    grad_fn without passing source's (the parameters' accumulation included).
    """
    if not _profiling() or output.grad_fn is None:
        return output
    boundary = source.grad_fn
    label = f"lstm_ext::{name}"
    seen: set = set()
    pending = [output.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node is boundary or node in seen:
            continue
        seen.add(node)
        _time_node(node, label)
        pending.extend(next_node for next_node, _ in node.next_functions)
    return output


def _time_node(node, label: str) -> None:
    ranges: list[record_function] = []

    def enter(grad_outputs) -> None:
        ranges.append(record_function(label).__enter__())

    def leave(grad_inputs, grad_outputs) -> None:
        ranges.pop().__exit__(None, None, None)

    node.register_prehook(enter)
    node.register_hook(leave)
