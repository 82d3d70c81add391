"""Plots from the metrics files and sweep results (matplotlib is an optional extra: `pip install .[plot]`).

    nnmnist plot METRICS.jsonl [MORE.jsonl ...] -o curves.png [--title T]
    nnmnist plot k-effect OUT/results.json -o k.png [--title T] [--where Field=Value ...]
    nnmnist plot tagger-k OUT/results.json BP.json -o k.png [--title T] [--where Field=Value ...]

The first draws training curves, one colour per file: dev accuracy (line) and test accuracy
(markers: the test set is only evaluated when dev accuracy reaches a new best) on the left, train
and dev loss on the right, against the part index (IterPerEpoch parts per epoch).

The second reads a sweep's results.json and draws test accuracy at the best dev accuracy against
k on a log2 axis, with mean and sample-std error bars over the runs (seeds) at each k, for
top-k (NetType mlptop, k = TrainTop), random-k (mlprand, k = TrainTop) and a plain dense network
only k wide (mlp, k = HiddenSize).

The third is the tagger's: on the left test accuracy at the best dev accuracy against k (log2
axis, mean and sample std over seeds) for lstmtop and lstmrand from a sweep's results.json, the
dense tagger (lstm) a horizontal line; on the right backprop seconds per epoch against k from the
JSON of `benchmarks/epoch.py tagger-bp --json`, dense again a horizontal line.
"""
import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from .. import fsio
from ..errors import UserError

INSTALL_HINT = "matplotlib is not installed; pip install .[plot] (or pip install matplotlib)"
K_GROUPS = (  # (NetType, label, the field that is k)
    ("mlptop", "top-k (meProp, mlptop)", "TrainTop"),
    ("mlprand", "random-k (mlprand)", "TrainTop"),
    ("mlp", "dense, only k wide (mlp, HiddenSize = k)", "HiddenSize"),
)
_STAMP = re.compile(r"-log-\d{8}-\d{6}(-\d+)?$")


def pyplot():
    """matplotlib.pyplot on the Agg backend, or a one-line error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# ---------------------------------------------------------------- reading

class Metrics:
    """One metrics file: its part records, its summary (None while a run is still going) and a label."""

    def __init__(self, path, parts, summary):
        self.path, self.parts, self.summary = Path(path), parts, summary
        name = summary.get("run_name") if summary else None
        self.run_name = name or _STAMP.sub("", self.path.stem)
        self.seed = summary.get("seed") if summary else None


def read_metrics(path):
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: metrics file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    parts, summary = [], None
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == last:  # a run still writing its last line
                break
            raise UserError(f"{path}: line {i + 1} is not JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}: line {i + 1} is not a metrics record")
        if rec.get("type") == "part":
            parts.append(rec)
        elif rec.get("type") == "resume" and "epoch" in rec and "part" in rec:
            # A resumed run replays from the checkpoint's position. Resuming cuts the file
            # back to that point first, but a file it could not cut (changed since, or from
            # an older checkpoint) still holds records from there on: the replay replaces them.
            at = (rec["epoch"], rec["part"])
            parts = [r for r in parts if (r.get("epoch", -1), r.get("part", -1)) < at]
        elif rec.get("type") == "summary":
            summary = rec
    if not parts:
        raise UserError(f"{path}: no part records; is it a run's .jsonl metrics file?")
    return Metrics(path, parts, summary)


def _labels(metrics):
    """Run names, made unique with the seed, then with the run's folder or file name."""
    names = [m.run_name for m in metrics]
    labels = [f"{n} seed {m.seed}" if names.count(n) > 1 and m.seed is not None else n
              for n, m in zip(names, metrics)]
    firsts = list(labels)
    for i, m in enumerate(metrics):
        if firsts.count(firsts[i]) > 1:
            labels[i] = f"{firsts[i]} ({m.path.parent.name or m.path.stem})"
    return labels


# ---------------------------------------------------------------- training curves

def plot_curves(paths, out, title=None):
    metrics = [read_metrics(p) for p in paths]
    plt = pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(13, 5))
    from matplotlib.lines import Line2D
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    per_epoch, run_handles = set(), []
    for i, (m, label) in enumerate(zip(metrics, _labels(metrics))):
        color = colors[i % len(colors)]
        x = list(range(1, len(m.parts) + 1))
        marker = "." if len(x) <= 40 else None  # short runs: show the points themselves
        ax_acc.plot(x, [r["dev_acc"] for r in m.parts], color=color, marker=marker)
        tx = [xi for xi, r in zip(x, m.parts) if r.get("test_acc") is not None]
        ty = [r["test_acc"] for r in m.parts if r.get("test_acc") is not None]
        ax_acc.plot(tx, ty, color=color, linestyle=":", marker="o", markersize=4)
        ax_loss.plot(x, [r["train_loss"] for r in m.parts], color=color, linestyle="--", marker=marker)
        ax_loss.plot(x, [r["dev_loss"] for r in m.parts], color=color, marker=marker)
        run_handles.append(Line2D([], [], color=color, label=label))
        if m.summary and isinstance(m.summary.get("config"), dict):
            per_epoch.add(m.summary["config"].get("IterPerEpoch"))
    xlabel = "part"
    if len(per_epoch) == 1 and None not in per_epoch:
        xlabel += f" ({per_epoch.pop()} per epoch)"
    ax_acc.set(xlabel=xlabel, ylabel="accuracy (%)", title="dev and test accuracy")
    ax_loss.set(xlabel=xlabel, ylabel="loss (mean cross-entropy)", title="train and dev loss")
    key = dict(color="gray")
    ax_acc.legend(handles=run_handles + [
        Line2D([], [], label="dev", **key),
        Line2D([], [], linestyle=":", marker="o", markersize=4, label="test (at each new best dev)", **key)],
        fontsize="small")
    ax_loss.legend(handles=[Line2D([], [], linestyle="--", label="train", **key),
                            Line2D([], [], label="dev", **key)], fontsize="small")
    for ax in (ax_acc, ax_loss):
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    _save(plt, fig, out)


# ---------------------------------------------------------------- effect of k

def _parse_where(items):
    where = {}
    for text in items or []:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise UserError(f"--where {text!r}: expected Field=Value, for example --where OptType=adam")
        try:
            where[name] = json.loads(value)
        except json.JSONDecodeError:
            where[name] = value
    return where


def k_effect_points(rows, where=None):
    """{group label: [(k, mean, std, n), ...]} over the finished runs that match `where`."""
    where = where or {}
    points = {}
    for net, label, field in K_GROUPS:
        by_k = {}
        for r in rows:
            if r.get("status", "done") != "done" or r.get("test_at_best") is None:
                continue
            cfg = {**(r.get("config") or {}), **(r.get("overrides") or {})}
            if cfg.get("NetType") != net or cfg.get(field) is None:
                continue
            if any(cfg.get(k) != v for k, v in where.items()):
                continue
            by_k.setdefault(int(cfg[field]), []).append(float(r["test_at_best"]))
        if by_k:
            points[label] = [(k, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                             for k, v in sorted(by_k.items())]
    return points


def _epochs_note(rows):
    epochs = {(r.get("config") or {}).get("MaxEpoch") for r in rows if r.get("status", "done") == "done"}
    epochs.discard(None)
    if len(epochs) == 1:
        n = epochs.pop()
        return f"{n} epoch{'s' if n != 1 else ''}"
    return None


def plot_k_effect(results, out, title=None, where=None):
    from .sweep import load_results
    _, rows, path = load_results(results)
    points = k_effect_points(rows, _parse_where(where))
    if not points:
        raise UserError(f"{path}: no finished mlptop, mlprand or mlp runs"
                        + (" matching --where" if where else ""))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    ks = set()
    for label, pts in points.items():
        k, mean, std, n = zip(*pts)
        ks.update(k)
        ax.errorbar(k, mean, yerr=std, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ks))
    ax.set_xticklabels([str(k) for k in sorted(ks)])
    ax.minorticks_off()
    ax.set(xlabel="k", ylabel="test accuracy at best dev (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    note = _epochs_note(rows)
    default = "Effect of k on MNIST" + (f" ({note}; mean ± std over seeds)" if note
                                        else " (mean ± std over seeds)")
    ax.set_title(title or default)
    _save(plt, fig, out)


# ---------------------------------------------------------------- the tagger's k

def _tagger_label(net, scope):
    kind = "top-k" if net == "lstmtop" else "random-k"
    if scope == "whole":
        return f"{kind} of the whole 4H ({net}, TopKScope whole)"
    return f"{kind} of each gate ({net})"


def _mean_std(values):
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def tagger_k_points(rows, where=None):
    """({group label: [(k, mean, std, n), ...]}, dense (mean, std, n) or None): test accuracy
    at best dev of the finished tagger runs that match `where`, by NetType, TopKScope and k."""
    where = where or {}
    by_group, dense = {}, []
    for r in rows:
        if r.get("status", "done") != "done" or r.get("test_at_best") is None:
            continue
        cfg = {**(r.get("config") or {}), **(r.get("overrides") or {})}
        if any(cfg.get(k) != v for k, v in where.items()):
            continue
        net, acc = cfg.get("NetType"), float(r["test_at_best"])
        if net == "lstm":
            dense.append(acc)
        elif net in ("lstmtop", "lstmrand") and cfg.get("TrainTop") is not None:
            group = by_group.setdefault((net, cfg.get("TopKScope", "gate")), {})
            group.setdefault(int(cfg["TrainTop"]), []).append(acc)
    points = {_tagger_label(net, scope): [(k, *_mean_std(v)) for k, v in sorted(by_k.items())]
              for (net, scope), by_k in sorted(by_group.items())}
    return points, _mean_std(dense) if dense else None


def tagger_bp_points(path):
    """({group label: [(k, bp seconds), ...]}, dense bp seconds or None) from the JSON of
    `benchmarks/epoch.py tagger-bp --json`."""
    doc = fsio.read_json(path, "tagger-bp JSON file")
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "bp" in r for r in rows):
        raise UserError(f"{path}: not the JSON of `benchmarks/epoch.py tagger-bp --json` "
                        "(no list of rows with bp)")
    points, dense = {}, None
    for r in rows:
        if r.get("NetType") == "lstm":
            dense = float(r["bp"])
        elif r.get("TrainTop") is not None:
            label = _tagger_label(r.get("NetType"), r.get("TopKScope", "gate"))
            points.setdefault(label, []).append((int(r["TrainTop"]), float(r["bp"])))
    return {label: sorted(pts) for label, pts in points.items()}, dense


def plot_tagger_k(results, bp_json, out, title=None, where=None):
    from .sweep import load_results
    _, rows, path = load_results(results)
    points, dense = tagger_k_points(rows, _parse_where(where))
    if not points and dense is None:
        raise UserError(f"{path}: no finished lstm, lstmtop or lstmrand runs"
                        + (" matching --where" if where else ""))
    bp_points, dense_bp = tagger_bp_points(bp_json)
    plt = pyplot()
    fig, (ax_acc, ax_bp) = plt.subplots(1, 2, figsize=(12, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    color_of = {label: colors[i % len(colors)]
                for i, label in enumerate(dict.fromkeys([*points, *bp_points]))}
    ks = set()
    for label, pts in points.items():
        k, mean, std, n = zip(*pts)
        ks.update(k)
        ax_acc.errorbar(k, mean, yerr=std, marker="o", capsize=3, label=label, color=color_of[label])
    if dense is not None:
        mean, std, n = dense
        ax_acc.axhline(mean, color="black", linestyle="--",
                       label=f"dense (lstm), {n} run{'s' if n != 1 else ''}")
        if std:
            ax_acc.axhspan(mean - std, mean + std, color="black", alpha=0.08)
    for label, pts in bp_points.items():
        k, bp = zip(*pts)
        ks.update(k)
        ax_bp.plot(k, bp, marker="o", label=label, color=color_of[label])
    if dense_bp is not None:
        ax_bp.axhline(dense_bp, color="black", linestyle="--", label="dense (lstm)")
    for ax in (ax_acc, ax_bp):
        ax.set_xscale("log", base=2)
        if ks:
            ax.set_xticks(sorted(ks))
            ax.set_xticklabels([str(k) for k in sorted(ks)])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    note = _epochs_note(rows)
    ax_acc.set(xlabel="k", ylabel="test accuracy at best dev (%)",
               title="accuracy" + (f" ({note}; mean ± std over seeds)" if note
                                   else " (mean ± std over seeds)"))
    ax_bp.set(xlabel="k", ylabel="seconds per epoch", title="backprop time per epoch")
    fig.suptitle(title or "Effect of k on the part-of-speech tagger (UD English-EWT)")
    _save(plt, fig, out)


def _save(plt, fig, out):
    out = Path(out)
    try:
        if not out.parent.is_dir():
            raise UserError(f"{out}: folder {out.parent} does not exist")
        fig.tight_layout()
        fig.savefig(out, dpi=120)
    except ValueError as exc:  # e.g. an extension matplotlib cannot write
        raise UserError(f"{out}: cannot save the figure ({exc})") from None
    except OSError as exc:
        raise UserError(f"{out}: cannot write ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- command line

def main(argv=None, prog="nnmnist plot"):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] == "k-effect":
            p = argparse.ArgumentParser(
                prog=f"{prog} k-effect",
                description="Test accuracy against k (log2 axis) for top-k, random-k and a dense "
                            "network only k wide, from a sweep's results.json.")
            p.add_argument("results", help="a sweep's results.json (or its output folder)")
            p.add_argument("-o", "--output", required=True, help="the PNG to write")
            p.add_argument("--title")
            p.add_argument("--where", action="append", metavar="FIELD=VALUE",
                           help="only runs whose config has this value, e.g. --where OptType=adam")
            args = p.parse_args(argv[1:])
            plot_k_effect(args.results, args.output, args.title, args.where)
        elif argv and argv[0] == "tagger-k":
            p = argparse.ArgumentParser(
                prog=f"{prog} tagger-k",
                description="The tagger's test accuracy against k (a sweep's results.json) and "
                            "backprop time against k (benchmarks/epoch.py tagger-bp --json), "
                            "dense as a horizontal line in both.")
            p.add_argument("results", help="a sweep's results.json (or its output folder)")
            p.add_argument("bp_json", help="the JSON of benchmarks/epoch.py tagger-bp --json")
            p.add_argument("-o", "--output", required=True, help="the PNG to write")
            p.add_argument("--title")
            p.add_argument("--where", action="append", metavar="FIELD=VALUE",
                           help="only runs whose config has this value, e.g. --where HiddenSize=500")
            args = p.parse_args(argv[1:])
            plot_tagger_k(args.results, args.bp_json, args.output, args.title, args.where)
        else:
            p = argparse.ArgumentParser(
                prog=prog,
                description="Training curves (dev/test accuracy, train/dev loss against the part "
                            "index) from runs' .jsonl metrics files into a PNG. "
                            f"`{prog} k-effect results.json -o k.png` plots a "
                            "sweep's test accuracy against k; "
                            f"`{prog} tagger-k results.json bp.json -o k.png` the tagger's "
                            "accuracy and backprop time against k.")
            p.add_argument("metrics", nargs="+", help="one or more .jsonl metrics files")
            p.add_argument("-o", "--output", required=True, help="the PNG to write")
            p.add_argument("--title")
            args = p.parse_args(argv)
            plot_curves(args.metrics, args.output, args.title)
        print(f"wrote {args.output}")
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

