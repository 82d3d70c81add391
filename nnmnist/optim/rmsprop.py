"""RMSProp: AdaGrad's step with a decaying average of g^2 in place of the running sum.

    g += l2 w;  g = clip(g)                       (clip > 0 only)
    r = rho r + (1 - rho) g^2
    w -= g lr / sqrt(r + eps)

rho is the `RmsDecay` field (default 0.9), eps the `Eps` field (inside the square root, as in
AdaGrad). "Prepare" zeroes r. Not in the original program: an extension of ours.

As Adam's moments, an r below 2^-100 is stored as 0: rows that meProp leaves without gradient
decay it by rho a step into float32's denormal range, where the CPU computes many times more
slowly. Next to the default Eps (1e-6), or any Eps above 2^-75, such an r is under half a
float32 step of Eps, so r + Eps is Eps either way.
"""
import numpy as np
from numba import prange

from ..kernels._jit import kernel, variants
from ..kernels.optim import F0, clip_elem
from .base import Optimizer, Rule, numpy_clip

_ONE = np.float32(1.0)
_TINY = np.float32(2.0 ** -100)  # smaller averages of g^2 are stored as 0 (see above)


def _numpy(w, g, r, lr, rho, eps, l2, clip):
    if l2:
        g += np.float32(l2) * w
    numpy_clip(g, clip)
    rho = np.float32(rho)
    r *= rho
    r += (_ONE - rho) * (g * g)
    r[r < _TINY] = 0
    w -= g * np.float32(lr) / np.sqrt(r + np.float32(eps))


@kernel
def _elem(w, g, r, lr, rho, eps, l2, clip):
    g = clip_elem(g + l2 * w, clip)
    r = r * rho + (_ONE - rho) * (g * g)
    r = r if r >= _TINY else F0
    return w - g * lr / np.sqrt(r + eps), r


@variants
def _dense(w, g, r, lr, rho, eps, l2, clip):
    for i in prange(w.shape[0]):
        w[i], r[i] = _elem(w[i], g[i], r[i], lr, rho, eps, l2, clip)
        g[i] = F0


@variants
def _rows(W, G, R, rows, lr, rho, eps, l2, clip):
    for p in prange(rows.shape[0]):
        w = W[rows[p]]
        g = G[rows[p]]
        r = R[rows[p]]
        for i in range(w.shape[0]):
            w[i], r[i] = _elem(w[i], g[i], r[i], lr, rho, eps, l2, clip)
            g[i] = F0


def _cuda(rn):
    """The CUDA body for arrays of type rn.T, every operation rounded as in the NumPy body."""
    add, sub, mul, div, sqrt, l2_clip = rn.add, rn.sub, rn.mul, rn.div, rn.sqrt, rn.l2_clip
    one, tiny, zero = rn.T(_ONE), rn.T(_TINY), rn.T(0)

    def elem(w, g, r, lr, rho, eps, l2, clip):
        g = l2_clip(w, g, l2, clip)
        r = add(mul(r, rho), mul(sub(one, rho), mul(g, g)))
        if r < tiny:
            r = zero
        return sub(w, div(mul(g, lr), sqrt(add(r, eps)))), r
    return elem

RULE = Rule("rmsprop", ("r",), ("lr", "rho", "eps", "l2", "clip"), _numpy, _dense, _rows, _cuda)


class RMSProp(Optimizer):
    """g += l2 w; clip; r = rho r + (1 - rho) g^2; w -= g lr / sqrt(r + eps)."""

    rule = RULE

    def __init__(self, params, compute, lr, rho=0.9, eps=1e-6, l2=0.0, clip=0.0, lazy=False):
        self.rho, self.eps, self.l2 = rho, eps, l2
        super().__init__(params, compute, lr, clip, lazy)

    @classmethod
    def from_config(cls, cfg, params, compute, n_train):
        return cls(params, compute, cfg.LearningRate, cfg.RmsDecay, cfg.Eps, cfg.L2RegFactor,
                   clip=cfg.ClipBound, lazy=cfg.LazyUpdate)

    def scalars(self):
        return self.lr, self.rho, self.eps, self.l2, self.clip
