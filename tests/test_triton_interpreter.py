"""The Triton backend on the CPU through Triton's interpreter, against the NumPy reference and
torch.nn.LSTM (the variants: test_triton_variants.py). Run in its own process: `make test-interpreter`
(TRITON_INTERPRET=1 pytest -m interpreter), as the flag must be set before Triton is imported.

Every buffer a kernel writes starts NaN-filled (buffers.POISON), so an unwritten row fails.
Shapes are small but GPU-legal (tl.dot tiles >= 16), and chosen to cover several tiles per axis
where it matters: the interpreter config tiles H and K by 16.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 set before import: run `make test-interpreter`",
                allow_module_level=True)

import torch
from support import assert_same_results, outputs_and_grads, twin_lstms
from torch.nn.utils.rnn import pack_sequence
from triton_support import assert_matches_reference, count_triton_calls, make_case, run_kernel, run_op

from torch_lstm_ext.config import BACKEND_ENV
from torch_lstm_ext.triton_kernels import buffers, recurrence
from torch_lstm_ext.triton_kernels.dispatch import choose_kernel

pytestmark = pytest.mark.interpreter

# "step_graph" runs the "step" launchers eagerly off CUDA (test_step_graphs.py covers that path).
KERNELS = ["step", "persistent", "cooperative"]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(buffers, "POISON", True)


@pytest.fixture
def triton_calls(monkeypatch):
    return count_triton_calls(monkeypatch)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("proj", [0, 16], ids=["no_proj", "proj"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_float32_matches_reference(kernel, proj, packed, reverse, monkeypatch):
    # H = 32 and P = 16 / 32: two hidden tiles and one or two K steps per launch.
    case = make_case(T=5, B=3, H=32, proj=proj, packed=packed, reverse=reverse, dtype=torch.float32)
    assert_matches_reference(run_kernel(case, kernel), run_op(case, "numpy", monkeypatch), torch.float32)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("T,B,H,proj,packed", [
    (3, 20, 16, 0, True),   # two batch tiles, the second partial
    (4, 2, 24, 20, False),  # H and P not multiples of the tiles: masked edges everywhere
    (1, 1, 16, 0, False),   # one step, one sequence
])
def test_awkward_shapes_match_reference(kernel, T, B, H, proj, packed, monkeypatch):
    case = make_case(T=T, B=B, H=H, proj=proj, packed=packed, reverse=True, dtype=torch.float32, seed=1)
    assert_matches_reference(run_kernel(case, kernel), run_op(case, "numpy", monkeypatch), torch.float32)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("proj,packed,reverse", [(0, True, False), (16, False, True)])
def test_half_types_match_reference(kernel, dtype, proj, packed, reverse, monkeypatch):
    case = make_case(T=6, B=3, H=32, proj=proj, packed=packed, reverse=reverse, dtype=dtype, seed=2)
    assert_matches_reference(run_kernel(case, kernel), run_op(case, "numpy", monkeypatch), dtype)


def test_ops_use_triton_and_match_reference(triton_calls, monkeypatch):
    case = make_case(T=4, B=3, H=32, proj=16, packed=True, reverse=False, dtype=torch.float32, seed=3)
    expected = run_op(case, "numpy", monkeypatch)
    assert triton_calls == {"forward": 0, "backward": 0}
    actual = run_op(case, "triton", monkeypatch)
    assert triton_calls == {"forward": 1, "backward": 1}
    assert_matches_reference(actual, expected, torch.float32)


def test_float64_takes_the_reference_path(monkeypatch):
    case = make_case(T=4, B=3, H=16, proj=8, packed=True, reverse=True, dtype=torch.float64, seed=4)
    actual, expected = run_op(case, "triton", monkeypatch), run_op(case, "numpy", monkeypatch)
    for got, want in zip(actual[0] + actual[1], expected[0] + expected[1], strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_dispatch_rule():
    assert choose_kernel(32, 32, False, torch.float32) == "persistent"
    assert choose_kernel(64, 64, False, torch.float32) == "step"
    assert choose_kernel(64, 64, True, torch.bfloat16) == "persistent"
    assert choose_kernel(128, 32, True, torch.float16) == "persistent"
    assert choose_kernel(128, 128, False, torch.bfloat16) == "step"


def _module_input(T: int, B: int, input_size: int, packed: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    if not packed:
        return torch.randn(T, B, input_size, generator=gen).requires_grad_()
    lengths = [max(1, (T * (k + 1)) // B) for k in range(B)][::-1][1:] + [T]
    x = pack_sequence([torch.randn(n, input_size, generator=gen) for n in lengths], enforce_sorted=False)
    x.data.requires_grad_()
    return x


MODULE_CONFIGS = [
    dict(num_layers=2, bidirectional=True, proj_size=0, bias=True, packed=True),
    dict(num_layers=1, bidirectional=True, proj_size=16, bias=False, packed=False),
    dict(num_layers=2, bidirectional=False, proj_size=16, bias=True, packed=True),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("config", MODULE_CONFIGS,
                         ids=lambda c: "-".join(f"{k}={int(v)}" for k, v in c.items()))
def test_module_matches_nn_lstm(kernel, config, triton_calls, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "triton")
    monkeypatch.setattr(recurrence, "choose_kernel", lambda *args: kernel)
    config = dict(config)
    packed = config.pop("packed")
    T, B, I, H = 4, 3, 8, 32
    ref, ours = twin_lstms(torch.float32, input_size=I, hidden_size=H, **config)
    x = _module_input(T, B, I, packed)
    layers = config["num_layers"] * (2 if config["bidirectional"] else 1)
    gen = torch.Generator().manual_seed(1)
    hx = (torch.randn(layers, B, config["proj_size"] or H, generator=gen).requires_grad_(),
          torch.randn(layers, B, H, generator=gen).requires_grad_())
    expected = outputs_and_grads(ref, x, hx)
    actual = outputs_and_grads(ours, x, hx)
    assert triton_calls["forward"] == triton_calls["backward"] == layers
    assert_same_results(expected, actual, torch.float32)


def test_module_float64_matches_nn_lstm(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "triton")
    ref, ours = twin_lstms(torch.float64, input_size=5, hidden_size=16, num_layers=2, proj_size=8)
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    assert_same_results(outputs_and_grads(ref, x), outputs_and_grads(ours, x), torch.float64)

