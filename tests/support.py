"""Shared test helpers: tolerances (the one place they live) and nn.LSTM twins."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import torch_lstm_ext

# Parity tolerances per dtype: (rtol, atol). float16/bfloat16 are computed in float32 by us and
# in the storage dtype by nn.LSTM, so they only agree to a few storage ulps.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (5e-3, 5e-3),
}

# (rtol, atol) of the Triton kernels against the NumPy reference, which computes fp16 / bf16
# storage in fp32 with fp32 states throughout.
# - float32: both compute in fp32 (IEEE dots), only the summation order differs: a few ulps,
#   grown by the T-step recurrence and the N-row weight GEMMs.
# - bfloat16 (8-bit significand): the kernels round each step's h (y) and gate gradients to bf16
#   before the recurrent dot, 2**-9 relative (2**-8 in the interpreter, whose bf16 cast
#   truncates); that compounds over the steps and sums up in the weight gradients. Measured at
#   T = 6 under the interpreter: up to 1.6 * 2**-8; allowed: 5 * 2**-8.
# - float16 (11-bit significand): the same at 2**-11 (measured up to 1.3 * 2**-11; allowed 5x).
KERNEL_TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2.5e-3, 2.5e-3),
}
# bfloat16 with layer norm, as a fraction of each tensor's largest magnitude: LN divides by the
# row's std, which scales up the values and with them the rounding of the bf16 h that the
# kernels read back from y each step (the NumPy backend keeps h in fp32). Measured under the
# interpreter at T = 5 over five seeds with peephole, layer norm and zoneout: up to 8.5 * 2**-8
# (plain: 2 * 2**-8); allowed: 16 * 2**-8.
LAYER_NORM_BF16_TOLERANCE = 16 * 2**-8

# checkpoint=True against the stored path: the same function from the same random masks, but the
# input GEMM runs per block and the weight gradients are summed per block (checkpoint.py), so the
# two differ by rounding, which the T-step recurrence carries on and the gradients' sums over T
# steps collect. The bound, per tensor: max|checkpointed - stored| <= T * eps * max|stored|, eps
# of the dtype. Measured with scripts/checkpoint_sweep.py (seeds 1-8, 320 random configurations
# of every option, fp32 and fp64, on AMD EPYC without MKL_CBWR): at most 0.2 T eps without layer
# norm (221 configurations), 0.9 T eps in fp32 with it; every configuration in
# tests/test_checkpoint.py at most 0.25 T eps.
CHECKPOINT_EPS_PER_STEP = 1.0
# Layer norm divides by a row's standard deviation, which can be tiny (cell clipping saturates a
# row), and so amplifies every rounding, the stored path's own included. 16 of the 320, all fp64
# with layer norm, exceeded the bound (up to 520 T eps), each within 1.5x of how far the stored
# path itself moved when its input was perturbed by one rounding error (x * (1 + eps * z),
# z ~ N(0, 1)); over all 320 the ratio was at most 4.7. The sweep calls a configuration over the
# bound ill-conditioned, not wrong, within this many times that perturbation's difference (a bug,
# a wrong mask or block boundary, differs by O(1) relative).
CHECKPOINT_PERTURBATION_RATIO = 10.0

# Loss curves of a whole training run with nn.LSTM and with ours from the same seed, batches and
# random draws (scripts/train_seq2seq.py --quick, float32, 100 steps; the bound its issue sets):
# rounding compounds over the steps but stayed at most 2.4e-7 (measured, AMD EPYC, 1 and 2
# threads), while feeding one example its predictions instead of its targets at one step moved
# the curve by 2.9e-3 to 1.6e-2 (measured).
TRAINING_CURVE_TOLERANCE = 1e-4


def assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype | None = None, msg: str = "") -> None:
    """torch.testing.assert_close at the project's tolerance for `dtype` (default: expected's)."""
    rtol, atol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg}: {m}")


def eps_units(actual: Tensor, expected: Tensor) -> float:
    """max|actual - expected| in units of the dtype's eps times max|expected| (0 when both are 0)."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    diff = (actual - expected).abs().max().item() if expected.numel() else 0.0
    return diff / (torch.finfo(expected.dtype).eps * scale) if scale else (0.0 if diff == 0 else float("inf"))


def assert_checkpoint_close(actual: Tensor, expected: Tensor, num_steps: int, msg: str = "") -> None:
    """checkpoint=True's `actual` against the stored path's `expected`, within the bound above
    for a T = num_steps sequence."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, msg
    units, allowed = eps_units(actual, expected), CHECKPOINT_EPS_PER_STEP * max(num_steps, 1)
    assert units <= allowed, f"{msg}: differs by {units:.3g} eps * max|expected|, allowed {allowed:.3g}"


def dequantized_state(module: nn.Module, dtype: torch.dtype = torch.float32) -> dict:
    """The float state_dict a quantized LSTM / LSTMCell computes with (torch_lstm_ext.quantize_weights):
    each int8 matrix times its `<name>_scale` per row, float16 matrices as they are, in `dtype`.
    Written here from the stored values, independently of the package's dequantization."""
    state = module.state_dict()
    result = {}
    for key, value in state.items():
        if key.endswith("_scale"):
            continue
        scale = state.get(key + "_scale")
        result[key] = value.to(dtype) * scale.to(dtype)[:, None] if scale is not None else value.to(dtype)
    return result


def twin_lstms(dtype: torch.dtype = torch.float64, **config) -> tuple[nn.LSTM, torch_lstm_ext.LSTM]:
    """An nn.LSTM and our LSTM with identical config and weights (state_dict copied)."""
    ref = nn.LSTM(**config, dtype=dtype)
    ours = torch_lstm_ext.LSTM(**config, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def outputs_and_grads(module: nn.Module, input, hx=None, seed: int = 0):
    """Run `module`, backprop a fixed random weighting of (output, h_n, c_n).

    Returns (output tensor, h_n, c_n, {name: grad}) with grads of every parameter and of the
    input / h0 / c0 tensors that require grad. The weighting is drawn from its own generator so
    every output element matters and the global RNG is untouched.
    """
    output, (h_n, c_n) = module(input) if hx is None else module(input, hx)
    out = output.data if isinstance(output, nn.utils.rnn.PackedSequence) else output
    gen = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)).sum() for t in (out, h_n, c_n))
    leaves = {f"param.{name}": p for name, p in module.named_parameters()}
    data = input.data if isinstance(input, nn.utils.rnn.PackedSequence) else input
    if data.requires_grad:
        leaves["input"] = data
    if hx is not None:
        for name, t in zip(("h0", "c0"), hx):
            if t.requires_grad:
                leaves[name] = t
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return out, h_n, c_n, dict(zip(leaves, grads))


def assert_same_results(ref_results, our_results, dtype: torch.dtype) -> None:
    """Compare two outputs_and_grads results at the dtype's tolerance."""
    for name, a, b in zip(("output", "h_n", "c_n"), our_results[:3], ref_results[:3]):
        assert a.shape == b.shape, f"{name}: shape {a.shape} != {b.shape}"
        assert_close(a, b, dtype, name)
    assert our_results[3].keys() == ref_results[3].keys()
    for name in ref_results[3]:
        assert_close(our_results[3][name], ref_results[3][name], dtype, f"grad {name}")
