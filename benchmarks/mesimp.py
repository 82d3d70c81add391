"""meSimp compaction: what a pruned network costs to train and to use, against the full one.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/mesimp.py \\
        [--checkpoint RUN.ckpt.npz] [--repeats 3] [--threads 1]

1. Training. An epoch (55,000 examples; fp + bp + update, evaluation not timed) of three
   contenders, alternating within each repeat, medians quoted:
   - mlp: the full 784-500-500-10 network, ordinary backprop;
   - mlpvar compacted: meSimp (k=160, Prune 0.1, TrainCycle 5, the default mlpvar config)
     with its pruned neurons removed;
   - mlpvar masked: the same weights in full-size arrays with the pruned neurons masked
     (Compact false, what every mlpvar run cost before compaction).
   - mlp, hidden 8: mlp at HiddenSize 8, whose epoch is almost only the cost per minibatch
     that does not shrink with the network (Python, op calls, gathering the examples).
   Wall-clock seconds (what the log's `Time:` line sums) and the process's CPU seconds over
   the whole epoch (all threads; the data gathering included) are both given: on a busy
   machine the wall clock also counts the time other processes held the core.
   The meSimp network is the one a real run reaches: by default this script trains the first
   simplify cycle (TrainCycle epochs of the default mlpvar config, seed 1); with --checkpoint
   it starts from a run's checkpoint (for example the one a 20-epoch run leaves).
2. Adam on denormal moments. One update step of the meSimp network's optimizer on the state
   the run left (its moments hold float32 denormals), against the same step with those
   moments flushed to zero beforehand (medians of 200 steps, each from the same state and
   gradient), and whether the two give the same weights.
3. Decoding. Scoring the 10,000 test images in batches of 1,000 with the exported model
   (`nnmnist.inference.export`: compacted, inference only) against the unpruned 784-500-500-10 model,
   alternating, medians over 9 repeats; and the two models' parameter counts.

The contenders share this script's process (the meSimp network is trained or loaded once),
alternating within each repeat, the order reversed every other repeat (`harness.alternate`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

sys.path.insert(0, str(harness.REPO))

import nnmnist  # noqa: E402,F401  (sets the thread runtimes' wait policy before NumPy loads)

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from nnmnist.run import checkpoint  # noqa: E402
from nnmnist.run.config import Config, from_dict  # noqa: E402
from nnmnist.inference.export import export  # noqa: E402
from nnmnist.inference.model import InferenceModel, load_model  # noqa: E402
from nnmnist.run.log import RunLog  # noqa: E402
from nnmnist.run.state import Position, capture, restore  # noqa: E402
from nnmnist.nn.tensor import Flow  # noqa: E402
from nnmnist.run.training import Timer, Trainer  # noqa: E402

MLPVAR = dict(NetType="mlpvar", TrainTop=160, Prune=0.1, TrainCycle=5)


def simplified_trainer(splits, ckpt):
    """A compacted mlpvar Trainer in the state a real run reaches (see the module's doc)."""
    if ckpt:
        mf = checkpoint.read(ckpt, kinds=("checkpoint",))
        cfg = from_dict({**mf.meta["config"], "Compact": True}, source=ckpt)
        trainer = Trainer(cfg, splits)
        restore(trainer, mf)
        return trainer, f"checkpoint {Path(ckpt).name}"
    cfg = Config(RandomSeed=1, MaxEpoch=MLPVAR["TrainCycle"], **MLPVAR)
    trainer = Trainer(cfg, splits)
    start = time.perf_counter()
    trainer.train(RunLog(console=False))
    return trainer, (f"the first simplify cycle of the default mlpvar config, seed 1 "
                     f"({cfg.MaxEpoch} epochs, {time.perf_counter() - start:.0f} s)")


def masked_twin(compacted, splits):
    """A Compact=false Trainer with the compacted network's weights in full-size arrays, the
    removed neurons masked (which neurons are masked does not change the cost)."""
    cfg = Config(**{**compacted.cfg.__dict__, "Compact": False, "RandomSeed": 1})
    twin = Trainer(cfg, splits)
    prev = None
    for small, big in zip(compacted.model.layers, twin.model.layers):
        n = small.n_out
        W = np.zeros_like(big.W.value)
        cols = np.arange(small.W.shape[1]) if prev is None else np.arange(prev)
        W[np.arange(n)[:, None], cols[None, :]] = small.W.value
        big.W.value[...] = W
        big.b.value[...] = 0
        big.b.value[:n] = small.b.value
        if hasattr(big, "active"):
            big.active[...] = np.arange(big.n_out) < n
            big.mask[...] = big.active
            prev = n
    return twin


def one_epoch(trainer):
    trainer.data_rng.shuffle(trainer.order)
    timer = Timer()
    cpu = time.process_time()
    trainer.train_part(trainer.order, timer, "epoch")
    cpu = time.process_time() - cpu
    return (timer.fp + timer.bp + timer.update, timer.fp, timer.bp, timer.update, cpu)


def median_times(contenders, repeats, fn):
    """Medians of fn(contender) over repeats, alternating (each part's median separately)."""
    times = harness.alternate(list(contenders), repeats, lambda name: fn(contenders[name]),
                              echo=False)
    if isinstance(times[next(iter(times))][0], tuple):
        return {name: tuple(statistics.median(x) for x in zip(*t)) for name, t in times.items()}
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="start the meSimp network from this run's checkpoint")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    from nnmnist.kernels import set_num_threads
    set_num_threads(args.threads)
    splits = harness.load_splits()
    var, origin = simplified_trainer(splits, args.checkpoint)
    mlp = Trainer(Config(RandomSeed=1), splits)
    masked = masked_twin(var, splits)
    narrow = Trainer(Config(RandomSeed=1, HiddenSize=8), splits)
    for t in (mlp, var, masked, narrow):
        t.compute.warmup()
        t.train_part(t.order[:500], Timer(), "warm-up")
    print("\n".join(harness.header(" ".join(["python", *sys.argv]),
                                   [f"- {harness.load_average()}", f"- threads {args.threads}"])))
    print(f"# meSimp network from {origin}: Dims {var.model.dims()}")
    epoch = median_times({"mlp": mlp, "mlpvar compacted": var, "mlpvar masked": masked,
                          "mlp, hidden 8": narrow}, args.repeats, one_epoch)
    print("\n| case | fp s | bp s | update s | epoch s (fp+bp+update) | / mlp | CPU s | / mlp |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (s, fp, bp, up, cpu) in epoch.items():
        print(f"| {name} | {fp:.2f} | {bp:.2f} | {up:.2f} | {s:.2f} | {s / epoch['mlp'][0]:.2f}x "
              f"| {cpu:.2f} | {cpu / epoch['mlp'][4]:.2f}x |")

    adam_on_denormals(var)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "var.ckpt.npz"
        meta, arrays = capture(var, Position())
        checkpoint.save(ckpt, "checkpoint", {"config": var.cfg.__dict__, **meta}, arrays)
        export(ckpt, Path(tmp) / "model.npz")
        small = load_model(Path(tmp) / "model.npz")
    full = InferenceModel([(layer.W.value, layer.b.value) for layer in mlp.model.layers])
    x = splits.tst_x
    decode = median_times({"unpruned 784-500-500-10": full, "exported meSimp": small}, 9,
                          lambda m: timed(lambda: m.logits(x, batch=1000)))
    print("\n| model | widths | parameters | 10,000 test images s (median) | speed-up |")
    print("|---|---|---|---|---|")
    base = decode["unpruned 784-500-500-10"]
    for name, m in (("unpruned 784-500-500-10", full), ("exported meSimp", small)):
        print(f"| {name} | {m.n_in}-{'-'.join(map(str, m.widths))} | {m.param_count:,} "
              f"({m.param_count / full.param_count:.2f}x) | {decode[name] * 1000:.1f} ms | "
              f"{base / decode[name]:.1f}x |")


def adam_on_denormals(trainer):
    """Time one optimizer step from the trained state as it is and with its denormal
    moments flushed to zero; the state, weights and step counter are put back each time."""
    opt, store = trainer.opt, trainer.opt.store
    x, y = trainer.trn_x[trainer.order[:100]], trainer.trn_y[trainer.order[:100]]
    flow = Flow(training=True)
    trainer.model.forward(flow, x, y)
    flow.backward()
    grad, value, t = store.grad.copy(), store.value.copy(), opt.t
    state = {name: buf.copy() for name, buf in opt.state.flat.items()}
    tiny = np.finfo(np.float32).tiny
    denormal = {name: int(((np.abs(b) < tiny) & (b != 0)).sum()) for name, b in state.items()}

    def step(flush):
        for name, buf in opt.state.flat.items():
            buf[...] = state[name]
            if flush:
                buf[np.abs(buf) < tiny] = 0
        store.value[...], store.grad[...], opt.t = value, grad, t
        start = time.perf_counter()
        opt.step()
        return time.perf_counter() - start
    times = median_times({"as trained": False, "flushed": True}, 200, step)
    step(False)
    as_is = store.value.copy()
    step(True)
    same = np.array_equal(as_is, store.value)
    store.value[...], opt.t = value, t
    for name, buf in opt.state.flat.items():
        buf[...] = state[name]
    print(f"\n# Adam step on the trained meSimp state ({store.size:,} parameters; denormal "
          f"moments: {', '.join(f'{n} {c:,}' for n, c in denormal.items())}): "
          f"{times['as trained'] * 1e6:.0f} us as trained, {times['flushed'] * 1e6:.0f} us with "
          f"them flushed to zero; the same weights after the step: {same}")


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
