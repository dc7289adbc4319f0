"""Short GPU benchmark: torch_lstm_ext.LSTM (Triton) vs cuDNN nn.LSTM vs an nn.LSTMCell loop.

Forward (no grad) and forward+backward, fp32 and bf16, a few shapes; at the smallest shape also
each Triton kernel forced (step / persistent) to check dispatch.py's rule. Timing: warm-up
first (Triton compiles and autotunes there), then rounds in which every implementation runs once
in turn (interleaved, so drift hits all alike), torch.cuda.synchronize around each run, the
median per implementation; ratios against cuDNN. TF32 is off everywhere.

    python scripts/gpu_bench.py --out DIR        # on a GPU
    python scripts/gpu_bench.py --dry-run        # tiny shapes on the CPU (NumPy backend): a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
from torch import nn

import torch_lstm_ext
from torch_lstm_ext.triton_kernels import recurrence

# (T, B, input, hidden): persistent for bf16 / fp32, per-step, and a larger per-step shape.
GPU_SHAPES = [(64, 32, 32, 32), (64, 64, 128, 128), (32, 128, 512, 512)]
DRY_SHAPES = [(4, 2, 8, 16)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@contextlib.contextmanager
def forced_kernel(kernel: str | None) -> Iterator[None]:
    """Force the Triton kernel choice (None: dispatch.py's rule)."""
    if kernel is None:
        yield
    else:
        with mock.patch.object(recurrence, "choose_kernel", lambda *args: kernel):
            yield


class CellLoop(nn.Module):
    """nn.LSTMCell stepped in a Python loop: what people write when nn.LSTM does not fit."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(lstm.input_size, lstm.hidden_size, device=lstm.weight_hh_l0.device,
                                dtype=lstm.weight_hh_l0.dtype)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.cell, name).copy_(getattr(lstm, f"{name}_l0"))

    def forward(self, x: torch.Tensor):
        h = c = x.new_zeros(x.shape[1], self.cell.hidden_size)
        outputs = []
        for x_t in x:
            h, c = self.cell(x_t, (h, c))
            outputs.append(h)
        return torch.stack(outputs), (h[None], c[None])


def make_step(module: nn.Module, x: torch.Tensor, backward: bool, kernel: str | None) -> Callable[[], None]:
    def step() -> None:
        with forced_kernel(kernel), torch.set_grad_enabled(backward):
            output, (h_n, c_n) = module(x)
            if backward:
                (output.float().sum() + h_n.float().sum() + c_n.float().sum()).backward()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(steps: dict[str, Callable[[], None]], device: torch.device, warmup: int,
                     rounds: int) -> dict[str, float]:
    """Median milliseconds per implementation over `rounds` interleaved rounds."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_shape(shape, dtype: torch.dtype, device: torch.device, warmup: int, rounds: int,
                force_kernels: bool) -> list[dict]:
    T, B, I, H = shape
    ref = nn.LSTM(I, H, device=device, dtype=dtype)
    ours = torch_lstm_ext.LSTM(I, H, device=device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    loop = CellLoop(ref)
    x = torch.randn(T, B, I, device=device, dtype=dtype, requires_grad=True)
    rows = []
    for backward in (False, True):
        steps = {
            "cudnn": make_step(ref, x, backward, None),
            "ours": make_step(ours, x, backward, None),
            "cell_loop": make_step(loop, x, backward, None),
        }
        if force_kernels:
            steps["ours[step]"] = make_step(ours, x, backward, "step")
            steps["ours[persistent]"] = make_step(ours, x, backward, "persistent")
        ms = time_interleaved(steps, device, warmup, rounds)
        for name, value in ms.items():
            rows.append({"T": T, "B": B, "I": I, "H": H, "dtype": str(dtype).removeprefix("torch."),
                         "pass": "fwd+bwd" if backward else "fwd", "impl": name, "ms": round(value, 4),
                         "vs_cudnn": round(value / ms["cudnn"], 3)})
    return rows


def environment(device: torch.device) -> dict:
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (NumPy backend)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    device = torch.device("cpu" if args.dry_run else "cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    shapes, warmup, rounds = (DRY_SHAPES, 1, 2) if args.dry_run else (GPU_SHAPES, 3, args.rounds)

    rows = []
    for shape in shapes:
        for dtype in DTYPES.values():
            force = device.type == "cuda" and shape == shapes[0]
            for row in bench_shape(shape, dtype, device, warmup, rounds, force):
                rows.append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    name = "gpu_bench_dry_run.json" if args.dry_run else "gpu_bench.json"
    path = args.out / name
    path.write_text(json.dumps({"environment": environment(device), "results": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
