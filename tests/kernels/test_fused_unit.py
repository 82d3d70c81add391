"""The fused hidden unit (ops.meprop_relu_unit) against the same unit built op by op.

`layer.activate` runs relu(mask * (x W + b)) as one op so that a backend can fuse its whole
backward; `relu(layer(...))` composes the separately tested primitive ops. Both must give
the same gradients, selections and meSimp records, on the plain path (exactly, in float64)
and on the Numba path (to float32 rounding). With k = width the unit's backward must be the
exact gradient (central differences).
"""
import numpy as np
import pytest

from nnmnist.nn import ops
from nnmnist.backends.cpu import NumbaCompute, NumpyCompute
from nnmnist.nn.layers import Dense, MaskedDense
from nnmnist.nn.select import RandomK, TopK, UnifiedRandomK, UnifiedTopK
from nnmnist.nn.tensor import Flow, Tensor

PLAIN, FAST = NumpyCompute(), NumbaCompute()
SELECTIONS = [("top", False), ("rand", False), ("top", True), ("rand", True)]


def make_layer(compute, mode, unified, masked, k, dtype, n_in=9, n_out=12, seed=3):
    rule = {("top", False): TopK, ("rand", False): RandomK, ("top", True): UnifiedTopK,
            ("rand", True): UnifiedRandomK}[mode, unified](k)
    cls = MaskedDense if masked else Dense
    layer = cls(n_in, n_out, np.random.default_rng(seed), compute, rule)
    layer.W.value = layer.W.value.astype(dtype)
    layer.b.value = (np.random.default_rng(seed + 2).normal(size=n_out) * 0.5).astype(dtype)
    if masked:
        layer.active[[2, 7]] = False
        layer.mask = layer.active.astype(dtype)
    return layer


def run(layer, fused, x, g):
    flow = Flow()
    xt = Tensor(x.copy(), requires_grad=True)
    y = layer.activate(flow, xt) if fused else ops.relu(flow, layer(flow, xt))
    y.grad = g.copy(order="K")  # keeps a Fortran-ordered g Fortran-ordered
    flow.backward()
    hits = layer.hits.copy() if isinstance(layer, MaskedDense) else None
    examples = getattr(layer, "examples", None)
    selection = flow.selections[layer.W]
    return (y.value, xt.grad, layer.W.grad, layer.b.grad,
            (selection.unified, selection.chosen), hits, examples)


@pytest.mark.parametrize("mode,unified", SELECTIONS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("compute,dtype", [(PLAIN, np.float64), (FAST, np.float32)],
                         ids=["plain", "numba"])
@pytest.mark.parametrize("k", [1, 4, 12])
def test_fused_unit_equals_composed_ops(compute, dtype, mode, unified, masked, k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(7, 9)).astype(dtype)
    g = rng.normal(size=(7, 12)).astype(dtype)
    g[1] = 0.0        # a row of zeros: ties everywhere
    g[2, :5] = 0.25   # equal magnitudes
    results = [run(make_layer(compute, mode, unified, masked, k, dtype), fused, x, g)
               for fused in (False, True)]
    (y0, dx0, dW0, db0, t0, h0, r0), (y1, dx1, dW1, db1, t1, h1, r1) = results
    np.testing.assert_array_equal(y1, y0)
    assert t0[0] == t1[0]
    np.testing.assert_array_equal(t1[1], t0[1])    # the same entries chosen
    exact = compute is PLAIN
    for a, b in ((dx1, dx0), (dW1, dW0), (db1, db0)):
        assert a.dtype == dtype
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if masked:
        np.testing.assert_array_equal(h1, h0)
        assert r1 == r0 == 7
        assert np.all(dW1[[2, 7]] == 0) and np.all(db1[[2, 7]] == 0)


@pytest.mark.parametrize("masked", [False, True])
def test_fused_unit_full_k_is_the_exact_gradient(masked):
    """k = width keeps every entry: the backward of relu(mask * (x W + b)) itself."""
    rng = np.random.default_rng(11)
    layer = make_layer(PLAIN, "top", False, masked, 12, np.float64)
    x = Tensor(rng.normal(size=(5, 9)), requires_grad=True)
    R = rng.normal(size=(5, 12))
    flow = Flow()
    y = layer.activate(flow, x)
    y.grad = R.copy()
    flow.backward()

    def loss():
        return float((layer.activate(Flow(training=False), x).value * R).sum())
    for t in (x, layer.W, layer.b):
        analytic = t.grad.copy()
        for _ in range(3):
            d = rng.normal(size=t.shape)
            base = t.value.copy()
            t.value = base + 1e-6 * d
            hi = loss()
            t.value = base - 1e-6 * d
            lo = loss()
            t.value = base
            assert (hi - lo) / 2e-6 == pytest.approx(float((analytic * d).sum()), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("case", ["fortran_g", "float64"])
def test_fused_path_falls_back_to_the_plain_route(plain_backward_calls, case):
    """A gradient the kernel cannot overwrite in place, or arrays that are not float32, take
    the plain NumPy route (and only then), with the same result."""
    calls = plain_backward_calls
    dtype = np.float64 if case == "float64" else np.float32
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 9)).astype(dtype)
    g = rng.normal(size=(6, 12)).astype(dtype)
    fast = run(make_layer(FAST, "top", False, True, 4, dtype), True, x,
               np.asfortranarray(g) if case == "fortran_g" else g)
    assert len(calls) == 1
    ref = run(make_layer(PLAIN, "top", False, True, 4, dtype), True, x, g)
    assert len(calls) == 2
    for u, v in zip(fast[1:], ref[1:]):
        if isinstance(u, tuple):
            np.testing.assert_array_equal(u[1], v[1])
        elif np.isscalar(u):
            assert u == v
        elif u is not None:
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    calls.clear()
    run(make_layer(FAST, "top", False, True, 4, np.float32), True, x.astype(np.float32),
        g.astype(np.float32))
    assert not calls  # the fused kernel, not the plain route


def test_mesimp_reference_counts_in_backward_only():
    """A training forward without a backward moves neither hits nor the example count."""
    layer = make_layer(FAST, "top", False, True, 4, np.float32)
    x = Tensor(np.ones((5, 9), np.float32), requires_grad=False)
    layer.activate(Flow(), x)
    assert layer.examples == 0 and not layer.hits.any()
    flow = Flow()
    y = layer.activate(flow, x)
    y.grad = np.ones(y.shape, np.float32)
    flow.backward()
    assert layer.examples == 5 and layer.hits.sum() == 5 * 4
