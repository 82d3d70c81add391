"""The run's log: every line to the console and to `{run name}-log-{timestamp}.txt`."""
import sys
import time
from pathlib import Path

from tqdm import tqdm


def log_path(log_dir, run_name, stamp=None):
    """A fresh file name; a counter is added if a run with the same second already wrote one."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    base = Path(log_dir) / f"{run_name}-log-{stamp}"
    path, n = base.with_suffix(".txt"), 1
    while path.exists():
        path = Path(f"{base}-{n}.txt")
        n += 1
    return path


class RunLog:
    """Writes each line to the log file (flushed, so it can be followed) and to the console."""

    def __init__(self, path=None, console=True):
        self.path = Path(path) if path else None
        self.console = console
        self._file = open(self.path, "x", encoding="utf-8") if self.path else None
        self.lines = []

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
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
