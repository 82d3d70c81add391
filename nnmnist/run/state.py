"""What a run's state is, as named arrays and JSON: taking it from a Trainer and putting it back.

Arrays are the network's state dict (`Network.state_dict()`: weights, meSimp's active sets,
hits, example counts and compacted layers' origins, the network generator) under `net.`, the
optimizer's (`Optimizer.state_dict()`: step counter and moments) under `opt.`, and
`train.order`, the shuffled example order (see `checkpoint` for the prefixes). Gradients are
not stored: at a part boundary every gradient is zero.
"""
import numpy as np

from ..nn import compact as compact_mod
from .checkpoint import NET, OPT, TRAIN, as_float, flatten, section
from ..errors import UserError


def is_masked(layer):
    return hasattr(layer, "active")


# ---------------------------------------------------------------- the network

def network_arrays(model):
    """The network's state dict as `net.*` host arrays."""
    return flatten(NET, model.state_dict())


def network_meta(model):
    """Shapes: the input width, each layer's physical width and its width as built (the
    tagger: its own `meta()`, with "kind": "tagger")."""
    if getattr(model, "kind", None) == "tagger":
        return model.meta()
    return {
        "n_in": int(model.layers[0].W.shape[1]),
        "widths": [int(layer.n_out) for layer in model.layers],
        "totals": [int(getattr(layer, "n_total", layer.n_out)) for layer in model.layers],
    }


def load_network(model, mf):
    """Load a model file's network state into `model` (built from the same config): its meSimp
    layers are first compacted to the file's widths if the file's were, then the state dict is
    copied in place (`Network.load_state_dict`)."""
    net = mf.field("network")
    if getattr(model, "kind", None) == "tagger":
        return _load_tagger(model, mf, net)
    n_in = int(model.layers[0].W.shape[1])
    widths, totals = net.get("widths"), net.get("totals")
    if (net.get("n_in") != n_in or not isinstance(widths, list) or not isinstance(totals, list)
            or len(widths) != len(model.layers) or len(totals) != len(model.layers)):
        raise UserError(f"{mf.path}: field network = {widths} (n_in {net.get('n_in')}) "
                        f"does not fit a network with {len(model.layers)} layers and {n_in} inputs")
    masked = [i for i, layer in enumerate(model.layers) if is_masked(layer)]
    if any(totals[i] != model.layers[i].n_total for i in masked):
        raise UserError(f"{mf.path}: field network.totals = {totals} does not fit the "
                        f"config's HiddenSize {model.cfg.HiddenSize}")
    if any(int(widths[i]) != model.layers[i].n_out for i in masked):
        if any(not 0 < int(widths[i]) <= model.layers[i].n_out for i in masked):
            raise UserError(f"{mf.path}: field network.widths = {widths} does not fit the "
                            f"config's HiddenSize {model.cfg.HiddenSize}")
        compact_mod.resize(model, [int(widths[i]) for i in masked])
    try:
        model.load_state_dict(section(mf.arrays, NET))
    except UserError as exc:  # the state dict's own message, with the file's name
        raise UserError(f"{mf.path}: {exc}") from None


def _load_tagger(model, mf, net):
    if net != model.meta():
        raise UserError(f"{mf.path}: field network = {net} does not fit the tagger the config "
                        f"builds ({model.meta()})")
    try:
        model.load_state_dict(section(mf.arrays, NET))
    except UserError as exc:
        raise UserError(f"{mf.path}: {exc}") from None


def build_network(mf, cfg, compute):
    """The training network of a checkpoint or best model, built as its run built it and
    loaded with the file's state (the tagger with the vocabulary the file holds)."""
    from ..nn.networks import MLP
    if cfg.is_tagger:
        from ..nn.lstm import Tagger
        vocab = tuple(str(w) for w in mf.array(NET + "vocab").tolist())
        model = Tagger(cfg, vocab, compute, np.random.default_rng(0))
        load_network(model, mf)
        return model
    n_in = int(mf.field("network").get("n_in", 0))
    model = MLP(cfg, n_in, compute, np.random.default_rng(0))
    load_network(model, mf)
    return model


# ---------------------------------------------------------------- the optimizer

def optimizer_arrays(opt):
    """The optimizer's state dict (step counter, moments) as `opt.*` host arrays."""
    return flatten(OPT, opt.state_dict())


def load_optimizer(opt, mf):
    try:
        opt.load_state_dict(section(mf.arrays, OPT))
    except UserError as exc:
        raise UserError(f"{mf.path}: {exc}") from None
    opt.store.grad.fill(0)  # at a part boundary every gradient is zero


# ---------------------------------------------------------------- the run

class Position:
    """Where a run stands at a part boundary: the next (epoch, part), and the sums so far."""

    def __init__(self, epoch=0, part=0, epoch_time=(0.0, 0.0, 0.0), total_time=(0.0, 0.0, 0.0)):
        self.epoch, self.part = epoch, part
        self.epoch_time, self.total_time = list(epoch_time), list(total_time)


def data_places(trainer):
    """Where the run found its data: the config's folder, the folder the run started in and
    DataDir as an absolute folder (`checkpoint.data_config` reads them back)."""
    return {name: getattr(trainer, name, None) for name in ("config_dir", "work_dir", "data_dir")}


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
            **data_places(trainer),
        },
    }
    arrays = {**network_arrays(trainer.model), **optimizer_arrays(trainer.opt),
              TRAIN + "order": np.array(trainer.order)}
    return meta, arrays


def restore(trainer, mf):
    """Put a checkpoint's state into a Trainer built from its config; return its Position."""
    train = mf.field("train")
    order = mf.array(TRAIN + "order", trainer.order.shape, np.int64)
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
    trainer.result.best_dev = as_float(train["best_dev"])
    trainer.result.test_at_best = as_float(train["test_at_best"])
    position = Position(int(train["epoch"]), int(train["part"]),
                        [as_float(x) for x in train["epoch_time"]],
                        [as_float(x) for x in train["total_time"]])
    # the whole epochs before the checkpoint and their times: a summary written before the
    # resumed run trains again (an interrupt while it starts) counts them too
    res = trainer.result
    res.epochs = position.epoch
    res.total.fp, res.total.bp, res.total.update = position.total_time
    return position
