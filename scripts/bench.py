"""Benchmark torch_lstm_ext.LSTM against torch.nn.LSTM and an nn.LSTMCell Python loop.

    python scripts/bench.py [--quick | --grid standard|quick|gpu] [--device cpu|cuda]
                            [--threads N] [--out DIR] [--shape T,B,I,H ...] [--no-model]
    python scripts/bench.py --variants [--quick] [--threads N]   (scripts/bench_variants.py)

For every case of the grid (scripts/bench_shapes.py) it first checks that ours and the cell loop
agree with nn.LSTM (outputs, h_n, c_n, input and parameter gradients) and refuses to time a case
that does not; then, per mode (inference forward under no_grad in eval mode, training forward,
training forward + backward), it times the implementations interleaved after warm-up and takes
medians (scripts/bench_measure.py), and measures peak memory of ours and nn.LSTM. On CUDA
nn.LSTM is cuDNN and ours runs its CUDA backend (Triton). Then a real model's training step
(scripts/bench_train_step.py). Results:
<out>/bench_<grid>_<device>[_<N>threads].{csv,json,md,png}.
Exit status 1 when a case disagreed. --report JSON re-renders an earlier run's outputs (and the
summary lines) from its JSON without timing anything.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

import bench_models
import bench_report
import bench_train_step
import bench_variants
import numpy as np
import torch
from bench_measure import interleaved_medians, peak_memory_mib
from bench_shapes import GRIDS, Case
from tqdm import tqdm


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the quick grid (under 2 minutes on CPU)")
    p.add_argument("--grid", choices=sorted(GRIDS), help="default: standard (gpu on --device cuda)")
    p.add_argument("--shape", action="append", default=[], metavar="T,B,I,H",
                   help="time this shape instead of a grid (repeatable)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--repeats", type=int, help="timed rounds per mode (default 15, quick 7)")
    p.add_argument("--budget", type=float, help="seconds per case and mode (default 4, quick 1)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest max|a-b| / (1 + max|b|) accepted vs nn.LSTM (float32)")
    p.add_argument("--modes", nargs="+", choices=bench_models.MODES, default=list(bench_models.MODES))
    p.add_argument("--no-cells", action="store_true", help="skip the LSTMCell loop")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    p.add_argument("--no-model", action="store_true", help="skip the model training step")
    p.add_argument("--variants", action="store_true",
                   help="instead: the variants vs their Python loops and checkpointing's memory and time "
                        "(scripts/bench_variants.py; takes --quick, --threads, --out)")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="time nothing: redraw table, summary and plot of an earlier run's JSON")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    args.grid = "custom" if args.shape else ("quick" if args.quick else args.grid)
    args.grid = args.grid or ("gpu" if args.device == "cuda" else "standard")
    fast = args.quick or args.grid == "custom"
    args.repeats = args.repeats or (7 if fast else 15)
    args.budget = args.budget or (1.0 if fast else 4.0)
    args.warmup = 1 if fast else 2
    return args


def _meta(args: argparse.Namespace) -> dict:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "numpy_blas": f"{blas.get('name')} {blas.get('version')}",
        "torch_lstm_ext": importlib.metadata.version("torch_lstm_ext"),
        "load_before": os.getloadavg(),
    }


def _row(case: Case, mode: str, medians: dict, mem: dict, rounds: int, worst: dict) -> dict:
    ms = {name: (medians[name] * 1e3 if name in medians else None) for name in bench_models.IMPLS}
    return {
        "case": case.label, **case._asdict(), "mode": mode,
        "ours_ms": ms["ours"], "nn_ms": ms["nn.LSTM"], "cells_ms": ms["cells"],
        "ratio": ms["ours"] / ms["nn.LSTM"] if ms["ours"] else None,
        "cells_ratio": ms["cells"] / ms["nn.LSTM"] if ms["cells"] else None,
        "ours_mib": mem.get("ours"), "nn_mib": mem.get("nn.LSTM"),
        "rounds": rounds, "max_rel_diff": max(worst.values()) if worst else None,
    }


def bench_case(case: Case, args: argparse.Namespace) -> tuple[list[dict], str | None]:
    """Rows for each mode of `case`, or no rows and the reason it was refused."""
    models = bench_models.build(case, args.device)
    if args.no_cells or not case.cells:
        models.pop("cells", None)
    x = bench_models.make_input(case, args.device)
    worst = bench_models.disagreement(models, x)
    bad = {name: w for name, w in worst.items() if not w <= args.tolerance}
    if bad:
        return [], f"{case.label}: disagrees with nn.LSTM ({bad}), not timed"
    rows = []
    for mode in args.modes:
        calls = {name: bench_models.runner(m, x, mode) for name, m in models.items()}
        resets = {name: (lambda m=m: bench_models.reset_grads(m, x)) for name, m in models.items()}
        medians, rounds = interleaved_medians(calls, resets, args.device, args.repeats, args.budget,
                                              args.warmup)
        mem = {}
        if not args.no_memory and mode != "train_fwd":
            for name in ("ours", "nn.LSTM"):
                resets[name]()
                mem[name] = peak_memory_mib(calls[name], args.device)
        rows.append(_row(case, mode, medians, mem, rounds, worst))
    return rows, None


def _run(args: argparse.Namespace) -> tuple[list[dict], dict, dict | None, list[str]]:
    """Time the grid: (rows, meta, model step results, refused cases)."""
    meta = _meta(args)
    cases = [Case(*map(int, s.split(","))) for s in args.shape] or GRIDS[args.grid]
    rows, refused = [], []
    started = time.perf_counter()
    for case in tqdm(cases, desc=f"bench {args.grid} on {args.device}", unit="case"):
        case_rows, reason = bench_case(case, args)
        rows += case_rows
        if reason:
            refused.append(reason)
            tqdm.write(f"REFUSED {reason}")
    model = None
    if not args.no_model and args.grid != "custom":
        model = bench_train_step.measure(args.device, args.repeats, 2 * args.budget, args.warmup)
    meta["load_after"] = os.getloadavg()
    meta["seconds"] = round(time.perf_counter() - started, 1)
    meta["refused"] = refused
    return rows, meta, model, refused


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.variants:
        return bench_variants.main([*(["--quick"] if args.quick else []), "--out", str(args.out),
                                    *(["--threads", str(args.threads)] if args.threads else [])])
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        # The reference must not run in TF32, or the parity gate compares against a rounder answer.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if args.report:
        saved = json.loads(args.report.read_text())
        rows, meta, model = saved["rows"], saved["meta"], saved["model_step"]
        stem, refused = args.report.stem, meta["refused"]
    else:
        rows, meta, model, refused = _run(args)
        threads = f"_{torch.get_num_threads()}threads" if args.device == "cpu" else ""
        stem = f"bench_{args.grid}_{args.device}{threads}"
    summary = bench_report.summarize(rows, model)
    paths = bench_report.write(args.out, stem, rows, meta, model, summary)
    png = bench_report.plot(args.out, stem, rows, meta)
    print(f"\n{meta['cpu']}, {meta['cores']} cores, {meta['torch_threads']} torch threads; torch "
          f"{meta['torch']}, numpy {meta['numpy']} ({meta['numpy_blas']}); load average "
          f"{meta['load_before'][0]:.2f} before, {meta['load_after'][0]:.2f} after; {meta['seconds']} s\n")
    print(bench_report.markdown_table(rows, summary))
    if model:
        print(f"\n{model['model']}: training step {model['step_ours_ms']:.1f} ms ours vs "
              f"{model['step_nn_ms']:.1f} ms nn.LSTM; torch code after the LSTM "
              f"{model['after_ours_ms']:.2f} vs {model['after_nn_ms']:.2f} ms")
    print("\n" + "\n".join(bench_report.target_lines(summary)))
    print("\nwrote " + ", ".join(str(p) for p in [*paths, *([png] if png else [])]))
    for reason in refused:
        print(f"REFUSED {reason}", file=sys.stderr)
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
