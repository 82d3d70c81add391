"""One writer per run, memory checked before it is spent, a first run that compiles only what
it uses and says so, and the Checkpoint field: each through the command a user runs."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

from nnmnist.data.mnist import Splits
from nnmnist.errors import UserError
from nnmnist.run import lifecycle, memory
from nnmnist.run.config import Config
from nnmnist.run.training import Trainer

from test_faults import REPO, base, only, run_cli, strict_records, wait_for  # noqa: F401 (fixture)

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def run_py(*argv, env=ENV, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, argv)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def one_error_line(err):
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err.strip()


def resume_cli(capsys, ckpt):
    from nnmnist.run import command
    rc = command.main(["--resume", str(ckpt), "--quiet", "--offline"])
    return rc, *capsys.readouterr()


def files_of(folder):
    """name -> bytes of every file in folder."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------- one writer per run

@pytest.fixture
def stopped_run(tmp_path, base):
    """A real run that has written its first checkpoint, held still (SIGSTOP) so that its files
    do not move; yields (process, checkpoint path) and kills it afterwards."""
    logs = tmp_path / "logs"
    logs.mkdir()
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), str(base), "--quiet", "--offline",
                             "--log-dir", str(logs), "--set", "MaxEpoch=100000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        wait_for(lambda: list(logs.glob("*.ckpt.npz")), proc)
        proc.send_signal(signal.SIGSTOP)
        yield proc, only(logs, "*.ckpt.npz")
    finally:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_and_changes_nothing(stopped_run):
    proc, ckpt = stopped_run
    lock = ckpt.with_name(ckpt.name.replace(".ckpt.npz", ".lock"))
    assert lock.read_text().strip() == str(proc.pid)
    before = files_of(ckpt.parent)
    done = run_py("--resume", ckpt, "--quiet", "--offline", "--set", "MaxEpoch=100001")
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert f"process {proc.pid}" in line and str(ckpt) in line and lock.name in line
    assert files_of(ckpt.parent) == before  # not a byte changed, the lock still the first's


def test_two_resumes_of_one_checkpoint_write_each_part_once(tmp_path, base, capsys):
    """The scheduler's double start: two resumes of one checkpoint at once. One trains; the
    other is refused (or, if it came second, finds the run finished); the log has each part once."""
    logs = tmp_path / "logs"
    logs.mkdir()
    assert run_cli(capsys, base, "MaxEpoch=1", "IterPerEpoch=3", log_dir=logs)[0] == 0
    ckpt = only(logs, "*.ckpt.npz")
    argv = [sys.executable, str(REPO / "run.py"), "--resume", str(ckpt), "--quiet", "--offline",
            "--set", "MaxEpoch=4"]
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    codes = sorted(p.wait(timeout=300) for p in procs)
    errs = [p.stderr.read() for p in procs]
    assert codes == [0, 2], errs
    assert any("is being written by process" in e or "already reached MaxEpoch" in e for e in errs)
    parts = [r for r in strict_records(only(logs, "*.jsonl")) if r["type"] == "part"]
    assert [(r["epoch"], r["part"]) for r in parts] == [(e, p) for e in range(4) for p in range(3)]
    log = only(logs, "*.txt").read_text()
    assert log.count("\n03:02: ") == 1 and not list(logs.glob("*.lock"))


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, base, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    assert run_cli(capsys, base, "MaxEpoch=1", log_dir=logs)[0] == 0
    ckpt = only(logs, "*.ckpt.npz")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    lock = ckpt.with_name(ckpt.name.replace(".ckpt.npz", ".lock"))
    lock.write_text(gone + "\n")  # what `kill -9` leaves behind
    done = run_py("--resume", ckpt, "--quiet", "--offline", "--set", "MaxEpoch=2")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == (f"note: {lock}: taking over the lock of process {gone}, "
                                   "which ended without releasing it")
    assert not lock.exists()  # released when the run ended


def test_the_lock_is_gone_after_a_run_and_held_during_it(tmp_path, base, capsys, monkeypatch):
    seen = []
    real = Trainer.train_part

    def train_part(self, *args, **kwargs):
        seen.extend(p.read_text().strip() for p in tmp_path.glob("*.lock"))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Trainer, "train_part", train_part)
    assert run_cli(capsys, base, log_dir=tmp_path)[0] == 0
    assert seen and set(seen) == {str(os.getpid())}
    assert not list(tmp_path.glob("*.lock"))


# ---------------------------------------------------------------- memory

def small_splits(n_train, n_in=784, seed=0):
    rng = np.random.default_rng(seed)
    x = lambda n: rng.random((n, n_in), dtype=np.float32)  # noqa: E731
    y = lambda n: rng.integers(0, 10, n).astype(np.int64)  # noqa: E731
    return Splits(trn_x=x(n_train), trn_y=y(n_train), dev_x=x(200), dev_y=y(200),
                  tst_x=x(200), tst_y=y(200), n_in=n_in)


@pytest.mark.parametrize("fields", [dict(NetType="mlp", OptType="adam", HiddenSize=400),
                                    dict(NetType="mlptop", OptType="adagrad", HiddenSize=600,
                                         TrainTop=30, MinibatchSize=50)])
def test_the_estimate_covers_what_a_run_allocates(tmp_path, fields):
    """Build and train one part under tracemalloc (NumPy reports its allocations there): the
    peak stays under the estimate, and the estimate is not a wild overstatement."""
    cfg = Config(MaxEpoch=1, IterPerEpoch=1, RandomSeed=1, Kernels="numpy", **fields)
    n_train = 1000
    splits = small_splits(n_train)
    data_bytes = sum(a.nbytes for a in (splits.trn_x, splits.dev_x, splits.tst_x,
                                        splits.trn_y, splits.dev_y, splits.tst_y))
    tracemalloc.start()
    try:
        trainer = Trainer(cfg, splits)
        files = lifecycle.Checkpoints(trainer)
        files.checkpoint, files.best = tmp_path / "r.ckpt.npz", tmp_path / "r.best.npz"
        lifecycle.Run(trainer, files=files).start()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    need = memory.estimate(cfg, 784, n_train + 400)
    # The splits existed before tracing began; the estimate counts them (and their raw bytes).
    assert peak + data_bytes <= need.total, (peak, data_bytes, need)
    assert need.total - need.data < 3 * peak, (peak, need)


def test_a_config_over_the_limit_is_refused_in_one_line(tmp_path, base, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available", lambda: (50_000_000, "the cgroup's memory limit"))
    rc, _, err = run_cli(capsys, base, "HiddenSize=20000", log_dir=tmp_path)
    assert rc == 2
    line = one_error_line(err)
    need = memory.estimate(Config(HiddenSize=20000, MinibatchSize=500), 784)
    assert f"needs about {memory.size_text(need.total)} of memory" in line
    assert "the cgroup's memory limit is 50.0 MB" in line and "lower HiddenSize (now 20000)" in line
    assert not list(tmp_path.glob("*.txt"))  # nothing written


def test_activations_past_the_limit_name_the_minibatch(tmp_path):
    cfg = Config(HiddenSize=100, MinibatchSize=2_000_000)
    with pytest.raises(UserError, match=r"lower MinibatchSize \(now 2000000\)"):
        memory.check(cfg, "c.json", limit=(1_000_000_000, "available memory"))
    memory.check(Config(), "c.json", limit=(1_000_000_000, "available memory"))  # fits


def test_fewer_model_copies_are_advised_only_when_they_would_fit():
    cfg = Config(HiddenSize=4000)
    need = memory.estimate(cfg)
    best = memory.estimate(Config(HiddenSize=4000, Checkpoint="best"))
    none = memory.estimate(Config(HiddenSize=4000, Checkpoint="none"))
    assert none.total < best.total < need.total and none.kept == 0
    for room, advice in ((best.total, "set Checkpoint to best"), (none.total, "set Checkpoint to none"),
                         (none.total - 1, None)):
        with pytest.raises(UserError) as caught:
            memory.check(cfg, "c.json", limit=(room, "available memory"))
        assert str(caught.value).endswith("lower HiddenSize (now 4000) or Layers (now 3)"
                                          + (f", or {advice}" if advice else ""))


def test_a_typo_of_a_few_zeros_is_refused_at_once(tmp_path, base):
    logs = tmp_path / "logs"
    logs.mkdir()
    done = run_py(base, "--quiet", "--offline", "--log-dir", logs, "--set", "HiddenSize=3000000",
                  timeout=60)
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "TB of memory" in line and "lower HiddenSize (now 3000000)" in line
    assert not list(logs.iterdir())


@pytest.mark.parametrize("version", [2, 1])
def test_the_cgroup_limit_is_read(tmp_path, version):
    proc = tmp_path / "cgroup"
    root = tmp_path / "fs"
    if version == 2:
        proc.write_text("0::/jobs/me\n")
        (root / "jobs" / "me").mkdir(parents=True)
        (root / "jobs" / "me" / "memory.max").write_text("max\n")  # no limit of its own
        (root / "jobs" / "me" / "memory.current").write_text("100\n")
        (root / "jobs" / "memory.max").write_text("1000000\n")   # its parent's applies
        (root / "jobs" / "memory.current").write_text("250000\n")
        want = 750000
    else:
        proc.write_text("4:memory:/jobs/me\n3:cpu:/\n")
        (root / "memory" / "jobs" / "me").mkdir(parents=True)
        (root / "memory" / "jobs" / "me" / "memory.limit_in_bytes").write_text("2000000\n")
        (root / "memory" / "jobs" / "me" / "memory.usage_in_bytes").write_text("500000\n")
        want = 1500000
    assert memory._cgroup_room(str(root), str(proc)) == want
    proc.write_text("0::/\n")
    assert memory._cgroup_room(str(tmp_path / "none"), str(proc)) is None


def test_a_memory_error_in_training_is_one_line_and_marked(tmp_path, base, capsys, monkeypatch):
    def no_memory(self, *args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(Trainer, "train_part", no_memory)
    rc, _, err = run_cli(capsys, base, log_dir=tmp_path)
    assert rc == 1
    line = one_error_line(err)
    assert "out of memory during epoch 0 part 0" in line and "HiddenSize = 8" in line
    assert only(tmp_path, "*.txt").read_text().splitlines()[-1].startswith(
        "Run stopped: out of memory during epoch 0 part 0")
    assert strict_records(only(tmp_path, "*.jsonl"))[-1]["stopped"] == "out of memory"


# ---------------------------------------------------------------- a first run

COMPILED = textwrap.dedent("""
    import json, sys
    from nnmnist.run import config, warm
    from nnmnist.backends.cpu import NumbaCompute
    from nnmnist.kernels import fused, set_num_threads, sparse, topk
    from nnmnist.optim import RULES, optimizer_class
    cfg = config.from_dict(json.loads(sys.argv[1]))
    set_num_threads(cfg.Threads)  # as a run does
    warm.compile_for(cfg, NumbaCompute(), say=lambda text: print("said:", text))
    found = {}
    for name in RULES:
        rule = optimizer_class(name).rule
        for kind in ("dense", "rows"):
            v = getattr(rule, "numba_" + kind)
            found.update({f"{name}.{kind}.serial": v.serial, f"{name}.{kind}.parallel": v.parallel})
    for mod in (fused, sparse, topk):
        for attr, v in vars(mod).items():
            if hasattr(v, "serial") and hasattr(v, "parallel"):
                found.update({f"{attr}.serial": v.serial, f"{attr}.parallel": v.parallel})
    print(json.dumps(sorted(k for k, d in found.items() if d.overloads)))
""")


def compiled_by(fields, cache=None):
    env = dict(ENV)
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = str(cache)
    done = subprocess.run([sys.executable, "-c", COMPILED, json.dumps(fields)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    *said, last = done.stdout.strip().splitlines()
    return set(json.loads(last)), said


def test_a_cold_start_compiles_only_what_the_config_uses_and_says_so(tmp_path):
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    compiled, said = compiled_by({"NetType": "mlp", "OptType": "adam"}, cache)
    assert compiled == {"adam.dense.serial"}
    assert said[0] == "said: compiling the CPU kernels for this machine (first run only)"
    assert said[1].startswith("said: compiled 1 kernel in ") and len(said) == 2
    compiled, said = compiled_by({"NetType": "mlp", "OptType": "adam"}, cache)
    assert compiled == {"adam.dense.serial"} and said == []  # loaded from the cache, silently


@pytest.mark.parametrize("fields, want", [
    ({"NetType": "mlptop", "TrainTop": 80}, {"_layer_backward.serial", "adam.dense.serial"}),
    ({"NetType": "mlprand", "OptType": "sgd", "LazyUpdate": True},
     {"_layer_backward.serial", "_topk_rows.serial", "sgd.dense.serial", "sgd.rows.serial"}),
])
def test_a_meprop_run_compiles_its_backward_and_its_rule_only(fields, want):
    """With the package's usual cache (the other tests fill it), in a fresh process."""
    compiled, _ = compiled_by(fields)
    assert compiled == want


# ---------------------------------------------------------------- the Checkpoint field

@pytest.mark.parametrize("policy, kept", [("epoch", {".ckpt.npz", ".best.npz"}),
                                          ("best", {".best.npz"}), ("none", set())])
def test_checkpoint_keeps_what_it_says(tmp_path, base, capsys, policy, kept):
    logs = tmp_path / "logs"
    logs.mkdir()
    rc, _, err = run_cli(capsys, base, f"Checkpoint={policy}", log_dir=logs)
    assert rc == 0, err
    suffixes = {p.name[p.name.index("."):] for p in logs.iterdir()}
    assert suffixes == {".txt", ".jsonl"} | kept
    lines = only(logs, "*.txt").read_text().splitlines()
    assert f"Checkpoint: {policy}" in lines
    notes = [line for line in lines if line.startswith("Note: ")]
    if policy == "epoch":
        assert notes == []
    else:
        assert notes == [f"Note: {lifecycle.NO_RESUME[policy]}: a run stopped early (Ctrl-C, "
                         "SIGTERM) cannot be resumed"]
        assert lines.index(notes[0]) == lines.index("#" * 20 + " Run Start") - 1


@pytest.mark.parametrize("policy", ["best", "none"])
def test_resume_refuses_a_run_that_kept_no_checkpoint(tmp_path, base, capsys, policy, monkeypatch):
    real = Trainer.train_part

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "train_part", interrupted)
    rc, _, _ = run_cli(capsys, base, f"Checkpoint={policy}", log_dir=tmp_path)
    assert rc == 130
    monkeypatch.setattr(Trainer, "train_part", real)
    log = only(tmp_path, "*.txt")
    assert not list(tmp_path.glob("*.npz"))
    ckpt = log.with_name(log.name[:-len(".txt")] + ".ckpt.npz")
    before = files_of(tmp_path)
    rc, _, err = resume_cli(capsys, ckpt)
    assert rc == 2
    line = one_error_line(err)
    assert f"{ckpt}: no checkpoint: the run of {log.name} cannot be resumed" in line
    assert f"Checkpoint = {policy}" in line
    assert files_of(tmp_path) == before


def test_resume_refuses_a_best_model(tmp_path, base, capsys):
    assert run_cli(capsys, base, "Checkpoint=best", log_dir=tmp_path)[0] == 0
    best = only(tmp_path, "*.best.npz")
    rc, _, err = resume_cli(capsys, best)
    assert rc == 2 and "a best-dev model, not a checkpoint" in one_error_line(err)


def test_a_bad_checkpoint_value_names_the_choices(tmp_path, base, capsys):
    rc, _, err = run_cli(capsys, base, "Checkpoint=sometimes", log_dir=tmp_path)
    assert rc == 2
    assert 'field Checkpoint = "sometimes": must be one of epoch, best, none' in one_error_line(err)


def test_a_sweep_sets_checkpoint_like_any_field(tmp_path, base):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": str(base), "grid": {"Checkpoint": ["none", "best"]}}))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "nnmnist", "sweep", str(spec), "--out",
                           str(out), "--offline"], capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert not list((out / "runs" / "Checkpoint=none").glob("*.npz"))
    assert [p.name.endswith(".best.npz") for p in (out / "runs" / "Checkpoint=best").glob("*.npz")] == [True]
