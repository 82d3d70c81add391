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


def keep_rows(a, keep):
    """The rows `keep` of `a` (a neuron's incoming weights, its bias, its state), as a copy."""
    return a[keep].copy()


def keep_cols(a, keep):
    """The columns `keep` of a 2-D `a` (the next layer's weights from the kept neurons)."""
    return a[:, keep].copy()


def compact_arrays(W, b, W_next, keep):
    """The arrays of a layer and its successor once only the neurons `keep` remain."""
    return keep_rows(W, keep), keep_rows(b, keep), keep_cols(W_next, keep)


def set_width(layer, keep):
    """A masked layer's bookkeeping for its neurons `keep` only, all active."""
    xp = layer.compute.xp
    n = int(keep.size)
    layer.active = xp.ones(n, dtype=bool)
    layer.mask = xp.ones(n, dtype=np.float32)
    layer.hits = keep_rows(layer.hits, keep)
    layer.rule.k = min(layer.rule.k, n)


def compact(model, opt=None):
    """Remove every masked layer's inactive neurons; returns True if anything was removed.

    One `take` on the model's parameter store cuts the values, the gradients and the
    optimizer's state (which is laid out with the store) together. A layer whose neurons are
    all inactive is left as it is (masked), so that no array is empty.
    """
    xp = model.compute.xp
    rows, cols = {}, {}  # layer index -> kept neurons of that layer / of the layer before
    for i, layer in enumerate(model.layers[:-1]):
        if not hasattr(layer, "active"):
            continue
        keep = xp.flatnonzero(layer.active)
        if int(keep.size) in (layer.n_out, 0):
            continue
        rows[i] = cols[i + 1] = keep
    if not rows:
        return False
    index = {}
    for i in sorted(set(rows) | set(cols)):
        r, c = rows.get(i), cols.get(i)
        if r is not None:
            index[f"{i}.b"] = r
        # a W may lose rows (its own pruning) and columns (the layer before's) at once
        index[f"{i}.W"] = (r if c is None else (slice(None), c) if r is None
                           else (r[:, None], c[None, :]))
    model.store.take(index)
    for i, keep in rows.items():
        set_width(model.layers[i], keep)
    if opt is not None:
        opt.state_views()  # each parameter's `state` views the new buffers
    return True


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
