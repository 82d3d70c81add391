"""meProp's top-k: which k entries of a gradient row (or of a whole minibatch) are kept.

Order: larger |a| first; among equal |a| the lower column index first; NaN below every
number. This is exactly the order of `np.argsort(-np.abs(a), kind="stable")`, and the
returned indices are sorted ascending.

Each entry becomes one unique uint64 key: high word = bit pattern of |a| plus one (0 for
NaN; the bits of a non-negative float order like the float), low word = ~column. Keys are
distinct, so "the k largest keys" is a well-defined set, found with an O(n) quickselect;
the chosen columns are then marked and collected in column order, so the output comes out
sorted without a sort.
"""
import numba
import numpy as np
from numba import prange

from . import _check
from ._jit import kernel, num_threads, variants

_ABS_MASK = np.uint32(0x7FFFFFFF)
_INF_BITS = np.uint32(0x7F800000)
_LOW_ONES = np.uint64(0xFFFFFFFF)
_ONE32 = np.uint32(1)
_ZERO64 = np.uint64(0)
_SHIFT = np.uint64(32)


@kernel
def _key(bits, j):
    m = bits & _ABS_MASK
    hi = _ZERO64 if m > _INF_BITS else np.uint64(m + _ONE32)
    return (hi << _SHIFT) | (_LOW_ONES - np.uint64(j))


@kernel
def _select(keys, kth):
    # Quickselect: afterwards keys[kth] is the kth smallest key and keys[kth:] are the
    # largest ones. Lomuto partition around a median-of-three pivot value, written without
    # data-dependent branches (mispredictions, not comparisons, are the cost on real data).
    # Keys are distinct, so the median of three leaves at least one key on each side.
    lo = 0
    hi = keys.shape[0] - 1
    while hi - lo >= 2:
        a = keys[lo]
        b = keys[(lo + hi) >> 1]
        c = keys[hi]
        if a > b:
            a, b = b, a
        if b > c:
            b = c
        x = a if a > b else b
        p = lo
        for i in range(lo, hi + 1):
            v = keys[i]
            keys[i] = keys[p]
            keys[p] = v
            p += v < x
        if kth < p:
            hi = p - 1
        else:
            lo = p
    if hi > lo and keys[lo] > keys[hi]:
        keys[lo], keys[hi] = keys[hi], keys[lo]


@kernel
def _topk_row(bits, k, keys, mark, out):
    # keys, mark: scratch of len(bits); out: len(bits) too, its first k entries are the result.
    n = bits.shape[0]
    for j in range(n):
        keys[j] = _key(bits[j], j)
        mark[j] = 0
    _select(keys, n - k)
    for p in range(n - k, n):
        mark[_LOW_ONES - (keys[p] & _LOW_ONES)] = 1
    t = 0
    for j in range(n):  # in column order, so the result comes out ascending
        out[t] = j
        t += mark[j]


@variants
def _topk_rows(bits, k, chunks, out):
    # Rows are split into `chunks` contiguous blocks, each with its own scratch.
    rows, n = bits.shape
    for c in prange(chunks):
        keys = np.empty(n, np.uint64)
        mark = np.empty(n, np.int32)
        found = np.empty(n, np.int32)
        for r in range(c * rows // chunks, (c + 1) * rows // chunks):
            _topk_row(bits[r], k, keys, mark, found)
            out[r, :] = found[:k]


@kernel
def _topk_cols_unified(a, k, out):
    rows, n = a.shape
    total = np.zeros(n, np.float64)
    for r in range(rows):
        for j in range(n):
            total[j] += abs(np.float64(a[r, j]))
    score = total.astype(np.float32)
    found = np.empty(n, np.int32)
    _topk_row(score.view(np.uint32), k, np.empty(n, np.uint64), np.empty(n, np.int32), found)
    out[:] = found[:k]


def topk_rows(a, k, out=None):
    """Per row of float32 a (B, n): the k column indices of largest |a|, ascending, int32 (B, k)."""
    a = _check.array("a", a, np.float32, ndim=2)
    rows, n = a.shape
    k = _check.integer("k", k, 1, n)
    if out is None:
        out = np.empty((rows, k), np.int32)
    else:
        _check.array("out", out, np.int32, shape=(rows, k), writable=True)
    if rows:
        chunks = min(rows, 4 * num_threads())
        # Selecting costs some 30 multiply-adds per element (several passes of swaps); with
        # this weight B=10, n=500 already runs in parallel (13 vs 19 us measured on 2 cores).
        _topk_rows.pick(32 * rows * n)(a.view(np.uint32), k, chunks, out)
    return out


def topk_cols_unified(a, k):
    """One column set for the whole minibatch: the k columns of largest sum_b |a[b, j]|.

    The column score is summed in float64 in row order and rounded to float32; ties
    (equal float32 scores) go to the lower column. Returns int32 (k,), ascending.
    """
    a = _check.array("a", a, np.float32, ndim=2)
    k = _check.integer("k", k, 1, a.shape[1])
    out = np.empty(k, np.int32)
    _topk_cols_unified(a, k, out)
    return out
