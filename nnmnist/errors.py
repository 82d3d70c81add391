"""The exception types for problems a user can act on, and how commands report them."""
import contextlib
import signal
import sys
import threading


class UserError(Exception):
    """A problem with the user's input; commands print it as one line, with no traceback."""
    exit_code = 2


class RunError(UserError):
    """A run that cannot go on (a full disk, a diverged loss); one line, exit status 1."""
    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt so that whatever handles Ctrl-C handles it too."""


INTERRUPT_STATUS = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
TERMINATE_STATUS = 143  # 128 + SIGTERM


def interrupt_name(exc):
    return "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While inside, SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def report_errors(command, *args, **kwargs):
    """Run a command function; a UserError becomes `error: ...` on stderr and its exit status
    (2, or 1 for a run that could not go on), Ctrl-C becomes `interrupted` and 130, SIGTERM
    `terminated` and 143, and a MemoryError that nothing closer handled one line and 1.
    Otherwise the command's own status is returned."""
    try:
        with sigterm_as_interrupt():
            return command(*args, **kwargs)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        return TERMINATE_STATUS
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPT_STATUS
    except MemoryError:
        print("error: out of memory; free some memory, or ask for less (a smaller HiddenSize "
              "or MinibatchSize)", file=sys.stderr)
        return RunError.exit_code
