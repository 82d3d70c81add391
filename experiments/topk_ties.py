"""How often top-k's tie-breaking can matter to mlptop: a census over a real training run.

    python experiments/topk_ties.py [--k 20] [--minibatch 10] [--epochs 1] [--seed 1]
                                    [--set Field=value ...]

Trains mlptop as `run.py` would (default config, Adam) with every hidden layer's top-k
replaced by the same top-k that also inspects each row of dy it selects from. For a row, the
k-th and (k+1)-th largest |dy| decide whether the tie rule can change anything:

- they differ: every rule keeps the same k entries;
- they are equal and 0 ("zero fill": the row has fewer than k non-zero entries): the rules
  may keep different zero entries, which add nothing to dx, dW or the bias, so mlptop's
  gradients are the same (meSimp's hit counts are not: docs/ORIGINAL.md §11.3);
- they are equal and non-zero: the rules may keep different entries of equal magnitude, and
  mlptop's gradient changes. These rows are counted, and for each the original's min-heap
  (`tests/naive.py::heap_topk_row`) is run to see whether it keeps another set, and at what
  |dy| (most such ties are between float32 denormals, from examples the network already
  classifies with a probability of 1 in float32, whose entries move no weight).

Prints one line of counts per hidden layer. The selections are those of the plain NumPy
path (a subclass of `TopK` never takes the fused kernels), so the run's figures differ from a
`run.py` run's in the last float32 digits, as between two thread counts.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from nnmnist.run import config as config_mod  # noqa: E402
from nnmnist.run.command import parse_override  # noqa: E402
from nnmnist.data.mnist import load_mnist  # noqa: E402
from nnmnist.errors import report_errors  # noqa: E402
from nnmnist.run.log import RunLog  # noqa: E402
from nnmnist.nn.select import TopK  # noqa: E402
from nnmnist.run.training import Trainer  # noqa: E402
from naive import heap_topk_row  # noqa: E402


# A tied |dy| below this moves no weight: Adam's step is about lr m / (sqrt(v) + 1e-8), and an
# entry this small changes m, and so a weight, by far less than float32 resolves.
SMALL = 1e-20


class CensusTopK(TopK):
    """TopK that counts, per row of dy, whether its k-th place is tied and with what."""

    def __init__(self, k):
        super().__init__(k)
        self.rows = self.zero_fill = self.nonzero_tie = self.heap_differs = 0
        self.differing = []  # the tied |dy| of each row where the heap keeps another set

    def __call__(self, dy, compute, rng):
        selection = super().__call__(dy, compute, rng)
        a = np.abs(dy)
        k = self.k
        if k < a.shape[1]:
            part = -np.partition(-a, (k - 1, k), axis=1)
            kth, nxt = part[:, k - 1], part[:, k]
            tied = kth == nxt
            self.rows += a.shape[0]
            self.zero_fill += int((tied & (kth == 0)).sum())
            for b in np.flatnonzero(tied & (kth > 0)):
                self.nonzero_tie += 1
                ours = set(selection.chosen[b].tolist())
                if set(heap_topk_row(a[b], k)) != ours:
                    self.heap_differs += 1
                    self.differing.append(float(kth[b]))
        return selection


def main(argv=None):
    return report_errors(_main, argv)


def _main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--minibatch", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="Field=value")
    args = ap.parse_args(argv)
    overrides = dict(NetType="mlptop", TrainTop=args.k, MinibatchSize=args.minibatch,
                     MaxEpoch=args.epochs, RandomSeed=args.seed, Kernels="numpy")
    overrides.update(dict(parse_override(s) for s in args.set))
    cfg = config_mod.load(ROOT / "configs" / "default.json", overrides)
    data = load_mnist(cfg, config_dir=ROOT / "configs", log=lambda *a, **k: None)
    trainer = Trainer(cfg, data)
    rules = []
    for layer in trainer.model.layers[:-1]:
        layer.rule = CensusTopK(args.k)
        rules.append(layer.rule)
    result = trainer.train(RunLog(console=False))
    print(f"mlptop k={args.k}, minibatch {args.minibatch}, {args.epochs} epoch(s), seed {args.seed}: "
          f"best dev {result.best_dev:.2f}, test at best dev {result.test_at_best:.2f}")
    for i, r in enumerate(rules):
        tied = np.array(r.differing)
        print(f"hidden layer {i}: {r.rows} rows; k-th place tied at 0 (zero fill): {r.zero_fill} "
              f"({100 * r.zero_fill / max(r.rows, 1):.2f} %); tied at a non-zero |dy|: "
              f"{r.nonzero_tie}; of those, the heap keeps another set: {r.heap_differs}, "
              f"{int((tied >= SMALL).sum())} of them at |dy| >= {SMALL:g}"
              + (f" (largest tied |dy| {tied.max():.3g})" if tied.size else ""))


if __name__ == "__main__":
    sys.exit(main())
