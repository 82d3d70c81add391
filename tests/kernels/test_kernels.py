"""nnmnist.kernels against the naive references in tests/naive.py, serial and parallel."""
import zlib

import numba
import numpy as np
import pytest
import threadpoolctl

import nnmnist.kernels as K


import nnmnist.optim.checked as KO
try:
    from . import naive
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    import naive


@pytest.fixture(params=["serial", "parallel"])
def mode(request):
    with K.forced_mode(request.param):
        yield request.param


def rng_for(*key):
    # crc32, not hash(): str hashes change between processes
    return np.random.default_rng([12345, *[zlib.crc32(str(k).encode()) for k in key]])


def gradient_rows(rng, kind, B, n):
    """float32 (B, n) rows of a given flavour, including heavy ties."""
    if kind == "normal":
        return rng.standard_normal((B, n)).astype(np.float32)
    if kind == "zeros":
        return np.zeros((B, n), np.float32)
    if kind == "ints":  # many equal |a|, both signs
        return rng.integers(-3, 4, (B, n)).astype(np.float32)
    if kind == "relu":  # many exact zeros (ReLU backward), some -0.0
        a = rng.standard_normal((B, n)).astype(np.float32)
        a[rng.random((B, n)) < 0.7] = 0.0
        a[rng.random((B, n)) < 0.1] = -0.0
        return a
    if kind == "mixed":  # a zero row, a constant row, ties of +-v, then random
        a = rng.standard_normal((B, n)).astype(np.float32)
        a[0] = 0.0
        a[1 % B] = 0.25
        a[2 % B, ::2] = -0.5
        a[2 % B, 1::2] = 0.5
        return a
    if kind == "wide":  # magnitudes from subnormals to 1e36: beyond the 16 octaves bucketed
        a = np.exp2(rng.uniform(-149, 120, (B, n))).astype(np.float32)
        a *= rng.choice(np.array([-1, 1], np.float32), (B, n))
        a[rng.random((B, n)) < 0.2] = 0.0
        return a
    if kind == "clustered":  # most keys in one 1/16-octave bucket, some exactly equal
        a = (1.0 + rng.integers(0, 64, (B, n)) * 2.0 ** -20).astype(np.float32)
        a[rng.random((B, n)) < 0.1] *= 4
        return a
    if kind == "sparse":  # a few nonzeros, so for most k the threshold falls among zeros
        a = rng.standard_normal((B, n)).astype(np.float32)
        a[rng.random((B, n)) < 0.95] = 0.0
        return a
    raise ValueError(kind)


KINDS = ["normal", "zeros", "ints", "relu", "mixed", "wide", "clustered", "sparse"]


# --------------------------------------------------------------------------- top-k rows

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B,n", [(100, 500), (10, 500), (7, 33), (1, 1), (3, 2)])
def test_topk_rows_matches_reference(mode, kind, B, n):
    rng = rng_for("topk", kind, B, n)
    a = gradient_rows(rng, kind, B, n)
    for k in sorted({1, 2, 20, n // 6, n // 3, n // 2, n - 1, n} & set(range(1, n + 1))):
        got = K.topk_rows(a, k)
        assert got.shape == (B, k) and got.dtype == np.int32
        np.testing.assert_array_equal(got, naive.topk_rows_ref(a, k), err_msg=f"k={k}")


@pytest.mark.parametrize("kind", KINDS)
def test_topk_rows_matches_naive_loop(mode, kind):
    rng = rng_for("topk-naive", kind)
    a = gradient_rows(rng, kind, 6, 40)
    for k in (1, 7, 20, 40):
        got = K.topk_rows(a, k)
        assert got.shape == (6, k) and got.dtype == np.int32
        np.testing.assert_array_equal(got, naive.topk_rows(a, k))


def _alternating_shapes(rng, n):
    """Rows whose boundary bucket jumps about: the previous row's estimate is sometimes far
    too high (a flat row, then one whose k-th largest lies octaves below its largest), sometimes
    right, sometimes far too low; also all-zero, NaN and single-spike rows."""
    flat = rng.uniform(1, 2, n).astype(np.float32)
    spread = np.exp2(rng.uniform(-30, 0, n)).astype(np.float32)
    spike = np.zeros(n, np.float32)
    spike[n // 3] = 7.0
    nans = rng.standard_normal(n).astype(np.float32)
    nans[::5] = np.nan
    rows = [flat, spread, spread[::-1].copy(), flat[::-1].copy(), np.zeros(n, np.float32),
            spike, nans, spread * -1, flat * 1e-30, rng.standard_normal(n).astype(np.float32)]
    return np.stack(rows * 3)


@pytest.mark.parametrize("n", [40, 500])
def test_topk_rows_estimate_from_previous_row(mode, n):
    """Each row starts from the previous row's boundary; whether that estimate holds or not,
    the selection is exact."""
    a = _alternating_shapes(rng_for("estimate", n), n)
    for k in (1, 3, 8, n // 4, n // 2 + 1, n - 1, n):
        np.testing.assert_array_equal(K.topk_rows(a, k), naive.topk_rows_ref(a, k), err_msg=f"k={k}")
        g = a.copy()
        out = np.ones_like(a)
        _, idx = K.layer_backward(g, out, np.zeros((a.shape[0], 3), np.float32),
                                  np.zeros((n, 3), np.float32), k, np.zeros(n, np.float32),
                                  np.zeros((n, 3), np.float32))
        np.testing.assert_array_equal(idx, naive.topk_rows_ref(a, k), err_msg=f"layer k={k}")


def test_topk_rows_tie_rule_examples():
    a = np.array([[0.0, -2.0, 2.0, 1.0, -0.0, 2.0]], np.float32)
    np.testing.assert_array_equal(K.topk_rows(a, 1), [[1]])
    np.testing.assert_array_equal(K.topk_rows(a, 2), [[1, 2]])
    np.testing.assert_array_equal(K.topk_rows(a, 4), [[1, 2, 3, 5]])
    np.testing.assert_array_equal(K.topk_rows(a, 5), [[0, 1, 2, 3, 5]])


def test_topk_rows_nan_and_inf_follow_argsort(mode):
    a = np.array([[1.0, np.nan, -np.inf, 0.0, np.nan, 3.0],
                  [np.nan, np.nan, np.nan, np.nan, np.nan, np.nan]], np.float32)
    for k in range(1, 7):
        np.testing.assert_array_equal(K.topk_rows(a, k), naive.topk_rows_ref(a, k))


def test_topk_rows_out_reused_and_noncontiguous_input(mode):
    rng = rng_for("topk-out")
    big = rng.standard_normal((10, 80)).astype(np.float32)
    a = big[:, ::2]  # not contiguous: read-only inputs are copied, not rejected
    out = np.full((10, 5), -1, np.int32)
    got = K.topk_rows(a, 5, out=out)
    assert got is out
    np.testing.assert_array_equal(out, naive.topk_rows_ref(a, 5))


def test_topk_rows_empty_batch():
    got = K.topk_rows(np.zeros((0, 5), np.float32), 3)
    assert got.shape == (0, 3) and got.dtype == np.int32


def test_topk_rows_rejects_bad_arguments():
    a = np.zeros((2, 5), np.float32)
    with pytest.raises(TypeError, match="a must have dtype float32"):
        K.topk_rows(a.astype(np.float64), 2)
    with pytest.raises(ValueError, match="a must be 2-D"):
        K.topk_rows(a[0], 2)
    with pytest.raises(ValueError, match="k must be in"):
        K.topk_rows(a, 0)
    with pytest.raises(ValueError, match="k must be in"):
        K.topk_rows(a, 6)
    with pytest.raises(TypeError, match="k must be an integer"):
        K.topk_rows(a, 2.0)
    with pytest.raises(TypeError, match="out must have dtype int32"):
        K.topk_rows(a, 2, out=np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="out must have shape"):
        K.topk_rows(a, 2, out=np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="out is written in place"):
        K.topk_rows(a, 2, out=np.zeros((2, 4), np.int32)[:, ::2])


# ------------------------------------------------------------------- unified top-k

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B,n", [(100, 500), (7, 33), (1, 4)])
def test_topk_cols_unified(kind, B, n):
    rng = rng_for("unified", kind, B, n)
    a = gradient_rows(rng, kind, B, n)
    for k in sorted({1, n // 4, n // 2, n} - {0}):
        got = K.topk_cols_unified(a, k)
        assert got.shape == (k,) and got.dtype == np.int32
        np.testing.assert_array_equal(got, naive.topk_cols_unified(a, k), err_msg=f"k={k}")


def test_topk_cols_unified_ties_and_scores():
    # column sums of |a|: [2, 3, 3, 0, 3]; ties go to the lower column
    a = np.array([[1, -2, 1, 0, 3], [-1, 1, -2, 0, 0]], np.float32)
    np.testing.assert_array_equal(K.topk_cols_unified(a, 1), [1])
    np.testing.assert_array_equal(K.topk_cols_unified(a, 2), [1, 2])
    np.testing.assert_array_equal(K.topk_cols_unified(a, 4), [0, 1, 2, 4])
    np.testing.assert_array_equal(K.topk_cols_unified(np.zeros((3, 4), np.float32), 2), [0, 1])


# ----------------------------------------------------------------- sparse backward

def _backward_case(rng, B, n_in, n_out, k, kind="relu"):
    x = np.maximum(rng.standard_normal((B, n_in)), 0).astype(np.float32)
    W = (rng.standard_normal((n_out, n_in)) * 0.1).astype(np.float32)
    dy = gradient_rows(rng, kind, B, n_out)
    idx = K.topk_rows(dy, k)
    dW0 = rng.standard_normal((n_out, n_in)).astype(np.float32)
    return x, W, dy, idx, dW0


@pytest.mark.parametrize("B,n_in,n_out,k", [(10, 30, 20, 1), (10, 30, 20, 5), (7, 13, 9, 9),
                                            (4, 1, 3, 2), (1, 17, 5, 5)])
def test_sparse_backward_matches_naive(mode, B, n_in, n_out, k):
    rng = rng_for("sparse", B, n_in, n_out, k)
    x, W, dy, idx, dW0 = _backward_case(rng, B, n_in, n_out, k, kind="normal")
    dW = dW0.copy()
    dx, dW_out = K.sparse_backward(x, W, dy, idx, dW=dW)
    assert dx.shape == (B, n_in) and dx.dtype == np.float32
    assert dW_out is dW and dW.shape == (n_out, n_in) and dW.dtype == np.float32
    ref_dx, ref_dW = naive.sparse_backward(x, W, dy, idx, dW0)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dW, ref_dW, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("B,n_in,k", [(100, 784, 20), (100, 500, 160), (10, 500, 80)])
def test_sparse_backward_matches_dense(mode, B, n_in, k):
    rng = rng_for("dense", B, n_in, k)
    x, W, dy, idx, dW0 = _backward_case(rng, B, n_in, 500, k, kind="normal")
    dW = dW0.copy()
    dx, _ = K.sparse_backward(x, W, dy, idx, dW=dW)
    ref_dx, ref_dW = naive.dense_backward(x, W, dy, idx, dW0)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dW, ref_dW, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [1, 3, 4, 7, 8, 9, 12, 13, 16, 17, 24])
def test_sparse_backward_every_sweep_width(mode, k):
    """Rows are added eight, four, then one at a time: every remainder, for dx (k rows per
    example) and for dW (many examples per neuron: 40 examples, 24 neurons)."""
    rng = rng_for("sweeps", k)
    x, W, dy, idx, dW0 = _backward_case(rng, 40, 37, 24, k, kind="normal")
    dW = dW0.copy()
    dx, _ = K.sparse_backward(x, W, dy, idx, dW=dW)
    ref_dx, ref_dW = naive.sparse_backward(x, W, dy, idx, dW0)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dW, ref_dW, rtol=1e-5, atol=1e-5)


def test_sparse_products_round_each_step_once():
    """Each chosen row adds one fused multiply-add (rounded once), in index order; a
    float64 emulation of that order agrees to the last bit almost everywhere."""
    rng = rng_for("fma")
    x, W, dy, idx, _ = _backward_case(rng, 30, 64, 40, 13, kind="normal")
    dx, _ = K.sparse_backward(x, W, dy, idx)
    ref = np.zeros_like(dx)
    for b in range(30):
        acc = np.zeros(64, np.float32)
        for j in idx[b]:
            acc = (np.float64(dy[b, j]) * W[j].astype(np.float64) + acc).astype(np.float32)
        ref[b] = acc
    assert np.mean(dx == ref) > 0.99
    np.testing.assert_allclose(dx, ref, rtol=1e-6, atol=1e-7)


def test_sparse_backward_workspace_last_small_batch(mode):
    """A workspace sized for B=10 serves the full batches and a last batch of 7."""
    ws = K.BackwardWorkspace(10, 4, 12)
    dx_buf = np.empty((10, 6), np.float32)
    dW = np.zeros((12, 6), np.float32)
    ref_dW = np.zeros((12, 6), np.float64)
    rng = rng_for("workspace")
    W = rng.standard_normal((12, 6)).astype(np.float32)
    for B in (10, 10, 7):
        x = rng.standard_normal((B, 6)).astype(np.float32)
        dy = gradient_rows(rng, "relu", B, 12)
        idx = K.topk_rows(dy, 4)
        dx, out_dW = K.sparse_backward(x, W, dy, idx, dx=dx_buf[:B], dW=dW, workspace=ws)
        assert dx.shape == (B, 6) and dx.dtype == np.float32 and out_dW is dW
        ref_dx, ref_dW = naive.sparse_backward(x, W, dy, idx, ref_dW)
        np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dW, ref_dW, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="workspace"):
        K.sparse_backward(np.zeros((11, 6), np.float32), W, np.zeros((11, 12), np.float32),
                          np.zeros((11, 4), np.int32), dW=dW, workspace=ws)


def test_sparse_backward_without_dx_and_fresh_dW(mode):
    rng = rng_for("nodx")
    x, W, dy, idx, _ = _backward_case(rng, 5, 8, 6, 3)
    dx, dW = K.sparse_backward(x, W, dy, idx, need_dx=False)
    assert dx is None and dW.shape == (6, 8) and dW.dtype == np.float32
    _, ref_dW = naive.sparse_backward(x, W, dy, idx, np.zeros((6, 8), np.float32))
    np.testing.assert_allclose(dW, ref_dW, rtol=1e-5, atol=1e-6)


def test_sparse_backward_rejects_bad_arguments():
    x = np.zeros((4, 5), np.float32)
    W = np.zeros((6, 5), np.float32)
    dy = np.zeros((4, 6), np.float32)
    idx = np.zeros((4, 2), np.int32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        K.sparse_backward(x.astype(np.float64), W, dy, idx)
    with pytest.raises(ValueError, match="x must have shape"):
        K.sparse_backward(np.zeros((4, 6), np.float32), W, dy, idx)
    with pytest.raises(ValueError, match="dy must have shape"):
        K.sparse_backward(x, W, dy[:, :5], idx)
    with pytest.raises(TypeError, match="idx must have dtype int32"):
        K.sparse_backward(x, W, dy, idx.astype(np.int64))
    with pytest.raises(ValueError, match="idx has entries outside"):
        K.sparse_backward(x, W, dy, idx + 6)
    with pytest.raises(ValueError, match="idx must have 4 rows"):
        K.sparse_backward(x, W, dy, idx[:3])
    with pytest.raises(ValueError, match="dW is written in place"):
        K.sparse_backward(x, W, dy, idx, dW=np.zeros((5, 6), np.float32).T)
    with pytest.raises(ValueError, match="dx must have shape"):
        K.sparse_backward(x, W, dy, idx, dx=np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="workspace must be"):
        K.sparse_backward(x, W, dy, idx, workspace=object())


# ------------------------------------------------------------- records for meSimp / lazy

def test_rows_touched_and_record_hits():
    rng = rng_for("hits")
    for B, n, k in [(10, 50, 5), (7, 20, 20), (1, 3, 1), (100, 500, 160)]:
        idx = K.topk_rows(gradient_rows(rng, "relu", B, n), k)
        rows = K.rows_touched(idx, n)
        assert rows.dtype == np.int32 and rows.ndim == 1
        np.testing.assert_array_equal(rows, naive.rows_touched(idx))
        hits = rng.integers(0, 5, n).astype(np.int64)
        expect = hits.copy()
        np.add.at(expect, idx.ravel(), 1)
        np.testing.assert_array_equal(expect, naive.record_hits(idx, hits))
        K.record_hits(idx, hits)
        assert hits.dtype == np.int64
        np.testing.assert_array_equal(hits, expect)
    with pytest.raises(TypeError, match="hits must have dtype int64"):
        K.record_hits(idx, np.zeros(n, np.int32))
    with pytest.raises(ValueError, match="idx has entries outside"):
        K.rows_touched(idx, 3)


# --------------------------------------------------------------------- optimizers

CLIP_L2 = [(5.0, 0.0), (0.0, 0.0), (0.3, 1e-3)]


def _params(rng, shape, scale=3.0):
    return [rng.standard_normal(shape).astype(np.float32),
            (rng.standard_normal(shape) * scale).astype(np.float32)]


@pytest.mark.parametrize("clip,l2", CLIP_L2)
def test_sgd_update(mode, clip, l2):
    rng = rng_for("sgd", clip)
    w, _ = _params(rng, (40, 30))
    rw = w.copy()
    for t in range(1, 5):
        g = (rng.standard_normal(w.shape) * 3).astype(np.float32)
        lr_t = 0.1 * 0.09 ** (t / 1000)
        rw, rg = naive.sgd_step(rw, g.copy(), lr_t, clip)
        KO.sgd_update(w.ravel(), g.ravel(), lr_t, clip)
        assert w.dtype == np.float32 and g.dtype == np.float32
        np.testing.assert_allclose(w, rw, rtol=1e-6, atol=1e-7)
        assert not g.any()


@pytest.mark.parametrize("clip,l2", CLIP_L2)
def test_adagrad_update(mode, clip, l2):
    rng = rng_for("adagrad", clip, l2)
    w, _ = _params(rng, (50, 20))
    h = np.zeros_like(w)
    rw, rh = w.copy(), h.copy()
    for _ in range(4):
        g = (rng.standard_normal(w.shape) * 3).astype(np.float32)
        rw, rg, rh = naive.adagrad_step(rw, g.copy(), rh, 0.01, 1e-6, l2, clip)
        KO.adagrad_update(w.ravel(), g.ravel(), h.ravel(), 0.01, 1e-6, l2, clip)
        assert w.dtype == h.dtype == np.float32
        np.testing.assert_allclose(w, rw, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(h, rh, rtol=1e-6)
        assert not g.any()


@pytest.mark.parametrize("clip,l2", CLIP_L2)
def test_adam_update(mode, clip, l2):
    rng = rng_for("adam", clip, l2)
    w, _ = _params(rng, (1000,))
    m, v = np.zeros_like(w), np.zeros_like(w)
    rw, rm, rv = w.copy(), m.copy(), v.copy()
    for t in range(1, 6):
        g = (rng.standard_normal(w.shape) * 3).astype(np.float32)
        lr_t = naive.adam_lr_t(0.001, t)
        rw, rg, rm, rv = naive.adam_step(rw, g.copy(), rm, rv, lr_t, l2, clip)
        KO.adam_update(w, g, m, v, lr_t, l2, clip)
        assert w.dtype == m.dtype == v.dtype == np.float32
        assert rw.dtype == np.float32  # the reference itself stays float32
        np.testing.assert_allclose(w, rw, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(m, rm, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(v, rv, rtol=1e-6, atol=1e-12)
        assert not g.any()


def _row_steps(rng, shape, n_states, step, update):
    """Run update on random row subsets; rows outside the subset (and their G) must not move."""
    W = rng.standard_normal(shape).astype(np.float32)
    S = [np.abs(rng.standard_normal(shape)).astype(np.float32) * 0.01 for _ in range(n_states)]
    rW, rS = W.copy(), [s.copy() for s in S]
    for t in range(1, 5):
        G = (rng.standard_normal(shape) * 3).astype(np.float32)
        rows = np.flatnonzero(rng.random(shape[0]) < 0.4).astype(np.int32)
        others = np.setdiff1d(np.arange(shape[0]), rows)
        G_before = G.copy()
        new = step(rW[rows], G[rows].copy(), *[s[rows] for s in rS], t)
        rW[rows] = new[0]
        for s, ns in zip(rS, new[2:]):
            s[rows] = ns
        update(W, G, *S, rows, t)
        assert W.dtype == np.float32 and all(s.dtype == np.float32 for s in S)
        np.testing.assert_allclose(W, rW, rtol=1e-6, atol=1e-7)
        for s, rs in zip(S, rS):
            np.testing.assert_allclose(s, rs, rtol=1e-6, atol=1e-12)
        assert not G[rows].any()
        np.testing.assert_array_equal(G[others], G_before[others])
    return W


@pytest.mark.parametrize("clip,l2", CLIP_L2)
def test_row_updates(mode, clip, l2):
    rng = rng_for("rows", clip, l2)
    shape = (30, 17)
    _row_steps(rng, shape, 0,
               lambda w, g, t: naive.sgd_step(w, g, 0.05, clip),
               lambda W, G, rows, t: KO.sgd_update_rows(W, G, rows, 0.05, clip))
    _row_steps(rng, shape, 1,
               lambda w, g, h, t: naive.adagrad_step(w, g, h, 0.01, 1e-6, l2, clip),
               lambda W, G, H, rows, t: KO.adagrad_update_rows(W, G, H, rows, 0.01, 1e-6, l2, clip))
    _row_steps(rng, shape, 2,
               lambda w, g, m, v, t: naive.adam_step(w, g, m, v, naive.adam_lr_t(1e-3, t),
                                                     l2, clip),
               lambda W, G, M, V, rows, t: KO.adam_update_rows(W, G, M, V, rows,
                                                              naive.adam_lr_t(1e-3, t), l2, clip))


def test_row_update_with_empty_and_all_rows():
    rng = rng_for("rows-edge")
    W, G = _params(rng, (5, 4))
    W0, G0 = W.copy(), G.copy()
    KO.sgd_update_rows(W, G, np.zeros(0, np.int32), 0.1, 0.0)
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(G, G0)
    KO.sgd_update_rows(W, G, np.arange(5, dtype=np.int32), 0.1, 0.0)
    np.testing.assert_allclose(W, W0 - np.float32(0.1) * G0, rtol=1e-6)
    assert not G.any()


def test_optimizers_reject_bad_arguments():
    w = np.zeros(6, np.float32)
    with pytest.raises(TypeError, match="g must have dtype float32"):
        KO.sgd_update(w, np.zeros(6), 0.1, 1.0)
    with pytest.raises(ValueError, match="g must have the shape of w"):
        KO.sgd_update(w, np.zeros(5, np.float32), 0.1, 1.0)
    with pytest.raises(ValueError, match="m is written in place"):
        KO.adam_update(w, w.copy(), np.zeros(12, np.float32)[::2], w.copy(), 0.1, 0.0, 1.0)
    with pytest.raises(ValueError, match="lr_t must be finite"):
        KO.sgd_update(w, w.copy(), float("nan"), 1.0)
    with pytest.raises(TypeError, match="eps must be a real number"):
        KO.adagrad_update(w, w.copy(), w.copy(), 0.1, "1e-6", 0.0, 1.0)
    W = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="rows must be strictly increasing"):
        KO.sgd_update_rows(W, W.copy(), np.array([1, 1], np.int32), 0.1, 1.0)
    with pytest.raises(ValueError, match="rows has entries outside"):
        KO.sgd_update_rows(W, W.copy(), np.array([1, 4], np.int32), 0.1, 1.0)
    with pytest.raises(TypeError, match="rows must have dtype int32"):
        KO.sgd_update_rows(W, W.copy(), np.array([1, 2]), 0.1, 1.0)
    with pytest.raises(ValueError, match="W must be 2-D"):
        KO.sgd_update_rows(w, w.copy(), np.array([1], np.int32), 0.1, 1.0)


# ------------------------------------------------------------------ threads, warm-up

def _blas_threads():
    return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]


def test_set_num_threads_and_warmup():
    before = _blas_threads()
    try:
        assert K.set_num_threads(1) == 1
        assert numba.get_num_threads() == 1
        assert all(t == 1 for t in _blas_threads())
        assert K.set_num_threads(10**6, blas=1) == numba.config.NUMBA_NUM_THREADS
        assert all(t == 1 for t in _blas_threads())
        K.set_num_threads(1, blas=0)
        assert _blas_threads() == before
    finally:
        assert K.set_num_threads(0) == numba.config.NUMBA_NUM_THREADS
    with pytest.raises(ValueError, match="n must be in"):
        K.set_num_threads(-1)
    assert _blas_threads() == before
    K.warmup()


def test_mode_switch():
    assert K.get_mode() == "auto"
    with K.forced_mode("serial"):
        assert K.get_mode() == "serial"
    assert K.get_mode() == "auto"
    with pytest.raises(ValueError, match="kernel mode"):
        K.set_mode("fast")


# ------------------------------------------------------- a hidden layer's fused backward

def _nonzero_buffers(rng, n_in, n_out):
    """db, dW and hits holding earlier values, so that a kernel must add rather than set."""
    return (rng.standard_normal(n_out).astype(np.float32),
            rng.standard_normal((n_out, n_in)).astype(np.float32),
            rng.integers(0, 5, n_out))


def _layer_case(rng, kind, B, n_in, n_out):
    x = rng.standard_normal((B, n_in)).astype(np.float32)
    W = rng.standard_normal((n_out, n_in)).astype(np.float32)
    out = np.maximum(gradient_rows(rng, "normal", B, n_out), 0)  # a ReLU output, some zeros
    g = gradient_rows(rng, kind, B, n_out)
    return x, W, out, g


@pytest.mark.parametrize("kind", ["normal", "ints", "relu", "mixed", "sparse"])
@pytest.mark.parametrize("B,n_in,n_out,k", [(10, 30, 20, 1), (10, 30, 20, 7), (7, 13, 9, 9),
                                            (1, 17, 5, 5), (100, 784, 500, 80), (10, 500, 500, 20)])
def test_layer_backward_matches_naive(mode, kind, B, n_in, n_out, k):
    """ReLU mask, bias sum, top-k, hits, dx and dW against plain NumPy, from nonzero buffers."""
    rng = rng_for("layer", kind, B, n_in, n_out, k)
    x, W, out, g = _layer_case(rng, kind, B, n_in, n_out)
    db0, dW0, hits0 = _nonzero_buffers(rng, n_in, n_out)
    db, dW, hits, gg = db0.copy(), dW0.copy(), hits0.copy(), g.copy()
    dx, idx = K.layer_backward(gg, out, x, W, k, db, dW, hits=hits)
    dy = g * (out > 0)
    np.testing.assert_array_equal(gg, dy)                 # g is overwritten with dy
    np.testing.assert_array_equal(idx, naive.topk_rows_ref(dy, k))
    np.testing.assert_array_equal(db, db0 + dy.sum(axis=0))  # same float32 order as NumPy
    np.testing.assert_array_equal(hits, hits0 + np.bincount(idx.ravel(), minlength=n_out))
    ref_dx, ref_dW = naive.sparse_backward(x, W, dy, idx, dW0)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dW, ref_dW, rtol=1e-4, atol=1e-4)


def test_layer_backward_equals_separate_kernels_bitwise(mode):
    """The fused call gives exactly what the separate kernels give (same summation order)."""
    rng = rng_for("layer-bitwise")
    x, W, out, g = _layer_case(rng, "relu", 37, 64, 50)
    ws = K.BackwardWorkspace(37, 9, 50)
    db, dW = np.zeros(50, np.float32), np.zeros((50, 64), np.float32)
    dx, idx = K.layer_backward(g.copy(), out, x, W, 9, db, dW, workspace=ws)
    dy = g * (out > 0)
    ref_idx = K.topk_rows(dy, 9)
    ref_dx, ref_dW = K.sparse_backward(x, W, dy, ref_idx)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(dx, ref_dx)
    np.testing.assert_array_equal(dW, ref_dW)


def test_layer_backward_with_given_indices_and_no_dx(mode):
    """Random-k passes its own idx (used as given, unsorted is fine); the input layer needs no dx."""
    rng = rng_for("layer-idx")
    x, W, out, g = _layer_case(rng, "normal", 6, 11, 8)
    idx = np.argsort(rng.random((6, 8)), axis=1)[:, :3].astype(np.int32)
    db, dW = np.zeros(8, np.float32), np.zeros((8, 11), np.float32)
    dx, got = K.layer_backward(g.copy(), out, x, W, 3, db, dW, need_dx=False, idx=idx)
    assert dx is None and got is idx
    dy = g * (out > 0)
    _, ref_dW = naive.sparse_backward(x, W, dy, idx, np.zeros((8, 11), np.float32))
    np.testing.assert_allclose(dW, ref_dW, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(db, dy.sum(axis=0))


@pytest.mark.parametrize("need_dx", [True, False])
@pytest.mark.parametrize("kind", ["normal", "relu", "ints"])
def test_layer_backward_dense_dispatch_equals_plain_path(mode, monkeypatch, kind, need_dx):
    """Where many entries are kept, the products run as BLAS on the sparsified dy: the very
    computation of the plain NumPy path, so its numbers are the plain path's, bit for bit;
    and the sparse kernels, forced on the same inputs, agree to rounding."""
    from nnmnist.backends.cpu import NumpyCompute
    from nnmnist.kernels import fused
    B, n_in, n_out, k = 40, 30, 20, 9   # k / n_out = 0.45: dense
    assert fused.use_dense(B, k, n_out, n_in, need_dx)
    rng = rng_for("dense-dispatch", kind, need_dx)
    x, W, out, g = _layer_case(rng, kind, B, n_in, n_out)
    db0, dW0, hits0 = _nonzero_buffers(rng, n_in, n_out)
    results = []
    for dense_from in (fused.DENSE_FROM, 2.0):
        monkeypatch.setattr(fused, "DENSE_FROM", dense_from)
        monkeypatch.setattr(fused, "DENSE_FROM_WIDE_DX", dense_from)
        db, dW, hits, gg = db0.copy(), dW0.copy(), hits0.copy(), g.copy()
        dx, idx = K.layer_backward(gg, out, x, W, k, db, dW, need_dx=need_dx, hits=hits)
        dy = g * (out > 0)
        np.testing.assert_array_equal(gg, dy)
        np.testing.assert_array_equal(idx, naive.topk_rows_ref(dy, k))
        np.testing.assert_array_equal(db, db0 + dy.sum(axis=0))
        np.testing.assert_array_equal(hits, hits0 + np.bincount(idx.ravel(), minlength=n_out))
        results.append((dx, dW))
    plain_dW = dW0.copy()
    plain_dx = NumpyCompute().meprop_backward_rows(x, W, dy, idx, plain_dW, need_dx)
    (dense_dx, dense_dW), (sparse_dx, sparse_dW) = results
    np.testing.assert_array_equal(dense_dW, plain_dW)
    np.testing.assert_allclose(sparse_dW, plain_dW, rtol=1e-5, atol=1e-5)
    if need_dx:
        np.testing.assert_array_equal(dense_dx, plain_dx)
        np.testing.assert_allclose(sparse_dx, plain_dx, rtol=1e-5, atol=1e-5)
    else:
        assert dense_dx is None and sparse_dx is None


def test_dense_dispatch_rule():
    from nnmnist.kernels import fused
    assert not fused.use_dense(100, 80, 500, 784, False)       # 0.16: sparse kernels
    assert not fused.use_dense(100, 160, 500, 500, True)       # 0.32, W fits L2
    assert fused.use_dense(100, 200, 500, 500, True)           # 0.4
    assert fused.use_dense(100, 400, 2000, 2000, True)         # 0.2, dx gathers a 16 MB W
    assert not fused.use_dense(100, 400, 2000, 784, False)     # no dx: 0.4 applies
    assert not fused.use_dense(10, 400, 500, 500, True)        # small batches stay sparse


def test_layer_backward_rejects_bad_arguments():
    x, W = np.zeros((4, 5), np.float32), np.zeros((6, 5), np.float32)
    g, out = np.zeros((4, 6), np.float32), np.zeros((4, 6), np.float32)
    db, dW = np.zeros(6, np.float32), np.zeros((6, 5), np.float32)
    with pytest.raises(ValueError, match="k must be"):
        K.layer_backward(g, out, x, W, 7, db, dW)
    with pytest.raises(ValueError, match="W must have 6 rows"):
        K.layer_backward(g, out, x, W[:5], 2, db, dW)
    with pytest.raises(ValueError, match="x must have shape"):
        K.layer_backward(g, out, x[:3], W, 2, db, dW)
    with pytest.raises(ValueError, match="g is written in place"):
        K.layer_backward(np.zeros((6, 4), np.float32).T, out, x, W, 2, db, dW)
    with pytest.raises(TypeError, match="hits must have dtype int64"):
        K.layer_backward(g, out, x, W, 2, db, dW, hits=np.zeros(6, np.int32))
    with pytest.raises(ValueError, match="idx has entries outside"):
        K.layer_backward(g, out, x, W, 2, db, dW, idx=np.full((4, 2), 6, np.int32))
    with pytest.raises(ValueError, match="must not repeat"):
        K.layer_backward(g, out, x, W, 2, db, dW, idx=np.full((4, 2), 3, np.int32))


@pytest.mark.parametrize("kind", ["normal", "ints", "relu", "sparse"])
@pytest.mark.parametrize("B,n_in,n_out,k", [(10, 30, 20, 1), (10, 30, 20, 7), (7, 13, 9, 9),
                                            (100, 784, 500, 80)])
def test_unified_backward_matches_naive(kind, B, n_in, n_out, k):
    """One column set per minibatch: ReLU mask, bias, column choice, hits, dx and dW."""
    rng = rng_for("unified-layer", kind, B, n_in, n_out, k)
    x, W, out, g = _layer_case(rng, kind, B, n_in, n_out)
    db0, dW0, hits0 = _nonzero_buffers(rng, n_in, n_out)
    db, dW, hits, gg = db0.copy(), dW0.copy(), hits0.copy(), g.copy()
    dx, cols = K.unified_backward(gg, out, x, W, k, db, dW, hits=hits)
    dy = g * (out > 0)
    np.testing.assert_array_equal(gg, dy)
    np.testing.assert_array_equal(cols, naive.topk_cols_unified(dy, k))
    np.testing.assert_array_equal(db, db0 + dy.sum(axis=0))
    expect_hits = hits0.copy()
    expect_hits[cols] += B
    np.testing.assert_array_equal(hits, expect_hits)
    kept = np.zeros_like(dy, dtype=np.float64)
    kept[:, cols] = dy[:, cols]
    np.testing.assert_allclose(dx, kept @ W, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dW, dW0 + kept.T @ x, rtol=1e-4, atol=1e-4)


def test_unified_backward_equals_separate_steps_bitwise():
    rng = rng_for("unified-bitwise")
    x, W, out, g = _layer_case(rng, "relu", 37, 64, 50)
    db, dW = np.zeros(50, np.float32), np.zeros((50, 64), np.float32)
    dx, cols = K.unified_backward(g.copy(), out, x, W, 9, db, dW)
    dy = g * (out > 0)
    ref_cols = K.topk_cols_unified(dy, 9)
    ref_dW = np.zeros((50, 64), np.float32)
    ref_dW[ref_cols] += dy[:, ref_cols].T @ x
    np.testing.assert_array_equal(cols, ref_cols)
    np.testing.assert_array_equal(dx, dy[:, ref_cols] @ W[ref_cols])
    np.testing.assert_array_equal(dW, ref_dW)
    np.testing.assert_array_equal(db, dy.sum(axis=0))


def test_unified_backward_given_columns_and_bad_arguments():
    rng = rng_for("unified-given")
    x, W, out, g = _layer_case(rng, "normal", 6, 11, 8)
    cols = np.array([5, 1, 6], np.int32)  # any order: used as given
    db, dW = np.zeros(8, np.float32), np.zeros((8, 11), np.float32)
    dx, got = K.unified_backward(g.copy(), out, x, W, 3, db, dW, need_dx=False, cols=cols)
    assert dx is None and got is cols
    dy = g * (out > 0)
    np.testing.assert_allclose(dW[cols], dy[:, cols].T @ x, rtol=1e-5, atol=1e-6)
    assert not dW[[0, 2, 3, 4, 7]].any()
    with pytest.raises(ValueError, match="must not repeat"):
        K.unified_backward(g.copy(), out, x, W, 3, db, dW, cols=np.array([1, 1, 2], np.int32))
    with pytest.raises(ValueError, match="k must be"):
        K.unified_backward(g.copy(), out, x, W, 9, db, dW)
    with pytest.raises(ValueError, match="cols has entries outside"):
        K.unified_backward(g.copy(), out, x, W, 3, db, dW, cols=np.array([8], np.int32))
