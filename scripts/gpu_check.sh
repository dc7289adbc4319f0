#!/usr/bin/env bash
# One command for a GPU machine: install the package, run the CUDA tests and the GPU benchmarks.
# Writes gpu_check.log, cuda_tests.xml, cooperative_tests.xml, gpu_bench.json, gpu_bench.md and
# gpu_bench_variants.json (6 files) under $OUT when set, else under scripts/results/. Exit status: 0 when every stage
# passed.
#
# Every stage has a timeout, and the limits add up to 480 s, the 8 minutes one device call
# may take (the machine checks take a few seconds more). Each limit is the stage's time in the
# H200 runs (scripts/results/gpu_h200/run3) or its estimate, plus a margin:
#   install            40 s  (4 s in run 3)
#   cuda-tests        180 s  (140 s in run 3 for 32 tests, most of it compiling; the graph-replay
#                             tests reuse those shapes' kernels: about 20 s more expected; the
#                             45 CUDA autocast cases of tests/test_autocast.py run cuDNN and the
#                             per-step kernels at tiny shapes, never run yet; 2 quantized-weight
#                             cases compile int8 / fp16 kernels of their own, never run yet)
#   cooperative-tests  90 s  (the cooperative kernels' CUDA tests, never run yet: their own stage,
#                             so that a barrier that hangs costs only this stage's results; one
#                             int8 case among them)
#   benchmark         100 s  (gpu_bench.py --grid quick: it stops starting cases once its own
#                             estimate of the next one passes --time-budget 80; every case it
#                             finished is on disk if the limit kills it)
#   variant-benchmark  70 s  (48 s in run 3)
#
#   bash scripts/gpu_check.sh            (PYTHON=... to pick the interpreter; default: python)
#   DRY_RUN=1 bash scripts/gpu_check.sh  (on the CPU: no install, the CUDA tests skip, the
#                                          benchmarks run their --dry-run; tests/test_scripts.py)
set -uo pipefail

cd "$(dirname "$0")/.."
results="${OUT:-scripts/results}"
mkdir -p "$results"
log="$results/gpu_check.log"
py="${PYTHON:-python}"
dry="${DRY_RUN:-0}"
exec > >(tee "$log") 2>&1
# The kernels must compile for the GPU, not run through Triton's interpreter.
unset TRITON_INTERPRET TORCH_LSTM_EXT_BACKEND
export PYTHONUNBUFFERED=1

failed=0
stage() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start))s"
    [ "$rc" -eq 0 ] || failed=1
}

echo "== machine"
if [ "$dry" = 1 ]; then
    echo "dry run: CPU forms of the stages, no install"
    bench=(--dry-run)
    variants=(--dry-run)
else
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || failed=1
    bench=(--grid quick --rounds 10 --pass-seconds 3 --time-budget 80)
    variants=()
fi
"$py" -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())" || failed=1
"$py" -c "import pytest" || echo "!! pytest is not installed: the CUDA test stage will fail"

[ "$dry" = 1 ] || stage install 40 "$py" -m pip install --no-deps --no-build-isolation -e .
stage cuda-tests 180 "$py" -m pytest -q -m cuda tests/test_cuda.py tests/test_autocast.py -k "not cooperative" -p no:cacheprovider \
    -rfEs --junitxml "$results/cuda_tests.xml"
stage cooperative-tests 90 "$py" -m pytest -q -m cuda tests/test_cuda.py -k cooperative -p no:cacheprovider \
    -rfEs --junitxml "$results/cooperative_tests.xml"
stage benchmark 100 "$py" scripts/gpu_bench.py "${bench[@]}" --out "$results"
stage variant-benchmark 70 "$py" scripts/gpu_bench_variants.py ${variants[@]+"${variants[@]}"} --out "$results"

if [ -n "${OUT:-}" ]; then
    files=$(find "$OUT" -type f | wc -l)
    echo "== $files files under \$OUT"
    # At most 8 files come back from a device call.
    [ "$files" -le 8 ] || { echo "!! more than 8 files: some will not come back"; failed=1; }
fi
echo "== gpu_check: $([ "$failed" -eq 0 ] && echo PASSED || echo FAILED); results in $results"
exit "$failed"
