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
    "Config": "config", "load_config": ("config", "load"),
    "train": "api", "meprop_backward": "api",
    "load_mnist": "data", "RunLog": "runlog",
    "Network": "networks", "MLP": "networks",
    "Dense": "layers", "MaskedDense": "layers",
    "SelectionRule": "select", "Selection": "select", "TopK": "select", "RandomK": "select",
    "UnifiedTopK": "select", "UnifiedRandomK": "select",
    "Optimizer": "optim", "SGD": "optim", "AdaGrad": "optim", "Adam": "optim",
    "RMSProp": "optim", "make_optimizer": "optim",
    "Tensor": "tensor", "Flow": "tensor", "ParamStore": "params",
    "get_compute": "backend", "UserError": "errors", "load_model": "model",
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
