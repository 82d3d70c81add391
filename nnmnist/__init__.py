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


def load_model(path):
    """A trained network from a model file, with `predict` and `predict_proba` (see nnmnist.model)."""
    from .model import load_model as load
    return load(path)
