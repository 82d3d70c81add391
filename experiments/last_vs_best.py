"""Which epoch is reported: the test accuracy at the best dev accuracy (the log's last `$` line,
what nnmnist and the original report) against the test accuracy of the final model.

    python experiments/last_vs_best.py SWEEP_OUT [--where Field=value ...]

For every finished run of a sweep's output folder, scores the run's checkpoint (`.ckpt.npz`,
the state after the last part) on the test set with `nnmnist.inference.evaluate`, and prints one
Markdown row per configuration (runs that differ only in RandomSeed are grouped): mean ±
sample standard deviation over seeds of the test accuracy at best dev, and of the last one.
"""
import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnmnist import fsio  # noqa: E402
from nnmnist.run.command import parse_override  # noqa: E402
from nnmnist.errors import report_errors  # noqa: E402
from nnmnist.inference.evaluate import evaluate_file  # noqa: E402


def mean_std(values):
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "-"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(argv=None):
    return report_errors(_main, argv)


def _main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="a sweep's output folder (with results.json)")
    ap.add_argument("--where", action="append", default=[], metavar="Field=value",
                    help="only runs whose config has this value")
    args = ap.parse_args(argv)
    results = fsio.read_json(args.out / "results.json", "sweep results")
    where = dict(parse_override(w) for w in args.where)
    groups = {}
    for run in results["runs"]:
        if run["status"] != "done" or any(run["config"].get(k) != v for k, v in where.items()):
            continue
        ckpt = sorted((args.out / run["run_dir"]).glob("*.ckpt.npz"))
        if not ckpt:
            continue
        _, tst = evaluate_file(ckpt[-1], log=lambda *a, **k: None)
        key = ", ".join(f"{k}={v}" for k, v in run["overrides"].items() if k != "RandomSeed") or "(base)"
        best, last = groups.setdefault(key, ([], []))
        best.append(run["test_at_best"])
        last.append(tst.acc)
    print("| run | seeds | test at best dev | test after the last epoch |")
    print("|---|---|---|---|")
    for key, (best, last) in groups.items():
        print(f"| {key} | {len(best)} | {mean_std(best)} | {mean_std(last)} |")


if __name__ == "__main__":
    sys.exit(main())
