"""The functions of the public API that are not a class of their own (see `nnmnist.__all__`)."""
import dataclasses
from pathlib import Path

import numpy as np


def train(config, data=None, network=None, compute=None, log=None):
    """Train as `python run.py` does; return (the trained network, the run's summary).

    config: a `Config`, a dict of config fields, or the path of a JSON config.
    data: the MNIST splits (`load_mnist(cfg)`); by default they are loaded as the config says.
    network: a network of your own (`Network` of `Dense`/`MaskedDense` units built with
        `compute`); by default the config's `MLP`. Its input width must be 784.
    compute: the backend's compute object (`get_compute(...)`); by default the config's.
        On the CPU the config's `Threads` is applied as `run.py` does: capped at the cores
        this process may use (with run.py's warning), and the summary records the count used.
    log: a `RunLog` (lines to a file and/or the console); by default nothing is written.

    The summary (`Result`) holds best_dev, test_at_best (the test accuracy at the best dev
    accuracy), param_count, the per-part records and the summed fp/bp/update times.
    """
    from .run import config as config_mod
    from .backends import get_compute
    from .data.mnist import load_mnist
    from .run.lifecycle import train_in_memory
    from .run.procs import apply_threads
    if isinstance(config, config_mod.Config):
        cfg = config_mod.validate(config)
    elif isinstance(config, dict):
        cfg = config_mod.from_dict(config)
    else:
        cfg = config_mod.load(config)
    config_dir = Path(config).resolve().parent if isinstance(config, (str, Path)) else None
    if data is None:
        data = load_mnist(cfg, config_dir=config_dir, log=lambda *a, **k: None)
    if compute is None:
        compute = get_compute(cfg.Backend, cfg.Kernels)
    if compute.name != "cupy":  # as run.py does (0 restores the libraries' defaults)
        cfg = dataclasses.replace(cfg)  # the cap is this run's, not the caller's Config's
        apply_threads(cfg, "cpu", config if isinstance(config, (str, Path)) else "config")
    trainer, result = train_in_memory(cfg, data, compute=compute, model=network, log=log)
    return trainer.model, result


def meprop_backward(x, W, dy, k, unified=False):
    """meProp's backward of y = x @ W.T (W of shape (out, in)), on its own, in NumPy.

    Keeps the k entries of largest |dy| in each row (or, with `unified`, the k columns of
    largest summed |dy| over the rows), zeroes the rest, and returns (dx, dW) =
    (kept @ W, kept.T @ x): the gradients meProp back-propagates instead of dy @ W and dy.T @ x.
    Ties go to the lower column.

        >>> x = np.array([[1., 2.]]); W = np.array([[1., 0.], [0., 1.], [1., 1.]])
        >>> dx, dW = meprop_backward(x, W, np.array([[0.5, -3., 1.]]), k=1)
        >>> dx.tolist(), dW.tolist()
        ([[0.0, -3.0]], [[0.0, 0.0], [-3.0, -6.0], [0.0, 0.0]])
    """
    from .backends.cpu import NumpyCompute
    from .nn.select import TopK, UnifiedTopK
    x, W, dy = np.asarray(x), np.asarray(W), np.asarray(dy)
    if x.ndim != 2 or W.ndim != 2 or dy.shape != (x.shape[0], W.shape[0]) or W.shape[1] != x.shape[1]:
        raise ValueError(f"shapes: x {x.shape}, W {W.shape} (out, in), dy {dy.shape}: need "
                         f"x (B, in), W (out, in), dy (B, out)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k = {k!r}: must be a whole number")
    if not 1 <= k <= W.shape[0]:
        raise ValueError(f"k = {k}: must be between 1 and {W.shape[0]} (the output width)")
    compute = NumpyCompute()
    rule = UnifiedTopK(k) if unified else TopK(k)
    dW = np.zeros(W.shape, dtype=np.result_type(x, dy))
    selection = rule(dy, compute, None)
    dx = compute.meprop_backward(x, W, dy, selection, dW, True)
    return dx, dW
