"""What mapping lstm_fwd onto ONNX's LSTM costs at inference in onnxruntime.

Ours: each op call and the MatMul / Add of its input projection become one ONNX LSTM node fed
x, W_ih and the bias, as nn.LSTM's own export (torch's translation of aten.lstm) does.
--reorder-matrix forces the path for gates computed elsewhere instead: X = gates_x (the
projection as its own MatMul) and a 0/1 gate-reordering W [1, 4H, 4H], an extra T * B * 16 H^2
multiply-adds inside the node. Both exports run with the same weights, medians of interleaved
repeats; the script first checks they agree (1e-5). Needs the test extra (onnx, onnxscript,
onnxruntime; `make venv` installs it).

    python scripts/onnx_cost.py [--repeats 20] [--threads 1] [--reorder-matrix] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import onnxruntime as ort
import torch
from torch import nn

import torch_lstm_ext
from torch_lstm_ext import onnx_export

SHAPES = [  # (T, B, I, H, bidirectional)
    (50, 32, 128, 256, False),
    (200, 16, 64, 128, False),
    (100, 64, 256, 512, False),
    (20, 1, 32, 64, False),
    (100, 16, 64, 128, True),
]


def _session(model: nn.Module, x: torch.Tensor, threads: int, table: dict | None):
    program = torch.onnx.export(model, (x,), dynamo=True, custom_translation_table=table)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(program.model_proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return session, feed


def _median_ms(sessions, repeats: int) -> list[float]:
    times = [[] for _ in sessions]
    for session, feed in sessions:  # warm-up
        session.run(None, feed)
    for _ in range(repeats):
        for k, (session, feed) in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feed)
            times[k].append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reorder-matrix", action="store_true",
                        help="translate as if the graph had not projected gates_x itself")
    parser.add_argument("--quick", action="store_true", help="only the smallest shape (a smoke run)")
    args = parser.parse_args()
    shapes = [min(SHAPES, key=lambda s: s[0] * s[1] * s[3])] if args.quick else SHAPES
    if args.reorder_matrix:
        onnx_export._input_projection = lambda gates_x, gates: None
    torch.set_num_threads(args.threads)
    extra_column = " reorder matrix's MACs / nn.LSTM's |" if args.reorder_matrix else ""
    print(f"| shape | ours (ms) | nn.LSTM export (ms) | ours / nn.LSTM |{extra_column}")
    print("| --- | ---: | ---: | ---: |" + (" ---: |" if extra_column else ""))
    ratios = []
    for steps, batch, inputs, hidden, bidirectional in shapes:
        torch.manual_seed(0)
        reference = nn.LSTM(inputs, hidden, bidirectional=bidirectional).eval()
        ours = torch_lstm_ext.LSTM.from_torch(reference).eval()
        x = torch.randn(steps, batch, inputs)
        sessions = [_session(ours, x, args.threads, torch_lstm_ext.onnx_translation_table()),
                    _session(reference, x, args.threads, None)]
        outputs = [session.run(None, feed)[0] for session, feed in sessions]
        torch.testing.assert_close(torch.from_numpy(outputs[0]), torch.from_numpy(outputs[1]),
                                   rtol=1e-5, atol=1e-5)
        ours_ms, ref_ms = _median_ms(sessions, args.repeats)
        ratios.append(ours_ms / ref_ms)
        extra = f" {16 * hidden**2 / (4 * hidden * inputs + 4 * hidden**2):.2f} |" if extra_column else ""
        name = f"T{steps} B{batch} I{inputs} H{hidden}" + (" bi" if bidirectional else "")
        print(f"| {name} | {ours_ms:.2f} | {ref_ms:.2f} | {ours_ms / ref_ms:.2f} |{extra}", flush=True)
    geomean = statistics.geometric_mean(ratios)
    print(f"| geometric mean | | | {geomean:.2f} |" + (" |" if extra_column else ""))


if __name__ == "__main__":
    main()
