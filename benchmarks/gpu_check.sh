#!/usr/bin/env bash
# The prepared GPU check: the GPU tests, then the GPU benchmark, in one go.
#
#   bash benchmarks/gpu_check.sh          # from anywhere; estimated 2-3 minutes on an H200
#
# Installs nothing: it needs Python with NumPy, CuPy, numba-cuda, pytest and tqdm (PyTorch
# optional, for the side-by-side), i.e. `pip install .[gpu,test]`, and imports the project from
# this checkout (PYTHONPATH), not from an install. The tests run on the device
# (NUMBA_ENABLE_CUDASIM=0; the test suite otherwise runs the GPU backend in the simulator).
# Real MNIST is looked for in ../shared/data/mnist, shared/data/mnist and data/ (gzip IDX);
# without it the benchmark uses synthetic data and says so. On a machine without ../shared,
# copy the four .gz files into data/ here first.
#
# Writes into $OUT if set, else benchmarks/out/:
#   gpu_env.txt    device, driver and library versions
#   gpu_tests.txt  pytest's output for the GPU tests on the device
#   gpu_bench.md   the benchmark's report (markdown tables), gpu_bench.json the same numbers
#   gpu_bench.log  the benchmark's console output
# Exit status: 0 when the tests passed and every benchmark section ran.
set -u -o pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-benchmarks/out}"
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
start=$(date +%s)

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
    "$PY" - <<'EOF'
import platform, numpy
print("python", platform.python_version(), "numpy", numpy.__version__)
for name in ("cupy", "torch", "pytest", "numba", "numba_cuda"):
    try:
        print(name, __import__(name).__version__)
    except Exception as exc:
        print(name, "not importable:", repr(exc))
from nnmnist.backends import gpu_available
print("nnmnist.backends.gpu_available():", gpu_available())
EOF
} 2>&1 | tee "$DEST/gpu_env.txt"

echo "== GPU tests on the device"
NUMBA_ENABLE_CUDASIM=0 timeout 150 "$PY" -m pytest -q -p no:cacheprovider -rfEs \
    tests/backends/test_gpu.py tests/backends/test_gpu_kernels.py \
    tests/nn/test_compact.py::test_compaction_on_the_gpu_keeps_the_masked_hits \
    tests/backends/test_tagger_gpu.py \
    2>&1 | tee "$DEST/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}

echo "== benchmarks/gpu_bench.py"
timeout 170 "$PY" benchmarks/gpu_bench.py --budget 130 --out "$DEST/gpu_bench.md" 2>&1 \
    | tee "$DEST/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}

echo "tests exit $tests_rc, benchmark exit $bench_rc, $(( $(date +%s) - start ))s in all" \
    | tee -a "$DEST/gpu_env.txt"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
