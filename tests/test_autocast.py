"""LSTM and LSTMCell under torch.autocast, live against nn.LSTM / nn.LSTMCell under the same
autocast: the dtypes of output, h_n, c_n and of every gradient, which (h0, c0) dtypes are taken,
and the values and gradients to support.py's tolerance of the coarser of the autocast dtype and
the result's dtype (a silently wrong result is the bug to catch, not only a wrong dtype).

Two of nn.LSTM's CPU kernels raise under autocast by accidents of their own, where we return what
its autocast rule computes; there the reference is that rule carried out by hand:
- This CPU's oneDNN has no float16 LSTM, so under float16 autocast the oneDNN path raises after
  `mkldnn_rnn_layer` (lower_precision_fp) cast everything to float16. Reference: nn.LSTM outside
  autocast on its input, states and weights cast (differentiably) to float16.
- For bidirectional ragged packed input the reverse direction concatenates its state with rows of
  h0 as the batch grows (torch.cat, CPU autocast's promote policy), which refuses a half type other
  than the autocast dtype. h0 otherwise only reaches the recurrent GEMM, cast to the autocast
  dtype, so the reference is nn.LSTM under autocast with h0 cast to that dtype first.

The CUDA tests are marked like tests/test_cuda.py's and skipped without a GPU.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from support import TOLERANCES, twin_lstms
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import torch_lstm_ext

BF16, F16, F32, F64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
INPUT, HIDDEN, STEPS, BATCH = 4, 5, 4, 3
# The dtypes from finest to coarsest (bfloat16's 8-bit significand is the coarsest).
PRECISION_ORDER = [F64, F32, F16, BF16]
ONEDNN_HAS_NO_FP16 = "could not create a primitive descriptor"
MIXED_HALF_CAT = "Unexpected floating ScalarType in at::autocast::prioritize"


def coarsest(*dtypes: torch.dtype) -> torch.dtype:
    return max(dtypes, key=PRECISION_ORDER.index)


def make_input(kind: str, dtype: torch.dtype, device: str = "cpu", batch_first: bool = False):
    """A leaf input requiring grad: 'padded' [T, B, I] ([B, T, I] batch_first), 'unbatched'
    [T, I], 'packed' (equal lengths) or 'ragged' (unsorted lengths) PackedSequence."""
    gen = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    if kind in ("packed", "ragged"):
        lengths = [STEPS] * BATCH if kind == "packed" else [3, STEPS, 1]
        x = pack_sequence([randn(n, INPUT) for n in lengths], enforce_sorted=False)
        x.data.requires_grad_()
        return x
    if kind == "unbatched":
        return randn(STEPS, INPUT).requires_grad_()
    shape = (BATCH, STEPS, INPUT) if batch_first else (STEPS, BATCH, INPUT)
    return randn(*shape).requires_grad_()


def make_states(dtypes, leading: tuple[int, ...], out_size: int, device: str = "cpu"):
    """(h0 [*leading, out_size], c0 [*leading, HIDDEN]) in dtypes (h, c), requiring grad; None
    for dtypes None."""
    if dtypes is None:
        return None
    gen = torch.Generator().manual_seed(2)
    return tuple(torch.randn(*leading, size, generator=gen).to(device, dtype).requires_grad_()
                 for size, dtype in zip((out_size, HIDDEN), dtypes))


def data_of(x):
    return x.data if isinstance(x, PackedSequence) else x


def results_and_grads(forward, module: nn.Module, input, hx):
    """Run forward() (-> (output, (h_n, c_n)) or (h', c')), then backprop a fixed random
    weighting of every result outside autocast, as training does. Returns ([results],
    {name: grad}) with the grads of every parameter, the input and the states."""
    out = forward()
    results = [data_of(out[0]), *out[1]] if isinstance(out[1], tuple) else list(out)
    gen = torch.Generator().manual_seed(3)
    loss = sum((r * torch.randn(r.shape, generator=gen).to(r.device, r.dtype)).sum().double() for r in results)
    leaves = {f"param.{name}": p for name, p in module.named_parameters()}
    leaves["input"] = data_of(input)
    for name, t in zip(("h0", "c0"), hx or ()):
        leaves[name] = t
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return results, dict(zip(leaves, grads, strict=True))


def under_autocast(module, input, hx, dtype, device="cpu"):
    def forward():
        with torch.autocast(device, dtype=dtype):
            return module(input) if hx is None else module(input, hx)
    return forward


def cast_by_hand(ref: nn.Module, input, hx, dtype):
    """nn.LSTM as its oneDNN autocast rule runs it: everything cast to dtype, autocast off."""
    def forward():
        params = {name: p.to(dtype) for name, p in ref.named_parameters()}
        if isinstance(input, PackedSequence):
            x = PackedSequence(input.data.to(dtype), input.batch_sizes, input.sorted_indices,
                               input.unsorted_indices)
        else:
            x = input.to(dtype)
        args = (x,) if hx is None else (x, tuple(t.to(dtype) for t in hx))
        return torch.func.functional_call(ref, params, args)
    return forward


def reference_results(ref, input, hx, dtype, device="cpu"):
    """nn.LSTM's / nn.LSTMCell's results and grads under autocast; where its CPU kernels raise by
    an accident of their own (see the module docstring), what its autocast rule computes."""
    try:
        return results_and_grads(under_autocast(ref, input, hx, dtype, device), ref, input, hx)
    except RuntimeError as error:
        if device == "cpu" and dtype == F16 and ONEDNN_HAS_NO_FP16 in str(error):
            forward = cast_by_hand(ref, input, hx, dtype)
        elif device == "cpu" and MIXED_HALF_CAT in str(error):
            assert isinstance(input, PackedSequence) and ref.bidirectional
            h0, c0 = hx or zero_states(ref, input)  # nn.LSTM's zeros are in the input's dtype
            assert h0.dtype in (F16, BF16) and h0.dtype != dtype
            forward = under_autocast(ref, input, (h0.to(dtype), c0), dtype)
        else:
            raise
    return results_and_grads(forward, ref, input, hx)


def zero_states(lstm: nn.LSTM, input: PackedSequence) -> tuple[torch.Tensor, torch.Tensor]:
    layers = lstm.num_layers * (2 if lstm.bidirectional else 1)
    batch, dtype = int(input.batch_sizes[0]), input.data.dtype
    return (torch.zeros(layers, batch, lstm.proj_size or lstm.hidden_size, dtype=dtype),
            torch.zeros(layers, batch, lstm.hidden_size, dtype=dtype))


def assert_like_reference(ours, ref, autocast_dtype: torch.dtype) -> None:
    """Same dtypes everywhere, values to the coarser of the autocast and the result's dtype."""
    (our_results, our_grads), (ref_results, ref_grads) = ours, ref
    assert [r.dtype for r in our_results] == [r.dtype for r in ref_results], "result dtypes"
    assert {n: g.dtype for n, g in our_grads.items()} == {n: g.dtype for n, g in ref_grads.items()}, "grad dtypes"
    named = [(f"result {i}", a, b) for i, (a, b) in enumerate(zip(our_results, ref_results))]
    named += [(f"grad {n}", our_grads[n], ref_grads[n]) for n in ref_grads]
    for name, actual, expected in named:
        rtol, atol = TOLERANCES[coarsest(autocast_dtype, expected.dtype)]
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


STATE_DTYPES = {"none": None, "bf16,fp32": (BF16, F32), "fp32,bf16": (F32, BF16), "fp16,fp16": (F16, F16)}
DTYPE_IDS = {F32: "fp32", BF16: "bf16", F16: "fp16", F64: "fp64"}


def lstm_case(kind, proj, x_dtype, state_dtypes, device="cpu", num_layers=2, bidirectional=True, **config):
    """Twin LSTMs (float32 weights) and their input and hx."""
    ref, ours = twin_lstms(F32, input_size=INPUT, hidden_size=HIDDEN, num_layers=num_layers,
                           bidirectional=bidirectional, proj_size=proj, **config)
    ref, ours = ref.to(device), ours.to(device)
    layers = num_layers * (2 if bidirectional else 1)
    leading = (layers,) if kind == "unbatched" else (layers, BATCH)
    return ref, ours, make_input(kind, x_dtype, device), make_states(state_dtypes, leading, proj or HIDDEN, device)


@pytest.mark.parametrize("autocast_dtype", [BF16, F16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("state_dtypes", STATE_DTYPES.values(), ids=STATE_DTYPES.keys())
@pytest.mark.parametrize("x_dtype", [F32, BF16, F16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("kind", ["padded", "unbatched", "packed", "ragged"])
@pytest.mark.parametrize("proj", [0, 3], ids=["noproj", "proj"])
def test_lstm_like_nn_lstm_on_cpu(proj, kind, x_dtype, state_dtypes, autocast_dtype):
    # Covers both of nn.LSTM's CPU paths: oneDNN (every dtype the autocast dtype) without a
    # projection for unpacked or equal-length packed fp32 / bf16 input, the native cell loop
    # (c_n promoted with c0's dtype) otherwise.
    ref, ours, x, hx = lstm_case(kind, proj, x_dtype, state_dtypes)
    expected = reference_results(ref, x, hx, autocast_dtype)
    actual = results_and_grads(under_autocast(ours, x, hx, autocast_dtype), ours, x, hx)
    assert_like_reference(actual, expected, autocast_dtype)


@pytest.mark.parametrize("state_dtypes", [(F32, F32), (BF16, BF16)], ids=["fp32", "bf16"])
def test_lstm_follows_nn_lstm_with_onednn_off(state_dtypes):
    # With oneDNN off nn.LSTM takes the native loop even where it would take oneDNN: c_n is
    # promote(bf16, c0) there, so fp32 states give fp32 results.
    ref, ours, x, hx = lstm_case("padded", 0, F32, state_dtypes)
    with torch.backends.mkldnn.flags(enabled=False):
        expected = reference_results(ref, x, hx, BF16)
        actual = results_and_grads(under_autocast(ours, x, hx, BF16), ours, x, hx)
    assert_like_reference(actual, expected, BF16)


@pytest.mark.parametrize("x_dtype", [F32, F16], ids=DTYPE_IDS.get)
def test_lstm_without_grad_like_nn_lstm(x_dtype):
    # Without grad, oneDNN would also take float16 input where it has fp16 kernels.
    ref, ours, x, hx = lstm_case("padded", 0, x_dtype, (F32, F32))
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        expected, ours_out = ref(x, hx), ours(x, hx)
    for actual, reference in zip([ours_out[0], *ours_out[1]], [expected[0], *expected[1]]):
        rtol, atol = TOLERANCES[BF16]
        torch.testing.assert_close(actual, reference, rtol=rtol, atol=atol)


def test_lstm_batch_first_dropout_in_training_like_nn_lstm():
    # Dropout between layers draws the same masks as nn.LSTM's CPU kernel from the same seed.
    ref, ours, _, hx = lstm_case("padded", 0, F32, (BF16, F32), dropout=0.5, batch_first=True)
    x = make_input("padded", F32, batch_first=True)
    torch.manual_seed(5)
    expected = reference_results(ref, x, hx, BF16)
    torch.manual_seed(5)
    actual = results_and_grads(under_autocast(ours, x, hx, BF16), ours, x, hx)
    assert_like_reference(actual, expected, BF16)


@pytest.mark.parametrize("c0_dtype", [F64, F32], ids=["fp64", "fp32"])
def test_float64_under_autocast_is_float64_like_nn_lstm(c0_dtype):
    # Autocast never casts float64: with float64 GEMM operands the call runs in float64, and a
    # float32 c0 is promoted by the cell update, as in nn.LSTM's native CPU loop.
    ref, ours = twin_lstms(F64, input_size=INPUT, hidden_size=HIDDEN, proj_size=2)
    x, hx = make_input("padded", F64), make_states((F64, c0_dtype), (1, BATCH), 2)
    expected = reference_results(ref, x, hx, BF16)
    actual = results_and_grads(under_autocast(ours, x, hx, BF16), ours, x, hx)
    assert [r.dtype for r in actual[0]] == [F64] * 3
    assert_like_reference(actual, expected, F64)


MIXED_FLOAT64 = {
    "fp64 input": (F64, (F32, F32), F32),
    "fp64 h0": (F32, (F64, F32), F32),
    "fp64 c0": (F32, (F32, F64), F32),
    "fp64 weights": (F32, (F32, F32), F64),
    "fp64 except h0": (F64, (F32, F64), F64),
    "int64 input": (torch.int64, (F32, F32), F32),
    "int64 h0": (F32, (torch.int64, F32), F32),
}


@pytest.mark.parametrize("x_dtype,state_dtypes,weight_dtype", MIXED_FLOAT64.values(), ids=MIXED_FLOAT64.keys())
def test_float64_mixed_with_cast_dtypes_raises_like_nn_lstm(x_dtype, state_dtypes, weight_dtype):
    ref, ours = twin_lstms(weight_dtype, input_size=INPUT, hidden_size=HIDDEN)
    x = torch.ones(STEPS, BATCH, INPUT, dtype=x_dtype)
    hx = tuple(torch.ones(1, BATCH, HIDDEN, dtype=dtype) for dtype in state_dtypes)
    for module in (ref, ours):
        with pytest.raises(RuntimeError), torch.autocast("cpu", dtype=BF16):
            module(x, hx)


def test_mixed_states_outside_autocast_still_raise_like_nn_lstm():
    ref, ours, x, hx = lstm_case("padded", 0, F32, (BF16, BF16))
    for module in (ref, ours):
        with pytest.raises(RuntimeError):
            module(x, hx)


CELL_STATE_DTYPES = {**STATE_DTYPES, "fp32,fp32": (F32, F32), "bf16,bf16": (BF16, BF16), "fp32,fp64": (F32, F64)}


def cell_case(x_dtype, state_dtypes, unbatched=False, device="cpu"):
    ref = nn.LSTMCell(INPUT, HIDDEN).to(device)
    ours = torch_lstm_ext.LSTMCell(INPUT, HIDDEN).to(device)
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(1)
    shape = (INPUT,) if unbatched else (BATCH, INPUT)
    x = torch.randn(*shape, generator=gen).to(device, x_dtype).requires_grad_()
    hx = make_states(state_dtypes, () if unbatched else (BATCH,), HIDDEN, device)
    return ref, ours, x, hx


@pytest.mark.parametrize("autocast_dtype", [BF16, F16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("state_dtypes", CELL_STATE_DTYPES.values(), ids=CELL_STATE_DTYPES.keys())
@pytest.mark.parametrize("x_dtype", [F32, BF16, F16], ids=DTYPE_IDS.get)
def test_cell_like_nn_lstmcell_on_cpu(x_dtype, state_dtypes, autocast_dtype):
    # nn.LSTMCell's CPU cell: GEMMs in the autocast dtype, (h', c') promoted with c's dtype
    # (float64 c included).
    ref, ours, x, hx = cell_case(x_dtype, state_dtypes)
    expected = reference_results(ref, x, hx, autocast_dtype)
    actual = results_and_grads(under_autocast(ours, x, hx, autocast_dtype), ours, x, hx)
    assert_like_reference(actual, expected, autocast_dtype)


def test_unbatched_cell_like_nn_lstmcell():
    ref, ours, x, hx = cell_case(F32, (BF16, F32), unbatched=True)
    assert_like_reference(results_and_grads(under_autocast(ours, x, hx, BF16), ours, x, hx),
                          reference_results(ref, x, hx, BF16), BF16)


@pytest.mark.parametrize("x_dtype,state_dtypes", [(F64, (F32, F32)), (F32, (F64, F32)), (torch.int64, (F32, F32))],
                         ids=["fp64 input", "fp64 h", "int64 input"])
def test_cell_float64_gemm_operand_raises_like_nn_lstmcell(x_dtype, state_dtypes):
    ref, ours, _, hx = cell_case(F32, state_dtypes)
    x = torch.ones(BATCH, INPUT, dtype=x_dtype)
    for module in (ref, ours):
        with pytest.raises(RuntimeError), torch.autocast("cpu", dtype=BF16):
            module(x, hx)


def test_compiled_under_autocast_matches_eager_under_autocast():
    torch._dynamo.reset()
    ref, ours, x, hx = lstm_case("padded", 3, F32, (BF16, F32), num_layers=1, bidirectional=False)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    eager = results_and_grads(under_autocast(ours, x, hx, BF16), ours, x, hx)
    assert_like_reference(eager, reference_results(ref, x, hx, BF16), BF16)
    assert_like_reference(results_and_grads(under_autocast(compiled, x, hx, BF16), ours, x, hx), eager, BF16)


# CUDA: nn.LSTM takes cuDNN, whose autocast wrapper runs in float16 whatever the autocast dtype; the
# compiled case runs Inductor around our opaque op, as tests/test_cuda.py does.
def on_cuda(test):
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


CUDA_STATE_DTYPES = {"none": None, "bf16,fp32": (BF16, F32), "fp16,fp16": (F16, F16)}


@pytest.fixture
def exact_fp32(monkeypatch):
    """TF32 off for nn.LSTM (cuDNN) and the default (auto: Triton on CUDA) backend."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setenv("TORCH_LSTM_EXT_BACKEND", "auto")


@pytest.mark.parametrize("autocast_dtype", [BF16, F16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("state_dtypes", CUDA_STATE_DTYPES.values(), ids=CUDA_STATE_DTYPES.keys())
@pytest.mark.parametrize("x_dtype", [F32, BF16, F16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("kind,proj", [("padded", 0), ("ragged", 3)], ids=["padded", "ragged-proj"])
@on_cuda
def test_lstm_like_nn_lstm_on_cuda(kind, proj, x_dtype, state_dtypes, autocast_dtype, exact_fp32):
    ref, ours, x, hx = lstm_case(kind, proj, x_dtype, state_dtypes, device="cuda")
    expected = reference_results(ref, x, hx, autocast_dtype, "cuda")
    actual = results_and_grads(under_autocast(ours, x, hx, autocast_dtype, "cuda"), ours, x, hx)
    assert_like_reference(actual, expected, autocast_dtype)


@pytest.mark.parametrize("autocast_dtype", [BF16, F16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("x_dtype,state_dtypes", list(itertools.product([F32, BF16], [None, (F32, BF16)])))
@on_cuda
def test_cell_like_nn_lstmcell_on_cuda(x_dtype, state_dtypes, autocast_dtype, exact_fp32):
    ref, ours, x, hx = cell_case(x_dtype, state_dtypes, device="cuda")
    expected = reference_results(ref, x, hx, autocast_dtype, "cuda")
    actual = results_and_grads(under_autocast(ours, x, hx, autocast_dtype, "cuda"), ours, x, hx)
    assert_like_reference(actual, expected, autocast_dtype)


@on_cuda
def test_compiled_under_cuda_autocast_matches_eager(exact_fp32):
    torch._dynamo.reset()
    ref, ours, x, hx = lstm_case("padded", 3, F32, (BF16, F32), device="cuda")
    compiled = torch.compile(ours, fullgraph=True)
    eager = results_and_grads(under_autocast(ours, x, hx, BF16, "cuda"), ours, x, hx)
    assert_like_reference(eager, reference_results(ref, x, hx, BF16, "cuda"), BF16)
    assert_like_reference(results_and_grads(under_autocast(compiled, x, hx, BF16, "cuda"), ours, x, hx), eager, BF16)
