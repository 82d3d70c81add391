"""SGD, AdaGrad and Adam as the original applies them: element-wise, after every minibatch.

The base class owns the state and `step` over the model's parameter store; each subclass
writes one `_update`.
The arithmetic itself lives in `compute` (plain NumPy, fused Numba or CuPy), written once there.
"""
import math

import numpy as np

from .errors import UserError
from .params import ParamStore, StateDictError, check_state_keys, load_into, to_host


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

    state_names = ()

    def __init__(self, params, compute, lr, clip=0.0, lazy=False):
        if not (lr > 0 and math.isfinite(lr)):
            raise UserError(f"LearningRate = {lr}: must be a finite number > 0")
        self.compute = compute
        self.store = store_for(params, compute.xp)
        self.lr, self.clip, self.lazy = lr, clip, lazy
        self.t = 0
        self.state = self.store.aligned(self.state_names)
        self._layout = None
        self._state_views()
        self.prepare()  # "Prepare" at the start of training, as the original does

    @property
    def params(self):
        return self.store.params

    def _state_views(self):
        """Per-parameter views of the state buffers, rebuilt when the store's layout changed."""
        layout = (id(self.store.value),) + tuple(id(b) for b in self.state.flat.values())
        if layout != self._layout:
            views = {name: self.state.views(name) for name in self.state_names}
            self._views = [{name: views[name][i] for name in self.state_names}
                           for i in range(len(self.store.params))]
            for p, v in zip(self.store.params, self._views):
                p.state = v
            self._layout = layout
        return self._views

    def prepare(self):
        """Reset every parameter's state to zeros ("Prepare"); the step counter is kept."""
        self.state.fill(0)

    def step(self):
        """Advance the step counter, then update each parameter and zero its gradient."""
        self.t += 1
        self._begin_step()
        views = self._state_views()
        if not self.lazy:
            store = self.store  # one fused pass over every parameter
            self._update(store.value, store.grad, self.state.flat, None)
        else:
            for p, state in zip(self.store.params, views):
                rows = None
                if p.touched is not None:
                    kind, chosen = p.touched
                    rows = self.compute.touched_rows(kind, chosen, p.shape[0])
                self._update(p.value, p.grad, state, rows)
        for p in self.store.params:
            p.touched = None

    def _begin_step(self):
        """Per-step scalars (learning-rate schedules, bias corrections)."""

    def _update(self, w, g, state, rows):
        """Update w (and the state arrays) from g, on `rows` only when given; zero g."""
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


class SGD(Optimizer):
    """w -= lr_t g, lr_t = lr * decay^(t / N_train); SGD ignores L2, as the original does."""

    def __init__(self, params, compute, lr, decay, n_train, clip=0.0, lazy=False):
        self.decay, self.n_train = decay, n_train
        super().__init__(params, compute, lr, clip, lazy)

    def _begin_step(self):
        self.lr_t = self.lr * self.decay ** (self.t / self.n_train)

    def _update(self, w, g, state, rows):
        c = self.compute
        if rows is None:
            c.sgd(w, g, self.lr_t, self.clip)
        else:
            c.sgd_rows(w, g, rows, self.lr_t, self.clip)


class AdaGrad(Optimizer):
    """g += l2 w; clip; h += g^2; w -= g lr / sqrt(h + eps)."""

    state_names = ("h",)

    def __init__(self, params, compute, lr, eps, l2=0.0, clip=0.0, lazy=False):
        self.eps, self.l2 = eps, l2
        super().__init__(params, compute, lr, clip, lazy)

    def _update(self, w, g, state, rows):
        c, h = self.compute, state["h"]
        if rows is None:
            c.adagrad(w, g, h, self.lr, self.eps, self.l2, self.clip)
        else:
            c.adagrad_rows(w, g, h, rows, self.lr, self.eps, self.l2, self.clip)


class Adam(Optimizer):
    """g += l2 w; clip; v = .999 v + .001 g^2; m = .9 m + .1 g; w -= lr_t m / (sqrt(v) + 1e-8),
    with lr_t = lr sqrt(1 - .999^t) / (1 - .9^t). t survives Prepare, as in the original."""

    state_names = ("m", "v")

    def __init__(self, params, compute, lr, l2=0.0, clip=0.0, lazy=False):
        self.l2 = l2
        super().__init__(params, compute, lr, clip, lazy)

    def _begin_step(self):
        self.lr_t = self.lr * math.sqrt(1 - 0.999 ** self.t) / (1 - 0.9 ** self.t)

    def _update(self, w, g, state, rows):
        c, m, v = self.compute, state["m"], state["v"]
        if rows is None:
            c.adam(w, g, m, v, self.lr_t, self.l2, self.clip)
        else:
            c.adam_rows(w, g, m, v, rows, self.lr_t, self.l2, self.clip)


def make_optimizer(cfg, params, compute, n_train):
    """The optimizer that `OptType` names, with the config's hyperparameters."""
    common = dict(clip=cfg.ClipBound, lazy=cfg.LazyUpdate)
    if cfg.OptType == "sgd":
        return SGD(params, compute, cfg.LearningRate, cfg.DecayRate, n_train, **common)
    if cfg.OptType == "adagrad":
        return AdaGrad(params, compute, cfg.LearningRate, cfg.Eps, cfg.L2RegFactor, **common)
    return Adam(params, compute, cfg.LearningRate, cfg.L2RegFactor, **common)
