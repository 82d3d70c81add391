"""A network the JSON config cannot express, trained on MNIST through nnmnist's public API.

Four hidden layers of different widths, each with its own k: per-example top-k (meProp) on
the first two, unified top-k (one column set per minibatch) on the last two, and a dense
output layer. The run logs to the console in the usual format; the config supplies the
training settings (optimizer, minibatch, epochs, parts, seed). Its network fields (HiddenSize,
Layers, TrainTop, shown in the log's header) describe the JSON network and are not used here.

    python examples/custom_network.py --epochs 1 --data /path/to/mnist
    python examples/custom_network.py --epochs 1 --limit 5000   # a quick look
"""
import argparse
import sys

import numpy as np

from nnmnist import (Config, Dense, Network, RunLog, TopK, UnifiedTopK, UserError, get_compute,
                     load_mnist, train)

WIDTHS = [784, 600, 400, 300, 200]
RULES = [TopK(60), TopK(40), UnifiedTopK(30), UnifiedTopK(20)]


def build(compute, rng):
    """784-600-400-300-200-10: one Dense unit per hidden layer, each with its own rule."""
    layers = [Dense(n_in, n_out, rng, compute, rule)
              for n_in, n_out, rule in zip(WIDTHS, WIDTHS[1:], RULES)]
    layers.append(Dense(WIDTHS[-1], 10, rng, compute))  # the output layer: ordinary backprop
    return Network(layers, compute, rng)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--parts", type=int, default=4, help="parts per epoch (dev checks)")
    p.add_argument("--limit", type=int, default=0, help="train on the first N examples only")
    p.add_argument("--data", default="", help="folder of the MNIST files (default: data/)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    cfg = Config(NetType="mlptop", OptType="adam", LearningRate=0.001, MinibatchSize=50,
                 MaxEpoch=args.epochs, IterPerEpoch=args.parts, RandomSeed=args.seed,
                 DataDir=args.data)
    data = load_mnist(cfg)
    if args.limit:
        data = data._replace(trn_x=data.trn_x[:args.limit], trn_y=data.trn_y[:args.limit])
    compute = get_compute(cfg.Backend, cfg.Kernels)
    network = build(compute, np.random.default_rng(args.seed))
    with RunLog(console=not args.quiet) as log:
        network, summary = train(cfg, data=data, network=network, compute=compute, log=log)
    print(f"{summary.param_count} parameters; best dev accuracy {summary.best_dev:.2f}, "
          f"test accuracy at it {summary.test_at_best:.2f}")
    return network, summary


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # a bad argument or missing data: one line, as run.py does
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
