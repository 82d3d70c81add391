"""meProp's top-k: which k entries of a gradient row (or of a whole minibatch) are kept.

Order: larger |a| first; among equal |a| the lower column index first; NaN below every
number. This is exactly the order of `np.argsort(-np.abs(a), kind="stable")`, and the
returned indices are sorted ascending.

Each entry becomes an int32 key: the bit pattern of |a| plus one (0 for NaN; the bits of a
non-negative float order like the float). A row is then selected in three steps, each a
pass that LLVM vectorises or a short loop:

1. Bucket search. Buckets are 1/16 of an octave wide (the key's top 12 bits), counted down
   from the row's largest key. Rows of one minibatch have similar shapes relative to their
   largest entry, so a row first takes as candidates the columns whose key reaches a floor a
   quarter octave below the previous row's boundary bucket (one compaction pass); a binary
   search with vectorised counting passes over those candidates alone then finds the bucket
   that holds the k-th largest key. Without a previous row, or when the estimate leaves
   fewer than k candidates, the search runs over the whole row (8 passes) instead.
2. The columns whose key reaches that bucket, in column order: the k winners plus the few
   other members of the boundary bucket.
3. The boundary bucket's keys are ordered (insertion sort when few, a radix select when
   many, e.g. a bucket of zeros) to give the threshold key T and how many copies of T are
   wanted; a last pass over the compacted columns keeps keys > T and the first wanted
   copies of T, so the output comes out ascending, ties resolved to the lower column.

About 0.6-0.9 us a row of 500 on this project's shared 2-core test machine, 1.2-1.4x faster
than without the estimate, and 2.5x on rows of 2000 (`benchmarks/kernels.py ab`); a plain
radix select took 2-4 us and np.argpartition plus a sort about 4 us
(`benchmarks/kernels.py each`).
"""
import numpy as np
from numba import prange

from . import _check
from ._jit import kernel, num_threads, variants

_ABS_MASK = np.uint32(0x7FFFFFFF)
_INF_BITS = np.uint32(0x7F800000)
_ONE32 = np.uint32(1)
# Bucket width: keys agreeing above this bit share a bucket (8 exponent + 4 mantissa bits).
_BUCKET_SHIFT = 19
_BUCKETS = 256     # searched below the top key; the last one takes everything smaller
_SMALL = 48        # boundary buckets up to this size are insertion-sorted
_SLACK = 4         # the estimated floor lies this many buckets (a quarter octave) below the
                   # previous row's boundary bucket
# Work per element, in multiply-adds, for the serial/parallel choice: selection costs about
# 1.5 ns an element, so rows of 500 stay serial up to B=100 (measured on 2 cores: 70-140 us
# serial against 110-135 us parallel at B=100, 10 against 40-60 us at B=10).
TOPK_WORK = 2


@kernel
def _mag_key(bits):
    # |a| as a key that orders like |a|: its bit pattern plus one; NaN becomes 0. The largest
    # key, +inf's, is 0x7F800001, so keys fit a non-negative int32 (signed arithmetic keeps
    # Numba's integer typing simple and fast).
    m = bits & _ABS_MASK
    return np.int32(0) if m > _INF_BITS else np.int32(m + _ONE32)


@kernel
def _count_ge(keys, low):
    c = 0
    for j in range(keys.shape[0]):
        c += keys[j] >= low
    return c


@kernel
def _bucket_floor(top, d):
    # The smallest key of bucket d (d buckets below the top key's); the last bucket starts at 0.
    if d >= _BUCKETS - 1:
        return np.int32(0)
    return np.int32(max(top - d, 0) << _BUCKET_SHIFT)


@kernel
def _kth_sorted(cand, m, want):
    # Insertion sort of cand[:m] descending; returns the want-th largest key T and how many
    # copies of T are among the want largest.
    for i in range(1, m):
        v = cand[i]
        p = i - 1
        while p >= 0 and cand[p] < v:
            cand[p + 1] = cand[p]
            p -= 1
        cand[p + 1] = v
    threshold = cand[want - 1]
    copies = 0
    for i in range(want):
        copies += cand[i] == threshold
    return threshold, copies


@kernel
def _kth_radix(cand, m, want, hist):
    # The same answer as _kth_sorted for many keys: a radix select, 8 bits a pass from the top,
    # on candidates compacted after each pass (at most four passes whatever the data).
    lo = cand[0]
    above = 0
    for i in range(m):
        lo = min(lo, cand[i])
    for i in range(m):
        above += cand[i] > lo
    if above < want:  # the smallest key is the threshold (typically a bucket of zeros)
        return lo, want - above
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
        if lo == hi:  # every candidate has the same key: it is T
            return lo, want
        if m == want:  # every candidate is taken: T is the smallest, and all its copies
            copies = 0
            for i in range(m):
                copies += cand[i] == lo
            return lo, copies
        d = 255
        while hist[d] < want:  # the digit of the want-th largest among the candidates
            want -= hist[d]
            d -= 1
        threshold |= np.int32(d << shift)
        kept = 0
        for i in range(m):
            if (cand[i] >> shift) & 0xFF == d:
                cand[kept] = cand[i]
                kept += 1
        m = kept
    return threshold, want


@kernel
def scratch_size(n):
    """int32 scratch that `_topk_row` needs for a row of n."""
    return 3 * n + 256


@kernel
def _boundary_bucket(keys, top, k, hi_d):
    # The first bucket d <= hi_d whose floor has at least k keys at or above it (the caller
    # knows that bucket hi_d's floor has): a binary search of vectorised counting passes.
    lo_d = 0
    while lo_d < hi_d:
        mid = (lo_d + hi_d) // 2
        if _count_ge(keys, _bucket_floor(top, mid)) >= k:
            hi_d = mid
        else:
            lo_d = mid + 1
    return lo_d


@kernel
def _topk_row(bits, k, scratch, out, hint=-1):
    # scratch: scratch_size(n) int32. See the module docstring for the steps. `hint` is the
    # previous row's boundary bucket (or -1); the return value is this row's, for the next.
    n = bits.shape[0]
    keys = scratch[:n]
    cols = scratch[n:2 * n]
    cand = scratch[2 * n:3 * n]
    hist = scratch[3 * n:3 * n + 256]
    top_key = np.int32(0)
    for j in range(n):
        key = _mag_key(bits[j])
        keys[j] = key
        top_key = max(top_key, key)
    top = top_key >> _BUCKET_SHIFT
    # 1. The boundary bucket d and the columns with key >= its floor, in order.
    c = 0
    hi_d = _BUCKETS - 1
    if hint >= 0:
        # Estimate: rows of one minibatch have similar shapes relative to their largest
        # entry, so a floor a little below the previous row's boundary most likely has k
        # keys above it. One compaction pass gives those candidates, and the exact search
        # then runs on them alone.
        hi_d = min(hint + _SLACK, _BUCKETS - 1)
        floor = _bucket_floor(top, hi_d)
        for j in range(n):
            cols[c] = j
            c += keys[j] >= floor
    if c >= k:
        for i in range(c):
            cand[i] = keys[cols[i]]
        d = _boundary_bucket(cand[:c], top, k, hi_d)
        floor = _bucket_floor(top, d)
        kept = 0
        for i in range(c):
            cols[kept] = cols[i]
            kept += cand[i] >= floor
        c = kept
    else:  # no estimate, or it was too high: search all n keys
        d = _boundary_bucket(keys, top, k, _BUCKETS - 1)
        floor = _bucket_floor(top, d)
        c = 0
        for j in range(n):
            cols[c] = j
            c += keys[j] >= floor
    ceiling = np.int32((top + 1) << _BUCKET_SHIFT) if d == 0 else _bucket_floor(top, d - 1)
    # 2. The boundary bucket's members among the columns.
    m = 0
    for i in range(c):
        key = keys[cols[i]]
        cand[m] = key
        m += key < ceiling
    # 3. The threshold among the boundary bucket's m keys; c - m keys lie above the bucket.
    want = k - (c - m)
    if m <= _SMALL:
        threshold, copies = _kth_sorted(cand, m, want)
    else:
        threshold, copies = _kth_radix(cand, m, want, hist)
    t = 0
    for i in range(c):
        j = cols[i]
        key = keys[j]
        take = (key > threshold) | ((key == threshold) & (copies > 0))
        copies -= (key == threshold) & take
        out[t] = j
        t += take
        if t == k:
            break
    return d


@variants
def _topk_rows(bits, k, chunks, out):
    # Rows are split into `chunks` contiguous blocks, each with its own scratch.
    rows, n = bits.shape
    for c in prange(chunks):
        scratch = np.empty(scratch_size(n), np.int32)
        hint = -1
        for r in range(c * rows // chunks, (c + 1) * rows // chunks):
            hint = _topk_row(bits[r], k, scratch, out[r], hint)


@kernel
def _topk_cols_unified(a, k, out):
    rows, n = a.shape
    total = np.zeros(n, np.float64)
    for r in range(rows):
        for j in range(n):
            total[j] += abs(np.float64(a[r, j]))
    score = total.astype(np.float32)
    _topk_row(score.view(np.uint32), k, np.empty(scratch_size(n), np.int32), out)


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
        _topk_rows.pick(TOPK_WORK * rows * n)(a.view(np.uint32), k, chunks, out)
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
