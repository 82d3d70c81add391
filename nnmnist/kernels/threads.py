"""Thread counts for Numba's pool and for BLAS, set together."""
import numba

from . import _check
from ._jit import _set_cached_threads

_blas_limits = None  # kept alive: the limit holds for as long as this object is not restored


def set_num_threads(n, blas=None):
    """Use n threads for the kernels (capped at NUMBA_NUM_THREADS) and for BLAS.

    n = 0 leaves the defaults (and undoes an earlier call). `blas` overrides the BLAS count
    (None: same as n; 0: BLAS default). Two pools that each fill every core, used in turn,
    can fight badly: on a 2-core machine n=2 with blas=1 was fastest and n=2 with blas=2
    up to 10x slower per training step (OpenMP workers spin while BLAS threads wait).
    Numba's setting applies to the calling thread. Returns the Numba thread count in effect.
    """
    global _blas_limits
    n = _check.integer("n", n, 0)
    blas = n if blas is None else _check.integer("blas", blas, 0)
    if _blas_limits is not None:
        _blas_limits.restore_original_limits()
        _blas_limits = None
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS) if n
                          else numba.config.NUMBA_NUM_THREADS)
    if blas:
        from threadpoolctl import threadpool_limits  # only needed when BLAS is limited
        _blas_limits = threadpool_limits(limits=blas, user_api="blas")
    _set_cached_threads(numba.get_num_threads())
    return numba.get_num_threads()
