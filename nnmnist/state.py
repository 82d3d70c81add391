"""What a run's state is, as named arrays and JSON: taking it from a Trainer and putting it back.

Arrays are the network's state dict under `net.` (`net.0.W`, `net.0.active`, `net.0.hits`,
`net.0.examples`, `net.rng`, ...) plus each compacted layer's `net.{i}.origin`, the
optimizer's under `opt.` (`opt.t`, `opt.m.0.W`, ...) and `train.order`, the shuffled example
order. Gradients are not stored: at a part boundary every gradient is zero.
"""
import numpy as np

from . import compact as compact_mod
from .checkpoint import to_host
from .errors import UserError


def is_masked(layer):
    return hasattr(layer, "active")


# ---------------------------------------------------------------- the network

def network_arrays(model):
    """The network's state dict (weights, meSimp's active sets, hits and example counts, the
    network generator), as `net.*` host arrays, and each compacted layer's `origin`."""
    arrays = {f"net.{k}": v for k, v in model.state_dict().items()}
    for i, layer in enumerate(model.layers):
        if getattr(layer, "origin", None) is not None:  # compacted: neurons' first places
            arrays[f"net.{i}.origin"] = to_host(layer.origin)
    return arrays


def network_meta(model):
    """Shapes: the input width, each layer's physical width and its width as built."""
    return {
        "n_in": int(model.layers[0].W.shape[1]),
        "widths": [int(layer.n_out) for layer in model.layers],
        "totals": [int(getattr(layer, "n_total", layer.n_out)) for layer in model.layers],
    }


def load_network(model, mf):
    """Copy a model file's network into `model` (built from the same config), shrinking its
    meSimp layers first if the file's were compacted."""
    net = mf.field("network")
    xp = model.compute.xp
    n_in = int(model.layers[0].W.shape[1])
    widths, totals = net.get("widths"), net.get("totals")
    if (net.get("n_in") != n_in or not isinstance(widths, list) or not isinstance(totals, list)
            or len(widths) != len(model.layers) or len(totals) != len(model.layers)):
        raise UserError(f"{mf.path}: field network = {widths} (n_in {net.get('n_in')}) "
                        f"does not fit a network with {len(model.layers)} layers and {n_in} inputs")
    masked = [i for i, layer in enumerate(model.layers) if is_masked(layer)]
    if any(int(widths[i]) != model.layers[i].n_out for i in masked):
        if any(not 0 < int(widths[i]) <= model.layers[i].n_out for i in masked):
            raise UserError(f"{mf.path}: field network.widths = {widths} does not fit the "
                            f"config's HiddenSize {model.cfg.HiddenSize}")
        compact_mod.resize(model, [int(widths[i]) for i in masked])
    state = {k[len("net."):]: v for k, v in mf.arrays.items()
             if k.startswith("net.") and not k.endswith(".origin")}
    try:
        model.load_state_dict(state)
    except UserError as exc:  # the state dict's own message, with the file's name
        raise UserError(f"{mf.path}: {exc}") from None
    for i in masked:
        layer = model.layers[i]
        layer.n_total = int(totals[i])
        if f"net.{i}.origin" in mf.arrays:
            origin = mf.array(f"net.{i}.origin", (layer.n_out,), np.int64)
            if layer.n_out and (origin.min() < 0 or origin.max() >= layer.n_total
                                or (np.diff(origin) <= 0).any()):
                raise UserError(f"{mf.path}: field net.{i}.origin is not an increasing "
                                f"list of neurons below {layer.n_total} (a damaged file)")
            layer.origin = xp.asarray(origin)


# ---------------------------------------------------------------- the optimizer

def optimizer_arrays(opt):
    """The optimizer's state dict (step counter, moments) as `opt.*` host arrays."""
    return {f"opt.{k}": v for k, v in opt.state_dict().items()}


def load_optimizer(opt, mf):
    state = {k[len("opt."):]: v for k, v in mf.arrays.items() if k.startswith("opt.")}
    try:
        opt.load_state_dict(state)
    except UserError as exc:
        raise UserError(f"{mf.path}: {exc}") from None
    opt.store.grad.fill(0)  # at a part boundary every gradient is zero


# ---------------------------------------------------------------- the run

class Position:
    """Where a run stands at a part boundary: the next (epoch, part), and the sums so far."""

    def __init__(self, epoch=0, part=0, epoch_time=(0.0, 0.0, 0.0), total_time=(0.0, 0.0, 0.0)):
        self.epoch, self.part = epoch, part
        self.epoch_time, self.total_time = list(epoch_time), list(total_time)


def capture(trainer, position):
    """(meta, arrays) of everything a run needs to continue exactly from `position`."""
    res = trainer.result
    meta = {
        "network": network_meta(trainer.model),
        "train": {
            "epoch": position.epoch, "part": position.part, "seed": int(trainer.seed),
            "best_dev": res.best_dev, "test_at_best": res.test_at_best,
            "epoch_time": position.epoch_time, "total_time": position.total_time,
            "data_rng": trainer.data_rng.bit_generator.state,
            "config_dir": getattr(trainer, "config_dir", None),
        },
    }
    arrays = {**network_arrays(trainer.model), **optimizer_arrays(trainer.opt),
              "train.order": np.array(trainer.order)}
    return meta, arrays


def restore(trainer, mf):
    """Put a checkpoint's state into a Trainer built from its config; return its Position."""
    train = mf.field("train")
    order = mf.array("train.order", trainer.order.shape, np.int64)
    if not np.array_equal(np.sort(order), np.arange(len(order))):
        raise UserError(f"{mf.path}: field train.order is not a permutation (a damaged file)")
    load_network(trainer.model, mf)
    load_optimizer(trainer.opt, mf)
    trainer.order[...] = order
    try:
        trainer.data_rng.bit_generator.state = train["data_rng"]
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"{mf.path}: field train.data_rng: {exc}") from None
    trainer.seed = int(train["seed"])
    trainer.result.best_dev = float(train["best_dev"])
    trainer.result.test_at_best = float(train["test_at_best"])
    return Position(int(train["epoch"]), int(train["part"]), train["epoch_time"], train["total_time"])
