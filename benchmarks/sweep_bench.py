"""Wall time of one sweep on the local pool against the same sweep on a local Dask cluster.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/sweep_bench.py \
        --data-dir ../shared/data/mnist [--runs 8] [--epochs 1] [--jobs 2] [--repeats 3]

The sweep is configs/default.json with MaxEpoch = --epochs over --runs seeds. Each contender is
the whole command as a user runs it (`nnmnist sweep SPEC --jobs N --offline`, with
`--executor dask` for Dask, which then starts a LocalCluster of N workers), timed from launch to
exit, each into a fresh output folder. One untimed sweep of one run first compiles and caches
the Numba kernels. The two alternate, and which goes first alternates between repeats, so that
a change in the machine's load falls on both. Prints each time, the medians and their ratio,
the median of the per-repeat ratios (less sensitive to a load that drifts between repeats), and
checks that both found the same accuracies.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIGURES = ("seed", "best_dev", "test_at_best", "epochs", "dims")


def blas_report():
    """The BLAS and OpenMP libraries a run loads, as threadpoolctl names them."""
    code = ("import numpy, json; import nnmnist.kernels; from threadpoolctl import threadpool_info; "
            "print(json.dumps([(i.get('internal_api'), i.get('version'), i.get('architecture')) "
            "for i in threadpool_info()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=_env()).stdout.strip()
    return ", ".join(" ".join(str(x) for x in lib if x) for lib in json.loads(out or "[]"))


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


def one_sweep(spec, out, jobs, dask):
    cmd = [sys.executable, "-m", "nnmnist", "sweep", str(spec), "--out", str(out), "--jobs", str(jobs), "--offline"]
    if dask:
        cmd += ["--executor", "dask"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    rows = json.loads((out / "results.json").read_text())["runs"]
    return seconds, {r["run_id"]: tuple(json.dumps(r[k]) for k in FIGURES) for r in rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder with the MNIST files")
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    try:
        base = json.loads((REPO / "configs" / "default.json").read_text(encoding="utf-8-sig"))
        base.update(DataDir=str(Path(args.data_dir).resolve()), MaxEpoch=args.epochs)
        (work / "base.json").write_text(json.dumps(base))
        spec = work / "spec.json"
        spec.write_text(json.dumps({"base": "base.json", "grid": {"RandomSeed": list(range(1, args.runs + 1))}}))
        print(f"{args.runs} runs of {args.epochs} epoch(s), configs/default.json, --jobs {args.jobs}; "
              f"{os.cpu_count()} cores; libraries: {blas_report()}", flush=True)
        warm = work / "warm.json"
        warm.write_text(json.dumps({"base": "base.json", "grid": {"RandomSeed": [1]}}))
        one_sweep(warm, work / "warm", 1, False)  # Numba compiles and caches the kernels here
        times = {"local": [], "dask": []}
        figures = {}
        for i in range(args.repeats):
            order = ("local", "dask") if i % 2 == 0 else ("dask", "local")
            for name in order:
                seconds, figs = one_sweep(spec, work / f"{name}-{i}", args.jobs, name == "dask")
                times[name].append(seconds)
                figures.setdefault(name, figs)
                print(f"repeat {i + 1}: {name:5} {seconds:7.1f} s", flush=True)
                shutil.rmtree(work / f"{name}-{i}")
        same = figures["local"] == figures["dask"]
        med = {k: statistics.median(v) for k, v in times.items()}
        pairs = statistics.median(d / loc for d, loc in zip(times["dask"], times["local"]))
        print(f"median local pool {med['local']:.1f} s, Dask LocalCluster {med['dask']:.1f} s; "
              f"Dask / local = {med['dask'] / med['local']:.3f} (median of the per-repeat ratios "
              f"{pairs:.3f}); same accuracies: {same}")
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
