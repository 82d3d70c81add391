"""Checkpoints: the file format and its checks, and exact resume after an interrupt."""
import json
import re
import zipfile

import numpy as np
import pytest

from nnmnist.run import checkpoint
from nnmnist.run.config import MLP_NETS, OPT_TYPES, Config
from nnmnist.errors import UserError
from nnmnist.run.lifecycle import Checkpoints, Run
from nnmnist.run.log import RunLog
from nnmnist.run.training import Trainer

TIMES = re.compile(r"\d+\.\d+s")
RESUME_LINE = re.compile(r"#{20} Run Resume at \d\d:\d\d|Run stopped: interrupted .*")


def tiny_cfg(**fields):
    base = dict(MaxEpoch=3, IterPerEpoch=2, HiddenSize=16, TrainTop=5, TrainCycle=1,
                Prune=0.3, RandomSeed=11)
    base.update(fields)
    return Config(**base)


def without_times(lines):
    return [TIMES.sub("<t>", line) for line in lines if not RESUME_LINE.fullmatch(line)]


class Interrupt:
    """Raises KeyboardInterrupt when the run starts training its `at`-th part (0-based), as
    Ctrl-C would in the middle of that part's first minibatch."""

    def __init__(self, trainer, at):
        self.calls, self.at = 0, at
        real = trainer.train_part

        def train_part(*args, **kwargs):
            if self.calls == self.at:
                raise KeyboardInterrupt
            self.calls += 1
            return real(*args, **kwargs)
        trainer.train_part = train_part


def keeping(trainer, log, ckpt=None, best=None):
    """A Run of `trainer` writing `log` and keeping its checkpoint and best model at these paths."""
    files = Checkpoints(trainer)
    files.checkpoint, files.best = ckpt, best
    return Run(trainer, log, files)


def full_run(cfg, splits, tmp_path):
    t = Trainer(cfg, splits)
    log = RunLog(console=False)
    keeping(t, log, tmp_path / "full.ckpt.npz", tmp_path / "full.best.npz").start()
    return log


def interrupted_run(cfg, splits, tmp_path, at):
    """Train, interrupt at the start of part `at`, resume from the checkpoint; both logs."""
    ckpt = tmp_path / f"cut{at}.ckpt.npz"
    t = Trainer(cfg, splits)
    Interrupt(t, at)
    first = RunLog(console=False)
    with pytest.raises(KeyboardInterrupt):
        keeping(t, first, ckpt, tmp_path / f"cut{at}.best.npz").start()
    mf = checkpoint.read(ckpt, kinds=("checkpoint",))
    t2 = Trainer(cfg, splits)
    second = RunLog(console=False)
    keeping(t2, second, ckpt, tmp_path / f"cut{at}.best.npz").resume(mf)
    return first, second, t2


def assert_same_run(full, first, second):
    assert without_times(first.lines + second.lines) == without_times(full.lines)
    # The metrics: every part record once, equal but for times
    def strip(recs):
        keep = []
        for r in recs:
            if r["type"] == "part" or r["type"] == "summary" and r.get("stopped") != "interrupted":
                keep.append({k: v for k, v in r.items() if k not in
                             ("fp", "bp", "update", "train_seconds", "config")})
        return keep
    assert strip(first.records + second.records) == strip(full.records)


@pytest.mark.parametrize("kernels", ["numba", "numpy"])
@pytest.mark.parametrize("opt", OPT_TYPES)
@pytest.mark.parametrize("net", MLP_NETS)
def test_resume_is_exact(tmp_path, tiny_splits, net, opt, kernels):
    cfg = tiny_cfg(NetType=net, OptType=opt, Kernels=kernels,
                   LearningRate=0.05 if opt in ("sgd", "adagrad") else 0.001)
    full = full_run(cfg, tiny_splits, tmp_path)
    # part 3 = epoch 1 part 1: mid-epoch, after a prune (mlpvar) and a Prepare
    first, second, _ = interrupted_run(cfg, tiny_splits, tmp_path, at=3)
    assert_same_run(full, first, second)


@pytest.mark.parametrize("at", range(6))
def test_resume_at_every_part_boundary(tmp_path, tiny_splits, at):
    cfg = tiny_cfg(NetType="mlpvar", TrainCycle=1, Dropout=0.2, Kernels="numba")
    full = full_run(cfg, tiny_splits, tmp_path)
    first, second, _ = interrupted_run(cfg, tiny_splits, tmp_path, at)
    assert_same_run(full, first, second)


@pytest.mark.parametrize("compact", [True, False])
def test_resume_inside_a_simplify_cycle(tmp_path, tiny_splits, compact):
    # TrainCycle 2: epochs 0-1 simplify (prune after every part), 2-3 train, Prepare after 1, 3.
    cfg = tiny_cfg(NetType="mlpvar", TrainCycle=2, MaxEpoch=4, Compact=compact)
    full = full_run(cfg, tiny_splits, tmp_path)
    first, second, t2 = interrupted_run(cfg, tiny_splits, tmp_path, at=3)  # epoch 1, part 1
    assert_same_run(full, first, second)
    widths = [layer.n_out for layer in t2.model.layers[:-1]]
    assert (widths[0] < 16) == compact  # compaction really removed neurons


def test_resume_between_prepare_and_the_next_part(tmp_path, tiny_splits):
    # Prepare runs at the end of epoch 1; the interrupt comes before epoch 2's first part.
    cfg = tiny_cfg(NetType="mlpvar", TrainCycle=2, MaxEpoch=4, OptType="adagrad",
                   LearningRate=0.05)
    full = full_run(cfg, tiny_splits, tmp_path)
    first, second, _ = interrupted_run(cfg, tiny_splits, tmp_path, at=4)
    assert_same_run(full, first, second)
    mf = checkpoint.read(tmp_path / "cut4.ckpt.npz")
    assert (mf.meta["train"]["epoch"], mf.meta["train"]["part"]) == (4, 0)  # rewritten at the end


def test_interrupt_before_the_first_part_leaves_a_fresh_start(tmp_path, tiny_splits):
    cfg = tiny_cfg(NetType="mlptop")
    ckpt = tmp_path / "c.ckpt.npz"
    t = Trainer(cfg, tiny_splits)
    Interrupt(t, 0)
    with pytest.raises(KeyboardInterrupt):
        keeping(t, RunLog(console=False), ckpt).start()
    mf = checkpoint.read(ckpt)
    assert (mf.meta["train"]["epoch"], mf.meta["train"]["part"]) == (0, 0)
    fresh = Trainer(cfg, tiny_splits)
    np.testing.assert_array_equal(mf.arrays["net.0.W"], fresh.model.layers[0].W.value)


def test_checkpoint_holds_the_documented_state(tmp_path, tiny_splits):
    cfg = tiny_cfg(NetType="mlpvar", OptType="adam", MaxEpoch=1)
    log = full_run(cfg, tiny_splits, tmp_path)
    with np.load(tmp_path / "full.ckpt.npz", allow_pickle=False) as z:
        names = set(z.files)
    assert {"meta", "train.order", "net.0.W", "net.0.b", "net.0.active", "net.0.hits",
            "net.0.examples", "net.rng", "opt.t", "opt.m.0.W", "opt.v.2.b"} <= names
    mf = checkpoint.read(tmp_path / "full.ckpt.npz")
    train = mf.meta["train"]
    assert mf.meta["format"] == checkpoint.FORMAT and mf.meta["version"] == checkpoint.VERSION
    assert mf.meta["config"]["NetType"] == "mlpvar"
    assert int(mf.arrays["opt.t"]) == 6  # 600 examples, minibatch 100, one epoch
    assert train["best_dev"] == max(r["best_dev"] for r in log.records if r["type"] == "part")
    assert {"data_rng", "epoch_time", "total_time", "test_at_best"} <= set(train)


def test_arrays_are_the_state_dicts_under_their_prefixes(tmp_path, tiny_splits):
    """A checkpoint's arrays are exactly the network's and the optimizer's state dicts, each
    under its prefix, and the run's order: nothing is stored beside them."""
    cfg = tiny_cfg(NetType="mlpvar", OptType="adam", MaxEpoch=2)
    full_run(cfg, tiny_splits, tmp_path)
    mf = checkpoint.read(tmp_path / "full.ckpt.npz")
    t = Trainer(mf.config(), tiny_splits)
    from nnmnist.run.state import restore
    restore(t, mf)
    net, opt = t.model.state_dict(), t.opt.state_dict()
    assert any(name.endswith(".origin") for name in net)  # compacted: the origins are state
    assert set(mf.arrays) == ({"net." + k for k in net} | {"opt." + k for k in opt}
                              | {"train.order"})
    for k, v in net.items():
        np.testing.assert_array_equal(mf.arrays["net." + k], v)
    for k, v in opt.items():
        np.testing.assert_array_equal(mf.arrays["opt." + k], v)


def test_nan_in_meta_is_written_as_null_and_read_back(tmp_path, tiny_splits):
    """A diverged run's NaN figures: the meta is strict JSON (null), and resuming reads NaN."""
    import json
    from nnmnist.run.state import Position, capture, restore
    t = Trainer(tiny_cfg(MaxEpoch=1), tiny_splits)
    t.result.best_dev = t.result.test_at_best = float("nan")
    meta, arrays = capture(t, Position(0, 1, (float("nan"), 0.0, 0.0)))
    path = tmp_path / "nan.ckpt.npz"
    checkpoint.save(path, "checkpoint", {**checkpoint.config_meta(t.cfg), **meta}, arrays)
    raw = str(np.load(path, allow_pickle=False)["meta"])

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    stored = json.loads(raw, parse_constant=refuse)
    assert stored["train"]["best_dev"] is None and stored["train"]["epoch_time"][0] is None
    fresh = Trainer(tiny_cfg(MaxEpoch=1), tiny_splits)
    pos = restore(fresh, checkpoint.read(path))
    assert np.isnan(fresh.result.best_dev) and np.isnan(fresh.result.test_at_best)
    assert np.isnan(pos.epoch_time[0]) and pos.epoch_time[1:] == [0.0, 0.0]


def test_damaged_origin_is_one_line_error(tmp_path, tiny_splits):
    cfg = tiny_cfg(NetType="mlpvar", OptType="adam", MaxEpoch=2)
    full_run(cfg, tiny_splits, tmp_path)
    mf = checkpoint.read(tmp_path / "full.ckpt.npz")
    arrays = dict(mf.arrays)
    (name,) = [k for k in arrays if k.endswith(".origin")][:1]
    arrays[name] = arrays[name][::-1].copy()
    bad = tmp_path / "origin.ckpt.npz"
    checkpoint.save(bad, "checkpoint", {k: v for k, v in mf.meta.items()
                                        if k not in ("format", "version", "kind")}, arrays)
    from nnmnist.run.state import restore
    with pytest.raises(UserError, match=r"origin\.ckpt\.npz: model state: \d\.origin is not an "
                                        r"increasing list"):
        restore(Trainer(mf.config(), tiny_splits), checkpoint.read(bad))


# ---------------------------------------------------------------- bad files

@pytest.fixture
def good_ckpt(tmp_path, tiny_splits):
    full_run(tiny_cfg(MaxEpoch=1), tiny_splits, tmp_path)
    return tmp_path / "full.ckpt.npz"


def test_truncated_file_is_one_line_error(good_ckpt, tmp_path):
    bad = tmp_path / "bad.ckpt.npz"
    data = good_ckpt.read_bytes()
    bad.write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match=r"bad\.ckpt\.npz: not a readable \.npz file"):
        checkpoint.read(bad)


def test_corrupt_member_is_one_line_error(good_ckpt, tmp_path):
    bad = tmp_path / "bad.ckpt.npz"
    data = bytearray(good_ckpt.read_bytes())
    data[200:260] = b"\xff" * 60  # inside the first stored array
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"bad\.ckpt\.npz: "):
        mf = checkpoint.read(bad)
        Trainer(mf.config(), None)  # pragma: no cover - read must fail first


def test_foreign_npz_is_one_line_error(tmp_path):
    foreign = tmp_path / "other.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(UserError, match=r"other\.npz: not an nnmnist model file \(field meta"):
        checkpoint.read(foreign)
    np.savez(foreign, meta=np.array('{"format": "something-else"}'))
    with pytest.raises(UserError, match=r"field format = \"something-else\""):
        checkpoint.read(foreign)


def test_unknown_version_is_one_line_error(tmp_path):
    path = tmp_path / "future.ckpt.npz"
    checkpoint.save(path, "checkpoint", {"config": {}}, {})
    with zipfile.ZipFile(path) as z:
        assert z.namelist() == ["meta.npy"]
    raw = np.load(path)["meta"]
    np.savez(path, meta=np.array(str(raw).replace(f'"version": {checkpoint.VERSION}', '"version": 99')))
    with pytest.raises(UserError, match=r"future\.ckpt\.npz: field version = 99: unknown"):
        checkpoint.read(path)


def test_wrong_shape_is_one_line_error(good_ckpt, tiny_splits, tmp_path):
    mf = checkpoint.read(good_ckpt)
    arrays = dict(mf.arrays)
    arrays["net.1.W"] = np.zeros((3, 3), np.float32)
    bad = tmp_path / "shape.ckpt.npz"
    checkpoint.save(bad, "checkpoint", {k: v for k, v in mf.meta.items()
                                        if k not in ("format", "version", "kind")}, arrays)
    t = Trainer(mf.config(), tiny_splits)
    from nnmnist.run.state import restore
    with pytest.raises(UserError, match=r"shape\.ckpt\.npz: model state: 1\.W has shape \(3, 3\)"):
        restore(t, checkpoint.read(bad))


def test_shape_changing_override_is_refused(good_ckpt):
    mf = checkpoint.read(good_ckpt)
    with pytest.raises(UserError, match=r"full\.ckpt\.npz: --set HiddenSize=32 would change"):
        checkpoint.resume_config(mf, {"HiddenSize": 32})
    with pytest.raises(UserError, match=r"--set NetType=\"mlptop\""):
        checkpoint.resume_config(mf, {"nettype": "mlptop"})
    cfg = checkpoint.resume_config(mf, {"MaxEpoch": 5, "HiddenSize": 16})  # same size is fine
    assert cfg.MaxEpoch == 5


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "x.ckpt.npz"
    checkpoint.save(path, "checkpoint", {"config": {}}, {"a": np.arange(3)})
    before = path.read_bytes()

    def failing_savez(f, **arrays):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError):
        checkpoint.save(path, "checkpoint", {"config": {}}, {"a": np.arange(4)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ckpt.npz"]


class Killed(BaseException):
    """Stands for `kill -9`: nothing of the run's own handling runs (no checkpoint written,
    no `Run stopped` line), and the files stay as the last write left them."""


def test_resume_after_a_hard_kill_writes_each_part_once(tmp_path, tiny_splits):
    from nnmnist.run.resume import cut_back
    from nnmnist.run.log import metrics_path
    cfg = tiny_cfg(NetType="mlpvar", OptType="adam")
    with RunLog(tmp_path / "full.txt", console=False) as full:
        t = Trainer(cfg, tiny_splits)
        t.train(full)
    t = Trainer(cfg, tiny_splits)
    ckpt, log_file = tmp_path / "cut.ckpt.npz", tmp_path / "cut.txt"
    real, calls = t.train_part, []

    def train_part(*args, **kwargs):  # killed while training epoch 1 part 1
        if len(calls) == 3:
            raise Killed
        calls.append(1)
        return real(*args, **kwargs)
    t.train_part = train_part
    with pytest.raises(Killed), RunLog(log_file, console=False) as first:
        keeping(t, first, ckpt, tmp_path / "cut.best.npz").start()
    assert any(line.startswith("01:00: ") for line in log_file.read_text().splitlines())
    mf = checkpoint.read(ckpt, kinds=("checkpoint",))
    assert (mf.meta["train"]["epoch"], mf.meta["train"]["part"]) == (1, 0)
    cut_back(mf, log_file)
    t2 = Trainer(cfg, tiny_splits)
    with RunLog(log_file, console=False, append=True) as second:
        keeping(t2, second, ckpt, tmp_path / "cut.best.npz").resume(mf)
    assert without_times(log_file.read_text().splitlines()) == \
        without_times((tmp_path / "full.txt").read_text().splitlines())
    records = [json.loads(x) for x in metrics_path(log_file).read_text().splitlines()]
    full_records = [json.loads(x) for x in metrics_path(tmp_path / "full.txt").read_text().splitlines()]
    drop = ("fp", "bp", "update", "train_seconds", "config")
    strip = lambda recs: [{k: v for k, v in r.items() if k not in drop}  # noqa: E731
                          for r in recs if r["type"] in ("part", "summary")]
    assert strip(records) == strip(full_records)
    assert [r["type"] for r in records].count("resume") == 1


def test_a_log_that_changed_since_the_checkpoint_is_not_cut(tmp_path, tiny_splits, capsys):
    from nnmnist.run.resume import cut_back
    cfg = tiny_cfg(NetType="mlp", MaxEpoch=1)
    t = Trainer(cfg, tiny_splits)
    ckpt, log_file = tmp_path / "r.ckpt.npz", tmp_path / "r.txt"
    with RunLog(log_file, console=False) as log:
        keeping(t, log, ckpt).start()
    mf = checkpoint.read(ckpt)
    text = log_file.read_text()
    log_file.write_text("edited\n" + text[7:])  # same length, another first line
    cut_back(mf, log_file)
    assert log_file.read_text() == "edited\n" + text[7:]  # left whole
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "r.txt: not cut back to the checkpoint" in err[0]


@pytest.mark.parametrize("field, value", [("RandomSeed", 5), ("randomseed", 5),
                                          ("LearningRate", 0.5), ("TrainTop", 3)])
def test_override_that_makes_another_run_is_refused(good_ckpt, field, value):
    mf = checkpoint.read(good_ckpt)
    name = {"randomseed": "RandomSeed"}.get(field, field)
    with pytest.raises(UserError, match=rf"full\.ckpt\.npz: --set {name}={value} cannot be used "
                                        rf"with --resume: the checkpoint's run has {name} = "):
        checkpoint.resume_config(mf, {field: value})


def test_overrides_a_resume_may_make(good_ckpt):
    mf = checkpoint.read(good_ckpt)
    cfg = checkpoint.resume_config(mf, {"MaxEpoch": 5, "Threads": 2, "Kernels": "numpy",
                                        "AllowDivergence": True, "DataDir": "/elsewhere",
                                        "RandomSeed": 11})  # the same seed is no change
    assert (cfg.MaxEpoch, cfg.Threads, cfg.Kernels, cfg.DataDir) == (5, 2, "numpy", "/elsewhere")


@pytest.mark.parametrize("content", [b"hello, not an archive\n", b"\x93NUMPY", b"\x80\x04K\x03."])
def test_a_file_that_is_not_npz_is_our_own_one_line_error(tmp_path, content):
    bad = tmp_path / "text.ckpt.npz"
    if content == b"\x93NUMPY":
        with open(bad, "wb") as f:
            np.save(f, np.zeros(3))  # a .npy under an .npz name
    else:
        bad.write_bytes(content)
    with pytest.raises(UserError) as err:
        checkpoint.read(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: not an .npz file") and "\n" not in msg
    assert "pickle" not in msg and "unsafe" not in msg


def test_summary_counts_every_whole_epoch_across_resumes(tmp_path, tiny_splits):
    """A run of 2 epochs, resumed to 8 and interrupted again and again (also before it
    trained a part, and in the middle of an epoch), then resumed to its end: each summary
    counts the whole epochs in the log, and their times are those of the part records."""
    from nnmnist.run.log import metrics_path
    from nnmnist.run.resume import cut_back
    log_file = tmp_path / "run.txt"
    ckpt = checkpoint.checkpoint_path(log_file)

    def trainer(cfg):
        return Trainer(cfg, tiny_splits)

    def summary_of_the_files():
        records = [json.loads(x) for x in metrics_path(log_file).read_text().splitlines()]
        whole = sum(line.startswith("Time: ") for line in log_file.read_text().splitlines())
        parts = [r for r in records if r["type"] == "part" and r["epoch"] < whole]
        assert len(parts) == 2 * whole  # each part once (IterPerEpoch 2)
        summary = records[-1]
        assert summary["type"] == "summary"
        for key in ("fp", "bp", "update"):
            assert summary[key] == pytest.approx(sum(r[key] for r in parts), rel=1e-9, abs=1e-12)
        return summary["epochs"], whole, summary["stopped"]

    def resume(max_epoch, interrupt_at=None):
        mf = checkpoint.read(ckpt, kinds=("checkpoint",))
        t = trainer(checkpoint.resume_config(mf, {"MaxEpoch": max_epoch}))
        if interrupt_at is not None:
            Interrupt(t, interrupt_at)
        cut_back(mf, log_file)
        with RunLog(log_file, console=False, append=True) as log:
            run = keeping(t, log, ckpt, checkpoint.best_path(log_file))
            if interrupt_at is None:
                run.resume(mf)
            else:
                with pytest.raises(KeyboardInterrupt):
                    run.resume(mf)
        return summary_of_the_files()

    with RunLog(log_file, console=False) as log:
        keeping(trainer(tiny_cfg(NetType="mlptop", MaxEpoch=2)), log, ckpt,
                checkpoint.best_path(log_file)).start()
    assert summary_of_the_files() == (2, 2, "completed")
    assert resume(8, interrupt_at=3) == (3, 3, "interrupted")  # in epoch 3, part 1
    assert resume(8, interrupt_at=0) == (3, 3, "interrupted")  # before training a part
    assert resume(8, interrupt_at=2) == (4, 4, "interrupted")  # in epoch 4, part 1
    assert resume(5) == (5, 5, "completed")


def test_a_resume_that_changes_threads_says_so_and_the_kernels_do_not_care(
        tmp_path, tiny_splits, capsys, monkeypatch):
    """Threads changes the order of BLAS's sums, so a resume that changes it (or Backend, or
    Kernels) warns in one line; a same-valued --set does not. Numba's kernels give the same
    bits with any thread count: with BLAS held at one thread, a continuation on two Numba
    threads is the uninterrupted run exactly (every kernel in its parallel compilation)."""
    import numba
    from nnmnist.kernels import _jit, set_num_threads
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one Numba thread only")
    monkeypatch.setattr(_jit, "_mode", "parallel")
    cfg = tiny_cfg(NetType="mlpvar", Compact=True, LazyUpdate=True, Kernels="numba",
                   HiddenSize=64, TrainTop=20, Threads=1)
    try:
        set_num_threads(1)
        full = full_run(cfg, tiny_splits, tmp_path)
        ckpt = tmp_path / "cut3.ckpt.npz"
        t = Trainer(cfg, tiny_splits)
        Interrupt(t, 3)
        first = RunLog(console=False)
        with pytest.raises(KeyboardInterrupt):
            keeping(t, first, ckpt).start()
        mf = checkpoint.read(ckpt, kinds=("checkpoint",))
        capsys.readouterr()
        checkpoint.resume_config(mf, {"Threads": 1, "MaxEpoch": 3})
        assert capsys.readouterr().err == ""
        cfg2 = checkpoint.resume_config(mf, {"Threads": 2, "Kernels": "numba"})
        err = capsys.readouterr().err.splitlines()
        assert err == [f"warning: {ckpt}: Threads = 2 (the run had 1): the same maths, summed "
                       "in another order, so from here on the figures may differ in the last "
                       "digits from those of an uninterrupted run"]
        set_num_threads(2, blas=1)
        t2 = Trainer(cfg2, tiny_splits)
        second = RunLog(console=False)
        keeping(t2, second, ckpt).resume(mf)
    finally:
        set_num_threads(0)
    assert_same_run(full, first, second)
