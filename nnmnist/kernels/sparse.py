"""meProp's sparse backward and the bookkeeping that rides on its top-k indices.

W is neuron-major (out, in), so both loops walk contiguous rows:
    dx[b, :] = sum_{j in idx[b]} dy[b, j] * W[j, :]     (prange over examples b)
    dW[j, :] += sum_{b : j in idx[b]} dy[b, j] * x[b, :]  (prange over neurons j)
The dW loop is race-free because each neuron's row is written by one iteration: the index
pattern is first transposed into CSR form (for each neuron, the examples that chose it, in
ascending order, so the sum order is fixed whatever the thread count).
"""
import numpy as np
from numba import prange

from . import _check
from ._jit import fma, inline_kernel, kernel, variants


class BackwardWorkspace:
    """Reusable scratch for `sparse_backward`: fits any batch of at most `max_rows` x `k`
    indices into `n_out` neurons (e.g. a last, smaller minibatch)."""

    __slots__ = ("ptr", "rows")

    def __init__(self, max_rows, k, n_out):
        max_rows = _check.integer("max_rows", max_rows, 0)
        k = _check.integer("k", k, 0)
        n_out = _check.integer("n_out", n_out, 1)
        self.ptr = np.empty(n_out + 1, np.int32)   # CSR row pointer per neuron
        self.rows = np.empty(max_rows * k, np.int32)  # examples, grouped by neuron

    def fits(self, rows, k, n_out):
        """True when a (rows, k) index pattern into n_out neurons fits this workspace."""
        return self.ptr.shape[0] == n_out + 1 and self.rows.shape[0] >= rows * k


@kernel
def _by_neuron(idx, ptr, rows):
    # Counting sort of (b, t) by neuron idx[b, t]; ptr[j]..ptr[j+1] delimit neuron j's examples.
    n_rows, k = idx.shape
    n_out = ptr.shape[0] - 1
    for j in range(n_out + 1):
        ptr[j] = 0
    for b in range(n_rows):
        for t in range(k):
            ptr[idx[b, t] + 1] += 1
    for j in range(n_out):
        ptr[j + 1] += ptr[j]
    # Fill using ptr[j] as neuron j's cursor; afterwards ptr[j] == old ptr[j + 1].
    for b in range(n_rows):
        for t in range(k):
            j = idx[b, t]
            rows[ptr[j]] = b
            ptr[j] += 1
    for j in range(n_out, 0, -1):
        ptr[j] = ptr[j - 1]
    ptr[0] = 0


# Both loops take eight source rows per sweep of the destination row (then four, then one):
# an eighth of the destination loads and stores of one-row-at-a-time axpys. Each element
# adds its products one after the other, each as one fused multiply-add, so the result is the
# same in every caller, vectorised or not. `benchmarks/kernels.py ab --only sparse` measures
# this against the former four rows without FMA.

@inline_kernel
def _axpy8(d, c0, c1, c2, c3, c4, c5, c6, c7, r0, r1, r2, r3, r4, r5, r6, r7):
    for i in range(d.shape[0]):
        s = fma(c0, r0[i], d[i])
        s = fma(c1, r1[i], s)
        s = fma(c2, r2[i], s)
        s = fma(c3, r3[i], s)
        s = fma(c4, r4[i], s)
        s = fma(c5, r5[i], s)
        s = fma(c6, r6[i], s)
        d[i] = fma(c7, r7[i], s)


@inline_kernel
def _axpy4(d, c0, c1, c2, c3, r0, r1, r2, r3):
    for i in range(d.shape[0]):
        s = fma(c0, r0[i], d[i])
        s = fma(c1, r1[i], s)
        s = fma(c2, r2[i], s)
        d[i] = fma(c3, r3[i], s)


@inline_kernel
def _axpy1(d, c, r):
    for i in range(d.shape[0]):
        d[i] = fma(c, r[i], d[i])


@kernel
def _dx_row(W, dy, idx, b, d):
    # d = sum over t of dy[b, idx[b, t]] * W[idx[b, t]]
    k = idx.shape[1]
    for i in range(d.shape[0]):
        d[i] = 0.0
    j = idx[b]
    c = dy[b]
    t = 0
    while t + 8 <= k:
        _axpy8(d, c[j[t]], c[j[t + 1]], c[j[t + 2]], c[j[t + 3]],
               c[j[t + 4]], c[j[t + 5]], c[j[t + 6]], c[j[t + 7]],
               W[j[t]], W[j[t + 1]], W[j[t + 2]], W[j[t + 3]],
               W[j[t + 4]], W[j[t + 5]], W[j[t + 6]], W[j[t + 7]])
        t += 8
    if t + 4 <= k:
        _axpy4(d, c[j[t]], c[j[t + 1]], c[j[t + 2]], c[j[t + 3]],
               W[j[t]], W[j[t + 1]], W[j[t + 2]], W[j[t + 3]])
        t += 4
    for u in range(t, k):
        _axpy1(d, c[j[u]], W[j[u]])


@kernel
def _dw_row(x, dy, ptr, rows, j, g):
    # g += sum over the examples b that chose neuron j of dy[b, j] * x[b]
    p = ptr[j]
    end = ptr[j + 1]
    while p + 8 <= end:
        b = rows[p:p + 8]
        _axpy8(g, dy[b[0], j], dy[b[1], j], dy[b[2], j], dy[b[3], j],
               dy[b[4], j], dy[b[5], j], dy[b[6], j], dy[b[7], j],
               x[b[0]], x[b[1]], x[b[2]], x[b[3]], x[b[4]], x[b[5]], x[b[6]], x[b[7]])
        p += 8
    if p + 4 <= end:
        b = rows[p:p + 4]
        _axpy4(g, dy[b[0], j], dy[b[1], j], dy[b[2], j], dy[b[3], j],
               x[b[0]], x[b[1]], x[b[2]], x[b[3]])
        p += 4
    for q in range(p, end):
        _axpy1(g, dy[rows[q], j], x[rows[q]])


@variants
def _sparse_dx(W, dy, idx, dx):
    for b in prange(idx.shape[0]):
        _dx_row(W, dy, idx, b, dx[b])


@variants
def _sparse_dw(x, dy, ptr, rows, dW):
    for j in prange(dW.shape[0]):
        _dw_row(x, dy, ptr, rows, j, dW[j])


@kernel
def _rows_touched(idx, n_out):
    hit = np.zeros(n_out, np.bool_)
    for v in idx.ravel():
        hit[v] = True
    return np.flatnonzero(hit).astype(np.int32)


@kernel
def _record_hits(idx, hits):
    for v in idx.ravel():
        hits[v] += 1


def sparse_backward(x, W, dy, idx, dx=None, dW=None, need_dx=True, workspace=None):
    """Backward of y = x @ W.T through only the entries idx of dy; returns (dx, dW).

    x (B, in), W (out, in), dy (B, out) float32; idx (B, k) int32 as from `topk_rows`
    (indices need not be sorted but must be unique per row). dx (B, in) is overwritten
    (allocated when None; None is returned when need_dx is False). dW (out, in) is an
    existing gradient buffer that is added into (zeros allocated when None).
    `workspace` (a BackwardWorkspace) avoids two small allocations per call.
    """
    W = _check.array("W", W, np.float32, ndim=2)
    n_out, n_in = W.shape
    x = _check.array("x", x, np.float32, ndim=2)
    n_rows = x.shape[0]
    if x.shape[1] != n_in:
        raise ValueError(f"x must have shape (B, {n_in}) to match W {W.shape}, got {x.shape}")
    dy = _check.array("dy", dy, np.float32, shape=(n_rows, n_out))
    idx = _check.indices("idx", idx, 2, n_out)
    if idx.shape[0] != n_rows:
        raise ValueError(f"idx must have {n_rows} rows to match x, got shape {idx.shape}")
    k = idx.shape[1]
    if dW is None:
        dW = np.zeros((n_out, n_in), np.float32)
    else:
        _check.array("dW", dW, np.float32, shape=(n_out, n_in), writable=True)
    if need_dx:
        if dx is None:
            dx = np.empty((n_rows, n_in), np.float32)
        else:
            _check.array("dx", dx, np.float32, shape=(n_rows, n_in), writable=True)
        _sparse_dx.pick(n_rows * k * n_in)(W, dy, idx, dx)
    else:
        dx = None
    if workspace is None:
        workspace = BackwardWorkspace(n_rows, k, n_out)
    elif not isinstance(workspace, BackwardWorkspace):
        raise TypeError(f"workspace must be a BackwardWorkspace, got {type(workspace).__name__}")
    elif not workspace.fits(n_rows, k, n_out):
        raise ValueError(f"workspace (n_out={workspace.ptr.shape[0] - 1}, capacity "
                         f"{workspace.rows.shape[0]}) does not fit idx {idx.shape} "
                         f"into {n_out} neurons")
    _by_neuron(idx, workspace.ptr, workspace.rows)
    _sparse_dw.pick(n_rows * k * n_in)(x, dy, workspace.ptr, workspace.rows, dW)
    return dx, dW


def rows_touched(idx, n_out):
    """The sorted unique neurons (int32) that appear anywhere in idx: the rows a lazy
    optimizer update must visit."""
    n_out = _check.integer("n_out", n_out, 1)
    idx = _check.indices("idx", idx, None, n_out)
    return _rows_touched(idx, n_out)


def record_hits(idx, hits):
    """meSimp's record: hits[idx[b, t]] += 1 for every entry of idx (in place, int64 hits)."""
    _check.array("hits", hits, np.int64, ndim=1, writable=True)
    idx = _check.indices("idx", idx, None, hits.shape[0])
    _record_hits(idx, hits)
