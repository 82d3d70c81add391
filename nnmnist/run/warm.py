"""Compile the CPU kernels a run will call, and only those, before its first timed step.

Which kernels a run calls follows from its config (the NetType's backward, the optimizer's
rule, LazyUpdate's row updates, ...), so instead of a list that could drift from the code,
`compile_for` trains a miniature of the run's network (same config, a few neurons wide) for
two steps: every kernel it calls is compiled, or loaded from Numba's disk cache. With more
than one thread the run may pick a kernel's parallel compilation, so both are compiled.

Numba compiles for this machine on first use and caches the result; on a fresh install that
takes seconds per kernel, so `compile_for` says what is happening when (and only when) a
compilation actually starts, and how long it took.
"""
import dataclasses
import sys
import threading
import time

import numpy as np
from numba.core import event

from ..kernels import _jit
from ..nn.compact import compact
from ..nn.networks import MLP
from ..nn.tensor import Flow
from ..optim import make_optimizer

MINI_WIDTH = 20   # hidden neurons of the miniature
MINI_IN = 6       # its inputs
_done = set()     # the miniatures already trained in this process


def miniature(cfg):
    """`cfg` shrunk to a few neurons, keeping everything that decides which kernels run
    (NetType, OptType, Layers, Unified, LazyUpdate, the share of kept neurons, a minibatch on
    the same side of the kernels' batch thresholds)."""
    k = max(1, min(MINI_WIDTH, round(cfg.TrainTop * MINI_WIDTH / max(cfg.HiddenSize, 1))))
    mini = dataclasses.replace(cfg, HiddenSize=MINI_WIDTH, TrainTop=k,
                               MinibatchSize=min(cfg.MinibatchSize, 40), DenseWarmup=0)
    return dataclasses.replace(mini, EmbedSize=MINI_IN) if cfg.is_tagger else mini


def modes():
    """The kernel compilations a run may pick with the current thread count and mode."""
    mode = _jit.get_mode()
    if mode != "auto":
        return (mode,)
    return ("serial", "parallel") if _jit.num_threads() > 1 else ("serial",)


def compile_for(cfg, compute, say=None):
    """Compile (or load from the cache) the Numba kernels a run of `cfg` calls on `compute`.
    `say(text)` gets a line when compiling starts and when it ends (nothing on a warm cache).
    Other backends compile their own way (`compute.warmup`)."""
    mini = miniature(cfg)
    key = (getattr(compute, "name", None), tuple(sorted(dataclasses.asdict(mini).items())), modes())
    if key in _done:
        return
    if key[0] != "numba":
        compute.warmup()
    else:
        with Progress(say):
            for mode in modes():
                with _jit.forced_mode(mode):
                    _train_miniature(mini, type(compute)())
    _done.add(key)


def _train_miniature(cfg, compute):
    if cfg.is_tagger:
        return _train_mini_tagger(cfg, compute)
    rng = np.random.default_rng(0)
    model = MLP(cfg, MINI_IN, compute, rng)
    model.loss_grad = cfg.LossGrad
    n = 2 * cfg.MinibatchSize
    opt = make_optimizer(cfg, model.params, compute, n)
    x = rng.random((cfg.MinibatchSize, MINI_IN), dtype=np.float32)
    y = rng.integers(0, cfg.LabelCount, cfg.MinibatchSize)
    for step in range(2):
        flow = Flow(training=True)
        model.forward(flow, x, y)
        flow.backward()
        opt.step(flow.selections)
        if cfg.NetType == "mlpvar":  # the end of a meSimp cycle: prepare, prune, compact
            opt.prepare()
            model.prune(cfg.Prune)
            if cfg.Compact:
                compact(model, opt)
    model.forward(Flow(training=False), x, y)


def _train_mini_tagger(cfg, compute):
    """Two steps of a miniature tagger on random sentences (some padded)."""
    from ..nn.lstm import Tagger
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(MINI_IN + 2)]
    model = Tagger(cfg, vocab, compute, rng)
    opt = make_optimizer(cfg, model.params, compute, 2 * cfg.MinibatchSize)
    batch, longest = cfg.MinibatchSize, 5
    x = rng.integers(1, len(vocab), (batch, longest)).astype(np.int32)
    x[::2, 3:] = 0  # padding
    y = np.where(x > 0, rng.integers(0, cfg.LabelCount, x.shape), -1).astype(np.int32)
    for _ in range(2):
        flow = Flow(training=True)
        model.forward(flow, x, y)
        flow.backward()
        opt.step(flow.selections)
    model.forward(Flow(training=False), x, y)


class Progress:
    """Tells the user about Numba compilations while inside: a line when the first of this
    package's kernels starts compiling, a running count of seconds on a terminal, and a line
    at the end. Loading a kernel from the cache is not a compilation and says nothing."""

    def __init__(self, say):
        self.say = say
        self.started = None
        self.kernels = 0
        self._depth = 0
        self._stop = threading.Event()
        self._ticker = None

    def __enter__(self):
        if self.say is not None:
            self._listener = _Listener(self)
            self._installed = event.install_listener("numba:compile", self._listener)
            self._installed.__enter__()
        return self

    def __exit__(self, *exc):
        if self.say is None:
            return
        self._installed.__exit__(*exc)
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            if self._tty:
                sys.stderr.write("\r\033[K")
        if self.started is not None and exc[0] is None:
            self.say(f"compiled {self.kernels} kernel{'s' * (self.kernels != 1)} in "
                     f"{time.monotonic() - self.started:.1f} s; later runs load them from the cache")

    def begin(self, dispatcher):
        self._depth += 1
        if self._depth != 1 or not _ours(dispatcher):
            return
        if self.started is None:
            self.started = time.monotonic()
            self.say("compiling the CPU kernels for this machine (first run only)")
            self._tty = sys.stderr.isatty()
            if self._tty:
                self._ticker = threading.Thread(target=self._tick, name="compile-ticker", daemon=True)
                self._ticker.start()

    def end(self, dispatcher):
        self._depth -= 1
        if self._depth == 0 and _ours(dispatcher) and self.started is not None:
            self.kernels += 1

    def _tick(self):
        while not self._stop.wait(1.0):
            sys.stderr.write(f"\r  {self.kernels} compiled, "
                             f"{time.monotonic() - self.started:.0f} s")
            sys.stderr.flush()


def _ours(dispatcher):
    return getattr(getattr(dispatcher, "py_func", None), "__module__", "").startswith("nnmnist.")


class _Listener(event.Listener):
    def __init__(self, progress):
        self.progress = progress

    def on_start(self, ev):
        self.progress.begin(ev.data["dispatcher"])

    def on_end(self, ev):
        self.progress.end(ev.data["dispatcher"])
