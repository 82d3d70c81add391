"""A fused training step for the built-in MLP on the Numba backend: mlp and mlptop (per-example
top-k) with Adam, exact or lazy update.

The tape path (`Network.forward`, `Flow.backward`, `Optimizer.step`) stays the reference and
the path of every other case; this step computes the same numbers, bit for bit, with fewer
calls and, under `LazyUpdate`, with each hidden layer's Adam update done inside its backward:

- forward: the same BLAS products and element-wise NumPy as the ops, without Tensors and
  recorded closures;
- backward: the same softmax, output-layer and meProp unit arithmetic (`ops.add_product`, the
  fused kernel's row helpers);
- update: under `LazyUpdate`, one compiled call per hidden meProp layer does the ReLU mask,
  the bias sums, the per-example top-k, dx, and then for each touched neuron its gradient
  row (`_dw_row`) followed at once by Adam on that row (`adam._elem`) while the row is still
  in the L1 cache; the tape path instead writes all touched rows, lets the next layer's
  backward evict them, and reads them again in the optimizer. Updating a layer's W right
  after its backward is exact: dx was computed from the old W first, and nothing later in
  the step reads that W. The biases and the output layer get the dense Adam afterwards, as
  the tape's lazy step does. The exact update is the tape's one pass over every parameter.

`fused_step_for` says whether a run's model, optimizer and backend are a case this covers;
`Trainer` uses it then and the tape path otherwise.
"""
import numpy as np

from ..kernels._jit import kernel, num_threads
from ..kernels.fused import use_dense
from ..kernels.sparse import _by_neuron, _dw_row, _dx_row
from ..kernels.topk import _topk_row, scratch_size
from ..nn import ops
from ..nn.layers import Dense
from ..nn.networks import MLP
from ..nn.select import TopK
from ..optim.adam import Adam, _elem
from .cpu import NumbaCompute


@kernel
def _unit_backward_adam(g, out, x, W, k, idx, db, dW, dx, ptr, rows, chunks, M, V,
                        lr_t, l2, clip):
    # As `fused._layer_backward` (serial, per-example top-k, no hits), then Adam on every
    # touched row of W right after its gradient row is complete; that row of dW is zeroed.
    batch, n = g.shape
    gbits = g.view(np.uint32)
    for c in range(chunks):
        scratch = np.empty(scratch_size(n), np.int32)
        hint = -1
        for b in range(c * batch // chunks, (c + 1) * batch // chunks):
            for j in range(n):
                g[b, j] = g[b, j] * np.float32(out[b, j] > 0)
            hint = _topk_row(gbits[b], k, scratch, idx[b], hint)
    total = np.zeros(n, np.float32)
    for b in range(batch):
        for j in range(n):
            total[j] += g[b, j]
    for j in range(n):
        db[j] += total[j]
    if dx.shape[0]:
        for b in range(batch):
            _dx_row(W, g, idx, b, dx[b])
    _by_neuron(idx, ptr, rows)
    for j in range(W.shape[0]):
        if ptr[j + 1] == ptr[j]:
            continue
        grow = dW[j]
        _dw_row(x, g, ptr, rows, j, grow)
        w = W[j]
        m = M[j]
        v = V[j]
        for i in range(w.shape[0]):
            w[i], m[i], v[i] = _elem(w[i], grow[i], m[i], v[i], lr_t, l2, clip)
            grow[i] = np.float32(0)


def fused_step_for(cfg, model, opt, compute):
    """The FusedStep for this run, or None when the run is not a case it covers (then the
    tape path trains it): the built-in MLP, NetType mlp or mlptop with per-example top-k,
    no dropout and no DenseWarmup, Adam, the Numba backend, float32 parameters."""
    if type(compute) is not NumbaCompute or type(model) is not MLP or type(opt) is not Adam:
        return None
    if model.net_type not in ("mlp", "mlptop") or model.dropout > 0:
        return None
    if getattr(cfg, "DenseWarmup", 0) or model._rules is not None or opt.store is not model.store:
        return None
    hidden, last = model.layers[:-1], model.layers[-1]
    want = TopK if model.net_type == "mlptop" else type(None)
    if any(type(layer) is not Dense or type(layer.rule) is not want for layer in hidden):
        return None
    if type(last) is not Dense or last.rule is not None:
        return None
    if any(p.value.dtype != np.float32 or p._grad is None for p in model.params):
        return None
    return FusedStep(model, opt, compute)


class FusedStep:
    """One training step of a covered run, in three phases the Trainer times as fp, bp and
    update: `forward(x, labels)` -> (per-example losses, predictions), `backward()` (under
    `LazyUpdate` with meProp, including the hidden layers' row updates), `update()`."""

    def __init__(self, model, opt, compute):
        self.model, self.opt, self.compute = model, opt, compute
        self.hidden, self.last = model.layers[:-1], model.layers[-1]
        self.topk = model.net_type == "mlptop"
        self.lazy = opt.lazy and self.topk
        self.rule_type = TopK if self.topk else type(None)
        self.layout = model.store.layout
        store = model.store
        if self.lazy:  # the parameters the lazy step updates densely, as runs of flat slices
            rowwise = {store.index(layer.W) for layer in self.hidden}
            self.runs, start = [], None
            for i in range(len(store.params) + 1):
                if i < len(store.params) and i not in rowwise:
                    start = i if start is None else start
                elif start is not None:
                    self.runs.append((store.offsets[start], store.offsets[i]))
                    start = None

    def covers(self):
        """True while the model is still as built: a rule swapped after construction, the
        `DenseWarmup` switch or a new store layout sends the step back to the tape path."""
        return (self.model._rules is None and self.model.store.layout == self.layout
                and all(type(layer.rule) is self.rule_type for layer in self.hidden)
                and self.last.rule is None)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x, labels):
        c = self.compute
        self.acts = [x]
        h = x
        for layer in self.hidden:
            a = c.matmul_xwt(h, layer.W.value)
            if self.topk:  # as ops.meprop_relu_unit
                a += layer.b.value
                a *= a > 0
                h = a
            else:          # as ops.add_bias, then ops.relu
                z = a + layer.b.value
                h = z * (z > 0)
            self.acts.append(h)
        logits = c.matmul_xwt(h, self.last.W.value) + self.last.b.value
        losses, pred, e, s, rows = ops.softmax_parts(logits, labels, np)  # as the tape's
        self.e, self.s, self.rows, self.labels = e, s, rows, labels
        return losses, pred

    # -- backward ------------------------------------------------------------------------------
    def backward(self):
        opt = self.opt
        opt.t += 1
        opt._begin_step()
        self.scalars = opt.scalars()
        g = self.e / self.s
        g[self.rows, self.labels] -= 1
        if self.model.loss_grad == "mean":
            g /= g.shape[0]
        acts, last = self.acts, self.last
        ops.add_column_sums(last.b, g)
        dh = g @ last.W.value if self.hidden else None
        ops.add_product(last.W, g.T, acts[-1], np)
        for i in range(len(self.hidden) - 1, -1, -1):
            layer, x, out = self.hidden[i], acts[i], acts[i + 1]
            need_dx = i > 0
            if self.topk:
                dh = self._meprop_unit(layer, x, out, dh, need_dx)
            else:  # as ops.relu, ops.add_bias and ops.matmul's backwards
                dz = dh * (out > 0)
                ops.add_column_sums(layer.b, dz)
                dh = dz @ layer.W.value if need_dx else None
                ops.add_product(layer.W, dz.T, x, np)
        self.acts = self.e = self.s = None

    def _meprop_unit(self, layer, x, out, g, need_dx):
        c, W = self.compute, layer.W
        batch, n_out = g.shape
        k = layer.rule.k
        if not self.lazy or use_dense(batch, k, n_out, x.shape[1], need_dx):
            dx, selection = c.meprop_relu_backward(x, W.value, out, g, layer.b.grad, W.grad,
                                                   layer.rule, layer.rng, None, need_dx)
            if self.lazy:
                rule = self.opt.rule
                state = self.opt.state_of(W)
                c.update_rows(rule, W.value, W._grad, [state[name] for name in rule.state],
                              selection.rows(c, n_out), self.scalars)
            return dx
        idx = np.empty((batch, k), np.int32)
        dx = np.empty((batch if need_dx else 0, x.shape[1]), np.float32)
        ws = c._workspace(batch, k, n_out)
        state = self.opt.state_of(W)
        lr_t, l2, clip = (np.float32(v) for v in self.scalars)
        _unit_backward_adam(g, out, x, W.value, k, idx, layer.b.grad, W._grad, dx, ws.ptr,
                            ws.rows, max(1, min(batch, 4 * num_threads())), state["m"],
                            state["v"], lr_t, l2, clip)
        return dx if need_dx else None

    # -- update --------------------------------------------------------------------------------
    def update(self):
        opt, c, store = self.opt, self.compute, self.model.store
        flat = list(opt.state.flat.values())
        if self.lazy:
            for a, b in self.runs:
                c.update(opt.rule, store.value[a:b], store.grad[a:b], [f[a:b] for f in flat],
                         self.scalars)
        else:
            c.update(opt.rule, store.value, store.grad, flat, self.scalars)
        for p in store.params:
            p.zeroed()
