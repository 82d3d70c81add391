"""A trained network for inference: `nnmnist.load_model(path)` and what it returns.

    import nnmnist
    model = nnmnist.load_model("mlpvar-...-log-....best.npz")
    labels = model.predict(images)        # uint8 or float, (n, 784) or (n, 28, 28)
    probs = model.predict_proba(images)   # (n, 10), rows sum to 1

Any model file works: a checkpoint (`.ckpt.npz`), a best-dev model (`.best.npz`) or an
exported one (`nnmnist.inference.export`). Pruned meSimp neurons are dropped on loading, so
the model computes only what the active neurons need. A tagger's file gives a
`tagging.TaggerModel`, whose `predict` takes sentences (lists of tokens) and gives their tags.
"""
import numpy as np

from ..run import checkpoint
from ..errors import UserError


def as_input(images, n_in):
    """Images as float32 (n, n_in): uint8 pixels are scaled to [0, 1] as the training data
    are; float pixels are taken as already scaled. (n, 28, 28) is flattened row by row."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x.reshape(len(x), -1)
    if x.ndim != 2 or x.shape[1] != n_in:
        raise ValueError(f"images must have shape (n, {n_in}) or (n, 28, 28), not {np.shape(images)}")
    if x.dtype == np.uint8:
        out = x.astype(np.float32)
        out /= np.float32(255)
        return out
    if x.dtype.kind != "f":
        # Other integer types are refused rather than guessed at: 0..255 pixels taken as
        # already scaled would be scored confidently and wrongly.
        raise ValueError(f"images must be uint8 (0..255) or floating point (0..1), not {x.dtype}; "
                         "convert with .astype(np.uint8) or scale to floats")
    return np.ascontiguousarray(x, dtype=np.float32)


class InferenceModel:
    """ReLU hidden layers and a linear output, as plain float32 NumPy; no training state."""

    xp = np

    def __init__(self, layers, config=None, path=None):
        self.layers = [(np.ascontiguousarray(W, np.float32), np.ascontiguousarray(b, np.float32))
                       for W, b in layers]
        self.config, self.path = config, path

    @property
    def n_in(self):
        return self.layers[0][0].shape[1]

    @property
    def widths(self):
        return [W.shape[0] for W, _ in self.layers]

    def state_dict(self):
        """The weights under the training network's names: {"0.W", "0.b", "1.W", ...}."""
        return {f"{i}.{name}": a for i, (W, b) in enumerate(self.layers)
                for name, a in (("W", W), ("b", b))}

    @property
    def param_count(self):
        return sum(W.size + b.size for W, b in self.layers)

    def _logits(self, x):
        h = x
        for i, (W, b) in enumerate(self.layers):
            h = np.ascontiguousarray((W @ h.T).T)  # as the training code's x @ W.T
            h += b
            if i < len(self.layers) - 1:
                np.maximum(h, 0, out=h)
        return h

    def logits(self, images, batch=1000):
        """The output layer's values for each image, (n, classes), in batches of `batch`."""
        x = as_input(images, self.n_in)
        parts = [self._logits(x[i:i + batch]) for i in range(0, len(x), batch)]
        return np.concatenate(parts) if parts else np.zeros((0, self.widths[-1]), np.float32)

    def predict_proba(self, images, batch=1000):
        """Softmax probabilities, (n, classes)."""
        z = self.logits(images, batch)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, images, batch=1000):
        """The most probable label of each image, (n,) int64."""
        return self.logits(images, batch).argmax(axis=1)

    def forward(self, flow, x, labels):
        """Per-example losses and predictions, the interface `train.evaluate` scores with."""
        z = self._logits(x)
        z = z - z.max(axis=1, keepdims=True)
        s = np.exp(z).sum(axis=1)
        rows = np.arange(len(z))
        return np.log(s) - z[rows, labels], z.argmax(axis=1)


def compacted_layers(mf):
    """(W, b) per layer of a checkpoint or best model, with inactive neurons removed: the run's
    network is rebuilt from the file's config and loaded with its state dict, then each masked
    layer keeps its active rows (and the next layer the matching columns)."""
    from ..backends.cpu import NumpyCompute
    from ..run.state import build_network
    model = build_network(mf, mf.config(), NumpyCompute())
    layers, keep_prev = [], None
    for layer in model.layers:
        W, b = layer.W.value, layer.b.value
        if keep_prev is not None:
            W = W[:, keep_prev]
        keep_prev = None
        active = getattr(layer, "active", None)
        if active is not None and active.any() and not active.all():
            keep_prev = np.flatnonzero(active)
            W, b = W[keep_prev], b[keep_prev]
        elif active is not None and not active.any():
            W, b = W * 0, b * 0  # every neuron pruned: the layer outputs zeros
        layers.append((W, b))
    return layers


def exported_layers(mf):
    """(W, b) per layer of an exported model: the weights of its state dict (`net.{i}.W`,
    `net.{i}.b`), checked against the stored widths."""
    widths = mf.field("network").get("widths", [])
    n_in = mf.field("network").get("n_in")
    if not isinstance(widths, list) or not widths:
        raise UserError(f"{mf.path}: field network.widths is empty (a damaged file)")
    state = checkpoint.section(mf.arrays, checkpoint.NET)
    expected = [f"{i}.{p}" for i in range(len(widths)) for p in ("W", "b")]
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise UserError(f"{mf.path}: field {checkpoint.NET}{unexpected[0]} is not part of an "
                        f"exported model (a damaged or foreign file)")
    layers = []
    for i, n in enumerate(widths):
        layers.append((mf.array(f"{checkpoint.NET}{i}.W", (n, n_in), np.float32),
                       mf.array(f"{checkpoint.NET}{i}.b", (n,), np.float32)))
        n_in = n
    return layers


def from_file(mf):
    """The InferenceModel of a checked model file (see `checkpoint.read`); for the tagger's
    files its TaggerModel (`inference.tagging`)."""
    from . import tagging
    if tagging.is_tagger_file(mf):
        return tagging.from_file(mf)
    layers = exported_layers(mf) if mf.kind == "export" else compacted_layers(mf)
    return InferenceModel(layers, config=mf.meta.get("config"), path=mf.path)


def load_model(path):
    """Load any nnmnist model file (checkpoint, best-dev or exported) for inference."""
    return from_file(checkpoint.read(path))
