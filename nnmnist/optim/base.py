"""What every optimizer shares: the `Rule` a backend runs, and the `Optimizer` base class.

The original applies its rules element-wise after every minibatch, with the gradient zeroed
afterwards. A `Rule` is one such update written three ways, side by side in the rule's module:
a NumPy body, a Numba element function (compiled into a dense loop and a row loop) and a CUDA
element function (compiled with `numba.cuda` into a dense kernel and two row kernels by
`nnmnist.backends.cuda_kernels`). The row ("lazy") variants are derived from the same body
everywhere: NumPy gathers the rows, runs the body and scatters them back; the Numba and CUDA row
loops call the same element code.
"""
import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..nn.params import ParamStore, StateDictError, check_state_keys, load_into, to_host


@dataclass(frozen=True)
class Rule:
    """One element-wise update rule, in the forms each backend runs.

    name: the OptType. state: names of the per-element state arrays (e.g. ("m", "v")).
    scalars: names of the per-step scalars, in call order; "clip" is always last.
    numpy(w, g, *state, *scalars): updates w and the state in place (g may be overwritten).
    numba_dense / numba_rows: `Variants` loops over (w, g, *state, *scalars) flat float32
        arrays and over (W, G, *State, rows, *scalars) 2-D arrays and sorted unique rows.
    cuda(rn): returns the element function elem(w, g, *state, *scalars) -> new w, or
        (w, *state) when there is state, for `numba.cuda`. `rn` holds the array type T and its
        rounding operations (add, sub, mul, div, sqrt: each rounded once, no fused
        multiply-add; l2_clip(w, g, l2, clip)); the body uses them in the order of the NumPy
        body's operations, with its constants converted to T, so that a step matches it.
    """
    name: str
    state: tuple
    scalars: tuple
    numpy: object
    numba_dense: object
    numba_rows: object
    cuda: str


def numpy_clip(g, clip):
    """Clip g to [-clip, clip] in place when clip > 0 (clip <= 0: no clipping)."""
    if clip > 0:
        np.clip(g, -clip, clip, out=g)


def numpy_rows(rule, W, G, states, rows, scalars):
    """The NumPy body on the listed rows only; only those rows of G are zeroed."""
    w, g, s = W[rows], G[rows], [S[rows] for S in states]
    rule.numpy(w, g, *s, *scalars)
    W[rows], G[rows] = w, 0
    for S, part in zip(states, s):
        S[rows] = part


def store_for(params, xp):
    """The ParamStore holding exactly `params` (a store, or its Tensors in its order); Tensors
    that are in no store yet are adopted by a new one (their arrays become its views)."""
    if isinstance(params, ParamStore):
        return params
    params = list(params)
    store = params[0].store if params else None
    if store is not None and len(store.params) == len(params) \
            and all(a is b for a, b in zip(store.params, params)):
        return store
    if any(p.store is not None for p in params):
        raise ValueError("an optimizer takes a whole store's parameters, in the store's order")
    return ParamStore([(f"{i}.{p.name}" if p.name else str(i), p)
                       for i, p in enumerate(params)], xp)


class Optimizer:
    """Owns the state buffers; `step` updates every parameter and zeroes its gradient.

    The state (`state_names`, e.g. Adam's m and v) lives in flat buffers aligned with the
    parameter store, so a dense step is one fused call over every parameter; each
    parameter's `state` holds views of its part. The store's `take` cuts the state too.
    """

    rule = None  # the Rule this optimizer runs (set by each subclass)

    def __init__(self, params, compute, lr, clip=0.0, lazy=False):
        if not (lr > 0 and math.isfinite(lr)):
            raise UserError(f"LearningRate = {lr}: must be a finite number > 0")
        self.compute = compute
        self.store = store_for(params, compute.xp)
        self.lr, self.clip, self.lazy = lr, clip, lazy
        self.t = 0
        self.state = self.store.aligned(self.state_names)
        self._layout = None
        self.state_views()
        self.prepare()  # "Prepare" at the start of training, as the original does

    @property
    def params(self):
        return self.store.params

    @property
    def state_names(self):
        return self.rule.state

    @classmethod
    def from_config(cls, cfg, params, compute, n_train):
        """The optimizer with a config's hyperparameters (`make_optimizer` calls this)."""
        raise NotImplementedError

    def state_views(self):
        """Per-parameter views of the state buffers, rebuilt when the store's layout changed."""
        layout = self.store.layout
        if layout != self._layout:
            views = {name: self.state.views(name) for name in self.state_names}
            self._views = [{name: views[name][i] for name in self.state_names}
                           for i in range(len(self.store.params))]
            for p, v in zip(self.store.params, self._views):
                p.state = v
            self._layout = layout
        return self._views

    def state_of(self, param):
        """{name: view} of one parameter's state (current after the store's `take`)."""
        return self.state_views()[self.store.index(param)]

    def prepare(self):
        """Reset every parameter's state to zeros ("Prepare"); the step counter is kept."""
        self.state.fill(0)

    def step(self, selections=None):
        """Advance the step counter, then update each parameter and zero its gradient.

        `selections` ({weight Tensor: Selection}, as `Flow.selections` collects them) tells a
        lazy optimizer which rows of a weight received gradient; without one a parameter gets
        the dense update. A dense optimizer ignores it.
        """
        self.t += 1
        self._begin_step()
        views = self.state_views()
        c, rule, scalars = self.compute, self.rule, self.scalars()
        store = self.store
        if not self.lazy:  # one fused pass over every parameter
            c.update(rule, store.value, store.grad, list(self.state.flat.values()), scalars)
        else:
            selections = selections or {}
            dense_from = None  # the first of a run of parameters without a selection
            for i, (p, state) in enumerate(zip(store.params, views)):
                selection = selections.get(p)
                if selection is None:
                    dense_from = i if dense_from is None else dense_from
                    continue
                if dense_from is not None:
                    self._update_run(dense_from, i, scalars)
                    dense_from = None
                rows = selection.rows(c, p.shape[0])
                c.update_rows(rule, p.value, p._grad, [state[name] for name in rule.state],
                              rows, scalars)
            if dense_from is not None:
                self._update_run(dense_from, len(store.params), scalars)
        for p in store.params:  # every gradient is zero again (a lazy step zeroes what it
            p.zeroed()          # visits; the rest received none)

    def _update_run(self, first, end, scalars):
        """The dense update of the store's parameters first..end-1, as one call over their
        adjacent flat slices."""
        store = self.store
        a, b = store.offsets[first], store.offsets[end]
        self.compute.update(self.rule, store.value[a:b], store.grad[a:b],
                            [flat[a:b] for flat in self.state.flat.values()], scalars)

    def _begin_step(self):
        """Per-step values (learning-rate schedules, bias corrections)."""

    def scalars(self):
        """This step's scalars, in the order of `rule.scalars`."""
        raise NotImplementedError

    # -- state -----------------------------------------------------------------------------
    def state_dict(self):
        """The step counter and every state buffer, per parameter: {"t", "m.0.W", ...}."""
        out = {"t": np.array(self.t, dtype=np.int64)}
        for name in self.state_names:
            for pname, view in zip(self.store.names, self.state.views(name)):
                out[f"{name}.{pname}"] = to_host(view)
        return out

    def load_state_dict(self, state):
        """Copy the step counter and the state in place; names and shapes must match."""
        keys = {f"{name}.{pname}": view for name in self.state_names
                for pname, view in zip(self.store.names, self.state.views(name))}
        check_state_keys("optimizer", state, ["t", *keys])
        t = np.asarray(state["t"])
        if t.shape != () or not np.issubdtype(t.dtype, np.integer) or int(t) < 0:
            raise StateDictError(f"optimizer state: t = {t!r} is not a step count")
        load_into("optimizer", [(key, view, state[key]) for key, view in keys.items()],
                  self.compute.xp)
        self.t = int(t)


