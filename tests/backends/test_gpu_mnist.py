"""`run.py --backend gpu` in Numba's CUDA simulator against `run.py --backend cpu`, same seed,
on a small MNIST: 5,500 training images (the last 5,000 are the dev set, so 500 are trained
on) and 1,000 test images; HiddenSize 64, TrainTop 8, minibatch 50, one epoch of 2 parts (meSimp:
2 epochs, TrainCycle 1). Dev and test counts must be within 10 examples of the CPU's at every
part. mlprand draws from another generator on the GPU, so it must only run and learn.

Every network type and optimizer is covered by a few runs that each combine several settings:
the simulator runs a minibatch in about a second, so the runs go two at a time in subprocesses.
A checkpoint written on the simulated GPU resumes on the CPU, and the other way round.
"""
import gzip
import json
import os
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

try:
    from .conftest import GPU_REASON, MNIST_DIR, gpu_backend_runs
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from conftest import GPU_REASON, MNIST_DIR, gpu_backend_runs

pytestmark = pytest.mark.skipif(not gpu_backend_runs(), reason=GPU_REASON)

REPO = Path(__file__).resolve().parents[2]
BASE = {"HiddenSize": 64, "TrainTop": 8, "MinibatchSize": 50, "IterPerEpoch": 2, "MaxEpoch": 1,
        "RandomSeed": 3, "LearningRate": 0.003}
CASES = {
    "mlp-adam": {"NetType": "mlp"},
    "mlptop-adam": {"NetType": "mlptop"},
    "mlpvar-compact-adam": {"NetType": "mlpvar", "MaxEpoch": 2, "TrainCycle": 1, "Compact": True},
    "mlpvar-masked-sgd": {"NetType": "mlpvar", "MaxEpoch": 2, "TrainCycle": 1, "Compact": False,
                          "OptType": "sgd", "LearningRate": 0.01},
    "mlptop-unified-adagrad": {"NetType": "mlptop", "Unified": True, "OptType": "adagrad",
                               "LearningRate": 0.03},
    "mlptop-lazy-rmsprop": {"NetType": "mlptop", "LazyUpdate": True, "OptType": "rmsprop"},
    "mlprand-dropout": {"NetType": "mlprand", "Dropout": 0.2, "LearningRate": 0.01},
}
RANDOM = {"mlprand-dropout"}  # draws from another generator on the GPU: runs and learns only
TOLERANCE = 10  # examples, of the dev set's 5,000 and the test set's 1,000
N_DEV, N_TST = 5000, 1000


def write_small_mnist(folder):
    """The first 5,500 training and 1,000 test images and labels, as plain IDX files."""
    sizes = {"train-images.idx3-ubyte": 5500, "train-labels.idx1-ubyte": 5500,
             "t10k-images.idx3-ubyte": 1000, "t10k-labels.idx1-ubyte": 1000}
    for name, n in sizes.items():
        path = Path(MNIST_DIR) / name
        raw = path.read_bytes() if path.exists() else gzip.open(f"{path}.gz", "rb").read()
        ndim = raw[3]
        dims = list(struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim]))
        per_item = 1
        for d in dims[1:]:
            per_item *= d
        start = 4 + 4 * ndim
        dims[0] = n
        (folder / name).write_bytes(raw[:4] + struct.pack(f">{ndim}I", *dims)
                                    + raw[start:start + n * per_item])


def run(args, backend, log_dir):
    """run.py with `args` on a backend; the parts of its metrics (.jsonl) as
    [(dev correct, test correct, dims)], and its checkpoint file."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    log_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), *args, "--backend", backend,
                           "--log-dir", str(log_dir), "--offline", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = sorted(log_dir.glob("*.jsonl"))[-1]
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    parts = [(round(r["dev_acc"] * N_DEV / 100), round(r["test_acc"] * N_TST / 100), r["dims"])
             for r in records if r["type"] == "part"]
    log = metrics.with_suffix(".txt").read_text()
    return parts, sorted(log_dir.glob("*.ckpt.npz"))[-1], log


def config_args(data_dir, **fields):
    out = [str(REPO / "configs" / "default.json")]
    for name, value in {**BASE, "DataDir": str(data_dir), **fields}.items():
        out += ["--set", f"{name}={json.dumps(value) if isinstance(value, bool) else value}"]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case on both backends, and the two cross resumes, two processes at a time, the
    longest simulated runs first."""
    if MNIST_DIR is None:
        pytest.skip("real MNIST not found")
    root = tmp_path_factory.mktemp("gpu-mnist")
    data = root / "data"
    data.mkdir()
    write_small_mnist(data)

    def case(name, backend):
        return run(config_args(data, **CASES[name]), backend, root / name / backend)

    def case_then_resume(backend, other):
        """mlptop for one epoch on `backend`, then its checkpoint for a second on `other`."""
        first = case("mlptop-adam", backend)
        ckpt = first[1]
        second = run(["--resume", str(ckpt), "--set", "MaxEpoch=2"], other, ckpt.parent)
        return {("mlptop-adam", backend): first, ("resume", backend, other): second}

    def two_epochs_on_the_cpu():
        args = config_args(data, **{**CASES["mlptop-adam"], "MaxEpoch": 2})
        return {("mlptop-adam-2", "cpu"): run(args, "cpu", root / "two-epochs")}

    slow_first = sorted(CASES, key=lambda name: -CASES[name].get("MaxEpoch", 1))
    jobs = [lambda: case_then_resume("gpu", "cpu"), lambda: case_then_resume("cpu", "gpu")]
    jobs += [lambda n=name, b=backend: {(n, b): case(n, b)}
             for backend in ("gpu", "cpu") for name in slow_first if name != "mlptop-adam"]
    jobs.append(two_epochs_on_the_cpu)
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = {}
        for result in pool.map(lambda job: job(), jobs):
            done.update(result)
    return done


def assert_close(parts, reference, what):
    assert len(parts) == len(reference), (what, parts, reference)
    for i, ((dev, tst, dims), (dev_ref, tst_ref, dims_ref)) in enumerate(zip(parts, reference)):
        assert abs(dev - dev_ref) <= TOLERANCE and abs(tst - tst_ref) <= TOLERANCE, \
            f"{what}, part {i}: dev {dev} vs {dev_ref}, test {tst} vs {tst_ref}"
        assert dims == dims_ref or what in RANDOM, f"{what}, part {i}: dims {dims} vs {dims_ref}"


@pytest.mark.parametrize("name", list(CASES))
def test_gpu_run_matches_the_cpu_run(runs, name):
    gpu_parts, _, gpu_log = runs[(name, "gpu")]
    cpu_parts, _, cpu_log = runs[(name, "cpu")]
    assert "simulated (NUMBA_ENABLE_CUDASIM=1)" in gpu_log
    assert "simulated" not in cpu_log
    expected_parts = 2 * CASES[name].get("MaxEpoch", BASE["MaxEpoch"])
    assert len(gpu_parts) == len(cpu_parts) == expected_parts
    if name in RANDOM:
        # chance is 10 %; the CPU's run of this seed reaches about 28 %
        assert gpu_parts[-1][0] > 0.2 * N_DEV, f"{name} did not learn: {gpu_parts}"
        return
    assert_close(gpu_parts, cpu_parts, name)
    if name.startswith("mlpvar"):
        hidden = gpu_parts[-1][2][:-1]
        assert min(hidden) < 64, f"{name}: meSimp pruned nothing: {gpu_parts[-1][2]}"


@pytest.mark.parametrize("first,second", [("gpu", "cpu"), ("cpu", "gpu")])
def test_checkpoint_resumes_on_the_other_backend(runs, first, second):
    """Epoch 1 on one backend, epoch 2 from its checkpoint on the other: the log then holds
    both epochs, close to a run of two epochs on the CPU."""
    parts, _, log = runs[("resume", first, second)]
    reference, _, _ = runs[("mlptop-adam-2", "cpu")]
    assert "Run Resume at 01:00" in log
    assert_close(parts, reference, f"resumed {first} -> {second}")
