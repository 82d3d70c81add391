"""Sweeps: run a grid of config overrides x seeds as separate `run.py` processes, and collect the results.

    nnmnist sweep SPEC.json [--out DIR] [--jobs N] [--offline] [--dry-run]
                            [--executor dask [--scheduler tcp://HOST:PORT] [--retries R]]
    nnmnist sweep summarize OUT [--by NetType,TrainTop]

A spec is a JSON object (see docs/SWEEPS.md):

    {"base": "configs/default.json",             # relative to the spec's folder, else to the cwd
     "set":  {"MaxEpoch": 20},                    # fixed overrides for every run
     "grid": {"NetType": ["mlp", "mlptop"], "RandomSeed": [1, 2, 3]},   # cartesian product
     "runs": [{"NetType": "mlp"}, {"NetType": "mlptop", "TrainTop": 80}]}  # optional explicit list

The runs are every entry of "runs" (or one empty entry) times every combination of "grid". Each
run's id is its overrides, `NetType=mlptop,TrainTop=80,RandomSeed=1`, and its files (the log,
the metrics `.jsonl`, `stderr.txt`, `run.json`) go to `OUT/runs/<id>/`. A run whose folder holds
a summary record is done and is skipped when the sweep is run again; a folder without one (an
interrupted or failed run) is emptied and the run is started again. After every finished run
`OUT/results.csv` and `OUT/results.json` are rewritten (temp file + rename).

Execution goes through a small executor interface (`Executor`): `submit(task)` returns a
`concurrent.futures.Future` whose result is a `RunOutcome`, and `shutdown(cancel)` stops it.
`LocalPoolExecutor` runs the tasks as subprocesses of this machine, `jobs` at a time. The work
of one run is the module-level function `execute_run(task)`, which takes a plain, picklable
`RunTask` and returns a plain `RunOutcome` that carries the run's summary record.
`nnmnist.experiments.cluster.DaskExecutor` (`--executor dask`) is the multi-machine backend: it calls
`execute_run` on Dask workers and copies each run folder back into `OUT/runs/<id>/`, where
`collect_outcome` reads it as for a local run. Dask is imported only when it is asked for.
"""
import argparse
import concurrent.futures as cf
import contextlib
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
from pathlib import Path

from ..run import config as config_mod
from .. import fsio
from ..errors import TERMINATE_STATUS, INTERRUPT_STATUS, Terminated, UserError, report_errors
from .tasks import (PROJECT_DIR, Executor, RunOutcome, RunTask, SweepLock, execute_run, find_summary,
                    run_command, use_runs_data_home)

SPEC_KEYS = ("base", "set", "grid", "runs", "description")
DEFAULT_BASE = PROJECT_DIR / "configs" / "default.json"
MAX_ID_LEN = 100
SAFE_ID = re.compile(r"[^A-Za-z0-9._=,+-]")
# Summary-config fields that do not change what a run computes, so a difference does not make
# a finished run stale (LogDir is overridden by --log-dir). Threads is not one: BLAS sums in
# another order with another thread count, so the figures differ in the last digits.
NEUTRAL_FIELDS = {"LogDir"}


# ---------------------------------------------------------------- the spec and the plan

@dataclasses.dataclass
class Plan:
    spec_path: Path
    base: Path
    fixed: dict
    override_fields: list
    tasks: list
    out: Path


def format_value(v):
    """A value as it appears in a run id: strings bare, everything else as compact JSON."""
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"))


def run_id_of(overrides):
    """A readable, file-system-safe, deterministic id; a short hash is added if it had to be changed or cut."""
    if not overrides:
        return "base"
    readable = ",".join(f"{k}={format_value(v)}" for k, v in overrides.items())
    safe = SAFE_ID.sub("_", readable)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if safe == readable and len(safe) <= MAX_ID_LEN:
        return safe
    digest = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode("utf-8")).hexdigest()[:8]
    return f"{safe[:MAX_ID_LEN - 9]}-{digest}"


def _resolve_base(spec_path, base):
    candidates = [Path(base).expanduser()]
    if not candidates[0].is_absolute():
        candidates = [spec_path.parent / base, Path.cwd() / base]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    looked = " and ".join(str(c) for c in dict.fromkeys(candidates))
    raise UserError(f"{spec_path}: base config {base!r} not found (looked for {looked})")


def _check_fields(spec_path, where, names):
    for name in names:
        if name not in config_mod.FIELD_TYPES:
            hint = fsio.did_you_mean(name, config_mod.FIELD_TYPES)
            raise UserError(f"{spec_path}: {where}: unknown field {fsio.shorten(repr(name))}{hint}")


def load_spec(spec_path):
    """Read and check a spec's shape; return (base path, set dict, grid dict, runs list)."""
    spec_path = Path(spec_path)
    spec = fsio.read_json(spec_path, "sweep spec")
    if not isinstance(spec, dict):
        raise UserError(f"{spec_path}: the top level must be a JSON object, not {type(spec).__name__}")
    for key in spec:
        if key not in SPEC_KEYS:
            hint = fsio.did_you_mean(key, SPEC_KEYS, cutoff=0.5, quote=True)
            raise UserError(f"{spec_path}: unknown key {fsio.shorten(repr(key))}{hint} "
                            f"(allowed: {', '.join(SPEC_KEYS)})")
    base = spec.get("base")
    if base is None:
        base_path = DEFAULT_BASE
    elif not isinstance(base, str) or not base.strip():
        raise UserError(f"{spec_path}: \"base\" must be the path of a config file")
    else:
        base_path = _resolve_base(spec_path, base)
    fixed = spec.get("set", {})
    if not isinstance(fixed, dict):
        raise UserError(f"{spec_path}: \"set\" must be an object of field: value")
    _check_fields(spec_path, '"set"', fixed)
    grid = spec.get("grid", {})
    if not isinstance(grid, dict):
        raise UserError(f"{spec_path}: \"grid\" must be an object of field: [values]")
    _check_fields(spec_path, '"grid"', grid)
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{spec_path}: grid field {name} must be a non-empty list of values")
        if name in fixed:
            raise UserError(f"{spec_path}: field {name} is in both \"set\" and \"grid\"")
    runs = spec.get("runs")
    if runs is None:
        runs = [{}]
    elif not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
        raise UserError(f"{spec_path}: \"runs\" must be a non-empty list of objects of field: value")
    for i, entry in enumerate(runs):
        _check_fields(spec_path, f'"runs"[{i}]', entry)
        for name in entry:
            if name in grid:
                raise UserError(f"{spec_path}: field {name} is in both \"runs\"[{i}] and \"grid\"")
            if name in fixed:
                raise UserError(f"{spec_path}: field {name} is in both \"runs\"[{i}] and \"set\"")
    return base_path, fixed, grid, runs


def build_plan(spec_path, out=None, offline=False):
    """Every run of the spec, each validated with the config loader before anything is launched."""
    spec_path = Path(spec_path)
    base, fixed, grid, runs = load_spec(spec_path)
    base_cfg = config_mod.load(base)  # a broken base config is reported as itself
    fixed = dict(fixed)
    mentioned = set(fixed) | set(grid) | {k for r in runs for k in r}
    if "Threads" not in mentioned:
        fixed["Threads"] = 1  # one process per core: more threads per run would oversubscribe
    out = Path(out) if out else Path("sweeps") / spec_path.stem
    names = list(grid)
    tasks, seen, override_fields = [], {}, []
    for entry in runs:
        for combo in itertools.product(*(grid[n] for n in names)):
            overrides = {**entry, **dict(zip(names, combo))}
            for k in overrides:
                if k not in override_fields:
                    override_fields.append(k)
            run_id = run_id_of(overrides)
            if run_id in seen:
                raise UserError(f"{spec_path}: run {run_id} appears twice in the spec")
            seen[run_id] = True
            set_fields = {**fixed, **overrides}
            try:
                cfg = config_mod.load(base, set_fields)
            except UserError as exc:
                raise UserError(f"{spec_path}: run {run_id}: {exc}") from None
            run_dir = (out / "runs" / run_id).resolve()
            command = run_command(base, set_fields, run_dir, offline)
            tasks.append(RunTask(run_id, overrides, set_fields, dataclasses.asdict(cfg),
                                 tuple(command), str(run_dir), os.getcwd()))
    return Plan(spec_path, base, fixed, override_fields, tasks, out.resolve())


class LocalPoolExecutor(Executor):
    """At most `jobs` runs at a time, each a subprocess of this machine."""

    def __init__(self, jobs):
        self.jobs = jobs
        self._pool = cf.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="sweep")
        self._procs = set()
        self._lock = threading.Lock()
        self._cancelled = False

    def _run(self, task):
        if self._cancelled:
            raise cf.CancelledError()

        def started(proc):
            with self._lock:
                self._procs.add(proc)
                cancelled = self._cancelled
            if cancelled:
                proc.terminate()
        try:
            return execute_run(task, on_start=started)
        finally:
            with self._lock:
                self._procs = {p for p in self._procs if p.poll() is None}

    def submit(self, task):
        return self._pool.submit(self._run, task)

    def shutdown(self, cancel=False):
        if cancel:
            with self._lock:
                self._cancelled = True
                procs = list(self._procs)
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        self._pool.shutdown(wait=True, cancel_futures=cancel)


def default_jobs():
    """Half the cores (at least one): each run is given one thread, and the machine is shared."""
    return max(1, (os.cpu_count() or 1) // 2)


# ---------------------------------------------------------------- results

CSV_METRICS = ["seed", "best_dev", "test_at_best", "epochs", "fp", "bp", "update", "bp_per_epoch",
               "dims", "param_count", "seconds", "returncode", "error", "log_file", "run_dir"]


def _rel(path, out):
    if not path:
        return None
    try:
        return str(Path(path).resolve().relative_to(out))
    except ValueError:
        return str(path)


def result_row(task, status, out, summary=None, outcome=None, log_file=None):
    s = summary or {}
    epochs = s.get("epochs")
    bp = s.get("bp")
    return {
        "run_id": task.run_id, "status": status, "overrides": task.overrides,
        "seed": s.get("seed"), "best_dev": s.get("best_dev"), "test_at_best": s.get("test_at_best"),
        "epochs": epochs, "fp": s.get("fp"), "bp": bp, "update": s.get("update"),
        "bp_per_epoch": bp / epochs if bp is not None and epochs else None,
        "dims": s.get("dims"), "param_count": s.get("param_count"),
        "seconds": round(outcome.seconds, 3) if outcome else None,
        "returncode": outcome.returncode if outcome else None,
        "error": outcome.error if outcome else None,
        "log_file": _rel(log_file, out), "run_dir": _rel(task.run_dir, out),
        "config": s.get("config") or task.config,
    }


def write_results(plan, rows):
    """OUT/results.json (rows with overrides and config) and OUT/results.csv (one column per override field)."""
    doc = {"spec": str(plan.spec_path.resolve()), "base": str(plan.base), "set": plan.fixed,
           "override_fields": plan.override_fields, "runs": rows}
    fsio.atomic_write(plan.out / "results.json", fsio.dumps(doc, indent=1) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run_id", "status", *plan.override_fields, *CSV_METRICS])
    for r in rows:
        cells = [r["run_id"], r["status"]]
        cells += [format_value(r["overrides"][k]) if k in r["overrides"] else "" for k in plan.override_fields]
        for k in CSV_METRICS:
            v = r[k]
            if k == "dims" and v is not None:
                v = " ".join(map(str, v))
            cells.append("" if v is None else v)
        w.writerow(cells)
    fsio.atomic_write(plan.out / "results.csv", buf.getvalue())


# ---------------------------------------------------------------- the driver

def _progress_bar(total, done, echo):
    """A bar of runs done/total on stderr (hidden when it is not a terminal), and an echo that
    prints its lines around it."""
    from tqdm import tqdm
    bar = tqdm(total=total, initial=done, desc="sweep", unit="run", file=sys.stderr,
               dynamic_ncols=True, disable=None)

    def echo_around(line):
        with tqdm.external_write_mode(file=sys.stdout):
            echo(line)
    return bar, echo_around


def _stale_field(task, summary):
    """The first field whose finished value differs from what the spec now asks, or None."""
    done = summary.get("config") or {}
    for k, v in task.config.items():
        if k in done and k not in NEUTRAL_FIELDS and done[k] != v:
            if k == "Threads" and _capped_to(v, done[k]):
                continue
            return k, done[k], v
    return None


def _capped_to(asked, used):
    """Whether a run asked for `asked` threads records `used` because it had fewer cores
    (a run caps Threads at its usable cores and records what it used): the same run."""
    from ..run.procs import usable_cores
    return isinstance(asked, int) and isinstance(used, int) and asked > used == usable_cores()


def _prefetch(tasks, config_dir, offline):
    """Fetch MNIST once before parallel runs start, so that they do not all download it at once."""
    from ..data import fetch
    from ..data.mnist import data_dir_of, resolve_data_file
    if offline or fetch.is_offline():
        return
    use_runs_data_home()
    fields = ("TrainFile", "TrainLabelFile", "TestFile", "TestLabelFile")
    seen = set()
    for t in tasks:
        cfg = config_mod.Config(**t.config)
        data_dir = data_dir_of(cfg)
        names = tuple(getattr(cfg, f) for f in fields)
        if (str(data_dir), names) in seen:
            continue
        seen.add((str(data_dir), names))
        missing = [n for n in names if resolve_data_file(n, data_dir, config_dir) is None]
        keys = [fetch.standard_name(n) for n in missing]
        if missing and all(keys):
            print(f"fetching MNIST into {data_dir} before the runs start", flush=True)
            try:
                fetch.fetch_mnist(data_dir, keys)
            except UserError as exc:
                print(f"warning: could not fetch MNIST ahead of the runs ({exc}); each run will try",
                      flush=True)


def _refuse_other_results(plan):
    """An OUT whose results list runs this plan does not have belongs to another spec: writing
    this plan's results there would drop those rows, so that is refused."""
    path = plan.out / "results.json"
    if not path.exists():
        return
    try:
        doc = fsio.read_json(path, "sweep results file")
        ids = [r["run_id"] for r in doc["runs"]]
    except (UserError, KeyError, TypeError):
        raise UserError(f"{path} is not a results file this sweep can extend; "
                        "use another --out or move it away") from None
    ours = {t.run_id for t in plan.tasks}
    other = [i for i in ids if i not in ours]
    if other:
        raise UserError(f"{plan.out} holds results of another spec ({fsio.shorten(doc.get('spec'))}) "
                        f"with {len(other)} run(s) not in {plan.spec_path}, such as "
                        f"{fsio.shorten(other[0])}; they would be dropped from results.csv: "
                        "use another --out")


def run_sweep(plan, jobs, executor=None, dry_run=False, offline=False, echo=print,
              make_executor=None, progress=False):
    """Skip finished runs, run the rest, rewrite the results after each; return the exit status.

    The runs go to `executor`, else to `make_executor()` (called only when there is something
    to run), else to a LocalPoolExecutor of `jobs`. `progress` shows a bar of runs done/total
    on stderr when it is a terminal. OUT is locked (SweepLock) from before its first file is
    written until the sweep ends; local runs share the lock.
    """
    with contextlib.ExitStack() as lock:
        return _run_sweep(plan, jobs, executor, dry_run, offline, echo, make_executor, progress,
                          lock)


def _run_sweep(plan, jobs, executor, dry_run, offline, echo, make_executor, progress, lock):
    _refuse_other_results(plan)
    rows, todo = {}, []
    for t in plan.tasks:
        summary, log_file = find_summary(t.run_dir)
        if summary is not None:
            stale = _stale_field(t, summary)
            if stale:
                k, was, now = stale
                raise UserError(f"{t.run_dir} holds a finished run with {k} = {json.dumps(was)}, but "
                                f"the spec now gives {json.dumps(now)}; use another --out or delete that folder")
            rows[t.run_id] = result_row(t, "done", plan.out, summary, log_file=log_file)
        else:
            rows[t.run_id] = result_row(t, "pending", plan.out)
            todo.append(t)
    done_before = len(plan.tasks) - len(todo)
    if dry_run:
        for t in plan.tasks:
            state = "done" if rows[t.run_id]["status"] == "done" else "to run"
            echo(f"{state:6}  {t.run_id}\n        {shlex.join(t.command)}")
        echo(f"{len(plan.tasks)} runs: {done_before} done, {len(todo)} to run ({jobs} at a time); "
             f"results in {plan.out}")
        return 0
    if todo and executor is None:  # first, so that a cluster that cannot be reached writes nothing
        executor = make_executor() if make_executor else LocalPoolExecutor(jobs)
    plan.out.mkdir(parents=True, exist_ok=True)
    try:
        lock.enter_context(SweepLock(plan.out))
    except UserError:
        if executor is not None:
            executor.shutdown(cancel=True)
        raise
    (plan.out / "runs").mkdir(exist_ok=True)

    def save():
        write_results(plan, [rows[t.run_id] for t in plan.tasks])
    save()
    where = (executor.describe() if executor is not None else None) or f"{jobs} at a time"
    echo(f"sweep: {len(plan.tasks)} runs, {done_before} already done, {len(todo)} to run "
         f"({where}); results in {plan.out}")
    if not todo:
        return 0
    if jobs > 1 and executor.runs_here:
        _prefetch(todo, plan.base.parent, offline)
    bar = None
    if progress:
        bar, echo = _progress_bar(len(plan.tasks), done_before, echo)
    failed, finished = 0, 0
    futures = {}
    try:
        futures = {executor.submit(t): t for t in todo}
        for fut in cf.as_completed(futures):
            t = futures[fut]
            finished += 1
            tag = f"[{finished}/{len(todo)}]"
            try:
                outcome = fut.result()
            except Exception as exc:  # the executor itself failed on this run
                outcome = RunOutcome(t.run_id, -1, 0.0, error=f"{type(exc).__name__}: {exc}")
            if outcome.error is None:
                rows[t.run_id] = result_row(t, "done", plan.out, outcome.summary, outcome, outcome.log_file)
                s = outcome.summary
                echo(f"{tag} done    {t.run_id}: best dev {s['best_dev']:.2f}, test at best "
                     f"{s['test_at_best']:.2f} ({outcome.seconds:.0f}s)")
            else:
                failed += 1
                rows[t.run_id] = result_row(t, "failed", plan.out, outcome=outcome)
                echo(f"{tag} FAILED  {t.run_id}: {outcome.error} (see {Path(t.run_dir) / 'stderr.txt'})")
            save()
            if bar is not None:
                bar.update(1)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (errors.Terminated)
        executor.shutdown(cancel=True)
        save()
        echo("interrupted; run the same command again to resume")
        return TERMINATE_STATUS if isinstance(exc, Terminated) else INTERRUPT_STATUS
    except BaseException:  # results that cannot be written (a full disk), ...: stop the runs too
        executor.shutdown(cancel=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    executor.shutdown()
    ok = len(plan.tasks) - sum(r["status"] != "done" for r in rows.values())
    echo(f"sweep: {ok} of {len(plan.tasks)} runs done, {failed} failed; results in "
         f"{plan.out / 'results.csv'} and results.json")
    return 1 if failed else 0


# ---------------------------------------------------------------- summarize

def _mean_std(values):
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def _fmt_mean_std(values, digits=2):
    if not values:
        return "–"
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f} ± –"


def load_results(out):
    """The rows of a sweep's results.json (OUT or the file itself)."""
    path = Path(out)
    if path.is_dir():
        path = path / "results.json"
    doc = fsio.read_json(path, "sweep results file")
    rows = doc.get("runs") if isinstance(doc, dict) else doc
    if not isinstance(rows, list):
        raise UserError(f"{path}: not a sweep results file (no list of runs)")
    return doc if isinstance(doc, dict) else {"runs": rows}, rows, path


def summarize(out, by=None):
    """A markdown table: per group of `by` fields, over seeds, mean ± sample std of the accuracies."""
    doc, rows, path = load_results(out)
    if by is None:
        by = [f for f in doc.get("override_fields", []) if f != "RandomSeed"]
    for f in by:
        if f not in config_mod.FIELD_TYPES:
            hint = fsio.did_you_mean(f, config_mod.FIELD_TYPES)
            raise UserError(f"--by: unknown field {fsio.shorten(repr(f))}{hint}")
    done = [r for r in rows if r.get("status") == "done"]
    groups = {}
    for r in done:
        cfg = {**(r.get("config") or {}), **(r.get("overrides") or {})}
        key = tuple(format_value(cfg.get(f)) for f in by)
        groups.setdefault(key, []).append(r)
    header = [*by, "n", "test at best dev (%)", "best dev (%)", "bp s/epoch", "final dims"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, rs in groups.items():
        test = [r["test_at_best"] for r in rs if r.get("test_at_best") is not None]
        dev = [r["best_dev"] for r in rs if r.get("best_dev") is not None]
        bpe = [r["bp_per_epoch"] for r in rs if r.get("bp_per_epoch") is not None]
        dims = [r["dims"] for r in rs if r.get("dims")]
        if dims and all(len(d) == len(dims[0]) for d in dims):
            mean_dims = ", ".join(_fmt_dim(statistics.fmean(col)) for col in zip(*dims))
        else:
            mean_dims = "–"
        cells = [*key, str(len(rs)), _fmt_mean_std(test), _fmt_mean_std(dev),
                 _fmt_seconds(statistics.fmean(bpe)) if bpe else "–", mean_dims]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("mean ± sample standard deviation over the n finished runs of each group "
                 "(usually the seeds); bp s/epoch is the backward time per epoch.")
    other = len(rows) - len(done)
    if other:
        counts = {}
        for r in rows:
            if r.get("status") != "done":
                counts[r.get("status")] = counts.get(r.get("status"), 0) + 1
        lines.append("not included: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + " run(s).")
    return "\n".join(lines)


def _fmt_seconds(x):
    return f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


def _fmt_dim(x):
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


# ---------------------------------------------------------------- command line

def build_parser(prog="nnmnist sweep"):
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run a sweep spec's runs as separate run.py processes (skipping finished ones) "
                    "and collect OUT/results.csv and OUT/results.json. "
                    f"`{prog} summarize OUT` prints a table of a sweep's results.")
    p.add_argument("spec", help="sweep spec (JSON: base, set, grid, runs; see docs/SWEEPS.md)")
    p.add_argument("--out", help="output folder (default: sweeps/<spec name>)")
    p.add_argument("--jobs", type=int, default=None,
                   help=f"runs at a time (default: half the cores, here {default_jobs()}); with "
                        "--executor dask and no --scheduler, the local cluster's worker processes")
    p.add_argument("--executor", choices=("local", "dask"), default="local",
                   help="local: subprocesses of this machine (default); dask: tasks on a Dask "
                        "cluster (needs the cluster extra, see docs/SWEEPS.md)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="with --executor dask: the scheduler to use (default: start a local "
                        "cluster of --jobs workers on 127.0.0.1)")
    p.add_argument("--retries", type=int, default=None,
                   help="with --executor dask: how many times a run whose worker died is started "
                        "again on another worker (default 2)")
    p.add_argument("--offline", action="store_true", help="pass --offline to every run (never download MNIST)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the runs; launch nothing")
    return p


def build_summarize_parser(prog="nnmnist sweep"):
    p = argparse.ArgumentParser(
        prog=f"{prog} summarize",
        description="Print a markdown table of a sweep's results: mean ± sample std over seeds.")
    p.add_argument("out", help="the sweep's output folder (or its results.json)")
    p.add_argument("--by", help="comma-separated fields to group by (default: the spec's grid and "
                                "runs fields except RandomSeed)")
    return p


def _main(argv, prog):
    if argv and argv[0] == "summarize":
        args = build_summarize_parser(prog).parse_args(argv[1:])
        by = [f.strip() for f in args.by.split(",") if f.strip()] if args.by is not None else None
        print(summarize(args.out, by))
        return 0
    args = build_parser(prog).parse_args(argv)
    jobs = default_jobs() if args.jobs is None else args.jobs
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: must be at least 1")
    dask_executor = _dask_options(args)
    plan = build_plan(args.spec, args.out, offline=args.offline)

    def echo(line):
        print(line, flush=True)

    def make_executor():
        return dask_executor(plan, jobs, echo)
    # SIGTERM stops the sweep as Ctrl-C does (report_errors raises it as errors.Terminated).
    return run_sweep(plan, jobs, dry_run=args.dry_run, offline=args.offline, echo=echo,
                     make_executor=make_executor if dask_executor else None,
                     progress=dask_executor is not None)


def _dask_options(args):
    """Check the Dask flags; return a function (plan, jobs, echo) -> DaskExecutor, or None for the local pool."""
    if args.executor != "dask":
        for flag, value in (("--scheduler", args.scheduler), ("--retries", args.retries)):
            if value is not None:
                raise UserError(f"{flag} is only for --executor dask")
        return None
    if args.scheduler is not None and args.jobs is not None:
        raise UserError("--jobs sets the workers of a local Dask cluster; with --scheduler the "
                        "cluster's own workers decide how many runs go at a time")
    retries = 2 if args.retries is None else args.retries
    if retries < 0:
        raise UserError(f"--retries {retries}: must be 0 or more")
    from . import cluster  # imports Dask only when an executor is made
    if not args.dry_run:
        cluster.require_dask()  # a missing extra fails before anything is written

    def make(plan, jobs, echo):
        return cluster.DaskExecutor(plan.base, scheduler=args.scheduler, workers=jobs,
                                    retries=retries, offline=args.offline, echo=echo)
    return make


def main(argv=None, prog="nnmnist sweep"):
    return report_errors(_main, sys.argv[1:] if argv is None else list(argv), prog)

