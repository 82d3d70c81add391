"""What every benchmark here shares: fresh worker processes, alternation, medians, the header.

A benchmark script calls `main_of(modes)` with its modes; each mode is a function of the
parsed arguments. A measurement that must not share a process with another (two OpenMP
runtimes, caches warmed by the previous contender, a compiled kernel left in memory) runs as
`measure(script, spec)`: a fresh `python script --worker SPEC` whose last stdout line is its
JSON result. `alternate` runs the contenders in turn, reversing the order every other repeat
so that a drift of the machine's load falls on all of them, and `medians` reduces the
samples. `header` says what was measured on: the CPU, the library versions, the BLAS kernels
threadpoolctl names (with a warning when OPENBLAS_CORETYPE forces other kernels than the
CPU's own) and the load average before and after.

Measure with the BLAS kernels OpenBLAS picks for the CPU, as a user's machine does:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/SCRIPT.py MODE ...
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FORCING_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

# What the user's environment says before nnmnist's import adds its thread-runtime defaults
# (recorded here, before any script imports nnmnist): PyTorch's workers get exactly this.
THREAD_VARS = ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")
USER_THREAD_ENV = {name: os.environ.get(name) for name in THREAD_VARS}


def fail(message):
    """A user's mistake: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def worker_env(torch=False, extra=None):
    """A worker's environment: this checkout first on the path; for a PyTorch worker, the
    thread settings the user had before importing nnmnist (PyTorch as its users run it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if torch:
        for name, value in USER_THREAD_ENV.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
    env.update(extra or {})
    return env


def measure(script, spec, env=None, cwd=None):
    """Run `python script --worker SPEC` in a fresh process; its last stdout line, as JSON."""
    proc = subprocess.run([sys.executable, str(script), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env or worker_env(), cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"worker {spec} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def alternate(contenders, repeats, run, echo=True):
    """{name: [sample, ...]}: run(name) for every contender, `repeats` rounds, the order
    reversed every other round."""
    names = list(contenders)
    samples = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            samples[name].append(run(name))
            if echo:
                print(f"  repeat {r + 1} {name}: {fmt_sample(samples[name][-1])}",
                      file=sys.stderr, flush=True)
    return samples


def fmt_sample(sample):
    if isinstance(sample, dict):
        return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in sample.items())
    return f"{sample:.4g}" if isinstance(sample, float) else str(sample)


def medians(samples):
    """Per contender, the median of every numeric field of its samples (or of the numbers)."""
    out = {}
    for name, runs in samples.items():
        if runs and isinstance(runs[0], dict):
            out[name] = {key: statistics.median(r[key] for r in runs)
                         for key, value in runs[0].items() if isinstance(value, (int, float))}
        else:
            out[name] = statistics.median(runs)
    return out


def blas_info():
    """(text, architectures) of the BLAS libraries threadpoolctl sees in this process."""
    from threadpoolctl import threadpool_info
    libs = [i for i in threadpool_info() if i["user_api"] == "blas"]
    text = ", ".join(f"{i['internal_api']} {i.get('version')}, kernels {i.get('architecture')} "
                     f"({i['num_threads']} threads)" for i in libs)
    return text, [i.get("architecture") for i in libs]


def native_blas_arch():
    """The BLAS kernels a fresh process picks with OPENBLAS_CORETYPE and _L2_SIZE unset."""
    env = {k: v for k, v in os.environ.items() if k not in FORCING_VARS}
    code = ("import numpy, threadpoolctl; print(','.join(str(i.get('architecture')) for i in "
            "threadpoolctl.threadpool_info() if i['user_api'] == 'blas'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return out.stdout.strip().split(",") if out.returncode == 0 else []


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average():
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def header(command, extra=()):
    """The lines that say what a table was measured on, and how."""
    import numba
    import numpy as np
    blas, archs = blas_info()
    lines = [f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; "
             f"{platform.system()} {platform.release()}",
             f"- Python {platform.python_version()}, NumPy {np.__version__}, "
             f"Numba {numba.__version__}",
             f"- BLAS (threadpoolctl): {blas}"]
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced:
        lines.append(f"- WARNING: OPENBLAS_CORETYPE={forced} forces OpenBLAS's {archs} kernels; "
                     f"this CPU's own choice is {native_blas_arch()}. Rerun with "
                     "`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` to measure what users get.")
    lines += list(extra)
    lines.append(f"- command: {command}")
    return lines


def table(columns, rows):
    """A Markdown table."""
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def mnist_dir():
    """The folder of the MNIST files, as the tests find it (or data/ of this checkout)."""
    sys.path.insert(0, str(REPO))
    from nnmnist.data.mnist import find_mnist_dir
    return Path(find_mnist_dir() or REPO / "data").resolve()


def load_splits(data_dir=None):
    """MNIST's splits from `data_dir` (default: `mnist_dir()`), with whichever nnmnist this
    process imported (this checkout's, or a git revision's in an A/B)."""
    from nnmnist.data.mnist import load_mnist
    from nnmnist.run.config import Config
    return load_mnist(Config(DataDir=str(data_dir or mnist_dir())), allow_fetch=True,
                      log=lambda *a: None)


@contextlib.contextmanager
def checkout(rev):
    """A temporary git worktree of this repository at `rev` (removed afterwards)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkout"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(path),
                        rev], check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                           check=False)


def first_line(doc):
    return (doc or "").strip().split("\n")[0]


def main_of(doc, modes, add_arguments, worker=None, argv=None):
    """Parse `MODE [options]` (or `--worker SPEC`, the fresh process of one measurement) and
    run the mode. `add_arguments(mode, parser)` adds a mode's options."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        result = worker(json.loads(argv[1]))
        print(json.dumps(result))
        return 0
    ap = argparse.ArgumentParser(description=doc.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="modes:\n" + "\n".join(
                                     f"  {name:12s} {first_line(fn.__doc__)}"
                                     for name, fn in modes.items()))
    sub = ap.add_subparsers(dest="mode", required=True)
    for name, fn in modes.items():
        p = sub.add_parser(name, help=first_line(fn.__doc__),
                           description=fn.__doc__)
        add_arguments(name, p)
    args = ap.parse_args(argv)
    return modes[args.mode](args) or 0
