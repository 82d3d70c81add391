"""What one sweep run is and how it is carried out, shared by the local pool (`sweep`) and the
Dask executor (`cluster`): the plain `RunTask` and `RunOutcome`, the run's command line,
`execute_run`, the folder lock that a sweep and its runs hold, and the `Executor` interface.
"""
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .. import fsio
from ..errors import UserError
from ..run.procs import PARENT_ENV

PROJECT_DIR = Path(__file__).resolve().parents[2]
RUN_PY = PROJECT_DIR / "run.py"


# ---------------------------------------------------------------- one run

@dataclasses.dataclass(frozen=True)
class RunTask:
    """Everything one run needs, as plain data (picklable, for remote executors)."""
    run_id: str
    overrides: dict      # the grid/runs values that name the run
    set_fields: dict     # every field passed to run.py with --set (spec "set" + overrides)
    config: dict         # the full config the run will use (validated)
    command: tuple       # argv of the run
    run_dir: str
    cwd: str


@dataclasses.dataclass
class RunOutcome:
    """What came back from one run: exit status, wall time, its summary record and log file."""
    run_id: str
    returncode: int
    seconds: float
    summary: dict = None
    log_file: str = None
    error: str = None


def run_command(config_path, set_fields, log_dir, offline):
    """The run.py command line of one run: its config, its fields as --set, its log folder."""
    command = [sys.executable, *_entry_point(), str(config_path)]
    for k, v in set_fields.items():
        command += ["--set", f"{k}={json.dumps(v)}"]
    command += ["--log-dir", str(log_dir), "--quiet"]
    if offline:
        command.append("--offline")
    return command


def _entry_point():
    """run.py of a source checkout, or the installed `nnmnist train`."""
    if RUN_PY.is_file():
        return [str(RUN_PY)]
    return ["-m", "nnmnist", "train"]


def use_runs_data_home():
    """Make this process look for MNIST where the runs it starts will (run.py: data/ beside it),
    so that fetching ahead of them fills the folder they read."""
    from ..data.mnist import use_data_beside
    if RUN_PY.is_file():
        use_data_beside(PROJECT_DIR)


# ---------------------------------------------------------------- one run

def find_summary(run_dir):
    """(summary record, log file) of a finished run in run_dir, or (None, None)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None, None
    for metrics in sorted(run_dir.glob("*.jsonl")):
        try:
            lines = metrics.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in reversed(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            if (isinstance(rec, dict) and rec.get("type") == "summary"
                    and rec.get("stopped", "completed") == "completed"):  # not diverged/interrupted
                log = metrics.with_name(metrics.name[:-len(".jsonl")] + ".txt")
                return rec, str(log)
            break
    return None, None


def last_line(path):
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else ""


def execute_run(task, on_start=None, env=None):
    """Run one task to the end in a fresh, empty run folder; return its RunOutcome.

    A module-level function of plain data, so that any executor (local or remote) can call it.
    `on_start(popen)` lets a local executor keep hold of the process to stop it; `env` is the
    run's environment (default: this process's).
    """
    run_dir = Path(task.run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(fsio.dumps({
        "run_id": task.run_id, "overrides": task.overrides, "set": task.set_fields,
        "command": shlex.join(task.command), "cwd": task.cwd}, indent=2) + "\n", encoding="utf-8")
    start = time.monotonic()
    with open(run_dir / "stdout.txt", "wb") as out, open(run_dir / "stderr.txt", "wb") as err:
        fsio.reserve(err.fileno(), STDERR_RESERVE)  # so that a full disk cannot swallow the reason
        # The run ends when this process does (procs.die_with_parent) and, while it lives,
        # holds this folder's sweep lock with us (an inherited descriptor of the locked file).
        proc = subprocess.Popen(task.command, cwd=task.cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, pass_fds=SweepLock.held_fds(),
                                env={**(os.environ if env is None else env),
                                     PARENT_ENV: str(os.getpid())})
        if on_start is not None:
            on_start(proc)
        returncode = proc.wait()
    return collect_outcome(task.run_id, run_dir, returncode, time.monotonic() - start)


def collect_outcome(run_id, run_dir, returncode, seconds):
    """The RunOutcome of a run whose files are in run_dir (however they got there)."""
    summary, log_file = find_summary(run_dir)
    error = None
    if returncode != 0:
        error = last_line(Path(run_dir) / "stderr.txt") or f"exit status {returncode}"
    elif summary is None:
        error = "the run ended without a summary record"
    return RunOutcome(run_id, returncode, seconds, summary, log_file, error)


STDERR_RESERVE = 16384  # bytes of disk set aside for each run's stderr.txt


class SweepLock:
    """OUT/.sweep.lock: an exclusive lock (`fsio.PidLock`) held by a sweep and the runs it
    starts, with the sweep's PID in the file. A second sweep on the same folder refuses while
    any of them lives. The runs inherit the locked descriptor; the file stays when the sweep
    ends (unlinking it under a live run would void the run's share of the lock)."""

    NAME = ".sweep.lock"
    _held = []  # descriptors of the locks this process holds (the runs inherit them)

    def __init__(self, out):
        self.path = Path(out) / self.NAME
        self._lock = fsio.PidLock(self.path)

    @property
    def fd(self):
        return self._lock.fd

    @classmethod
    def held_fds(cls):
        return tuple(cls._held)

    def _refuse(self, pid):
        who = f"another sweep (PID {pid})" if pid else "another sweep"
        raise UserError(f"{self.path.parent} is in use by {who} or by runs it started; "
                        "wait for them to end, or use another --out")

    def acquire(self):
        self._lock.acquire(self._refuse)
        if _has_flock():  # only a flock is shared through inherited descriptors
            SweepLock._held.append(self._lock.fd)
        return self

    def release(self):
        if self._lock.fd in SweepLock._held:
            SweepLock._held.remove(self._lock.fd)
        self._lock.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _has_flock():
    import importlib.util
    return importlib.util.find_spec("fcntl") is not None


# ---------------------------------------------------------------- executors

class Executor:
    """Where runs execute. `submit(task)` returns a concurrent.futures.Future of a RunOutcome;
    `shutdown(cancel)` waits for (or, with cancel=True, stops) what was submitted.

    The local pool below is the default; `nnmnist.experiments.cluster.DaskExecutor` runs them on a Dask
    cluster. `runs_here` says whether the runs read MNIST on this machine (then the driver
    fetches it once before they start); `describe()` is how the sweep's first line says where
    the runs go (None: "N at a time").
    """
    runs_here = True

    def describe(self):
        return None

    def submit(self, task):
        raise NotImplementedError

    def shutdown(self, cancel=False):
        raise NotImplementedError
