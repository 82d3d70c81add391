"""SGD with the original's learning-rate decay; it ignores L2, as the original does.

    g = clip(g)                                   (clip > 0 only)
    w -= lr_t g,       lr_t = lr * decay^(t / N_train)
"""
import numpy as np
from numba import prange

from ..kernels._jit import kernel, variants
from ..kernels.optim import F0, clip_elem
from .base import Optimizer, Rule, numpy_clip


def _numpy(w, g, lr_t, clip):
    numpy_clip(g, clip)
    w -= np.float32(lr_t) * g


@kernel
def _elem(w, g, lr_t, clip):
    return w - lr_t * clip_elem(g, clip)


@variants
def _dense(w, g, lr_t, clip):
    for i in prange(w.shape[0]):
        w[i] = _elem(w[i], g[i], lr_t, clip)
        g[i] = F0


@variants
def _rows(W, G, rows, lr_t, clip):
    for p in prange(rows.shape[0]):
        w = W[rows[p]]
        g = G[rows[p]]
        for i in range(w.shape[0]):
            w[i] = _elem(w[i], g[i], lr_t, clip)
            g[i] = F0


def _cuda(rn):
    """The CUDA body for arrays of type rn.T, every operation rounded as in the NumPy body."""
    sub, mul, l2_clip, no_l2 = rn.sub, rn.mul, rn.l2_clip, rn.T(0)

    def elem(w, g, lr_t, clip):
        return sub(w, mul(lr_t, l2_clip(w, g, no_l2, clip)))
    return elem

RULE = Rule("sgd", (), ("lr_t", "clip"), _numpy, _dense, _rows, _cuda)


class SGD(Optimizer):
    """w -= lr_t g, lr_t = lr * decay^(t / N_train); SGD ignores L2, as the original does."""

    rule = RULE

    def __init__(self, params, compute, lr, decay, n_train, clip=0.0, lazy=False):
        self.decay, self.n_train = decay, n_train
        super().__init__(params, compute, lr, clip, lazy)

    @classmethod
    def from_config(cls, cfg, params, compute, n_train):
        return cls(params, compute, cfg.LearningRate, cfg.DecayRate, n_train,
                   clip=cfg.ClipBound, lazy=cfg.LazyUpdate)

    def _begin_step(self):
        self.lr_t = self.lr * self.decay ** (self.t / self.n_train)

    def scalars(self):
        return self.lr_t, self.clip
