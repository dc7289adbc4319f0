"""Quantized weights (weight_quantization.py) in the Triton forward kernels, through Triton's
interpreter: int8 W_hh / W_hr with per-row scales, or float16, against the NumPy backend holding
the same weights dequantized to float32 (W = q * scale[:, None]). Run in its own process: `make
test-interpreter`.

Every buffer a kernel writes starts NaN-filled (buffers.POISON). Forward only: the backward
refuses int8 (ops.py) and a quantized module is inference-only. Shapes are tiny (T 3, B 2,
H 16 / 32) but GPU-legal; H = 32 with 16-wide tiles puts several hidden tiles, and so several
scale slices, in each launch.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 set before import: run `make test-interpreter`",
                allow_module_level=True)

import torch
from support import KERNEL_TOLERANCES
from torch import Tensor
from torch.nn.utils.rnn import pack_sequence
from triton_support import FORWARD_NAMES, case_params, count_triton_calls, make_case, with_variants

import torch_lstm_ext
from torch_lstm_ext import numpy_backend, triton_kernels
from torch_lstm_ext.config import BACKEND_ENV
from torch_lstm_ext.params import RecurrenceParams
from torch_lstm_ext.triton_kernels import buffers
from torch_lstm_ext.triton_kernels.tiles import weight_operand_dtype
from torch_lstm_ext.weight_quantization import quantize_rows

pytestmark = pytest.mark.interpreter

# "step_graph" runs the "step" launchers eagerly off CUDA (test_step_graphs.py covers that path).
KERNELS = ["step", "persistent", "cooperative"]
STORAGE = {"int8": torch.int8, "fp16": torch.float16}


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(buffers, "POISON", True)


def _stored(w: Tensor | None, storage: torch.dtype) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(stored values, int8 scale or None, the float32 matrix they stand for) of float weights w."""
    if w is None:
        return None, None, None
    if storage == torch.int8:
        q, scale = quantize_rows(w.float())
        return q, scale, q.float() * scale[:, None]
    half = w.to(torch.float16)
    return half, None, half.float()


def quantized_params(p: RecurrenceParams, storage: torch.dtype) -> tuple[RecurrenceParams, RecurrenceParams]:
    """(p with W_hh / W_hr stored in `storage`, p with the float32 matrices they dequantize to)."""
    w_hh, hh_scale, w_hh_ref = _stored(p.w_hh, storage)
    w_hr, hr_scale, w_hr_ref = _stored(p.w_hr, storage)
    return (p._replace(w_hh=w_hh, w_hr=w_hr, w_hh_scale=hh_scale, w_hr_scale=hr_scale),
            p._replace(w_hh=w_hh_ref, w_hr=w_hr_ref))


def assert_forward_matches_numpy(case, storage: torch.dtype, kernel: str) -> None:
    """triton_kernels.lstm_forward on the quantized weights, `kernel` forced, against the NumPy
    backend on their dequantized float32 matrices: every output, at gates_x's kernel tolerance."""
    gates_x, _, _, h0, c0, batch_sizes, reverse = case.forward
    quantized, dequantized = quantized_params(case_params(case), storage)
    got = triton_kernels.lstm_forward(gates_x, h0, c0, quantized, batch_sizes, reverse, kernel=kernel)
    want = numpy_backend.lstm_forward(gates_x, h0, c0, dequantized, batch_sizes, reverse)
    rtol, atol = KERNEL_TOLERANCES[gates_x.dtype]
    for name, a, b in zip(FORWARD_NAMES, got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{name}: {a.shape} {a.dtype} != {b.shape} {b.dtype}"
        assert not a.isnan().any(), f"{name} has NaN (an unwritten row?)"
        torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("storage", STORAGE.values(), ids=STORAGE.keys())
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("proj", [0, 16], ids=["no_proj", "proj"])
@pytest.mark.parametrize("packed,reverse", [(False, False), (True, True)], ids=["padded-fwd", "packed-rev"])
def test_quantized_weights_match_numpy_on_dequantized(storage, kernel, proj, packed, reverse):
    case = make_case(T=3, B=2, H=32, proj=proj, packed=packed, reverse=reverse, dtype=torch.float32, seed=11)
    assert_forward_matches_numpy(case, storage, kernel)


VARIANT_CASES = {
    "step-peephole-cell_clip-proj": ("step", dict(peephole=True, cell_clip=0.5), 16),
    "step-layer_norm": ("step", dict(layer_norm=True), 0),
    "cooperative-zoneout-proj": ("cooperative", dict(zoneout="train"), 16),
    "cooperative-peephole-cell_clip": ("cooperative", dict(peephole=True, cell_clip=0.5), 0),
}


@pytest.mark.parametrize("storage", STORAGE.values(), ids=STORAGE.keys())
@pytest.mark.parametrize("kernel,variants,proj", VARIANT_CASES.values(), ids=VARIANT_CASES.keys())
def test_quantized_variants_match_numpy_on_dequantized(storage, kernel, variants, proj):
    case = make_case(T=3, B=2, H=32, proj=proj, packed=True, reverse=False, dtype=torch.float32, seed=12)
    assert_forward_matches_numpy(with_variants(case, **variants, seed=13), storage, kernel)


@pytest.mark.parametrize("kernel", ["persistent", "cooperative"])
def test_int8_weights_with_float16_activations(kernel):
    """gates_x, h0, c0 in float16 (the dot dtype on the GPU), int8 weights with float32 scales."""
    case = make_case(T=3, B=2, H=32, proj=16, packed=False, reverse=True, dtype=torch.float16, seed=14)
    assert_forward_matches_numpy(case, torch.int8, kernel)


def test_float16_weights_with_bfloat16_activations():
    """float16 weights are held in float32 beside bfloat16 activations (bfloat16 would round them)."""
    case = make_case(T=3, B=2, H=16, proj=0, packed=True, reverse=False, dtype=torch.bfloat16, seed=15)
    assert_forward_matches_numpy(case, torch.float16, "step")
    w = {dtype: torch.zeros(1, dtype=dtype) for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int8)}
    assert weight_operand_dtype(torch.bfloat16, w[torch.float16]) == torch.float32
    assert weight_operand_dtype(torch.bfloat16, w[torch.int8], None) == torch.bfloat16
    assert weight_operand_dtype(torch.float16, w[torch.float16], w[torch.int8]) == torch.float16
    assert weight_operand_dtype(torch.float32, w[torch.float16]) == torch.float32


def test_int8_weights_without_scales_are_refused():
    case = make_case(T=2, B=2, H=16, proj=0, packed=False, reverse=False, dtype=torch.float32)
    gates_x, _, _, h0, c0, batch_sizes, reverse = case.forward
    quantized, _ = quantized_params(case_params(case), torch.int8)
    with pytest.raises(ValueError, match="w_hh: int8 weights need their per-row scales"):
        triton_kernels.lstm_forward(gates_x, h0, c0, quantized._replace(w_hh_scale=None), batch_sizes, reverse)


@pytest.mark.parametrize("storage", STORAGE.values(), ids=STORAGE.keys())
def test_quantized_module_on_triton_matches_numpy_backend(storage, monkeypatch):
    """A quantized torch_lstm_ext.LSTM (layers, bidirectional, projection, packed input) through
    the ops on the Triton backend and on the NumPy backend."""
    torch.manual_seed(16)
    lstm = torch_lstm_ext.LSTM(8, 32, num_layers=2, bidirectional=True, proj_size=16).eval()
    torch_lstm_ext.quantize_weights(lstm, storage)
    gen = torch.Generator().manual_seed(17)
    x = pack_sequence([torch.randn(n, 8, generator=gen) for n in (3, 2)])
    results = {}
    calls = count_triton_calls(monkeypatch)
    for backend in ("numpy", "triton"):
        monkeypatch.setenv(BACKEND_ENV, backend)
        with torch.no_grad():
            out, (h_n, c_n) = lstm(x)
        results[backend] = (out.data, h_n, c_n)
    assert calls["forward"] == 4  # 2 layers x 2 directions, on the Triton backend only
    rtol, atol = KERNEL_TOLERANCES[torch.float32]
    for name, got, want in zip(("output", "h_n", "c_n"), results["triton"], results["numpy"], strict=True):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
