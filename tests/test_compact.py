"""meSimp compaction: removed neurons, and where compacted and masked training agree.

Compaction removes what cannot matter to the maths: an inactive neuron outputs 0 and gets
gradient 0. What it can change is meProp's choice among zero-gradient neurons: masked top-k
runs over every column, inactive ones included, so when a row has fewer than k non-zero
entries, the zero-gradient neurons it picks (lowest column first) differ. Those choices move
no weight; they only add hits. The tests pin both halves down.
"""
import numpy as np
import pytest

from nnmnist import compact as cm
from nnmnist.compute import NumbaCompute, NumpyCompute
from nnmnist.config import Config
from nnmnist.networks import MLP
from nnmnist.optim import make_optimizer
from nnmnist.runlog import RunLog
from nnmnist.tensor import Flow, Tensor
from nnmnist.train import Trainer

COMPUTES = [NumpyCompute(), NumbaCompute()]


def test_array_functions_against_a_naive_loop():
    rng = np.random.default_rng(0)
    W, b, W_next = rng.normal(size=(6, 4)), rng.normal(size=6), rng.normal(size=(3, 6))
    keep = np.array([0, 2, 5])
    W2, b2, Wn2 = cm.compact_arrays(W, b, W_next, keep)
    assert W2.shape == (3, 4) and b2.shape == (3,) and Wn2.shape == (3, 3)
    for r, j in enumerate(keep):
        np.testing.assert_array_equal(W2[r], W[j])
        assert b2[r] == b[j]
        for o in range(3):
            assert Wn2[o, r] == W_next[o, j]
    W2[0, 0] = 99  # copies, not views
    assert W[0, 0] != 99


def build(compute, hidden=32, k=6, opt="adam", layers=3, seed=0):
    cfg = Config(NetType="mlpvar", HiddenSize=hidden, TrainTop=k, Layers=layers, OptType=opt,
                 LearningRate=0.01 if opt != "adam" else 0.001)
    rng = np.random.default_rng(seed)
    model = MLP(cfg, 20, compute, rng)
    return model, make_optimizer(cfg, model.params, compute, 1000)


def switch_off(model, seed=1, keep=0.6):
    rng = np.random.default_rng(seed)
    for layer in model.masked_layers:
        layer.active[...] = rng.random(layer.n_out) < keep
        layer.active[0] = True
        layer.mask[...] = layer.active


def train_steps(model, opt, xs, ys):
    for x, y in zip(xs, ys):
        flow = Flow()
        model.forward(flow, x, y)
        flow.backward()
        opt.step()


def expand(layer_c, layer_m, a_c):
    """A compacted layer's per-neuron array, placed at its neurons' original columns."""
    out = np.zeros(layer_m.n_out, a_c.dtype)
    out[np.flatnonzero(layer_m.active)] = a_c
    return out


@pytest.mark.parametrize("compute", COMPUTES, ids=lambda c: c.name)
@pytest.mark.parametrize("opt", ["sgd", "adagrad", "adam"])
def test_compacted_arrays_are_the_active_ones_with_their_state(compute, opt):
    model, optim = build(compute, opt=opt)
    rng = np.random.default_rng(3)
    xs = [rng.random((10, 20), dtype=np.float32) for _ in range(3)]
    ys = [rng.integers(0, 10, 10) for _ in range(3)]
    train_steps(model, optim, xs, ys)
    switch_off(model)
    before = [(p.value.copy(), {n: s.copy() for n, s in p.state.items()}) for p in model.params]
    actives = [layer.active.copy() for layer in model.masked_layers]
    assert cm.compact(model, optim)
    (W1, b1), (W2, b2), (W3, b3) = [(layer.W, layer.b) for layer in model.layers]
    a1, a2 = actives
    expect = [before[0][0][a1], before[1][0][a1], before[2][0][a2][:, a1], before[3][0][a2],
              before[4][0][:, a2], before[5][0]]
    for p, e, (_, state) in zip(model.params, expect, before):
        np.testing.assert_array_equal(p.value, e)
    # optimizer state: the same cuts
    names = optim.state_names
    for name in names:
        np.testing.assert_array_equal(W1.state[name], before[0][1][name][a1])
        np.testing.assert_array_equal(W2.state[name], before[2][1][name][a2][:, a1])
        np.testing.assert_array_equal(W3.state[name], before[4][1][name][:, a2])
    # the flat store was rebuilt: every parameter is a view into it, and it is smaller
    if optim.flat is not None:
        assert optim.flat.value.size == sum(p.value.size for p in model.params)
        for p in model.params:
            assert np.shares_memory(p.value, optim.flat.value)
    assert model.dims() == f"{a1.sum()}(32), {a2.sum()}(32), 10"
    assert [layer.n_out for layer in model.masked_layers] == [a1.sum(), a2.sum()]
    assert [layer.selector.k for layer in model.masked_layers] == [6, 6]


class SpyCompute(NumpyCompute):
    """The plain path, noting the fewest non-zero entries of any row top-k saw."""

    fewest = None

    def select_topk_rows(self, dy, k):
        least = int((dy != 0).sum(axis=1).min())
        self.fewest = least if self.fewest is None else min(self.fewest, least)
        return super().select_topk_rows(dy, k)


def twin_models(compute, hidden, k, keep):
    """A masked model and the compacted copy of the same weights."""
    masked, opt_m = build(compute, hidden=hidden, k=k)
    switch_off(masked, keep=keep)
    compacted, opt_c = build(compute, hidden=hidden, k=k)
    switch_off(compacted, keep=keep)
    cm.compact(compacted, opt_c)
    return masked, opt_m, compacted, opt_c


def batches(n=5, batch=8, seed=5):
    rng = np.random.default_rng(seed)
    return ([rng.random((batch, 20), dtype=np.float32) for _ in range(n)],
            [rng.integers(0, 10, batch) for _ in range(n)])


@pytest.mark.parametrize("compute", COMPUTES, ids=lambda c: c.name)
def test_training_agrees_when_every_row_has_k_nonzero_gradients(compute):
    """Same weights, same hits (at the neurons' original columns) after several steps."""
    xs, ys = batches()
    spy = SpyCompute()  # the premise, on the plain path with the same weights and data
    m, o, _, _ = twin_models(spy, 40, 3, 0.7)
    train_steps(m, o, xs, ys)
    assert spy.fewest >= 3
    masked, opt_m, compacted, opt_c = twin_models(compute, 40, 3, 0.7)
    train_steps(masked, opt_m, xs, ys)
    train_steps(compacted, opt_c, xs, ys)
    for lm, lc in zip(masked.masked_layers, compacted.masked_layers):
        np.testing.assert_array_equal(expand(lc, lm, lc.hits), lm.hits)
        assert lm.reference == lc.reference
    # weights: the masked network's active rows and columns equal the compacted ones
    a = [layer.active for layer in masked.masked_layers]
    W1m, W2m, W3m = (layer.W.value for layer in masked.layers)
    W1c, W2c, W3c = (layer.W.value for layer in compacted.layers)
    np.testing.assert_allclose(W1c, W1m[a[0]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(W2c, W2m[a[1]][:, a[0]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(W3c, W3m[:, a[1]], rtol=1e-5, atol=1e-6)
    # inactive neurons' weights never moved in the masked network: nothing was lost
    W1_start, _ = build(compute, hidden=40, k=3)[0].layers[0].W.value, None
    np.testing.assert_array_equal(W1m[~a[0]], W1_start[~a[0]])


def zero_row_case(compute):
    """One example whose output gradient is non-zero at only 2 of 5 active neurons, k = 4."""
    active = np.array([1, 0, 1, 0, 1, 1, 0, 1], bool)
    dy = np.zeros((1, 8), np.float32)
    dy[0, 4], dy[0, 7] = 0.5, -2.0
    masked_hits = np.zeros(8, np.int64)
    compute.record_choice("rows", compute.select_topk_rows(dy, 4), 1, masked_hits)
    keep = np.flatnonzero(active)
    compact_hits = np.zeros(5, np.int64)
    chosen = compute.select_topk_rows(np.ascontiguousarray(dy[:, keep]), 4)
    compute.record_choice("rows", chosen, 1, compact_hits)
    return active, masked_hits, expand(None, type("L", (), {"n_out": 8, "active": active}),
                                       compact_hits)


@pytest.mark.parametrize("compute", COMPUTES, ids=lambda c: c.name)
def test_a_row_with_fewer_than_k_nonzeros_may_hit_other_neurons(compute):
    active, masked, compacted = zero_row_case(compute)
    # the two non-zero neurons are chosen either way
    assert masked[4] == compacted[4] == 1 and masked[7] == compacted[7] == 1
    # masked top-k fills with the lowest zero columns 0 and 1 (1 is inactive);
    # compacted top-k has only active neurons to fill with: 0 and 2
    np.testing.assert_array_equal(masked, [1, 1, 0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(compacted, [1, 0, 1, 0, 1, 0, 0, 1])
    # so hits may differ only on zero-gradient neurons
    differ = np.flatnonzero(masked[active] != compacted[active])
    assert list(np.flatnonzero(active)[differ]) == [2]


@pytest.mark.parametrize("compute", COMPUTES, ids=lambda c: c.name)
def test_forward_of_compacted_equals_masked(compute):
    masked, _, compacted, _ = twin_models(compute, 50, 10, 0.4)
    x = np.random.default_rng(2).random((64, 20), dtype=np.float32)
    y = np.zeros(64, np.int64)
    lm, pm = masked.forward(Flow(training=False), x, y)
    lc, pc = compacted.forward(Flow(training=False), x, y)
    np.testing.assert_allclose(lc, lm, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pc, pm)


def test_fewer_active_neurons_than_k_chooses_them_all():
    compute = NumpyCompute()
    model, opt = build(compute, hidden=12, k=10)
    for layer in model.masked_layers:
        layer.active[5:] = False
        layer.mask[...] = layer.active
    cm.compact(model, opt)
    assert [layer.selector.k for layer in model.masked_layers] == [5, 5]
    x = np.random.default_rng(1).random((4, 20), dtype=np.float32)
    train_steps(model, opt, [x], [np.arange(4)])
    assert model.masked_layers[0].W.value.shape == (5, 20)


def test_a_layer_with_no_active_neuron_stays_masked():
    compute = NumpyCompute()
    model, opt = build(compute, hidden=12, k=4)
    model.masked_layers[0].active[...] = False
    model.masked_layers[0].mask[...] = 0
    assert not cm.compact(model, opt)
    assert model.masked_layers[0].n_out == 12


@pytest.mark.parametrize("kernels", ["numpy", "numba"])
def test_run_with_compaction_shrinks_and_logs_active_of_total(tiny_splits, kernels):
    cfg = Config(NetType="mlpvar", HiddenSize=32, TrainTop=8, MaxEpoch=2, IterPerEpoch=3,
                 TrainCycle=1, Prune=0.1, RandomSeed=4, Kernels=kernels)
    t = Trainer(cfg, tiny_splits)
    log = RunLog(console=False)
    t.train(log)
    dims = [line for line in log.lines if line.startswith("Dims: ")]
    assert dims and dims[-1] == "Dims: " + t.model.dims()
    for layer in t.model.masked_layers:
        assert layer.n_out == layer.active_count < 32 and layer.n_total == 32
        assert layer.W.value.shape[0] == layer.n_out
    assert t.model.layers[-1].W.value.shape[1] == t.model.masked_layers[-1].n_out
    assert t.result.best_dev > 30  # it learned (chance is 10 %)
