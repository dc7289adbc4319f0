"""Smoke tests of the benchmark and profiling scripts on tiny shapes (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_bench_times_one_tiny_shape_and_writes_results(tmp_path):
    result = _run([str(SCRIPTS / "bench.py"), "--shape", "4,2,3,5", "--repeats", "3", "--budget", "0.05",
                   "--threads", "1", "--out", str(tmp_path)], tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "bench_custom_cpu_1threads.json").read_text())
    assert {row["mode"] for row in data["rows"]} == {"inference", "train_fwd", "train_fwd_bwd"}
    assert all(row["ours_ms"] > 0 and row["nn_ms"] > 0 and row["cells_ms"] > 0 for row in data["rows"])
    assert data["rows"][0]["max_rel_diff"] < 1e-4
    assert (tmp_path / "bench_custom_cpu_1threads.csv").exists() and (tmp_path / "bench_custom_cpu_1threads.md").exists()


def test_profile_default_model_writes_trace_and_stage_summary(tmp_path):
    result = _run([str(SCRIPTS / "profile_lstm.py"), "--size", "6,2,3,4", "--steps", "1", "--threads", "1",
                   "--out", str(tmp_path)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "recurrence" in result.stdout and "weight_grad_gemm" in result.stdout
    assert json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert "Self CPU" in (tmp_path / "key_averages.txt").read_text()


def test_profile_user_model_after_replace_lstm(tmp_path):
    (tmp_path / "user_model.py").write_text(
        "import torch\n"
        "def make():\n"
        "    return torch.nn.LSTM(3, 4, bidirectional=True), (torch.randn(5, 2, 3),)\n"
    )
    result = _run([str(SCRIPTS / "profile_lstm.py"), "--model", "user_model:make", "--steps", "1",
                   "--threads", "1", "--out", str(tmp_path / "prof")], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "backward_recurrence" in result.stdout
    assert "lstm_ext::recurrence" in (tmp_path / "prof" / "key_averages.txt").read_text()


def test_gpu_benchmarks_dry_run_on_cpu(tmp_path):
    """The GPU scripts run only where a GPU is lent; their --dry-run keeps the code paths alive."""
    for script, name in (("gpu_bench.py", "gpu_bench_dry_run.json"),
                         ("gpu_bench_variants.py", "gpu_bench_variants_dry_run.json")):
        result = _run([str(SCRIPTS / script), "--dry-run", "--out", str(tmp_path)], tmp_path)
        assert result.returncode == 0, result.stderr
        data = json.loads((tmp_path / name).read_text())
        assert data, script
    variants = json.loads((tmp_path / "gpu_bench_variants_dry_run.json").read_text())
    assert [row["variant"] for row in variants["variants"]] == ["peephole", "layer_norm", "zoneout", "all"]
    assert all(row["ours_error"] <= 2 * row["loop_error"] + 1e-5 for row in variants["variants"])
    assert all(row["loop_error"] < 1e-5 for row in variants["variants"])  # same masks for all three
    assert [row["layers"] for row in variants["checkpoint"]] == [1, 2]


def test_checkpoint_sweep_runs_and_reports(tmp_path):
    result = _run([str(SCRIPTS / "checkpoint_sweep.py"), "--seed", "4", "--configs", "2", "--small-blocks"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "seed 4: 0 of 2 configurations differ" in result.stdout
