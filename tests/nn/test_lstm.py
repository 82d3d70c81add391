"""The tagger's ops and network: the cell against plain loops, the whole network against
central differences in float64, and meProp's backward through time against a naive
per-sentence reference (each sentence alone, no padding, explicit loops)."""
import math

import numpy as np
import pytest

from nnmnist.backends.cpu import NumbaCompute, NumpyCompute
from nnmnist.nn import lstm
from nnmnist.nn.params import ParamStore
from nnmnist.nn.tensor import Flow
from nnmnist.run.config import Config

C = NumpyCompute()
EPS = 1e-6


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def naive_cell(z, c_prev):
    """One step, element by element."""
    B, four_h = z.shape
    H = four_h // 4
    acts, c, h = np.zeros_like(z), np.zeros((B, H)), np.zeros((B, H))
    for b in range(B):
        for j in range(H):
            i, f = sigmoid(z[b, j]), sigmoid(z[b, H + j])
            g, o = math.tanh(z[b, 2 * H + j]), sigmoid(z[b, 3 * H + j])
            acts[b, [j, H + j, 2 * H + j, 3 * H + j]] = i, f, g, o
            c[b, j] = f * c_prev[b, j] + i * g
            h[b, j] = o * math.tanh(c[b, j])
    return acts, c, h


@pytest.mark.parametrize("compute", [NumpyCompute(), NumbaCompute()], ids=["numpy", "numba"])
def test_cell_forward_matches_loops(compute):
    rng = np.random.default_rng(0)
    dtype = np.float32
    z = rng.normal(0, 2, (3, 20)).astype(dtype)
    c_prev = rng.normal(0, 1, (3, 5)).astype(dtype)
    acts, c, h = naive_cell(z.astype(np.float64), c_prev.astype(np.float64))
    zz, co, tco, ho = z.copy(), *(np.empty((3, 5), dtype) for _ in range(3))
    compute.lstm_cell_forward(zz, c_prev, co, tco, ho)
    np.testing.assert_allclose(zz, acts, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(co, c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tco, np.tanh(c), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ho, h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compute", [NumpyCompute(), NumbaCompute()], ids=["numpy", "numba"])
def test_cell_backward_against_differences(compute):
    """<dz, d> + <dc_prev, e> against the change of sum(R1 h + R2 c) along (d, e)."""
    rng = np.random.default_rng(1)
    B, H = 2, 3
    z = rng.normal(0, 1.5, (B, 4 * H))
    c_prev = rng.normal(0, 1, (B, H))
    R1, R2 = rng.normal(size=(B, H)), rng.normal(size=(B, H))

    def f(z, c_prev):
        _, c, h = naive_cell(z, c_prev)
        return float((R1 * h + R2 * c).sum())
    acts, c, _ = naive_cell(z, c_prev)
    dtype = np.float32 if isinstance(compute, NumbaCompute) else np.float64
    cast = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
    dz = np.empty((B, 4 * H), dtype)
    dc_prev = compute.lstm_cell_backward(cast(R1), cast(R2), cast(acts), cast(c_prev),
                                         cast(np.tanh(c)), dz)
    for _ in range(3):
        d, e = rng.normal(size=z.shape), rng.normal(size=c_prev.shape)
        numeric = (f(z + EPS * d, c_prev + EPS * e) - f(z - EPS * d, c_prev - EPS * e)) / (2 * EPS)
        analytic = float((dz * d).sum() + (dc_prev * e).sum())
        assert analytic == pytest.approx(numeric, rel=1e-4 if dtype == np.float32 else 1e-6,
                                         abs=1e-5 if dtype == np.float32 else 1e-8)


# -- the whole tagger -----------------------------------------------------------------------

VOCAB = [f"w{i}" for i in range(12)]
# three sentences of lengths 5, 2 and 4, padded with 0 at the end
X = np.array([[3, 4, 5, 2, 7], [6, 1, 0, 0, 0], [9, 2, 11, 8, 0]], np.int32)
Y = np.array([[0, 3, 16, 2, 5], [7, 1, -1, -1, -1], [12, 4, 9, 9, -1]], np.int32)


def small_tagger(net_type="lstm", k=2, hidden=4, scope="gate", unified=False, seed=0,
                 compute=C, float64=True):
    cfg = Config(NetType=net_type, HiddenSize=hidden, EmbedSize=3, LabelCount=17, Layers=2,
                 TrainTop=k, TopKScope=scope, Unified=unified, Kernels="numpy",
                 TrainFile="t", DevFile="d", TestFile="s")
    model = lstm.Tagger(cfg, VOCAB, compute, np.random.default_rng(seed))
    model.loss_grad = "sum"
    if float64:
        for _, p in model.named_params():
            p.value = p.value.astype(np.float64)
            p._grad, p.store = None, None
        model.store = ParamStore(model.named_params(), np)
    return model


def grads(model, x=X, y=Y):
    for _, p in model.named_params():
        p._grad = None
    flow = Flow()
    losses, _ = model.forward(flow, x, y)
    flow.backward()
    return float(losses.sum()), {name: p.grad.copy() for name, p in model.named_params()}


def loss_of(model, x=X, y=Y):
    losses, _ = model.forward(Flow(training=False), x, y)
    return float(losses.sum())


def test_dense_tagger_against_central_differences():
    model = small_tagger()
    _, g = grads(model)
    rng = np.random.default_rng(3)
    for name, p in model.named_params():
        for _ in range(2):
            d = rng.normal(size=p.shape)
            base = p.value.copy()
            p.value[...] = base + EPS * d
            up = loss_of(model)
            p.value[...] = base - EPS * d
            down = loss_of(model)
            p.value[...] = base
            numeric = (up - down) / (2 * EPS)
            assert float((g[name] * d).sum()) == pytest.approx(numeric, rel=1e-6, abs=1e-8), name


def naive_reference(model, x, y, k=None, per_gate=True):
    """Loss and gradients of the summed token loss, sentence by sentence with explicit loops;
    with k, each step keeps only the k largest |dz| of each gate block (or of the whole row)
    before the products, as meProp does; the bias takes the whole dz."""
    P = {name: p.value for name, p in model.named_params()}
    H = model.cfg.HiddenSize
    G = {name: np.zeros_like(v) for name, v in P.items()}
    total = 0.0
    for ids, tags in zip(x, y):
        n = int((ids != 0).sum())
        ids, tags = ids[:n], tags[:n]
        emb = [P["embed.W"][w] for w in ids]
        outs = {}
        for d, order in (("fwd", list(range(n))), ("bwd", list(range(n - 1, -1, -1)))):
            h, c, steps = np.zeros(H), np.zeros(H), []
            for t in order:
                z = P[f"{d}.Wx"] @ emb[t] + P[f"{d}.Wh"] @ h + P[f"{d}.b"]
                i, f = 1 / (1 + np.exp(-z[:H])), 1 / (1 + np.exp(-z[H:2 * H]))
                g, o = np.tanh(z[2 * H:3 * H]), 1 / (1 + np.exp(-z[3 * H:]))
                c_new = f * c + i * g
                h_new = o * np.tanh(c_new)
                steps.append((t, h, c, i, f, g, o, c_new, h_new))
                h, c = h_new, c_new
            outs[d] = steps
        hf = {s[0]: s[8] for s in outs["fwd"]}
        hb = {s[0]: s[8] for s in outs["bwd"]}
        dh = {"fwd": {}, "bwd": {}}
        for t in range(n):
            feat = np.concatenate([hf[t], hb[t]])
            logits = P["out.W"] @ feat + P["out.b"]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            total += -math.log(p[tags[t]])
            p[tags[t]] -= 1
            G["out.W"] += np.outer(p, feat)
            G["out.b"] += p
            back = P["out.W"].T @ p
            dh["fwd"][t], dh["bwd"][t] = back[:H], back[H:]
        for d in ("fwd", "bwd"):
            dh_next, dc_next = np.zeros(H), np.zeros(H)
            for (t, h_prev, c_prev, i, f, g, o, c_new, h_new) in reversed(outs[d]):
                dhh = dh[d][t] + dh_next
                tc = np.tanh(c_new)
                dct = dc_next + dhh * o * (1 - tc * tc)
                dz = np.concatenate([dct * g * i * (1 - i), dct * c_prev * f * (1 - f),
                                     dct * i * (1 - g * g), dhh * tc * o * (1 - o)])
                G[f"{d}.b"] += dz
                if k is not None:
                    keep = np.zeros_like(dz)
                    blocks = [slice(q * H, (q + 1) * H) for q in range(4)] if per_gate else [slice(None)]
                    for blk in blocks:
                        part = np.abs(dz[blk])
                        chosen = np.argsort(-part, kind="stable")[:k]
                        keep[np.arange(len(dz))[blk][chosen]] = 1
                    dz = dz * keep
                G[f"{d}.Wx"] += np.outer(dz, emb[t])
                G[f"{d}.Wh"] += np.outer(dz, h_prev)
                G["embed.W"][ids[t]] += P[f"{d}.Wx"].T @ dz
                dh_next = P[f"{d}.Wh"].T @ dz
                dc_next = dct * f
    return total, G


@pytest.mark.parametrize("net_type,k,scope", [("lstm", None, "gate"), ("lstmtop", 2, "gate"),
                                              ("lstmtop", 1, "gate"), ("lstmtop", 5, "whole")])
def test_tagger_against_naive_reference(net_type, k, scope):
    model = small_tagger(net_type, k=k or 2, scope=scope)
    loss, g = grads(model)
    ref_loss, ref = naive_reference(model, X, Y, k=k, per_gate=scope == "gate")
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name in g:
        np.testing.assert_allclose(g[name], ref[name], rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("unified", [False, True])
def test_topk_keeping_everything_is_dense(unified):
    dense = grads(small_tagger("lstm"))[1]
    full = grads(small_tagger("lstmtop", k=4, unified=unified))[1]
    for name in dense:
        np.testing.assert_allclose(full[name], dense[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_unified_keeps_one_column_set_per_step():
    """Unified per-gate top-k: at each step the same 4k columns flow back for every sentence."""
    rng = np.random.default_rng(0)
    dz = rng.normal(size=(3, 16))
    sel = lstm.select_gates(lstm.UnifiedTopK(2), dz, C, rng, per_gate=True)
    assert sel.unified and sel.chosen.shape == (8,)
    score = np.abs(dz).sum(axis=0).reshape(4, 4)
    want = np.concatenate([q * 4 + np.sort(np.argsort(-score[q], kind="stable")[:2]) for q in range(4)])
    np.testing.assert_array_equal(sel.chosen, want)


def test_padding_does_not_change_a_sentence():
    """A sentence scored in a padded batch gets the losses and gradients it gets alone."""
    model = small_tagger("lstmtop", k=2)
    _, batch_g = grads(model, X[1:2, :5], Y[1:2, :5])
    _, alone_g = grads(model, X[1:2, :2], Y[1:2, :2])
    for name in batch_g:
        np.testing.assert_allclose(batch_g[name], alone_g[name], rtol=1e-12, atol=1e-14)
    losses_batch, pred = model.forward(Flow(training=False), X, Y)
    losses_alone, _ = model.forward(Flow(training=False), X[1:2, :2], Y[1:2, :2])
    # time-major order: sentence 1's tokens are the 2nd of step 0 and of step 1
    np.testing.assert_allclose(losses_batch[[1, 4]], losses_alone, rtol=1e-12)
    assert (pred[Y < 0] == lstm.NO_TAG).all() and (pred[Y >= 0] >= 0).all()


def test_numba_matches_numpy_in_float32():
    a = small_tagger("lstmtop", k=2, compute=NumpyCompute(), float64=False)
    b = small_tagger("lstmtop", k=2, compute=NumbaCompute(), float64=False)
    la, ga = grads(a)
    lb, gb = grads(b)
    assert la == pytest.approx(lb, rel=1e-5)
    for name in ga:
        np.testing.assert_allclose(gb[name], ga[name], rtol=2e-4, atol=2e-5, err_msg=name)


def test_embedding_gradient_is_row_sparse():
    """Only the rows of words in the batch get gradient, and the lazy update is told which."""
    model = small_tagger()
    flow = Flow()
    model.forward(flow, X, Y)
    flow.backward()
    used = sorted(set(X[X > 0].tolist()))
    touched = np.flatnonzero(np.abs(model.embedding.grad).sum(axis=1))
    assert touched.tolist() == used
    np.testing.assert_array_equal(flow.selections[model.embedding].chosen, used)


# -- each new op alone, against central differences -----------------------------------------

from test_gradients import check_op, leaf  # noqa: E402


def test_embed_op():
    table = leaf(np.random.default_rng(5).normal(size=(7, 3)))
    ids = np.array([[1, 4], [4, 0], [6, 1]])
    check_op(lambda f, t: lstm.embed(f, t, ids, C), [table])


def test_reverse_each_op():
    rng = np.random.default_rng(6)
    lengths = np.array([3, 1, 4])
    src = lstm.reversal(lengths, 4, np)
    assert src[:, 0].tolist() == [2, 1, 0, 3] and src[:, 1].tolist() == [0, 1, 2, 3]
    check_op(lambda f, x: lstm.reverse_each(f, x, src, C), [leaf(rng.normal(size=(4, 3, 2)))])
    x = rng.normal(size=(4, 3, 5)).astype(np.float32)
    np.testing.assert_array_equal(NumbaCompute().reverse_steps(x, src), C.reverse_steps(x, src))


def test_split_linear_op():
    rng = np.random.default_rng(7)
    layer = lstm.Dense(8, 5, rng, C)
    layer.W.value, layer.b.value = rng.normal(size=(5, 8)), rng.normal(size=5)
    check_op(lambda f, a, b, W, bias: lstm.split_linear(f, a, b, layer, np),
             [leaf(rng.normal(size=(2, 3, 4))), leaf(rng.normal(size=(2, 3, 4))), layer.W, layer.b])


def test_take_rows_op():
    rng = np.random.default_rng(8)
    rows = np.array([0, 3, 4])
    check_op(lambda f, x: lstm.take_rows(f, x, rows, np), [leaf(rng.normal(size=(5, 3)))])


@pytest.mark.parametrize("rule", [None, lstm.TopK(2)])
def test_lstm_layer_op(rule):
    """One direction alone, dense and meProp with k = H (which keeps everything)."""
    rng = np.random.default_rng(9)
    layer = lstm.LSTM(3, 2, rng, C, rule)
    for p in layer.params:
        p.value = p.value.astype(np.float64)
    check_op(lambda f, x, Wx, Wh, b: layer(f, x), [leaf(rng.normal(size=(4, 2, 3))),
                                                     layer.Wx, layer.Wh, layer.b])


def test_fused_meprop_step_matches_the_step_by_step_path():
    """NumbaCompute's one-kernel step against NumpyCompute's cell, selection and product."""
    rng = np.random.default_rng(10)
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    for B, H, k in ((5, 12, 3), (3, 80, 70)):
        acts = rng.random((B, 4 * H)).astype(np.float32)
        dH, dh_next, dc, c_prev, tc = (f32(B, H) for _ in range(5))
        Wh = f32(4 * H, H)
        dH[0, :4] = 0.0  # ties
        for nxt, need in ((dh_next, True), (None, True), (dh_next, False)):
            db1, db2 = np.zeros(4 * H, np.float32), np.zeros(4 * H, np.float32)
            a = NumbaCompute().lstm_meprop_step(dH, nxt, dc, acts, c_prev, tc, lstm.TopK(k), rng,
                                                True, Wh, need, db1)
            b = NumpyCompute().lstm_meprop_step(dH, nxt, dc, acts, c_prev, tc, lstm.TopK(k), rng,
                                                True, Wh, need, db2)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1].chosen, b[1].chosen)
            np.testing.assert_array_equal(a[2], b[2])
            np.testing.assert_allclose(db1, db2, rtol=1e-5, atol=1e-6)
            if need:
                np.testing.assert_allclose(a[3], b[3], rtol=1e-5, atol=1e-6)
            else:
                assert a[3] is None and b[3] is None


def test_pair_kernels_match_dense_products():
    from nnmnist.kernels import lstm as K
    rng = np.random.default_rng(12)
    rows, n_out, width, k = 7, 9, 5, 3
    idx = np.sort(np.stack([rng.choice(n_out, k, replace=False) for _ in range(rows)]), axis=1).astype(np.int32)
    vals = rng.normal(size=(rows, k)).astype(np.float32)
    x = rng.normal(size=(rows, width)).astype(np.float32)
    W = rng.normal(size=(n_out, width)).astype(np.float32)
    dense = np.zeros((rows, n_out), np.float32)
    np.put_along_axis(dense, idx, vals, axis=1)
    dW = np.ones((n_out, width), np.float32)
    K.weight_grad_pairs(x, idx, vals, dW)
    np.testing.assert_allclose(dW, 1 + dense.T @ x, rtol=1e-5, atol=1e-6)
    dx = np.empty((rows, width), np.float32)
    K.input_grad_pairs(W, idx, vals, dx)
    np.testing.assert_allclose(dx, dense @ W, rtol=1e-5, atol=1e-6)
