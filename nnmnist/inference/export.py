"""`nnmnist export MODEL -o model.npz`: an inference-only, compacted model file.

MODEL is a checkpoint (`.ckpt.npz`) or a best-dev model (`.best.npz`). The export holds each
layer's weights with pruned meSimp neurons removed, under the training network's state-dict
names (`net.{i}.W`, shape (out, in), and `net.{i}.b`), the shapes and the run's config, and
no optimizer state.
"""
import argparse
from pathlib import Path

from ..run import checkpoint
from ..errors import UserError, report_errors
from .model import InferenceModel, compacted_layers


def export(src, dest):
    """Write the compacted model of `src` to `dest`; return (the widths the network was built
    with, the exported widths)."""
    mf = checkpoint.read(src, kinds=("checkpoint", "best"))
    model = InferenceModel(compacted_layers(mf))
    net = mf.field("network")
    arrays = checkpoint.flatten(checkpoint.NET, model.state_dict())
    widths = model.widths
    meta = {"config": mf.meta["config"],
            "network": {"n_in": int(net["n_in"]), "widths": widths,
                        "totals": net.get("totals", widths)},
            "source": Path(src).name}
    dest = Path(dest)
    if not dest.parent.is_dir():
        raise UserError(f"{dest}: folder {dest.parent} does not exist")
    try:
        checkpoint.save(dest, "export", meta, arrays)
    except OSError as exc:
        raise UserError(f"{dest}: cannot write ({exc.strerror})") from None
    return net.get("totals", net["widths"]), widths


def main(argv=None, prog="nnmnist export"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("model", help="a .ckpt.npz checkpoint or a .best.npz model")
    p.add_argument("-o", "--output", required=True, help="the exported model file (.npz)")
    args = p.parse_args(argv)

    def run():
        before, after = export(args.model, args.output)
        print(f"exported {args.model} -> {args.output}: layer widths {after} (built as {before})")
        return 0
    return report_errors(run)

