"""AdaGrad, as the original applies it:

    g += l2 w;  g = clip(g)                       (clip > 0 only)
    h += g^2
    w -= g lr / sqrt(h + eps)
"""
import numpy as np
from numba import prange

from ..kernels._jit import kernel, variants
from ..kernels.optim import F0, clip_elem
from .base import Optimizer, Rule, numpy_clip


def _numpy(w, g, h, lr, eps, l2, clip):
    if l2:
        g += np.float32(l2) * w
    numpy_clip(g, clip)
    h += g * g
    w -= g * np.float32(lr) / np.sqrt(h + np.float32(eps))


@kernel
def _elem(w, g, h, lr, eps, l2, clip):
    g = clip_elem(g + l2 * w, clip)
    h = h + g * g
    return w - g * lr / np.sqrt(h + eps), h


@variants
def _dense(w, g, h, lr, eps, l2, clip):
    for i in prange(w.shape[0]):
        w[i], h[i] = _elem(w[i], g[i], h[i], lr, eps, l2, clip)
        g[i] = F0


@variants
def _rows(W, G, H, rows, lr, eps, l2, clip):
    for p in prange(rows.shape[0]):
        w = W[rows[p]]
        g = G[rows[p]]
        h = H[rows[p]]
        for i in range(w.shape[0]):
            w[i], h[i] = _elem(w[i], g[i], h[i], lr, eps, l2, clip)
            g[i] = F0


def _cuda(rn):
    """The CUDA body for arrays of type rn.T, every operation rounded as in the NumPy body."""
    add, sub, mul, div, sqrt, l2_clip = rn.add, rn.sub, rn.mul, rn.div, rn.sqrt, rn.l2_clip

    def elem(w, g, h, lr, eps, l2, clip):
        g = l2_clip(w, g, l2, clip)
        h = add(h, mul(g, g))
        return sub(w, div(mul(g, lr), sqrt(add(h, eps)))), h
    return elem

RULE = Rule("adagrad", ("h",), ("lr", "eps", "l2", "clip"), _numpy, _dense, _rows, _cuda)


class AdaGrad(Optimizer):
    """g += l2 w; clip; h += g^2; w -= g lr / sqrt(h + eps)."""

    rule = RULE

    def __init__(self, params, compute, lr, eps, l2=0.0, clip=0.0, lazy=False):
        self.eps, self.l2 = eps, l2
        super().__init__(params, compute, lr, clip, lazy)

    @classmethod
    def from_config(cls, cfg, params, compute, n_train):
        return cls(params, compute, cfg.LearningRate, cfg.Eps, cfg.L2RegFactor,
                   clip=cfg.ClipBound, lazy=cfg.LazyUpdate)

    def scalars(self):
        return self.lr, self.eps, self.l2, self.clip
