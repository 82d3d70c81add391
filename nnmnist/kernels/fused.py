"""A hidden layer's whole meProp backward in one compiled call.

For a unit out = relu(mask * (x @ W.T + b)) and the gradient g of its output, one call does
what five recorded ops and four kernel calls did before:

    dy = g * (out > 0)                    in place in g (masked neurons output 0, so the
                                          ReLU test covers the mask)
    db += dy summed over the minibatch    row by row, in float32, as NumPy sums axis 0
    idx = the per-row top-k of |dy|       skipped when the caller chose idx (random-k)
    hits[idx] += 1                        meSimp's record, when asked for
    dx = sparse dy @ W, dW += sparse dy.T @ x   as `sparse.sparse_backward`

At minibatch 10 the Python dispatch of the separate ops cost as much as their arithmetic;
here it is paid once. Every step gives bit-for-bit the numbers of the separate path.

`unified_backward` does the same for unified top-k: one pass for the ReLU mask, the bias and
the column scores, the selection of k columns, then two BLAS products on the (B, k) block.
"""
import numpy as np
from numba import prange

from . import _check
from ._jit import kernel, num_threads, variants
from .sparse import BackwardWorkspace, _by_neuron, _dw_row, _dx_row
from .topk import _topk_row, scratch_size


@variants
def _layer_backward(g, out, x, W, k, select, idx, db, dW, dx, hits, ptr, rows, chunks,
                    products=True):
    batch, n = g.shape
    gbits = g.view(np.uint32)
    for c in prange(chunks):
        scratch = np.empty(scratch_size(n), np.int32)
        hint = -1
        for b in range(c * batch // chunks, (c + 1) * batch // chunks):
            for j in range(n):
                g[b, j] = g[b, j] * np.float32(out[b, j] > 0)
            if select:
                hint = _topk_row(gbits[b], k, scratch, idx[b], hint)
    total = np.zeros(n, np.float32)
    for b in range(batch):
        for j in range(n):
            total[j] += g[b, j]
    for j in range(n):
        db[j] += total[j]
    if hits.shape[0]:
        for v in idx.ravel():
            hits[v] += 1
    if not products:
        return
    if dx.shape[0]:
        for b in prange(batch):
            _dx_row(W, g, idx, b, dx[b])
    _by_neuron(idx, ptr, rows)
    for j in prange(W.shape[0]):
        _dw_row(x, g, ptr, rows, j, dW[j])


# The call has three parallel loops, and each wakes the sleeping thread pool (roughly 50 us
# on the 2-core test machine), so it runs in parallel only from a batch of 32 and 8M
# multiply-adds (above the kernels' general PARALLEL_MIN_WORK). `benchmarks/epoch.py table`
# with 2 threads, backprop an epoch, before this rule (parallel from PARALLEL_MIN_WORK) and
# with it: mlptop k=20, minibatch 10: 2.95 s against 0.68 s; minibatch 100: 0.44 s against
# 0.29 s; mlptop k=80 at minibatch 100 (its first layer still parallel): 0.6 s both.
FUSED_MIN_BATCH = 32
FUSED_MIN_WORK = 1 << 23


def _work(batch, k, n_in, n_out):
    # multiply-adds of the sparse products plus the selection (about 2 an element); 0 keeps
    # the call serial
    work = 2 * batch * k * n_in + 2 * batch * n_out
    return work if batch >= FUSED_MIN_BATCH and work >= FUSED_MIN_WORK else 0


# From this share of kept entries (k / n_out) on, and from a batch of DENSE_MIN_BATCH, the two
# products run as BLAS on dy with the other entries zeroed, exactly as the plain NumPy path
# computes them: a native BLAS does several times the multiply-adds per second of the
# per-example gathers. Measured with one thread, minibatch 100 (`python
# benchmarks/kernels.py dispatch`): the sparse kernels stay ahead up to about 0.4 while the
# weights fit the 2 MB L2 cache (784 -> 500, 500 -> 500) or no dx is wanted (784 -> 2000),
# but only up to about 0.2 when dx must gather rows of a larger weight matrix (2000 -> 2000).
DENSE_FROM = 0.4
DENSE_FROM_WIDE_DX = 0.2
WIDE_BYTES = 1 << 21
DENSE_MIN_BATCH = 32


@kernel
def _kept_entries(g, idx, dys):
    # dys = g with every entry outside idx zeroed (dys starts as zeros)
    for b in range(idx.shape[0]):
        for t in range(idx.shape[1]):
            j = idx[b, t]
            dys[b, j] = g[b, j]


def use_dense(batch, k, n_out, n_in, need_dx):
    """True when a unit's meProp products run as BLAS on the sparsified gradient."""
    wide = need_dx and 4 * n_out * n_in > WIDE_BYTES
    return batch >= DENSE_MIN_BATCH and k >= (DENSE_FROM_WIDE_DX if wide else DENSE_FROM) * n_out


def layer_backward_raw(g, out, x, W, k, idx, db, dW, need_dx, hits, workspace, select=True):
    """The unchecked call, for a caller that guarantees `layer_backward`'s contract."""
    batch, n_in = x.shape
    dense = use_dense(batch, k, W.shape[0], n_in, need_dx)
    dx = np.empty((batch if need_dx and not dense else 0, n_in), np.float32)
    if hits is None:
        hits = _NO_HITS
    chunks = max(1, min(batch, 4 * num_threads()))
    _layer_backward.pick(_work(batch, 0 if dense else k, n_in, W.shape[0]))(
        g, out, x, W, k, select, idx, db, dW, dx, hits, workspace.ptr, workspace.rows, chunks,
        not dense)
    if dense:
        dys = np.zeros_like(g)
        _kept_entries(g, idx, dys)
        dW += dys.T @ x
        return dys @ W if need_dx else None
    return dx if need_dx else None


_NO_HITS = np.zeros(0, np.int64)


def _check_unit(g, out, x, W, db, dW, hits):
    """The arrays of a unit's backward, checked against g's shape (B, n_out)."""
    g = _check.array("g", g, np.float32, ndim=2, writable=True)
    batch, n_out = g.shape
    out = _check.array("out", out, np.float32, shape=(batch, n_out))
    W = _check.array("W", W, np.float32, ndim=2)
    if W.shape[0] != n_out:
        raise ValueError(f"W must have {n_out} rows to match g {g.shape}, got {W.shape}")
    x = _check.array("x", x, np.float32, shape=(batch, W.shape[1]))
    _check.array("db", db, np.float32, shape=(n_out,), writable=True)
    _check.array("dW", dW, np.float32, shape=W.shape, writable=True)
    if hits is not None:
        _check.array("hits", hits, np.int64, shape=(n_out,), writable=True)
    return g, out, x, W


def layer_backward(g, out, x, W, k, db, dW, need_dx=True, hits=None, idx=None, workspace=None):
    """meProp backward of out = relu(mask * (x @ W.T + b)) given g, the gradient of out.

    g (B, n_out) float32 is overwritten with dy = g * (out > 0). The k columns of largest |dy|
    per row are chosen (or `idx` (B, k) int32, given, is used as it is: random-k), db (n_out,)
    and dW (n_out, n_in) are added into, hits (n_out,) int64 counts each chosen entry when
    given. Returns (dx or None, idx).
    """
    g, out, x, W = _check_unit(g, out, x, W, db, dW, hits)
    batch, n_out = g.shape
    select = idx is None
    if select:
        k = _check.integer("k", k, 1, n_out)
        idx = np.empty((batch, k), np.int32)
    else:
        idx = _check.indices("idx", idx, 2, n_out)
        if idx.shape[0] != batch:
            raise ValueError(f"idx must have {batch} rows to match g, got shape {idx.shape}")
        if idx.shape[1] > 1 and (np.diff(np.sort(idx, axis=1), axis=1) == 0).any():
            raise ValueError("idx must not repeat a column within a row")
        k = idx.shape[1]
    if workspace is None:
        workspace = BackwardWorkspace(batch, k, n_out)
    elif not workspace.fits(batch, k, n_out):
        raise ValueError(f"workspace does not fit idx ({batch}, {k}) into {n_out} neurons")
    dx = layer_backward_raw(g, out, x, W, k, idx, db, dW, need_dx, hits, workspace, select)
    return dx, idx


# -- unified top-k: one column set for the minibatch, then BLAS on the compacted blocks --------

@kernel
def _unified_prepare(g, out, k, select, cols, db, hits):
    # dy = g * (out > 0) in place; db += its column sums (float32, row order); when `select`,
    # cols = the k columns of largest sum |dy| (float64 sums rounded once to float32, as
    # `topk_cols_unified`); hits[cols] += batch when hits is given.
    batch, n = g.shape
    total = np.zeros(n, np.float32)
    score = np.zeros(n, np.float64)
    for b in range(batch):
        for j in range(n):
            v = g[b, j] * np.float32(out[b, j] > 0)
            g[b, j] = v
            total[j] += v
            score[j] += abs(np.float64(v))
    for j in range(n):
        db[j] += total[j]
    if select:
        s32 = score.astype(np.float32)
        _topk_row(s32.view(np.uint32), k, np.empty(scratch_size(n), np.int32), cols)
    if hits.shape[0]:
        for c in cols:
            hits[c] += batch


@kernel
def _add_rows(dW, cols, block):
    # dW[cols[i]] += block[i]: the compacted gradient back into its rows
    n_in = dW.shape[1]
    for i in range(cols.shape[0]):
        row = dW[cols[i]]
        src = block[i]
        for t in range(n_in):
            row[t] += src[t]


def unified_backward_raw(g, out, x, W, k, cols, db, dW, need_dx, hits, select=True):
    """The unchecked call behind `unified_backward`; returns dx or None."""
    _unified_prepare(g, out, k, select, cols, db, _NO_HITS if hits is None else hits)
    dyc = g[:, cols]
    _add_rows(dW, cols, dyc.T @ x)
    return dyc @ W[cols] if need_dx else None


def unified_backward(g, out, x, W, k, db, dW, need_dx=True, hits=None, cols=None):
    """Unified meProp backward of out = relu(mask * (x @ W.T + b)) given g = d out.

    As `layer_backward`, but one column set for the whole minibatch: the k columns of largest
    sum over the batch of |dy| (or `cols`, given: random-k), and dx, dW from BLAS on the
    compacted (B, k) block. hits[cols] grows by the batch size. Returns (dx or None, cols).
    """
    g, out, x, W = _check_unit(g, out, x, W, db, dW, hits)
    batch, n_out = g.shape
    select = cols is None
    if select:
        k = _check.integer("k", k, 1, n_out)
        cols = np.empty(k, np.int32)
    else:
        cols = _check.indices("cols", cols, 1, n_out)
        if np.unique(cols).size != cols.size:
            raise ValueError("cols must not repeat a column")
        k = cols.shape[0]
    dx = unified_backward_raw(g, out, x, W, k, cols, db, dW, need_dx, hits, select)
    return dx, cols
