"""Cold start: the first forward + backward in a fresh process, nn.LSTM vs ours.

    python scripts/cold_start.py [--runs N] [--size T,B,I,H]

Each run is a new Python process that imports torch (and torch_lstm_ext for ours), builds the
LSTM and times its first forward + backward; the runs alternate between nn.LSTM and ours, so
both see the same machine load. Prints the medians and their difference, and whether Dynamo got
imported (torch.library.custom_op's first call imports it, ~1 s; our ops avoid it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, sys, time
import torch
start = time.perf_counter()
if {ours}:
    import torch_lstm_ext
    lstm = torch_lstm_ext.LSTM({I}, {H})
else:
    lstm = torch.nn.LSTM({I}, {H})
imported = time.perf_counter()
out, _ = lstm(torch.randn({T}, {B}, {I}, requires_grad=True))
out.sum().backward()
done = time.perf_counter()
print(json.dumps(dict(import_s=imported - start, first_step_s=done - imported, total_s=done - start,
                      dynamo="torch._dynamo" in sys.modules)))
"""


def run_once(ours: bool, T: int, B: int, I: int, H: int) -> dict:
    code = CHILD.format(ours=ours, T=T, B=B, I=I, H=H)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=7, help="fresh processes per side")
    p.add_argument("--size", default="100,8,32,64", metavar="T,B,I,H")
    args = p.parse_args(argv)
    T, B, I, H = map(int, args.size.split(","))
    runs: dict[str, list[dict]] = {"nn.LSTM": [], "torch_lstm_ext": []}
    for _ in range(args.runs):
        runs["nn.LSTM"].append(run_once(False, T, B, I, H))
        runs["torch_lstm_ext"].append(run_once(True, T, B, I, H))
    medians = {}
    for name, rows in runs.items():
        keys = ("import_s", "first_step_s", "total_s")
        medians[name] = {key: statistics.median(r[key] for r in rows) for key in keys}
        m = medians[name]
        dynamo = sum(r["dynamo"] for r in rows)
        print(f"{name:15s} import {m['import_s']:.3f} s, first forward+backward {m['first_step_s']:.3f} s, "
              f"total {m['total_s']:.3f} s, Dynamo imported in {dynamo}/{len(rows)} runs")
    extra = medians["torch_lstm_ext"]["total_s"] - medians["nn.LSTM"]["total_s"]
    print(f"ours costs {extra:+.3f} s more than nn.LSTM (medians of {args.runs} fresh processes each, "
          f"T,B,I,H = {args.size}; the time after `import torch`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
