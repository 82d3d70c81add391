"""The hot operations, each with one signature, and the one place that picks an implementation.

`NumpyCompute` is the plain reference: readable NumPy that any faster path must agree with.
`NumbaCompute` replaces its hot loops with the kernels of `nnmnist.kernels`; the GPU backend
(`nnmnist.backends.cuda`) replaces them with CuPy code. Layers and optimizers only ever call these methods;
`nnmnist.backends.get_compute` picks one.
"""
import numpy as np

from ..optim.base import numpy_rows
from ..nn.lstm import cell_backward, cell_forward, select_gates
from ..nn.select import RandomK, Selection, TopK, UnifiedRandomK, UnifiedTopK

# The rules the fused Numba kernels implement (exactly these classes, not subclasses).
FUSED_RULES = (TopK, RandomK, UnifiedTopK, UnifiedRandomK)


class NumpyCompute:
    """Plain NumPy: top-k by a stable sort, sparse backward as dense matmuls on a zeroed dy."""

    xp = np
    name = "numpy"

    # -- forward -------------------------------------------------------------------------------
    def matmul_xwt(self, x, W):
        """x @ W.T for W stored (out, in), as a C-contiguous (B, out) array.

        BLAS runs W @ x.T faster than x @ W.T here (measured 1.6x at B=10, 1.1x at B=100 on
        OpenBLAS), and the transposed copy back to C order costs less than it saves.
        """
        return np.ascontiguousarray((W @ x.T).T)

    # -- randomness --------------------------------------------------------------------------
    def uniform(self, rng, shape, dtype=np.float32):
        """Uniform [0, 1) draws from the network's generator, as an array of this backend."""
        return rng.random(shape, dtype=dtype)

    # -- meProp selection -------------------------------------------------------------------
    def select_topk_rows(self, dy, k):
        """Per row, the k columns of largest |dy| (ties: lower column first), sorted ascending."""
        order = np.argsort(-np.abs(dy), axis=1, kind="stable")[:, :k]
        return np.sort(order, axis=1).astype(np.int32)

    def select_topk_unified(self, dy, k):
        """One column set for the minibatch: the k columns of largest sum over rows of |dy|."""
        score = np.abs(dy).sum(axis=0)
        return np.sort(np.argsort(-score, kind="stable")[:k]).astype(np.int32)

    def select_random_rows(self, rng, batch, n, k):
        """k distinct columns per row, uniformly at random (the k largest of uniform keys)."""
        return self.select_topk_rows(self.uniform(rng, (batch, n)), k)

    def select_random_unified(self, rng, n, k):
        """k distinct columns for the whole minibatch, uniformly at random."""
        return self.select_topk_rows(self.uniform(rng, (1, n)), k)[0]

    # -- meProp backward --------------------------------------------------------------------
    def meprop_backward_rows(self, x, W, dy, idx, dW, need_dx):
        """dW += (sparse dy).T @ x; return (sparse dy) @ W, keeping idx's entries of each row."""
        dys = np.zeros_like(dy)
        np.put_along_axis(dys, idx, np.take_along_axis(dy, idx, axis=1), axis=1)
        dW += dys.T @ x
        return dys @ W if need_dx else None

    def meprop_backward_cols(self, x, W, dy, cols, dW, need_dx):
        """Unified top-k: gather the chosen columns and use dense matmuls on the compact blocks."""
        dyc = dy[:, cols]
        dW[cols] += dyc.T @ x
        return dyc @ W[cols] if need_dx else None

    def meprop_backward(self, x, W, dy, selection, dW, need_dx):
        """dW += (kept dy).T @ x; return (kept dy) @ W, keeping the entries `selection` chose."""
        if selection.unified:
            return self.meprop_backward_cols(x, W, dy, selection.chosen, dW, need_dx)
        return self.meprop_backward_rows(x, W, dy, selection.chosen, dW, need_dx)

    def _kept(self, dy, selection):
        """dy with every entry the selection did not keep set to zero."""
        xp = self.xp
        kept = xp.zeros_like(dy)
        if selection.unified:
            kept[:, selection.chosen] = dy[:, selection.chosen]
        else:
            rows = xp.arange(dy.shape[0])[:, None]
            kept[rows, selection.chosen] = dy[rows, selection.chosen]
        return kept

    def meprop_input_grad(self, W, dy, selection):
        """(kept dy) @ W alone: the gradient that reaches the input (the LSTM's previous hidden
        state, whose weight gradient is summed over all steps afterwards)."""
        return self._kept(dy, selection) @ W

    def kept_values(self, dy, selection):
        """The values of the entries a selection kept, (rows, k): what the weight gradients
        need of dy once the selection is made."""
        if selection.unified:
            return dy[:, selection.chosen]
        return self.xp.take_along_axis(dy, selection.chosen, axis=1)

    def _from_pairs(self, selection, vals, width):
        """The (rows, width) dy that holds `vals` at the selection's entries, zeros elsewhere."""
        xp = self.xp
        kept = xp.zeros((vals.shape[0], width), vals.dtype)
        if selection.unified:
            kept[:, selection.chosen] = vals
        else:
            kept[xp.arange(vals.shape[0])[:, None], selection.chosen] = vals
        return kept

    def meprop_pairs_weight_grad(self, x, selection, vals, dW):
        """dW += (kept dy).T @ x, given the kept entries as (selection, values)."""
        dW += self._from_pairs(selection, vals, dW.shape[0]).T @ x

    def meprop_pairs_input_grad(self, W, selection, vals):
        """(kept dy) @ W, given the kept entries as (selection, values)."""
        return self._from_pairs(selection, vals, W.shape[0]) @ W

    def meprop_relu_backward(self, x, W, out, g, db, dW, rule, rng, hits, need_dx):
        """Backward of out = relu(mask * (x @ W.T + b)) through meProp, given g = d out.

        `rule` (a SelectionRule, drawing from `rng` if it is random) picks the entries of dy
        that flow back. db and dW are added into; `hits` (meSimp's hit counts, or None) counts
        the choices. Returns (dx or None, the Selection).
        """
        dy = g * (out > 0)  # masked neurons output 0, so this also applies the mask
        db += dy.sum(axis=0)
        selection = rule(dy, self, rng)
        if hits is not None:
            selection.count_hits(self, hits)
        return self.meprop_backward(x, W, dy, selection, dW, need_dx), selection

    def rows_touched(self, idx, n_out):
        """Weight rows that received gradient from per-example choices: their union, sorted."""
        return np.unique(idx).astype(np.int32)

    def record_hits(self, idx, hits):
        """meSimp's hit count: every chosen (example, neuron) adds one hit to that neuron."""
        hits += np.bincount(idx.ravel(), minlength=hits.shape[0])

    # -- the LSTM tagger ------------------------------------------------------------------------
    def lstm_cell_forward(self, z, c_prev, c_out, tc_out, h_out):
        """One LSTM step after its products (`nnmnist.nn.lstm.cell_forward`): z's gate
        pre-activations become activations; c, tanh(c) and h are written out."""
        cell_forward(self.xp, z, c_prev, c_out, tc_out, h_out)

    def lstm_cell_backward(self, dh, dc, acts, c_prev, tc, dz_out):
        """The step's backward (`nnmnist.nn.lstm.cell_backward`): dz into dz_out; returns the
        gradient reaching c_prev."""
        return cell_backward(self.xp, dh, dc, acts, c_prev, tc, dz_out)

    def lstm_meprop_step(self, dH_t, dh_next, dc, acts, c_prev, tc, rule, rng, per_gate, Wh,
                         need_dh, db):
        """One step of meProp's backward through time: the cell's backward with
        dh = dH_t + dh_next (dh_next None at the last step), its dz summed into db, the
        Selection of dz (`nnmnist.nn.lstm.select_gates`) and the kept values, and, with
        `need_dh`, the gradient reaching the previous hidden state, (kept dz) @ Wh.
        Returns (dc_prev, selection, kept values, dh_prev or None)."""
        dz = self.xp.empty(acts.shape, acts.dtype)
        dh = dH_t if dh_next is None else dH_t + dh_next
        dc_prev = self.lstm_cell_backward(dh, dc, acts, c_prev, tc, dz)
        db += dz.sum(axis=0)
        selection = select_gates(rule, dz, self, rng, per_gate)
        dh_prev = self.meprop_input_grad(Wh, dz, selection) if need_dh else None
        return dc_prev, selection, self.kept_values(dz, selection), dh_prev

    def reverse_steps(self, x, src):
        """out[t, b] = x[src[t, b], b] for time-major x (L, B, ...): each sentence reversed
        (`nnmnist.nn.lstm.reversal`)."""
        return x[src, self.xp.arange(x.shape[1])]

    def add_rows(self, G, ids, d):
        """G[ids[i]] += d[i] for every i (ids may repeat): an embedding table's gradient."""
        self.xp.add.at(G, ids, d)

    # -- optimizer updates (in place; each zeroes g afterwards) -------------------------------
    def update(self, rule, w, g, states, scalars):
        """One step of an optimizer `Rule` over w (any shape) and its state; g is zeroed."""
        rule.numpy(w, g, *states, *scalars)
        g.fill(0)

    def update_rows(self, rule, W, G, states, rows, scalars):
        """The rule on the listed rows of 2-D W and its state only; only G[rows] is zeroed."""
        numpy_rows(rule, W, G, states, rows, scalars)

    def sync(self):
        """Wait for queued device work (nothing to wait for on the CPU)."""

    def warmup(self):
        """Compile whatever compiles lazily (nothing here)."""


_F32 = np.dtype(np.float32)


def _all_float32(*arrays):
    for a in arrays:  # a plain loop and an identity test: called for every LSTM step
        if a.dtype is not _F32:
            return False
    return True


_NO_ROWS = np.empty((0, 0), np.float32)  # "no dh_next" for the LSTM step kernel


def _contiguous(*arrays):
    for a in arrays:
        if not a.flags.c_contiguous:
            return False
    return True


class NumbaCompute(NumpyCompute):
    """The plain path with its hot loops replaced by Numba kernels.

    The kernels are float32-only and called unchecked; arrays of another dtype (float64 in a
    gradient check, say) take the plain NumPy methods instead.
    """

    name = "numba"

    def __init__(self):
        from .. import kernels
        from ..kernels import unchecked
        from ..kernels import lstm, sparse
        self.kernels, self.fast, self.lstm, self.sparse = kernels, unchecked, lstm, sparse
        self._workspaces = {}  # (k, n_out) -> reusable scratch of the sparse backward

    def _workspace(self, batch, k, n_out):
        ws = self._workspaces.get((k, n_out))
        if ws is None or not ws.fits(batch, k, n_out):
            ws = self._workspaces[(k, n_out)] = self.kernels.BackwardWorkspace(batch, k, n_out)
        return ws

    def select_topk_rows(self, dy, k):
        if dy.dtype != np.float32:
            return super().select_topk_rows(dy, k)
        return self.fast.topk_rows(np.ascontiguousarray(dy), k)

    def select_topk_unified(self, dy, k):
        if dy.dtype != np.float32:
            return super().select_topk_unified(dy, k)
        return self.kernels.topk_cols_unified(dy, k)

    def meprop_backward_rows(self, x, W, dy, idx, dW, need_dx):
        if not _all_float32(x, W, dy, dW):
            return super().meprop_backward_rows(x, W, dy, idx, dW, need_dx)
        ws = self._workspace(*idx.shape, W.shape[0])
        return self.fast.sparse_backward(x, W, dy, idx, dW, need_dx, ws)

    def meprop_relu_backward(self, x, W, out, g, db, dW, rule, rng, hits, need_dx):
        """The four built-in rules in one fused kernel call: per-example top-k or random-k
        (ReLU, bias, selection, hits, dx and dW), or unified (ReLU, bias, column scores,
        selection, hits) before the two BLAS products. Any other rule takes the plain path."""
        fusable = (type(rule) in FUSED_RULES and _all_float32(g, out, x, W, db, dW)
                   and g.flags.c_contiguous and g.flags.writeable and x.flags.c_contiguous)
        if not fusable:
            return super().meprop_relu_backward(x, W, out, g, db, dW, rule, rng, hits, need_dx)
        batch, n_out = g.shape
        k = rule.k
        if not 1 <= k <= n_out:  # the kernels write k entries a row: never past the buffers
            raise ValueError(f"{rule!r}: k = {k} must be between 1 and the layer's {n_out} outputs")
        select = type(rule) in (TopK, UnifiedTopK)
        # random-k does not look at dy: it is drawn first, as the plain path's rule does
        if rule.unified:
            cols = (np.empty(k, np.int32) if select else self.select_random_unified(rng, n_out, k))
            dx = self.fast.unified_backward(g, out, x, W, k, cols, db, dW, need_dx, hits, select)
            return dx, Selection(cols, batch, unified=True)
        idx = (np.empty((batch, k), np.int32) if select
               else self.select_random_rows(rng, batch, n_out, k))
        ws = self._workspace(batch, k, n_out)
        dx = self.fast.layer_backward(g, out, x, W, k, idx, db, dW, need_dx, hits, ws, select)
        return dx, Selection(idx, batch)

    def rows_touched(self, idx, n_out):
        return self.kernels.rows_touched(idx, n_out)

    def meprop_input_grad(self, W, dy, selection):
        if selection.unified or not (_all_float32(W, dy) and _contiguous(W, dy)):
            return super().meprop_input_grad(W, dy, selection)
        idx = selection.chosen
        rows, k = idx.shape
        dx = np.empty((rows, W.shape[1]), np.float32)
        self.sparse._sparse_dx.pick(rows * k * W.shape[1])(W, dy, idx, dx)
        return dx

    def meprop_pairs_weight_grad(self, x, selection, vals, dW):
        if selection.unified or not (_all_float32(x, vals, dW) and _contiguous(x, vals, dW)):
            return super().meprop_pairs_weight_grad(x, selection, vals, dW)
        self.lstm.weight_grad_pairs(x, selection.chosen, vals, dW)

    def meprop_pairs_input_grad(self, W, selection, vals):
        if selection.unified or not (_all_float32(W, vals) and _contiguous(W, vals)):
            return super().meprop_pairs_input_grad(W, selection, vals)
        dx = np.empty((vals.shape[0], W.shape[1]), np.float32)
        self.lstm.input_grad_pairs(W, selection.chosen, vals, dx)
        return dx

    def lstm_cell_forward(self, z, c_prev, c_out, tc_out, h_out):
        if not (_all_float32(z, c_prev, c_out, tc_out, h_out) and _contiguous(z, c_prev, c_out, tc_out, h_out)):
            return super().lstm_cell_forward(z, c_prev, c_out, tc_out, h_out)
        self.lstm.cell_forward(z, c_prev, c_out, tc_out, h_out)

    def lstm_cell_backward(self, dh, dc, acts, c_prev, tc, dz_out):
        arrays = (dh, dc, acts, c_prev, tc, dz_out)
        if not (_all_float32(*arrays) and _contiguous(*arrays)):
            return super().lstm_cell_backward(dh, dc, acts, c_prev, tc, dz_out)
        dc_prev = np.empty_like(tc)
        self.lstm.cell_backward(dh, dc, acts, c_prev, tc, dz_out, dc_prev)
        return dc_prev

    def lstm_meprop_step(self, dH_t, dh_next, dc, acts, c_prev, tc, rule, rng, per_gate, Wh,
                         need_dh, db):
        """Per-gate top-k (the built-in TopK rule) in one kernel call a step
        (`kernels.lstm.meprop_step`); anything else takes the step-by-step path."""
        arrays = (dH_t, dc, acts, c_prev, tc, Wh, db) + (() if dh_next is None else (dh_next,))
        if not (type(rule) is TopK and per_gate and _all_float32(*arrays) and _contiguous(*arrays)):
            return super().lstm_meprop_step(dH_t, dh_next, dc, acts, c_prev, tc, rule, rng,
                                            per_gate, Wh, need_dh, db)
        B, H = tc.shape
        k = rule.k
        if not 1 <= k <= H:
            raise ValueError(f"{rule!r}: k = {k} must be between 1 and the gate width {H}")
        idx = np.empty((B, 4 * k), np.int32)
        vals = np.empty((B, 4 * k), np.float32)
        dc_prev = np.empty_like(tc)
        dh_prev = np.empty((B if need_dh else 0, H), np.float32)
        self.lstm.meprop_step(dH_t, _NO_ROWS if dh_next is None else dh_next, dc, acts, c_prev,
                              tc, dc_prev, k, Wh, idx, vals, dh_prev, db)
        return dc_prev, Selection(idx, B), vals, dh_prev if need_dh else None

    def reverse_steps(self, x, src):
        if not (x.ndim == 3 and _all_float32(x) and _contiguous(x)):
            return super().reverse_steps(x, src)
        out = np.empty_like(x)
        self.lstm.reverse_steps(x, src.astype(np.int64, copy=False), out)
        return out

    def add_rows(self, G, ids, d):
        if not (_all_float32(G, d) and _contiguous(G, d)):
            return super().add_rows(G, ids, d)
        self.lstm.add_rows(G, ids.astype(np.int64, copy=False), d)

    def record_hits(self, idx, hits):
        self.kernels.record_hits(idx, hits)

    def update(self, rule, w, g, states, scalars):
        if not _all_float32(w, g, *states):
            return super().update(rule, w, g, states, scalars)
        rule.numba_dense.pick(w.size)(w.reshape(-1), g.reshape(-1),
                                      *(s.reshape(-1) for s in states),
                                      *(np.float32(x) for x in scalars))

    def update_rows(self, rule, W, G, states, rows, scalars):
        if not _all_float32(W, G, *states):
            return super().update_rows(rule, W, G, states, rows, scalars)
        rule.numba_rows.pick(rows.size * W.shape[1])(W, G, *states, rows,
                                                     *(np.float32(x) for x in scalars))

    def warmup(self):
        from ..optim import checked
        self.kernels.warmup()
        checked.warmup()
