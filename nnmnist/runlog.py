"""The run's log: every line to the console and to `{run name}-log-{timestamp}.txt`."""
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm


def log_path(log_dir, run_name, stamp=None):
    """A fresh file name; a counter is added if a run with the same second already wrote one."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    # Names are built as strings: a run name such as "...-p0.1-..." has a dot of its own.
    base, n = f"{run_name}-log-{stamp}", 0
    while True:
        name = base if n == 0 else f"{base}-{n}"
        path = Path(log_dir) / f"{name}.txt"
        if not path.exists() and not metrics_path(path).exists():
            return path
        n += 1


def metrics_path(log_file):
    """The JSON Lines metrics file that goes with a log file."""
    log_file = Path(log_file)
    return log_file.with_name(log_file.name[:-len(".txt")] + ".jsonl")


class RunLog:
    """Writes each line to the log file (flushed, so it can be followed) and to the console,
    and each metrics record to a JSON Lines file beside the log (same name, `.jsonl`)."""

    def __init__(self, path=None, console=True, append=False):
        self.path = Path(path) if path else None
        self.console = console
        self._file = self._metrics = None
        self.metrics_path = metrics_path(self.path) if self.path else None
        if self.path:
            mode = "a" if append else "x"  # append: a resumed run continues its files
            self._file = open(self.path, mode, encoding="utf-8")
            try:
                self._metrics = open(self.metrics_path, mode, encoding="utf-8")
            except OSError:
                self._file.close()
                if not append:
                    self.path.unlink()
                raise
        self.lines = []
        self.records = []

    def record(self, rec):
        """Append one metrics record (a dict of JSON-able values)."""
        self.records.append(rec)
        if self._metrics is not None:
            self._metrics.write(json.dumps(rec) + "\n")
            self._metrics.flush()

    def __call__(self, line=""):
        self.lines.append(line)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        if self.console:
            tqdm.write(line, file=sys.stdout)

    def progress(self, total, desc):
        """A progress bar over the minibatches of a part (console only, never in the file)."""
        return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr,
                    disable=True if not self.console else None, dynamic_ncols=True)

    def close(self):
        for f in (self._file, self._metrics):
            if f is not None:
                f.close()
        self._file = self._metrics = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
