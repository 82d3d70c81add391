"""The four networks of the original: mlp, mlptop, mlprand and mlpvar (meSimp)."""
from . import ops
from .layers import Dense, MaskedDense, Selector
from .tensor import Tensor


class MLP:
    """Hidden layers with ReLU (and optional dropout), then a linear output layer.

    The output layer always back-propagates densely; `NetType` decides the hidden layers:
    mlp dense, mlptop top-k, mlprand random-k, mlpvar masked top-k with pruning.
    """

    def __init__(self, cfg, n_in, compute, rng):
        self.cfg, self.compute, self.rng = cfg, compute, rng
        self.net_type = cfg.NetType
        sizes = [n_in] + [cfg.HiddenSize] * (cfg.Layers - 1) + [cfg.LabelCount]
        self.layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i == len(sizes) - 2:
                self.layers.append(Dense(a, b, rng, compute))
            elif self.net_type == "mlp":
                self.layers.append(Dense(a, b, rng, compute))
            else:
                mode = "rand" if self.net_type == "mlprand" else "top"
                sel = Selector(mode, cfg.TrainTop, cfg.Unified, compute, rng)
                unit = MaskedDense if self.net_type == "mlpvar" else Dense
                self.layers.append(unit(a, b, rng, compute, sel))

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
            if flow.training and self.cfg.Dropout > 0:
                h = ops.dropout(flow, h, self.cfg.Dropout, self.rng, self.compute)
        logits = self.layers[-1](flow, h)
        return ops.softmax_cross_entropy(flow, logits, labels, self.compute.xp)

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
