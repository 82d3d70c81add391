"""meSimp compaction: remove pruned neurons for real, so the smaller network costs less.

Pruning (`MaskedDense.prune`) only switches neurons off. Compaction then deletes them: a
removed neuron's row of W and entry of b (with their gradients and optimizer state) in its own
layer, and its column of the next layer's W (with that column's gradient and optimizer state),
and its hit counter. Forward, backward and update then run on the smaller arrays.

What changes and what does not. An inactive neuron outputs 0 and gets gradient 0, so it adds
nothing to the next layer's input, to any weight's gradient or to dx: removing it leaves the
maths of training unchanged. The one difference is in meProp's selection. The original (and
`Compact false`) runs top-k over all of a layer's columns, inactive ones included; when a row
of the output gradient has fewer than k non-zero entries, top-k fills the rest with
zero-gradient neurons, lowest column first, and some of those are inactive. The compacted
layer has only active neurons to fill with (and with k or fewer left, chooses them all). A
zero-gradient choice moves no weight through its gradient; it adds a hit, and under
`LazyUpdate` it makes the optimizer touch that neuron's row, which moves the row all the same
where the rule has state (Adam's m, RMSProp's decaying r) or L2. So compaction can only change
which zero-gradient neurons fill such a row. Left alone, those extra hits keep
neurons above the pruning threshold (a default mlpvar run then ended with about 180 hidden
neurons a layer instead of about 145), so a compacted layer takes them back after each
backward (`fill_excess`): its hit counts are exactly those of the full-width top-k, and
pruning follows the original. For the same reason the rows a lazy update touches are those of
the full-width selection: the extra fills are left out (`full_width_rows`), and the dense
path records them too (every row its full-width top-k chooses, not all). What remains is
rounding: BLAS sums a shorter inner dimension in
another order, so weights can differ in the last bits, and over many steps that can tip a
ReLU or a near-tie in top-k one way or the other.
With Dropout (an extension), the compacted network draws masks for its remaining neurons
only, so its random stream differs from the masked network's after the first compaction.
"""
import copy
from dataclasses import dataclass

import numpy as np

from . import ops
from .layers import MaskedDense
from .tensor import Tensor


def keep_rows(a, keep):
    """The entries `keep` of a per-neuron array (hit counts, original places), as a copy."""
    return a[keep].copy()


def fill_excess(nonzero, origin, k, k_compact, xp=np):
    """Per column of a compacted layer: how many rows' top-k fill it as a zero-gradient neuron
    where the full-width top-k (k over the original columns, inactive ones zero) would not."""
    return excess_fills(nonzero, origin, k, k_compact, xp).sum(axis=0)


def excess_fills(nonzero, origin, k, k_compact, xp=np):
    """(rows, n) bool: where a row's compacted top-k fills a column as a zero-gradient neuron
    and the full-width top-k (k over the original columns, inactive ones zero) does not.

    nonzero: (rows, n) bool, the output gradient's non-zero pattern; origin: each column's
    index in the full-width layer (increasing). The full-width top-k of a row with z < k
    non-zero entries takes every non-zero entry, then the k - z zero columns of lowest index;
    a zero column's rank among the zero columns is its index minus the non-zero columns before
    it. The compacted top-k (k_compact = min(k, n)) does the same over the compacted columns.
    `xp` is the arrays' module (NumPy or CuPy).
    """
    nnz = nonzero.sum(axis=1, keepdims=True)
    before = xp.cumsum(nonzero, axis=1) - nonzero  # non-zero columns to the left
    zero = ~nonzero
    col = xp.arange(nonzero.shape[1])
    compact_fill = zero & (col - before < k_compact - nnz)
    full_fill = zero & (origin - before < k - nnz)
    return compact_fill & ~full_fill


def nonzero_pattern(value, grad, unified):
    """Where a unit's output gradient is non-zero (`value` its output, `grad` the gradient
    arriving at it); for a unified selection, one row: the columns non-zero anywhere."""
    nonzero = (value > 0) & (grad != 0)
    return nonzero.any(axis=0, keepdims=True) if unified else nonzero


def full_width_rows(nonzero, chosen, origin, k, k_compact, xp=np):
    """The columns (as a 1-D int32 list, repeats allowed) that a compacted layer's top-k
    `chosen` shares with the full-width top-k: its choices less the extra fills.

    A lazy update touches the rows chosen; the full-width selection touches no row that the
    compacted one does not (both fill lowest column first, and a column's place in the
    compacted layer is at most its place in the layer as built), so leaving out the extra fills
    gives exactly its rows. `chosen` is (batch, k_compact), or (k_compact,) for a unified
    selection, or None where the compacted layer chose every column (its dense path).
    """
    drop = excess_fills(nonzero, origin, k, k_compact, xp)
    if chosen is None:
        kept = xp.nonzero(~drop)[1]
    elif chosen.ndim == 1:
        kept = chosen[~drop[0, chosen]]
    else:
        kept = chosen[~xp.take_along_axis(drop, chosen.astype(np.int64), axis=1)]
    return xp.ascontiguousarray(kept, dtype=np.int32)


@dataclass(eq=False)
class Touched:
    """The rows a lazy optimizer update takes for a weight, in the backend's form (what
    `Selection.rows` returns): stands in `Flow.selections` for a compacted layer's selection."""
    touched: object

    def rows(self, compute, n_rows):
        return self.touched


def take_back_fills(value, grad, origin, k, k_compact, unified, hits, xp=np):
    """Remove from `hits` what the compacted top-k's zero-gradient fills added beyond the
    full-width top-k's, for one minibatch: `value` and `grad` are the unit's output and its
    gradient (the output gradient is non-zero where both are), `unified` the config's choice
    of one column set per minibatch (each chosen neuron then gets one hit per example)."""
    nonzero = (value > 0) & (grad != 0)
    weight = 1
    if unified:
        nonzero, weight = nonzero.any(axis=0, keepdims=True), value.shape[0]
    hits -= weight * fill_excess(nonzero, origin, k, k_compact, xp)


def _take_back_fills_kernel():
    """The same as `take_back_fills` in one pass per row, compiled (for the Numba path). The
    loops are branch-free (the tests are added as 0/1): which entries of a ReLU layer's
    gradient are non-zero is close to a coin toss, and a branch on it mispredicts about every
    other time.

    With `mark` (n,) and `short` (rows,) not empty it also notes what `full_width_rows` needs,
    in the same pass: short[b] whether row b had fewer than k_compact non-zero entries (its
    compacted top-k filled), and in mark every column such a row's full-width top-k takes (its
    non-zero entries and its full-width fills). A row that is not short takes only non-zero
    entries, the same ones either way: its own choices are added after the backward."""
    from ..kernels._jit import kernel

    @kernel
    def row(nz, nnz, origin, k, k_compact, weight, hits, mark):
        if nnz >= k_compact:  # the compacted top-k took no zero-gradient neuron
            return False
        before = 0
        marking = mark.shape[0] > 0
        for j in range(nz.shape[0]):
            z = nz[j]
            full_fill = (1 - z) * (origin[j] - before < k - nnz)
            # a zero column the compacted top-k fills and the full-width one does not
            hits[j] -= weight * ((1 - z) * (j - before < k_compact - nnz) * (1 - full_fill))
            if marking:
                mark[j] |= z | full_fill
            before += z
        return True

    @kernel
    def take_back(value, grad, origin, k, k_compact, unified, hits, mark, short):
        batch, n = value.shape
        nz = np.zeros(n, np.int64)
        nnz = 0
        for b in range(batch):
            nnz = 0
            for j in range(n):
                here = np.int64((value[b, j] > 0) & (grad[b, j] != 0))
                nz[j] = (nz[j] | here) if unified else here
                nnz += nz[j]
            if not unified:
                filled = row(nz, nnz, origin, k, k_compact, 1, hits, mark)
                if short.shape[0]:
                    short[b] = filled
        if unified:
            filled = row(nz, nnz, origin, k, k_compact, batch, hits, mark)
            if short.shape[0]:
                short[0] = filled

    @kernel
    def rows_of(chosen, short, mark):
        # chosen (rows, k): each row that was not short adds its own choices
        for b in range(chosen.shape[0]):
            if not short[b]:
                for c in chosen[b]:
                    mark[c] = 1
        return np.flatnonzero(mark).astype(np.int32)
    return take_back, rows_of


_compiled = []
_NONE_MARKED = np.zeros(0, np.int64)


def _kernels():
    if not _compiled:
        _compiled.extend(_take_back_fills_kernel())
    return _compiled


def take_back_fills_numba(value, grad, origin, k, k_compact, unified, hits, mark=None,
                          short=None):
    """`take_back_fills` compiled; given `mark` and `short` (int64, zeroed, of (n,) and (rows,)
    where rows is 1 when `unified`), it also notes what `full_width_rows_numba` needs."""
    mark = _NONE_MARKED if mark is None else mark
    short = _NONE_MARKED if short is None else short
    _kernels()[0](value, grad, origin, k, k_compact, unified, hits, mark, short)


def full_width_rows_numba(chosen, short, mark):
    """The sorted rows (int32) `full_width_rows` gives, from what `take_back_fills_numba` noted
    and the compacted selection `chosen` ((rows, k), (k,) when unified, None: every column)."""
    if chosen is None:
        if not short.all():  # a full row chose every column, all of them non-zero
            mark[:] = 1
        return np.flatnonzero(mark).astype(np.int32)
    return _kernels()[1](np.ascontiguousarray(chosen.reshape(short.shape[0], -1)), short, mark)


class CompactedDense(MaskedDense):
    """A meSimp unit whose pruned neurons were removed; `origin` holds each remaining neuron's
    index in the layer as built. Its hits are corrected to the full-width top-k's (see the
    module's doc), so that pruning decides as it would on the masked layer."""

    lazy_rows = False  # whether a lazy optimizer reads the rows this layer touches

    def activate(self, flow, x):
        if self.rule.k >= self.n_out:
            return self._dense_activate(flow, x)
        if self.lazy_rows:
            def touch():  # runs after the unit's own backward, which noted its selection
                chosen = flow.selections[self.W].chosen
                self._touch(flow, chosen)
            flow.record(touch)
        y = super().activate(flow, x)

        def correct_hits():  # runs before the unit's own backward, once y's gradient is whole
            self._correct_hits(y)
        flow.record(correct_hits)
        return y

    def _correct_hits(self, y):
        """Take back the extra fills' hits; for a lazy update, also keep what `_touch` needs
        (the backward may overwrite y's gradient)."""
        args = (y.value, y.grad, self.origin, self.k_full, self.rule.k,
                self.unified_full, self.hits)
        self._nonzero = self._marks = None
        if self.compute.name == "numba" and y.value.dtype == y.grad.dtype == np.float32:
            if self.lazy_rows:
                rows = 1 if self.unified_full else y.value.shape[0]
                self._marks = np.zeros(rows, np.int64), np.zeros(self.n_out, np.int64)
                take_back_fills_numba(*args, mark=self._marks[1], short=self._marks[0])
            else:
                take_back_fills_numba(*args)
        else:
            if self.lazy_rows:
                self._nonzero = nonzero_pattern(y.value, y.grad, self.unified_full)
            take_back_fills(*args, xp=self.compute.xp)

    def _touch(self, flow, chosen):
        """Note for a lazy update the rows that the full-width selection touches (see the
        module's doc); `chosen` is this step's compacted selection (None: every column)."""
        if self._marks is not None:
            rows = full_width_rows_numba(chosen, *self._marks)
        else:
            kept = full_width_rows(self._nonzero, chosen, self.origin, self.k_full,
                                   self.rule.k, self.compute.xp)
            rows = self.compute.rows_touched(kept, self.n_out)
        self._nonzero = self._marks = None
        flow.selected(self.W, Touched(rows))

    def _dense_activate(self, flow, x):
        """relu(x W + b) with the ordinary dense backward, for a layer whose top-k takes every
        neuron: every non-zero gradient entry flows back, as the full-width top-k also lets
        through every non-zero entry when a row has fewer than k; each example hits each neuron.

        One op instead of matmul, bias and ReLU ops: the same float operations in the same
        order (so the same results as `ops.relu(ops.add_bias(ops.matmul(...)))`), done in
        place where the op-by-op form allocates, with one recorded backward that also counts
        the hits and takes back the fills. Like `ops.meprop_relu_unit`'s, the backward
        overwrites y's gradient buffer in place; nothing reads it afterwards."""
        W, b = self.W, self.b
        z = self.compute.matmul_xwt(x.value, W.value)  # a fresh C-contiguous array
        z += b.value
        positive = z > 0
        z *= positive  # as relu's x * (x > 0): a negative value becomes -0.0 there too
        y = Tensor(z, requires_grad=True)
        batch = x.shape[0]

        def backward():
            self._correct_hits(y)
            if self.lazy_rows:
                self._touch(flow, None)
            self.examples += batch
            self.hits += batch
            dy = y.grad
            dy *= positive  # y's own gradient, not needed after this
            b.grad += dy.sum(axis=0)
            if x.requires_grad:
                ops.accumulate(x, dy @ W.value)
            W.grad += dy.T @ x.value
        flow.record(backward)
        return y


def set_width(layer, n, k, unified, lazy=False):
    """A masked layer's bookkeeping for `n` physical neurons, all active, selecting min(k, n).
    (With k >= n every row's top-k takes every neuron: `CompactedDense` then back-propagates
    densely, with BLAS products, instead of through a per-example selection.) `lazy`: the
    optimizer updates only the rows a step touches (`LazyUpdate`), so the layer notes them."""
    xp = layer.compute.xp
    layer.active = xp.ones(n, dtype=bool)
    layer.mask = xp.ones(n, dtype=np.float32)
    layer.rule = copy.copy(layer.rule)  # its own: a rule shared with another layer keeps its k
    layer.rule.k = min(k, n)
    layer.k_full, layer.unified_full = k, unified  # what the full-width layer would select
    layer.lazy_rows = lazy


def compact(model, opt=None):
    """Remove every masked layer's inactive neurons; returns True if anything was removed.

    The model's parameter store is laid out again smaller (`ParamStore.take`), and the
    optimizer's state buffers, aligned with it, are cut the same way (`opt` is not needed).
    A layer whose neurons are all inactive is left as it is (masked), so no array is empty.
    """
    xp = model.compute.xp
    rows, cols = {}, {}  # parameter name -> kept rows / kept columns
    for i, layer in enumerate(model.layers[:-1]):
        if not hasattr(layer, "active"):
            continue
        keep = xp.flatnonzero(layer.active)
        n = int(keep.size)
        if n == layer.n_out or n == 0:
            continue
        rows[f"{i}.W"] = rows[f"{i}.b"] = keep
        cols[f"{i + 1}.W"] = keep
        hits = keep_rows(layer.hits, keep)
        origin = getattr(layer, "origin", None)
        layer.origin = keep_rows(origin if origin is not None else xp.arange(layer.n_out), keep)
        set_width(layer, n, model.cfg.TrainTop, model.cfg.Unified, model.cfg.LazyUpdate)
        layer.hits = hits
        layer.__class__ = CompactedDense
    if not rows:
        return False
    index = {}
    for name in set(rows) | set(cols):
        if name in rows and name in cols:  # a W between two compacted layers
            index[name] = xp.ix_(rows[name], cols[name])
        elif name in rows:
            index[name] = rows[name]
        else:
            index[name] = (slice(None), cols[name])
    model.store.take(index)
    return True


def resize(model, widths):
    """Shrink a freshly built model to stored physical widths (one per masked layer, in order)
    so a compacted checkpoint's arrays fit; the values are loaded afterwards."""
    xp = model.compute.xp
    masked = [i for i, layer in enumerate(model.layers[:-1]) if hasattr(layer, "active")]
    for i, n in zip(masked, widths):
        layer = model.layers[i]
        if n != layer.n_out:
            layer.active[...] = False
            layer.active[:n] = True
    if compact(model):
        for i, n in zip(masked, widths):
            model.layers[i].hits = xp.zeros(n, dtype=np.int64)
