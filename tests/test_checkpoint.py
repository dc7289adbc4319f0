"""checkpoint=True: outputs and every gradient equal to the stored-activation path's to
rounding, within the bound of tests/support.py (T eps of each tensor's largest entry), and
gradcheck through the checkpointed backward itself.
"""

from __future__ import annotations

import random

import pytest
import torch
from support import assert_checkpoint_close, assert_close
from torch.autograd import gradcheck
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import torch_lstm_ext
from torch_lstm_ext.schedule import time_blocks

CASES = {
    "plain-long": (dict(), 70, 2, False),
    "2layer-bidir-proj": (dict(num_layers=2, bidirectional=True, proj_size=3), 40, 3, False),
    "packed-bidir": (dict(bidirectional=True), 45, 4, True),
    "all-variants-training": (
        dict(num_layers=2, bidirectional=True, dropout=0.3, peephole=True, layer_norm=True, zoneout_cell=0.2,
             zoneout_hidden=0.1, weight_dropout=0.2, cell_clip=1.0, grad_clip=0.5), 50, 2, False),
    "packed-proj-layer-norm-zoneout": (
        dict(proj_size=2, layer_norm=True, zoneout_cell=0.3, zoneout_hidden=0.3), 90, 4, True),
}


def _run(checkpoint, config, x, seed=7, input_size=3, hidden_size=6) -> dict[str, torch.Tensor]:
    """One training step from fixed seeds (the same masks for either path): the outputs and
    the gradients of the input and of every parameter, by name."""
    torch.manual_seed(0)
    dtype = (x.data if isinstance(x, PackedSequence) else x).dtype
    module = torch_lstm_ext.LSTM(input_size, hidden_size, checkpoint=checkpoint, dtype=dtype, **config).train()
    torch.manual_seed(seed)
    out, (h_n, c_n) = module(x)
    data = out.data if isinstance(out, PackedSequence) else out
    leaves = {"input": x.data if isinstance(x, PackedSequence) else x, **dict(module.named_parameters())}
    loss = (data * torch.linspace(-1, 1, data.shape[-1], dtype=dtype)).sum() + h_n.pow(2).sum() + c_n.sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"output": data, "h_n": h_n, "c_n": c_n, **{f"grad {n}": g for n, g in zip(leaves, grads)}}


def _assert_results_close(ckpt: dict, stored: dict, num_steps: int, what: str) -> None:
    """Every tensor of two _run results within the checkpoint bound."""
    assert ckpt.keys() == stored.keys()
    for name in stored:
        assert_checkpoint_close(ckpt[name], stored[name], num_steps, f"{what}, {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", CASES)
def test_checkpoint_equals_stored_path_to_rounding(name, dtype, small_blocks):
    config, T, B, packed = CASES[name]
    gen = torch.Generator().manual_seed(1)
    if packed:
        lengths = [T, T // 3, T - 5, 2][:B]
        x = pack_sequence([torch.randn(n, 3, generator=gen, dtype=dtype) for n in lengths], enforce_sorted=False)
        x.data.requires_grad_()
    else:
        x = torch.randn(T, B, 3, generator=gen, dtype=dtype, requires_grad=True)
    _assert_results_close(_run(True, config, x), _run(False, config, x), T, name)


def test_random_configurations_equal_stored_path_to_rounding(small_blocks):
    """A derandomized sweep over everything the module takes, twelve configurations."""
    rng = random.Random(20261128)
    for _ in range(12):
        dtype = rng.choice([torch.float32, torch.float64])
        I, H = rng.randint(1, 30), rng.randint(2, 30)
        config = dict(num_layers=rng.choice([1, 2]), bidirectional=rng.random() < 0.5,
                      batch_first=rng.random() < 0.3, peephole=rng.random() < 0.4,
                      layer_norm=rng.random() < 0.4, zoneout_cell=rng.choice([0.0, 0.2]),
                      weight_dropout=rng.choice([0.0, 0.25]), grad_clip=rng.choice([None, 0.2]))
        if rng.random() < 0.4:
            config["proj_size"] = rng.randint(1, H - 1)
        T, B = rng.randint(1, 200), rng.randint(1, 6)
        gen = torch.Generator().manual_seed(rng.randint(0, 1000))
        if rng.random() < 0.4:
            lengths = [T] + [rng.randint(1, T) for _ in range(B - 1)]
            x = pack_sequence([torch.randn(n, I, generator=gen, dtype=dtype) for n in lengths],
                              enforce_sorted=False)
            x.data.requires_grad_()
        else:
            shape = (B, T, I) if config["batch_first"] else (T, B, I)
            x = torch.randn(*shape, generator=gen, dtype=dtype, requires_grad=True)
        runs = [_run(checkpoint, config, x, input_size=I, hidden_size=H) for checkpoint in (True, False)]
        _assert_results_close(*runs, T, f"{dtype} I{I} H{H} T{T} B{B} {config}")


def test_checkpoint_equals_stored_path_to_rounding_with_the_shipped_blocks():
    """The blocks as shipped (schedule.MIN_BLOCK_ROWS rows at least), float32, training."""
    config = dict(num_layers=2, bidirectional=True, proj_size=4, peephole=True, zoneout_cell=0.1, dropout=0.2)
    x = torch.randn(300, 8, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    assert len(time_blocks(None, 300 * 8, 8, False)) >= 2
    _assert_results_close(_run(True, config, x), _run(False, config, x), 300, "shipped blocks")


def test_checkpoint_gradcheck(small_blocks):
    torch.manual_seed(0)
    module = torch_lstm_ext.LSTM(2, 3, bidirectional=True, proj_size=2, checkpoint=True, dtype=torch.float64)
    names = [n for n, _ in module.named_parameters()]
    x = torch.randn(70, 1, 2, dtype=torch.float64, requires_grad=True)  # two blocks

    def fn(x, *weights):
        out, (h_n, c_n) = torch.func.functional_call(module, dict(zip(names, weights)), (x,))
        return out, h_n, c_n

    assert gradcheck(fn, (x, *[p.detach().clone().requires_grad_() for p in module.parameters()]))


def test_checkpoint_refuses_double_backward_clearly():
    module = torch_lstm_ext.LSTM(2, 3, checkpoint=True, dtype=torch.float64)
    x = torch.randn(5, 1, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="second-order gradients"):
        torch.autograd.grad(module(x)[0].sum(), x, create_graph=True)


def test_checkpoint_compiles_fullgraph():
    torch.manual_seed(0)
    module = torch_lstm_ext.LSTM(3, 6, num_layers=2, layer_norm=True, checkpoint=True)
    x = torch.randn(40, 2, 3, requires_grad=True)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    results = []
    for m in (module, compiled):
        out, (h_n, c_n) = m(x)
        results.append((out, *torch.autograd.grad(out.pow(2).sum() + h_n.sum(), [x, *module.parameters()])))
    for a, b in zip(*results):
        assert_close(a, b, torch.float32, "compiled")
