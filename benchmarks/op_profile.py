"""Where a backward step's time goes: each recorded op's backward, timed inside training.

    python benchmarks/op_profile.py [--net mlptop] [--k 20] [--minibatch 10] [--unified] \
        [--lazy] [--hidden 500]

Trains a fresh network for a while (after warm-up minibatches) and prints, per training step,
the fp/bp/update times and the time of each kind of recorded backward (for example the
fused hidden units against the output layer's matmul and the softmax). Unlike a kernel
benchmark this sees the caches as training leaves them: the optimizer's pass over every
weight, gradient and moment runs between two backward passes.
"""
import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nnmnist  # noqa: E402,F401  (thread-runtime defaults before NumPy loads)

from epoch_bench import find_mnist  # noqa: E402
from nnmnist.nn import tensor  # noqa: E402
from nnmnist.run.config import Config  # noqa: E402
from nnmnist.kernels import set_num_threads  # noqa: E402
from nnmnist.run.training import Timer, Trainer  # noqa: E402


def timed_backward(totals):
    """A Flow.backward that adds each recorded closure's time to totals[its op's name]."""
    def backward(flow):
        for fn in reversed(flow._tape):
            t0 = time.perf_counter()
            fn()
            totals[fn.__qualname__.split(".")[0]] += time.perf_counter() - t0
        flow._tape.clear()
    return backward


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="mlptop")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--minibatch", type=int, default=10)
    ap.add_argument("--unified", action="store_true")
    ap.add_argument("--examples", type=int, default=20000, help="training examples timed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=500, help="HiddenSize")
    ap.add_argument("--lazy", action="store_true", help="LazyUpdate")
    args = ap.parse_args()
    set_num_threads(args.threads)
    cfg = Config(NetType=args.net, TrainTop=args.k, MinibatchSize=args.minibatch,
                 Unified=args.unified, RandomSeed=1, HiddenSize=args.hidden,
                 LazyUpdate=args.lazy)
    trainer = Trainer(cfg, find_mnist())
    trainer.compute.warmup()
    trainer.data_rng.shuffle(trainer.order)
    trainer.train_part(trainer.order[:5 * args.minibatch], Timer(), "warm-up")
    totals = collections.defaultdict(float)
    tensor.Flow.backward = timed_backward(totals)
    steps = args.examples // args.minibatch
    timer = Timer()
    trainer.train_part(trainer.order[:steps * args.minibatch], timer, "profile")
    us = 1e6 / steps
    print(f"{cfg.run_name()}, {args.threads} thread(s), {steps} steps; us a step: "
          f"fp {timer.fp * us:.1f}, bp {timer.bp * us:.1f}, update {timer.update * us:.1f}")
    for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  backward of {name:24s} {seconds * us:8.1f}")


if __name__ == "__main__":
    main()
