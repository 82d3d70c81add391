"""`python run.py [CONFIG]`: parse the command line and start or resume the run
(`lifecycle`), with one-line errors for user mistakes."""
import argparse
import json
from pathlib import Path

from . import config as config_mod
from .. import fsio
from ..errors import UserError, report_errors

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
    """Start or resume the run the command line asks for (`lifecycle`): everything that can
    fail on user input is checked before the log file is created or a checkpoint touched."""
    from .procs import die_with_parent
    die_with_parent()  # a run started by a sweep ends with it
    overrides = dict(parse_override(t) for t in args.overrides)
    if args.backend:
        overrides["Backend"] = args.backend
    # Imported here so that `--help` and config errors stay fast.
    from . import lifecycle
    console = not args.quiet
    if args.resume:
        if args.config:
            raise UserError(f"{args.config}: a config file cannot be given with --resume "
                            "(the checkpoint holds its config; use --set to change a field)")
        lifecycle.resume_run(args.resume, overrides, console=console, offline=args.offline)
        return 0
    config = config_mod.config_path(args.config)
    lifecycle.start_run(config, overrides, log_dir=args.log_dir, log_dir_default=log_dir_default,
                        console=console, offline=args.offline)
    return 0
