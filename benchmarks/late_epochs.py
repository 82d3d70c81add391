"""Backprop time over several epochs of one run: does it stay flat as training goes on?

    python benchmarks/late_epochs.py [--net mlptop] [--k 20] [--minibatch 10] [--epochs 4]

`epoch_bench.py` times the first epoch of a fresh network. Later epochs see different
gradients (sparser, with many exact zeros and ties), and a selection algorithm can behave
differently on them: a quickselect-based top-k once went from 1.0 s to 4.6 s of backprop an
epoch by the fourth epoch here. This prints fp/bp/update per epoch so that such a drift shows.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nnmnist  # noqa: E402,F401  (thread-runtime defaults before NumPy loads)

from epoch_bench import find_mnist  # noqa: E402
from nnmnist.run.config import Config  # noqa: E402
from nnmnist.kernels import set_num_threads  # noqa: E402
from nnmnist.run.training import Timer, Trainer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="mlptop")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--minibatch", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_num_threads(args.threads)
    cfg = Config(NetType=args.net, TrainTop=args.k, MinibatchSize=args.minibatch, RandomSeed=1)
    trainer = Trainer(cfg, find_mnist())
    trainer.compute.warmup()
    print(f"{cfg.run_name()}, {args.threads} thread(s)")
    for epoch in range(args.epochs):
        trainer.data_rng.shuffle(trainer.order)
        t = Timer()
        trainer.train_part(trainer.order, t, f"epoch {epoch}")
        print(f"epoch {epoch}: fp {t.fp:.2f} s, bp {t.bp:.2f} s, update {t.update:.2f} s", flush=True)


if __name__ == "__main__":
    main()
