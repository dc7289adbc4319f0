#!/usr/bin/env bash
# One command for a GPU machine: install the package, run the CUDA tests and the short GPU
# benchmarks. Writes gpu_check.log, cuda_tests.xml, gpu_bench.json and gpu_bench_variants.json under $OUT when set, else
# under scripts/results/. Every stage has a timeout; together they stay under 8 minutes.
# Exit status: 0 when every stage passed.
#
#   bash scripts/gpu_check.sh            (PYTHON=... to pick the interpreter; default: python)
set -uo pipefail

cd "$(dirname "$0")/.."
results="${OUT:-scripts/results}"
mkdir -p "$results"
log="$results/gpu_check.log"
py="${PYTHON:-python}"
exec > >(tee "$log") 2>&1
# The kernels must compile for the GPU, not run through Triton's interpreter.
unset TRITON_INTERPRET TORCH_LSTM_EXT_BACKEND

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
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || failed=1
"$py" -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
"$py" -c "import pytest" || echo "!! pytest is not installed: the CUDA test stage will fail"

stage install 60 "$py" -m pip install --no-deps --no-build-isolation -e .
stage cuda-tests 200 "$py" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider -rfEs \
    --junitxml "$results/cuda_tests.xml"
stage benchmark 100 "$py" scripts/gpu_bench.py --out "$results"
stage variant-benchmark 120 "$py" scripts/gpu_bench_variants.py --out "$results"

echo "== gpu_check: $([ "$failed" -eq 0 ] && echo PASSED || echo FAILED); results in $results"
exit "$failed"
