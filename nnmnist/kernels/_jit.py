"""JIT flags and the serial/parallel choice, in one place.

Every kernel module decorates with `kernel` (serial only) or `variants` (a serial and a
parallel compilation of the same source), and public wrappers ask `Variants.pick(work)`
which one to run. Nothing else in the package sets Numba flags.
"""
import hashlib
import os
import types
from contextlib import contextmanager
from pathlib import Path

import numba
from numba.extending import intrinsic

# On-disk cache of compiled machine code (in __pycache__); NNMNIST_NUMBA_CACHE=0 turns it off.
CACHE = os.environ.get("NNMNIST_NUMBA_CACHE", "1") != "0"
# fastmath stays off everywhere: top-k compares keys exactly, and the arithmetic kernels
# promise to match a plain NumPy float32 implementation (they are memory-bound, so
# reassociation would buy nothing anyway). The sparse products ask for fused multiply-adds
# explicitly (`fma`), never through contraction flags: LLVM contracts differently in
# different callers, and the fused backward must equal the separate kernels bit for bit.
FASTMATH = False
# Below this many multiply-adds (or equivalent) a kernel runs serially: waking the thread
# pool costs more than it saves (measured with `python benchmarks/kernels.py each` on 2 cores;
# e.g. sparse_backward at B=10, in=500, k=20 is 1e5 and faster serially).
PARALLEL_MIN_WORK = 1 << 17
# NumPy's error model: a float division by zero gives inf/nan instead of raising. Python's
# model puts a zero check before every division, which stops LLVM from vectorising loops
# that divide (Adam and AdaGrad ran 7x slower with it). Kernels never rely on raising.
ERROR_MODEL = "numpy"

# "auto" (parallel when it pays and more than one thread is set), "serial" or "parallel".
_MODES = ("auto", "serial", "parallel")
_mode = os.environ.get("NNMNIST_KERNEL_MODE", "auto")
if _mode not in _MODES:
    _mode = "auto"


# Numba's disk cache notices edits to a kernel's own file, not to the flags above nor to the
# kernels it calls from other files (the fused backward inlines top-k and the sparse row
# loops). The tag goes into every compiled name: it holds the flags and a digest of this
# package's sources, so that no edit anywhere in it can load a stale compilation.
def _source_digest():
    digest = hashlib.sha1()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


_TAG = f"_{ERROR_MODEL}{'_fast' if FASTMATH else ''}_{_source_digest()}"
_FLAGS = dict(cache=CACHE, fastmath=FASTMATH, nogil=True, error_model=ERROR_MODEL)


def kernel(fn):
    """Compile `fn` serially with the package's flags."""
    return numba.njit(_renamed(fn, _TAG), **_FLAGS)


def inline_kernel(fn):
    """A small kernel that Numba inlines into every caller (no call, and the caller's
    optimiser sees its loops with the caller's arrays)."""
    return numba.njit(_renamed(fn, _TAG), inline="always", **_FLAGS)


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once (LLVM's fma intrinsic; vectorises to FMA instructions)."""
    sig = a(a, a, a)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    if not (a == b == c and isinstance(a, numba.types.Float)):
        return None
    return sig, codegen


def _renamed(fn, suffix):
    # Numba's on-disk cache is keyed by qualified name, not by flags, so the serial and
    # parallel compilations of one source need distinct names or they overwrite each other.
    clone = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix,
                               fn.__defaults__, fn.__closure__)
    clone.__qualname__ = fn.__qualname__ + suffix
    clone.__module__ = fn.__module__
    clone.__doc__ = fn.__doc__
    return clone


class Variants:
    """A serial and a parallel (prange) compilation of one kernel source."""

    __slots__ = ("serial", "parallel")

    def __init__(self, fn):
        self.serial = numba.njit(_renamed(fn, "_serial" + _TAG), parallel=False, **_FLAGS)
        self.parallel = numba.njit(_renamed(fn, "_parallel" + _TAG), parallel=True, **_FLAGS)

    def pick(self, work):
        """The compilation to run for about `work` element-operations."""
        return self.parallel if use_parallel(work) else self.serial


def variants(fn):
    """Decorator: compile `fn` twice, serial and parallel."""
    return Variants(fn)


def use_parallel(work):
    """The one place where serial vs parallel is decided."""
    if _mode == "serial":
        return False
    if _mode == "parallel":
        return True
    return work >= PARALLEL_MIN_WORK and _threads[0] > 1


# Numba's thread count, cached: numba.get_num_threads() costs microseconds, which add up at
# minibatch 10. `threads.set_num_threads` is the one place that changes it.
_threads = [numba.config.NUMBA_NUM_THREADS]


def num_threads():
    """The kernels' thread count (as last set through `set_num_threads`)."""
    return _threads[0]


def _set_cached_threads(n):
    _threads[0] = n


def get_mode():
    """The current choice rule: 'auto', 'serial' or 'parallel'."""
    return _mode


def set_mode(mode):
    """Set the choice rule ('auto', 'serial' or 'parallel') for this process."""
    global _mode
    if mode not in _MODES:
        raise ValueError(f"kernel mode must be one of {_MODES}, got {mode!r}")
    _mode = mode


@contextmanager
def forced_mode(mode):
    """Temporarily run every kernel serially or in parallel (tests, warm-up)."""
    old = _mode
    set_mode(mode)
    try:
        yield
    finally:
        set_mode(old)
