"""CuPy, if it is installed, and whether a CUDA device can be used: the only import of CuPy in
the package. The backend choice (`nnmnist.backends`) and the CUDA backend both ask here.
"""
import functools

import numpy as np

try:  # CuPy is optional; keep the import error so a GPU request can explain itself.
    import cupy
    _cupy_error = None
except Exception as exc:  # pragma: no cover - depends on the machine
    cupy = None
    _cupy_error = exc
try:  # cuBLAS's in-place GEMM (older CuPy lacks it: the GPU backend then uses matmul and add)
    from cupy import cublas
except Exception:  # pragma: no cover - depends on the machine
    cublas = None


@functools.lru_cache(maxsize=None)
def gpu_available():
    """True when CuPy imports and sees at least one CUDA device (probed once per process)."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # pragma: no cover - depends on the machine
        return False


def check_gpu_available():
    """Raise a clear error with install advice when a GPU run cannot happen."""
    from ..errors import UserError
    if cupy is None:
        raise UserError(
            f"Backend 'gpu' needs CuPy, which failed to import ({_cupy_error!r}); "
            "install it with `pip install .[gpu]` (cupy-cuda12x) on a machine with an NVIDIA GPU")
    if not gpu_available():
        raise UserError("Backend 'gpu': CuPy is installed but no CUDA device is visible")


def to_numpy(a):
    """A NumPy copy (or view) of a numpy or cupy array."""
    if cupy is not None and isinstance(a, cupy.ndarray):
        return cupy.asnumpy(a)
    return np.asarray(a)


def memory_free():
    """Free bytes on the current CUDA device, or None without one."""
    if not gpu_available():
        return None
    try:
        return int(cupy.cuda.runtime.memGetInfo()[0])
    except Exception:  # pragma: no cover - depends on the machine
        return None
