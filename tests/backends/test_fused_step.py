"""The fused training step (`nnmnist.backends.fused_step`) against the tape path, bit for bit.

The tape path (`Network.forward`, `Flow.backward`, `Optimizer.step`) is the reference; a
Trainer whose `fused` is None trains by it. Both train the same model from the same seed on
the same examples, and every weight, optimizer moment, step count, loss and count of correct
predictions must be equal.
"""
import numpy as np
import pytest

from nnmnist.backends.fused_step import FusedStep, fused_step_for
from nnmnist.run import training
from nnmnist.run.config import Config
from nnmnist.run.log import RunLog, log_path
from nnmnist.run.training import Timer, Trainer, train_and_evaluate


def trained(cfg, splits, fused, parts):
    """(weights, moments, t, scores) after training on `parts` (lists of example indices)."""
    trainer = Trainer(cfg, splits)
    if fused:
        assert isinstance(trainer.fused, FusedStep)
    else:
        trainer.fused = None
    scores = [trainer.train_part(idx, Timer(), "test") for idx in parts]
    state = {k: v.copy() for k, v in trainer.opt.state.flat.items()}
    assert not trainer.model.store.grad.any()  # every step leaves the gradients zeroed
    return trainer.model.store.value.copy(), state, trainer.opt.t, scores


CASES = {
    "mlp": dict(NetType="mlp"),
    "mlp lazy": dict(NetType="mlp", LazyUpdate=True),
    "mlptop": dict(NetType="mlptop", TrainTop=6),
    "mlptop lazy": dict(NetType="mlptop", TrainTop=6, LazyUpdate=True),
    "mlptop lazy, mean loss, L2, no clip": dict(NetType="mlptop", TrainTop=5, LazyUpdate=True,
                                                 LossGrad="mean", L2RegFactor=1e-3,
                                                 ClipBound=0.0),
    "mlptop lazy, 4 layers": dict(NetType="mlptop", TrainTop=7, LazyUpdate=True, Layers=4),
    "mlptop lazy, 1 hidden layer": dict(NetType="mlptop", TrainTop=7, LazyUpdate=True,
                                        Layers=2),
    "mlp, 1 hidden layer": dict(NetType="mlp", Layers=2),
    "mlp, no hidden layer": dict(NetType="mlp", Layers=1),
    # minibatch 40 with k / width 0.5: the meProp units' products run as BLAS (`use_dense`)
    "mlptop lazy, minibatch 40, k 16": dict(NetType="mlptop", TrainTop=16, LazyUpdate=True,
                                            MinibatchSize=40),
    "mlptop, minibatch 40, k 16": dict(NetType="mlptop", TrainTop=16, MinibatchSize=40),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_step_equals_tape(tiny_splits, case):
    fields = dict(HiddenSize=32, RandomSeed=5, MinibatchSize=10)
    fields.update(CASES[case])
    cfg = Config(**fields)
    # two parts; the second ends in a short minibatch (95 examples)
    parts = [np.arange(0, 120), np.arange(300, 395)[::-1].copy()]
    fused = trained(cfg, tiny_splits, True, parts)
    tape = trained(cfg, tiny_splits, False, parts)
    assert fused[0].dtype == np.float32
    assert not np.array_equal(fused[0], Trainer(cfg, tiny_splits).model.store.value)  # it trained
    np.testing.assert_array_equal(fused[0], tape[0])
    assert fused[1].keys() == tape[1].keys()
    for name in tape[1]:
        np.testing.assert_array_equal(fused[1][name], tape[1][name])
    assert fused[2] == tape[2] == -(-120 // cfg.MinibatchSize) - (-95 // cfg.MinibatchSize)
    for a, b in zip(fused[3], tape[3]):
        assert (a.loss, a.correct, a.total) == (b.loss, b.correct, b.total)


def test_fused_then_tape_then_fused_equals_tape(tiny_splits):
    """The two paths may take turns within a run: each leaves the gradients zeroed and the
    optimizer's counter where the other expects them."""
    cfg = Config(NetType="mlptop", TrainTop=6, LazyUpdate=True, HiddenSize=32, RandomSeed=2)
    parts = [np.arange(0, 50), np.arange(50, 100), np.arange(100, 150)]
    mixed = Trainer(cfg, tiny_splits)
    fused = mixed.fused
    for i, idx in enumerate(parts):
        mixed.fused = fused if i != 1 else None
        mixed.train_part(idx, Timer(), "test")
    tape = trained(cfg, tiny_splits, False, parts)
    np.testing.assert_array_equal(mixed.model.store.value, tape[0])
    for name, flat in mixed.opt.state.flat.items():
        np.testing.assert_array_equal(flat, tape[1][name])


@pytest.mark.parametrize("fields", [
    dict(NetType="mlprand", TrainTop=6),
    dict(NetType="mlpvar", TrainTop=6),
    dict(NetType="mlptop", TrainTop=6, Unified=True),
    dict(NetType="mlptop", TrainTop=6, Dropout=0.2),
    dict(NetType="mlp", Dropout=0.2),
    dict(NetType="mlptop", TrainTop=6, DenseWarmup=3),
    dict(NetType="mlptop", TrainTop=6, Kernels="numpy"),
    dict(NetType="mlp", Kernels="numpy"),
    dict(NetType="mlptop", TrainTop=6, OptType="sgd"),
    dict(NetType="mlp", OptType="adagrad"),
], ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_other_cases_take_the_tape_path(tiny_splits, fields, monkeypatch):
    cfg = Config(HiddenSize=32, RandomSeed=5, MinibatchSize=10, **fields)
    trainer = Trainer(cfg, tiny_splits)
    assert trainer.fused is None
    assert fused_step_for(cfg, trainer.model, trainer.opt, trainer.compute) is None
    taped = []
    monkeypatch.setattr(training.Flow, "backward",
                        lambda self, _b=training.Flow.backward: (taped.append(1), _b(self)))
    trainer.train_part(np.arange(30), Timer(), "test")
    assert len(taped) == 3


def test_covered_cases_do_not_touch_the_tape(tiny_splits, monkeypatch):
    cfg = Config(NetType="mlptop", TrainTop=6, LazyUpdate=True, HiddenSize=32)
    trainer = Trainer(cfg, tiny_splits)
    monkeypatch.setattr(training.Flow, "backward", lambda self: pytest.fail("the tape ran"))
    trainer.train_part(np.arange(30), Timer(), "test")


def test_a_custom_rule_subclass_takes_the_tape_path(tiny_splits):
    from nnmnist.nn.select import TopK

    class MyTopK(TopK):
        pass

    cfg = Config(NetType="mlptop", TrainTop=6, HiddenSize=32, MinibatchSize=10)
    trainer = Trainer(cfg, tiny_splits)
    assert trainer.fused.covers()
    for layer in trainer.model.layers[:-1]:
        layer.rule = MyTopK(6)
    assert fused_step_for(cfg, trainer.model, trainer.opt, trainer.compute) is None
    assert not trainer.fused.covers()  # a Trainer built before the swap takes the tape too
    taped = []
    plain = training.Flow.backward
    training.Flow.backward = lambda self: (taped.append(1), plain(self))
    try:
        trainer.train_part(np.arange(20), Timer(), "test")
    finally:
        training.Flow.backward = plain
    assert len(taped) == 2


@pytest.mark.parametrize("fields", [dict(NetType="mlp"),
                                    dict(NetType="mlptop", TrainTop=8, LazyUpdate=True),
                                    dict(NetType="mlptop", TrainTop=8)],
                         ids=["mlp", "mlptop lazy", "mlptop"])
def test_whole_run_gives_the_tape_paths_log(tmp_path, tiny_splits, monkeypatch, fields):
    import re
    times = re.compile(r"\d+\.\d+s")

    def run(name):
        cfg = Config(MaxEpoch=2, IterPerEpoch=3, HiddenSize=24, RandomSeed=7, **fields)
        (tmp_path / name).mkdir()
        path = log_path(tmp_path / name, cfg.run_name())
        with RunLog(path, console=False) as log:
            train_and_evaluate(cfg, tiny_splits, log)
        return [times.sub("T", line) for line in path.read_text(encoding="utf-8").splitlines()]

    fused = run("fused")
    monkeypatch.setattr(training, "fused_step_for", lambda *a: None)
    tape = run("tape")
    assert sum("acc:" in line for line in fused) >= 12
    assert fused == tape
