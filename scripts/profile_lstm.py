"""Profile a model running our LSTM under torch.profiler, and say where the time went.

    python scripts/profile_lstm.py [--model module.path:factory] [--device cpu|cuda] [--steps N]
                                   [--size T,B,I,H] [--inference] [--threads N] [--out DIR]

Default model: torch_lstm_ext.LSTM(I=128, H=256, num_layers=2) on x [T=100, B=32, I] (--size
T,B,I,H changes it), training steps (forward + backward). With --model, `factory()`
(importable from the current directory) must return (model, inputs): the model gets
replace_lstm'd, then model(*inputs) runs and the sum of every floating-point tensor it returns
is backpropagated.

The package marks its stages with record_function ranges (torch_lstm_ext/profiling.py):
lstm_ext::input_gemm (x @ W_ih^T + b), lstm_ext::input_projection_backward (its backward: dx,
dW_ih, the biases' and layer norm's gradients), lstm_ext::recurrence (the forward op),
lstm_ext::backward_recurrence (the backward op) and, inside it, lstm_ext::weight_grad_gemm (dW_hh,
dW_hr). Writes <out>/trace.json (open in chrome://tracing or https://ui.perfetto.dev) and
<out>/key_averages.txt (sorted by self time), and prints a short summary.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import torch_lstm_ext

STEP = "profile_lstm.py::step"
STAGES = ("input_gemm", "input_projection_backward", "recurrence", "backward_recurrence", "weight_grad_gemm")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="module.path:factory returning (model, inputs)")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default="100,32,128,256", metavar="T,B,I,H",
                   help="shape of the default model and its input")
    p.add_argument("--steps", type=int, default=3, help="profiled steps (after 2 warm-up steps)")
    p.add_argument("--inference", action="store_true", help="forward only, no_grad, eval mode")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "profile_output")
    return p.parse_args(argv)


def _default_model(size: str, device: str):
    T, B, I, H = map(int, size.split(","))
    torch.manual_seed(0)
    model = torch_lstm_ext.LSTM(I, H, num_layers=2, device=device)
    return model, (torch.randn(T, B, I, device=device, requires_grad=True),)


def _user_model(spec: str, device: str):
    module_name, _, factory = spec.partition(":")
    sys.path.insert(0, str(Path.cwd()))
    model, inputs = getattr(importlib.import_module(module_name), factory or "make")()
    model = torch_lstm_ext.replace_lstm(model.to(device))
    inputs = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in inputs)
    return model, inputs


def _float_tensors(value) -> list[torch.Tensor]:
    """Every floating-point tensor in a (nested) output: tensors, tuples, lists, dicts, PackedSequence."""
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _float_tensors(v)]
    return []


def _step(model, inputs, inference: bool):
    def run() -> None:
        with record_function(STEP):
            if inference:
                with torch.no_grad():
                    model(*inputs)
                return
            model.zero_grad(set_to_none=True)
            loss = sum(t.sum() for t in _float_tensors(model(*inputs)) if t.requires_grad)
            loss.backward()
    return run


def summary(prof, device: str) -> list[str]:
    """Lines: time per stage (summed over the profiled steps) as a share of the step time."""
    events = {e.key: e for e in prof.key_averages()}
    use_cuda = device == "cuda"

    def total(name: str) -> float:
        e = events.get(name)
        if e is None:
            return 0.0
        return (e.device_time_total if use_cuda else e.cpu_time_total) / 1e3

    step = total(STEP)
    stages = {s: total(f"lstm_ext::{s}") for s in STAGES}
    stages["backward_recurrence"] -= stages["weight_grad_gemm"]
    stages["everything else"] = step - sum(stages.values())
    lines = [f"step time {step:.1f} ms ({'GPU' if use_cuda else 'CPU'} time, all profiled steps):"]
    for name, ms in stages.items():
        label = "backward_recurrence (steps only)" if name == "backward_recurrence" else name
        lines.append(f"  {label:36s} {ms:9.2f} ms  {100 * ms / step if step else 0:5.1f}%")
    key = "self_device_time_total" if use_cuda else "self_cpu_time_total"
    top = sorted((e for e in events.values() if not e.key.startswith(("lstm_ext::", STEP))),
                 key=lambda e: getattr(e, key), reverse=True)[:6]
    lines.append("top ops by self time: " + ", ".join(
        f"{e.key} {getattr(e, key) / 1e3:.1f} ms ({e.count}x)" for e in top))
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        model, inputs = _user_model(args.model, args.device)
    else:
        model, inputs = _default_model(args.size, args.device)
    model.train(not args.inference)
    run = _step(model, inputs, args.inference)
    for _ in range(2):
        run()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            run()
        if args.device == "cuda":
            torch.cuda.synchronize()
    wall = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    trace, table = args.out / "trace.json", args.out / "key_averages.txt"
    prof.export_chrome_trace(str(trace))
    sort = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    table.write_text(prof.key_averages().table(sort_by=sort, row_limit=40))
    T, B, I, H = args.size.split(",")
    what = args.model or f"torch_lstm_ext.LSTM({I}, {H}, num_layers=2), x [{T}, {B}, {I}]"
    print(f"{what}: {args.steps} {'inference' if args.inference else 'training'} steps on "
          f"{args.device}, {torch.get_num_threads()} threads, {wall * 1e3:.0f} ms wall under the profiler")
    print("\n".join(summary(prof, args.device)))
    print(f"wrote {trace} and {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
