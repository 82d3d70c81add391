"""The commands around a trained model: run.py's files, --resume, evaluate, predict, export."""
import gzip
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnmnist
from nnmnist.run import checkpoint
from nnmnist.inference.evaluate import build_network
from nnmnist.run.training import evaluate

REPO = Path(__file__).resolve().parents[2]
TIMES = re.compile(r"\d+\.\d+s")
PART_LINE = re.compile(r"^(\d\d:\d\d: |\t dev: |\t tst: |\$ |Dims: )")


def synthetic_mnist(folder, n_train=5600, n_test=300, seed=3):
    """28x28 uint8 images where each class lights its own band of rows, written as gzip IDX
    in the dash naming style (the commands must also find the dot style's names)."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 80, (n, 28, 28)).astype(np.uint8)
        for c in range(10):
            x[y == c, 2 * c + 4:2 * c + 7, :] += 150
        return x, y
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, (x, y) in (("train", make(n_train)), ("t10k", make(n_test))):
        imgs = struct.pack(">IIII", 2051, len(x), 28, 28) + x.tobytes()
        labs = struct.pack(">II", 2049, len(y)) + y.tobytes()
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(imgs))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labs))
    return folder


def cli(*args, module=None, timeout=600, cwd=REPO):
    """run.py, or with `module` (nnmnist.inference.evaluate, ...) its `nnmnist` subcommand."""
    command = ["-m", "nnmnist", module.rsplit(".", 1)[1]] if module else [str(REPO / "run.py")]
    cmd = [sys.executable] + command
    env = {**os.environ, "PYTHONPATH": str(REPO), "NNMNIST_OFFLINE": "1"}
    return subprocess.run(cmd + [str(a) for a in args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def train_cli(tmp, data, *sets):
    fields = ["MaxEpoch=2", "IterPerEpoch=2", "HiddenSize=24", "NetType=mlpvar", "TrainTop=8",
              "TrainCycle=1", "Prune=0.3", "RandomSeed=5", "Kernels=numpy", f"DataDir={data}"]
    args = ["--quiet", "--log-dir", tmp, "--offline"]
    for f in fields + list(sets):
        args += ["--set", f]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    (log,) = [p for p in Path(tmp).glob("*.txt")]
    return log


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    data = synthetic_mnist(root / "data")
    run = root / "run"
    run.mkdir()
    log = train_cli(run, data)
    return data, log


def part_lines(text):
    return [TIMES.sub("", line) for line in text.splitlines() if PART_LINE.match(line)]


def test_run_writes_checkpoint_and_best_beside_the_log(trained):
    _, log = trained
    stem = log.name[:-len(".txt")]
    ckpt, best = log.with_name(stem + ".ckpt.npz"), log.with_name(stem + ".best.npz")
    assert ckpt.is_file() and best.is_file()
    with np.load(ckpt, allow_pickle=False) as z:  # plain npz, no pickles
        meta = json.loads(str(z["meta"]))
    assert meta["kind"] == "checkpoint" and meta["config"]["MaxEpoch"] == 2
    assert (meta["train"]["epoch"], meta["train"]["part"]) == (2, 0)
    assert checkpoint.read(best).kind == "best"
    assert not list(log.parent.glob("*.tmp"))


def test_evaluate_best_reproduces_the_last_dollar_line(trained):
    data, log = trained
    lines = log.read_text().splitlines()
    last_tst = [line for line in lines if line.startswith("\t tst: ")][-1]
    last_dollar = [line for line in lines if line.startswith("$ ")][-1]
    best = log.with_name(log.name[:-4] + ".best.npz")
    r = cli(best, "--data", data, module="nnmnist.inference.evaluate")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    tst = [line for line in out if line.startswith("\t tst: ")]
    assert len(tst) == 1 and [line for line in out if line.startswith("\t dev: ")]
    assert TIMES.sub("", tst[0]) == TIMES.sub("", last_tst)
    acc = re.search(r"acc: (\d+\.\d+)", tst[0])[1]
    assert last_dollar.endswith(f"| {acc}")


def test_resume_continues_the_same_log(trained, tmp_path):
    data, full_log = trained
    log = train_cli(tmp_path, data, "MaxEpoch=1")
    ckpt = log.with_name(log.name[:-4] + ".ckpt.npz")
    r = cli("--quiet", "--offline", "--resume", ckpt, "--set", "MaxEpoch=2")
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.glob("*.txt")) == [log]  # no second log
    assert part_lines(log.read_text()) == part_lines(full_log.read_text())
    records = [json.loads(x) for x in log.with_suffix(".jsonl").read_text().splitlines()]
    assert [r["type"] for r in records].count("resume") == 1
    assert [(r["epoch"], r["part"]) for r in records if r["type"] == "part"] == \
        [(0, 0), (0, 1), (1, 0), (1, 1)]
    # the run is done: resuming again says so, in one line
    r = cli("--quiet", "--offline", "--resume", ckpt)
    assert r.returncode == 2 and "already reached MaxEpoch = 2" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("case, expect", [
    ("shape", r"--set HiddenSize=32 would change the network"),
    ("truncated", r"not a readable \.npz file"),
    ("foreign", r"not an nnmnist model file"),
    ("config", r"a config file cannot be given with --resume"),
])
def test_resume_errors_are_one_line(trained, tmp_path, case, expect):
    _, log = trained
    ckpt = log.with_name(log.name[:-4] + ".ckpt.npz")
    args = ["--quiet", "--offline", "--resume"]
    named = ckpt.name
    if case == "shape":
        args += [ckpt, "--set", "HiddenSize=32"]
    elif case == "truncated":
        bad = tmp_path / "cut.ckpt.npz"
        bad.write_bytes(ckpt.read_bytes()[:5000])
        args += [bad]
        named = bad.name
    elif case == "foreign":
        bad = tmp_path / "other.ckpt.npz"
        np.savez(bad, x=np.zeros(2))
        args += [bad]
        named = bad.name
    else:
        args = [REPO / "configs" / "default.json"] + args + [ckpt]
        named = "default.json"
    r = cli(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert re.search(expect, r.stderr), r.stderr
    assert named in r.stderr


def test_predict_writes_one_row_per_image(trained, tmp_path):
    data, log = trained
    best = log.with_name(log.name[:-4] + ".best.npz")
    out = tmp_path / "preds.csv"
    # the dot style name of the dash-style .gz file on disk
    r = cli(best, data / "t10k-images.idx3-ubyte", "-o", out, module="nnmnist.inference.predict")
    assert r.returncode == 0, r.stderr
    rows = out.read_text().splitlines()
    assert rows[0] == "index,label,probability" and len(rows) == 301
    got = np.array([[float(v) for v in row.split(",")] for row in rows[1:]])
    from nnmnist.data.mnist import read_idx_images
    images = read_idx_images(data / "t10k-images-idx3-ubyte.gz")
    model = nnmnist.load_model(best)
    probs = model.predict_proba(images)
    np.testing.assert_array_equal(got[:, 0], np.arange(300))
    np.testing.assert_array_equal(got[:, 1], probs.argmax(axis=1))
    np.testing.assert_allclose(got[:, 2], probs.max(axis=1), atol=1e-6)
    r = cli(best, data / "missing-images.idx3-ubyte", module="nnmnist.inference.predict")
    assert r.returncode == 2 and "image file not found" in r.stderr


def test_load_model_takes_uint8_or_float_flat_or_square(trained):
    data, log = trained
    from nnmnist.data.mnist import read_idx_images
    images = read_idx_images(data / "t10k-images-idx3-ubyte.gz")
    model = nnmnist.load_model(log.with_name(log.name[:-4] + ".ckpt.npz"))
    p = model.predict(images)
    np.testing.assert_array_equal(model.predict(images.reshape(-1, 28, 28)), p)
    np.testing.assert_array_equal(model.predict(images.astype(np.float32) / 255), p)
    probs = model.predict_proba(images[:5])
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    with pytest.raises(ValueError, match=r"shape \(n, 784\)"):
        model.predict(images[:, :100])


def test_as_input_refuses_integer_pixels_other_than_uint8():
    # int64 pixels of 0..255 taken as already-scaled floats would give confident nonsense.
    from nnmnist.inference.model import as_input
    pixels = np.arange(2 * 784).reshape(2, 784) % 256
    np.testing.assert_array_equal(as_input(pixels.astype(np.uint8), 784),
                                  pixels.astype(np.float32) / 255)
    for dtype in (np.int64, np.int32, np.uint16, bool):
        with pytest.raises(ValueError, match="must be uint8"):
            as_input(pixels.astype(dtype), 784)


def test_export_matches_the_masked_network(trained, tmp_path):
    data, log = trained
    ckpt = log.with_name(log.name[:-4] + ".ckpt.npz")
    out = tmp_path / "model.npz"
    r = cli(ckpt, "-o", out, module="nnmnist.inference.export")
    assert r.returncode == 0, r.stderr
    exported = nnmnist.load_model(out)
    mf = checkpoint.read(ckpt)
    assert checkpoint.read(out).kind == "export"
    assert not any(k.startswith("opt.") for k in checkpoint.read(out).arrays)
    assert exported.widths[0] < 24 and exported.widths[-1] == 10
    # the training network, masks and all, scores the same images
    from nnmnist.data.mnist import read_idx_images
    x = read_idx_images(data / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255
    net, compute = build_network(mf, mf.config())
    from nnmnist.nn.tensor import Flow, Tensor
    h = Tensor(x, requires_grad=False)
    for layer in net.layers[:-1]:
        h = layer.activate(Flow(training=False), h)
    logits = net.layers[-1](Flow(training=False), h).value
    np.testing.assert_allclose(exported.logits(x), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(exported.predict(x), logits.argmax(axis=1))
    # evaluate accepts an export; its accuracy is the checkpoint's
    y = np.zeros(len(x), np.int64)
    a = evaluate(exported, x, y, compute, 100)
    b = evaluate(net, x, y, compute, 100)
    assert a.correct == b.correct
    r = cli(out, "--data", data, module="nnmnist.inference.evaluate")
    assert r.returncode == 0 and r.stdout.count("\t tst: ") == 1, r.stderr


def test_export_is_the_compacted_weights_state_dict_and_version_1_still_loads(trained, tmp_path):
    _, log = trained
    out = tmp_path / "model.npz"
    assert cli(log.with_name(log.name[:-4] + ".ckpt.npz"), "-o", out,
               module="nnmnist.inference.export").returncode == 0
    mf = checkpoint.read(out)
    new = nnmnist.load_model(out)
    assert mf.meta["version"] == checkpoint.VERSION
    assert set(mf.arrays) == {"net." + k for k in new.state_dict()} == {
        f"net.{i}.{p}" for i in range(len(new.widths)) for p in "Wb"}
    # the same export in version 1's layout (layer.{i}.W) loads to the same model
    old = tmp_path / "old.npz"
    meta = {**mf.meta, "version": 1}
    np.savez(old, meta=np.array(json.dumps(meta)),
             **{"layer." + k[len("net."):]: a for k, a in mf.arrays.items()})
    x = np.random.default_rng(0).random((20, 784), dtype=np.float32)
    np.testing.assert_array_equal(nnmnist.load_model(old).logits(x), new.logits(x))
    np.savez(old, meta=np.array(json.dumps({**meta, "version": 0})))
    r = cli(old, "--data", tmp_path, module="nnmnist.inference.evaluate")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "field version = 0" in r.stderr


def test_export_refuses_an_export(trained, tmp_path):
    _, log = trained
    out = tmp_path / "model.npz"
    assert cli(log.with_name(log.name[:-4] + ".best.npz"), "-o", out,
               module="nnmnist.inference.export").returncode == 0
    r = cli(out, "-o", tmp_path / "again.npz", module="nnmnist.inference.export")
    assert r.returncode == 2 and "expected a checkpoint or best file" in r.stderr


def test_real_mnist_best_model_and_export(mnist_dir, tmp_path):
    """On the real data: evaluate reproduces the `$` line of a masked (Compact false) meSimp
    run, and the export predicts the 10,000 test images exactly as the masked network."""
    log = train_cli(tmp_path, mnist_dir, "MaxEpoch=1", "HiddenSize=64", "TrainTop=16",
                    "Compact=false", "Kernels=numba")
    lines = log.read_text().splitlines()
    assert any(line.startswith("Dims: ") and "(64)" in line for line in lines)
    best = log.with_name(log.name[:-4] + ".best.npz")
    r = cli(best, "--data", mnist_dir, module="nnmnist.inference.evaluate")
    assert r.returncode == 0, r.stderr
    tst = [line for line in r.stdout.splitlines() if line.startswith("\t tst: ")]
    last_tst = [line for line in lines if line.startswith("\t tst: ")][-1]
    assert TIMES.sub("", tst[0]) == TIMES.sub("", last_tst)
    out = tmp_path / "model.npz"
    assert cli(best, "-o", out, module="nnmnist.inference.export").returncode == 0
    from nnmnist.data.mnist import load_mnist
    mf = checkpoint.read(best)
    cfg = mf.config()
    splits = load_mnist(cfg, log=lambda *a: None)
    net, compute = build_network(mf, cfg)
    exported = nnmnist.load_model(out)
    assert exported.widths[0] < 64
    from nnmnist.nn.tensor import Flow, Tensor
    h = Tensor(splits.tst_x, requires_grad=False)
    for layer in net.layers[:-1]:
        h = layer.activate(Flow(training=False), h)
    logits = net.layers[-1](Flow(training=False), h).value
    np.testing.assert_allclose(exported.logits(splits.tst_x), logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(exported.predict(splits.tst_x), logits.argmax(axis=1))


def test_sigterm_saves_a_checkpoint_that_resumes_exactly(trained, tmp_path):
    """SIGTERM in the middle of a run: exit 143, the checkpoint of the last part boundary, and
    a resume whose part lines complete the uninterrupted run's."""
    import signal
    import time
    data, _ = trained
    sets = ["MaxEpoch=12", "IterPerEpoch=4", "NetType=mlptop", "HiddenSize=64"]
    full_dir = tmp_path / "full"
    full_dir.mkdir()
    full = train_cli(full_dir, data, *sets)
    cut_dir = tmp_path / "cut"
    cut_dir.mkdir()
    args = ["--quiet", "--log-dir", cut_dir, "--offline"]
    for f in ["IterPerEpoch=2", "HiddenSize=24", "NetType=mlpvar", "TrainTop=8", "TrainCycle=1",
              "Prune=0.3", "RandomSeed=5", "Kernels=numpy", f"DataDir={data}"] + sets:
        args += ["--set", f]
    env = {**os.environ, "PYTHONPATH": str(REPO), "NNMNIST_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py")] + [str(a) for a in args],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(cut_dir.glob("*.ckpt.npz")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run ended before SIGTERM arrived (a very fast machine)")
    assert proc.returncode == 143, err
    (ckpt,) = cut_dir.glob("*.ckpt.npz")
    log = ckpt.with_name(ckpt.name[:-len(".ckpt.npz")] + ".txt")
    assert "Run stopped: interrupted by SIGTERM" in log.read_text()
    r = cli("--quiet", "--offline", "--resume", ckpt)
    assert r.returncode == 0, r.stderr
    assert part_lines(log.read_text()) == part_lines(full.read_text())


def test_export_of_a_compacted_checkpoint_names_the_widths_as_built(trained, tmp_path):
    _, log = trained
    ckpt = log.with_name(log.name[:-4] + ".ckpt.npz")
    r = cli(ckpt, "-o", tmp_path / "model.npz", module="nnmnist.inference.export")
    assert r.returncode == 0, r.stderr
    widths = checkpoint.read(tmp_path / "model.npz").meta["network"]["widths"]
    assert widths[0] < 24  # the checkpoint was compacted already
    assert r.stdout.strip().endswith(f"layer widths {widths} (built as [24, 24, 10])")


def test_resume_and_evaluate_find_a_relative_data_dir_from_another_folder(trained, tmp_path):
    """DataDir and a data file name given relative to the folder the run started in: resume
    and evaluate, started elsewhere, read the same files (here, offline: else a fetch)."""
    import shutil
    data, full_log = trained
    work = tmp_path / "work"
    shutil.copytree(data, work / "mnist")
    (work / "runs").mkdir()
    args = ["--quiet", "--log-dir", "runs", "--offline"]
    for f in ["MaxEpoch=1", "IterPerEpoch=2", "HiddenSize=24", "NetType=mlpvar", "TrainTop=8",
              "TrainCycle=1", "Prune=0.3", "RandomSeed=5", "Kernels=numpy", "DataDir=mnist",
              "TestFile=mnist/t10k-images-idx3-ubyte.gz"]:
        args += ["--set", f]
    r = cli(*args, cwd=work)
    assert r.returncode == 0, r.stderr
    (log,) = (work / "runs").glob("*.txt")
    ckpt = log.with_name(log.name[:-4] + ".ckpt.npz")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "mnist").mkdir(parents=True)  # an empty folder of the same name is not used
    r = cli("--quiet", "--offline", "--resume", ckpt, "--set", "MaxEpoch=2", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert part_lines(log.read_text()) == part_lines(full_log.read_text())
    r = cli(log.with_name(log.name[:-4] + ".best.npz"), module="nnmnist.inference.evaluate", cwd=elsewhere)
    assert r.returncode == 0 and r.stdout.count("\t tst: ") == 1, r.stderr
    assert checkpoint.read(ckpt).meta["train"]["data_dir"] == str(work / "mnist")


def test_resume_after_kill_9_keeps_each_part_once(trained, tmp_path):
    """The files a run killed outright leaves: its checkpoint at an epoch's end, its log and
    .jsonl further on. Made here exactly: a run to epoch 1, a copy of its checkpoint, the run
    continued to the end, then the copy put back. Resuming cuts both files back first."""
    import shutil
    data, full_log = trained
    log = train_cli(tmp_path, data, "MaxEpoch=1")
    ckpt = log.with_name(log.name[:-4] + ".ckpt.npz")
    shutil.copy(ckpt, tmp_path / "kept.npz")
    assert cli("--quiet", "--offline", "--resume", ckpt, "--set", "MaxEpoch=2").returncode == 0
    shutil.copy(tmp_path / "kept.npz", ckpt)  # the run is "killed" with epoch 1 logged
    r = cli("--quiet", "--offline", "--resume", ckpt, "--set", "MaxEpoch=2")
    assert r.returncode == 0, r.stderr
    assert part_lines(log.read_text()) == part_lines(full_log.read_text())
    records = [json.loads(x) for x in log.with_suffix(".jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["part"]) for r in records if r["type"] == "part"] == \
        [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r["type"] for r in records].count("summary") == 1
    assert [r["type"] for r in records].count("resume") == 1


def test_resume_refuses_a_new_seed_in_one_line(trained):
    _, log = trained
    ckpt = log.with_name(log.name[:-4] + ".ckpt.npz")
    r = cli("--quiet", "--offline", "--resume", ckpt, "--set", "RandomSeed=6", "--set", "MaxEpoch=3")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--set RandomSeed=6 cannot be used with --resume" in r.stderr
