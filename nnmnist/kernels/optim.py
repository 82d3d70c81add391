"""Fused optimizer updates (SPEC §5): one pass over w, g and the state, g zeroed after.

Each rule's arithmetic is written once, as a per-element function, and used by both the
dense (flat) and the row-subset ("lazy") kernels. Every constant and scalar is float32 and
the operations are in the order a plain NumPy float32 implementation would do them, e.g.
    v = 0.999 * v + 0.001 * g * g   # ((0.999*v) + ((0.001*g)*g))
so the result matches such a reference to float32 rounding.
"""
import numpy as np
from numba import prange

from . import _check
from ._jit import kernel, variants

_F0 = np.float32(0.0)
_B1 = np.float32(0.9)
_B1C = np.float32(0.1)
_B2 = np.float32(0.999)
_B2C = np.float32(0.001)
_ADAM_EPS = np.float32(1e-8)


@kernel
def _clip(g, clip):
    # clip > 0 clips to [-clip, clip]; clip <= 0 means no clipping.
    if clip > _F0:
        if g > clip:
            return clip
        if g < -clip:
            return -clip
    return g


@kernel
def _sgd_elem(w, g, lr_t, clip):
    # g = clip(g); w -= lr_t * g
    return w - lr_t * _clip(g, clip)


@kernel
def _adagrad_elem(w, g, h, lr, eps, l2, clip):
    # g += l2 * w; g = clip(g); h += g^2; w -= g * lr / sqrt(h + eps)
    g = _clip(g + l2 * w, clip)
    h = h + g * g
    return w - g * lr / np.sqrt(h + eps), h


@kernel
def _adam_elem(w, g, m, v, lr_t, l2, clip):
    # g += l2 * w; g = clip(g); v = 0.999 v + 0.001 g^2; m = 0.9 m + 0.1 g;
    # w -= lr_t * m / (sqrt(v) + 1e-8)      (lr_t carries the bias corrections)
    g = _clip(g + l2 * w, clip)
    v = _B2 * v + _B2C * g * g
    m = _B1 * m + _B1C * g
    return w - lr_t * m / (np.sqrt(v) + _ADAM_EPS), m, v


@variants
def _sgd(w, g, lr_t, clip):
    for i in prange(w.shape[0]):
        w[i] = _sgd_elem(w[i], g[i], lr_t, clip)
        g[i] = _F0


@variants
def _adagrad(w, g, h, lr, eps, l2, clip):
    for i in prange(w.shape[0]):
        w[i], h[i] = _adagrad_elem(w[i], g[i], h[i], lr, eps, l2, clip)
        g[i] = _F0


@variants
def _adam(w, g, m, v, lr_t, l2, clip):
    for i in prange(w.shape[0]):
        w[i], m[i], v[i] = _adam_elem(w[i], g[i], m[i], v[i], lr_t, l2, clip)
        g[i] = _F0


@variants
def _sgd_rows(W, G, rows, lr_t, clip):
    for p in prange(rows.shape[0]):
        w = W[rows[p]]
        g = G[rows[p]]
        for i in range(w.shape[0]):
            w[i] = _sgd_elem(w[i], g[i], lr_t, clip)
            g[i] = _F0


@variants
def _adagrad_rows(W, G, H, rows, lr, eps, l2, clip):
    for p in prange(rows.shape[0]):
        w = W[rows[p]]
        g = G[rows[p]]
        h = H[rows[p]]
        for i in range(w.shape[0]):
            w[i], h[i] = _adagrad_elem(w[i], g[i], h[i], lr, eps, l2, clip)
            g[i] = _F0


@variants
def _adam_rows(W, G, M, V, rows, lr_t, l2, clip):
    for p in prange(rows.shape[0]):
        w = W[rows[p]]
        g = G[rows[p]]
        m = M[rows[p]]
        v = V[rows[p]]
        for i in range(w.shape[0]):
            w[i], m[i], v[i] = _adam_elem(w[i], g[i], m[i], v[i], lr_t, l2, clip)
            g[i] = _F0


def _flat(**arrays):
    # Every array float32, C-contiguous, writeable, one shape; returned as 1-D views.
    first = None
    out = []
    for name, a in arrays.items():
        _check.array(name, a, np.float32, writable=True)
        if first is None:
            first = (name, a)
        else:
            _check.same_shape(first[0], first[1], **{name: a})
        out.append(a.reshape(-1))
    return out


def _rows_2d(rows, **arrays):
    # Every array float32 2-D C-contiguous writeable of one shape; rows valid for it.
    first = None
    for name, a in arrays.items():
        _check.array(name, a, np.float32, ndim=2, writable=True)
        if first is None:
            first = (name, a)
        else:
            _check.same_shape(first[0], first[1], **{name: a})
    return _check.sorted_rows("rows", rows, first[1].shape[0])


def sgd_update(w, g, lr_t, clip):
    """SGD in place: g clipped to [-clip, clip] if clip > 0; w -= lr_t * g; g = 0."""
    w, g = _flat(w=w, g=g)
    _sgd.pick(w.size)(w, g, _check.scalar("lr_t", lr_t), _check.scalar("clip", clip))


def adagrad_update(w, g, h, lr, eps, l2, clip):
    """AdaGrad in place: g += l2 w; clip; h += g^2; w -= g lr / sqrt(h + eps); g = 0."""
    w, g, h = _flat(w=w, g=g, h=h)
    _adagrad.pick(w.size)(w, g, h, _check.scalar("lr", lr), _check.scalar("eps", eps),
                          _check.scalar("l2", l2), _check.scalar("clip", clip))


def adam_update(w, g, m, v, lr_t, l2, clip):
    """Adam in place: g += l2 w; clip; v = .999 v + .001 g^2; m = .9 m + .1 g;
    w -= lr_t m / (sqrt(v) + 1e-8); g = 0. lr_t = lr sqrt(1 - .999^t) / (1 - .9^t)."""
    w, g, m, v = _flat(w=w, g=g, m=m, v=v)
    _adam.pick(w.size)(w, g, m, v, _check.scalar("lr_t", lr_t), _check.scalar("l2", l2),
                       _check.scalar("clip", clip))


def sgd_update_rows(W, G, rows, lr_t, clip):
    """`sgd_update` applied only to W[rows] (rows: sorted unique int32); zeroes only G[rows]."""
    rows = _rows_2d(rows, W=W, G=G)
    _sgd_rows.pick(rows.size * W.shape[1])(W, G, rows, _check.scalar("lr_t", lr_t),
                                            _check.scalar("clip", clip))


def adagrad_update_rows(W, G, H, rows, lr, eps, l2, clip):
    """`adagrad_update` applied only to rows `rows` of W and H; zeroes only G[rows]."""
    rows = _rows_2d(rows, W=W, G=G, H=H)
    _adagrad_rows.pick(rows.size * W.shape[1])(
        W, G, H, rows, _check.scalar("lr", lr), _check.scalar("eps", eps),
        _check.scalar("l2", l2), _check.scalar("clip", clip))


def adam_update_rows(W, G, M, V, rows, lr_t, l2, clip):
    """`adam_update` applied only to rows `rows` of W, M and V; zeroes only G[rows]."""
    rows = _rows_2d(rows, W=W, G=G, M=M, V=V)
    _adam_rows.pick(rows.size * W.shape[1])(
        W, G, M, V, rows, _check.scalar("lr_t", lr_t), _check.scalar("l2", l2),
        _check.scalar("clip", clip))
