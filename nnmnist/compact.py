"""meSimp compaction: remove pruned neurons for real, so the smaller network costs less.

Pruning (`MaskedDense.prune`) only switches neurons off. Compaction then deletes them: a
removed neuron's row of W and entry of b (with their gradients and optimizer state) in its own
layer, and its column of the next layer's W (with that column's gradient and optimizer state),
and its hit counter. Forward, backward and update then run on the smaller arrays.

What changes and what does not. An inactive neuron outputs 0, so it adds nothing to the next
layer's input, and its gradient is 0, so it adds nothing to any weight's gradient or to dx:
removing it leaves the maths of training unchanged. The one difference is in meProp's
selection: the masked network runs top-k over all of a layer's columns, inactive ones
included. When a row of the output gradient has fewer than k non-zero entries, top-k fills the
rest with zero-gradient neurons (lowest column first); in the masked network some of those are
inactive neurons, in the compacted one they are all active neurons (and with fewer than k
neurons left every neuron is chosen). A zero-gradient choice changes no weight, only which
neurons get a hit, and so, at the next pruning, which neurons survive. Rounding can also
differ in the last bits where BLAS sums a shorter inner dimension in another order.
"""
import numpy as np

from .optim import pack


def keep_rows(a, keep):
    """The rows `keep` of `a` (a neuron's incoming weights, its bias, its state), as a copy."""
    return a[keep].copy()


def keep_cols(a, keep):
    """The columns `keep` of a 2-D `a` (the next layer's weights from the kept neurons)."""
    return a[:, keep].copy()


def compact_arrays(W, b, W_next, keep):
    """The arrays of a layer and its successor once only the neurons `keep` remain."""
    return keep_rows(W, keep), keep_rows(b, keep), keep_cols(W_next, keep)


def _param_arrays(p, cut):
    """(value, grad, state) of a parameter after applying `cut` to each of its arrays."""
    grad = p._grad if p._grad is not None else p.value * 0
    return cut(p.value), cut(grad), {name: cut(s) for name, s in p.state.items()}


def replace_params(params, opt, new):
    """Give some parameters new arrays (value, grad, state) and rebuild the optimizer's flat
    store (if there is an optimizer) around every parameter; the other parameters keep their
    values, gradients and state."""
    saved = {}
    for p in params:
        if id(p) in new:
            value, grad, state = new[id(p)]
            p.value, p._grad = value, grad
            saved[id(p)] = state
        else:
            saved[id(p)] = dict(p.state)  # the old buffers stay alive while referenced
        p.touched = None
    if opt is not None and opt.flat is not None:
        opt.flat = pack(opt.params, opt.compute.xp, opt.state_names)
        for p in opt.params:
            for name, view in p.state.items():
                if name in saved[id(p)]:
                    view[...] = saved[id(p)][name]
    else:
        for p in params:
            p.state = saved[id(p)]


def set_width(layer, n, k):
    """A masked layer's bookkeeping for `n` physical neurons, all active."""
    xp = layer.compute.xp
    layer.active = xp.ones(n, dtype=bool)
    layer.mask = xp.ones(n, dtype=np.float32)
    layer.selector.k = min(k, n)


def compact(model, opt=None):
    """Remove every masked layer's inactive neurons; returns True if anything was removed.

    A layer whose neurons are all inactive is left as it is (masked), so that no array is empty.
    """
    xp = model.compute.xp
    new = {}
    for i, layer in enumerate(model.layers[:-1]):
        if not hasattr(layer, "active"):
            continue
        keep = xp.flatnonzero(layer.active)
        n = int(keep.size)
        if n == layer.n_out or n == 0:
            continue
        rows = lambda a, keep=keep: keep_rows(a, keep)  # noqa: E731
        cols = lambda a, keep=keep: keep_cols(a, keep)  # noqa: E731
        nxt = model.layers[i + 1]
        new[id(layer.W)] = _param_arrays_pending(new.get(id(layer.W)), layer.W, rows)
        new[id(layer.b)] = _param_arrays(layer.b, rows)
        new[id(nxt.W)] = _param_arrays_pending(new.get(id(nxt.W)), nxt.W, cols)
        hits = keep_rows(layer.hits, keep)
        set_width(layer, n, model.cfg.TrainTop)
        layer.hits = hits
    if not new:
        return False
    # A layer's W may have had rows cut (its own pruning) and columns cut (the layer before):
    # `_param_arrays_pending` composes them, so every parameter is rebuilt once.
    replace_params(model.params, opt, new)
    return True


def _param_arrays_pending(pending, p, cut):
    if pending is None:
        return _param_arrays(p, cut)
    value, grad, state = pending
    return cut(value), cut(grad), {name: cut(s) for name, s in state.items()}


def resize(model, opt, widths):  # opt may be None (a model without training state)
    """Shrink a freshly built model to stored physical widths (one per masked layer, in order)
    so a compacted checkpoint's arrays fit; the values are loaded afterwards."""
    xp = model.compute.xp
    masked = [i for i, layer in enumerate(model.layers[:-1]) if hasattr(layer, "active")]
    for i, n in zip(masked, widths):
        layer = model.layers[i]
        if n != layer.n_out:
            layer.active[...] = False
            layer.active[:n] = True
    if compact(model, opt):
        for i, n in zip(masked, widths):
            model.layers[i].hits = xp.zeros(n, dtype=np.int64)
