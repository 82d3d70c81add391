"""Deliberately naive references for nnmnist.kernels: plain Python / NumPy loops of the
same maths, written for obviousness, not speed."""
import math

import numpy as np


def topk_rows(a, k):
    """Per row: sort columns by (|a| descending, NaN last, column ascending), keep k."""
    out = np.empty((a.shape[0], k), np.int64)
    for b in range(a.shape[0]):
        order = sorted(range(a.shape[1]), key=lambda j: (
            math.isnan(a[b, j]), -abs(float(a[b, j])) if not math.isnan(a[b, j]) else 0.0, j))
        out[b] = sorted(order[:k])
    return out


# The name the kernel tests use; the loop above, not the framework's argsort expression.
topk_rows_ref = topk_rows


def heap_topk_row(a, k):
    """The original's top-k of one row (docs/ORIGINAL.md §11.2): a binary min-heap keyed on the
    value alone is filled with the first k columns; each later column replaces the heap's
    smallest only when strictly larger. Among equal values, which one sits at the root (and so
    leaves first) depends on the heap's layout. Returns the kept columns in heap order."""
    heap = []

    def swap(i, j):
        heap[i], heap[j] = heap[j], heap[i]

    def sift_up(i):
        while i > 0 and heap[i][0] < heap[(i - 1) // 2][0]:
            swap(i, (i - 1) // 2)
            i = (i - 1) // 2

    def sift_down(i):
        while True:
            small = i
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap) and heap[child][0] < heap[small][0]:
                    small = child
            if small == i:
                return
            swap(i, small)
            i = small

    for j in range(len(a)):
        if j < k:
            heap.append((float(a[j]), j))
            sift_up(len(heap) - 1)
        elif float(a[j]) > heap[0][0]:
            heap[0] = (float(a[j]), j)
            sift_down(0)
    return [j for _, j in heap]


def unified_scores(a):
    """Column scores of unified top-k: sum of |a| over rows, in row order, in float64,
    rounded once to float32."""
    total = [0.0] * a.shape[1]
    for b in range(a.shape[0]):
        for j in range(a.shape[1]):
            total[j] += abs(float(a[b, j]))
    return np.array(total, np.float64).astype(np.float32)


def topk_cols_unified(a, k):
    """The k columns of largest score, ties to the lower column, ascending."""
    s = unified_scores(a)
    return topk_rows(s[None, :], k)[0]


def sparse_backward(x, W, dy, idx, dW0):
    """dx[b] = sum_{j in idx[b]} dy[b, j] W[j];
    dW = dW0 + sum_b sum_{j in idx[b]} dy[b, j] x[b]   (float64 accumulators)."""
    dx = np.zeros((x.shape[0], W.shape[1]), np.float64)
    dW = dW0.astype(np.float64)
    for b in range(idx.shape[0]):
        for j in idx[b]:
            dx[b] += float(dy[b, j]) * W[j].astype(np.float64)
            dW[j] += float(dy[b, j]) * x[b].astype(np.float64)
    return dx, dW


def dense_backward(x, W, dy, idx, dW0):
    """The dense equivalent: zero dy outside idx, then two matrix products."""
    dys = np.zeros_like(dy)
    for b in range(idx.shape[0]):
        dys[b, idx[b]] = dy[b, idx[b]]
    return dys @ W, dW0 + dys.T @ x


def rows_touched(idx):
    return np.array(sorted(set(int(v) for v in idx.ravel())), np.int64)


def record_hits(idx, hits):
    hits = hits.copy()
    for v in idx.ravel():
        hits[int(v)] += 1
    return hits


# Optimizer steps, written out exactly as docs/ORIGINAL.md §5 states them, in NumPy float32.
# Each takes and returns copies; g is zeroed afterwards as the kernels do.

def _clip(g, clip):
    return np.clip(g, -clip, clip) if clip > 0 else g


def sgd_step(w, g, lr_t, clip):
    g = _clip(g, clip)
    w = w - np.float32(lr_t) * g
    return w, np.zeros_like(g)


def adagrad_step(w, g, h, lr, eps, l2, clip):
    g = g + np.float32(l2) * w
    g = _clip(g, clip)
    h = h + g * g
    w = w - g * np.float32(lr) / np.sqrt(h + np.float32(eps))
    return w, np.zeros_like(g), h


def adam_lr_t(lr, t):
    return lr * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)


def adam_step(w, g, m, v, lr_t, l2, clip):
    g = g + np.float32(l2) * w
    g = _clip(g, clip)
    v = 0.999 * v + 0.001 * g * g
    v = np.where(v < 2.0 ** -106, np.float32(0), v)  # so are tiny second moments
    m = 0.9 * m + 0.1 * g
    m = np.where(np.abs(m) < 2.0 ** -100, np.float32(0), m)  # tiny moments are stored as 0
    w = w - np.float32(lr_t) * m / (np.sqrt(v) + 1e-8)
    return w, np.zeros_like(g), m, v


def rmsprop_step(w, g, r, lr, rho, eps, l2, clip):
    g = g + np.float32(l2) * w
    g = _clip(g, clip)
    r = np.float32(rho) * r + (np.float32(1) - np.float32(rho)) * (g * g)
    r = np.where(r < 2.0 ** -100, np.float32(0), r)  # tiny averages are stored as 0
    w = w - g * np.float32(lr) / np.sqrt(r + np.float32(eps))
    return w, np.zeros_like(g), r
