"""`nnmnist export MODEL -o model.npz`: an inference-only, compacted model file.

MODEL is a checkpoint (`.ckpt.npz`) or a best-dev model (`.best.npz`). The export holds each
layer's weights with pruned meSimp neurons removed, under the training network's state-dict
names (`net.{i}.W`, shape (out, in), and `net.{i}.b`), the shapes and the run's config, and
no optimizer state. A tagger's export holds its weights under their training names
(`net.embed.W`, `net.fwd.Wx`, ..., `net.out.b`), its vocabulary (`net.vocab`) and the tag list
(`net.tags`); it has no neurons to remove.
"""
import argparse
from pathlib import Path

from ..run import checkpoint
from ..errors import UserError, report_errors
from . import tagging
from .model import InferenceModel, compacted_layers


def export(src, dest):
    """Write the compacted model of `src` to `dest`; return (the widths the network was built
    with, the exported widths); for the tagger, which has nothing to compact, (None, widths)."""
    mf = checkpoint.read(src, kinds=("checkpoint", "best"))
    net = mf.field("network")
    if tagging.is_tagger_file(mf):
        network, arrays = tagging.export_arrays(mf)
        widths, before = network_widths(network), None
    else:
        model = InferenceModel(compacted_layers(mf))
        arrays = checkpoint.flatten(checkpoint.NET, model.state_dict())
        widths = model.widths
        network = {"n_in": int(net["n_in"]), "widths": widths,
                   "totals": net.get("totals", widths)}
        before = net.get("totals", net["widths"])
    meta = {"config": mf.meta["config"], "network": network, "source": Path(src).name}
    dest = Path(dest)
    if not dest.parent.is_dir():
        raise UserError(f"{dest}: folder {dest.parent} does not exist")
    try:
        checkpoint.save(dest, "export", meta, arrays)
    except OSError as exc:
        raise UserError(f"{dest}: cannot write ({exc.strerror})") from None
    return before, widths


def network_widths(network):
    """A tagger's widths for the export's message: embedding, each LSTM direction, tags."""
    return [network["embed"], network["hidden"], network["hidden"], network["tags"]]


def main(argv=None, prog="nnmnist export"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("model", help="a .ckpt.npz checkpoint or a .best.npz model")
    p.add_argument("-o", "--output", required=True, help="the exported model file (.npz)")
    args = p.parse_args(argv)

    def run():
        before, after = export(args.model, args.output)
        built = "" if before is None else f" (built as {before})"  # the tagger: no pruning
        print(f"exported {args.model} -> {args.output}: layer widths {after}{built}")
        return 0
    return report_errors(run)

