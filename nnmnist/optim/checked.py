"""The optimizer rules' Numba loops behind checked, named functions: `rule_update(name, ...)`
over flat arrays and `rule_update_rows(name, ...)` over chosen rows, plus one function per
built-in rule (`adam_update`, ...). They check every argument (dtype, shape, contiguity, rows)
before the loop runs, as the kernels of `nnmnist.kernels` do; the optimizers call the loops
directly through their backend.
"""
import numpy as np

from ..kernels import _check
from ..kernels._jit import forced_mode
from . import RULES, optimizer_class


def _rule(name):
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


def warmup():
    """Compile (or load from cache) every registered rule's dense and row loops, serial and
    parallel, on tiny inputs."""
    W = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    rows = np.array([0, 2], np.int32)
    for mode in ("serial", "parallel"):
        with forced_mode(mode):
            for name in RULES:
                rule = optimizer_class(name).rule
                scalars = [0.1] * (len(rule.scalars) - 1) + [1.0]
                state = [np.zeros_like(W) for _ in rule.state]
                rule_update(name, W.copy(), np.zeros_like(W), state, scalars)
                rule_update_rows(name, W.copy(), np.zeros_like(W), state, rows, scalars)
