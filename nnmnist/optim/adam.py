"""Adam, as the original applies it (fixed betas 0.9 and 0.999, epsilon 1e-8):

    g += l2 w;  g = clip(g)                       (clip > 0 only)
    v = 0.999 v + 0.001 g^2
    m = 0.9 m + 0.1 g
    w -= lr_t m / (sqrt(v) + 1e-8),   lr_t = lr sqrt(1 - 0.999^t) / (1 - 0.9^t)

The step counter t survives "Prepare" (which zeroes m and v), as in the original.

One addition: an m of magnitude below 2^-100 (about 7.9e-31) is stored as 0. Under meProp most
rows get no gradient in a step, so their m shrinks by 0.9 a step into float32's denormal range,
where the CPU computes 9-13x more slowly (`benchmarks/kernels.py denormal`). Such an m moves w
by under lr_t 1e-22, far below float32's resolution of any weight the network holds, so the
weights are the same (docs/ORIGINAL.md §11.7). v decays more slowly (by 0.999 a step) and gets
there after some 60,000 idle steps (about 11 epochs at minibatch 10), so a v below 2^-106 is
stored as 0 too: its root is then under half a float32 step of 1e-8, so sqrt(v) + 1e-8 is
1e-8 either way.
"""
import math

import numpy as np
from numba import prange

from ..kernels._jit import kernel, variants
from ..kernels.optim import F0, clip_elem
from .base import Optimizer, Rule, numpy_clip

_B1, _B1C = np.float32(0.9), np.float32(0.1)
_B2, _B2C = np.float32(0.999), np.float32(0.001)
_EPS = np.float32(1e-8)
_TINY = np.float32(2.0 ** -100)     # smaller first moments are stored as 0 (see above)
_TINY_V = np.float32(2.0 ** -106)   # smaller second moments too


def _numpy(w, g, m, v, lr_t, l2, clip):
    if l2:
        g += np.float32(l2) * w
    numpy_clip(g, clip)
    v *= _B2
    v += _B2C * (g * g)
    v[v < _TINY_V] = 0
    m *= _B1
    m += _B1C * g
    m[np.abs(m) < _TINY] = 0
    w -= np.float32(lr_t) * m / (np.sqrt(v) + _EPS)


@kernel
def _elem(w, g, m, v, lr_t, l2, clip):
    # float32 throughout, in the NumPy body's order: v = (0.999 v) + (0.001 (g g)), ...
    g = clip_elem(g + l2 * w, clip)
    v = _B2 * v + _B2C * (g * g)
    v = v if v >= _TINY_V else F0
    m = _B1 * m + _B1C * g
    m = m if abs(m) >= _TINY else F0
    return w - lr_t * m / (np.sqrt(v) + _EPS), m, v


@variants
def _dense(w, g, m, v, lr_t, l2, clip):
    for i in prange(w.shape[0]):
        w[i], m[i], v[i] = _elem(w[i], g[i], m[i], v[i], lr_t, l2, clip)
        g[i] = F0


@variants
def _rows(W, G, M, V, rows, lr_t, l2, clip):
    for p in prange(rows.shape[0]):
        w = W[rows[p]]
        g = G[rows[p]]
        m = M[rows[p]]
        v = V[rows[p]]
        for i in range(w.shape[0]):
            w[i], m[i], v[i] = _elem(w[i], g[i], m[i], v[i], lr_t, l2, clip)
            g[i] = F0


def _cuda(rn):
    """The CUDA body for arrays of type rn.T, every operation rounded as in the NumPy body."""
    add, sub, mul, div, sqrt, l2_clip = rn.add, rn.sub, rn.mul, rn.div, rn.sqrt, rn.l2_clip
    T = rn.T
    b1, b1c, b2, b2c, eps = T(_B1), T(_B1C), T(_B2), T(_B2C), T(_EPS)
    tiny, tiny_v, zero = T(_TINY), T(_TINY_V), T(0)

    def elem(w, g, m, v, lr_t, l2, clip):
        g = l2_clip(w, g, l2, clip)
        v = add(mul(v, b2), mul(b2c, mul(g, g)))
        if v < tiny_v:
            v = zero
        m = add(mul(m, b1), mul(b1c, g))
        if abs(m) < tiny:
            m = zero
        return sub(w, div(mul(lr_t, m), add(sqrt(v), eps))), m, v
    return elem

RULE = Rule("adam", ("m", "v"), ("lr_t", "l2", "clip"), _numpy, _dense, _rows, _cuda)


class Adam(Optimizer):
    """g += l2 w; clip; v = .999 v + .001 g^2; m = .9 m + .1 g; w -= lr_t m / (sqrt(v) + 1e-8),
    with lr_t = lr sqrt(1 - .999^t) / (1 - .9^t). t survives Prepare, as in the original."""

    rule = RULE

    def __init__(self, params, compute, lr, l2=0.0, clip=0.0, lazy=False):
        self.l2 = l2
        super().__init__(params, compute, lr, clip, lazy)

    @classmethod
    def from_config(cls, cfg, params, compute, n_train):
        return cls(params, compute, cfg.LearningRate, cfg.L2RegFactor,
                   clip=cfg.ClipBound, lazy=cfg.LazyUpdate)

    def _begin_step(self):
        self.lr_t = self.lr * math.sqrt(1 - 0.999 ** self.t) / (1 - 0.9 ** self.t)

    def scalars(self):
        return self.lr_t, self.l2, self.clip
