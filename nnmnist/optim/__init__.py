"""Optimizers: one module per update rule, picked by name from `RULES`.

Each rule module (`sgd`, `adagrad`, `adam`, `rmsprop`) holds everything about its rule side by
side: the equations, the plain NumPy body, the Numba element function with its dense and row
loops, the CUDA body, and the `Optimizer` subclass that supplies the per-step scalars. The
backends in `nnmnist.backends.cpu` and `nnmnist.backends.cuda` only know how to run a `Rule`.

A new rule is one new module plus one line in `RULES`. The rule modules are imported on first
use, so reading a config (which checks `OptType` against `RULES`) does not load Numba.
"""
import importlib

from ..errors import UserError
from .base import Optimizer, Rule, store_for

# OptType -> (module in this package, class name)
RULES = {
    "sgd": ("sgd", "SGD"),
    "adagrad": ("adagrad", "AdaGrad"),
    "adam": ("adam", "Adam"),
    "rmsprop": ("rmsprop", "RMSProp"),
}
_CLASSES = {cls: (module, cls) for module, cls in RULES.values()}

__all__ = ["RULES", "Optimizer", "Rule", "optimizer_class", "make_optimizer", "store_for",
           *_CLASSES]


def optimizer_class(name):
    """The Optimizer subclass registered for an OptType; an unknown name is a UserError."""
    entry = RULES.get(name)
    if entry is None:
        raise UserError(f"OptType = {name!r}: unknown optimizer; known: {', '.join(RULES)}")
    module, cls = entry
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def make_optimizer(cfg, params, compute, n_train):
    """The optimizer that `OptType` names, with the config's hyperparameters."""
    return optimizer_class(cfg.OptType).from_config(cfg, params, compute, n_train)


def __getattr__(name):  # `from nnmnist.optim import Adam` loads the rule's module on demand
    if name in _CLASSES:
        module, cls = _CLASSES[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
