"""meSimp compaction: removed neurons, and where compacted and masked training agree.

Compaction removes what cannot matter to the maths: an inactive neuron outputs 0 and gets
gradient 0. What it can change is meProp's choice among zero-gradient neurons: masked top-k
runs over every column, inactive ones included, so when a row has fewer than k non-zero
entries, the zero-gradient neurons it picks (lowest column first) differ. Those choices move
no weight; they only add hits, and a compacted layer takes the extra ones back. The tests pin
down each half: the raw selections differ exactly there, the corrected hits agree exactly,
and the weights agree to rounding (BLAS sums a shorter inner dimension in another order).
"""
import numpy as np
import pytest

from nnmnist.nn import compact as cm
from nnmnist.backends.cpu import NumbaCompute, NumpyCompute
from nnmnist.run.config import Config
from nnmnist.nn.networks import MLP
from nnmnist.optim import make_optimizer
from nnmnist.run.log import RunLog
from nnmnist.nn.tensor import Flow
from nnmnist.run.training import Trainer

COMPUTES = [NumpyCompute(), NumbaCompute()]


def build(compute, hidden=32, k=6, opt="adam", layers=3, seed=0, unified=False, lazy=False):
    cfg = Config(NetType="mlpvar", HiddenSize=hidden, TrainTop=k, Layers=layers, OptType=opt,
                 Unified=unified, LazyUpdate=lazy,
                 LearningRate=0.01 if opt != "adam" else 0.001)
    rng = np.random.default_rng(seed)
    model = MLP(cfg, 20, compute, rng)
    return model, make_optimizer(cfg, model.params, compute, 1000)


def switch_off(model, seed=1, keep=0.6):
    rng = np.random.default_rng(seed)
    for layer in model.masked_layers:
        active = rng.random(layer.n_out) < keep
        active[0] = True
        layer.active[...] = model.compute.xp.asarray(active)
        layer.mask[...] = layer.active


def train_steps(model, opt, xs, ys):
    for x, y in zip(xs, ys):
        flow = Flow()
        model.forward(flow, x, y)
        flow.backward()
        opt.step(flow.selections)  # what a lazy optimizer needs (a dense one ignores it)


def expand(layer_c, layer_m, a_c):
    """A compacted layer's per-neuron array, placed at its neurons' original columns."""
    out = np.zeros(layer_m.n_out, a_c.dtype)
    out[np.flatnonzero(layer_m.active)] = a_c
    return out


@pytest.mark.parametrize("compute", COMPUTES, ids=lambda c: c.name)
@pytest.mark.parametrize("opt", ["sgd", "adagrad", "adam", "rmsprop"])
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
    state = optim.state_dict()
    for name in optim.state_names:
        np.testing.assert_array_equal(state[f"{name}.0.W"], before[0][1][name][a1])
        np.testing.assert_array_equal(state[f"{name}.1.W"], before[2][1][name][a2][:, a1])
        np.testing.assert_array_equal(state[f"{name}.2.W"], before[4][1][name][:, a2])
        np.testing.assert_array_equal(state[f"{name}.1.b"], before[3][1][name][a2])
    # the flat store was rebuilt: every parameter is a view into it, and it is smaller
    assert model.store.size == sum(p.value.size for p in model.params) < 20 * 32 + 32 * 32 + 320
    for p in model.params:
        assert np.shares_memory(p.value, model.store.value)
    assert model.dims() == f"{a1.sum()}(32), {a2.sum()}(32), 10"
    assert [layer.n_out for layer in model.masked_layers] == [a1.sum(), a2.sum()]
    assert [layer.rule.k for layer in model.masked_layers] == [6, 6]


class SpyCompute(NumpyCompute):
    """The plain path, noting the fewest non-zero entries of any row top-k saw."""

    fewest = None

    def select_topk_rows(self, dy, k):
        least = int((dy != 0).sum(axis=1).min())
        self.fewest = least if self.fewest is None else min(self.fewest, least)
        return super().select_topk_rows(dy, k)


def twin_models(compute, hidden, k, keep, unified=False):
    """A masked model and the compacted copy of the same weights."""
    masked, opt_m = build(compute, hidden=hidden, k=k, unified=unified)
    switch_off(masked, keep=keep)
    compacted, opt_c = build(compute, hidden=hidden, k=k, unified=unified)
    switch_off(compacted, keep=keep)
    cm.compact(compacted, opt_c)
    return masked, opt_m, compacted, opt_c


def batches(n=5, batch=8, seed=5):
    rng = np.random.default_rng(seed)
    return ([rng.random((batch, 20), dtype=np.float32) for _ in range(n)],
            [rng.integers(0, 10, batch) for _ in range(n)])


@pytest.mark.parametrize("compute", COMPUTES, ids=lambda c: c.name)
@pytest.mark.parametrize("k, unified, short_rows", [(3, False, False), (20, False, True),
                                                    (30, False, True), (20, True, True)])
def test_compacted_training_keeps_the_masked_hits(compute, k, unified, short_rows):
    """Same hits (at the neurons' original columns), exactly, and the same weights to rounding
    after several steps; with short_rows, rows with fewer than k non-zero gradient entries
    occur, where the raw compacted top-k fills other neurons and the correction matters;
    k=30 leaves fewer than k active neurons in a layer, where the compacted top-k takes all."""
    xs, ys = batches()
    spy = SpyCompute()  # how short the rows get, on the plain path with the same weights and data
    m, o, _, _ = twin_models(spy, 40, k, 0.7)
    train_steps(m, o, xs, ys)
    assert (spy.fewest < k) == short_rows
    masked, opt_m, compacted, opt_c = twin_models(compute, 40, k, 0.7, unified)
    assert all(isinstance(layer, cm.CompactedDense) for layer in compacted.masked_layers)
    train_steps(masked, opt_m, xs, ys)
    train_steps(compacted, opt_c, xs, ys)
    for lm, lc in zip(masked.masked_layers, compacted.masked_layers):
        # active neurons (the masked layer also counts fills of its inactive ones, which
        # nothing reads: they stay inactive)
        np.testing.assert_array_equal(lc.hits, lm.hits[lm.active])
        assert lm.examples == lc.examples
    # weights: the masked network's active rows and columns equal the compacted ones
    a = [layer.active for layer in masked.masked_layers]
    W1m, W2m, W3m = (layer.W.value for layer in masked.layers)
    W1c, W2c, W3c = (layer.W.value for layer in compacted.layers)
    np.testing.assert_allclose(W1c, W1m[a[0]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(W2c, W2m[a[1]][:, a[0]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(W3c, W3m[:, a[1]], rtol=1e-5, atol=1e-6)
    # inactive neurons' weights never moved in the masked network: nothing was lost
    W1_start = build(compute, hidden=40, k=k)[0].layers[0].W.value
    np.testing.assert_array_equal(W1m[~a[0]], W1_start[~a[0]])


def test_without_the_correction_short_rows_change_the_hits():
    """The correction is what keeps the hits: switched off, compacted hits differ."""
    compute = NumpyCompute()
    xs, ys = batches()
    masked, opt_m, compacted, opt_c = twin_models(compute, 40, 20, 0.7)
    for layer in compacted.masked_layers:
        layer.__class__ = cm.MaskedDense
    train_steps(masked, opt_m, xs, ys)
    train_steps(compacted, opt_c, xs, ys)
    lm, lc = masked.masked_layers[0], compacted.masked_layers[0]
    extra = lc.hits - lm.hits[lm.active]
    assert extra.sum() > 0 and (extra >= 0).all()  # only more hits, never fewer


def zero_row_case(compute):
    """One example whose output gradient is non-zero at only 2 of 5 active neurons, k = 4."""
    active = np.array([1, 0, 1, 0, 1, 1, 0, 1], bool)
    dy = np.zeros((1, 8), np.float32)
    dy[0, 4], dy[0, 7] = 0.5, -2.0
    masked_hits = np.zeros(8, np.int64)
    compute.record_hits(compute.select_topk_rows(dy, 4), masked_hits)
    keep = np.flatnonzero(active)
    compact_hits = np.zeros(5, np.int64)
    chosen = compute.select_topk_rows(np.ascontiguousarray(dy[:, keep]), 4)
    compute.record_hits(chosen, compact_hits)
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
    # and fill_excess names exactly that difference
    nonzero = np.zeros((1, 5), bool)
    nonzero[0, [2, 4]] = True  # compacted columns of neurons 4 and 7
    excess = cm.fill_excess(nonzero, np.flatnonzero(active), 4, 4)
    np.testing.assert_array_equal(excess, compacted[active] - masked[active])


def test_fill_excess_against_a_naive_full_width_top_k():
    """Random patterns: the compacted top-k's fills minus fill_excess are the full-width ones."""
    rng = np.random.default_rng(7)
    c = NumpyCompute()
    for _ in range(200):
        total = int(rng.integers(2, 30))
        origin = np.sort(rng.choice(total, int(rng.integers(1, total + 1)), replace=False))
        n, k = len(origin), int(rng.integers(1, total + 1))
        dy = (rng.random((3, n)) < rng.random()) * rng.normal(size=(3, n))
        full = np.zeros((3, total))
        full[:, origin] = dy
        want = np.zeros(total, np.int64)
        c.record_hits(c.select_topk_rows(full, k), want)
        got = np.zeros(n, np.int64)
        c.record_hits(c.select_topk_rows(dy, min(k, n)), got)
        got -= cm.fill_excess(dy != 0, origin, k, min(k, n))
        np.testing.assert_array_equal(got, want[origin])
        assert want[np.setdiff1d(np.arange(total), origin)].sum() >= 0


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
    assert [layer.rule.k for layer in model.masked_layers] == [5, 5]
    x = np.random.default_rng(1).random((4, 20), dtype=np.float32)
    train_steps(model, opt, [x], [np.arange(4)])
    assert model.masked_layers[0].W.value.shape == (5, 20)


def op_by_op_dense(layer, flow, x):
    """The dense path of a compacted layer as separate matmul, bias and ReLU ops, with the
    hit counting and the correction recorded after them (so run before them)."""
    from nnmnist.nn import ops
    y = ops.relu(flow, ops.add_bias(flow, ops.matmul(flow, x, layer.W, layer.compute), layer.b))
    batch = x.shape[0]

    def count():
        layer.examples += batch
        layer.hits += batch
    flow.record(count)
    flow.record(lambda: layer._correct_hits(y))
    return y


@pytest.mark.parametrize("compute", COMPUTES, ids=lambda c: c.name)
def test_dense_path_is_the_op_by_op_form_exactly(compute):
    """The one-op dense path gives bit for bit what matmul, bias and ReLU ops give: output
    (signs of zeros included), W, b and x gradients, hits and examples."""
    from nnmnist.nn.tensor import Tensor
    model, opt = build(compute, hidden=12, k=10)
    switch_off(model, keep=0.5)
    cm.compact(model, opt)
    layer = model.layers[1]
    assert layer.rule.k >= layer.n_out  # the dense path
    rng = np.random.default_rng(3)
    x_raw = rng.standard_normal((16, layer.W.shape[1])).astype(np.float32)
    dy = rng.standard_normal((16, layer.n_out)).astype(np.float32)
    dy[rng.random(dy.shape) < 0.5] = 0  # rows with fewer than k non-zeros: fills to take back
    results = []
    for form in (lambda f, x: layer.activate(f, x), lambda f, x: op_by_op_dense(layer, f, x)):
        layer.W.grad[...] = 0
        layer.b.grad[...] = 0
        layer.hits[...] = 100
        layer.examples = 0
        flow = Flow()
        x = Tensor(x_raw.copy(), requires_grad=True)
        y = form(flow, x)
        out = y.value.copy()
        y.grad = dy.copy()
        flow.backward()
        results.append((out, layer.W.grad.copy(), layer.b.grad.copy(), x.grad.copy(),
                        layer.hits.copy(), layer.examples))
    (fused, ref) = results
    for a, b in zip(fused[:5], ref[:5]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b))
    assert fused[5] == ref[5] == 16
    assert (fused[4] < 116).any()  # some fills were taken back


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


def _gpu():
    try:
        from ..conftest import gpu_backend_runs
    except ImportError:  # tests/ is not a package: pytest put it on sys.path
        from conftest import gpu_backend_runs
    return gpu_backend_runs()


@pytest.mark.skipif(not _gpu(), reason="the GPU backend cannot run here: no device, no simulator")
@pytest.mark.parametrize("k, unified", [(20, False), (30, False), (20, True)])
def test_compaction_on_the_gpu_keeps_the_masked_hits(k, unified):
    """The CuPy path: compaction, the hit correction and the dense path for k >= n."""
    from nnmnist.backends import to_numpy
    from nnmnist.backends import get_compute
    compute = get_compute("gpu")
    xs, ys = batches()
    xs, ys = [compute.xp.asarray(x) for x in xs], [compute.xp.asarray(y) for y in ys]
    masked, opt_m, compacted, opt_c = twin_models(compute, 40, k, 0.7, unified)
    train_steps(masked, opt_m, xs, ys)
    train_steps(compacted, opt_c, xs, ys)
    for lm, lc in zip(masked.masked_layers, compacted.masked_layers):
        active = to_numpy(lm.active)
        np.testing.assert_array_equal(to_numpy(lc.hits), to_numpy(lm.hits)[active])
    a = [to_numpy(layer.active) for layer in masked.masked_layers]
    W2m, W2c = to_numpy(masked.layers[1].W.value), to_numpy(compacted.layers[1].W.value)
    np.testing.assert_allclose(W2c, W2m[a[1]][:, a[0]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("unified", [False, True])
def test_numba_take_back_matches_the_numpy_reference(unified):
    rng = np.random.default_rng(11)
    for _ in range(100):
        total = int(rng.integers(2, 40))
        origin = np.sort(rng.choice(total, int(rng.integers(1, total + 1)), replace=False))
        n, k = len(origin), int(rng.integers(1, total + 1))
        batch = int(rng.integers(1, 6))
        value = (rng.random((batch, n)) < rng.random()).astype(np.float32) * rng.random((batch, n),
                                                                                     np.float32)
        grad = (rng.random((batch, n)) < 0.9).astype(np.float32) * rng.normal(size=(batch, n)).astype(np.float32)
        want = np.full(n, 100, np.int64)
        cm.take_back_fills(value, grad, origin, k, min(k, n), unified, want)
        got = np.full(n, 100, np.int64)
        cm.take_back_fills_numba(value, grad, origin, k, min(k, n), unified, got)
        np.testing.assert_array_equal(got, want)


def test_a_rule_shared_by_two_layers_gets_each_layer_its_own_k():
    """A network built through the API may hand one rule object to several masked layers;
    compaction sets each layer's k from its own width, never another layer's."""
    compute = NumpyCompute()
    model, opt = build(compute, hidden=12, k=10)
    first, second = model.masked_layers
    second.rule = first.rule  # one TopK(10) for both
    first.active[5:] = False  # 5 left: k becomes 5
    second.active[9:] = False  # 9 left: k becomes 9
    for layer in (first, second):
        layer.mask[...] = layer.active
    cm.compact(model, opt)
    assert [layer.rule.k for layer in model.masked_layers] == [5, 9]


def copy_masked_into(masked, opt_m, compacted, opt_c):
    """The masked network's weights, optimizer state and hits, cut to the compacted network's
    neurons (its active ones), so that the next step starts both from the same point."""
    kept = {i: np.flatnonzero(layer.active) for i, layer in enumerate(masked.layers)
            if hasattr(layer, "active")}
    for i, (lm, lc) in enumerate(zip(masked.layers, compacted.layers)):
        rows = kept.get(i, np.arange(lm.n_out))
        cols = kept.get(i - 1, np.arange(lm.W.shape[1]))
        for pm, pc, at in ((lm.W, lc.W, np.ix_(rows, cols)), (lm.b, lc.b, rows)):
            pc.value[...] = pm.value[at]
            for name in opt_m.state_names:
                opt_c.state_of(pc)[name][...] = opt_m.state_of(pm)[name][at]
        if i in kept:
            lc.hits[...] = lm.hits[kept[i]]
    opt_c.t = opt_m.t


def step_differences(masked, opt_m, compacted, opt_c, x, y):
    """One lock-step training step from the same point; the largest difference of any weight
    and of any optimizer state entry of the compacted network from the masked one's."""
    copy_masked_into(masked, opt_m, compacted, opt_c)
    before = {name: [s.copy() for s in opt_m.state.views(name)] for name in opt_m.state_names}
    train_steps(masked, opt_m, [x], [y])
    train_steps(compacted, opt_c, [x], [y])
    kept = {i: np.flatnonzero(layer.active) for i, layer in enumerate(masked.layers)
            if hasattr(layer, "active")}
    weights = states = 0.0
    for i, (lm, lc) in enumerate(zip(masked.layers, compacted.layers)):
        rows = kept.get(i, np.arange(lm.n_out))
        cols = kept.get(i - 1, np.arange(lm.W.shape[1]))
        for j, (pm, pc, at) in enumerate(((lm.W, lc.W, np.ix_(rows, cols)), (lm.b, lc.b, rows))):
            weights = max(weights, float(np.abs(pc.value - pm.value[at]).max()))
            for name in opt_m.state_names:
                sm, sc = opt_m.state_of(pm)[name][at], opt_c.state_of(pc)[name]
                # relative to the entry's size before and after the step: a second moment may
                # be far below the weights' scale, and a first moment may cancel to near 0
                old = before[name][2 * i + j][at]
                scale = np.maximum(np.abs(sm) + np.abs(old), 1e-30)
                states = max(states, float((np.abs(sc - sm) / scale).max()))
    return weights, states


@pytest.mark.parametrize("compute", COMPUTES, ids=lambda c: c.name)
@pytest.mark.parametrize("opt", ["adam", "rmsprop"])
@pytest.mark.parametrize("k, unified", [(20, False), (30, False), (20, True)])
def test_lazy_update_of_compacted_layer_is_the_masked_one_step_by_step(compute, opt, k,
                                                                      unified):
    """LazyUpdate with a stateful rule: a touched row moves (Adam's m) or changes its state
    (RMSProp's r decays) even with zero gradient, so the compacted layer must touch exactly the
    rows the full-width selection touches, its extra zero-gradient fills left out. Trained in
    lock-step (the masked network's state copied into the compacted one before each step),
    no step differs beyond rounding. k=20 has rows with fewer than k non-zero entries (fills);
    k=30 leaves fewer than k active neurons in a layer (the compacted layer's dense path)."""
    xs, ys = batches(n=12, batch=5)
    masked, opt_m = build(compute, hidden=40, k=k, opt=opt, unified=unified, lazy=True)
    train_steps(masked, opt_m, xs[:4], ys[:4])  # non-zero moments before the pruning
    switch_off(masked, keep=0.7)
    compacted, opt_c = build(compute, hidden=40, k=k, opt=opt, unified=unified, lazy=True)
    switch_off(compacted, keep=0.7)
    assert cm.compact(compacted, opt_c)
    assert all(layer.lazy_rows for layer in compacted.masked_layers)
    assert (max(layer.n_out for layer in compacted.masked_layers) < k) == (k == 30)
    for x, y in zip(xs[4:], ys[4:]):
        weights, states = step_differences(masked, opt_m, compacted, opt_c, x, y)
        assert weights < 1e-6, f"a weight differs by {weights:.3g} (a step of its own)"
        assert states < 1e-4, f"an optimizer state entry differs by {states:.3g} relatively"


def test_full_width_rows_against_a_naive_full_width_top_k():
    """Random patterns: the columns a compacted top-k shares with the full-width top-k are
    the rows the full-width top-k touches (per example, unified, and all columns chosen)."""
    rng = np.random.default_rng(8)
    c = NumpyCompute()
    for _ in range(200):
        total = int(rng.integers(2, 30))
        origin = np.sort(rng.choice(total, int(rng.integers(1, total + 1)), replace=False))
        n, k = len(origin), int(rng.integers(1, total + 1))
        dy = ((rng.random((3, n)) < rng.random()) * rng.normal(size=(3, n))).astype(np.float32)
        full = np.zeros((3, total), np.float32)
        full[:, origin] = dy
        for unified in (False, True):
            if unified:
                want = c.select_topk_unified(full, k)
                chosen = c.select_topk_unified(dy, min(k, n))
                nonzero = (dy != 0).any(axis=0, keepdims=True)
            else:
                want = np.unique(c.select_topk_rows(full, k))
                chosen = c.select_topk_rows(dy, min(k, n))
                nonzero = dy != 0
            got = cm.full_width_rows(nonzero, chosen, origin, k, min(k, n))
            np.testing.assert_array_equal(origin[np.unique(got)], np.intersect1d(want, origin))
            # the compiled path: noted while taking back the hits, completed after the backward
            value = np.abs(dy) + (dy != 0)  # positive where the gradient is non-zero
            for dense in (False, True) if k >= n else (False,):
                short = np.zeros(1 if unified else 3, np.int64)
                mark = np.zeros(n, np.int64)
                cm.take_back_fills_numba(value, dy, origin, k, min(k, n), unified,
                                         np.zeros(n, np.int64), mark=mark, short=short)
                rows = cm.full_width_rows_numba(None if dense else chosen, short, mark)
                assert rows.dtype == np.int32
                np.testing.assert_array_equal(origin[rows], np.intersect1d(want, origin))
            if k >= n and not unified:  # the dense path: every column chosen
                got = cm.full_width_rows(nonzero, None, origin, k, n)
                np.testing.assert_array_equal(origin[np.unique(got)], np.intersect1d(want, origin))
