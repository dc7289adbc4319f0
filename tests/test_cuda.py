"""The Triton backend on a CUDA GPU: against the NumPy reference, against torch.nn.LSTM (cuDNN,
TF32 off) and under torch.compile(fullgraph=True); the per-step launchers replayed from CUDA
graphs against their eager launches. Skipped without CUDA; scripts/gpu_check.sh runs it on a GPU
machine.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from support import (
    LAYER_NORM_BF16_TOLERANCE,
    assert_checkpoint_close,
    assert_close,
    assert_same_results,
    dequantized_state,
    twin_lstms,
)
from torch import Tensor
from torch.nn.utils.rnn import pack_sequence
from triton_support import (
    assert_matches_reference,
    make_case,
    outputs_and_grads_on_device,
    run_kernel,
    run_op,
    run_step_launchers,
    with_variants,
)

import torch_lstm_ext
from torch_lstm_ext.config import BACKEND_ENV
from torch_lstm_ext.triton_kernels import buffers, graph_replay, step_graphs
from torch_lstm_ext.triton_kernels.dispatch import persistent_weight_bytes
from torch_lstm_ext.triton_kernels.layout import Layout
from torch_lstm_ext.triton_kernels.step_forward import step_forward

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Forced past this, the persistent kernel asks for more shared memory than an H200 has
# (227 KiB; fp32 H = 128 asked for 264 KiB): dispatch.py never picks it there, so such
# combinations are not generated.
PERSISTENT_TESTABLE_BYTES = 192 * 1024
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SHAPES = [(32, 0, False, False), (32, 16, True, True), (128, 0, True, False), (96, 48, False, True)]


def _kernel_cases():
    """(kernel, dtype, H, proj, packed, reverse) for both kernels where each can run."""
    for (H, proj, packed, reverse), (name, dtype) in itertools.product(SHAPES, DTYPES.items()):
        yield pytest.param("step", dtype, H, proj, packed, reverse, id=f"step-{name}-H{H}-P{proj}")
        if persistent_weight_bytes(H, proj or H, bool(proj), dtype) <= PERSISTENT_TESTABLE_BYTES:
            yield pytest.param("persistent", dtype, H, proj, packed, reverse, id=f"persistent-{name}-H{H}-P{proj}")

@pytest.fixture(autouse=True)
def exact_fp32(monkeypatch):
    """TF32 off for the torch / cuDNN references; the default (auto: Triton on CUDA) backend."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setenv(BACKEND_ENV, "auto")


@pytest.mark.parametrize("kernel,dtype,H,proj,packed,reverse", list(_kernel_cases()))
def test_kernels_match_reference(kernel, dtype, H, proj, packed, reverse, monkeypatch):
    case = make_case(T=8, B=40, H=H, proj=proj, packed=packed, reverse=reverse, dtype=dtype, device="cuda")
    assert_matches_reference(run_kernel(case, kernel), run_op(case, "numpy", monkeypatch), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_ops_dispatch_to_triton_and_match_reference(dtype, monkeypatch):
    case = make_case(T=6, B=5, H=64, proj=0, packed=True, reverse=False, dtype=dtype, device="cuda", seed=1)
    assert_matches_reference(run_op(case, "auto", monkeypatch), run_op(case, "numpy", monkeypatch), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("H,proj", [(64, 0), (96, 48)])
def test_variant_kernels_match_reference(dtype, H, proj, monkeypatch):
    # Clips in fp32 only (see test_triton_variants.py's bf16 case for why).
    clips = dict(cell_clip=0.5, grad_clip=0.05) if dtype == torch.float32 else {}
    case = make_case(T=8, B=40, H=H, proj=proj, packed=True, reverse=True, dtype=dtype, device="cuda", seed=2)
    case = with_variants(case, peephole=True, layer_norm=True, zoneout="train", **clips, seed=3)
    assert_matches_reference(run_op(case, "auto", monkeypatch), run_op(case, "numpy", monkeypatch), dtype,
                             of_max=LAYER_NORM_BF16_TOLERANCE if dtype == torch.bfloat16 else None)


def test_float64_runs_on_the_reference_path(monkeypatch):
    case = make_case(T=4, B=3, H=16, proj=8, packed=True, reverse=True, dtype=torch.float64, device="cuda")
    actual, expected = run_op(case, "auto", monkeypatch), run_op(case, "numpy", monkeypatch)
    for got, want in zip(actual[0] + actual[1], expected[0] + expected[1], strict=True):
        assert got.device.type == "cuda" and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _input(T: int, B: int, I: int, packed: bool, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    if not packed:
        return torch.randn(T, B, I, generator=gen).to("cuda", dtype).requires_grad_()
    lengths = [max(1, (T * (k + 1)) // B) for k in range(B)][::-1][1:] + [T]
    seqs = [torch.randn(n, I, generator=gen).to("cuda", dtype) for n in lengths]
    x = pack_sequence(seqs, enforce_sorted=False)
    x.data.requires_grad_()
    return x


MODULE_CONFIGS = [
    dict(hidden_size=32, num_layers=2, bidirectional=True, proj_size=0, packed=True),
    dict(hidden_size=128, num_layers=1, bidirectional=True, proj_size=64, packed=False),
    dict(hidden_size=96, num_layers=2, bidirectional=False, proj_size=0, packed=True),
]


def _config_id(config: dict) -> str:
    return "-".join(f"{k}={int(v)}" for k, v in config.items())


@pytest.mark.parametrize("config", MODULE_CONFIGS, ids=_config_id)
def test_module_matches_cudnn_lstm_fp32(config):
    config = dict(config)
    packed = config.pop("packed")
    ref, ours = twin_lstms(torch.float32, input_size=24, **config)
    ref, ours = ref.cuda(), ours.cuda()
    x = _input(10, 6, 24, packed, torch.float32)
    assert_same_results(outputs_and_grads_on_device(ref, x), outputs_and_grads_on_device(ours, x), torch.float32)


def test_module_bf16_matches_cudnn_lstm():
    ref, ours = twin_lstms(torch.bfloat16, input_size=24, hidden_size=64, bidirectional=True)
    ref, ours = ref.cuda(), ours.cuda()
    x = _input(10, 6, 24, False, torch.bfloat16)
    assert_same_results(outputs_and_grads_on_device(ref, x), outputs_and_grads_on_device(ours, x), torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_compiled_module_matches_eager(dtype):
    torch._dynamo.reset()
    _, ours = twin_lstms(dtype, input_size=16, hidden_size=64, num_layers=2, bidirectional=True)
    ours = ours.cuda()
    x = _input(7, 5, 16, False, dtype)
    compiled = torch.compile(ours, fullgraph=True)
    # Inductor compiles the input projections around the opaque recurrence op, so results agree
    # to the dtype's tolerance rather than bit for bit.
    assert_same_results(outputs_and_grads_on_device(ours, x), outputs_and_grads_on_device(compiled, x), dtype)


ALL_VARIANTS = dict(peephole=True, layer_norm=True, zoneout_cell=0.2, zoneout_hidden=0.1, weight_dropout=0.3,
                    cell_clip=2.0, grad_clip=0.5)


def _results_with_backend(module: torch.nn.Module, x, backend: str, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, backend)
    torch.manual_seed(7)  # the same dropout and zoneout masks for both backends
    return outputs_and_grads_on_device(module, x)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_module_with_every_variant_matches_numpy_backend_in_training(packed, monkeypatch):
    config = dict(input_size=24, hidden_size=64, num_layers=2, bidirectional=True, proj_size=32 if packed else 0)
    ours = torch_lstm_ext.LSTM(**config, **ALL_VARIANTS).cuda().train()
    x = _input(9, 6, 24, packed, torch.float32)
    triton = _results_with_backend(ours, x, "auto", monkeypatch)
    numpy = _results_with_backend(ours, x, "numpy", monkeypatch)
    # Layer norm divides by per-row standard deviations, so fp32 rounding differences between
    # the two backends grow past the plain kernel's 1e-5.
    for got, want in zip(triton[:3], numpy[:3], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for name in numpy[3]:
        torch.testing.assert_close(triton[3][name], numpy[3][name], rtol=1e-4, atol=1e-4, msg=name)


def test_checkpointed_module_matches_stored_path():
    torch.manual_seed(0)
    stored = torch_lstm_ext.LSTM(16, 48, num_layers=2, peephole=True).cuda()
    checkpointed = torch_lstm_ext.LSTM(16, 48, num_layers=2, peephole=True, checkpoint=True).cuda()
    checkpointed.load_state_dict(stored.state_dict())
    T = 200
    x = _input(T, 8, 16, False, torch.float32)
    want, got = outputs_and_grads_on_device(stored, x), outputs_and_grads_on_device(checkpointed, x)
    # The two paths differ by rounding, within the checkpoint bound of support.py (not the
    # parity tolerance: a T-step recurrence and block-wise gradient sums carry the rounding on).
    for name, a, b in zip(("output", "h_n", "c_n"), got[:3], want[:3]):
        assert_checkpoint_close(a, b, T, name)
    assert got[3].keys() == want[3].keys()
    for name in want[3]:
        assert_checkpoint_close(got[3][name], want[3][name], T, f"grad {name}")


# CUDA-graph replay of the per-step launchers (step_graphs.py): (H, proj, packed, reverse,
# variants), the shapes of the eager kernel tests above so that their compiled kernels serve.
GRAPH_CASES = {
    "plain": (32, 0, False, False, False),
    "plain-packed": (128, 0, True, False, False),
    "proj-reverse": (96, 48, False, True, False),
    "proj-packed-reverse": (32, 16, True, True, False),
    "variants": (64, 0, True, True, True),
    "variants-proj": (96, 48, True, True, True),
}


def _graph_case(T: int, dtype, H, proj, packed, reverse, variants, seed: int):
    case = make_case(T=T, B=40, H=H, proj=proj, packed=packed, reverse=reverse, dtype=dtype, device="cuda",
                     seed=seed)
    if not variants:
        return case
    # Clips in fp32 only, as in test_variant_kernels_match_reference.
    clips = dict(cell_clip=0.5, grad_clip=0.05) if dtype == torch.float32 else {}
    return with_variants(case, peephole=True, layer_norm=True, zoneout="train", **clips, seed=seed + 3)


def _assert_identical(got: tuple[tuple, tuple], want: tuple[tuple, tuple]) -> None:
    """Bit for bit (the same kernels and configs), no NaN (every buffer starts poisoned)."""
    for g, w in zip(got[0] + got[1], want[0] + want[1], strict=True):
        assert (g is None) == (w is None)
        if w is not None:
            torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.fixture
def graph_cache(monkeypatch):
    """An empty graph cache, poisoned buffers; the graphs dropped afterwards."""
    monkeypatch.setattr(buffers, "POISON", True)
    graph_replay.CACHE.clear()
    yield graph_replay.CACHE
    graph_replay.CACHE.clear()


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", GRAPH_CASES.values(), ids=GRAPH_CASES.keys())
def test_graph_replay_equals_the_eager_launches(shape, dtype, graph_cache):
    first, second = (_graph_case(8, dtype, *shape, seed=seed) for seed in (0, 1))
    other = _graph_case(5, dtype, *shape, seed=2)  # another layout
    want_first = run_step_launchers(first, graphed=False)
    eager_call = run_step_launchers(first, graphed=True)  # a key's first call runs eagerly
    captured = run_step_launchers(first, graphed=True)  # its second call captures and replays
    for _ in range(2):
        want_other = run_step_launchers(other, graphed=False)
        got_other = run_step_launchers(other, graphed=True)
    # A replay on other values of the first shape: a stale static buffer would show here, and a
    # result that aliased the graph's outputs would change under `captured`.
    got_second = run_step_launchers(second, graphed=True)
    want_second = run_step_launchers(second, graphed=False)
    assert dict(graph_cache.stats) == {"eager": 4, "captures": 4, "hits": 2}
    _assert_identical(eager_call, want_first)
    _assert_identical(captured, want_first)
    _assert_identical(got_other, want_other)
    _assert_identical(got_second, want_second)
    assert not torch.equal(want_second[0][0], want_first[0][0])


def test_graphed_launches_inside_a_callers_capture_are_recorded_by_it(graph_cache):
    """Under the caller's own capture nothing is captured twice: the launches run into it."""
    case = _graph_case(8, torch.float32, *GRAPH_CASES["proj-packed-reverse"], seed=0)
    gates_x, w_hh, w_hr, h0, c0, batch_sizes, reverse = case.forward
    layout = Layout.of(batch_sizes, gates_x.shape[0], h0.shape[0], reverse)
    want = step_forward(gates_x, w_hh, w_hr, h0, c0, layout)  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = step_graphs.graphed_step_forward(gates_x, w_hh, w_hr, h0, c0, layout)
    graph.replay()
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert not graph_cache.graphs and not graph_cache.stats


# The cooperative kernels (dispatch does not pick them before a GPU run has measured them, so
# they are forced): every shape spans several unit blocks and, at B = 40, three batch tiles.
COOPERATIVE_SHAPES = [(128, 0, True, False), (256, 128, False, True), (512, 0, True, True), (1024, 512, False, False)]
COOPERATIVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("dtype", COOPERATIVE_DTYPES.values(), ids=COOPERATIVE_DTYPES.keys())
@pytest.mark.parametrize("H,proj,packed,reverse", COOPERATIVE_SHAPES,
                         ids=[f"H{s[0]}-P{s[1]}-{'packed' if s[2] else 'padded'}-{'rev' if s[3] else 'fwd'}"
                              for s in COOPERATIVE_SHAPES])
def test_cooperative_kernels_match_reference(dtype, H, proj, packed, reverse, monkeypatch):
    case = make_case(T=8, B=40, H=H, proj=proj, packed=packed, reverse=reverse, dtype=dtype, device="cuda", seed=4)
    assert_matches_reference(run_kernel(case, "cooperative"), run_op(case, "numpy", monkeypatch), dtype)


def test_cooperative_kernels_hold_over_a_long_sequence(monkeypatch):
    """512 steps of per-step barriers: a race or a stale h would grow into a visible error."""
    case = make_case(T=512, B=64, H=1024, proj=0, packed=False, reverse=False, dtype=torch.bfloat16,
                     device="cuda", seed=5)
    assert_matches_reference(run_kernel(case, "cooperative"), run_op(case, "numpy", monkeypatch), torch.bfloat16)


@pytest.mark.parametrize("H,proj", [(256, 0), (256, 128)])
def test_cooperative_per_element_variants_match_reference(H, proj, monkeypatch):
    case = make_case(T=8, B=40, H=H, proj=proj, packed=True, reverse=True, dtype=torch.float32, device="cuda", seed=6)
    case = with_variants(case, peephole=True, zoneout="train", cell_clip=0.5, grad_clip=0.05, seed=7)
    assert_matches_reference(run_kernel(case, "cooperative"), run_op(case, "numpy", monkeypatch), torch.float32)


@pytest.mark.parametrize("has_proj", [False, True], ids=["no_proj", "proj"])
def test_cooperative_both_directions_in_one_launch_equal_two_launches(has_proj):
    """The direction axis: one launch of D = 2 gives what two launches of D = 1 give."""
    from torch_lstm_ext.triton_kernels.cooperative_backward import cooperative_backward
    from torch_lstm_ext.triton_kernels.cooperative_forward import cooperative_forward

    T, B, H = 8, 40, 256
    P = 128 if has_proj else H
    gen = torch.Generator().manual_seed(8)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).cuda()

    gx, h0, c0 = randn(2, T * B, 4 * H), randn(2, B, P), randn(2, B, H)
    w_hh, w_hr = randn(2, 4 * H, P, scale=P**-0.5), (randn(2, P, H, scale=H**-0.5) if has_proj else None)
    lengths = torch.randint(1, T + 1, (B,), generator=gen).to(torch.int32).cuda()
    both = cooperative_forward(gx, w_hh, w_hr, h0, c0, lengths, False)
    for d in range(2):
        one = cooperative_forward(gx[d], w_hh[d], None if w_hr is None else w_hr[d], h0[d], c0[d], lengths, d == 1)
        for name, a, b in zip(("y", "h_n", "c_n", "gates", "cells"), both, one, strict=True):
            _assert_same_rows(name, d, a[d], b, lengths, T, B)
    y, _, _, gates, cells = both
    grad_y, grad_hn, grad_cn = randn(2, T * B, P), randn(2, B, P), randn(2, B, H)
    both_grads = cooperative_backward(grad_y, grad_hn, grad_cn, w_hh, w_hr, c0, gates, cells, lengths, False)
    for d in range(2):
        one_grads = cooperative_backward(grad_y[d], grad_hn[d], grad_cn[d], w_hh[d],
                                         None if w_hr is None else w_hr[d], c0[d], gates[d], cells[d], lengths, d == 1)
        for name, a, b in zip(("d_gates", "d_out", "d_h0", "d_c0"), both_grads, one_grads, strict=True):
            if b is None:
                assert a is None, name
            else:
                _assert_same_rows(name, d, a[d], b, lengths, T, B)


def _assert_same_rows(name: str, d: int, got: Tensor, want: Tensor, lengths: Tensor, T: int, B: int) -> None:
    """got == want on a per-sequence tensor [T*B, F] (only the padded rows t * B + b with
    t < lengths[b]: the kernels need not write the others) or a state [B, F] (all rows)."""
    if got.shape[0] == T * B:
        active = (torch.arange(T, device=lengths.device)[:, None] < lengths[None, :]).reshape(-1)
        got, want = got[active], want[active]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}[{d}]: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_module_with_cooperative_kernels_matches_cudnn(dtype, monkeypatch):
    from torch_lstm_ext.triton_kernels import recurrence

    monkeypatch.setattr(recurrence, "choose_kernel", lambda *args: "cooperative")
    ref, ours = twin_lstms(dtype, input_size=64, hidden_size=256, num_layers=2, bidirectional=True)
    ref, ours = ref.cuda(), ours.cuda()
    x = _input(16, 24, 64, True, dtype)
    assert_same_results(outputs_and_grads_on_device(ref, x), outputs_and_grads_on_device(ours, x), dtype)


# Three cases, not six: each compiles its kernels afresh, and scripts/gpu_check.sh's CUDA stages
# have little time to spare; the interpreter tests (tests/test_triton_quantized.py) cover the rest.
@pytest.mark.parametrize("storage, kernel", [(torch.int8, "step"), (torch.float16, "persistent"),
                                             (torch.int8, "cooperative")], ids=["int8-step", "fp16-persistent",
                                                                                "int8-cooperative"])
def test_quantized_module_matches_cudnn_with_dequantized_weights(storage, kernel, monkeypatch):
    """quantize_weights on the GPU: the Triton kernels read int8 (with per-row scales) or fp16
    weights; cuDNN (TF32 off) holds the same weights dequantized, in fp32."""
    from torch_lstm_ext.triton_kernels import recurrence

    monkeypatch.setattr(recurrence, "choose_kernel", lambda *args: kernel)
    hidden = 32 if kernel == "persistent" else 256  # the persistent kernel's fp32 budget
    ours = torch_lstm_ext.LSTM(24, hidden, num_layers=2, bidirectional=True).cuda().eval()
    torch_lstm_ext.quantize_weights(ours, storage)
    ref = torch.nn.LSTM(24, hidden, num_layers=2, bidirectional=True).cuda().eval()
    ref.load_state_dict(dequantized_state(ours))
    x = _input(12, 8, 24, True, torch.float32)
    with torch.no_grad():
        (out, (h, c)), (ref_out, (ref_h, ref_c)) = ours(x), ref(x)
    for name, got, want in (("output", out.data, ref_out.data), ("h_n", h, ref_h), ("c_n", c, ref_c)):
        assert_close(got, want, torch.float32, name)
