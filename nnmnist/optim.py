"""SGD, AdaGrad and Adam as the original applies them: element-wise, after every minibatch.

The base class owns the parameters, their state and `step`; each subclass writes one `_update`.
The arithmetic itself lives in `compute` (plain NumPy, fused Numba or CuPy), written once there.
"""
import math

from .errors import UserError


class FlatTensor:
    """Stand-in for one Tensor that spans every parameter: the packed value, gradient and state."""

    def __init__(self, value, grad, state):
        self.value, self.grad, self.state = value, grad, state


def pack(params, xp, state_names):
    """Move every parameter's value, gradient and state into one flat buffer each.

    Each Tensor keeps views into the buffers, so layers see no difference, while the dense
    update runs as a single fused pass over all parameters instead of one call per tensor.
    """
    sizes = [int(p.value.size) for p in params]
    total = sum(sizes)
    dtype = params[0].value.dtype
    flat = {name: xp.zeros(total, dtype=dtype) for name in ("value", "grad") + state_names}
    offset = 0
    for p, n in zip(params, sizes):
        views = {name: buf[offset:offset + n].reshape(p.shape) for name, buf in flat.items()}
        views["value"][...] = p.value
        if p._grad is not None:
            views["grad"][...] = p._grad
        p.value, p._grad = views.pop("value"), views.pop("grad")
        p.state = views
        offset += n
    return FlatTensor(flat.pop("value"), flat.pop("grad"), flat)


class Optimizer:
    """Owns per-parameter state; `step` updates every parameter and zeroes its gradient."""

    state_names = ()

    def __init__(self, params, compute, lr, clip=0.0, lazy=False):
        if not (lr > 0 and math.isfinite(lr)):
            raise UserError(f"LearningRate = {lr}: must be a finite number > 0")
        self.params, self.compute = list(params), compute
        self.lr, self.clip, self.lazy = lr, clip, lazy
        self.t = 0
        dtypes = {p.value.dtype for p in self.params}
        self.flat = pack(self.params, compute.xp, self.state_names) if len(dtypes) == 1 else None
        self.prepare()  # "Prepare" at the start of training, as the original does

    def prepare(self):
        """Reset every parameter's state to zeros ("Prepare"); the step counter is kept."""
        if self.flat is not None:
            for buf in self.flat.state.values():
                buf.fill(0)
            return
        xp = self.compute.xp
        for p in self.params:
            p.state = {name: xp.zeros_like(p.value) for name in self.state_names}

    def step(self):
        """Advance the step counter, then update each parameter and zero its gradient."""
        self.t += 1
        self._begin_step()
        if self.flat is not None and not self.lazy:
            self._update(self.flat, None)  # one fused pass over every parameter
        else:
            for p in self.params:
                rows = None
                if self.lazy and p.touched is not None:
                    kind, chosen = p.touched
                    rows = self.compute.touched_rows(kind, chosen, p.shape[0])
                self._update(p, rows)
        for p in self.params:
            p.touched = None

    def _begin_step(self):
        """Per-step scalars (learning-rate schedules, bias corrections)."""

    def _update(self, p, rows):
        raise NotImplementedError


class SGD(Optimizer):
    """w -= lr_t g, lr_t = lr * decay^(t / N_train); SGD ignores L2, as the original does."""

    def __init__(self, params, compute, lr, decay, n_train, clip=0.0, lazy=False):
        self.decay, self.n_train = decay, n_train
        super().__init__(params, compute, lr, clip, lazy)

    def _begin_step(self):
        self.lr_t = self.lr * self.decay ** (self.t / self.n_train)

    def _update(self, p, rows):
        c = self.compute
        if rows is None:
            c.sgd(p.value, p.grad, self.lr_t, self.clip)
        else:
            c.sgd_rows(p.value, p.grad, rows, self.lr_t, self.clip)


class AdaGrad(Optimizer):
    """g += l2 w; clip; h += g^2; w -= g lr / sqrt(h + eps)."""

    state_names = ("h",)

    def __init__(self, params, compute, lr, eps, l2=0.0, clip=0.0, lazy=False):
        self.eps, self.l2 = eps, l2
        super().__init__(params, compute, lr, clip, lazy)

    def _update(self, p, rows):
        c, h = self.compute, p.state["h"]
        if rows is None:
            c.adagrad(p.value, p.grad, h, self.lr, self.eps, self.l2, self.clip)
        else:
            c.adagrad_rows(p.value, p.grad, h, rows, self.lr, self.eps, self.l2, self.clip)


class Adam(Optimizer):
    """g += l2 w; clip; v = .999 v + .001 g^2; m = .9 m + .1 g; w -= lr_t m / (sqrt(v) + 1e-8),
    with lr_t = lr sqrt(1 - .999^t) / (1 - .9^t). t survives Prepare, as in the original."""

    state_names = ("m", "v")

    def __init__(self, params, compute, lr, l2=0.0, clip=0.0, lazy=False):
        self.l2 = l2
        super().__init__(params, compute, lr, clip, lazy)

    def _begin_step(self):
        self.lr_t = self.lr * math.sqrt(1 - 0.999 ** self.t) / (1 - 0.9 ** self.t)

    def _update(self, p, rows):
        c, m, v = self.compute, p.state["m"], p.state["v"]
        if rows is None:
            c.adam(p.value, p.grad, m, v, self.lr_t, self.l2, self.clip)
        else:
            c.adam_rows(p.value, p.grad, m, v, rows, self.lr_t, self.l2, self.clip)


def make_optimizer(cfg, params, compute, n_train):
    """The optimizer that `OptType` names, with the config's hyperparameters."""
    common = dict(clip=cfg.ClipBound, lazy=cfg.LazyUpdate)
    if cfg.OptType == "sgd":
        return SGD(params, compute, cfg.LearningRate, cfg.DecayRate, n_train, **common)
    if cfg.OptType == "adagrad":
        return AdaGrad(params, compute, cfg.LearningRate, cfg.Eps, cfg.L2RegFactor, **common)
    return Adam(params, compute, cfg.LearningRate, cfg.L2RegFactor, **common)
