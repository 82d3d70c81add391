"""meProp's top-k: which k entries of a gradient row (or of a whole minibatch) are kept.

Order: larger |a| first; among equal |a| the lower column index first; NaN below every
number. This is exactly the order of `np.argsort(-np.abs(a), kind="stable")`, and the
returned indices are sorted ascending.

Each entry becomes a uint32 key: the bit pattern of |a| plus one (0 for NaN; the bits of a
non-negative float order like the float). A radix select finds the k-th largest key in at
most four passes, whatever the data; a last pass in column order collects the chosen
columns, so the output comes out sorted, ties resolved to the lower column, without a sort.
"""
import numpy as np
from numba import prange

from . import _check
from ._jit import kernel, num_threads, variants

_ABS_MASK = np.uint32(0x7FFFFFFF)
_INF_BITS = np.uint32(0x7F800000)
_ONE32 = np.uint32(1)


@kernel
def _mag_key(bits):
    # |a| as a key that orders like |a|: its bit pattern plus one; NaN becomes 0. The largest
    # key, +inf's, is 0x7F800001, so keys fit a non-negative int32 (signed arithmetic keeps
    # Numba's integer typing simple and fast).
    m = bits & _ABS_MASK
    return np.int32(0) if m > _INF_BITS else np.int32(m + _ONE32)


@kernel
def _topk_row(bits, k, keys, cand, hist, out):
    # Radix select, 8 bits a pass from the top, on candidates compacted after each pass:
    # finds the k-th largest key T and how many entries equal to T are still wanted. The
    # work is at most 4 passes over the row whatever the data (ties, zeros, sorted input):
    # a quickselect degenerated as training made gradients sparse (many equal keys).
    # Then one pass in column order keeps keys > T and the first `want` keys == T, so the
    # output is ascending and ties go to the lower column. scratch: keys, cand (n), hist (256).
    n = bits.shape[0]
    for j in range(n):
        keys[j] = _mag_key(bits[j])
        cand[j] = keys[j]
    m = n
    want = k
    threshold = np.int32(0)
    for shift in (24, 16, 8, 0):
        for d in range(256):
            hist[d] = 0
        lo = cand[0]
        hi = cand[0]
        for i in range(m):
            c = cand[i]
            hist[(c >> shift) & 0xFF] += 1
            lo = min(lo, c)
            hi = max(hi, c)
        if lo == hi:  # every candidate has the same key (a run of zeros, say): it is T
            threshold = lo
            break
        if m == want:  # every candidate is taken: T is the smallest, and all its copies
            threshold = lo
            want = 0
            for i in range(m):
                want += cand[i] == lo
            break
        d = 255
        while hist[d] < want:  # the digit of the k-th largest among the candidates
            want -= hist[d]
            d -= 1
        threshold |= np.int32(d << shift)
        kept = 0
        for i in range(m):
            if (cand[i] >> shift) & 0xFF == d:
                cand[kept] = cand[i]
                kept += 1
        m = kept
    t = 0
    for j in range(n):
        key = keys[j]
        if key > threshold or (key == threshold and want > 0):
            if key == threshold:
                want -= 1
            out[t] = j
            t += 1
            if t == k:
                break


@variants
def _topk_rows(bits, k, chunks, out):
    # Rows are split into `chunks` contiguous blocks, each with its own scratch.
    rows, n = bits.shape
    for c in prange(chunks):
        keys = np.empty(n, np.int32)
        cand = np.empty(n, np.int32)
        hist = np.empty(256, np.int32)
        for r in range(c * rows // chunks, (c + 1) * rows // chunks):
            _topk_row(bits[r], k, keys, cand, hist, out[r])


@kernel
def _topk_cols_unified(a, k, out):
    rows, n = a.shape
    total = np.zeros(n, np.float64)
    for r in range(rows):
        for j in range(n):
            total[j] += abs(np.float64(a[r, j]))
    score = total.astype(np.float32)
    _topk_row(score.view(np.uint32), k, np.empty(n, np.int32), np.empty(n, np.int32),
              np.empty(256, np.int32), out)


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
