"""What a run's state is, as named arrays and JSON: taking it from a Trainer and putting it back.

Arrays are named `net.{layer}.{W,b,active,hits}` for the network, `opt.{param}.{m,v,h}` for
the optimizer's moments (parameters in the network's order) and `train.order` for the shuffled
example order. Gradients are not stored: at a part boundary every gradient is zero.
"""
import numpy as np

from . import compact as compact_mod
from .checkpoint import to_host
from .errors import UserError


def is_masked(layer):
    return hasattr(layer, "active")


# ---------------------------------------------------------------- the network

def network_arrays(model):
    """Host copies of the network's weights, and for meSimp's layers their active sets and hits."""
    arrays = {}
    for i, layer in enumerate(model.layers):
        arrays[f"net.{i}.W"] = to_host(layer.W.value)
        arrays[f"net.{i}.b"] = to_host(layer.b.value)
        if is_masked(layer):
            arrays[f"net.{i}.active"] = to_host(layer.active)
            arrays[f"net.{i}.hits"] = to_host(layer.hits)
    return arrays


def network_meta(model):
    """Shapes and counters: input width, physical and built widths, meSimp's example counts."""
    return {
        "n_in": int(model.layers[0].W.shape[1]),
        "widths": [int(layer.n_out) for layer in model.layers],
        "totals": [int(getattr(layer, "n_total", layer.n_out)) for layer in model.layers],
        "reference": [int(layer.reference) if is_masked(layer) else 0 for layer in model.layers],
    }


def load_network(model, opt, mf):
    """Copy a model file's network into `model` (built from the same config), shrinking its
    meSimp layers first if the file's were compacted. `opt` may be None (no training state)."""
    net = mf.field("network")
    xp = model.compute.xp
    n_in = int(model.layers[0].W.shape[1])
    if net.get("n_in") != n_in or len(net.get("widths", ())) != len(model.layers):
        raise UserError(f"{mf.path}: field network = {net.get('widths')} (n_in {net.get('n_in')}) "
                        f"does not fit a network with {len(model.layers)} layers and {n_in} inputs")
    widths = [int(w) for w in net["widths"]]
    masked = [i for i, layer in enumerate(model.layers) if is_masked(layer)]
    if any(widths[i] != model.layers[i].n_out for i in masked):
        compact_mod.resize(model, opt, [widths[i] for i in masked])
    for i, layer in enumerate(model.layers):
        for name, p in (("W", layer.W), ("b", layer.b)):
            a = mf.array(f"net.{i}.{name}", p.shape, np.float32)
            p.value[...] = xp.asarray(a.astype(p.value.dtype, copy=False))
        if is_masked(layer):
            active = mf.array(f"net.{i}.active", (layer.n_out,), bool)
            hits = mf.array(f"net.{i}.hits", (layer.n_out,), np.int64)
            layer.active[...] = xp.asarray(active)
            layer.mask[...] = layer.active
            layer.hits[...] = xp.asarray(hits)
            layer.reference = int(net["reference"][i])
            layer.n_total = int(net["totals"][i])


# ---------------------------------------------------------------- the optimizer

def optimizer_arrays(opt):
    return {f"opt.{j}.{name}": to_host(s)
            for j, p in enumerate(opt.params) for name, s in p.state.items()}


def load_optimizer(opt, mf):
    xp = opt.compute.xp
    for j, p in enumerate(opt.params):
        for name in opt.state_names:
            a = mf.array(f"opt.{j}.{name}", p.shape, np.float32)
            p.state[name][...] = xp.asarray(a)
        p.grad[...] = 0
        p.touched = None
    opt.t = int(mf.field("optimizer")["t"])


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
        "optimizer": {"t": int(trainer.opt.t)},
        "train": {
            "epoch": position.epoch, "part": position.part, "seed": int(trainer.seed),
            "best_dev": res.best_dev, "test_at_best": res.test_at_best,
            "epoch_time": position.epoch_time, "total_time": position.total_time,
            "data_rng": trainer.data_rng.bit_generator.state,
            "net_rng": trainer.net_rng.bit_generator.state,
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
    load_network(trainer.model, trainer.opt, mf)
    load_optimizer(trainer.opt, mf)
    trainer.order[...] = order
    try:
        trainer.data_rng.bit_generator.state = train["data_rng"]
        trainer.net_rng.bit_generator.state = train["net_rng"]
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"{mf.path}: field train.data_rng / train.net_rng: {exc}") from None
    trainer.seed = int(train["seed"])
    trainer.result.best_dev = float(train["best_dev"])
    trainer.result.test_at_best = float(train["test_at_best"])
    return Position(int(train["epoch"]), int(train["part"]), train["epoch_time"], train["total_time"])
