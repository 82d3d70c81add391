"""The array module (numpy or cupy) is chosen here and nowhere else."""
import numpy as np

try:  # CuPy is optional; keep the import error so a GPU request can explain itself.
    import cupy as _cupy
    _cupy_error = None
except Exception as exc:  # pragma: no cover - depends on the machine
    _cupy = None
    _cupy_error = exc


def gpu_available():
    """True when CuPy imports and sees at least one CUDA device."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # pragma: no cover - depends on the machine
        return False


def check_gpu_available():
    """Raise a clear error with install advice when a GPU run cannot happen."""
    from .errors import UserError
    if _cupy is None:
        raise UserError(
            f"Backend 'gpu' needs CuPy, which failed to import ({_cupy_error!r}); "
            "install it with `pip install .[gpu]` (cupy-cuda12x) on a machine with an NVIDIA GPU")
    if not gpu_available():
        raise UserError("Backend 'gpu': CuPy is installed but no CUDA device is visible")


def get_xp(backend):
    """Array module for a backend name: 'cpu' -> numpy, 'gpu' -> cupy ('auto' picks)."""
    if backend == "cpu":
        return np
    if backend == "gpu":
        check_gpu_available()
        return _cupy
    if backend == "auto":
        return _cupy if gpu_available() else np
    raise ValueError(f"unknown backend {backend!r}")


def to_numpy(a):
    """A NumPy copy (or view) of a numpy or cupy array."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)
