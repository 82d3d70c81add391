"""`nnmnist evaluate MODEL [--data DIR]`: score a model file on dev and test.

Prints the dev and test lines in the log's format. For a checkpoint or best-dev model the
network is rebuilt as training built it and scored by the same code, so a `.best.npz` gives
exactly the test accuracy of its run's last `$` line and the same `tst:` loss. A tagger's
file is scored per token on the dev and test CoNLL-U files its run read, coded with the
vocabulary the file keeps.
"""
import argparse
import dataclasses

from ..run import checkpoint
from ..errors import report_errors


def build_network(mf, cfg):
    """The model of a file, ready to score: the training network for a checkpoint or best
    model (its kernels and masks included), the plain inference model for an export."""
    from ..backends import get_compute
    from ..backends.cpu import NumpyCompute
    if mf.kind == "export":  # the tagger's too: its TaggerModel
        from .model import from_file
        return from_file(mf), NumpyCompute()
    from ..run.state import build_network as build_trained
    compute = get_compute(cfg.Backend, cfg.Kernels)
    return build_trained(mf, cfg, compute), compute


def evaluate_file(path, data_dir=None, log=print, backend=None):
    """Load a model file and its data (MNIST, or the tagger's dev and test CoNLL-U files),
    print the dev and test lines; return (dev, tst) Scores."""
    from ..backends import resolve_backend
    from ..data.mnist import load_mnist
    from ..run.training import evaluate
    mf = checkpoint.read(path)
    cfg = mf.config()
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, DataDir=str(data_dir))
    if backend is not None:
        cfg = dataclasses.replace(cfg, Backend=backend)
    resolve_backend(cfg.Backend)  # a GPU run's model on a machine without one: a one-line error
    if cfg.Backend != "gpu":
        from ..kernels import set_num_threads
        set_num_threads(cfg.Threads)  # the run's threads: BLAS then sums in the run's order
    if cfg.is_tagger:  # dev and test, coded with the vocabulary the file keeps
        from .tagging import split_paths, tagger_sets
        paths = split_paths(mf, cfg, data_dir)
        model, compute = build_network(mf, cfg)
        getattr(model, "tagger", model).loss_grad = cfg.LossGrad  # as the run scored
        sets = tagger_sets(paths, model)
    else:
        config_dir = mf.meta.get("train", {}).get("config_dir")
        given = ("DataDir",) if data_dir is not None else ()
        splits = load_mnist(checkpoint.data_config(mf, cfg, given), config_dir=config_dir, log=log)
        model, compute = build_network(mf, cfg)
        sets = (("dev", splits.dev_x, splits.dev_y), ("tst", splits.tst_x, splits.tst_y))
    xp = compute.xp
    scores = []
    for name, x, y in sets:
        score = evaluate(model, xp.asarray(x), xp.asarray(y), compute, cfg.MinibatchSize)
        log(f"\t {name}: {score.line()}")
        scores.append(score)
    return tuple(scores)


def main(argv=None, prog="nnmnist evaluate"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("model", help="a .ckpt.npz, .best.npz or exported model file")
    p.add_argument("--data", metavar="DIR", help="the MNIST folder, or the tagger's CoNLL-U folder "
                   "(default: where the run found its data)")
    p.add_argument("--backend", choices=("cpu", "gpu", "auto"),
                   help="where to compute (default: the run's Backend)")
    args = p.parse_args(argv)
    return report_errors(lambda: evaluate_file(args.model, args.data, backend=args.backend) and 0)

