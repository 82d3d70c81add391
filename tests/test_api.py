"""The public API: names exported by `nnmnist`, `train`, custom networks, `meprop_backward`."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnmnist
from nnmnist import (Config, Dense, MaskedDense, Network, RandomK, RunLog, TopK, UnifiedTopK,
                     get_compute, meprop_backward, train)
from nnmnist.run.training import train_and_evaluate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def default_threads():
    """`train` applies the config's Threads to this process, as run.py does; put the
    libraries' defaults back so that the other tests see them."""
    yield
    from nnmnist.kernels import set_num_threads
    set_num_threads(0)


def test_every_exported_name_resolves():
    for name in nnmnist.__all__:
        assert getattr(nnmnist, name) is not None, name
    with pytest.raises(AttributeError):
        nnmnist.NoSuchThing  # noqa: B018


def test_exported_names_survive_importing_every_submodule():
    """A submodule named like an exported function would replace it on import (the import
    system sets the package attribute): after every module is loaded, each name still
    resolves to the API's object."""
    out = subprocess.run([sys.executable, "-c", (
        "import importlib, pkgutil, nnmnist\n"
        "for m in pkgutil.walk_packages(nnmnist.__path__, 'nnmnist.'):\n"
        "    if m.name != 'nnmnist.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "import types\n"
        "bad = [n for n in nnmnist.__all__ if isinstance(getattr(nnmnist, n), types.ModuleType)]\n"
        "print(bad)")], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_importing_the_package_stays_light():
    out = subprocess.run([sys.executable, "-c", "import sys, nnmnist; print('numba' in sys.modules)"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def strip_times(lines):
    return [re.sub(r"\d+\.\d+s", "T", line) for line in lines]


def test_train_returns_the_network_and_the_summary_of_a_run_py_run(tiny_splits):
    fields = dict(NetType="mlpvar", HiddenSize=32, TrainTop=8, MaxEpoch=2, IterPerEpoch=2,
                  MinibatchSize=30, RandomSeed=4, TrainCycle=1, Kernels="numpy")
    log = RunLog(console=False)
    network, summary = train(fields, data=tiny_splits, log=log)
    reference_log = RunLog(console=False)
    reference = train_and_evaluate(Config(**fields), tiny_splits, reference_log)
    assert strip_times(log.lines) == strip_times(reference_log.lines)
    assert (summary.best_dev, summary.test_at_best) == (reference.best_dev, reference.test_at_best)
    assert isinstance(network, nnmnist.MLP) and network.dims() == summary.dims
    assert summary.best_dev > 60


def test_train_a_custom_network(tiny_splits):
    cfg = Config(MaxEpoch=2, IterPerEpoch=2, MinibatchSize=30, RandomSeed=2)
    compute = get_compute("cpu", "numba")
    rng = np.random.default_rng(0)
    widths = [784, 48, 40, 32, 24]
    rules = [TopK(12), UnifiedTopK(10), RandomK(16), None]
    layers = [Dense(a, b, rng, compute, r) for a, b, r in zip(widths, widths[1:], rules)]
    layers[1] = MaskedDense(48, 40, rng, compute, UnifiedTopK(10))
    layers.append(Dense(24, 10, rng, compute))
    net = Network(layers, compute, rng)
    before = net.layers[0].W.value.copy()
    trained, summary = train(cfg, data=tiny_splits, network=net, compute=compute)
    assert trained is net and summary.best_dev > 60
    assert summary.param_count == sum(a * b + b for a, b in zip(widths + [10], widths[1:] + [10]))
    assert not np.array_equal(before, net.layers[0].W.value)
    assert net.layers[1].examples > 0  # the masked layer counted its examples


def naive_meprop(x, W, dy, k, unified):
    kept = np.zeros_like(dy)
    if unified:
        score = np.abs(dy).sum(axis=0)
        cols = sorted(sorted(range(dy.shape[1]), key=lambda j: (-score[j], j))[:k])
        kept[:, cols] = dy[:, cols]
    else:
        for r in range(dy.shape[0]):
            cols = sorted(range(dy.shape[1]), key=lambda j: (-abs(dy[r, j]), j))[:k]
            kept[r, cols] = dy[r, cols]
    dx = np.zeros((x.shape[0], W.shape[1]))
    dW = np.zeros(W.shape)
    for r in range(dy.shape[0]):
        for j in range(dy.shape[1]):
            dx[r] += kept[r, j] * W[j]
            dW[j] += kept[r, j] * x[r]
    return dx, dW


@pytest.mark.parametrize("unified", [False, True])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_meprop_backward_on_its_own(unified, k):
    rng = np.random.default_rng(k)
    x, W, dy = rng.normal(size=(5, 4)), rng.normal(size=(6, 4)), rng.normal(size=(5, 6))
    dx, dW = meprop_backward(x, W, dy, k, unified=unified)
    want_dx, want_dW = naive_meprop(x, W, dy, k, unified)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dW, want_dW, rtol=1e-12, atol=1e-12)
    if k == 6:  # every entry kept: the ordinary backward
        np.testing.assert_allclose(dx, dy @ W, rtol=1e-12)
        np.testing.assert_allclose(dW, dy.T @ x, rtol=1e-12)


def test_meprop_backward_errors():
    x, W, dy = np.zeros((2, 3)), np.zeros((4, 3)), np.zeros((2, 4))
    with pytest.raises(ValueError, match="k = 5"):
        meprop_backward(x, W, dy, 5)
    with pytest.raises(ValueError, match="shapes"):
        meprop_backward(x, W.T, dy, 2)
    for k in (2.5, True, "2"):  # not silently truncated to a whole number
        with pytest.raises(ValueError, match="k = "):
            meprop_backward(x, W, dy, k)


def test_the_example_trains_on_mnist(mnist_dir):
    out = subprocess.run([sys.executable, str(REPO / "examples" / "custom_network.py"),
                          "--epochs", "1", "--parts", "1", "--limit", "3000", "--quiet",
                          "--data", str(mnist_dir)],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr
    m = re.search(r"(\d+) parameters; best dev accuracy ([\d.]+), test accuracy at it ([\d.]+)",
                  out.stdout)
    assert m and int(m[1]) == 784 * 600 + 600 + 600 * 400 + 400 + 400 * 300 + 300 \
        + 300 * 200 + 200 + 200 * 10 + 10
    assert float(m[2]) > 70 and float(m[3]) > 70


def test_the_example_reports_a_bad_argument_in_one_line(mnist_dir):
    out = subprocess.run([sys.executable, str(REPO / "examples" / "custom_network.py"),
                          "--epochs", "0", "--data", str(mnist_dir)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["error: config: field MaxEpoch = 0: must be >= 1"]


def test_the_documented_example_runs():
    import doctest

    import nnmnist.api
    result = doctest.testmod(nnmnist.api)
    assert result.attempted >= 3 and result.failed == 0


def test_train_applies_threads_as_run_py_does(tmp_path, capsys, monkeypatch):
    """`train` caps Threads at the usable cores as run.py does (with its warning), so the same
    config gives run.py's log: the same header and, BLAS running on as many threads, the same
    figures. Here the machine is said to have one core and the config asks for two."""
    import gzip
    import json
    import struct
    from nnmnist.run import command, procs
    monkeypatch.setattr(procs, "usable_cores", lambda: 1)
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for name, magic, n in (("train-images.idx3-ubyte.gz", 2051, 5100),
                           ("t10k-images.idx3-ubyte.gz", 2051, 200),
                           ("train-labels.idx1-ubyte.gz", 2049, 5100),
                           ("t10k-labels.idx1-ubyte.gz", 2049, 200)):
        with gzip.open(data / name, "wb") as f:
            if magic == 2051:
                f.write(struct.pack(">IIII", magic, n, 28, 28)
                        + rng.integers(0, 256, n * 784, np.uint8).tobytes())
            else:
                f.write(struct.pack(">II", magic, n) + rng.integers(0, 10, n, np.uint8).tobytes())
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"NetType": "mlptop", "HiddenSize": 64, "TrainTop": 8,
                                  "MaxEpoch": 1, "IterPerEpoch": 2, "MinibatchSize": 50,
                                  "RandomSeed": 3, "Threads": 2, "DataDir": str(data)}))
    (tmp_path / "logs").mkdir()
    assert command.main([str(config), "--quiet", "--offline", "--log-dir",
                         str(tmp_path / "logs")]) == 0
    (run_py_log,) = (tmp_path / "logs").glob("*.txt")
    capsys.readouterr()
    log = RunLog(console=False)
    train(config, log=log)
    assert capsys.readouterr().err.startswith(
        f"warning: {config}: Threads = 2 is more than the 1 cores this process may use")
    assert "Threads: 1" in log.lines
    assert strip_times(log.lines) == strip_times(run_py_log.read_text().splitlines())
