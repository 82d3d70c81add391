"""The run's log: every line to the console and to `{run name}-log-{timestamp}.txt`."""
import hashlib
import itertools
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .. import fsio


def _log_names(log_dir, run_name, stamp=None):
    """`{run name}-log-{stamp}.txt`, then the same with -1, -2, ... added."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    # Names are built as strings: a run name such as "...-p0.1-..." has a dot of its own.
    base = f"{run_name}-log-{stamp}"
    for n in itertools.count():
        yield Path(log_dir) / f"{base if n == 0 else f'{base}-{n}'}.txt"


def log_path(log_dir, run_name, stamp=None):
    """A fresh file name; a counter is added if a run with the same second already wrote one.
    (Only a name: `open_run_log` takes the name and creates the files in one step.)"""
    for path in _log_names(log_dir, run_name, stamp):
        if not path.exists() and not metrics_path(path).exists():
            return path


def open_run_log(log_dir, run_name, console=True, stamp=None):
    """A RunLog on a fresh log name in log_dir: each name is created with O_EXCL, and a name that
    another process took first (even between a check and the open) moves on to the next suffix."""
    for path in _log_names(log_dir, run_name, stamp):
        try:
            return RunLog(path, console=console)
        except FileExistsError:
            continue


def metrics_path(log_file):
    """The JSON Lines metrics file that goes with a log file."""
    log_file = Path(log_file)
    return log_file.with_name(log_file.name[:-len(".txt")] + ".jsonl")


class RunLog:
    """Writes each line to the log file (unbuffered, so it can be followed) and to the console,
    and each metrics record to a JSON Lines file beside the log (same name, `.jsonl`).

    Every line and record goes out whole or not at all. A failed write raises fsio.WriteError
    (one line naming the file); after it the files are left as they are and no longer written.
    """

    def __init__(self, path=None, console=True, append=False):
        self.path = Path(path) if path else None
        self.console = console
        self._file = self._metrics = None  # file descriptors, opened for appending
        self._held = {}  # fd -> [bytes, sha256] of what that file holds (see `mark`)
        self.failed = None  # the WriteError that stopped the file output, if any
        self.metrics_path = metrics_path(self.path) if self.path else None
        if self.path:
            flags = os.O_WRONLY | os.O_APPEND
            # a resumed run appends to its files; a new run creates them (they must not exist)
            open_fd = (lambda p: os.open(p, flags | os.O_CREAT, 0o666)) if append else \
                (lambda p: fsio.create_new(p, flags))
            self._file = open_fd(self.path)
            try:
                self._metrics = open_fd(self.metrics_path)
            except OSError:
                os.close(self._file)
                if not append:
                    self.path.unlink()
                raise
            for fd, p in ((self._file, self.path), (self._metrics, self.metrics_path)):
                self._held[fd] = [0, hashlib.sha256()]
                if append:  # what the file already holds
                    with open(p, "rb") as f:
                        for block in iter(lambda: f.read(1 << 20), b""):
                            self._held[fd][0] += len(block)
                            self._held[fd][1].update(block)
        self.lines = []
        self.records = []

    def _append(self, fd, path, text):
        if fd is None or self.failed is not None:
            return
        data = text.encode("utf-8")
        try:
            fsio.append_whole(fd, data, path)
        except fsio.WriteError as exc:
            self.failed = exc
            raise
        self._held[fd][0] += len(data)
        self._held[fd][1].update(data)

    def mark(self):
        """The length and SHA-256 of what the log and the metrics file hold now, as
        {"log": [bytes, hex], "jsonl": [bytes, hex]} (None without files): a checkpoint keeps
        it, so a resumed run can cut both back to this point (`cut_back`)."""
        if self._file is None:
            return None
        return {name: [self._held[fd][0], self._held[fd][1].hexdigest()]
                for name, fd in (("log", self._file), ("jsonl", self._metrics))}

    def record(self, rec):
        """Append one metrics record (a dict of JSON-able values; NaN and inf become null)."""
        self.records.append(rec)
        self._append(self._metrics, self.metrics_path, fsio.dumps(rec) + "\n")

    def __call__(self, line=""):
        self.lines.append(line)
        self._append(self._file, self.path, line + "\n")
        if self.console:
            tqdm.write(line, file=sys.stdout)

    def progress(self, total, desc):
        """A progress bar over the minibatches of a part (console only, never in the file)."""
        return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr,
                    disable=True if not self.console else None, dynamic_ncols=True)

    def close(self):
        for fd in (self._file, self._metrics):
            if fd is not None:
                os.close(fd)
        self._file = self._metrics = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def prefix_problem(path, size, digest):
    """None if `path` begins with `size` bytes whose SHA-256 is `digest` (what `RunLog.mark`
    recorded), else why not, in a few words."""
    try:
        with open(path, "rb") as f:
            have = os.fstat(f.fileno()).st_size
            if have < size:
                return f"it is shorter ({have} bytes) than when the checkpoint was written ({size})"
            h, left = hashlib.sha256(), size
            while left:
                block = f.read(min(left, 1 << 20))
                if not block:
                    return "it could not be read to the end"
                h.update(block)
                left -= len(block)
    except FileNotFoundError:
        return "it does not exist"
    except OSError as exc:
        return fsio.os_reason(exc)
    if h.hexdigest() != digest:
        return "its first part differs from what the checkpoint recorded (edited or replaced?)"
    return None
