"""torch.onnx.export(dynamo=True) with onnx_translation_table(): onnxruntime against eager, nn.LSTM
and the variant reference; the refusals of what ONNX's LSTM cannot express.

Exports are slow (seconds each), so one model holds every supported configuration and is
exported once per grad mode; each assertion names the configuration it checks.
"""

from __future__ import annotations

import contextlib

import onnx
import onnxruntime as ort
import pytest
import torch
from support import assert_close
from torch import nn
from torch.export import Dim
from variant_reference_model import reference_lstm

import torch_lstm_ext
from torch_lstm_ext.params import RecurrenceParams

INPUT, HIDDEN = 5, 6
# name: (LSTM keyword arguments, whether (h0, c0) is given). weight_dropout and grad_clip do nothing
# in eval (forward), so that configuration must export as the plain LSTM it then is.
CONFIGS = {
    "plain": (dict(), False),
    "2layer-bidir-batchfirst-hx": (dict(num_layers=2, bidirectional=True, batch_first=True), True),
    "2layer-nobias-hx": (dict(num_layers=2, bias=False), True),
    "bidir-batchfirst-weightdropout-gradclip": (
        dict(bidirectional=True, batch_first=True, weight_dropout=0.3, grad_clip=1.0), False),
    "peephole-hx": (dict(peephole=True), True),
    "unbatched": (dict(), False),
}
EXPORT_SHAPE = (5, 3)  # (T, B)
OTHER_SHAPES = [(8, 1), (1, 6)]  # run through the same exported model: dynamic T and B


def _states(lstm: torch_lstm_ext.LSTM) -> int:
    return lstm.num_layers * (2 if lstm.bidirectional else 1)


def _module_input(name: str, lstm: torch_lstm_ext.LSTM, x: torch.Tensor) -> torch.Tensor:
    """The configuration's input made from the shared time-major x [T, B, I]."""
    if name == "unbatched":
        return x[:, 0]
    return x.transpose(0, 1) if lstm.batch_first else x


class Bundle(nn.Module):
    """Every configuration side by side on one time-major input x [T, B, I]; `hx` holds (h0, c0),
    [L*D, B, H] each, for the configurations that take them, in CONFIGS order. Returns each
    configuration's (output, h_n, c_n) as the module returns them, flattened."""

    def __init__(self) -> None:
        super().__init__()
        self.lstms = nn.ModuleDict({
            name.replace("-", "_"): torch_lstm_ext.LSTM(INPUT, HIDDEN, **config)
            for name, (config, _) in CONFIGS.items()
        })

    def forward(self, x, *hx):
        results, given = [], iter(hx)
        for (name, (_, takes_hx)), lstm in zip(CONFIGS.items(), self.lstms.values()):
            inp = _module_input(name, lstm, x)
            out, (h_n, c_n) = lstm(inp, next(given)) if takes_hx else lstm(inp)
            results += [out, h_n, c_n]
        return tuple(results)


def _inputs(bundle: Bundle, steps: int, batch: int, seed: int) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, INPUT, generator=gen)
    hx = [
        tuple(torch.randn(_states(lstm), batch, HIDDEN, generator=gen) for _ in range(2))
        for (_, takes_hx), lstm in zip(CONFIGS.values(), bundle.lstms.values()) if takes_hx
    ]
    return (x, *hx)


def _dynamic_shapes(inputs: tuple) -> tuple:
    """T and B dynamic; torch.export binds forward's *hx to one argument, a tuple."""
    steps, batch = Dim("T"), Dim("B")
    return ({0: steps, 1: batch}, tuple(({1: batch}, {1: batch}) for _ in inputs[1:]))


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    torch.manual_seed(0)
    return Bundle().eval()


@pytest.fixture(scope="module", params=["no_grad", "grad_enabled"])
def exported(request, bundle):
    """(ONNXProgram, onnxruntime session), exported from the eval-mode bundle under
    torch.no_grad() or with gradients enabled (the parameters require grad)."""
    inputs = _inputs(bundle, *EXPORT_SHAPE, seed=1)
    mode = torch.no_grad() if request.param == "no_grad" else contextlib.nullcontext()
    with mode:
        program = torch.onnx.export(
            bundle, inputs, dynamo=True, dynamic_shapes=_dynamic_shapes(inputs),
            custom_translation_table=torch_lstm_ext.onnx_translation_table(),
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(program.model_proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return program, session


def _run_onnx(session, inputs: tuple) -> list[torch.Tensor]:
    """inputs: (x, then tensors or (h0, c0) pairs), fed in the ONNX graph's (flattened) order."""
    leaves = [t for item in inputs for t in (item if isinstance(item, tuple) else (item,))]
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(leaves)
    return [torch.from_numpy(a) for a in session.run(None, dict(zip(names, (t.numpy() for t in leaves))))]


def _nn_lstm_twin(lstm: torch_lstm_ext.LSTM) -> nn.LSTM:
    """nn.LSTM with `lstm`'s configuration and weights (weight_dropout / grad_clip dropped: they
    do nothing in eval)."""
    twin = nn.LSTM(INPUT, HIDDEN, num_layers=lstm.num_layers, bias=lstm.bias, batch_first=lstm.batch_first,
                   bidirectional=lstm.bidirectional)
    twin.load_state_dict(lstm.state_dict())
    return twin.eval()


@pytest.mark.parametrize("shape", [EXPORT_SHAPE, *OTHER_SHAPES], ids=lambda s: f"T{s[0]}-B{s[1]}")
def test_onnxruntime_matches_eager_and_references(bundle, exported, shape):
    _, session = exported
    inputs = _inputs(bundle, *shape, seed=2)
    actual = _run_onnx(session, inputs)
    with torch.no_grad():
        eager = bundle(*inputs)
    assert len(actual) == len(eager) == 3 * len(CONFIGS)
    given = iter(inputs[1:])
    x = inputs[0]
    for k, ((name, (config, takes_hx)), lstm) in enumerate(zip(CONFIGS.items(), bundle.lstms.values())):
        hx = next(given) if takes_hx else None
        with torch.no_grad():
            if config.get("peephole"):  # nn.LSTM has no peephole: the step-by-step autograd reference
                reference = reference_lstm(lstm, x, [x.shape[0]] * x.shape[1], hx)
            else:
                out, (h_n, c_n) = _nn_lstm_twin(lstm)(_module_input(name, lstm, x), hx)
                reference = (out, h_n, c_n)
        for j, what in enumerate(("output", "h_n", "c_n")):
            got = actual[3 * k + j]
            assert got.shape == eager[3 * k + j].shape, f"{name} {what}"
            assert_close(got, eager[3 * k + j], msg=f"{name} {what} vs eager")
            assert_close(got, reference[j], msg=f"{name} {what} vs reference")


def test_graph_is_one_lstm_node_per_layer_and_direction(bundle, exported):
    """No node of ours is left, each op call and its input projection became one ONNX LSTM,
    and the op's backward-only outputs (gates, cells: outputs 3 and 4) are neither computed nor
    graph outputs."""
    program, _ = exported
    model = program.model_proto
    onnx.checker.check_model(model, full_check=True)
    op_types = [node.op_type for node in model.graph.node]
    assert op_types.count("LSTM") == sum(_states(lstm) for lstm in bundle.lstms.values())
    assert "MatMul" not in op_types  # every input projection went into its LSTM node (its W input)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert len(model.graph.output) == 3 * len(CONFIGS)
    values = {name for node in model.graph.node for name in node.output}
    assert not [v for v in values if v.startswith("lstm_fwd") and v.endswith(("__3", "__4"))]


def _export_error(model: nn.Module, inputs: tuple) -> str:
    with pytest.raises(torch.onnx.errors.OnnxExporterError) as info:
        torch.onnx.export(model, inputs, dynamo=True,
                          custom_translation_table=torch_lstm_ext.onnx_translation_table())
    return str(info.value)


def test_proj_size_is_refused_by_name():
    lstm = torch_lstm_ext.LSTM(INPUT, HIDDEN, proj_size=3).eval()
    assert "ONNX's LSTM operator cannot express proj_size;" in _export_error(lstm, (torch.randn(4, 2, INPUT),))


def test_variants_are_refused_by_name():
    lstm = torch_lstm_ext.LSTM(INPUT, HIDDEN, layer_norm=True, zoneout_cell=0.2, zoneout_hidden=0.1,
                               cell_clip=3.0).eval()
    message = _export_error(lstm, (torch.randn(4, 2, INPUT),))
    assert "cannot express layer_norm, zoneout_cell, zoneout_hidden, cell_clip;" in message


def test_int8_weights_are_refused_by_name():
    lstm = torch_lstm_ext.quantize_weights(torch_lstm_ext.LSTM(INPUT, HIDDEN).eval())
    assert "cannot express int8 weights (quantize_weights);" in _export_error(lstm, (torch.randn(4, 2, INPUT),))


def test_float16_weights_run_in_onnxruntime_like_nn_lstm_with_their_values():
    """quantize_weights(float16): ONNX's LSTM gets the weights cast to the input's float32; the
    reference is nn.LSTM holding the float16 values in float32."""
    lstm = torch_lstm_ext.quantize_weights(torch_lstm_ext.LSTM(INPUT, HIDDEN, num_layers=2).eval(), torch.float16)
    twin = nn.LSTM(INPUT, HIDDEN, num_layers=2).eval()
    twin.load_state_dict({k: v.float() for k, v in lstm.state_dict().items()})
    x = torch.randn(4, 2, INPUT)
    program = torch.onnx.export(lstm, (x,), dynamo=True,
                                custom_translation_table=torch_lstm_ext.onnx_translation_table())
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    out, h_n, c_n = _run_onnx(session, (x,))
    with torch.no_grad():
        ref_out, (ref_h, ref_c) = twin(x)
    for name, got, want in (("output", out, ref_out), ("h_n", h_n, ref_h), ("c_n", c_n, ref_c)):
        assert_close(got, want, torch.float32, name)


class _OpLayer(nn.Module):
    """The op through the functional entry, on gates computed outside the graph: [T, B, 4H], or
    packed rows [N, 4H] with batch_sizes (the module's PackedSequence path does not get through
    torch.export: it reads batch_sizes[0] as an int)."""

    def __init__(self, w_hh: torch.Tensor, batch_sizes: torch.Tensor | None = None) -> None:
        super().__init__()
        self.w_hh = nn.Parameter(w_hh)
        self.batch_sizes = batch_sizes

    def forward(self, gates_x, h0, c0):
        return torch_lstm_ext.lstm_layer(gates_x, h0, c0, RecurrenceParams(self.w_hh), self.batch_sizes)


def test_packed_input_is_refused_by_name():
    layer = _OpLayer(torch.randn(4 * HIDDEN, HIDDEN), batch_sizes=torch.tensor([2, 2, 1])).eval()
    inputs = (torch.randn(5, 4 * HIDDEN), torch.zeros(2, HIDDEN), torch.zeros(2, HIDDEN))
    assert "cannot express packed input (PackedSequence);" in _export_error(layer, inputs)


def test_gates_from_outside_the_graph_match_nn_lstm():
    """gates_x that the graph did not project (a graph input here) takes the 0/1 gate-reordering
    W instead of the fused projection; nn.LSTM on x with the same weights is the reference."""
    torch.manual_seed(3)
    twin = nn.LSTM(INPUT, HIDDEN).eval()
    layer = _OpLayer(twin.weight_hh_l0.detach().clone()).eval()

    def inputs(steps, batch):
        x = torch.randn(steps, batch, INPUT)
        gates_x = x @ twin.weight_ih_l0.detach().T + twin.bias_ih_l0.detach() + twin.bias_hh_l0.detach()
        return x, (gates_x, torch.randn(batch, HIDDEN), torch.randn(batch, HIDDEN))

    _, example = inputs(*EXPORT_SHAPE)
    steps, batch = Dim("T"), Dim("B")
    with torch.no_grad():
        program = torch.onnx.export(
            layer, example, dynamo=True, dynamic_shapes=({0: steps, 1: batch}, {0: batch}, {0: batch}),
            custom_translation_table=torch_lstm_ext.onnx_translation_table(),
        )
    graph = program.model_proto.graph
    (lstm_node,) = [node for node in graph.node if node.op_type == "LSTM"]
    (reorder,) = [t for t in graph.initializer if t.name == lstm_node.input[1]]
    assert list(reorder.dims) == [1, 4 * HIDDEN, 4 * HIDDEN]  # the gate-reordering W, not W_ih
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in [EXPORT_SHAPE, *OTHER_SHAPES]:
        x, op_inputs = inputs(*shape)
        actual = _run_onnx(session, op_inputs)
        with torch.no_grad():
            out, (h_n, c_n) = twin(x, (op_inputs[1][None], op_inputs[2][None]))
        for got, expected, what in zip(actual, (out, h_n[0], c_n[0]), ("output", "h_n", "c_n")):
            assert_close(got, expected, msg=f"T{shape[0]} B{shape[1]} {what}")


def test_import_does_not_load_onnxscript():
    """Cold start: `import torch_lstm_ext` must not import onnxscript (only building or using
    the table does)."""
    import subprocess
    import sys

    code = "import sys, torch_lstm_ext; print('onnxscript' in sys.modules, 'onnx' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
