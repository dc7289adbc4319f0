"""The op contract against nn.LSTM doing the same thing: torch.func (grad, vmap(grad) per-sample
gradients, jacrev, ensembles), backward through an exported program, opcheck on every kind of
params list, and a cold start that leaves Dynamo unimported."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from support import assert_close
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap
from torch.nn.utils.rnn import pack_sequence

import torch_lstm_ext
from torch_lstm_ext.params import RecurrenceParams, Variants

CONFIGS = {
    "plain": dict(),
    "2layer-bidir": dict(num_layers=2, bidirectional=True),
    "proj-nobias": dict(proj_size=3, bias=False),
}


def _twins(config: dict, seed: int = 0) -> tuple[nn.LSTM, torch_lstm_ext.LSTM, dict]:
    torch.manual_seed(seed)
    reference = nn.LSTM(4, 5, **config)
    return reference, torch_lstm_ext.LSTM.from_torch(reference), {k: v.detach() for k, v in reference.named_parameters()}


def _squared_output(model: nn.Module):
    def loss(params: dict, x):
        out, (h_n, c_n) = functional_call(model, params, (x,))
        return out.pow(2).sum() + h_n.sum() + 0.5 * c_n.sum()

    return loss


def _assert_grads_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert_close(actual[name], expected[name], msg=name)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_func_grad_equals_nn_lstm(config):
    reference, ours, params = _twins(config)
    x = torch.randn(6, 3, 4)
    _assert_grads_close(grad(_squared_output(ours))(params, x), grad(_squared_output(reference))(params, x))


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_vmap_grad_per_sample_gradients_equal_nn_lstm(config):
    """Per-sample gradients, the Opacus / functorch way: vmap over samples of grad of a
    one-sample (unbatched) loss; the input folds into the batch of one op call. The reference:
    nn.LSTM's gradient of each sample's loss (nn.LSTM's own vmap(grad) fails with a projection)."""
    reference, ours, params = _twins(config)
    x = torch.randn(5, 6, 4)  # 5 samples of [T=6, I=4]
    per_sample = vmap(grad(_squared_output(ours)), in_dims=(None, 0))(params, x)
    for sample in range(x.shape[0]):
        expected = grad(_squared_output(reference))(params, x[sample])
        _assert_grads_close({k: v[sample] for k, v in per_sample.items()}, expected)


def test_jacrev_on_a_tiny_case_equals_nn_lstm():
    reference, ours, _ = _twins(dict(num_layers=2, proj_size=2))
    x = torch.randn(3, 2, 4)

    def output_of(model):
        return lambda x: model(x)[0]

    assert_close(jacrev(output_of(ours))(x), jacrev(output_of(reference))(x))


def test_vmapped_weights_run_an_ensemble():
    """An ensemble: the weights vmapped (stacked over 3 models), the input shared; the op loops
    over the models. Outputs and gradients equal each nn.LSTM of the ensemble."""
    models = [_twins(dict(proj_size=3), seed=k) for k in range(3)]
    stacked = {name: torch.stack([params[name] for _, _, params in models]) for name in models[0][2]}
    x = torch.randn(4, 2, 4)
    ours = models[0][1]

    def run(params, x):
        return functional_call(ours, params, (x,))[0]

    outputs = vmap(run, in_dims=(0, None))(stacked, x)
    grads = vmap(grad(_squared_output(ours)), in_dims=(0, None))(stacked, x)
    for k, (reference, _, params) in enumerate(models):
        assert_close(outputs[k], reference(x)[0])
        _assert_grads_close({name: g[k] for name, g in grads.items()}, grad(_squared_output(reference))(params, x))


def test_vmap_over_packed_input_loops():
    """Packed rows cannot fold into the batch: the rule loops, and matches one call per sample."""
    _, ours, _ = _twins(dict())
    seqs = [torch.randn(n, 4) for n in (5, 3, 2)]
    data = torch.stack([pack_sequence(seqs).data + k for k in range(2)])
    batch_sizes = pack_sequence(seqs).batch_sizes
    w = ours._layer_weights()[0]
    gates = data @ w.w_ih.detach().T
    h0, c0 = torch.zeros(3, 5), torch.zeros(3, 5)
    p = RecurrenceParams(w.w_hh.detach())

    def run(gates_x):
        return torch_lstm_ext.lstm_layer(gates_x, h0, c0, p, batch_sizes)

    batched = vmap(run)(gates)
    for k in range(2):
        for got, want in zip(batched, run(gates[k]), strict=True):
            assert_close(got[k], want)


def test_lstm_bwd_under_vmap_equals_one_call_per_index():
    """lstm_bwd's vmap rule (what a vmapped backward calls), against one op call per cotangent."""
    gen = torch.Generator().manual_seed(0)
    gates_x, h0, c0 = torch.randn(4, 2, 12, generator=gen), torch.randn(2, 3), torch.randn(2, 3)
    p = RecurrenceParams(torch.randn(12, 3, generator=gen), None, Variants(peephole=torch.randn(3, 3, generator=gen)))
    params, names = p.op_args()
    y, _, _, gates, cells = torch.ops.torch_lstm_ext.lstm_fwd(gates_x, h0, c0, params, names, None, False)
    cotangents = torch.randn(3, *y.shape, generator=gen)

    def backward(grad_y):
        return torch.ops.torch_lstm_ext.lstm_bwd(grad_y, torch.zeros_like(h0), torch.zeros_like(c0), h0, c0, params,
                                                 names, None, False, y, gates, cells)

    batched = vmap(backward)(cotangents)
    for k in range(3):
        one = backward(cotangents[k])
        for got, want in zip((*batched[:3], *batched[3]), (*one[:3], *one[3]), strict=True):
            assert_close(got[k], want)


@pytest.mark.parametrize("config", [dict(num_layers=2, bidirectional=True), dict(proj_size=3, batch_first=True),
                                    dict(peephole=True, layer_norm=True, cell_clip=2.0, grad_clip=0.5)],
                         ids=["2layer-bidir", "proj-batchfirst", "variants"])
def test_backward_through_an_exported_program_equals_eager(config):
    """ep.module() trains: its graph holds the bare lstm_fwd op, whose own autograd (registered
    with torch.library) is LSTMFunction's backward. Compared with eager, and with nn.LSTM where
    it has the configuration."""
    torch.manual_seed(0)
    ours = torch_lstm_ext.LSTM(4, 5, **config)
    x = torch.randn(6, 3, 4)
    exported = torch.export.export(ours, (x,)).module()

    def outputs_and_grads(model):
        x_leaf = x.clone().requires_grad_()
        out, (h_n, c_n) = model(x_leaf)
        loss = out.pow(2).sum() + h_n.sum() + c_n.pow(2).sum()
        params = dict(model.named_parameters())
        grads = torch.autograd.grad(loss, [x_leaf, *params.values()])
        return out, dict(zip(["input", *params], grads, strict=True))

    out, grads = outputs_and_grads(exported)
    eager_out, eager_grads = outputs_and_grads(ours)
    assert_close(out, eager_out)
    _assert_grads_close(grads, eager_grads)
    if not any(key in config for key in ("peephole", "layer_norm")):
        reference = nn.LSTM(4, 5, **config)
        reference.load_state_dict(ours.state_dict())
        _, reference_grads = outputs_and_grads(reference)
        _assert_grads_close(grads, reference_grads)


PARAM_KINDS = {
    "w_hh": lambda H, P, rows: RecurrenceParams(torch.randn(4 * H, P)),
    "w_hr": lambda H, P, rows: RecurrenceParams(torch.randn(4 * H, P), torch.randn(P, H)),
    "every-variant": lambda H, P, rows: RecurrenceParams(torch.randn(4 * H, P), torch.randn(P, H), Variants(
        torch.randn(3, H), torch.rand(4 * H) + 0.5, torch.stack((torch.rand(H) + 0.5, torch.randn(H))),
        torch.rand(*rows, H).round(), torch.full((*rows, P), 0.25), 1.5, 0.3)),
}


@pytest.mark.parametrize("kind", PARAM_KINDS, ids=PARAM_KINDS.keys())
def test_opcheck_each_kind_of_params_list(kind):
    torch.manual_seed(0)
    H, P, B, T = 3, 2, 2, 4
    p = PARAM_KINDS[kind](H, P if kind != "w_hh" else H, (T, B))
    P = p.w_hh.shape[1]
    gates_x, h0, c0 = torch.randn(T, B, 4 * H), torch.randn(B, P), torch.randn(B, H)
    params, names = p.op_args()
    v = p.variants
    fwd_args = (gates_x, h0, c0, params, names, None, True, v.cell_clip, v.grad_clip)
    torch.library.opcheck(torch.ops.torch_lstm_ext.lstm_fwd, fwd_args)
    y, h_n, c_n, gates, cells = torch.ops.torch_lstm_ext.lstm_fwd(*fwd_args)
    torch.library.opcheck(torch.ops.torch_lstm_ext.lstm_bwd, (
        torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), h0, c0, params, names, None, True,
        y, gates, cells, v.cell_clip, v.grad_clip,
    ))


def test_a_params_list_that_does_not_name_its_tensors_is_refused():
    with pytest.raises(ValueError, match="param_names|named"):
        torch.ops.torch_lstm_ext.lstm_fwd(torch.randn(2, 1, 4), torch.zeros(1, 1), torch.zeros(1, 1),
                                          [torch.randn(4, 1)], ["w_ih"], None, False)


def test_first_forward_and_backward_leave_dynamo_unimported():
    """The cold start: torch.library.custom_op imports Dynamo on its first call (~1 s); the
    low-level registration must not. Timing is the benchmark's job (README); this checks the
    cause, in a fresh process."""
    code = (
        "import sys, torch, torch_lstm_ext\n"
        "out, _ = torch_lstm_ext.LSTM(3, 4)(torch.randn(5, 2, 3, requires_grad=True))\n"
        "out.sum().backward()\n"
        "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
