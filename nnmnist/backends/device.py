"""CuPy, if it is installed, and whether a CUDA device can be used: the only import of CuPy in
the package. The backend choice (`nnmnist.backends`) and the CUDA backend both ask here.

With NUMBA_ENABLE_CUDASIM=1 (Numba's CUDA simulator) a "gpu" backend runs on the CPU: its
kernels in the simulator, NumPy arrays where CuPy's would be. It is there to test the GPU
backend on machines without one; "auto" never picks it.
"""
import functools
import os

import numpy as np

try:  # CuPy is optional; keep the import error so a GPU request can explain itself.
    import cupy
    _cupy_error = None
except Exception as exc:  # pragma: no cover - depends on the machine
    cupy = None
    _cupy_error = exc
try:  # cupyx.scatter_add: the embedding table's row-sparse gradient (`CupyCompute.add_rows`)
    import cupyx
except Exception:  # pragma: no cover - depends on the machine
    cupyx = None
try:  # cuBLAS's in-place GEMM (older CuPy lacks it: the GPU backend then uses matmul and add)
    from cupy import cublas
except Exception:  # pragma: no cover - depends on the machine
    cublas = None


def simulated():
    """True when NUMBA_ENABLE_CUDASIM asks for Numba's CUDA simulator (a non-zero integer, as
    Numba reads it)."""
    try:
        return int(os.environ.get("NUMBA_ENABLE_CUDASIM", "0") or 0) != 0
    except ValueError:
        return False


def gpu_available():
    """True when CuPy imports and sees at least one CUDA device (probed once per process).
    Never under the simulator: "auto" must not pick it."""
    return not simulated() and _device_visible()


@functools.lru_cache(maxsize=None)
def _device_visible():
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # pragma: no cover - depends on the machine
        return False


def check_gpu_available():
    """Raise a clear error with install advice when a GPU run cannot happen."""
    from ..errors import UserError
    if simulated():
        if numba_cuda_error() is not None:
            raise UserError(
                f"Backend 'gpu' with NUMBA_ENABLE_CUDASIM=1 needs numba-cuda, which failed to "
                f"import ({numba_cuda_error()!r}); install it with `pip install .[gpu-sim]`")
        return
    if cupy is None:
        raise UserError(
            f"Backend 'gpu' needs CuPy, which failed to import ({_cupy_error!r}); "
            "install it with `pip install .[gpu]` (cupy-cuda12x) on a machine with an NVIDIA GPU")
    if not gpu_available():
        raise UserError("Backend 'gpu': CuPy is installed but no CUDA device is visible")
    if numba_cuda_error() is not None:
        raise UserError(
            f"Backend 'gpu' needs numba-cuda for its kernels, which failed to import "
            f"({numba_cuda_error()!r}); install it with `pip install .[gpu]`")


@functools.lru_cache(maxsize=None)
def numba_cuda_error():
    """None when `numba.cuda` (the kernels' compiler, or the simulator) imports, else the error."""
    try:
        from numba import cuda  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the machine
        return exc
    return None


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
