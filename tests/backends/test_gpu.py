"""One test body over both backends: `numpy` everywhere, `cupy` (the GPU backend) on a device or
in Numba's CUDA simulator (tests/conftest.py turns it on unless NUMBA_ENABLE_CUDASIM=0).

Every test computes with a backend's compute object and checks it against a NumPy reference:
the naive loops of tests/naive.py, central differences in float64, or the update equations. The
numpy half therefore checks the reference itself against those; the cupy half checks the GPU
against the same references, so the two array modules are compared through them. Whole
training runs of the GPU backend are compared with the CPU's in test_gpu_mnist.py.

Under the simulator the cupy half runs the GPU backend's code with NumPy arrays and the kernels
in the simulator, so CI (which has no GPU) runs it too; the checks that need real hardware are
marked `needs_device`.
"""
import time

import numpy as np
import pytest

from nnmnist.nn import ops
from nnmnist.backends import get_compute, gpu_available, to_numpy
from nnmnist.backends.cpu import NumpyCompute
from nnmnist.run.config import Config
from nnmnist.nn.networks import MLP
from nnmnist.optim import make_optimizer, optimizer_class
from nnmnist.run.log import RunLog
from nnmnist.nn.select import Selection, TopK, UnifiedTopK
from nnmnist.nn.tensor import Flow, Tensor
from nnmnist.run.training import train_and_evaluate

try:
    from . import naive
    from .conftest import GPU_REASON, gpu_backend_runs, synthetic_splits
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    import naive
    from conftest import GPU_REASON, gpu_backend_runs, synthetic_splits

GPU = gpu_available()  # a real device in this process (never under the simulator)
needs_gpu = pytest.mark.skipif(not gpu_backend_runs(), reason=GPU_REASON)
needs_device = pytest.mark.skipif(not GPU, reason="needs real GPU hardware (timing on the device); "
                                                  "the simulator cannot show it")
ARRAY_MODULES = [pytest.param("numpy"), pytest.param("cupy", marks=needs_gpu)]


class Backend:
    """A compute object with helpers to move arrays to it and back."""

    def __init__(self, compute):
        self.c, self.xp, self.name = compute, compute.xp, compute.name

    def put(self, a):
        """A copy on this backend (never the caller's array itself: the ops work in place)."""
        return self.xp.array(a)

    def tensor(self, a, requires_grad=True):
        return Tensor(self.put(a), requires_grad=requires_grad)


@pytest.fixture(scope="module", params=ARRAY_MODULES)
def be(request):
    if request.param == "numpy":
        return Backend(NumpyCompute())
    from nnmnist.backends.cuda import CupyCompute
    compute = CupyCompute()
    compute.warmup()
    return Backend(compute)


def get(a):
    return None if a is None else to_numpy(a)


# -- gradients of every op, against central differences computed with NumPy in float64 --------

EPS = 1e-6


def check_op_gradients(be, build, inputs, seed=0, n_dirs=3):
    """Backward on the backend vs (L(x + eps d) - L(x - eps d)) / 2 eps computed on the host,
    with L = sum(R * build(x)) for a fixed random R."""
    rng = np.random.default_rng(seed)
    flow = Flow()
    dev_inputs = [be.tensor(a) for a in inputs]
    out = build(be, flow, *dev_inputs)
    assert out.value.dtype == np.float64
    R = rng.normal(size=out.shape)
    out.grad = be.put(R)
    flow.backward()
    host = Backend(NumpyCompute())

    def L(values):
        return float((get(build(host, Flow(training=False), *map(Tensor, values)).value) * R).sum())
    for i, t in enumerate(dev_inputs):
        analytic_grad = get(t.grad)
        assert analytic_grad.shape == inputs[i].shape and analytic_grad.dtype == np.float64
        for _ in range(n_dirs):
            d = rng.normal(size=inputs[i].shape)
            hi = [a + EPS * d if j == i else a for j, a in enumerate(inputs)]
            lo = [a - EPS * d if j == i else a for j, a in enumerate(inputs)]
            numeric = (L(hi) - L(lo)) / (2 * EPS)
            analytic = float((analytic_grad * d).sum())
            assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-7), \
                f"{be.name} input {i}: numeric {numeric} vs analytic {analytic}"


def test_matmul_gradient(be):
    rng = np.random.default_rng(1)
    check_op_gradients(be, lambda b, f, x, W: ops.matmul(f, x, W, b.c),
                       [rng.normal(size=(4, 6)), rng.normal(size=(5, 6))])


def test_add_bias_gradient(be):
    rng = np.random.default_rng(2)
    check_op_gradients(be, lambda b, f, h, bias: ops.add_bias(f, h, bias),
                       [rng.normal(size=(4, 5)), rng.normal(size=5)])


def test_relu_gradient(be):
    x = np.random.default_rng(3).normal(size=(4, 7))
    x[np.abs(x) < 1e-3] = 0.5  # away from the kink
    check_op_gradients(be, lambda b, f, t: ops.relu(f, t), [x])


def test_mask_gradient(be):
    m = np.array([1, 0, 1, 1, 0], dtype=np.float64)
    check_op_gradients(be, lambda b, f, t: ops.mask(f, t, b.put(m)),
                       [np.random.default_rng(4).normal(size=(3, 5))])


def test_meprop_matmul_with_all_k_is_the_exact_gradient(be):
    rng = np.random.default_rng(5)
    for rule in (TopK(5), UnifiedTopK(5)):
        def build(b, f, x, W, rule=rule):
            return ops.meprop_matmul(f, x, W, b.c, lambda g: rule(g, b.c, None))
        check_op_gradients(be, build, [rng.normal(size=(4, 6)), rng.normal(size=(5, 6))])


def test_softmax_cross_entropy_gradient(be):
    rng = np.random.default_rng(6)
    z = rng.normal(size=(5, 4))
    labels = np.array([0, 3, 1, 1, 2])
    t = be.tensor(z)
    flow = Flow()
    losses, pred = ops.softmax_cross_entropy(flow, t, be.put(labels), be.xp)
    flow.backward()
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(get(losses), -np.log(p[np.arange(5), labels]), rtol=1e-12)
    np.testing.assert_array_equal(get(pred), z.argmax(1))
    np.testing.assert_allclose(get(t.grad), p - np.eye(4)[labels], rtol=1e-10, atol=1e-15)

    def L(v):  # the summed loss, whose gradient p - onehot is
        return float(ops.softmax_cross_entropy(Flow(False), Tensor(v), labels, np)[0].sum())
    for _ in range(3):
        d = rng.normal(size=z.shape)
        numeric = (L(z + EPS * d) - L(z - EPS * d)) / (2 * EPS)
        assert numeric == pytest.approx(float((get(t.grad) * d).sum()), rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout(be, dtype):
    p = 0.3
    x = np.random.default_rng(7).normal(size=(200, 100)).astype(dtype)
    t = be.tensor(x)
    flow = Flow()
    y = ops.dropout(flow, t, p, np.random.default_rng(9), be.c)
    R = np.random.default_rng(8).normal(size=x.shape).astype(dtype)
    y.grad = be.put(R)
    flow.backward()
    y, g = get(y.value), get(t.grad)
    assert y.dtype == dtype and g.dtype == dtype
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 0.02, kept.mean()
    scale = dtype(1.0 / (1.0 - p))
    np.testing.assert_array_equal(y[kept], x[kept] * scale)
    np.testing.assert_array_equal(g, np.where(kept, R * scale, 0))
    again = ops.dropout(Flow(), be.tensor(x), p, np.random.default_rng(9), be.c)
    np.testing.assert_array_equal(get(again.value) != 0, kept)  # same seed, same draw


# -- meProp selection ------------------------------------------------------------------------

def rows_with_ties(rng, B, n, dtype):
    a = rng.standard_normal((B, n)).astype(dtype)
    a[0] = 0.0                                       # all equal
    a[1] = rng.integers(-2, 3, n)                    # heavy ties, both signs
    a[2, rng.random(n) < 0.5] = 0.0                  # ReLU-like zeros
    a[3, ::7] = np.nan                               # NaN ranks below every number
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,k", [(500, 1), (500, 80), (500, 160), (500, 499), (500, 500),
                                 (37, 5), (3000, 64)])
def test_select_topk_rows(be, dtype, n, k):
    a = rows_with_ties(np.random.default_rng([n, k]), 6, n, dtype)
    idx = be.c.select_topk_rows(be.put(a), k)
    assert idx.shape == (6, k) and idx.dtype == np.int32
    np.testing.assert_array_equal(get(idx), naive.topk_rows(a, k))


@pytest.mark.parametrize("n,k", [(500, 80), (8192, 8), (8192, 64)])
def test_select_topk_unified(be, n, k):
    rng = np.random.default_rng(n + k)
    a = rng.integers(-3, 4, (50, n)).astype(np.float32)  # integer sums: exact in any order, many ties
    cols = be.c.select_topk_unified(be.put(a), k)
    assert cols.shape == (k,) and cols.dtype == np.int32
    np.testing.assert_array_equal(get(cols), naive.topk_cols_unified(a, k))


def test_select_random(be):
    B, n, k = (100 if be.name == "cupy" else 400), 50, 10  # the simulator: ~0.1 s a row
    idx = get(be.c.select_random_rows(np.random.default_rng(3), B, n, k))
    assert idx.shape == (B, k) and idx.dtype == np.int32
    assert np.all(np.diff(idx, axis=1) > 0) and idx.min() >= 0 and idx.max() < n  # distinct, sorted
    counts = np.bincount(idx.ravel(), minlength=n)
    expected = B * k / n
    assert np.all(np.abs(counts - expected) < 6 * np.sqrt(expected)), counts
    again = get(be.c.select_random_rows(np.random.default_rng(3), B, n, k))
    np.testing.assert_array_equal(idx, again)                          # seeded: reproducible
    assert len({tuple(r) for r in idx}) > B // 2                       # rows differ
    cols = get(be.c.select_random_unified(np.random.default_rng(4), n, k))
    assert cols.shape == (k,) and np.all(np.diff(cols) > 0) and cols.max() < n


# -- meProp backward, meSimp record, lazily updated rows -------------------------------------

@pytest.mark.parametrize("need_dx", [True, False])
def test_meprop_backward_rows_and_cols(be, need_dx):
    rng = np.random.default_rng(11)
    B, n_in, n_out, k = 20, 30, 50, 7
    x = rng.random((B, n_in)).astype(np.float32)
    W = rng.standard_normal((n_out, n_in)).astype(np.float32)
    dy = rng.standard_normal((B, n_out)).astype(np.float32)
    dW0 = rng.standard_normal((n_out, n_in)).astype(np.float32)
    idx = naive.topk_rows(dy, k).astype(np.int32)
    dW = be.put(dW0)
    dx = be.c.meprop_backward_rows(be.put(x), be.put(W), be.put(dy), be.put(idx), dW, need_dx)
    dx_ref, dW_ref = naive.sparse_backward(x, W, dy, idx, dW0)
    np.testing.assert_allclose(get(dW), dW_ref, rtol=1e-5, atol=1e-5)
    if need_dx:
        assert dx.shape == (B, n_in) and dx.dtype == np.float32
        np.testing.assert_allclose(get(dx), dx_ref, rtol=1e-5, atol=1e-5)
    else:
        assert dx is None
    cols = naive.topk_cols_unified(dy, k).astype(np.int32)
    dW = be.put(dW0)
    dx = be.c.meprop_backward_cols(be.put(x), be.put(W), be.put(dy), be.put(cols), dW, need_dx)
    dx_ref, dW_ref = naive.sparse_backward(x, W, dy, np.tile(cols, (B, 1)), dW0)
    np.testing.assert_allclose(get(dW), dW_ref, rtol=1e-5, atol=1e-5)
    if need_dx:
        np.testing.assert_allclose(get(dx), dx_ref, rtol=1e-5, atol=1e-5)


def test_record_hits_and_touched_rows(be):
    rng = np.random.default_rng(12)
    idx = np.sort(rng.choice(40, size=(25, 6), replace=True), axis=1).astype(np.int32)
    hits0 = rng.integers(0, 5, 40).astype(np.int64)
    hits = be.put(hits0)
    be.c.record_hits(be.put(idx), hits)
    np.testing.assert_array_equal(get(hits), naive.record_hits(idx, hits0))
    touched = get(Selection(be.put(idx), 25).rows(be.c, 40))
    rows = np.flatnonzero(touched) if touched.dtype == np.bool_ else touched  # mask or list
    np.testing.assert_array_equal(rows, naive.rows_touched(idx))
    cols = be.put(np.array([3, 9, 17], np.int32))
    np.testing.assert_array_equal(get(Selection(cols, 25, unified=True).rows(be.c, 40)), [3, 9, 17])


# -- optimizers: a few steps of each rule against the equations written out -------------------

ADAM_LR_T = naive.adam_lr_t(0.01, 1)
SCALARS = {"sgd": (0.05, 5.0), "adagrad": (0.1, 1e-6, 0.01, 5.0), "adam": (ADAM_LR_T, 0.01, 5.0),
           "rmsprop": (0.01, 0.9, 1e-6, 0.01, 5.0)}
# The equations written out (tests/naive.py): (w, g, state) -> (w, state)
REFERENCE = {
    "sgd": lambda w, g, s: (naive.sgd_step(w, g, *SCALARS["sgd"])[0], s),
    "adagrad": lambda w, g, s: (lambda r: (r[0], [r[2]]))(
        naive.adagrad_step(w, g, s[0], *SCALARS["adagrad"])),
    "adam": lambda w, g, s: (lambda r: (r[0], [r[2], r[3]]))(
        naive.adam_step(w, g, s[0], s[1], *SCALARS["adam"])),
    "rmsprop": lambda w, g, s: (lambda r: (r[0], [r[2]]))(
        naive.rmsprop_step(w, g, s[0], *SCALARS["rmsprop"])),
}
N_STATE = {"sgd": 0, "adagrad": 1, "adam": 2, "rmsprop": 1}


def rule_of(name):
    return optimizer_class(name).rule


def step_on(compute, name, w, g, state):
    compute.update(rule_of(name), w, g, state, SCALARS[name])


def grad_steps(seed, shape, steps=3):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape) * 4).astype(np.float32) for _ in range(steps)]  # clip bites


@pytest.mark.parametrize("rule", list(N_STATE))
def test_optimizer_steps(be, rule):
    shape = (6, 9)
    w0 = np.random.default_rng(20).standard_normal(shape).astype(np.float32)
    reference = REFERENCE[rule]
    w, state = be.put(w0), [be.put(np.zeros(shape, np.float32)) for _ in range(N_STATE[rule])]
    w_ref, state_ref = w0.copy(), [np.zeros(shape, np.float32) for _ in range(N_STATE[rule])]
    w_np, state_np = w0.copy(), [np.zeros(shape, np.float32) for _ in range(N_STATE[rule])]
    for g_host in grad_steps(21, shape):
        g = be.put(g_host)
        step_on(be.c, rule, w, g, state)
        assert np.all(get(g) == 0), "the update must zero the gradient"
        w_ref, state_ref = reference(w_ref, g_host, state_ref)
        step_on(NumpyCompute(), rule, w_np, g_host.copy(), state_np)
    assert get(w).dtype == np.float32
    np.testing.assert_allclose(get(w), w_ref, rtol=2e-6, atol=1e-7)
    for s, s_ref in zip(state, state_ref):
        np.testing.assert_allclose(get(s), s_ref, rtol=2e-6, atol=1e-9)
    if be.name == "numpy":
        return  # the bit-for-bit check below would compare the NumPy body with itself
    # Each operation is rounded as NumPy rounds it (no fused multiply-add): the same bits.
    np.testing.assert_array_equal(get(w), w_np)
    for s, s_np in zip(state, state_np):
        np.testing.assert_array_equal(get(s), s_np)


@pytest.mark.parametrize("rule", list(N_STATE))
@pytest.mark.parametrize("form", ["list", "touched"])
def test_optimizer_rows(be, rule, form):
    """Only the given rows change (W, state, and G zeroed there); they change as a full step would."""
    shape, n_state = (10, 7), N_STATE[rule]
    rng = np.random.default_rng(30)
    W0, G0 = rng.standard_normal(shape).astype(np.float32), grad_steps(31, shape, 1)[0]
    S0 = [np.abs(rng.standard_normal(shape)).astype(np.float32) for _ in range(n_state)]
    chosen = np.array([[1, 4], [4, 8], [1, 8]], np.int32)
    listed = np.array([1, 4, 8], np.int32)
    rows = (be.put(listed) if form == "list"
            else Selection(be.put(chosen), 3).rows(be.c, shape[0]))
    W, G, S = be.put(W0), be.put(G0), [be.put(s) for s in S0]
    be.c.update_rows(rule_of(rule), W, G, S, rows, SCALARS[rule])
    # Expected: the equations written out, on the listed rows alone.
    w_ref, s_ref = REFERENCE[rule](W0[listed], G0[listed], [s[listed] for s in S0])
    W, G, S = get(W), get(G), [get(s) for s in S]
    others = np.setdiff1d(np.arange(shape[0]), listed)
    np.testing.assert_allclose(W[listed], w_ref, rtol=2e-6, atol=1e-7)
    assert np.all(G[listed] == 0)
    np.testing.assert_array_equal(W[others], W0[others])
    np.testing.assert_array_equal(G[others], G0[others])
    for s, s0, sr in zip(S, S0, s_ref):
        np.testing.assert_allclose(s[listed], sr, rtol=2e-6, atol=1e-9)
        np.testing.assert_array_equal(s[others], s0[others])


# -- a short training slice for each network type --------------------------------------------

SLICES = {
    "mlp-adam": dict(NetType="mlp", LearningRate=0.005),
    "mlp-sgd-dropout": dict(NetType="mlp", OptType="sgd", LearningRate=0.01, Dropout=0.2),
    "mlptop-adagrad": dict(NetType="mlptop", OptType="adagrad", LearningRate=0.01),
    "mlptop-unified-lazy": dict(NetType="mlptop", Unified=True, LazyUpdate=True, LearningRate=0.005),
    "mlprand": dict(NetType="mlprand", LearningRate=0.005),
    "mlpvar-lazy": dict(NetType="mlpvar", TrainCycle=1, LazyUpdate=True, LearningRate=0.005),
}
RANDOM_DRAWS = {"mlp-sgd-dropout", "mlprand"}


def run_slice(name, compute):
    cfg = Config(MaxEpoch=2, IterPerEpoch=2, HiddenSize=32, TrainTop=8, MinibatchSize=25,
                 RandomSeed=5, Kernels="numpy", **SLICES[name])
    splits = synthetic_splits(n_trn=300, n_dev=100, n_tst=100)
    with RunLog(console=False) as log:
        return train_and_evaluate(cfg, splits, log, compute=compute)


@pytest.mark.parametrize("name", list(SLICES))
def test_training_slice(name):
    """A short run of each network type learns on the NumPy reference. The GPU backend's whole
    runs are compared with the CPU's in test_gpu_mnist.py (on MNIST, in the simulator)."""
    res = run_slice(name, NumpyCompute())
    parts = res.parts
    assert len(parts) == 4 and res.param_count == 784 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    chance_free = 40 if name in RANDOM_DRAWS else 60  # random draws: more spread between seeds
    assert parts[-1]["dev_acc"] > chance_free, f"{name} did not learn: dev {parts[-1]['dev_acc']}"
    assert parts[-1]["train_loss"] < parts[0]["train_loss"]
    if name.startswith("mlpvar"):
        hidden = parts[-1]["dims"][:-1]
        assert len(hidden) == 2 and all(0 < d <= 32 for d in hidden) and min(hidden) < 32, hidden


# -- choosing the backend --------------------------------------------------------------------

@pytest.mark.skipif(GPU, reason="checks the error a machine without a GPU gives")
def test_gpu_request_without_gpu_is_a_clear_error(tmp_path):
    """Without the simulator and without a device, --backend gpu stops in one line (exit 2)."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    proc = subprocess.run([sys.executable, str(repo / "run.py"), str(repo / "configs/default.json"),
                           "--backend", "gpu", "--log-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "gpu" in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())  # no log file


@needs_gpu
def test_gpu_backend_is_chosen_in_one_place():
    from nnmnist.backends.cuda import CupyCompute
    from nnmnist.backends.device import simulated
    compute = get_compute("gpu")
    assert isinstance(compute, CupyCompute)
    assert compute.xp.__name__ == ("numpy" if simulated() else "cupy")
    assert (compute.note is not None) == simulated()


# -- no host round trip inside the minibatch loop --------------------------------------------

@needs_device
def test_minibatch_steps_never_wait_for_the_device():
    """Queue a kernel that keeps the GPU busy for a second, then run minibatches of forward,
    backward and update: the host must get through them long before the GPU is free. Any
    read-back (a size, a scalar, a copy to the host) would wait for the busy kernel."""
    import cupy as cp
    from numba import cuda
    from nnmnist.backends.cuda import CupyCompute

    @cuda.jit
    def spin(ms):
        for _ in range(ms):
            cuda.nanosleep(1_000_000)

    compute = CupyCompute()
    stream = cuda.external_stream(cp.cuda.get_current_stream().ptr)
    spin[1, 1, stream](0)  # compile it before the clock starts
    for name in SLICES:
        cfg = Config(HiddenSize=64, TrainTop=8, MinibatchSize=25, RandomSeed=1, Kernels="numpy",
                     **SLICES[name])
        splits = synthetic_splits(n_trn=200, n_dev=10, n_tst=10)
        x, y = cp.asarray(splits.trn_x), cp.asarray(splits.trn_y)
        model = MLP(cfg, 784, compute, np.random.default_rng(0))
        opt = make_optimizer(cfg, model.params, compute, len(splits.trn_y))
        rows = cp.arange(200)

        def minibatches(n):
            for i in range(0, 25 * n, 25):
                flow = Flow()
                model.forward(flow, x[rows[i:i + 25]], y[rows[i:i + 25]])
                flow.backward()
                opt.step(flow.selections)
        minibatches(8)           # compile everything first
        compute.sync()
        start = time.perf_counter()
        spin[1, 1, stream](1000)  # about one second
        minibatches(4)  # a few hundred launches: well inside the queue the driver lets build up
        host = time.perf_counter() - start
        compute.sync()
        total = time.perf_counter() - start
        assert total > 0.5, f"the spin kernel did not hold the GPU ({total:.3f}s)"
        assert host < 0.5 * total, \
            f"{name}: the host waited for the device ({host:.3f}s of {total:.3f}s)"
