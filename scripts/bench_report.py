"""bench.py's outputs: CSV + JSON + a Markdown table under the results folder, a PNG plot, and
the console summary with the issue's targets (ratios are ours / nn.LSTM, lower is better)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from bench_shapes import CORE

# Targets from issue 4 (float32, CPU, one run): ratio limits per check.
TARGETS = {
    "train_fwd_bwd geomean": 1.2,
    "train_fwd_bwd worst shape": 2.0,
    "train_fwd_bwd tiny (T20 B1 I32 H64)": 1.0,
    "inference geomean": 1.5,
    "training step of a model": 1.05,
    "torch code after the LSTM": 1.05,
}
TINY = "T20 B1 I32 H64"


def geomean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def _ratios(rows: list[dict], mode: str) -> dict[str, float]:
    return {r["case"]: r["ratio"] for r in rows if r["mode"] == mode and not r["sweep"] and r["ratio"]}


def summarize(rows: list[dict], model: dict | None) -> dict[str, float]:
    """The measured value of each target that this run covers."""
    train, infer = _ratios(rows, "train_fwd_bwd"), _ratios(rows, "inference")
    found: dict[str, float] = {}
    if train:
        found["train_fwd_bwd geomean"] = geomean(list(train.values()))
        found["train_fwd_bwd worst shape"] = max(train.values())
        core = [train[c.label] for c in CORE if c.label in train]
        if core:
            found["train_fwd_bwd geomean, the issue's 5 shapes (no target)"] = geomean(core)
    if TINY in train:
        found["train_fwd_bwd tiny (T20 B1 I32 H64)"] = train[TINY]
    if infer:
        found["inference geomean"] = geomean(list(infer.values()))
    if model:
        found["training step of a model"] = model["step_ratio"]
        found["torch code after the LSTM"] = model["after_ratio"]
    if "train_fwd" in {r["mode"] for r in rows}:
        found["train_fwd geomean (no target)"] = geomean(list(_ratios(rows, "train_fwd").values()))
    return found


def _ms(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


def markdown_table(rows: list[dict], summary: dict[str, float]) -> str:
    """One line per non-sweep case: fwd+bwd times and ratio, other modes' ratios, peak memory."""
    by_case: dict[str, dict[str, dict]] = {}
    for r in rows:
        if not r["sweep"] and r["ratio"]:
            by_case.setdefault(r["case"], {})[r["mode"]] = r
    lines = [
        "| shape | fwd+bwd ours ms | nn.LSTM ms | LSTMCell loop ms | **ours/nn.LSTM** | inference ours/nn | "
        "train fwd ours/nn | peak MiB fwd+bwd ours / nn |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case, modes in by_case.items():
        fb, inf, fwd = modes.get("train_fwd_bwd", {}), modes.get("inference", {}), modes.get("train_fwd", {})
        lines.append(
            f"| {case} | {_ms(fb.get('ours_ms'))} | {_ms(fb.get('nn_ms'))} | {_ms(fb.get('cells_ms'))} | "
            f"**{_ms(fb.get('ratio'))}** | {_ms(inf.get('ratio'))} | {_ms(fwd.get('ratio'))} | "
            f"{_ms(fb.get('ours_mib'))} / {_ms(fb.get('nn_mib'))} |"
        )
    lines.append(
        f"| geometric mean | | | | **{_ms(summary.get('train_fwd_bwd geomean'))}** | "
        f"{_ms(summary.get('inference geomean'))} | {_ms(summary.get('train_fwd geomean (no target)'))} | |"
    )
    return "\n".join(lines)


def target_lines(summary: dict[str, float]) -> list[str]:
    lines = []
    for name, value in summary.items():
        if name in TARGETS:
            verdict = "met" if value <= TARGETS[name] else "MISSED"
            lines.append(f"{name}: {value:.2f}x (target <= {TARGETS[name]}x) {verdict}")
        else:
            lines.append(f"{name}: {value:.2f}x")
    return lines


def write(out_dir: Path, stem: str, rows: list[dict], meta: dict, model: dict | None,
          summary: dict[str, float]) -> list[Path]:
    """CSV, JSON and Markdown under out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path, md_path = (out_dir / f"{stem}.{ext}" for ext in ("csv", "json", "md"))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["case"])
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps({"meta": meta, "summary": summary, "model_step": model,
                                     "rows": rows}, indent=1))
    md_path.write_text(markdown_table(rows, summary) + "\n")
    return [csv_path, json_path, md_path]


def plot(out_dir: Path, stem: str, rows: list[dict], meta: dict) -> Path | None:
    """Time vs T and vs H (the sweep cases), per implementation, fwd+bwd solid, inference dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = [r for r in rows if r["sweep"] and r["ratio"]]
    if not sweeps:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, axis, fixed in ((axes[0], "T", "B16 I64 H128"), (axes[1], "H", "T100 B16 I64")):
        for impl, key, color in (("ours", "ours_ms", "C0"), ("nn.LSTM", "nn_ms", "C1"),
                                 ("LSTMCell loop", "cells_ms", "C2")):
            for mode, style in (("train_fwd_bwd", "-o"), ("inference", "--s")):
                pts = sorted((r[axis], r[key]) for r in sweeps
                             if axis in r["sweep"] and r["mode"] == mode and r[key] is not None)
                if pts:
                    ax.plot(*zip(*pts), style, color=color, label=f"{impl}, {mode.replace('_', ' ')}")
        ax.set(xscale="log", yscale="log", xlabel=f"{axis} ({fixed})", ylabel="median ms per call",
               title=f"time vs {'sequence length' if axis == 'T' else 'hidden size'}")
        ticks = sorted({r[axis] for r in sweeps if axis in r["sweep"]})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{meta['cpu']}, {meta['torch_threads']} threads, float32, torch {meta['torch']}",
                 fontsize=9)
    fig.tight_layout()
    path = out_dir / f"{stem}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
