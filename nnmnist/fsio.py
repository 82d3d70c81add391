"""File helpers shared by the package: atomic and whole-record writes, strict JSON, short hints,
and the PID lock files that keep one writer per folder or run.

Every file is created with mode 0o666 and so follows the umask, as `open()` does.
A failed write raises `WriteError`, one line that names the file and the system's reason.
"""
import contextlib
import ctypes
import ctypes.util
import difflib
import json
import math
import os
import secrets
import stat
import sys
from pathlib import Path

from .errors import RunError, UserError

SHOWN_CHARS = 80  # a value quoted in an error message is cut to about this many characters


class WriteError(RunError, OSError):
    """A file could not be written (a full disk, a read-only folder, ...): a one-line run error
    for the user, and still an OSError (with errno and strerror) for code that handles those."""

    def __init__(self, path, exc):
        OSError.__init__(self, getattr(exc, "errno", None), os_reason(exc), str(path))
        self.path, self.reason = Path(path), os_reason(exc)

    def __str__(self):
        return f"cannot write {self.path}: {self.reason}"


def os_reason(exc):
    """The system's words for an OSError (`No space left on device`), else the exception's text."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def shorten(text, limit=SHOWN_CHARS):
    """`text` cut to about `limit` characters, saying how much was left out."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def did_you_mean(word, choices, cutoff=0.6, quote=False):
    """`; did you mean X?` for the closest of `choices` to an unknown `word`, or ""."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=cutoff)
    if not close:
        return ""
    return f"; did you mean {close[0]!r}?" if quote else f"; did you mean {close[0]}?"


# ---------------------------------------------------------------- writing

def _write_some(fd, data):
    """One os.write; kept apart so that tests can make it fail like a full disk."""
    return os.write(fd, data)


def write_all(fd, data):
    """Write every byte of `data` to fd (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[_write_some(fd, view):]


def append_whole(fd, data, path):
    """Append `data` to the file open at fd (O_APPEND) whole or not at all.

    After a failed write the file is cut back to its previous length, so a reader never sees a
    partial record. Raises WriteError naming `path`.
    """
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        write_all(fd, data)
    except BaseException as exc:  # a full disk, or Ctrl-C between two partial writes
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        if isinstance(exc, OSError):
            raise WriteError(path, exc) from None
        raise


def create_new(path, flags=os.O_WRONLY):
    """Create `path` (it must not exist) with a mode that follows the umask; return the fd."""
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)


@contextlib.contextmanager
def temp_path(folder, suffix=".tmp", prefix=".nnmnist-"):
    """A new, empty, hidden file in `folder` (mode from the umask), removed on exit whatever happens."""
    while True:
        path = Path(folder) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            os.close(create_new(path))
            break
        except FileExistsError:
            continue
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_writer(path):
    """A binary file to write `path`'s new content into; on leaving the block it replaces
    `path` whole, or (on any error) not at all.

    The data goes to a temp file in the same folder, is flushed to disk (fsync) and renamed over
    `path`; on any failure the temp file is removed and `path` keeps its previous content. A new
    file's mode follows the umask. An OSError becomes WriteError naming `path`.
    """
    path = Path(path)
    try:
        with temp_path(path.parent, ".tmp", f".{path.name}.") as tmp:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(path, exc) from None
    _sync_folder(path.parent)


def atomic_write(path, data, encoding="utf-8"):
    """Replace `path` with `data` (bytes, or str written in `encoding`) as atomic_writer does."""
    if isinstance(data, str):
        data = data.encode(encoding)
    with atomic_writer(path) as f:
        write_all(f.fileno(), data)  # unbuffered: nothing is waiting in f's buffer


def _sync_folder(folder):
    """Make a rename durable (where the platform allows a folder to be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- JSON

def _finite(obj):
    """`obj` with every NaN and infinity replaced by None (JSON's null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj, **kwargs):
    """Strict JSON: NaN and infinities are written as null, never as bare NaN / Infinity."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def _no_duplicates(source):
    def hook(pairs):
        obj = {}
        for key, value in pairs:
            if key in obj:
                raise UserError(f"{source}: key {shorten(json.dumps(key))} appears twice in one object")
            obj[key] = value
        return obj
    return hook


def loads(text, source):
    """Parse JSON text; errors (syntax, duplicate keys, nesting too deep) are one-line UserErrors."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates(source))
    except json.JSONDecodeError as exc:
        raise UserError(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise UserError(f"{source}: JSON nested too deeply") from None


def file_kind(path):
    """What a path that is not a regular file is ("a folder", "a character device", ...), else None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else None
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


MAX_JSON_BYTES = 64 << 20  # a config, spec or results file is far smaller than this


def read_json(path, what):
    """The parsed content of a JSON file (a UTF-8 BOM is allowed); every problem is one line
    naming the file: missing, a folder, over MAX_JSON_BYTES (a link to /dev/zero), unreadable,
    not UTF-8, invalid JSON. A pipe is read (`run.py <(make-config)`)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a {what}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            raise UserError(f"{path}: more than {MAX_JSON_BYTES >> 20} MB; not a {what}")
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({os_reason(exc)})") from None
    return loads(text, str(path))


def reserve(fd, nbytes):
    """Set aside disk space for the next `nbytes` written to fd without changing its size (Linux
    fallocate with FALLOC_FL_KEEP_SIZE), so that a short message still fits once the disk is
    full. Best effort: False where the platform or file system cannot."""
    global _fallocate
    if _fallocate is None:
        _fallocate = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
                _fallocate = libc.fallocate
                _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            except (OSError, AttributeError):
                _fallocate = False
    if not _fallocate:
        return False
    return _fallocate(fd, 1, 0, nbytes) == 0  # 1 = FALLOC_FL_KEEP_SIZE


_fallocate = None


# ---------------------------------------------------------------- locks

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


class PidLock:
    """An exclusive lock on `path` that holds its holder's PID, for one writer at a time.

    Where fcntl exists the lock is flock() on the file: the system drops it when the holder
    ends, however it ends, and a child given the descriptor holds it too. Elsewhere the file's
    PID is the lock, and a lock whose process is gone is free. Either way, taking a lock whose
    file still names another process (one that ended without releasing it) sets `taken_over`
    to that PID, so the caller can say so. With `remove`, `release` deletes the file; the
    inode check in `acquire` keeps that safe against a process that opened it just before.

    `acquire(refuse)` calls `refuse(pid)` (pid: the holder's, or None if not yet written) when
    another process holds the lock; `refuse` raises. An OSError is a WriteError naming `path`.
    """

    def __init__(self, path, remove=False):
        self.path, self.remove = Path(path), remove
        self.fd = None
        self.taken_over = None

    def holder(self):
        """The PID written in the lock file, or None."""
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def acquire(self, refuse):
        try:
            import fcntl
        except ImportError:
            fcntl = None
        try:
            previous = self._lock_flock(fcntl, refuse) if fcntl else self._lock_pidfile(refuse)
            if previous is not None and previous != os.getpid():
                self.taken_over = previous
            os.ftruncate(self.fd, 0)
            write_all(self.fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            self._close()
            raise WriteError(self.path, exc) from None
        except BaseException:
            self._close()
            raise
        return self

    def _lock_flock(self, fcntl, refuse):
        while True:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._close()
                refuse(self.holder())
                raise
            try:  # the file a releasing holder removed is not the lock any more: open it again
                same = os.path.samestat(os.fstat(self.fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return self.holder()
            self._close()

    def _lock_pidfile(self, refuse):
        owner = self.holder()
        if owner is not None and owner != os.getpid() and pid_alive(owner):
            refuse(owner)
            raise BlockingIOError
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        return owner

    def _close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def release(self):
        """Give the lock up (and, with `remove`, delete its file while still holding it)."""
        if self.fd is None:
            return
        if self.remove:
            try:
                self.path.unlink()
            except OSError:
                pass
        self._close()
