"""Processes that belong together: a run started by a sweep ends when the sweep does."""
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PARENT_ENV = "NNMNIST_PARENT_PID"  # set by a sweep for its runs
_PR_SET_PDEATHSIG = 1


def pid_alive(pid):
    """True if a process with this id exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


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
