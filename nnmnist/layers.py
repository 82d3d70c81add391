"""Dense and masked-dense units, and the rules that pick which gradient entries flow back."""
import numpy as np

from . import ops
from .tensor import Tensor


def init_dense(rng, n_in, n_out, xp):
    """W ~ N(0, sqrt(6 / (in + out))) drawn as (in, out) as in the original, stored (out, in)."""
    std = np.sqrt(6.0 / (n_in + n_out))
    W = rng.normal(0.0, std, size=(n_in, n_out)).astype(np.float32).T.copy()
    b = np.zeros(n_out, dtype=np.float32)
    return xp.asarray(W), xp.asarray(b)


class Selector:
    """Which entries of a layer's output gradient flow back: all, top-k or random-k."""

    def __init__(self, mode, k, unified, compute, rng):
        self.mode, self.k, self.unified = mode, k, unified
        self.compute, self.rng = compute, rng

    def __call__(self, dy):
        c, k = self.compute, self.k
        if self.mode == "top":
            if self.unified:
                return "cols", c.select_topk_unified(dy, k)
            return "rows", c.select_topk_rows(dy, k)
        batch, n = dy.shape
        if self.unified:
            return "cols", c.select_random_unified(self.rng, n, k)
        return "rows", c.select_random_rows(self.rng, batch, n, k)


class Dense:
    """y = x W + b, with an ordinary backward or, given a Selector, meProp's sparse one."""

    def __init__(self, n_in, n_out, rng, compute, selector=None):
        W, b = init_dense(rng, n_in, n_out, compute.xp)
        self.W = Tensor(W, name="W")
        self.b = Tensor(b, name="b")
        self.compute = compute
        self.selector = selector

    @property
    def params(self):
        return [self.W, self.b]

    @property
    def n_out(self):
        return self.W.shape[0]

    def _matmul(self, flow, x, recorder=None):
        if self.selector is None:
            return ops.matmul(flow, x, self.W, self.compute)
        return ops.meprop_matmul(flow, x, self.W, self.compute, self.selector, recorder)

    def __call__(self, flow, x):
        """The unit's pre-activation x W + b, op by op."""
        return ops.add_bias(flow, self._matmul(flow, x), self.b)

    def activate(self, flow, x):
        """relu(x W + b): with meProp one fused op, otherwise matmul, bias and ReLU ops."""
        if self.selector is None:
            return ops.relu(flow, self(flow, x))
        return ops.meprop_relu_unit(flow, x, self.W, self.b, self.compute, self.selector)


class MaskedDense(Dense):
    """meSimp's unit: y = mask * (x W + b), counting how often each neuron is in the top-k."""

    def __init__(self, n_in, n_out, rng, compute, selector):
        super().__init__(n_in, n_out, rng, compute, selector)
        xp = compute.xp
        self.active = xp.ones(n_out, dtype=bool)
        self.mask = xp.ones(n_out, dtype=np.float32)
        self.hits = xp.zeros(n_out, dtype=np.int64)
        self.reference = 0
        self.n_total = n_out  # the width as built; compaction shrinks n_out, never this

    def _record(self, kind, chosen, batch):
        """Each example adds one to the reference count and one hit to each of its k neurons."""
        self.reference += batch
        self.compute.record_choice(kind, chosen, batch, self.hits)

    def __call__(self, flow, x):
        """The unit's masked pre-activation, op by op, recording hits in backward."""
        y = ops.add_bias(flow, self._matmul(flow, x, self._record), self.b)
        return ops.mask(flow, y, self.mask)

    def activate(self, flow, x):
        """relu(mask * (x W + b)) as one fused op, whose backward records the hits; the
        reference count moves in backward too (as in `_record`)."""
        y = ops.meprop_relu_unit(flow, x, self.W, self.b, self.compute, self.selector,
                                 mask=self.mask, hits=self.hits)
        batch = x.shape[0]

        def count_examples():
            self.reference += batch
        flow.record(count_examples)
        return y

    def prune(self, fraction):
        """Deactivate neurons with hits < floor(reference * fraction) for good; reset counters."""
        threshold = int(np.floor(self.reference * fraction))
        self.active &= self.hits >= threshold
        self.mask[...] = self.active
        self.hits[...] = 0
        self.reference = 0

    @property
    def active_count(self):
        return int(self.active.sum())
