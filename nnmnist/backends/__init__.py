"""The one place that picks the backend.

`resolve_backend` turns a `Backend` field ("cpu", "gpu" or "auto") into "cpu" or "gpu";
`get_compute` builds the compute object for it (`nnmnist.backends.cpu` for the CPU, with the Numba
kernels or the plain NumPy ones; `nnmnist.backends.cuda` for CuPy). Everything else asks these two.
"""
from .device import check_gpu_available, gpu_available, to_numpy  # noqa: F401 (the public names)


def resolve_backend(backend):
    """'cpu' or 'gpu' for a Backend field; 'gpu' must be usable, 'auto' takes it if it is."""
    if backend == "cpu":
        return "cpu"
    if backend == "gpu":
        check_gpu_available()
        return "gpu"
    if backend == "auto":
        return "gpu" if gpu_available() else "cpu"
    raise ValueError(f"unknown backend {backend!r}; expected cpu, gpu or auto")


def get_compute(backend="cpu", kernels="numba"):
    """The compute object for a backend ('cpu', 'gpu' or 'auto') and CPU kernel choice."""
    if resolve_backend(backend) == "gpu":
        from .cuda import CupyCompute
        return CupyCompute()
    from .cpu import NumbaCompute, NumpyCompute
    return NumbaCompute() if kernels == "numba" else NumpyCompute()
