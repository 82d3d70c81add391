"""The process a run lives in: its threads (capped at the usable cores), its floating-point
warnings, and processes that belong together (a run started by a sweep ends when the sweep does)."""
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PARENT_ENV = "NNMNIST_PARENT_PID"  # set by a sweep for its runs
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid=None, poll_seconds=1.0):
    """Arrange for SIGTERM to reach this process when its parent (`parent_pid`, default
    $NNMNIST_PARENT_PID; nothing if neither is given) ends, however it ends.

    On Linux the kernel sends it (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread checks the
    parent every `poll_seconds`. A parent that is already gone is handled at once.
    """
    if parent_pid is None:
        value = os.environ.get(PARENT_ENV, "")
        if not value.isdigit():
            return
        parent_pid = int(value)
    if sys.platform.startswith("linux") and _set_pdeathsig(signal.SIGTERM):
        if os.getppid() != parent_pid:  # the parent ended before the request was made
            os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _set_pdeathsig(signum):
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def usable_cores():
    """The cores this process may run on (its CPU affinity where the platform tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def capped_threads(threads, source):
    """Threads, at most the usable cores (more threads than cores only slow BLAS down), with a
    one-line warning when it had to be cut."""
    cores = usable_cores()
    if threads > cores:
        print(f"warning: {source}: Threads = {threads} is more than the {cores} cores this "
              f"process may use; using {cores}", file=sys.stderr)
        return cores
    return threads


def apply_threads(cfg, backend, source):
    """On the CPU, cap `Threads` at the usable cores and hand it to Numba and BLAS."""
    if backend != "gpu":
        from ..kernels import set_num_threads
        cfg.Threads = capped_threads(cfg.Threads, source)
        set_num_threads(cfg.Threads)  # 0 restores the libraries' defaults


def quiet_overflow():
    """A diverging run is stopped with its own message (Trainer.check_divergence), so NumPy's
    overflow warnings on the way there would only bury it."""
    import numpy as np
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")
