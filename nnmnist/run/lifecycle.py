"""A training run from start to end, in one place: building it, starting it, keeping its
checkpoints, resuming it and stopping it.

`Run.new` builds a run from a config; `Run.from_checkpoint` builds the same run a checkpoint
was taken from. Either way the memory the config needs is checked first, the data is read
while the kernels the run calls are compiled, and the network and optimizer are built. A new
run `start`s; a resumed one loads the checkpoint's state and continues (`resume`): the same
code trains both. While it trains, a run holds a lock beside its files (one writer at a
time), keeps the files its `Checkpoint` field asks for, and on the way out (Ctrl-C, SIGTERM,
divergence, memory) writes what can be kept and says in its log why it stopped.

`python run.py`, `nnmnist train` / `resume` and `nnmnist.train` all go through here.
"""
import os
import sys
import threading
from pathlib import Path

from .. import fsio
from ..errors import RunError, UserError, interrupt_name
from . import checkpoint, memory
from .log import RunLog, open_run_log
from .procs import apply_threads, quiet_overflow
from .resume import cut_back, log_file_of
from .state import Position, capture, data_places, network_arrays, network_meta, restore
from .training import Diverged, Trainer, summary_record

NO_RESUME = {"none": "Checkpoint = none keeps no checkpoint",
             "best": "Checkpoint = best keeps only the best model, no checkpoint"}


# ---------------------------------------------------------------- the files beside the log

class Checkpoints:
    """The model files a run keeps beside its log, as its `Checkpoint` field says: `epoch`
    the checkpoint (`.ckpt.npz`, rewritten after each epoch and on Ctrl-C) and the best-dev
    model (`.best.npz`); `best` only the best-dev model; `none` neither. Without a log file
    nothing is kept. The trainer calls `keep` at every part boundary and `keep_best` at each
    new best; `write` puts what was kept on disk."""

    def __init__(self, trainer, log_file=None, policy="epoch"):
        self.trainer, self.policy = trainer, policy
        keep_ckpt = log_file is not None and policy == "epoch"
        keep_best = log_file is not None and policy in ("epoch", "best")
        self.checkpoint = checkpoint.checkpoint_path(log_file) if keep_ckpt else None
        self.best = checkpoint.best_path(log_file) if keep_best else None
        self._snapshot = self._best = None

    def notes(self):
        """Lines for the log's opening: what a run that keeps no checkpoint cannot do."""
        if self.checkpoint is None and self.policy in NO_RESUME:
            return [f"Note: {NO_RESUME[self.policy]}: a run stopped early (Ctrl-C, SIGTERM) "
                    "cannot be resumed"]
        return []

    def keep(self, epoch, part, timer, total):
        """Remember the state at a part boundary (the next part is `part` of `epoch`)."""
        if self.checkpoint is None:
            return
        t = lambda x: [x.fp, x.bp, x.update]  # noqa: E731
        self._snapshot = None  # one copy of the state at a time
        meta, arrays = capture(self.trainer, Position(epoch, part, t(timer), t(total)))
        meta["log"] = self.trainer.log.mark()  # where the log and .jsonl stand: a resume cuts back
        self._snapshot = meta, arrays

    def keep_best(self):
        if self.best is not None:
            model = self.trainer.model
            self._best = ({"network": network_meta(model), "train": data_places(self.trainer)},
                          network_arrays(model))

    def write(self):
        """Write the remembered checkpoint and, if it changed, the best-dev model."""
        files = [(self.checkpoint, "checkpoint", self._snapshot), (self.best, "best", self._best)]
        for path, kind, kept in files:
            if kept is None:
                continue
            try:
                checkpoint.save(path, kind, {**checkpoint.config_meta(self.trainer.cfg), **kept[0]},
                                kept[1])
            except fsio.WriteError:  # `cannot write PATH: reason`, as for every other file
                raise
            except OSError as exc:
                raise RunError(f"{path}: cannot write the {kind} file ({fsio.os_reason(exc)})") from None
        self._best = None


def lock_path(log_file):
    """The lock that goes with a log file (`.lock` in place of `.txt`)."""
    return checkpoint._sibling(log_file, ".lock")


class RunLock:
    """`RUN.lock` beside a run's log: held while a process writes the run's files, so that a
    second writer (a `--resume` of the same checkpoint while the run still goes on, a job
    started twice) is refused before it changes anything. Removed when the run ends; a lock
    left by a process that was killed is taken over with a note."""

    def __init__(self, log_file, what):
        self.lock = fsio.PidLock(lock_path(log_file), remove=True)
        self.what = what

    def acquire(self):
        def refuse(pid):
            holder = f"process {pid}" if pid else "another process"
            raise UserError(f"{self.what}: the run is being written by {holder} (it holds "
                            f"{self.lock.path}); wait for it to end, or stop it first")
        self.lock.acquire(refuse)
        if self.lock.taken_over is not None:
            print(f"note: {self.lock.path}: taking over the lock of process "
                  f"{self.lock.taken_over}, which ended without releasing it", file=sys.stderr)
        return self

    def release(self):
        self.lock.release()


# ---------------------------------------------------------------- the run

class Run:
    """One run: its Trainer, its log, the files it keeps and its lock (see the module's doc)."""

    def __init__(self, trainer, log=None, files=None, lock=None):
        self.trainer = trainer
        self.log = log if log is not None else RunLog(console=False)
        self.files = files or Checkpoints(trainer, None)
        self.lock = lock

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def new(cls, config_path, overrides=None, log_dir=None, log_dir_default=".", console=True,
            offline=False):
        """A new run of a config file (with `--set` overrides): checked, built, its log
        created in `log_dir` (else LogDir, else `log_dir_default`) and its lock taken."""
        from . import config as config_mod
        from ..backends import resolve_backend
        cfg = config_mod.load(config_path, overrides)
        backend = resolve_backend(cfg.Backend)  # "auto" becomes "cpu" or "gpu" here, once
        for note in cfg.ignored_settings(backend):
            print(f"warning: {config_path}: {note}", file=sys.stderr)
        apply_threads(cfg, backend, config_path)
        log_dir = Path(log_dir or cfg.LogDir or log_dir_default)
        if not log_dir.is_dir():
            raise UserError(f"log folder {log_dir} (LogDir / --log-dir) does not exist")
        config_dir = str(Path(config_path).resolve().parent)
        trainer = build_trainer(cfg, config_path, backend, config_dir, os.getcwd(), console, offline)
        try:
            log = open_run_log(log_dir, cfg.run_name(), console=console)
        except OSError as exc:
            raise UserError(f"cannot write a log in {log_dir}: {fsio.os_reason(exc)}") from None
        try:
            lock = RunLock(log.path, log.path).acquire()  # a fresh name: no one else has it
        except BaseException:
            log.close()
            raise
        return cls(trainer, log, Checkpoints(trainer, log.path, cfg.Checkpoint), lock)

    @classmethod
    def from_checkpoint(cls, path, overrides=None, console=True, offline=False):
        """The run a checkpoint was taken from, built again with the checkpoint's config (plus
        overrides that keep it the same run) and its lock taken; returns (run, model file).
        `resume(model file)` then loads the state and continues. Nothing is changed on disk
        until the lock is held."""
        path = Path(path)
        log_file = log_file_of(path)
        refuse_without_checkpoint(path, log_file)
        if not path.is_file():
            checkpoint.read(path)  # its one-line error: not found, a folder, ...
        lock = RunLock(log_file, path).acquire()
        try:
            return cls._from_checkpoint(path, log_file, lock, overrides, console, offline)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _from_checkpoint(cls, path, log_file, lock, overrides, console, offline):
        from . import config as config_mod
        from ..backends import resolve_backend
        mf = checkpoint.read(path, kinds=("checkpoint",))
        cfg = checkpoint.resume_config(mf, overrides)
        train = mf.field("train")
        if (train.get("epoch"), train.get("part")) == (cfg.MaxEpoch, 0):
            raise UserError(f"{mf.path}: the run already reached MaxEpoch = {cfg.MaxEpoch}; "
                            f"--set MaxEpoch=N with a larger N to train on")
        if train.get("epoch", 0) >= cfg.MaxEpoch:
            raise UserError(f"{mf.path}: --set MaxEpoch={cfg.MaxEpoch} is before the checkpoint's "
                            f"epoch {train.get('epoch')}")
        backend = resolve_backend(cfg.Backend)  # "auto" resolved once
        apply_threads(cfg, backend, str(path))
        given = {config_mod.canonical_field(k, "--set") for k in overrides or {}}
        data_cfg = checkpoint.data_config(mf, cfg, given)  # the run's files, from any folder
        trainer = build_trainer(cfg, str(path), backend, train.get("config_dir"),
                                train.get("work_dir") or os.getcwd(), console, offline, data_cfg)
        n_order = len(mf.array("train.order"))
        if len(trainer.order) != n_order:
            raise UserError(f"{mf.path}: field train.order has {n_order} examples but "
                            f"{cfg.TrainFile} gives {len(trainer.order)}")
        files = Checkpoints(trainer, log_file, cfg.Checkpoint)
        files.checkpoint = mf.path if files.checkpoint is not None else None
        cut_back(mf, log_file)
        try:
            log = RunLog(log_file, console=console, append=True)
        except OSError as exc:
            raise UserError(f"cannot append to the log {log_file}: {fsio.os_reason(exc)}") from None
        return cls(trainer, log, files, lock), mf

    # -- training ----------------------------------------------------------------------------
    def start(self):
        """Train from the beginning to MaxEpoch; return the Result."""
        return self._train(None)

    def resume(self, model_file):
        """Load a checkpoint's state into this run (built from its config) and train on to
        MaxEpoch; return the Result."""
        return self._train(restore(self.trainer, model_file))

    def _train(self, position):
        t = self.trainer
        t.files = self.files
        try:
            with quiet_overflow():
                return t.train(self.log, position)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM raised as errors.Terminated
            self.files.write()  # the state at the last part boundary: only that part is lost
            self.mark_stop("interrupted", f"interrupted by {interrupt_name(exc)} "
                                          f"during {t.at or 'the start'}")
            raise
        except Diverged as exc:
            self.mark_stop("diverged", str(exc))
            raise
        except MemoryError:
            cfg = t.cfg
            reason = f"out of memory during {t.at or 'the start'}"
            self.mark_stop("out of memory", reason)
            raise RunError(f"{reason} (HiddenSize = {cfg.HiddenSize}, MinibatchSize = "
                           f"{cfg.MinibatchSize}); lower one of them or free some memory") from None

    def mark_stop(self, why, reason):
        """Note in the log and the metrics that the run stopped early, and why. A log that can
        no longer be written (the disk that stopped the run) is left as it is."""
        t = self.trainer
        try:
            self.log(f"Run stopped: {reason}")
            self.log.record(summary_record(t.cfg, t.result, t, stopped=why, reason=reason))
        except UserError:
            pass

    def close(self):
        """Close the log and give the lock up."""
        self.log.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def build_trainer(cfg, source, backend, config_dir, work_dir, console, offline, data_cfg=None):
    """Check the memory `cfg` needs, read the data while the run's kernels compile, and build
    the Trainer (nothing is written). `data_cfg` says where the data is, if not `cfg`."""
    from ..backends import get_compute
    from ..data.mnist import data_dir_of, load_mnist
    from .warm import compile_for
    memory.check(cfg, source, gpu=backend == "gpu")
    data_cfg = data_cfg or cfg
    say = (lambda text: print(text, file=sys.stderr)) if console else None
    log = print if console else (lambda *a, **k: None)
    compute = get_compute(backend, cfg.Kernels)
    allow_fetch = False if offline else None
    if cfg.is_tagger:
        from ..data.conllu import load_tagger_data
        load = lambda: load_tagger_data(data_cfg, data_dir_of, config_dir,  # noqa: E731
                                        allow_fetch, log)
    else:
        load = lambda: load_mnist(data_cfg, config_dir=config_dir,  # noqa: E731
                                  allow_fetch=allow_fetch, log=log)
    splits = in_background(load, lambda: compile_for(cfg, compute, say))
    try:
        trainer = Trainer(cfg, splits, compute=compute)
    except MemoryError:
        raise UserError(f"{source}: not enough memory for this network "
                        f"(HiddenSize = {cfg.HiddenSize}, Layers = {cfg.Layers})") from None
    trainer.config_dir = config_dir
    trainer.work_dir = work_dir
    if cfg.is_tagger:  # the treebank's folder itself (DataDir, or ud-en-ewt/ in the data folder)
        from ..data.conllu import tagger_dir
        trainer.data_dir = os.path.abspath(tagger_dir(data_cfg, data_dir_of))
    else:
        trainer.data_dir = os.path.abspath(data_dir_of(data_cfg))
    return trainer


def in_background(task, meanwhile):
    """task() in a thread while meanwhile() runs here; return task's result (or raise its
    error). The thread is a daemon: an interrupt here does not wait for it."""
    box = {}

    def work():
        try:
            box["result"] = task()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
    thread = threading.Thread(target=work, name="load-data", daemon=True)
    thread.start()
    meanwhile()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


# ---------------------------------------------------------------- resuming: the files

def refuse_without_checkpoint(path, log_file):
    """A one-line error for a resume of a run that kept no checkpoint (its Checkpoint field
    was best or none): the file is missing but the run's log is there, or the file is the
    run's best-dev model."""
    policy = None
    if not path.exists() and log_file.is_file():
        policy = checkpoint_policy_of(log_file)
    if path.name.endswith(".best.npz"):
        raise UserError(f"{path}: a best-dev model, not a checkpoint; --resume takes the "
                        f"run's .ckpt.npz (a run with Checkpoint = best or none keeps none)")
    if policy in NO_RESUME:
        raise UserError(f"{path}: no checkpoint: the run of {log_file.name} cannot be resumed "
                        f"({NO_RESUME[policy]})")


def checkpoint_policy_of(log_file):
    """The Checkpoint field in a log's header, or None."""
    try:
        with open(log_file, encoding="utf-8", errors="replace") as f:
            for _, line in zip(range(200), f):
                if line.startswith("Checkpoint: "):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# ---------------------------------------------------------------- the commands

def start_run(config_path, overrides=None, log_dir=None, log_dir_default=".", console=True,
              offline=False):
    """Train a config file's run to the end (`python run.py CONFIG`); return its Result."""
    with Run.new(config_path, overrides, log_dir, log_dir_default, console, offline) as run:
        result = run.start()
        if console:
            print(f"log written to {run.log.path}", file=sys.stderr)
    return result


def resume_run(ckpt_path, overrides=None, console=True, offline=False):
    """Continue a checkpoint's run to MaxEpoch (`python run.py --resume CKPT`); return its Result."""
    run, mf = Run.from_checkpoint(ckpt_path, overrides, console, offline)
    with run:
        result = run.resume(mf)
        if console:
            print(f"log written to {run.log.path}", file=sys.stderr)
    return result


def train_in_memory(cfg, data, compute=None, model=None, log=None):
    """Train with no files (`nnmnist.train`): no lock, no checkpoints; return the Trainer and
    the Result."""
    trainer = Trainer(cfg, data, compute=compute, model=model)
    return trainer, Run(trainer, log).start()
