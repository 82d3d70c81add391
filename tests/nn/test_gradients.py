"""Every op and every network's backward against central differences in float64, and meProp's
backward against a naive reference (the dense gradient with all but each row's top-k zeroed)."""
import numpy as np
import pytest

from nnmnist.nn import ops
from nnmnist.backends.cpu import NumpyCompute
from nnmnist.run.config import Config
from nnmnist.nn.networks import MLP
from nnmnist.nn.select import TopK, UnifiedTopK
from nnmnist.nn.tensor import Flow, Tensor

C = NumpyCompute()
EPS = 1e-6


def leaf(a, requires_grad=True):
    return Tensor(np.array(a, dtype=np.float64), requires_grad=requires_grad)


def check_op(build, inputs, seed=0, n_dirs=3):
    """Compare <grad, d> with (L(x + eps d) - L(x - eps d)) / 2 eps along random directions,
    where L = sum(R * build(...)) for a fixed random R."""
    rng = np.random.default_rng(seed)
    flow = Flow()
    out = build(flow, *inputs)
    R = rng.normal(size=out.shape)
    out.grad = R.copy()
    flow.backward()

    def L():
        return float((build(Flow(training=False), *inputs).value * R).sum())
    for t in inputs:
        if not t.requires_grad:
            continue
        analytic_grad = t.grad.copy()
        for _ in range(n_dirs):
            d = rng.normal(size=t.shape)
            base = t.value.copy()
            t.value = base + EPS * d
            hi = L()
            t.value = base - EPS * d
            lo = L()
            t.value = base
            numeric = (hi - lo) / (2 * EPS)
            analytic = float((analytic_grad * d).sum())
            assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-7), \
                f"{t.name or 'input'}: numeric {numeric} vs analytic {analytic}"


def test_matmul():
    rng = np.random.default_rng(1)
    x, W = leaf(rng.normal(size=(4, 6))), leaf(rng.normal(size=(5, 6)))
    check_op(lambda f, a, b: ops.matmul(f, a, b, C), [x, W])


def test_add_bias():
    rng = np.random.default_rng(2)
    check_op(ops.add_bias, [leaf(rng.normal(size=(4, 5))), leaf(rng.normal(size=5))])


def test_relu():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 7))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink, where differences are meaningless
    check_op(ops.relu, [leaf(x)])


def test_mask():
    rng = np.random.default_rng(4)
    m = np.array([1, 0, 1, 1, 0], dtype=np.float64)
    check_op(lambda f, x: ops.mask(f, x, m), [leaf(rng.normal(size=(3, 5)))])


def test_dropout_with_fixed_draw():
    rng = np.random.default_rng(5)
    x = leaf(rng.normal(size=(6, 8)))
    check_op(lambda f, t: ops.dropout(f, t, 0.3, np.random.default_rng(9), C), [x])
    y = ops.dropout(Flow(), x, 0.3, np.random.default_rng(9), C).value
    kept = y != 0
    np.testing.assert_allclose(y[kept], x.value[kept] / 0.7)


def test_softmax_cross_entropy():
    rng = np.random.default_rng(6)
    z = leaf(rng.normal(size=(5, 4)))
    labels = np.array([0, 3, 1, 1, 2])
    flow = Flow()
    losses, pred = ops.softmax_cross_entropy(flow, z, labels, np)
    flow.backward()
    p = np.exp(z.value) / np.exp(z.value).sum(1, keepdims=True)
    np.testing.assert_allclose(losses, -np.log(p[np.arange(5), labels]), rtol=1e-12)
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(z.grad, p - onehot, rtol=1e-10)  # not divided by the batch
    np.testing.assert_array_equal(pred, z.value.argmax(1))
    # Central differences of the summed loss, the function whose gradient p - onehot is.
    rng = np.random.default_rng(7)
    L = lambda v: float(ops.softmax_cross_entropy(Flow(False), Tensor(v), labels, np)[0].sum())
    for _ in range(3):
        d = rng.normal(size=z.shape)
        numeric = (L(z.value + EPS * d) - L(z.value - EPS * d)) / (2 * EPS)
        assert numeric == pytest.approx(float((z.grad * d).sum()), rel=1e-6)


def naive_topk_rows(dy, k):
    """Per row, the k columns of largest |dy|, ties to the lower column, by plain sorting."""
    return [sorted(sorted(range(dy.shape[1]), key=lambda j: (-abs(dy[b, j]), j))[:k])
            for b in range(dy.shape[0])]


def meprop_reference(x, W, dy, k):
    """The dense gradient with all but the top-k of each row of dy zeroed."""
    dys = np.zeros_like(dy)
    for b, cols in enumerate(naive_topk_rows(dy, k)):
        dys[b, cols] = dy[b, cols]
    return dys @ W, dys.T @ x


@pytest.mark.parametrize("k", [1, 3, 7])
def test_meprop_matmul_matches_naive_reference(k):
    rng = np.random.default_rng(k)
    x, W = leaf(rng.normal(size=(5, 6))), leaf(rng.normal(size=(7, 6)))
    dy = rng.normal(size=(5, 7))
    dy[1] = 0.0            # a row of zeros: ties everywhere
    dy[2, :4] = 0.25       # equal magnitudes
    dy[3, 2] = -dy[3, 5]   # equal magnitude, opposite sign
    sel = lambda g: TopK(k)(g, C, None)
    flow = Flow()
    y = ops.meprop_matmul(flow, x, W, C, sel)
    y.grad = dy.copy()
    flow.backward()
    dx_ref, dW_ref = meprop_reference(x.value, W.value, dy, k)
    np.testing.assert_allclose(x.grad, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(W.grad, dW_ref, rtol=1e-12, atol=1e-12)


def test_meprop_matmul_full_k_is_exact_gradient():
    rng = np.random.default_rng(7)
    x, W = leaf(rng.normal(size=(4, 6))), leaf(rng.normal(size=(5, 6)))
    check_op(lambda f, a, b: ops.meprop_matmul(f, a, b, C, lambda g: TopK(5)(g, C, None)), [x, W])


def test_unified_meprop_matches_column_masked_reference():
    rng = np.random.default_rng(8)
    x, W = leaf(rng.normal(size=(6, 5))), leaf(rng.normal(size=(9, 5)))
    dy = rng.normal(size=(6, 9))
    cols = C.select_topk_unified(dy, 4)
    score = np.abs(dy).sum(0)
    assert set(cols) == set(np.argsort(-score)[:4])
    flow = Flow()
    y = ops.meprop_matmul(flow, x, W, C, lambda g: UnifiedTopK(4)(g, C, None))
    y.grad = dy.copy()
    flow.backward()
    dys = np.zeros_like(dy)
    dys[:, cols] = dy[:, cols]
    np.testing.assert_allclose(x.grad, dys @ W.value, rtol=1e-12)
    np.testing.assert_allclose(W.grad, dys.T @ x.value, rtol=1e-12)


# -- whole networks ---------------------------------------------------------------------------

def to_float64(model):
    for p in model.params:
        p.value = p.value.astype(np.float64)
        p._grad = None
    for layer in model.masked_layers:
        layer.mask = layer.mask.astype(np.float64)


def small_net(net_type, k, hidden=6, layers=3, seed=0, **kw):
    cfg = Config(NetType=net_type, HiddenSize=hidden, Layers=layers, TrainTop=k, LabelCount=4,
                 Kernels="numpy", **kw)
    model = MLP(cfg, 5, C, np.random.default_rng(seed))
    to_float64(model)
    # Non-zero biases, so that no pre-activation sits exactly on ReLU's kink (an all-dead
    # row would make every next-layer pre-activation exactly 0, where differences are one-sided).
    for layer in model.layers:
        layer.b.value = np.random.default_rng(seed + 1).normal(0, 0.1, layer.b.shape)
    return model


def net_grads(model, x, y):
    flow = Flow()
    model.forward(flow, x, y)
    flow.backward()
    return [p.grad.copy() for p in model.params]


def net_loss(model, x, y):
    losses, _ = model.forward(Flow(training=False), x, y)
    return float(losses.sum())


def check_network(model, x, y, seed=0):
    grads = net_grads(model, x, y)
    rng = np.random.default_rng(seed)
    for p, g in zip(model.params, grads):
        d = rng.normal(size=p.shape)
        base = p.value.copy()
        p.value = base + EPS * d
        hi = net_loss(model, x, y)
        p.value = base - EPS * d
        lo = net_loss(model, x, y)
        p.value = base
        numeric, analytic = (hi - lo) / (2 * EPS), float((g * d).sum())
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-7), \
            f"{p.name} {p.shape}: numeric {numeric} vs analytic {analytic}"


def batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)), rng.integers(0, 4, n)


@pytest.mark.parametrize("net_type,layers", [("mlp", 1), ("mlp", 2), ("mlp", 3)] + [
    (t, n) for t in ("mlptop", "mlprand", "mlpvar") for n in (2, 3)])
def test_network_backward_finite_differences(net_type, layers):
    # With k = HiddenSize every k-using network back-propagates the exact gradient.
    model = small_net(net_type, k=6, layers=layers)
    x, y = batch()
    check_network(model, x, y)


def test_mlpvar_backward_with_pruned_neurons():
    model = small_net("mlpvar", k=6)
    for layer in model.masked_layers:
        layer.mask[[0, 3]] = 0.0   # inactive neurons: the masked function is still differentiable
    x, y = batch(1)
    check_network(model, x, y, seed=1)
    for layer, g in zip(model.masked_layers, net_grads(model, x, y)[0:4:2]):
        assert np.all(g[[0, 3]] == 0)  # W rows of inactive neurons get no gradient


def test_mlptop_network_matches_naive_reference():
    """Hand-written backward of a 2-hidden-layer mlptop with naive per-row top-k."""
    k = 3
    model = small_net("mlptop", k=k)
    x, y = batch(2)
    grads = net_grads(model, x, y)
    (W1, b1), (W2, b2), (W3, b3) = [(l.W.value, l.b.value) for l in model.layers]
    a1 = x @ W1.T + b1
    h1 = np.maximum(a1, 0)
    a2 = h1 @ W2.T + b2
    h2 = np.maximum(a2, 0)
    z = h2 @ W3.T + b3
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = p - np.eye(4)[y]
    dW3, db3, dh2 = dz.T @ h2, dz.sum(0), dz @ W3
    da2 = dh2 * (a2 > 0)
    dh1, dW2 = meprop_reference(h1, W2, da2, k)
    da1 = dh1 * (a1 > 0)
    _, dW1 = meprop_reference(x, W1, da1, k)
    expected = [dW1, da1.sum(0), dW2, da2.sum(0), dW3, db3]
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_mlptop_with_full_k_is_mlp():
    x, y = batch(3)
    dense = net_grads(small_net("mlp", k=6), x, y)
    top = net_grads(small_net("mlptop", k=6), x, y)
    for a, b in zip(dense, top):
        np.testing.assert_array_equal(a, b)


def test_mlptop_small_k_differs_from_mlp():
    """The comparison above can fail: with k < HiddenSize the gradients do differ."""
    x, y = batch(3)
    dense = net_grads(small_net("mlp", k=2), x, y)
    top = net_grads(small_net("mlptop", k=2), x, y)
    assert not np.allclose(dense[0], top[0])
    np.testing.assert_array_equal(dense[-1], top[-1])  # the output layer is always dense
