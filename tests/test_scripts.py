"""Smoke tests of the benchmark and profiling scripts on tiny shapes (no timing assertions)."""

from __future__ import annotations

import json
import os
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


def _gpu_check(tmp_path: Path, python: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DRY_RUN="1", OUT=str(tmp_path), PYTHON=python)
    return subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh")], capture_output=True, text=True, env=env,
                          timeout=300)


def test_gpu_check_dry_run_on_cpu(tmp_path):
    """The GPU scripts run only where a GPU is lent; gpu_check.sh's DRY_RUN=1 runs its stages'
    CPU forms (CUDA tests skipped, the benchmarks' --dry-run) and keeps those code paths alive."""
    result = _gpu_check(tmp_path, sys.executable)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gpu_check: PASSED" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cooperative_tests.xml", "cuda_tests.xml", "gpu_bench_dry_run.json", "gpu_bench_dry_run.md", "gpu_bench_variants_dry_run.json",
        "gpu_check.log"]
    bench = json.loads((tmp_path / "gpu_bench_dry_run.json").read_text())
    assert {"date", "torch", "triton", "cuda"} <= set(bench["environment"])
    cases = {(r["case"], r["dtype"]) for r in bench["results"]}
    assert cases == {("T6 B3 H16", "fp32"), ("T6 B3 H16", "bf16"), ("T6 B3 H16 2L-bidir", "fp32"),
                     ("T6 B3 H16 packed", "fp32")}
    assert {(r["pass"], r["impl"]) for r in bench["results"]} == {
        (p, i) for p in ("inference", "training") for i in ("cudnn", "ours")}
    assert all(r["ms"] > 0 and r["rounds"] >= 3 for r in bench["results"])
    assert all(r["max_rel_diff"] < 1e-2 for r in bench["results"] if r["pass"] == "inference")
    table = (tmp_path / "gpu_bench_dry_run.md").read_text().splitlines()
    assert table[0].startswith("| case | dtype | cuDNN persistent |") and len(table) == 2 + len(cases)
    variants = json.loads((tmp_path / "gpu_bench_variants_dry_run.json").read_text())
    assert [row["variant"] for row in variants["variants"]] == ["peephole", "layer_norm", "zoneout", "all"]
    assert all(row["ours_error"] <= 2 * row["loop_error"] + 1e-5 for row in variants["variants"])
    assert all(row["loop_error"] < 1e-5 for row in variants["variants"])  # same masks for all three
    assert [row["layers"] for row in variants["checkpoint"]] == [1, 2]


def test_gpu_check_fails_when_a_stage_fails(tmp_path):
    result = _gpu_check(tmp_path, "false")
    assert result.returncode != 0 and "gpu_check: FAILED" in result.stdout


def test_checkpoint_sweep_runs_and_reports(tmp_path):
    result = _run([str(SCRIPTS / "checkpoint_sweep.py"), "--seed", "4", "--configs", "2", "--small-blocks"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "seed 4: 0 of 2 configurations differ beyond rounding" in result.stdout
    assert "worst difference:" in result.stdout


def test_prune_example_quick(tmp_path):
    """scripts/prune_example.py --quick: trains, prunes half the units, fine-tunes and times both LSTMs."""
    result = _run([str(SCRIPTS / "prune_example.py"), "--quick", "--threads", "1"], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {cells[0]: cells[1:] for line in result.stdout.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    original = int(rows["trained, H=128 (10 steps)"][0])
    pruned = int(rows["pruned by activation + 3 fine-tune steps"][0])
    assert pruned < original / 2  # the LSTM's weights shrink 4x at half the units; the embedding does not
    assert all(float(rows[name][1]) > 0 for name in rows if name.startswith(("trained", "pruned")))
    assert all(float(rows[impl][2].rstrip("x")) > 0 for impl in ("ours", "nn.LSTM"))


def test_onnx_cost_quick(tmp_path):
    """scripts/onnx_cost.py on its smallest shape: our export agrees with nn.LSTM's (the script
    asserts it) and both are timed."""
    result = _run([str(SCRIPTS / "onnx_cost.py"), "--quick", "--repeats", "2"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| T20 B1 I32 H64 |" in result.stdout and "| geometric mean |" in result.stdout


def test_quantize_report_quick(tmp_path):
    """scripts/quantize_report.py --quick: trains, quantizes to int8 / fp16, reports accuracy,
    memory and speed (bars reported, not enforced) and writes the report with --out."""
    out = tmp_path / "report.md"
    result = _run([str(SCRIPTS / "quantize_report.py"), "--quick", "--threads", "1", "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr
    for section in ("## Accuracy (held-out)", "## Memory", "## Speed", "Where the extra time goes"):
        assert section in result.stdout
    rows = {}  # first cell -> the other cells of the first row starting with it (the ms table's)
    for line in result.stdout.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
    assert {"ours int8", "ours fp16", "torch.ao qint8", "int8", "fp16"} <= set(rows)
    assert float(rows["int8"][1].rstrip("x")) <= 0.3  # weight bytes vs fp32: the bar holds at any training
    assert all(float(ms) > 0 for ms in rows["T10 B4 I16 H16 L1"][:5])
    assert out.read_text() in result.stdout
