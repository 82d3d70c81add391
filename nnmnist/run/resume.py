"""`python run.py --resume RUN.ckpt.npz`: continue a run where its checkpoint left it.

The run continues to MaxEpoch with the checkpoint's config (plus any `--set` that keeps the
run the same), appending to the log and `.jsonl` beside the checkpoint after cutting them
back to where they stood when the checkpoint's state was taken. The data is found where the
run found it, whatever the current folder.
"""
import os
import sys
from pathlib import Path

from . import checkpoint
from ..errors import UserError


def log_file_of(ckpt_path):
    """The log beside a checkpoint: same name, `.txt` in place of `.ckpt.npz`."""
    ckpt_path = Path(ckpt_path)
    name = ckpt_path.name
    stem = name[:-len(".ckpt.npz")] if name.endswith(".ckpt.npz") else ckpt_path.stem
    return ckpt_path.with_name(stem + ".txt")


def cut_back(mf, log_file):
    """Cut the log and the .jsonl back to where they stood when the checkpoint's state was
    taken, so that parts written after it (by a run killed outright) are not there twice.
    If either file does not begin with what the checkpoint recorded, both are left whole (a
    warning says why) and the resumed run appends after them."""
    from .log import metrics_path, prefix_problem
    mark = mf.meta.get("log")
    files = ((log_file, "log"), (metrics_path(log_file), "jsonl"))
    try:
        marks = [(path, int(mark[key][0]), str(mark[key][1])) for path, key in files]
    except (TypeError, KeyError, IndexError, ValueError):
        return  # a checkpoint without the mark (or none to keep): append as before
    for path, size, digest in marks:
        why = prefix_problem(path, size, digest)
        if why is not None:
            print(f"warning: {path}: not cut back to the checkpoint ({why}); "
                  "appending after its end", file=sys.stderr)
            return
    for path, size, _ in marks:
        try:
            os.truncate(path, size)
        except OSError as exc:
            from ..fsio import os_reason
            raise UserError(f"{path}: cannot cut back to the checkpoint ({os_reason(exc)})") from None


def resume_run(args, overrides):
    """Check the checkpoint and its data, then continue training (see the module's doc)."""
    if args.config:
        raise UserError(f"{args.config}: a config file cannot be given with --resume "
                        "(the checkpoint holds its config; use --set to change a field)")
    mf = checkpoint.read(args.resume, kinds=("checkpoint",))
    cfg = checkpoint.resume_config(mf, overrides)
    train = mf.field("train")
    if (train.get("epoch"), train.get("part")) == (cfg.MaxEpoch, 0):
        raise UserError(f"{mf.path}: the run already reached MaxEpoch = {cfg.MaxEpoch}; "
                        f"--set MaxEpoch=N with a larger N to train on")
    if train.get("epoch", 0) >= cfg.MaxEpoch:
        raise UserError(f"{mf.path}: --set MaxEpoch={cfg.MaxEpoch} is before the checkpoint's "
                        f"epoch {train.get('epoch')}")
    from ..backends import resolve_backend
    from ..data.mnist import load_mnist
    from .log import RunLog
    from .training import Trainer
    from .procs import apply_threads, quiet_overflow
    apply_threads(cfg, resolve_backend(cfg.Backend), args.resume)  # "auto" resolved once
    console = not args.quiet
    config_dir = train.get("config_dir")
    from . import config as config_mod
    given = {config_mod.canonical_field(k, "--set") for k in overrides or {}}
    data_cfg = checkpoint.data_config(mf, cfg, given)  # the run's files, from any folder
    splits = load_mnist(data_cfg, config_dir=config_dir, allow_fetch=False if args.offline else None,
                        log=print if console else (lambda *a, **k: None))
    trainer = Trainer(cfg, splits)
    if len(trainer.order) != len(mf.array("train.order")):
        raise UserError(f"{mf.path}: field train.order has {len(mf.array('train.order'))} "
                        f"examples but {cfg.TrainFile} gives {len(trainer.order)}")
    trainer.config_dir = config_dir
    from ..data.mnist import data_dir_of
    trainer.work_dir = train.get("work_dir") or os.getcwd()
    trainer.data_dir = os.path.abspath(data_dir_of(data_cfg))
    log_file = log_file_of(mf.path)
    trainer.checkpoint_file = mf.path
    trainer.best_file = checkpoint.best_path(log_file)
    cut_back(mf, log_file)
    try:
        log = RunLog(log_file, console=console, append=True)
    except OSError as exc:
        raise UserError(f"cannot append to the log {log_file}: {exc.strerror}") from None
    with log, quiet_overflow():
        trainer.resume(log, mf)
        if console:
            print(f"log written to {log.path}", file=sys.stderr)
