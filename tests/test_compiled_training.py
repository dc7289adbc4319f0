"""Compiled training (issue 9): five steps of a compiled forward + backward, in-place gradient
clipping and a compiled SGD step leave our LSTM with the parameters that five eager steps of
nn.LSTM reach from the same weights (checkpoint=True: our own eager checkpointed model, since
nn.LSTM has no checkpointing). Over how the backward is compiled (traced by Dynamo with
trace_autograd_ops=True, by compiled autograd, or not at all) and how gradients are reset:
zero_grad(set_to_none=False) accumulates into last step's .grad tensors, True makes new ones.

What this guards against: one gradient tensor handed to both biases becomes both .grad under
inductor's compiled accumulation (projection.summed_biases), so the bias gradients were 2x from
the second step with set_to_none=False, and clip_grad_norm_ scaled them twice with either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
from support import assert_close
from torch import nn
from torch._dynamo.utils import counters
from torch.nn.utils import clip_grad_norm_

import torch_lstm_ext

# LSTMs trained together, so that one compilation covers a group. "stored" reaches the bias
# gradients through input_projection's backward (both layers, both directions) and has one
# member without biases; "checkpoint" through CheckpointedLayer.backward, and is its own group
# so that the stored path's result stands on its own.
GROUPS = {
    "stored": {"2layers_bidirectional": dict(num_layers=2, bidirectional=True), "no_bias": dict(bias=False)},
    "checkpoint": {"checkpoint": dict(checkpoint=True)},
}
INPUT, HIDDEN, STEPS, BATCH, TRAIN_STEPS = 3, 4, 5, 2, 5
LR = 0.5
# Below every step's gradient norms (asserted), so that clipping rescales the gradients in
# place each step: a buffer shared by two .grad is then scaled twice.
MAX_NORM = 0.5
COMPILED_MODES = ["trace_autograd_ops", "compiled_autograd"]


class Zoo(nn.Module):
    """The LSTMs of one group; `reference` builds nn.LSTM members (ours for checkpoint=True),
    else ours throughout."""

    def __init__(self, group: str, reference: bool) -> None:
        super().__init__()

        def build(config: dict) -> nn.Module:
            if reference and not config.get("checkpoint"):
                return nn.LSTM(INPUT, HIDDEN, **config)
            return torch_lstm_ext.LSTM(INPUT, HIDDEN, **config)

        self.members = nn.ModuleDict({name: build(config) for name, config in GROUPS[group].items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, B, INPUT] -> the training loss, a scalar."""
        loss = x.new_zeros(())
        for lstm in self.members.values():
            out, (h_n, c_n) = lstm(x)
            loss = loss + out.pow(2).sum() + h_n.sum() - c_n.sum()
        return loss


def forward_backward(zoo: Zoo, x: torch.Tensor) -> None:
    zoo(x).backward()


def clip(zoo: Zoo) -> torch.Tensor:
    """Clip each member's gradients in place (a wrong member leaves the others' clipping alone);
    returns the members' gradient norms before clipping [members]. Eager, as training loops
    often do it: compiled, Dynamo would take two .grad that are one tensor as one input and
    scale it once."""
    return torch.stack([clip_grad_norm_(lstm.parameters(), MAX_NORM) for lstm in zoo.members.values()])


def _dynamo_config(mode: str):
    """Dynamo's settings for `mode`, while compiling and while running: compiled_autograd compiles
    the backward that the compiled function calls (a graph break); trace_autograd_ops puts it in
    the forward's graph instead, so that one can be fullgraph. Hitting the recompile limit
    raises instead of quietly running eagerly."""
    return torch._dynamo.config.patch(trace_autograd_ops=mode == "trace_autograd_ops",
                                      compiled_autograd=mode == "compiled_autograd",
                                      fail_on_recompile_limit_hit=True)


class Training(NamedTuple):
    """How a training step runs: the mode, its forward + backward and SGD step functions, and
    compiled autograd's capture count when they were made."""

    mode: str
    forward_backward: Callable[[Zoo, torch.Tensor], None]
    optimizer_step: Callable[[torch.optim.Optimizer], None]
    captures_before: int = 0


EAGER = Training("eager", forward_backward, torch.optim.SGD.step)


_compiled: dict[str, Training] = {}


def _training(mode: str) -> Training:
    """The Training of `mode`, compiled on first use and kept for the mode's other tests (model
    and optimizer are graph inputs: another model of a group reuses the graphs, and compiling
    is most of this file's time; CASES lists a mode's tests together). Dynamo is reset when the
    mode changes: both modes' compiled functions share the code objects, and the other mode's
    cache entries would be reused."""
    if mode == "eager":
        return EAGER
    if mode not in _compiled:
        torch._dynamo.reset()
        _compiled.clear()
        with _dynamo_config(mode):  # compiled_autograd is read here, trace_autograd_ops in _train
            _compiled[mode] = Training(
                mode, torch.compile(forward_backward, fullgraph=mode == "trace_autograd_ops"),
                torch.compile(torch.optim.SGD.step), counters["compiled_autograd"]["captures"])
    return _compiled[mode]


@pytest.fixture(scope="module", autouse=True)
def _reset_dynamo_after():
    """Leave no compiled functions or cache entries of this file to the next."""
    yield
    _compiled.clear()
    torch._dynamo.reset()


def _train(zoo: Zoo, x: torch.Tensor, training: Training, set_to_none: bool) -> torch.Tensor:
    """TRAIN_STEPS steps of forward + backward, per-member clip_grad_norm_ and an SGD step;
    returns the gradient norms before clipping [TRAIN_STEPS, members]."""
    optimizer = torch.optim.SGD(zoo.parameters(), lr=LR)
    norms = []
    with _dynamo_config(training.mode):
        for _ in range(TRAIN_STEPS):
            optimizer.zero_grad(set_to_none=set_to_none)
            training.forward_backward(zoo, x)
            norms.append(clip(zoo))
            training.optimizer_step(optimizer)
    if training.mode == "compiled_autograd":  # it compiled a backward (cached after the first test)
        assert counters["compiled_autograd"]["captures"] > training.captures_before
    return torch.stack(norms)


# By mode, so that each is compiled once. Eager checkpointing would be compared with itself:
# left out.
CASES = [
    (mode, group) for mode in [*COMPILED_MODES, "eager"] for group in GROUPS if (mode, group) != ("eager", "checkpoint")
]


@pytest.mark.parametrize("set_to_none", [False, True], ids=["set_to_none=False", "set_to_none=True"])
@pytest.mark.parametrize("mode,group", CASES, ids=[f"{mode}-{group}" for mode, group in CASES])
def test_compiled_training_matches_eager(mode, group, set_to_none):
    training = _training(mode)
    reference, ours = Zoo(group, reference=True), Zoo(group, reference=False)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(STEPS, BATCH, INPUT, generator=torch.Generator().manual_seed(1))
    reference_norms = _train(reference, x, EAGER, set_to_none)
    assert reference_norms.min() > MAX_NORM, "clipping must rescale the gradients every step"
    _train(ours, x, training, set_to_none)
    expected = dict(reference.named_parameters())
    wrong = []
    for name, param in ours.named_parameters():
        try:
            assert_close(param.detach(), expected[name].detach(), torch.float32, name)
        except AssertionError as error:
            lines = str(error).splitlines()
            wrong.append(lines[0] + "".join(f" {line}" for line in lines if line.startswith("Greatest absolute")))
    assert not wrong, f"{mode}, {len(wrong)} parameters differ after {TRAIN_STEPS} steps:\n" + "\n".join(wrong)
