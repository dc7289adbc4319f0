"""GPU benchmark at the sizes real models use (issue 11): torch_lstm_ext.LSTM against cuDNN's
nn.LSTM, and against our own per-step path, on the grid of scripts/gpu_bench_cases.py.

Per case, two passes: inference (a forward under no_grad) and training (forward + backward of
the sum of the outputs and final states). Implementations: "cudnn" (nn.LSTM), "ours" (the
kernel dispatch picks, recorded per row) and "ours[K]" with the kernel forced to K for each of
--kernels ("step": eager per-step launches, "step_graph": the same replayed from a CUDA graph,
"cooperative": the multi-program persistent kernel), where:
- dispatch knows K (a name of dispatch.Kernel); else skipped with a note;
- ours did not pick K itself (then the "ours" row is K's);
- K runs on the case; a first call that raises is a note, not a crash.
Timing (bench_measure.interleaved_medians): each implementation is called CAPTURE_AFTER times
first (compiles, autotuning, graph capture), then one warm-up round, then rounds of one call
each in rotating order, synchronised around every call; the median per implementation. TF32
off on both sides. The inference pass also records each implementation's largest difference
from cuDNN's output, relative to cuDNN's largest magnitude.

--time-budget skips the cases whose estimate (gpu_bench_cases.estimate_seconds) exceeds the time
left; the JSON and Markdown are rewritten after every case, so a run stopped from outside keeps
what it measured. The estimate of the whole run is printed first: --grid quick about 80 s (today's
kernels; about 95 s once step_graph and cooperative run too), --grid full about 570 s (760 s),
more than one 8-minute device call: split it with --dtypes, a third of it per call.

    python scripts/gpu_bench.py --grid quick --time-budget 105 --out DIR   # gpu_check.sh
    python scripts/gpu_bench.py --grid full --dtypes bf16 --out DIR        # a third of the grid
    python scripts/gpu_bench.py --dry-run                                   # tiny cases on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
from bench_measure import interleaved_medians
from gpu_bench_cases import DTYPES, GRIDS, Case, cudnn_persistent, estimate_seconds
from gpu_bench_table import markdown_table
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import torch_lstm_ext
from torch_lstm_ext.triton_kernels import dispatch, graph_replay, recurrence

FORCED_KERNELS = ("step", "step_graph", "cooperative")
# Inference outputs farther from cuDNN's than this (relative to its largest magnitude) get a note:
# a benchmark of a wrong result says nothing.
AGREEMENT = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 5e-2}


def known_kernels() -> set[str]:
    """The kernel names dispatch can run (its Kernel literal), where the dispatch can be forced."""
    if not hasattr(recurrence, "choose_kernel"):
        return set()
    return set(typing.get_args(getattr(dispatch, "Kernel", None)))


@contextlib.contextmanager
def forced_kernel(kernel: str | None) -> Iterator[None]:
    """Force the Triton kernel choice to `kernel` (None: dispatch's rule)."""
    if kernel is None:
        yield
    else:
        with mock.patch.object(recurrence, "choose_kernel", lambda *args, **kwargs: kernel):
            yield


@contextlib.contextmanager
def watched_kernels(chosen: set[str]) -> Iterator[None]:
    """Record in `chosen` every kernel dispatch picks while inside."""
    original = recurrence.choose_kernel

    def spy(*args, **kwargs):
        kernel = original(*args, **kwargs)
        chosen.add(kernel)
        return kernel

    with mock.patch.object(recurrence, "choose_kernel", spy):
        yield


def make_input(case: Case, device: torch.device, training: bool):
    """[T, B, I], or a PackedSequence of B sequences of lengths uniform in [T/4, T]."""
    gen = torch.Generator().manual_seed(0)
    dtype = DTYPES[case.dtype]
    if not case.packed:
        return torch.randn(case.T, case.B, case.I, generator=gen).to(device, dtype).requires_grad_(training)
    lengths = torch.randint(max(1, case.T // 4), case.T + 1, (case.B,), generator=gen)
    x = pack_sequence([torch.randn(int(n), case.I, generator=gen).to(device, dtype) for n in lengths],
                      enforce_sorted=False)
    x.data.requires_grad_(training)
    return x


def make_call(module: nn.Module, x, training: bool, kernel: str | None) -> Callable[[], torch.Tensor]:
    def call() -> torch.Tensor:
        with forced_kernel(kernel), torch.set_grad_enabled(training):
            output, (h_n, c_n) = module(x)
            out = output.data if isinstance(output, PackedSequence) else output
            if training:
                (out.float().sum() + h_n.float().sum() + c_n.float().sum()).backward()
        return out.detach()

    return call


def relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    want = want.float()
    return float((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-30))


def prewarm(call: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The calls before timing: compiles and autotuning, then (CAPTURE_AFTER) a graph's capture."""
    for _ in range(graph_replay.CACHE.capture_after):
        out = call()
    return out


def bench_pass(case: Case, models: dict[str, nn.Module], training: bool, kernels: list[str],
               args: argparse.Namespace, device: torch.device, notes: list[str]) -> list[dict]:
    """One pass of one case: a row per implementation that ran."""
    pass_name = "training" if training else "inference"
    x = make_input(case, device, training)
    calls = {name: make_call(models[name], x, training, None) for name in ("cudnn", "ours")}
    outputs = {"cudnn": prewarm(calls["cudnn"])}
    chosen: set[str] = set()
    with watched_kernels(chosen) if known_kernels() else contextlib.nullcontext():
        outputs["ours"] = prewarm(calls["ours"])
    kernel_of = {"cudnn": "cudnn", "ours": "+".join(sorted(chosen)) or "numpy"}
    for kernel in kernels:
        if kernel == kernel_of["ours"]:
            continue  # the "ours" row is this kernel's
        name = f"ours[{kernel}]"
        call = make_call(models["ours"], x, training, kernel)
        try:
            outputs[name] = prewarm(call)
        except Exception as error:  # a forced kernel that cannot run this case
            notes.append(f"{case.label} {case.dtype} {pass_name}: {name} skipped: "
                         f"{type(error).__name__}: {error}")
            continue
        calls[name], kernel_of[name] = call, kernel

    def reset() -> None:
        for module in models.values():
            module.zero_grad(set_to_none=True)
        (x.data if isinstance(x, PackedSequence) else x).grad = None

    medians, rounds = interleaved_medians(calls, dict.fromkeys(calls, reset), device.type,
                                          repeats=args.rounds, budget_s=args.pass_seconds, warmup=1)
    persistent = cudnn_persistent(case, device)
    rows = []
    for name, seconds in medians.items():
        row = dict(case=case.label, T=case.T, B=case.B, I=case.I, H=case.H, dtype=case.dtype,
                   layers=case.layers, bidirectional=case.bidirectional, packed=case.packed,
                   cudnn_persistent=persistent, **{"pass": pass_name}, impl=name, kernel=kernel_of[name],
                   ms=round(1e3 * seconds, 4), vs_cudnn=round(seconds / medians["cudnn"], 3), rounds=rounds)
        if not training:
            row["max_rel_diff"] = relative_difference(outputs[name], outputs["cudnn"])
        rows.append(row)
    return rows


def bench_case(case: Case, kernels: list[str], args: argparse.Namespace, device: torch.device,
               notes: list[str]) -> list[dict]:
    dtype = DTYPES[case.dtype]
    torch.manual_seed(0)
    config = dict(num_layers=case.layers, bidirectional=case.bidirectional, device=device, dtype=dtype)
    ref = nn.LSTM(case.I, case.H, **config)
    ours = torch_lstm_ext.LSTM(case.I, case.H, **config)
    ours.load_state_dict(ref.state_dict())
    models = {"cudnn": ref, "ours": ours}
    rows = [row for training in (False, True)
            for row in bench_pass(case, models, training, kernels, args, device, notes)]
    graph_replay.CACHE.clear()  # the next case's shapes differ: free this one's graphs
    return rows


def environment(device: torch.device) -> dict:
    import triton

    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
            "machine": platform.machine(), "device": str(device),
            "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                     "cudnn": torch.backends.cudnn.allow_tf32}}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    sms=props.multi_processor_count)
    return info


def write(out: Path, stem: str, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown_table(report["results"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny cases on the CPU (NumPy backend)")
    parser.add_argument("--grid", choices=("full", "quick"), default="full")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per pass, at most (>= 3)")
    parser.add_argument("--pass-seconds", type=float, default=4.0,
                        help="timing budget of one pass: fewer rounds past it")
    parser.add_argument("--time-budget", type=float, default=0.0,
                        help="seconds for the whole run (0: no limit)")
    parser.add_argument("--kernels", default=",".join(FORCED_KERNELS),
                        help="kernels to force, comma-separated")
    parser.add_argument("--dtypes", default=",".join(DTYPES),
                        help="the grid's cases in these dtypes only, comma-separated (to split a run)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device = torch.device("cpu" if args.dry_run else "cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.dry_run:
        args.grid, args.rounds, args.pass_seconds = "dry", 3, 0.1
    cases = [case for case in GRIDS[args.grid].cases() if case.dtype in args.dtypes.split(",")]
    stem = "gpu_bench_dry_run" if args.dry_run else "gpu_bench"

    notes: list[str] = []
    requested = [k for k in args.kernels.split(",") if k]
    known = known_kernels()
    if device.type != "cuda":
        notes.append("CPU: the NumPy backend runs, no kernel to force")
        kernels = []
    else:
        kernels = [k for k in requested if k in known]
        notes += [f"ours[{k}] skipped: dispatch does not know kernel {k!r} yet"
                  for k in requested if k not in known]
    calls = graph_replay.CACHE.capture_after + 1 + args.rounds
    estimates = {case: estimate_seconds(case, 2 + len(kernels), calls) for case in cases}
    print(f"{len(cases)} cases, estimated {sum(estimates.values()):.0f} s; "
          f"budget {args.time_budget or 'none'}", flush=True)
    report = {"environment": environment(device), "settings": vars(args) | {"out": str(args.out)},
              "results": [], "skipped": [], "notes": notes}
    started = time.perf_counter()
    for case in cases:
        left = args.time_budget - (time.perf_counter() - started)
        if args.time_budget and estimates[case] > left:
            reason = f"time budget: {estimates[case]:.0f} s estimated, {left:.0f} s left"
            report["skipped"].append(dict(case=case.label, dtype=case.dtype, reason=reason))
            continue
        case_started = time.perf_counter()
        rows = bench_case(case, kernels, args, device, notes)
        report["results"] += rows
        notes += [f"{r['case']} {r['dtype']}: {r['impl']} differs from cuDNN by {r['max_rel_diff']:.2e}"
                  for r in rows if r.get("max_rel_diff", 0.0) > AGREEMENT[case.dtype]]
        write(args.out, stem, report)
        ratios = ", ".join(f"{r['pass']} {r['impl']} {r['vs_cudnn']:.2f}"
                           for r in rows if r["impl"] != "cudnn")
        print(f"{case.label} {case.dtype} ({time.perf_counter() - case_started:.1f} s), vs cuDNN: {ratios}",
              flush=True)
    write(args.out, stem, report)
    print(markdown_table(report["results"]))
    for note in notes + [f"skipped {s['case']} {s['dtype']}: {s['reason']}" for s in report["skipped"]]:
        print("note:", note)
    print(f"wrote {args.out / stem}.json and .md in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
