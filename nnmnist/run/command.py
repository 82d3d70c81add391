"""`python run.py [CONFIG]`: parse, load, train, with one-line errors for user mistakes."""
import argparse
import json
import os
import sys
from pathlib import Path

from . import config as config_mod
from .. import fsio
from ..errors import UserError, report_errors
from .procs import apply_threads, quiet_overflow

PROJECT_DIR = Path(__file__).resolve().parents[2]


def parse_override(text):
    """`Name=Value` with a JSON value (bare words are taken as strings)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise UserError(f"--set {fsio.shorten(repr(text))}: expected Name=Value, for example --set MaxEpoch=1")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value
    except RecursionError:
        raise UserError(f"--set {fsio.shorten(name)}: the value is nested too deeply") from None


def build_parser(prog="run.py"):
    where = "beside run.py" if prog == "run.py" else "in the current folder"
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train an MLP on MNIST with backprop (mlp), meProp (mlptop, mlprand) or "
                    "meSimp (mlpvar), as the config's NetType says. The log is written "
                    f"{where} (or in LogDir) as {{run name}}-log-{{timestamp}}.txt.")
    p.add_argument("config", nargs="?", default=None,
                   help="JSON config with the original's PascalCase fields, or the name of a "
                        "shipped config (default, mlptop, mlprand, mlpvar, unified); default: "
                        "the shipped default config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="override a config field, e.g. --set MaxEpoch=1 --set NetType=mlptop")
    p.add_argument("--backend", choices=config_mod.BACKENDS, help="override the Backend field")
    p.add_argument("--log-dir", help=f"folder for the log file (default: LogDir, else {where})")
    p.add_argument("--offline", action="store_true",
                   help="never download MNIST; a missing data file is an error")
    p.add_argument("--quiet", action="store_true", help="no console output (the log file is still written)")
    p.add_argument("--resume", metavar="CKPT",
                   help="continue the run of a .ckpt.npz checkpoint to MaxEpoch, appending to its "
                        "log (--set may change only MaxEpoch, Threads, Backend, Kernels, DataDir, LogDir "
                        "and AllowDivergence)")
    return p


def main(argv=None, log_dir_default=None, prog="run.py"):
    """Train (or with --resume continue) a run; logs go to LogDir, --log-dir or log_dir_default."""
    args = build_parser(prog).parse_args(argv)
    return report_errors(run, args, log_dir_default or PROJECT_DIR) or 0


def run(args, log_dir_default):
    """Load and check everything that can fail on user input before the log file is created."""
    from .procs import die_with_parent
    die_with_parent()  # a run started by a sweep ends with it
    overrides = dict(parse_override(t) for t in args.overrides)
    if args.backend:
        overrides["Backend"] = args.backend
    if args.resume:
        from .resume import resume_run
        return resume_run(args, overrides)
    args.config = config_mod.config_path(args.config)
    cfg = config_mod.load(args.config, overrides)
    # Imported here so that `--help` and config errors stay fast.
    from ..backends import resolve_backend
    from ..data.mnist import load_mnist
    from .log import open_run_log
    from .training import Trainer
    backend = resolve_backend(cfg.Backend)  # "auto" becomes "cpu" or "gpu" here, once
    for note in cfg.ignored_settings(backend):
        print(f"warning: {args.config}: {note}", file=sys.stderr)
    apply_threads(cfg, backend, args.config)
    log_dir = Path(args.log_dir or cfg.LogDir or log_dir_default)
    if not log_dir.is_dir():
        raise UserError(f"log folder {log_dir} (LogDir / --log-dir) does not exist")
    console = not args.quiet
    splits = load_mnist(cfg, config_dir=Path(args.config).resolve().parent,
                        allow_fetch=False if args.offline else None,
                        log=print if console else (lambda *a, **k: None))
    try:  # the model exists before the log file, so a failure here leaves no file behind
        trainer = Trainer(cfg, splits)
    except MemoryError:
        raise UserError(f"{args.config}: not enough memory for this network "
                        f"(HiddenSize = {cfg.HiddenSize}, Layers = {cfg.Layers})") from None
    try:
        log = open_run_log(log_dir, cfg.run_name(), console=console)
    except OSError as exc:
        raise UserError(f"cannot write a log in {log_dir}: {fsio.os_reason(exc)}") from None
    from .checkpoint import best_path, checkpoint_path
    trainer.checkpoint_file, trainer.best_file = checkpoint_path(log.path), best_path(log.path)
    trainer.config_dir = str(Path(args.config).resolve().parent)
    from ..data.mnist import data_dir_of
    trainer.work_dir, trainer.data_dir = os.getcwd(), os.path.abspath(data_dir_of(cfg))
    with log, quiet_overflow():
        trainer.train(log)
        if console:
            print(f"log written to {log.path}", file=sys.stderr)
