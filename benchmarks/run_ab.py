"""A/B of whole runs: `run.py` in this checkout against the same command at a git revision.

    python benchmarks/run_ab.py --base HEAD~1 [--repeats 3] -- configs/mlptop.json \
        --set MinibatchSize=10 --set TrainTop=20 --set MaxEpoch=1 --set RandomSeed=1

The base revision is checked out into a temporary git worktree. The two sides run alternately
(A B, then B A, ...), each a fresh process with one thread and with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE removed from its environment, so that OpenBLAS picks its native kernels.
The figures are the medians of the summed `Time:` lines (fp, bp, update), and the script says
whether the two logs agree once times are removed.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIME = re.compile(r"^Time: fp: ([\d.]+)s, bp: ([\d.]+)s, update: ([\d.]+)s")


def one_run(checkout, run_args, log_dir):
    """(fp, bp, update) seconds summed over the run's epochs, and its log without times."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "PYTHONPATH")}
    subprocess.run([sys.executable, str(checkout / "run.py"), *run_args, "--set", "Threads=1",
                    "--quiet", "--log-dir", str(log_dir)], cwd=checkout, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    [log] = log_dir.glob("*-log-*.txt")
    lines = log.read_text().splitlines()
    log.unlink()
    for extra in log_dir.iterdir():  # the run's metrics and model files
        extra.unlink()
    times = [tuple(map(float, m.groups())) for m in map(TIME.match, lines) if m]
    kept = [re.sub(r"\d+\.\d+s|\d{8}-\d{6}", "T", line) for line in lines
            if not line.startswith(("Time:", "AvgTime:"))]
    return tuple(sum(t[i] for t in times) for i in range(3)), kept


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD~1", help="git revision of the A side")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("run_args", nargs="+", help="run.py's arguments (after --)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "checkout"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(base),
                        args.base], check=True)
        try:
            data = REPO / "data"
            for f in data.glob("*ubyte*"):  # the same MNIST files for both sides
                (base / "data" / f.name).write_bytes(f.read_bytes())
            sides = {"base": base, "new": REPO}
            samples = {name: [] for name in sides}
            logs = {}
            for name, checkout in sides.items():  # untimed: compile and cache the kernels
                (tmp / f"logs-{name}").mkdir()
                one_run(checkout, args.run_args, tmp / f"logs-{name}")
            for r in range(args.repeats):
                for name in (("base", "new") if r % 2 == 0 else ("new", "base")):
                    t, logs[name] = one_run(sides[name], args.run_args, tmp / f"logs-{name}")
                    samples[name].append(t)
                    print(f"  {name}: fp {t[0]:.2f} s, bp {t[1]:.2f} s, update {t[2]:.2f} s",
                          flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                           check=False)
    print(f"\nrun.py {' '.join(args.run_args)}; base {args.base} against the working tree; "
          f"one thread, native OpenBLAS kernels; medians of {args.repeats}")
    print("| code | fp s | bp s | update s | total s |")
    print("|---|---|---|---|---|")
    for name in sides:
        med = [statistics.median(s[i] for s in samples[name]) for i in range(3)]
        print(f"| {name} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} | {sum(med):.2f} |")
    print(f"\nlogs without times: {'identical' if logs['base'] == logs['new'] else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
