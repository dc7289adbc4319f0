"""The Markdown table of scripts/gpu_bench.py's rows: one line per case, per pass cuDNN's
milliseconds and every implementation's ratio to it (lower is better), and ours against our
own per-step path."""

from __future__ import annotations

PASSES = ("inference", "training")


def _ratio(rows: dict[str, dict], impl: str) -> str:
    row = rows.get(impl)
    return "" if row is None else f"{row['vs_cudnn']:.2f}"


def _vs_step(rows: dict[str, dict]) -> str:
    """ours / the eager per-step path: 1 where ours is that path (no forced row then)."""
    ours = rows.get("ours")
    if ours is None:
        return ""
    if ours["kernel"] == "step":
        return "1.00"
    step = rows.get("ours[step]")
    return "" if step is None else f"{ours['ms'] / step['ms']:.2f}"


def markdown_table(rows: list[dict]) -> str:
    """Cases in the order measured; a blank cell: not measured (see the JSON's notes)."""
    forced = sorted({r["impl"] for r in rows if r["impl"].startswith("ours[")})
    cases: dict[tuple, dict[str, dict[str, dict]]] = {}
    for r in rows:
        key = (r["case"], r["dtype"], r["cudnn_persistent"])
        cases.setdefault(key, {p: {} for p in PASSES})[r["pass"]][r["impl"]] = r
    head = ["case", "dtype", "cuDNN persistent", "ours kernel"]
    for p in PASSES:
        head += [f"{p} cuDNN ms", f"{p} ours / cuDNN", *(f"{p} {k} / cuDNN" for k in forced),
                 f"{p} ours / step"]
    rule = ["---"] * 4 + ["---:"] * (len(head) - 4)
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(rule) + " |"]
    for (case, dtype, persistent), passes in cases.items():
        kernels = sorted({v["ours"]["kernel"] for v in passes.values() if "ours" in v})
        cells = [case, dtype, {True: "yes", False: "no", None: "?"}[persistent], "/".join(kernels)]
        for p in PASSES:
            by_impl = passes[p]
            cudnn = by_impl.get("cudnn")
            cells += ["" if cudnn is None else f"{cudnn['ms']:.2f}", _ratio(by_impl, "ours"),
                      *(_ratio(by_impl, k) for k in forced), _vs_step(by_impl)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
