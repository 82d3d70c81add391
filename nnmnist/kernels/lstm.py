"""The LSTM tagger's element-wise loops: one pass over a time step's cell, forward and
backward, and the scatter-add of an embedding table's gradient.

Each kernel is the loop form of the NumPy reference in `nnmnist.nn.lstm` (cell_forward,
cell_backward) and `NumpyCompute.add_rows`, on float32 C-contiguous arrays. A step of the
reference makes about twenty passes over (B, H) arrays; these make one.

The forward needs exp, and Numba's scalar exp does not vectorise (it calls the C library's
expf for every element, 10-20x slower than a vector loop). `_exp` is a vectorisable float32
exp: x = n ln2 + r with |r| <= ln2/2, exp(r) by a degree-6 polynomial (its coefficients a
least-squares fit of exp(r) - 1 on that interval, maximum relative error 1e-7, about one
float32 rounding), times 2^n built in the exponent bits. Arguments are clamped to
[-87, 88], where exp stays a normal float32; sigmoid and tanh saturate there anyway.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._jit import inline_kernel, kernel
from .sparse import _axpy1, _axpy4, _axpy8
from .topk import _topk_row, scratch_size

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)          # ln 2 split in two: n * _LN2_HI is exact
_LN2_LO = np.float32(-2.12194440e-4)
_P1, _P2, _P3 = np.float32(1.00000003), np.float32(0.50000001), np.float32(0.16666456)
_P4, _P5, _P6 = np.float32(0.04166632), np.float32(0.00837191), np.float32(0.00139426)
_LO, _HI = np.float32(-87.0), np.float32(88.0)
_ROUND = np.float32(12582912.0)  # 1.5 * 2^23: adding and subtracting it rounds to an integer


@intrinsic
def _bits_as_float32(typingctx, i):
    """The float32 whose bit pattern is the int32 i."""
    if i != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@inline_kernel
def _exp(x):
    x = min(max(x, _LO), _HI)
    n = (x * _LOG2E + _ROUND) - _ROUND  # x log2(e) rounded to an integer, without a call
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = ((((((_P6 * r + _P5) * r + _P4) * r + _P3) * r + _P2) * r + _P1) * r) + np.float32(1)
    return p * _bits_as_float32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))


@inline_kernel
def _sigmoid(x):
    return np.float32(1) / (np.float32(1) + _exp(-x))


@inline_kernel
def _tanh(x):
    return np.float32(2) / (np.float32(1) + _exp(np.float32(-2) * x)) - np.float32(1)


@kernel
def cell_forward(z, c_prev, c_out, tc_out, h_out):
    B, H = c_out.shape
    for b in range(B):
        zb, cp, c, tc, h = z[b], c_prev[b], c_out[b], tc_out[b], h_out[b]
        for j in range(2 * H):          # i and f
            zb[j] = _sigmoid(zb[j])
        for j in range(2 * H, 3 * H):   # g
            zb[j] = _tanh(zb[j])
        for j in range(3 * H, 4 * H):   # o
            zb[j] = _sigmoid(zb[j])
        for j in range(H):
            c[j] = zb[H + j] * cp[j] + zb[j] * zb[2 * H + j]
        for j in range(H):
            tc[j] = _tanh(c[j])
        for j in range(H):
            h[j] = zb[3 * H + j] * tc[j]


@inline_kernel
def _ifg_grads(a, cp, dct, z, H):
    # dz of the input, forget and candidate gates from dct, the gradient reaching c: one
    # loop each (a loop that writes one block vectorises)
    one = np.float32(1)
    for j in range(H):
        i = a[j]
        z[j] = dct[j] * a[2 * H + j] * i * (one - i)
    for j in range(H):
        f = a[H + j]
        z[H + j] = dct[j] * cp[j] * f * (one - f)
    for j in range(H):
        g = a[2 * H + j]
        z[2 * H + j] = dct[j] * a[j] * (one - g * g)


@kernel
def cell_backward(dh, dc, acts, c_prev, tc, dz_out, dc_prev):
    B, H = tc.shape
    one = np.float32(1)
    for b in range(B):
        a, z, d, t, cp, dct, dcb = acts[b], dz_out[b], dh[b], tc[b], c_prev[b], dc_prev[b], dc[b]
        for j in range(H):  # the gradient reaching c (kept in dc_prev until the end)
            dct[j] = dcb[j] + d[j] * a[3 * H + j] * (one - t[j] * t[j])
        _ifg_grads(a, cp, dct, z, H)
        for j in range(H):
            o = a[3 * H + j]
            z[3 * H + j] = d[j] * t[j] * o * (one - o)
        for j in range(H):
            dct[j] = dct[j] * a[H + j]


@kernel
def meprop_step(dH, dh_next, dc, acts, c_prev, tc, dc_prev, k, Wh, idx, vals, dh_out, db):
    """One step of meProp's backward through time for per-gate top-k, sentence by sentence
    while its row is in cache: the cell's backward (dh = dH + dh_next, as `cell_backward`)
    into a one-row scratch, its sum into db, the k largest |dz| of each gate block (columns
    ascending, offset to the 4H row) into idx and their values into vals, and, when dh_out
    has rows, the gradient reaching h_(t-1): (kept dz) @ Wh. The whole dz is never stored:
    only what the weight gradients need later. dh_next with no rows means none (the last
    step)."""
    B, H = tc.shape
    one = np.float32(1)
    has_next = dh_next.shape[0] > 0
    z = np.empty(4 * H, np.float32)
    bits = z.view(np.uint32)
    scratch = np.empty(scratch_size(H), np.int32)
    hints = np.full(4, -1, np.int64)
    for b in range(B):
        a, t, cp, dct, dcb, dhb = acts[b], tc[b], c_prev[b], dc_prev[b], dc[b], dH[b]
        for j in range(H):
            d = dhb[j] + dh_next[b, j] if has_next else dhb[j]
            dct[j] = dcb[j] + d * a[3 * H + j] * (one - t[j] * t[j])
            o = a[3 * H + j]
            z[3 * H + j] = d * t[j] * o * (one - o)
        _ifg_grads(a, cp, dct, z, H)
        for j in range(H):
            dct[j] = dct[j] * a[H + j]
        for j in range(4 * H):
            db[j] += z[j]
        for g in range(4):
            out = idx[b, g * k:(g + 1) * k]
            hints[g] = _topk_row(bits[g * H:(g + 1) * H], k, scratch, out, hints[g])
            for q in range(k):
                out[q] += g * H
        for q in range(4 * k):
            vals[b, q] = z[idx[b, q]]
        if dh_out.shape[0] > 0:
            _dx_pairs_row(Wh, idx, vals, b, dh_out[b])


@kernel
def _dx_pairs_row(W, idx, vals, b, d):
    # d = sum over q of vals[b, q] * W[idx[b, q]]
    n = idx.shape[1]
    for i in range(d.shape[0]):
        d[i] = 0.0
    j, c = idx[b], vals[b]
    q = 0
    while q + 8 <= n:
        _axpy8(d, c[q], c[q + 1], c[q + 2], c[q + 3], c[q + 4], c[q + 5], c[q + 6], c[q + 7],
               W[j[q]], W[j[q + 1]], W[j[q + 2]], W[j[q + 3]],
               W[j[q + 4]], W[j[q + 5]], W[j[q + 6]], W[j[q + 7]])
        q += 8
    if q + 4 <= n:
        _axpy4(d, c[q], c[q + 1], c[q + 2], c[q + 3], W[j[q]], W[j[q + 1]], W[j[q + 2]], W[j[q + 3]])
        q += 4
    for u in range(q, n):
        _axpy1(d, c[u], W[j[u]])


@kernel
def input_grad_pairs(W, idx, vals, dx):
    """dx[p] = sum over q of vals[p, q] * W[idx[p, q]] for every row p."""
    for p in range(idx.shape[0]):
        _dx_pairs_row(W, idx, vals, p, dx[p])


@kernel
def weight_grad_pairs(x, idx, vals, dW):
    """dW[idx[p, q]] += vals[p, q] * x[p] for every (p, q): the pairs are first grouped by
    weight row (a counting sort, in order of p), so that each row of dW is read and written
    once, its contributions added in the order of p."""
    n_rows, n = idx.shape
    n_out = dW.shape[0]
    ptr = np.zeros(n_out + 1, np.int64)
    for p in range(n_rows):
        for q in range(n):
            ptr[idx[p, q] + 1] += 1
    for j in range(n_out):
        ptr[j + 1] += ptr[j]
    pos = np.empty(n_rows * n, np.int64)
    for p in range(n_rows):
        for q in range(n):
            j = idx[p, q]
            pos[ptr[j]] = p * n + q
            ptr[j] += 1
    start = 0
    flat = vals.reshape(-1)
    for j in range(n_out):
        end = ptr[j]
        g = dW[j]
        e = start
        while e + 8 <= end:
            p0, p1, p2, p3 = pos[e], pos[e + 1], pos[e + 2], pos[e + 3]
            p4, p5, p6, p7 = pos[e + 4], pos[e + 5], pos[e + 6], pos[e + 7]
            _axpy8(g, flat[p0], flat[p1], flat[p2], flat[p3],
                   flat[p4], flat[p5], flat[p6], flat[p7],
                   x[p0 // n], x[p1 // n], x[p2 // n], x[p3 // n],
                   x[p4 // n], x[p5 // n], x[p6 // n], x[p7 // n])
            e += 8
        while e + 4 <= end:
            p0, p1, p2, p3 = pos[e], pos[e + 1], pos[e + 2], pos[e + 3]
            _axpy4(g, flat[p0], flat[p1], flat[p2], flat[p3],
                   x[p0 // n], x[p1 // n], x[p2 // n], x[p3 // n])
            e += 4
        while e < end:
            _axpy1(g, flat[pos[e]], x[pos[e] // n])
            e += 1
        start = end


@kernel
def reverse_steps(x, src, out):
    """out[t, b] = x[src[t, b], b], row by row (a copy of contiguous rows, where NumPy's
    fancy indexing computes an address per element)."""
    L, B = src.shape
    H = x.shape[2]
    for t in range(L):
        for b in range(B):
            s = src[t, b]
            for j in range(H):
                out[t, b, j] = x[s, b, j]


@kernel
def add_rows(G, ids, d):
    n, E = d.shape
    for r in range(n):
        row = ids[r]
        for e in range(E):
            G[row, e] += d[r, e]
