"""Networks: a generic stack of units, and the original's four (mlp, mlptop, mlprand, mlpvar)."""
import json

import numpy as np

from . import ops
from .layers import Dense, MaskedDense
from .params import ParamStore, StateDictError, check_state_keys, load_into, to_host
from .select import rule_for
from .tensor import Tensor


class Network:
    """A stack of units: hidden units with ReLU (and optional dropout), then a linear output
    unit whose logits feed softmax cross-entropy.

    `layers` are `Dense` or `MaskedDense` units, each with its own width and selection rule
    (None: ordinary backprop); `rng` is the generator of dropout (the units hold their own for
    random rules). The network owns its parameters in one flat store from construction on.
    """

    def __init__(self, layers, compute, rng, dropout=0.0):
        self.layers, self.compute, self.rng = list(layers), compute, rng
        self.dropout = dropout
        self.loss_grad = "sum"  # "mean": back-propagate the minibatch's mean loss instead
        self._rules = None      # the units' own selection rules while `dense_backward` is on
        # The model owns its parameters in one flat store from here on ("0.W", "0.b", ...).
        self.store = ParamStore(self.named_params(), compute.xp)

    def named_params(self):
        """(name, Tensor) for every parameter, layer by layer: "0.W", "0.b", "1.W", ..."""
        return [(f"{i}.{p.name}", p) for i, layer in enumerate(self.layers) for p in layer.params]

    @property
    def params(self):
        return [p for layer in self.layers for p in layer.params]

    @property
    def param_count(self):
        return sum(int(p.value.size) for p in self.params)

    @property
    def masked_layers(self):
        return [layer for layer in self.layers if isinstance(layer, MaskedDense)]

    def forward(self, flow, x, labels):
        """Logits' per-example losses and predictions for a minibatch (x: a raw array)."""
        h = Tensor(x, requires_grad=False)
        for layer in self.layers[:-1]:
            h = layer.activate(flow, h)
            if flow.training and self.dropout > 0:
                h = ops.dropout(flow, h, self.dropout, self.rng, self.compute)
        logits = self.layers[-1](flow, h)
        return ops.softmax_cross_entropy(flow, logits, labels, self.compute.xp,
                                         mean=self.loss_grad == "mean")

    def dense_backward(self, on):
        """Back-propagate every Dense unit densely (`on`), or through its own selection rule
        again: the switch of `DenseWarmup`. meSimp units keep their rule (their hit counts
        need it)."""
        if on and self._rules is None:
            self._rules = [layer.rule for layer in self.layers]
            for layer in self.layers:
                if not isinstance(layer, MaskedDense):
                    layer.rule = None
        elif not on and self._rules is not None:
            for layer, rule in zip(self.layers, self._rules):
                layer.rule = rule
            self._rules = None

    # -- state -----------------------------------------------------------------------------
    def state_dict(self):
        """Everything the network needs to continue a run exactly, as host arrays: the weights
        ("0.W", ...), each meSimp layer's active set, hit counts and example count
        ("0.active", "0.hits", "0.examples"), each compacted layer's neurons' places in the layer
        as built ("0.origin") and the network generator's state ("rng", a JSON string). Every
        value is a plain NumPy array (an .npz stores it without pickling). A compacted
        network's state loads into a network compacted to the same widths."""
        out = self.store.state_dict()
        for i, layer in self._masked_by_index():
            out[f"{i}.active"] = to_host(layer.active)
            out[f"{i}.hits"] = to_host(layer.hits)
            out[f"{i}.examples"] = np.array(layer.examples, dtype=np.int64)
            if getattr(layer, "origin", None) is not None:
                out[f"{i}.origin"] = to_host(layer.origin)
        out["rng"] = np.array(json.dumps(self.rng.bit_generator.state))
        return out

    def load_state_dict(self, state):
        """Copy a `state_dict` into this network in place; names and shapes must match."""
        xp = self.compute.xp
        extra = [f"{i}.{name}" for i, _ in self._masked_by_index()
                 for name in ("active", "hits", "examples")]
        compacted = [(i, layer) for i, layer in self._masked_by_index()
                     if getattr(layer, "origin", None) is not None]
        extra += [f"{i}.origin" for i, _ in compacted]
        check_state_keys("model", state, self.store.names + extra + ["rng"])
        try:
            rng_state = json.loads(str(np.asarray(state["rng"])))
            probe = type(self.rng.bit_generator)()
            probe.state = rng_state  # validates before the real generator is touched
        except (ValueError, TypeError, KeyError) as exc:
            raise StateDictError(f"model state: rng is not a generator state ({exc})") from None
        pairs = self.store.loading(state)
        for i, layer in self._masked_by_index():
            pairs += [(f"{i}.active", layer.active, state[f"{i}.active"]),
                      (f"{i}.hits", layer.hits, state[f"{i}.hits"]),
                      (f"{i}.examples", xp.zeros(()), state[f"{i}.examples"])]
        for i, layer in compacted:
            origin = np.asarray(state[f"{i}.origin"])
            if origin.dtype.kind not in "iu" or origin.ndim != 1 or (origin.size and (
                    origin.min() < 0 or origin.max() >= layer.n_total or (np.diff(origin) <= 0).any())):
                raise StateDictError(f"model state: {i}.origin is not an increasing list of "
                                     f"neurons below {layer.n_total}")
            pairs.append((f"{i}.origin", layer.origin, origin))
        load_into("model", pairs, xp)  # every shape checked before anything is copied
        for i, layer in self._masked_by_index():
            layer.mask[...] = layer.active
            layer.examples = int(np.asarray(state[f"{i}.examples"]))
        self.rng.bit_generator.state = rng_state

    def _masked_by_index(self):
        return [(i, layer) for i, layer in enumerate(self.layers) if isinstance(layer, MaskedDense)]

    def prune(self, fraction):
        for layer in self.masked_layers:
            layer.prune(fraction)

    def active_dims(self):
        """Active neurons per layer (hidden widths for unmasked layers, then the output)."""
        return [layer.active_count if isinstance(layer, MaskedDense) else layer.n_out
                for layer in self.layers]

    def dims(self):
        """`active(total)` for each masked layer, then the output width, as the log prints it."""
        parts = []
        for layer in self.layers:
            if isinstance(layer, MaskedDense):
                parts.append(f"{layer.active_count}({layer.n_total})")
            else:
                parts.append(str(layer.n_out))
        return ", ".join(parts)


class MLP(Network):
    """The original's networks, as a config describes them.

    The output layer always back-propagates densely; `NetType` decides the hidden layers:
    mlp dense, mlptop top-k, mlprand random-k, mlpvar masked top-k with pruning.
    """

    def __init__(self, cfg, n_in, compute, rng):
        self.cfg = cfg
        self.net_type = cfg.NetType
        sizes = [n_in] + [cfg.HiddenSize] * (cfg.Layers - 1) + [cfg.LabelCount]
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i == len(sizes) - 2 or self.net_type == "mlp":
                layers.append(Dense(a, b, rng, compute))
            else:
                rule = rule_for(self.net_type, cfg.TrainTop, cfg.Unified)
                unit = MaskedDense if self.net_type == "mlpvar" else Dense
                layers.append(unit(a, b, rng, compute, rule))
        super().__init__(layers, compute, rng, dropout=cfg.Dropout)
