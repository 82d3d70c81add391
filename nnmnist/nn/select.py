"""meProp's selection rules, and the `Selection` value a rule returns.

A rule looks at a hidden layer's output gradient dy (minibatch x neurons) and keeps k entries
of it: per example (k columns in each row) or unified (one set of k columns for the whole
minibatch). Only the kept entries flow back.

- `TopK(k)`: per example, the k largest |dy| (ties: the lower column).
- `RandomK(k)`: per example, k distinct columns uniformly at random (dy is not looked at).
- `UnifiedTopK(k)`: the k columns of largest summed |dy| over the minibatch.
- `UnifiedRandomK(k)`: k distinct columns at random, one set for the minibatch.

A new rule subclasses `SelectionRule` and implements `__call__(dy, compute, rng)` with the
backend's array operations (`compute.xp`, `compute.select_*`); it then runs on every backend.
The fused Numba kernels implement exactly the four rules above and are used only for them.
"""
from dataclasses import dataclass


@dataclass(eq=False)
class Selection:
    """The entries of dy that one backward kept.

    `chosen` is (batch, k) column indices per example, or, when `unified`, (k,) columns shared
    by all `batch` examples of the minibatch; int32 and ascending either way. Neuron j owns
    row j of W, so the weight rows that received gradient are the chosen columns.
    """
    chosen: object
    batch: int
    unified: bool = False

    def rows(self, compute, n_rows):
        """The weight rows this selection touched, in the form the backend's row updates take
        (sorted unique indices, or on the GPU a boolean mask for per-example choices)."""
        if self.unified:
            return self.chosen
        return compute.rows_touched(self.chosen, n_rows)

    def count_hits(self, compute, hits):
        """meSimp's hit count: one hit to a neuron for every example it was chosen for."""
        if self.unified:
            hits[self.chosen] += self.batch
        else:
            compute.record_hits(self.chosen, hits)


class SelectionRule:
    """Base class: keep `k` entries of each layer output gradient (see the module's doc)."""

    unified = False

    def __init__(self, k):
        self.k = int(k)
        if self.k < 1:
            raise ValueError(f"k = {k}: a selection rule keeps at least 1 entry")

    def __call__(self, dy, compute, rng):
        """The Selection for output gradient dy; `rng` is the network's generator."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.k})"


class TopK(SelectionRule):
    """Per example, the k entries of largest |dy| (meProp)."""

    def __call__(self, dy, compute, rng):
        return Selection(compute.select_topk_rows(dy, self.k), dy.shape[0])


class RandomK(SelectionRule):
    """Per example, k distinct entries uniformly at random (the random-k baseline)."""

    def __call__(self, dy, compute, rng):
        batch, n = dy.shape
        return Selection(compute.select_random_rows(rng, batch, n, self.k), batch)


class UnifiedTopK(SelectionRule):
    """One set of k columns for the minibatch: the largest sums of |dy| over its rows."""

    unified = True

    def __call__(self, dy, compute, rng):
        return Selection(compute.select_topk_unified(dy, self.k), dy.shape[0], True)


class UnifiedRandomK(SelectionRule):
    """One set of k distinct columns for the minibatch, uniformly at random."""

    unified = True

    def __call__(self, dy, compute, rng):
        batch, n = dy.shape
        return Selection(compute.select_random_unified(rng, n, self.k), batch, True)


def rule_for(net_type, k, unified):
    """The rule a NetType uses for its hidden layers (None: ordinary backprop)."""
    if net_type == "mlp":
        return None
    if net_type == "mlprand":
        return UnifiedRandomK(k) if unified else RandomK(k)
    return UnifiedTopK(k) if unified else TopK(k)


