"""How epoch time grows with the hidden layers' width, dense against meProp, and PyTorch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/width_bench.py \
        [--widths 500,1000,2000,4000] [--ks 20,80] [--threads 1] [--repeats 3] [--examples 11000]

For every HiddenSize (both hidden layers) it measures mlp and PyTorch's dense MLP once, and
for every k mlptop, mlptop with LazyUpdate, unified top-k and unified with LazyUpdate. Each
measurement is a fresh worker process of `epoch_bench.py` (same warm-up, same timers, PyTorch
with its own thread settings); the contenders of one width alternate within each repeat, and
the table gives medians. A full epoch at width 4000 takes minutes for the dense contenders,
so each measurement trains on the first `--examples` examples of the shuffled epoch and the
times are scaled by 55,000 / examples to a full epoch (the same factor for every entry).

Writes a Markdown table to stdout, the raw medians to `--json` when given, and a log-log
figure of backprop and epoch time against width to `--figure`
(default docs/figures/width_scaling.png; needs matplotlib, the `plot` extra).
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import epoch_bench  # noqa: E402  (imports nnmnist; PyTorch workers get their own environment)

EPOCH = 55000


def contenders(ks, have_torch):
    names = ["mlp"]
    for k in ks:
        names += [f"mlptop k={k}", f"mlptop k={k} lazy", f"unified k={k}", f"unified k={k} lazy"]
    if have_torch:
        names.append("PyTorch dense")
    return names


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="500,1000,2000,4000")
    ap.add_argument("--ks", default="20,80")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--minibatch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--examples", type=int, default=11000,
                    help="training examples per measurement (0: the whole epoch)")
    ap.add_argument("--json", help="also write the medians (scaled to an epoch) here")
    ap.add_argument("--figure", default=str(REPO / "docs" / "figures" / "width_scaling.png"))
    ap.add_argument("--replot", help="only draw the figure from a --json file of an earlier run "
                                     "(give the same --widths, --ks, --threads and --repeats)")
    args = ap.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    if args.replot:
        entries = json.loads(Path(args.replot).read_text())
        med = {(e["width"], e["case"]): e for e in entries}
        names = list(dict.fromkeys(e["case"] for e in entries))
        return plot(widths, names, med, args, Path(args.figure))
    names = contenders(ks, epoch_bench.HAVE_TORCH)
    scale = EPOCH / args.examples if args.examples else 1.0
    samples = {(w, n): [] for w in widths for n in names}
    for r in range(args.repeats):
        for w in widths:
            turn = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
            for name in turn:
                t = epoch_bench.measure(name, args.threads, args.minibatch, w, args.examples)
                samples[(w, name)].append(t)
                print(f"  repeat {r} width {w} {name}: fp {t.fp:.3f} bp {t.bp:.3f} "
                      f"update {t.update:.3f}", file=sys.stderr, flush=True)
    med = {}
    for key, ts in samples.items():
        med[key] = {part: scale * statistics.median(getattr(t, part) for t in ts)
                    for part in ("fp", "bp", "update")}
        med[key]["epoch"] = sum(med[key].values())

    print("\n".join(epoch_bench.machine_info()))
    print(f"- command: python benchmarks/width_bench.py --widths {args.widths} --ks {args.ks} "
          f"--threads {args.threads} --minibatch {args.minibatch} --repeats {args.repeats} "
          f"--examples {args.examples}; medians of {args.repeats}, each scaled by "
          f"{scale:.2f} to a {EPOCH}-example epoch\n")
    print("| HiddenSize | case | fp s | bp s | update s | epoch s | mlp bp / bp | "
          "epoch / PyTorch dense |")
    print("|---|---|---|---|---|---|---|---|")
    for w in widths:
        dense_bp = med[(w, "mlp")]["bp"]
        torch_epoch = med.get((w, "PyTorch dense"), {}).get("epoch")
        for name in names:
            m = med[(w, name)]
            gain = f"{dense_bp / m['bp']:.1f}x" if not name.startswith("PyTorch") else "—"
            vs = f"{m['epoch'] / torch_epoch:.2f}x" if torch_epoch else "—"
            print(f"| {w} | {name} | {m['fp']:.2f} | {m['bp']:.2f} | {m['update']:.2f} | "
                  f"{m['epoch']:.2f} | {gain} | {vs} |")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [dict(width=w, case=n, **med[(w, n)]) for w in widths for n in names], indent=1))
    if args.figure:
        plot(widths, names, med, args, Path(args.figure))


def plot(widths, names, med, args, path):
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    colours = {"mlp": "black", "PyTorch dense": "tab:gray", "mlptop": "tab:blue",
               "mlptop lazy": "tab:cyan", "unified": "tab:red", "unified lazy": "tab:orange"}
    for ax, part, title in ((axes[0], "bp", "backprop per epoch"),
                            (axes[1], "epoch", "fp + bp + update per epoch")):
        for name in names:
            words = name.split()
            kind = " ".join(w for w in words if not w.startswith("k="))
            k = next((w for w in words if w.startswith("k=")), None)
            style = "-" if k is None else ("--" if k == f"k={max(int(s) for s in args.ks.split(','))}" else ":")
            ax.plot(widths, [med[(w, name)][part] for w in widths], style, marker="o", ms=3,
                    color=colours.get(kind, "tab:green"), label=name)
        x0, y0 = widths[0], med[(widths[0], "mlp")][part]
        for power in (1, 2):  # slopes for reference, through mlp's first point
            ax.plot(widths, [y0 * (w / x0) ** power for w in widths], color="0.8", lw=0.8,
                    zorder=0)
            ax.annotate(f"~width^{power}", (widths[-1], y0 * (widths[-1] / x0) ** power),
                        fontsize=7, color="0.5")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(widths)
        ax.set_xticklabels([str(w) for w in widths])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("HiddenSize (both hidden layers)")
        ax.set_ylabel("seconds")
        ax.set_title(title)
        ax.grid(True, which="both", lw=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"One MNIST epoch, minibatch {args.minibatch}, {args.threads} thread(s); "
                 f"medians of {args.repeats} (k=20 dotted, k=80 dashed)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nfigure: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
