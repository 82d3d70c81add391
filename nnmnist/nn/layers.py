"""Dense and masked-dense (meSimp) units.

Weights are stored neuron-major, W of shape (out, in): row j holds neuron j's incoming weights
and a unit computes x @ W.T + b. Which gradient entries flow back through a meProp unit is
decided by its selection rule (`nnmnist.nn.select`).
"""
import numpy as np

from . import ops
from .tensor import Tensor


def init_dense(rng, n_in, n_out, xp):
    """W ~ N(0, sqrt(6 / (in + out))) drawn as (in, out) as in the original, stored (out, in)."""
    std = np.sqrt(6.0 / (n_in + n_out))
    W = rng.normal(0.0, std, size=(n_in, n_out)).astype(np.float32).T.copy()
    b = np.zeros(n_out, dtype=np.float32)
    return xp.asarray(W), xp.asarray(b)


class Dense:
    """y = x @ W.T + b, with an ordinary backward or, given a SelectionRule, meProp's sparse one.

    `rng` draws the initial weights and, for a random rule, the random choices.
    """

    def __init__(self, n_in, n_out, rng, compute, rule=None):
        W, b = init_dense(rng, n_in, n_out, compute.xp)
        self.W = Tensor(W, name="W")
        self.b = Tensor(b, name="b")
        self.compute, self.rng = compute, rng
        self.rule = rule
        if rule is not None and rule.k > n_out:
            raise ValueError(f"{rule!r}: k = {rule.k} is more than the layer's {n_out} outputs")

    @property
    def params(self):
        return [self.W, self.b]

    @property
    def n_out(self):
        return self.W.shape[0]

    def __call__(self, flow, x):
        """The unit's pre-activation x @ W.T + b, op by op.

        With a rule this is the step-by-step meProp path (`ops.meprop_matmul`, then the
        bias): the reference that the fused `activate` is checked against in the tests.
        """
        return ops.add_bias(flow, self._matmul(flow, x), self.b)

    def _matmul(self, flow, x, on_selection=None):
        if self.rule is None:
            return ops.matmul(flow, x, self.W, self.compute)
        return ops.meprop_matmul(flow, x, self.W, self.compute,
                                 lambda dy: self.rule(dy, self.compute, self.rng), on_selection)

    def activate(self, flow, x):
        """relu(x @ W.T + b): with meProp one fused op, otherwise matmul, bias and ReLU ops."""
        if self.rule is None:
            return ops.relu(flow, self(flow, x))
        return ops.meprop_relu_unit(flow, x, self.W, self.b, self.compute, self.rule, self.rng)


class MaskedDense(Dense):
    """meSimp's unit: y = mask * (x @ W.T + b), counting how often each neuron is chosen.

    `hits[j]` counts the examples whose selection chose neuron j, and `examples` the examples
    seen, both since the last pruning; `prune` deactivates the rarely chosen neurons.
    """

    def __init__(self, n_in, n_out, rng, compute, rule):
        super().__init__(n_in, n_out, rng, compute, rule)
        xp = compute.xp
        self.active = xp.ones(n_out, dtype=bool)
        self.mask = xp.ones(n_out, dtype=np.float32)
        self.hits = xp.zeros(n_out, dtype=np.int64)
        self.examples = 0
        self.n_total = n_out  # the width as built; compaction shrinks n_out, never this

    def _count_examples(self, selection):
        """Each backward's examples count once, whichever path ran it."""
        self.examples += selection.batch

    def __call__(self, flow, x):
        """The unit's masked pre-activation, op by op, counting hits in backward: the
        step-by-step reference that the fused `activate` is checked against in the tests."""
        def on_selection(selection):
            selection.count_hits(self.compute, self.hits)
            self._count_examples(selection)
        y = ops.add_bias(flow, self._matmul(flow, x, on_selection), self.b)
        return ops.mask(flow, y, self.mask)

    def activate(self, flow, x):
        """relu(mask * (x @ W.T + b)) as one fused op, whose backward counts the hits."""
        return ops.meprop_relu_unit(flow, x, self.W, self.b, self.compute, self.rule, self.rng,
                                    mask=self.mask, hits=self.hits,
                                    on_selection=self._count_examples)

    def prune(self, fraction):
        """Deactivate neurons with hits < floor(examples * fraction) for good; reset counters."""
        threshold = int(np.floor(self.examples * fraction))
        self.active &= self.hits >= threshold
        self.mask[...] = self.active
        self.hits[...] = 0
        self.examples = 0

    @property
    def active_count(self):
        return int(self.active.sum())
