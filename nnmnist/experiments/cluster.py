"""Sweeps on a Dask cluster: `nnmnist sweep SPEC --executor dask [--scheduler tcp://HOST:PORT]`.

`DaskExecutor` is a sweep `Executor` whose runs are tasks on `dask.distributed` workers, either
of a scheduler given by address or of a `LocalCluster` it starts on loopback. Nothing is shared
but the scheduler's connections:

- The task (`run_on_worker`) gets the run as plain data plus the text of the base config. On the
  worker it writes the config into a scratch folder, makes sure MNIST is there (fetching it at
  most once at a time per data folder on that machine, under a file lock), runs the same
  `run.py` command line as the local pool with `tasks.execute_run`, and sends back every file of
  the run folder, its exit status and wall time.
- The client writes those files into `OUT/runs/<run id>/` (a hidden folder renamed into place, so
  a killed client never leaves a half-written run that looks finished) and reads the summary
  record from there, as the local pool does. Resume, the changed-spec guard and the results
  files are the driver's (`sweep.run_sweep`), unchanged.
- Before anything runs, every worker's nnmnist version and source hash must equal the client's;
  each task checks again, for workers that join later.
- A worker that dies mid-run has its task rescheduled by the scheduler, at most `retries` times
  (the scheduler's `allowed-failures`); after that the run is reported failed and the sweep goes on.

Dask is imported only when a `DaskExecutor` is made; the worker side needs no more than nnmnist
itself (and Dask, which runs it).
"""
import collections
import concurrent.futures as cf
import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from . import tasks
from ..errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the whole nnmnist package
CONNECT_TIMEOUT = 5.0  # seconds to reach a scheduler (and to see a first worker) before giving up

log = logging.getLogger(__name__)


def require_dask():
    """Import dask.distributed, or stop with a one-line error saying how to install it."""
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as exc:
        raise UserError(f"--executor dask needs Dask, and {exc.name or 'it'} is not installed: "
                        "pip install 'nnmnist[cluster]' (or pip install 'dask[distributed]')") from None
    return distributed


# ---------------------------------------------------------------- what a worker runs

_fingerprint = None


def code_fingerprint():
    """SHA-256 over the package's Python sources (relative path and content), once per process."""
    global _fingerprint
    if _fingerprint is None:
        h = hashlib.sha256()
        for path in sorted(PACKAGE_DIR.rglob("*.py")):
            rel = path.relative_to(PACKAGE_DIR).as_posix()
            if "__pycache__" in rel:
                continue
            h.update(rel.encode("utf-8") + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
        _fingerprint = h.hexdigest()
    return _fingerprint


def package_version(name="nnmnist"):
    """The installed version of a distribution, without importing it."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version(name)
    except (ImportError, PackageNotFoundError):
        return "unknown"


def identity():
    """What a worker must share with the client to run the same code (nnmnist's version and
    source hash), and what only changes the last digits (Python, NumPy; not recorded: the CPU
    and BLAS build, whose kernels sum in their own order)."""
    return {"version": package_version(), "code": code_fingerprint(), "host": socket.gethostname(),
            "python": sys.version.split()[0], "numpy": package_version("numpy")}


class CodeMismatch(RuntimeError):
    """A worker's nnmnist is not the client's."""


def mismatch(worker, theirs, ours):
    """The one-line reason a worker is refused, or None if its nnmnist matches."""
    if theirs["version"] == ours["version"] and theirs["code"] == ours["code"]:
        return None
    return (f"worker {worker} ({theirs['host']}) runs nnmnist {theirs['version']} with source hash "
            f"{theirs['code'][:12]}, but this machine has {ours['version']} with {ours['code'][:12]}; "
            "install the same nnmnist on every worker (see docs/SWEEPS.md)")


_fetch_locks = {}
_fetch_locks_lock = threading.Lock()


def _stop_when_unwanted(worker, key, proc, every=0.5):
    """Terminate the run's process once the scheduler no longer wants this task: the sweep was
    interrupted, or its client is gone (Dask lets a task that was cancelled run to its end)."""
    def watch():
        while proc.poll() is None:
            ts = worker.state.tasks.get(key)
            if ts is None or ts.state not in ("executing", "long-running"):
                proc.terminate()
                return
            time.sleep(every)
    threading.Thread(target=watch, name=f"watch-{key}", daemon=True).start()


@contextlib.contextmanager
def _fetch_lock(data_dir):
    """One fetch at a time per data folder on this machine: a thread lock, then a file lock."""
    key = hashlib.sha1(str(Path(data_dir).resolve()).encode("utf-8")).hexdigest()[:16]
    with _fetch_locks_lock:
        lock = _fetch_locks.setdefault(key, threading.Lock())
    with lock:
        path = Path(tempfile.gettempdir()) / f"nnmnist-fetch-{key}.lock"
        try:
            import fcntl
        except ImportError:  # no file locks: threads of this worker are still kept apart
            yield
            return
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def ensure_data(config_path, set_fields):
    """Fetch the standard MNIST files a run needs into its data folder if they are missing.

    Under the fetch lock, so the first task on a machine downloads and the others then find
    the files. A failure is a UserError for the run (the run is not started).
    """
    from ..run import config as config_mod
    from ..data import fetch
    from ..data.mnist import data_dir_of, resolve_data_file
    cfg = config_mod.load(config_path, set_fields)
    tasks.use_runs_data_home()
    data_dir = data_dir_of(cfg)
    names = [getattr(cfg, f) for f in ("TrainFile", "TrainLabelFile", "TestFile", "TestLabelFile")]
    config_dir = Path(config_path).parent

    def missing():
        return [n for n in names if resolve_data_file(n, data_dir, config_dir) is None]
    if not missing() or fetch.is_offline():
        return
    with _fetch_lock(data_dir):
        todo = missing()
        keys = [fetch.standard_name(n) for n in todo]
        if todo and all(keys):
            log.info("fetching MNIST into %s", data_dir)
            fetch.fetch_mnist(data_dir, keys, log=log.info)


def run_environment(worker):
    """This worker's environment without what Dask's nanny added for its worker process.

    The nanny sets `distributed.nanny.pre-spawn-environ` (MALLOC_TRIM_THRESHOLD_=65536 and one
    BLAS/OpenMP thread) in the worker's environment. A run would inherit them, and with them a
    1-epoch run took a third longer (docs/SWEEPS.md); the run sets its own threads (Threads).
    """
    env = dict(os.environ)
    if getattr(worker, "nanny", None):
        import dask
        added = dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}
        for name, value in added.items():
            if env.get(name) == str(value):
                del env[name]
    return env


def run_on_worker(task, base_name, base_text, expected, offline):
    """The Dask task: run one sweep run here; return its files, exit status and seconds."""
    from distributed import get_worker
    worker = get_worker()
    key = worker.get_current_task()
    mine = identity()
    reason = mismatch(worker.address, mine, expected)
    if reason:
        raise CodeMismatch(reason)
    scratch = Path(tempfile.mkdtemp(prefix="nnmnist-run-", dir=worker.local_directory))
    try:
        config_path = scratch / base_name
        config_path.write_text(base_text, encoding="utf-8")
        run_dir = scratch / "run"
        command = tasks.run_command(config_path, task.set_fields, run_dir, offline)
        if not offline:
            try:
                ensure_data(config_path, task.set_fields)
            except UserError as exc:  # as run.py would have failed: status 2, one line
                return {"files": {}, "returncode": 2, "seconds": 0.0, "worker": worker.address,
                        "host": mine["host"], "error": f"on {mine['host']}: {exc}"}
        here = tasks.RunTask(task.run_id, task.overrides, task.set_fields, task.config,
                             tuple(command), str(run_dir), os.getcwd())

        outcome = tasks.execute_run(here, on_start=lambda proc: _stop_when_unwanted(worker, key, proc),
                                    env=run_environment(worker))
        files = {p.relative_to(run_dir).as_posix(): p.read_bytes()
                 for p in sorted(run_dir.rglob("*")) if p.is_file()}
        return {"files": files, "returncode": outcome.returncode, "seconds": outcome.seconds,
                "worker": worker.address, "host": mine["host"], "error": None}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------- the client side

def write_back(run_dir, files, worker=None):
    """Put a run's files into run_dir: written into a hidden folder beside it, then renamed."""
    run_dir = Path(run_dir)
    parent = run_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{run_dir.name}.incoming-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f".{run_dir.name}.incoming-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for rel, data in files.items():
            target = tmp / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ValueError(f"refusing a run file outside the run folder: {rel!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            if rel == "run.json" and worker:
                try:  # say where the run ran; the command and cwd in it are the worker's
                    info = json.loads(data.decode("utf-8"))
                    info["worker"] = worker
                    data = (json.dumps(info, indent=2) + "\n").encode("utf-8")
                except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
                    pass
            target.write_bytes(data)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        os.rename(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _probe(address, timeout):
    """Open and close one connection to the scheduler, handshake included, within `timeout`.

    Dask's own connect bounds the TCP connection but not the handshake after it, so a port that
    accepts connections and never answers would otherwise hang the client.
    """
    import asyncio
    from distributed.comm import connect

    async def once():
        comm = await asyncio.wait_for(connect(address, timeout=timeout), timeout)
        await comm.close()
    try:
        asyncio.run(once())
    except asyncio.TimeoutError:
        raise TimeoutError(f"no handshake from {address} after {timeout:g} s") from None


def _worker_died_message(exc, retries):
    return (f"the worker running it died {retries + 1} time(s) (--retries {retries}); "
            f"last on {getattr(exc, 'last_worker', None) and exc.last_worker.address or 'a worker'}")


class DaskExecutor(tasks.Executor):
    """Runs sweep runs as tasks on a Dask cluster: the scheduler at `scheduler`, or a LocalCluster
    of `workers` single-threaded worker processes on 127.0.0.1."""

    runs_here = False  # workers find or fetch MNIST themselves

    def __init__(self, base, scheduler=None, workers=1, retries=2, offline=False,
                 connect_timeout=CONNECT_TIMEOUT, echo=print):
        distributed = self._distributed = require_dask()
        import dask
        base = Path(base)
        self.base_name = base.name
        self.base_text = base.read_text(encoding="utf-8-sig")
        self.offline = offline
        self.retries = retries
        self.token = uuid.uuid4().hex[:10]
        self.identity = identity()
        self.cluster = None
        self._restore_failures = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue = collections.deque()  # (task, driver's future) not yet given to the scheduler
        self._futures = {}  # key -> Dask future, of the runs given to the scheduler
        self._cancelled = self._closing = False
        self._feeder = None
        if scheduler is None:
            # The scheduler of a LocalCluster lives in this process, so its config is ours to set.
            try:
                # The workers' statistical profiler samples their threads 100 times a second,
                # CPU the runs beside them on this machine would rather have.
                with dask.config.set({"distributed.scheduler.allowed-failures": retries,
                                      "distributed.worker.profile.enabled": False}):
                    self.cluster = distributed.LocalCluster(
                        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                        dashboard_address=None, silence_logs=logging.ERROR)
            except Exception as exc:  # e.g. worker processes that cannot start
                raise UserError(f"could not start a local Dask cluster of {workers} worker(s): "
                                f"{type(exc).__name__}: {exc}") from None
            self.client = distributed.Client(self.cluster)
            self.where = f"on a local Dask cluster of {workers} worker(s)"
        else:
            self.client = self._connect(scheduler, connect_timeout)
            try:
                self._check_workers(scheduler, connect_timeout)
                self._restore_failures = self._set_allowed_failures(retries, echo)
            except BaseException:
                self.client.close()
                raise
        try:
            self._check_identities(echo)
        except BaseException:
            self._close()
            raise

    def describe(self):
        return self.where

    # -- connecting

    def _connect(self, given, timeout):
        address = given if "://" in given else "tcp://" + given
        logging.getLogger("distributed").setLevel(logging.ERROR)  # its retries are not the user's concern
        try:
            _probe(address, timeout)
            client = self._distributed.Client(address, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise UserError(f"--scheduler {given}: no Dask scheduler answered within {timeout:g} s "
                            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        except ValueError as exc:
            raise UserError(f"--scheduler {given}: not a scheduler address ({exc}); "
                            "expected tcp://HOST:PORT") from None
        return client

    def _check_workers(self, address, timeout):
        try:
            self.client.wait_for_workers(1, timeout=timeout)
        except (TimeoutError, OSError):
            raise UserError(f"--scheduler {address}: the scheduler has no workers; start some with "
                            f"`dask worker {address}` (see docs/SWEEPS.md)") from None
        info = self.client.scheduler_info()
        workers = info.get("workers", {})
        threads = sum(w.get("nthreads", 0) for w in workers.values())
        self.where = f"on the Dask cluster at {address} ({len(workers)} worker(s), {threads} thread(s) now)"

    def _set_allowed_failures(self, retries, echo):
        """Make a worker death retry a run at most `retries` times; return the previous setting."""
        def swap(dask_scheduler, value=retries):
            previous = dask_scheduler.allowed_failures
            dask_scheduler.allowed_failures = value
            return previous
        try:
            return self.client.run_on_scheduler(swap)
        except Exception as exc:  # a scheduler that refuses remote functions keeps its own setting
            echo(f"warning: could not set the scheduler's allowed-failures to {retries} ({exc}); "
                 "it keeps its own setting")
            return None

    def _check_identities(self, echo):
        answers = self.client.run(identity, on_error="return")
        problems = []
        for worker, ans in sorted(answers.items()):
            if isinstance(ans, BaseException):
                problems.append(f"worker {worker} cannot run nnmnist's tasks "
                                f"({type(ans).__name__}: {ans}); install nnmnist there (see docs/SWEEPS.md)")
                continue
            reason = mismatch(worker, ans, self.identity)
            if reason:
                problems.append(reason)
            elif ans["numpy"] != self.identity["numpy"] or ans["python"] != self.identity["python"]:
                echo(f"warning: worker {worker} has Python {ans['python']} and NumPy {ans['numpy']}, "
                     f"this machine {self.identity['python']} and {self.identity['numpy']}; "
                     "results may differ in the last digits")
        if problems:
            more = f" (and {len(problems) - 1} more worker(s))" if len(problems) > 1 else ""
            raise UserError(problems[0] + more)

    # -- running
    #
    # Runs wait here, not at the scheduler: only as many are given to it as the cluster has
    # threads. The scheduler would otherwise hand a worker several runs at once, and a worker
    # that dies counts as a failure of every run it holds, even those that never started.

    def submit(self, task):
        result = cf.Future()
        result.set_running_or_notify_cancel()
        with self._lock:
            self._queue.append((task, result))
            if self._feeder is None:
                self._feeder = threading.Thread(target=self._feed, name="sweep-dask-feeder", daemon=True)
                self._feeder.start()
            self._wake.notify()
        return result

    def _threads(self):
        try:
            return sum(self.client.nthreads().values())
        except Exception:  # the scheduler is busy or gone; try again later
            return 0

    def _feed(self):
        while True:
            with self._lock:
                while not (self._queue or self._cancelled or self._closing):
                    self._wake.wait()
            threads = self._threads()
            with self._lock:
                if self._cancelled or self._closing:
                    return
                if not self._queue or len(self._futures) >= threads:
                    # woken by a new run or a finished one; a timeout to see workers come and go
                    self._wake.wait(timeout=0.5)
                    continue
                task, result = self._queue.popleft()
                fut = self.client.submit(run_on_worker, task, self.base_name, self.base_text,
                                         self.identity, self.offline,
                                         key=f"run-{task.run_id}-{self.token}", pure=False)
                self._futures[fut.key] = fut
            fut.add_done_callback(lambda f, task=task, result=result: self._finish(f, task, result))

    def _finish(self, fut, task, result):
        """On Dask's callback thread: write the run's files back and resolve the driver's future."""
        try:
            with self._lock:
                self._futures.pop(fut.key, None)
                self._wake.notify()
                if self._cancelled:
                    result.set_exception(cf.CancelledError())
                    return
                outcome = self._outcome(fut, task)
            result.set_result(outcome)
        except BaseException as exc:
            if not result.done():
                result.set_exception(exc)

    def _outcome(self, fut, task):
        if fut.status == "cancelled":
            return tasks.RunOutcome(task.run_id, -1, 0.0, error="cancelled")
        exc = fut.exception()
        got = None if exc is not None else fut.result()
        if exc is not None or got["error"]:
            if got is not None:
                error, status = got["error"], got["returncode"]
            elif isinstance(exc, self._distributed.KilledWorker):
                error, status = _worker_died_message(exc, self.retries), -1
            elif isinstance(exc, CodeMismatch):
                error, status = str(exc), -1
            else:
                error, status = f"{type(exc).__name__}: {exc}", -1
            # The run never started: its folder holds only the reason, as stderr.txt.
            write_back(task.run_dir, {"stderr.txt": (error + "\n").encode("utf-8")})
            return tasks.RunOutcome(task.run_id, status, 0.0 if got is None else got["seconds"],
                                    error=error)
        write_back(task.run_dir, got["files"], worker=f"{got['worker']} ({got['host']})")
        return tasks.collect_outcome(task.run_id, task.run_dir, got["returncode"], got["seconds"])

    def shutdown(self, cancel=False):
        with self._lock:
            self._closing = True
            self._cancelled = self._cancelled or cancel
            waiting = list(self._queue)
            self._queue.clear()
            futures = list(self._futures.values())
            self._wake.notify_all()
        for _, result in waiting:
            result.set_exception(cf.CancelledError())
        if self._feeder is not None:
            self._feeder.join(timeout=10)
        if cancel and futures:
            try:  # the workers then stop the runs (_stop_when_unwanted)
                self.client.cancel(futures, force=True)
            except Exception as exc:  # the cluster may already be gone; closing is what matters
                log.debug("cancelling: %s", exc)
        self._close()

    def _close(self):
        if self._restore_failures is not None:
            previous = self._restore_failures

            def restore(dask_scheduler, value=previous):
                dask_scheduler.allowed_failures = value
            with contextlib.suppress(Exception):
                self.client.run_on_scheduler(restore)
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()
