"""nnmnist: MLPs on MNIST with backprop, meProp and meSimp, from scratch on NumPy and Numba."""
import os

# Thread runtimes on small machines. Numba's OpenMP workers and OpenBLAS's threads both
# busy-wait after their work by default; when they take turns (a matmul, then a top-k kernel,
# then an update) on 2 cores, each spins on the core the other needs, and a training step
# measured 3-10x slower. Sleeping promptly costs a few microseconds of wake-up instead.
# They only take effect if set before the libraries start their threads (so before NumPy is
# imported, for OpenBLAS); a value the user set explicitly always wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# The public API, imported on first use (so that `import nnmnist` and `run.py --help` stay fast):
#   from nnmnist import Config, Network, Dense, TopK, Adam, train
_API = {
    "Config": "run.config", "load_config": ("run.config", "load"),
    "train": "api", "meprop_backward": "api",
    "load_mnist": "data.mnist", "RunLog": "run.log",
    "Network": "nn.networks", "MLP": "nn.networks",
    "Dense": "nn.layers", "MaskedDense": "nn.layers",
    "SelectionRule": "nn.select", "Selection": "nn.select", "TopK": "nn.select",
    "RandomK": "nn.select", "UnifiedTopK": "nn.select", "UnifiedRandomK": "nn.select",
    "Optimizer": "optim", "SGD": "optim", "AdaGrad": "optim", "Adam": "optim",
    "RMSProp": "optim", "make_optimizer": "optim",
    "Tensor": "nn.tensor", "Flow": "nn.tensor", "ParamStore": "nn.params",
    "get_compute": "backends", "UserError": "errors",
    "load_model": "inference.model",
}
__all__ = sorted(_API)


def __getattr__(name):
    entry = _API.get(name)
    if entry is None:
        raise AttributeError(f"module 'nnmnist' has no attribute {name!r}")
    module, attr = entry if isinstance(entry, tuple) else (entry, name)
    import importlib
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


def __dir__():
    return sorted(set(globals()) | set(__all__))
