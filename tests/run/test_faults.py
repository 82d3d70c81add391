"""Failures a careful user runs into: full disks, divergence, too many threads, signals, killed
sweeps, file modes, odd data files and odd configs. Each gives one line and keeps what it can."""
import contextlib
import errno
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nnmnist.run import command as cli, log as runlog

from nnmnist.data import mnist as data, fetch

from nnmnist import fsio

from nnmnist.experiments import sweep
from nnmnist.run.config import Config
from nnmnist.errors import UserError
from nnmnist.kernels import set_num_threads as restore_threads

REPO = Path(__file__).resolve().parents[2]
TINY = {"HiddenSize": 8, "MaxEpoch": 1, "IterPerEpoch": 1, "MinibatchSize": 500,
        "Kernels": "numpy", "RandomSeed": 1}


def write_tiny_mnist(folder):
    """5,100 training and 50 test images of 2x2 pixels (the first 5,000 are the dev set)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", 5100), ("t10k", 50)):
        pixels = rng.integers(0, 256, n * 4, np.uint8).tobytes()
        labels = rng.integers(0, 10, n, np.uint8).tobytes()
        (folder / f"{stem}-images.idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 2, 2) + pixels)
        (folder / f"{stem}-labels.idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels)
    return folder


@pytest.fixture
def base(tmp_path):
    """A config on tiny data; returns its path."""
    write_tiny_mnist(tmp_path / "data")
    path = tmp_path / "base.json"
    path.write_text(json.dumps({**TINY, "DataDir": str(tmp_path / "data")}))
    return path


def run_cli(capsys, config, *sets, log_dir):
    argv = [str(config), "--quiet", "--offline", "--log-dir", str(log_dir)]
    for s in sets:
        argv += ["--set", s]
    try:
        rc = cli.main(argv)
    finally:  # the run set this process's thread counts; later tests expect the defaults
        restore_threads(0)
    out, err = capsys.readouterr()
    return rc, out, err


def strict_records(path):
    """Every line of a .jsonl as strict JSON (a bare NaN or Infinity fails)."""
    def refuse(token):
        raise AssertionError(f"{path}: non-standard JSON token {token}")
    return [json.loads(line, parse_constant=refuse) for line in Path(path).read_text().splitlines()]


def only(folder, pattern):
    found = sorted(Path(folder).glob(pattern))
    assert len(found) == 1, found
    return found[0]


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# ---------------------------------------------------------------- a small file system

@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs, where this process may mount one (root on Linux); else the test skips."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a small file system here ({exc})")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({done.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


@pytest.fixture
def enospc_after(monkeypatch):
    """Writes through fsio succeed for `budget` bytes, then write part of a chunk and fail with
    ENOSPC, as a disk that fills up does."""
    def arm(budget):
        left = [budget]
        real = fsio._write_some

        def write_some(fd, view):
            if left[0] <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            chunk = view if len(view) <= left[0] else view[:max(1, left[0] // 2)]
            n = real(fd, chunk)
            left[0] -= n
            return n
        monkeypatch.setattr(fsio, "_write_some", write_some)
    return arm


def check_disk_full_run(rc, err, log_dir):
    assert rc == 1
    assert err.count("\n") == 1 and "Traceback" not in err, err
    # The file named is whichever filled the disk: the log, the metrics or a checkpoint.
    assert err.startswith("error: ") and f"{log_dir}/" in err and "No space left on device" in err
    for ckpt in log_dir.glob("*.npz"):  # a checkpoint is its last good version, never half of one
        with np.load(ckpt) as whole:
            assert "meta" in whole.files
    log_file = only(log_dir, "*.txt")
    assert log_file.read_text().endswith("\n")  # every line whole
    records = strict_records(only(log_dir, "*.jsonl"))  # every record whole
    assert records[0]["type"] == "start"


def test_disk_full_on_a_small_file_system(small_disk, base, capsys):
    rc, _, err = run_cli(capsys, base, "MaxEpoch=100000", "IterPerEpoch=8", log_dir=small_disk)
    check_disk_full_run(rc, err, small_disk)


def test_disk_full_through_a_failing_write(tmp_path, base, capsys, enospc_after):
    enospc_after(6000)
    rc, _, err = run_cli(capsys, base, "MaxEpoch=1000", "IterPerEpoch=8", log_dir=tmp_path)
    check_disk_full_run(rc, err, tmp_path)


def test_atomic_write_keeps_the_last_good_version(tmp_path, enospc_after):
    target = tmp_path / "model.ckpt"
    fsio.atomic_write(target, b"good")
    enospc_after(10)
    with pytest.raises(UserError) as info:
        fsio.atomic_write(target, b"x" * 100)
    assert str(info.value) == f"cannot write {target}: No space left on device"
    assert info.value.exit_code != 0
    assert target.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]  # no temp file left


def test_atomic_write_on_a_full_file_system(small_disk):
    target = small_disk / "model.ckpt"
    fsio.atomic_write(target, b"good")
    with pytest.raises(UserError, match="No space left on device"):
        fsio.atomic_write(target, os.urandom(200_000))
    assert target.read_bytes() == b"good"
    assert sorted(p.name for p in small_disk.iterdir()) == ["model.ckpt"]


def test_sweep_results_write_error_is_one_line(base, tmp_path, capsys, enospc_after):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": str(base), "grid": {"RandomSeed": [1]}}))
    enospc_after(20)  # the lock file's PID fits, results.json does not
    rc = sweep.main([str(spec), "--out", str(tmp_path / "out"), "--offline"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot write {tmp_path / 'out' / 'results.json'}: No space left on device" in err
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_sweep_on_a_full_disk_keeps_the_runs_reason(small_disk, base, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": str(base), "set": {"MaxEpoch": 100000, "IterPerEpoch": 8}}))
    done = subprocess.run([sys.executable, "-m", "nnmnist", "sweep", str(spec), "--out", str(small_disk),
                           "--offline"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    reason = (small_disk / "runs" / "base" / "stderr.txt").read_text()
    assert reason.startswith("error: cannot write ") and "No space left on device" in reason
    assert reason.count("\n") == 1 and "\0" not in reason


# ---------------------------------------------------------------- threads

def test_threads_capped_at_the_usable_cores(tmp_path, base, capsys, monkeypatch):
    import nnmnist.kernels as kernels
    asked = []
    monkeypatch.setattr(kernels, "set_num_threads", lambda n: asked.append(n) or n)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    rc, _, err = run_cli(capsys, base, "Threads=64", log_dir=tmp_path)
    assert rc == 0 and asked == [2]
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "Threads = 64" in warnings[0] and "using 2" in warnings[0]
    assert "Threads: 2" in only(tmp_path, "*.txt").read_text().splitlines()
    rc, _, err = run_cli(capsys, base, "Threads=2", log_dir=tmp_path)
    assert rc == 0 and asked == [2, 2] and "warning" not in err


# ---------------------------------------------------------------- divergence and strict JSON

def test_nan_loss_stops_the_run(tmp_path, base, capsys):
    rc, _, err = run_cli(capsys, base, "OptType=sgd", "LearningRate=1e30", "ClipBound=0",
                         "MaxEpoch=3", "IterPerEpoch=2", log_dir=tmp_path)
    assert rc == 1 and err.count("\n") == 1, err
    # Each part is one minibatch: the first is computed before any update, the second diverged.
    assert "diverged at epoch 0 part 1" in err and "LearningRate" in err
    assert "ClipBound" in err and "AllowDivergence" in err
    lines = only(tmp_path, "*.txt").read_text().splitlines()
    assert lines[-1].startswith("Run stopped: training diverged at epoch 0 part 1")
    assert lines[-2].startswith(("00:01: loss: nan", "00:01: loss: inf"))
    records = strict_records(only(tmp_path, "*.jsonl"))
    assert [r["type"] for r in records] == ["start", "part", "summary"]  # part 0 kept
    assert records[-1]["stopped"] == "diverged"
    assert "epoch 0 part 1" in records[-1]["reason"] and records[-1]["epochs"] == 0


def test_huge_finite_loss_stops_the_run(tmp_path, base, capsys):
    rc, _, err = run_cli(capsys, base, "LearningRate=1e9", "MaxEpoch=20", "IterPerEpoch=4",
                         log_dir=tmp_path)
    assert rc == 1 and "diverged" in err and "adam" in err


def test_allow_divergence_trains_on_and_writes_null(tmp_path, base, capsys):
    rc, _, err = run_cli(capsys, base, "OptType=sgd", "LearningRate=1e30", "ClipBound=0",
                         "MaxEpoch=2", "IterPerEpoch=2", "AllowDivergence=true", log_dir=tmp_path)
    assert rc == 0, err
    text = only(tmp_path, "*.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    records = strict_records(only(tmp_path, "*.jsonl"))
    parts = [r for r in records if r["type"] == "part"]
    assert len(parts) == 4 and parts[-1]["train_loss"] is None
    assert records[-1]["type"] == "summary" and records[-1]["stopped"] == "completed"


# ---------------------------------------------------------------- signals

def default_sigint():
    """In the child: Ctrl-C's default action, which a test sends. A shell without job control
    (`pytest ... &` in a script) starts its background jobs with SIGINT ignored, and an
    ignored SIGINT is inherited: Python would then never raise KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run(tmp_path, base, *sets):
    """run.py in a child process, long enough to be stopped; returns it once training started."""
    argv = [sys.executable, str(REPO / "run.py"), str(base), "--quiet", "--offline",
            "--log-dir", str(tmp_path), "--set", "MaxEpoch=100000", "--set", "MinibatchSize=10"]
    for s in sets:
        argv += ["--set", s]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            preexec_fn=default_sigint)
    wait_for(lambda: any("Run Start" in p.read_text() for p in tmp_path.glob("*.txt")), proc)
    return proc


def wait_for(condition, proc=None, seconds=60):
    end = time.monotonic() + seconds
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended early: {proc.communicate()}")
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.1)


@pytest.mark.parametrize("signum, status, name", [(signal.SIGTERM, 143, "SIGTERM"),
                                                   (signal.SIGINT, 130, "Ctrl-C")])
def test_signal_stops_a_run_with_a_mark(tmp_path, base, signum, status, name):
    proc = start_run(tmp_path, base)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted")
    lines = only(tmp_path, "*.txt").read_text().splitlines()
    assert lines[-1].startswith(f"Run stopped: interrupted by {name} during epoch ")
    records = strict_records(only(tmp_path, "*.jsonl"))
    assert records[-1]["type"] == "summary" and records[-1]["stopped"] == "interrupted"
    assert name in records[-1]["reason"]


# ---------------------------------------------------------------- sweeps: lock, orphans, modes

def children_of(pid):
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def running(pid):
    """Alive and not a zombie (an orphan's zombie may wait for a reaper that never comes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def lock_is_free(out):
    """Whether a new sweep could take OUT's lock now (a process that has just ended may still
    be releasing it)."""
    try:
        with sweep.SweepLock(out):
            return True
    except UserError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_sweep_takes_its_runs_along_and_locks_its_folder(tmp_path, base):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": str(base), "set": {"MaxEpoch": 100000, "MinibatchSize": 10}}))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "nnmnist", "sweep", str(spec), "--out", str(out), "--offline"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        run_dir = out / "runs" / "base"
        wait_for(lambda: any("Run Start" in p.read_text() for p in run_dir.glob("*.txt")), first)
        [run] = children_of(first.pid)
        assert (out / ".sweep.lock").read_text().strip() == str(first.pid)

        second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 2 and second.stderr.count("\n") == 1
        assert f"in use by another sweep (PID {first.pid})" in second.stderr
        assert any("Run Start" in p.read_text() for p in run_dir.glob("*.txt"))  # left alone

        first.kill()
        first.wait()
        wait_for(lambda: not running(run), seconds=30)
        log = only(run_dir, "*-log-*.txt").read_text().splitlines()
        assert log[-1].startswith("Run stopped: interrupted by SIGTERM")
        wait_for(lambda: lock_is_free(out), seconds=30)  # free again once both are gone
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_a_live_run_keeps_the_lock(tmp_path):
    """A run inherits the lock: while it lives, even with its sweep gone, the folder stays locked."""
    lock = sweep.SweepLock(tmp_path).acquire()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             pass_fds=sweep.SweepLock.held_fds())
    try:
        lock.release()
        with pytest.raises(UserError, match=f"PID {os.getpid()}"):
            sweep.SweepLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
    sweep.SweepLock(tmp_path).acquire().release()


class InstantExecutor(sweep.Executor):
    """Every run 'finishes' at once with a made-up summary: for tests of the driver alone."""

    def submit(self, task):
        import concurrent.futures as cf
        fut = cf.Future()
        fut.set_result(sweep.RunOutcome(task.run_id, 0, 0.0, {"best_dev": 50.0, "test_at_best": 40.0,
                                                               "seed": 1, "epochs": 1}))
        return fut

    def shutdown(self, cancel=False):
        pass


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_files_follow_the_umask(tmp_path, base, mask):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": str(base), "grid": {"RandomSeed": [1, 2]}}))
    want = 0o666 & ~mask
    with umask(mask):
        plan = sweep.build_plan(spec, tmp_path / "out", offline=True)
        assert sweep.run_sweep(plan, 1, executor=InstantExecutor(), echo=lambda s: None) == 0
        assert (tmp_path / "out" / "results.csv").stat().st_mode & 0o777 == want
        fsio.atomic_write(tmp_path / "ckpt", b"x")
        with runlog.open_run_log(tmp_path, "r", console=False) as log:
            log("line")
    for path in (tmp_path / "out" / "results.csv", tmp_path / "out" / "results.json",
                 tmp_path / "ckpt", log.path, log.metrics_path):
        assert path.stat().st_mode & 0o777 == want, path


def test_another_spec_into_the_same_out_is_refused(tmp_path, base, capsys):
    first = tmp_path / "first.json"
    first.write_text(json.dumps({"base": str(base), "grid": {"RandomSeed": [1, 2]}}))
    second = tmp_path / "second.json"
    second.write_text(json.dumps({"base": str(base), "grid": {"HiddenSize": [4]}}))
    out = tmp_path / "out"
    plan = sweep.build_plan(first, out, offline=True)
    assert sweep.run_sweep(plan, 1, executor=InstantExecutor(), echo=lambda s: None) == 0
    before = (out / "results.csv").read_text()
    rc = sweep.main([str(second), "--out", str(out), "--offline"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "another spec" in err and "RandomSeed=1" in err
    assert (out / "results.csv").read_text() == before


def test_sweep_field_hint_only_when_close(tmp_path, base, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": str(base), "grid": {"Qwxz": [1]}}))
    assert sweep.main([str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown field 'Qwxz'" in err and "did you mean" not in err


# ---------------------------------------------------------------- data files that are not files

@pytest.mark.parametrize("kind", ["device", "folder", "broken link"])
def test_non_regular_data_file_is_an_error_not_a_download(tmp_path, monkeypatch, kind):
    folder = write_tiny_mnist(tmp_path / "data")
    target = folder / "train-images.idx3-ubyte"
    target.unlink()
    if kind == "device":
        target.symlink_to("/dev/zero")
        what = "a character device"
    elif kind == "folder":
        target.mkdir()
        what = "a folder"
    else:
        target.symlink_to(tmp_path / "nowhere")
        what = "a broken symbolic link"

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded over or beside the user's file")
    monkeypatch.setattr(fetch, "fetch_mnist", no_download)
    cfg = Config(DataDir=str(folder))
    with pytest.raises(UserError) as info:
        data.load_mnist(cfg, allow_fetch=True, log=lambda *a: None)
    assert str(info.value).startswith(f"{target}: is {what}, not an MNIST data file")


# ---------------------------------------------------------------- odd configs

def test_deeply_nested_config_is_one_line(tmp_path, base, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text('{"HiddenSize": ' + "[" * 100_000 + "]" * 100_000 + "}")
    rc, _, err = run_cli(capsys, deep, log_dir=tmp_path)
    assert rc == 2 and err == f"error: {deep}: JSON nested too deeply\n"
    rc, _, err = run_cli(capsys, base, "HiddenSize=" + "[" * 100_000 + "]" * 100_000, log_dir=tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "nested too deeply" in err
    spec = tmp_path / "spec.json"
    spec.write_text('{"grid": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert sweep.main([str(spec), "--dry-run"]) == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_huge_bad_value_is_cut_short(tmp_path, base, capsys):
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"NetType": "x" * 300_000}))
    rc, _, err = run_cli(capsys, huge, log_dir=tmp_path)
    assert rc == 2 and err.count("\n") == 1 and len(err) < 400
    assert "NetType" in err and "300002 characters" in err
    huge.write_text(json.dumps({"y" * 300_000: 1}))
    rc, _, err = run_cli(capsys, huge, log_dir=tmp_path)
    assert rc == 2 and len(err) < 400 and "unknown field" in err


@pytest.mark.parametrize("text, key", [('{"MaxEpoch": 1, "MaxEpoch": 2}', "MaxEpoch"),
                                       ('{"MaxEpoch": 1, "maxepoch": 2}', "MaxEpoch")])
def test_duplicate_config_keys_are_an_error(tmp_path, capsys, text, key):
    path = tmp_path / "dup.json"
    path.write_text(text)
    rc, _, err = run_cli(capsys, path, log_dir=tmp_path)
    assert rc == 2 and err.count("\n") == 1 and key in err and "twice" in err
    rc, _, err = run_cli(capsys, path, "LearningRate=0.01", log_dir=tmp_path)
    assert rc == 2 and key in err and "twice" in err


def test_config_from_a_device_or_a_pipe(tmp_path, base, capsys):
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    rc, _, err = run_cli(capsys, zero, log_dir=tmp_path)
    assert rc == 2 and err == f"error: {zero}: more than 64 MB; not a config file\n"
    read, write = os.pipe()
    os.write(write, json.dumps({**TINY, "DataDir": str(tmp_path / "data")}).encode())
    os.close(write)
    try:
        rc, _, err = run_cli(capsys, f"/dev/fd/{read}", log_dir=tmp_path)
    finally:
        os.close(read)
    assert rc == 0, err


def test_duplicate_spec_keys_are_an_error(tmp_path, base, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text('{"grid": {"RandomSeed": [1]}, "grid": {"RandomSeed": [2]}}')
    assert sweep.main([str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and '"grid" appears twice' in err


# ---------------------------------------------------------------- log names

def test_log_name_taken_between_check_and_open(tmp_path, monkeypatch):
    taken = tmp_path / "r-log-20200101-000000.txt"
    taken.write_text("another run's log\n")
    monkeypatch.setattr(runlog.Path, "exists", lambda self: False)  # the check sees it free
    with runlog.open_run_log(tmp_path, "r", console=False, stamp="20200101-000000") as log:
        log("mine")
    monkeypatch.undo()
    assert log.path.name == "r-log-20200101-000000-1.txt"
    assert taken.read_text() == "another run's log\n"
    assert not (tmp_path / "r-log-20200101-000000.jsonl").exists()
