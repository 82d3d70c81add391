"""Checked entry points to the optimizer rules' Numba loops, and what the rules share.

Each rule's loops live in its own module (`nnmnist.optim.adam`, ...), beside its NumPy and CUDA
bodies: one pass over w, g and the state, g zeroed after. Every constant and scalar is float32
and the operations are in the order of the rule's NumPy float32 body, e.g.
    v = 0.999 * v + 0.001 * g * g   # ((0.999*v) + ((0.001*g)*g))
so the result matches it to float32 rounding. The functions below check their arguments
first; `NumbaCompute` calls the loops directly.
"""
import numpy as np

from . import _check
from ._jit import kernel

F0 = np.float32(0.0)


@kernel
def clip_elem(g, clip):
    """g clipped to [-clip, clip] when clip > 0; clip <= 0 means no clipping."""
    if clip > F0:
        if g > clip:
            return clip
        if g < -clip:
            return -clip
    return g


def _rule(name):
    # The rules' modules import this one (for clip_elem), so they are imported when called.
    from ..optim import optimizer_class
    return optimizer_class(name).rule


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


def rule_update(name, w, g, state, scalars):
    """The rule `name` in place over flat arrays: w, g and its state arrays (float32, one shape,
    C-contiguous), with its scalars in the rule's order; g is zeroed."""
    rule = _rule(name)
    if len(state) != len(rule.state) or len(scalars) != len(rule.scalars):
        raise TypeError(f"{name} takes state {rule.state} and scalars {rule.scalars}")
    arrays = _flat(w=w, g=g, **dict(zip(rule.state, state)))
    values = [_check.scalar(n, v) for n, v in zip(rule.scalars, scalars)]
    rule.numba_dense.pick(arrays[0].size)(*arrays, *values)


def rule_update_rows(name, W, G, state, rows, scalars):
    """`rule_update` applied only to rows `rows` (sorted unique int32) of 2-D W and the state;
    zeroes only G[rows]."""
    rule = _rule(name)
    if len(state) != len(rule.state) or len(scalars) != len(rule.scalars):
        raise TypeError(f"{name} takes state {rule.state} and scalars {rule.scalars}")
    rows = _rows_2d(rows, W=W, G=G, **dict(zip(rule.state, state)))
    values = [_check.scalar(n, v) for n, v in zip(rule.scalars, scalars)]
    rule.numba_rows.pick(rows.size * W.shape[1])(W, G, *state, rows, *values)


def sgd_update(w, g, lr_t, clip):
    """SGD in place: g clipped to [-clip, clip] if clip > 0; w -= lr_t * g; g = 0."""
    rule_update("sgd", w, g, (), (lr_t, clip))


def adagrad_update(w, g, h, lr, eps, l2, clip):
    """AdaGrad in place: g += l2 w; clip; h += g^2; w -= g lr / sqrt(h + eps); g = 0."""
    rule_update("adagrad", w, g, (h,), (lr, eps, l2, clip))


def adam_update(w, g, m, v, lr_t, l2, clip):
    """Adam in place: g += l2 w; clip; v = .999 v + .001 g^2; m = .9 m + .1 g;
    w -= lr_t m / (sqrt(v) + 1e-8); g = 0. lr_t = lr sqrt(1 - .999^t) / (1 - .9^t)."""
    rule_update("adam", w, g, (m, v), (lr_t, l2, clip))


def sgd_update_rows(W, G, rows, lr_t, clip):
    """`sgd_update` applied only to W[rows] (rows: sorted unique int32); zeroes only G[rows]."""
    rule_update_rows("sgd", W, G, (), rows, (lr_t, clip))


def adagrad_update_rows(W, G, H, rows, lr, eps, l2, clip):
    """`adagrad_update` applied only to rows `rows` of W and H; zeroes only G[rows]."""
    rule_update_rows("adagrad", W, G, (H,), rows, (lr, eps, l2, clip))


def adam_update_rows(W, G, M, V, rows, lr_t, l2, clip):
    """`adam_update` applied only to rows `rows` of W, M and V; zeroes only G[rows]."""
    rule_update_rows("adam", W, G, (M, V), rows, (lr_t, l2, clip))
