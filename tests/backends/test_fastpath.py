"""The Numba path against the plain NumPy path: whole-network gradients, whole runs, dtypes."""
import re

import numpy as np
import pytest

from nnmnist.nn import tensor
from nnmnist.backends.cpu import NumbaCompute, NumpyCompute
from nnmnist.run.config import Config
from nnmnist.nn.networks import MLP
from nnmnist.optim import make_optimizer
from nnmnist.run.log import RunLog
from nnmnist.nn.tensor import Flow
from nnmnist.run.training import train_and_evaluate

NETS = [("mlp", False), ("mlptop", False), ("mlprand", False), ("mlpvar", False),
        ("mlptop", True), ("mlprand", True), ("mlpvar", True)]


def make(cfg, compute, seed=0):
    return MLP(cfg, 784, compute, np.random.default_rng(seed))


@pytest.mark.parametrize("net_type,unified", NETS)
@pytest.mark.parametrize("batch", [32, 7])
def test_network_gradients_fast_equals_plain(tiny_splits, net_type, unified, batch):
    cfg = Config(NetType=net_type, HiddenSize=48, TrainTop=12, Unified=unified)
    x, y = tiny_splits.trn_x[:batch], tiny_splits.trn_y[:batch]
    grads = []
    for compute in (NumpyCompute(), NumbaCompute()):
        model = make(cfg, compute)
        flow = Flow()
        model.forward(flow, x, y)
        flow.backward()
        grads.append([p.grad for p in model.params])
        hits = [layer.hits.copy() for layer in model.masked_layers]
        grads[-1] += hits
    for a, b in zip(*grads):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def strip_times(lines):
    return [re.sub(r"\d+\.\d+s", "T", line) for line in lines]


@pytest.mark.parametrize("net_type,unified", NETS)
@pytest.mark.parametrize("opt", ["adam", "sgd", "adagrad", "rmsprop"])
def test_one_epoch_logs_equal(tiny_splits, net_type, unified, opt):
    """Same seed, same numbers in the log, for a short epoch (few enough steps that float32
    summation order cannot flip a top-k choice and send the runs apart)."""
    logs = []
    for kernels in ("numpy", "numba"):
        cfg = Config(NetType=net_type, Unified=unified, OptType=opt, HiddenSize=48, TrainTop=12,
                     MaxEpoch=1, IterPerEpoch=2, MinibatchSize=60, RandomSeed=5, Kernels=kernels,
                     TrainCycle=1, LearningRate=0.01 if opt != "adam" else 0.001)
        log = RunLog(console=False)
        train_and_evaluate(cfg, tiny_splits, log)
        logs.append([l for l in strip_times(log.lines) if not l.startswith("Kernels:")])
    assert logs[0] == logs[1]


@pytest.mark.parametrize("lazy", [False, True])
def test_lazy_updates_fast_equals_plain(tiny_splits, lazy):
    # With L2 every row has gradient in the exact update; the lazy one skips untouched rows.
    cfg = Config(NetType="mlptop", Unified=True, HiddenSize=48, TrainTop=6, LazyUpdate=lazy,
                 L2RegFactor=0.01)
    finals = []
    for compute in (NumpyCompute(), NumbaCompute()):
        model = make(cfg, compute)
        opt = make_optimizer(cfg, model.params, compute, 600)
        before = [p.value.copy() for p in model.params]
        for i in range(3):
            flow = Flow()
            model.forward(flow, tiny_splits.trn_x[i * 20:(i + 1) * 20], tiny_splits.trn_y[i * 20:(i + 1) * 20])
            flow.backward()
            opt.step(flow.selections)
        finals.append([p.value for p in model.params])
        rows_changed = np.any(model.layers[1].W.value != before[2], axis=1).sum()
        # Lazy: at most 3 steps x k rows of a hidden weight move; exact: every row moves.
        assert (rows_changed <= 18) if lazy else (rows_changed == 48)
    for a, b in zip(*finals):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernels", ["numpy", "numba"])
@pytest.mark.parametrize("net_type,unified", NETS)
def test_float32_end_to_end(tiny_splits, monkeypatch, kernels, net_type, unified):
    """Every tensor made during a training step, every gradient and every optimizer state
    stays float32: nothing upcasts silently."""
    seen = []
    original = tensor.Tensor.__init__

    def spy(self, value, *args, **kwargs):
        original(self, value, *args, **kwargs)
        seen.append(self)
    monkeypatch.setattr(tensor.Tensor, "__init__", spy)
    cfg = Config(NetType=net_type, Unified=unified, HiddenSize=32, TrainTop=8, Dropout=0.1,
                 Kernels=kernels, L2RegFactor=0.01)
    compute = NumbaCompute() if kernels == "numba" else NumpyCompute()
    model = make(cfg, compute)
    opt = make_optimizer(cfg, model.params, compute, 600)
    flow = Flow()
    losses, _ = model.forward(flow, tiny_splits.trn_x[:16], tiny_splits.trn_y[:16])
    flow.backward()
    for t in seen:
        assert t.value.dtype == np.float32, t.name
        if t._grad is not None:
            assert t._grad.dtype == np.float32, t.name
    assert losses.dtype == np.float32
    opt.step()
    for p in model.params:
        assert p.value.dtype == np.float32 and p.grad.dtype == np.float32
        assert all(s.dtype == np.float32 for s in p.state.values())


def lockstep_step(pair, x, y):
    """One training step of a (Numba, NumPy) pair of (model, optimizer), the NumPy one first
    set to the Numba one's state; returns each side's (gradients, flow) before the update."""
    (mb, ob), (mn, on) = pair
    mn.load_state_dict(mb.state_dict())
    on.load_state_dict(ob.state_dict())
    out = []
    for model, opt in pair:
        flow = Flow()
        model.forward(flow, x, y)
        flow.backward()
        out.append(([p.grad.copy() for p in model.params], flow))
    for (model, opt), (_, flow) in zip(pair, out):
        opt.step(flow.selections)
    return out


@pytest.mark.parametrize("net_type, extra", [
    ("mlp", {}), ("mlptop", {"Unified": True}), ("mlptop", {}), ("mlprand", {"Dropout": 0.2}),
    ("mlpvar", {"Compact": True, "LazyUpdate": True})])
def test_kernels_agree_step_by_step_over_a_run(tiny_splits, net_type, extra):
    """What holds between `Kernels: numba` and `numpy` (docs/CONFIG.md): over an epoch,
    pruning and compaction included, each step from the same state makes the same choices
    (selections, rows touched, hits) and the same update rule's bits; meProp's sparse
    products differ by float32 rounding only (Numba's kernels sum with fused multiply-adds),
    and where both sides use the same BLAS products (dense and unified) nothing differs."""
    from nnmnist.nn.compact import compact
    cfg = Config(NetType=net_type, HiddenSize=48, TrainTop=12, Prune=0.3, TrainCycle=1,
                 **extra)
    pair = []
    for compute in (NumbaCompute(), NumpyCompute()):
        model = make(cfg, compute)
        pair.append((model, make_optimizer(cfg, model.params, compute, 600)))
    exact = net_type == "mlp" or cfg.Unified
    batch = 20
    for step in range(len(tiny_splits.trn_y) // batch):
        rows = slice(step * batch, (step + 1) * batch)
        (gb, fb), (gn, fn) = lockstep_step(pair, tiny_splits.trn_x[rows], tiny_splits.trn_y[rows])
        (mb, ob), (mn, on) = pair
        place = lambda model, flow: [i for i, w in enumerate(model.params)  # noqa: E731
                                     if w in flow.selections]
        assert place(mb, fb) == place(mn, fn)
        for wb, wn in zip(mb.params, mn.params):
            if wb in fb.selections:
                np.testing.assert_array_equal(fb.selections[wb].rows(mb.compute, wb.shape[0]),
                                              fn.selections[wn].rows(mn.compute, wn.shape[0]))
        for lb, ln in zip(mb.masked_layers, mn.masked_layers):
            np.testing.assert_array_equal(lb.hits, ln.hits)
        for a, b in zip(gb, gn):
            if exact:
                np.testing.assert_array_equal(a, b)
            else:  # rounding, relative to the gradient's scale
                assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max(), step
        for pb, pn in zip(mb.params, mn.params):
            if exact:
                np.testing.assert_array_equal(pb.value, pn.value)
            else:
                np.testing.assert_allclose(pb.value, pn.value, rtol=1e-6, atol=1e-7)
        if net_type == "mlpvar" and step % 10 == 9:
            for model, opt in pair:
                model.prune(cfg.Prune)
                compact(model, opt)
    assert net_type != "mlpvar" or "(48)" in mb.dims() and mb.dims() == mn.dims()
