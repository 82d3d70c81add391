"""Whole training epochs and runs: nnmnist's network types against PyTorch and the original.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/epoch.py MODE [options]

Modes (`python benchmarks/epoch.py MODE --help` for each one's options):

- table: one epoch of each case (network types, LazyUpdate, PyTorch dense and meProp) at
  the given minibatch sizes and thread counts; ratios to PyTorch dense, meProp's backprop
  gain over mlp's, and the original C# program's epoch over ours.
- width: the same at several HiddenSize values, scaled from the first examples of an epoch;
  draws docs/figures/width_scaling.png.
- step: where one training step's microseconds go, per op (forward and backward) and the
  update, inside training.
- ab: whole `run.py` runs of this checkout against a git revision, alternating, and whether
  the two logs agree once times are removed.
- late: backprop time over several epochs of one run (does it stay flat?).
- cold-start: `run.py CONFIG --set MaxEpoch=1 --set IterPerEpoch=1` with empty Numba and
  user caches: seconds to its first output line and to its exit.
- sweep: one sweep on the local pool against the same sweep on a local Dask cluster.
- tagger-bp: the part-of-speech tagger's fp, bp and update per epoch, dense (lstm) against
  meProp (lstmtop at several k, per gate and of the whole 4H; lstmrand), on the training
  split's length-sorted minibatches, scaled from the first sentences of an epoch.
- tagger-torch: the same tagger in PyTorch (nn.Embedding, a bidirectional nn.LSTM over packed
  sequences, nn.Linear) from our Tagger's initial weights: its epoch against ours dense, and
  an accuracy run of whole epochs (dev each epoch, test at each new best dev).

Every measurement is a fresh process (`harness.measure`); the contenders alternate and the
tables give medians. Compile time is kept out of the epoch figures: the kernels come from the
on-disk cache and are warmed up, and 5 minibatches run before the clock starts (in PyTorch
too). An epoch is the 55,000 training examples; evaluation is not timed. Besides the wall
clock of the log's fp/bp/update, each epoch reports the process's CPU seconds, which other
jobs on a shared machine inflate less.

PyTorch is optional (never a dependency of nnmnist): without it its rows are left out. Its
workers start without the thread settings that importing nnmnist adds to the environment, and
the model is `nn.Sequential` of `nn.Linear` and `nn.ReLU`, summed `cross_entropy`,
`clip_grad_value_(..., 5)`, `torch.optim.Adam` and `zero_grad(set_to_none=True)`.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (imports nothing of nnmnist: a worker picks its first import)

SPEC = json.loads(sys.argv[2]) if sys.argv[1:2] == ["--worker"] else {}
if SPEC.get("case", "").startswith("PyTorch"):
    import torch  # noqa: F401  (PyTorch's own thread runtime first, as its users get it)
else:
    # this checkout's nnmnist, or in an A/B the git revision's checkout
    sys.path.insert(0, SPEC.get("checkout") or str(harness.REPO))
    import nnmnist  # noqa: F401  (nnmnist's thread-runtime defaults, before NumPy loads)

import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from collections import defaultdict  # noqa: E402

import numpy as np  # noqa: E402

HAVE_TORCH = importlib.util.find_spec("torch") is not None
EPOCH = 55000
SCRIPT = Path(__file__).resolve()

# The original C# program, one core, per epoch at minibatch 100 (fp, bp, update seconds):
# docs/ORIGINAL.md §10.
ORIGINAL = {"mlp": (200.0, 270.0, 8.0), "mlptop k=80": (200.0, 63.0, 8.0)}

CASES = ["mlp", "mlptop k=20", "mlptop k=80", "mlptop k=160", "mlprand k=80", "mlpvar k=160",
         "unified k=80", "unified k=80 lazy"]
TORCH_CASES = ["PyTorch dense", "PyTorch meProp k=80"]


def case_fields(name):
    """Config fields of a case name: a network type ('mlp', 'mlptop', 'mlprand', 'mlpvar' or
    'unified', which is mlptop with Unified), then 'k=N' and 'lazy' (LazyUpdate) as needed."""
    words = name.split()
    if not words or words[0] not in NETS:
        harness.fail(f"--cases: {name!r} does not start with one of {', '.join(NETS)} "
                     "(or name a PyTorch case)")
    fields = dict(NetType="mlptop", Unified=True) if words[0] == "unified" else dict(NetType=words[0])
    for w in words[1:]:
        if w.startswith("k=") and w[2:].isdigit() and int(w[2:]) > 0:
            fields["TrainTop"] = int(w[2:])
        elif w == "lazy":
            fields["LazyUpdate"] = True
        else:
            harness.fail(f"--cases: {w!r} in {name!r} is neither k=N (N > 0) nor 'lazy'")
    return fields


NETS = ("mlp", "mlptop", "mlprand", "mlpvar", "unified")


# -- workers (each in a fresh process) --------------------------------------------------------
def worker(spec):
    kind = spec.get("kind", "epoch")
    if kind == "cold":
        return cold_start_one(spec)
    if kind.startswith("tagger"):
        return tagger_worker(spec)
    splits = harness.load_splits(spec.get("data"))
    now = time.thread_time if spec.get("clock") == "cpu" else time.perf_counter
    if spec["case"].startswith("PyTorch"):
        import torch
        torch.set_num_threads(spec["threads"])
        k = int(spec["case"].split("k=")[1]) if "meProp" in spec["case"] else None
        return torch_epoch(splits, spec["minibatch"], spec.get("hidden", 500),
                           spec.get("examples", 0), k, now)
    from nnmnist.kernels import set_num_threads
    from nnmnist.run import training
    set_num_threads(spec["threads"])
    training.time = types.SimpleNamespace(perf_counter=now)  # the clock of the log's Timer
    trainer = make_trainer(spec, splits)
    if kind == "late":
        return late_epochs(trainer, spec["epochs"])
    if kind == "step":
        return step_profile(trainer, spec["examples"] // spec["minibatch"], spec["clock"])
    return ours_epoch(trainer, spec.get("examples", 0))


def make_trainer(spec, splits):
    from nnmnist.run.config import Config
    from nnmnist.run.training import Timer, Trainer
    cfg = Config(MinibatchSize=spec["minibatch"], RandomSeed=1, HiddenSize=spec.get("hidden", 500),
                 **case_fields(spec["case"]))
    trainer = Trainer(cfg, splits)
    trainer.compute.warmup()
    trainer.data_rng.shuffle(trainer.order)
    trainer.train_part(trainer.order[:cfg.MinibatchSize * 5], Timer(), "warm-up")
    return trainer


def ours_epoch(trainer, examples=0):
    """fp/bp/update seconds (and CPU seconds) of one epoch, or of its first `examples`."""
    from nnmnist.run.training import Timer
    timer = Timer()
    cpu = time.process_time()
    trainer.train_part(trainer.order[:examples or None], timer, "epoch")
    return dict(fp=timer.fp, bp=timer.bp, update=timer.update, cpu=time.process_time() - cpu)


def late_epochs(trainer, epochs):
    from nnmnist.run.training import Timer
    out = {}
    for epoch in range(epochs):
        trainer.data_rng.shuffle(trainer.order)
        t = Timer()
        trainer.train_part(trainer.order, t, f"epoch {epoch}")
        out.update({f"fp{epoch}": t.fp, f"bp{epoch}": t.bp, f"update{epoch}": t.update})
    return out


def torch_epoch(splits, minibatch, hidden=500, examples=0, k=None, now=time.perf_counter):
    """The same MLP as a PyTorch user writes it: nn.Linear layers, summed cross-entropy,
    gradients clipped to +-5 (`clip_grad_value_`), Adam, `zero_grad(set_to_none=True)`.

    With k, meProp as a PyTorch user writes it: a linear layer whose backward keeps the
    top-k |dy| of each row (scattered into zeros) before the dense products."""
    import torch
    from torch import nn

    class MePropLinearFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b):
            ctx.save_for_backward(x, w)
            return torch.addmm(b, x, w.t())

        @staticmethod
        def backward(ctx, dy):
            x, w = ctx.saved_tensors
            _, idx = dy.abs().topk(k, dim=1, sorted=False)
            dys = torch.zeros_like(dy).scatter_(1, idx, dy.gather(1, idx))
            return dys @ w, dys.t() @ x, dy.sum(0)

    class MePropLinear(nn.Linear):
        def forward(self, x):
            return MePropLinearFn.apply(x, self.weight, self.bias)

    torch.manual_seed(1)
    hidden_layer = MePropLinear if k else nn.Linear
    model = nn.Sequential(hidden_layer(784, hidden), nn.ReLU(), hidden_layer(hidden, hidden),
                          nn.ReLU(), nn.Linear(hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.001, betas=(0.9, 0.999), eps=1e-8)
    x_all = torch.from_numpy(splits.trn_x)
    y_all = torch.from_numpy(splits.trn_y.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(1).permutation(len(y_all)))
    warm = [order[i:i + minibatch] for i in range(0, 5 * minibatch, minibatch)]
    timed_order = order[:examples] if examples else order
    timed = [timed_order[i:i + minibatch] for i in range(0, len(timed_order), minibatch)]
    fp = bp = update = cpu = 0.0
    for step, rows in enumerate(warm + timed):
        if step == len(warm):
            cpu = time.process_time()
        xb, yb = x_all[rows], y_all[rows]
        t0 = now()
        loss = nn.functional.cross_entropy(model(xb), yb, reduction="sum")
        t1 = now()
        loss.backward()
        t2 = now()
        nn.utils.clip_grad_value_(model.parameters(), 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = now()
        if step >= len(warm):
            fp, bp, update = fp + t1 - t0, bp + t2 - t1, update + t3 - t2
    return dict(fp=fp, bp=bp, update=update, cpu=time.process_time() - cpu)


BASE_MARK = " @"


def epoch_spec(case, threads, minibatch, hidden=500, examples=0, checkouts=None, clock="wall"):
    """A worker's spec; a case named 'CASE @REV' runs with the nnmnist of `checkouts[REV]`."""
    spec = dict(case=case, threads=threads, minibatch=minibatch, hidden=hidden,
                examples=examples, data=str(harness.mnist_dir()), clock=clock)
    if BASE_MARK in case:
        spec["case"], rev = case.split(BASE_MARK)
        spec["checkout"] = str(checkouts[rev])
    return spec


def measure_epoch(spec):
    return harness.measure(SCRIPT, spec, env=harness.worker_env(torch=spec["case"].startswith("PyTorch")))


def with_total(m):
    return {**m, "epoch": m["fp"] + m["bp"] + m["update"]}


def extra_header():
    lines = [f"- {harness.load_average()} (before)"]
    if HAVE_TORCH:
        import torch
        lines.append(f"- PyTorch {torch.__version__} (its workers: PyTorch's own thread settings; "
                     f"OMP_WAIT_POLICY {harness.USER_THREAD_ENV['OMP_WAIT_POLICY'] or 'unset'})")
    else:
        lines.append("- PyTorch: not installed (its rows are left out)")
    return lines


def print_header(before):
    print("\n".join(harness.header(" ".join(["python", *sys.argv]), before)))
    print(f"- {harness.load_average()} (after)\n")


# -- table ------------------------------------------------------------------------------------
def mode_table(args):
    """One epoch of each case at each minibatch size and thread count, against PyTorch."""
    cases = [c for c in CASES + TORCH_CASES if not args.cases or c in args.cases.split(",")]
    unknown = set(args.cases.split(",")) - set(CASES + TORCH_CASES) if args.cases else set()
    for name in sorted(unknown):
        if name.startswith("PyTorch"):
            harness.fail(f"--cases: unknown PyTorch case {name!r} (known: {', '.join(TORCH_CASES)})")
        case_fields(name)  # rejects a malformed name; a well-formed one is measured too
        cases.append(name)
    if not HAVE_TORCH:
        cases = [c for c in cases if not c.startswith("PyTorch")]
    before = extra_header()
    with contextlib.ExitStack() as stack:
        checkouts = {}
        if args.base:
            checkouts[args.base] = stack.enter_context(harness.checkout(args.base))
            cases = [c for case in cases for c in (
                [f"{case}{BASE_MARK}{args.base}", case] if not case.startswith("PyTorch") else [case])]
            before.append(f"- 'CASE @{args.base}': the case with nnmnist as of git revision "
                          f"{args.base}; the others: this checkout")
        rows, raw = table_rows(args, cases, checkouts)
    print_header(before)
    scaled = (f", each measured on the first {args.examples} examples of the shuffled epoch and "
              f"scaled to {EPOCH}" if args.examples else "")
    print(f"medians of {args.repeats}{scaled}; fp, bp and update by the {args.clock} clock, CPU s: "
          "the process's CPU seconds over the timed epoch; epoch / base: the median over the "
          "repeats of this checkout's epoch over the base's in the same repeat\n")
    print(harness.table(["threads", "minibatch", "case", "fp s", "bp s", "update s", "epoch s",
                         "CPU s", "/ PyTorch dense", "bp gain vs mlp", "faster than C#",
                         "epoch / base"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))


def table_rows(args, cases, checkouts):
    spinner = None
    if args.busy:  # a second job on the machine: one core kept busy
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    rows, raw = [], []
    for threads in [int(t) for t in args.threads.split(",")]:
        for mb in [int(m) for m in args.minibatch.split(",")]:
            samples = harness.alternate(cases, args.repeats, lambda name: measure_epoch(
                epoch_spec(name, threads, mb, examples=args.examples, checkouts=checkouts,
                           clock=args.clock)))
            scale = EPOCH / args.examples if args.examples else 1.0
            med = {name: with_total({part: scale * m[part] for part in ("fp", "bp", "update", "cpu")})
                   for name, m in harness.medians(samples).items()}
            for name in med:  # the A/B: the median of the ratios within each repeat
                base = f"{name}{BASE_MARK}{args.base}"
                if BASE_MARK not in name and base in samples:
                    med[name]["vs base"] = statistics.median(
                        sum(a[p] for p in ("fp", "bp", "update")) /
                        sum(b[p] for p in ("fp", "bp", "update"))
                        for a, b in zip(samples[name], samples[base]))
            torch_total = med.get("PyTorch dense", {}).get("epoch")
            dense_bp = med["mlp"]["bp"] if "mlp" in med else None
            for name, t in med.items():
                ours = not name.startswith("PyTorch")
                orig = ORIGINAL.get(name)
                rows.append([threads, mb, name, f"{t['fp']:.2f}", f"{t['bp']:.2f}",
                             f"{t['update']:.2f}", f"{t['epoch']:.2f}", f"{t['cpu']:.2f}",
                             f"{t['epoch'] / torch_total:.2f}x" if torch_total else "—",
                             f"{dense_bp / t['bp']:.1f}x" if dense_bp and ours else "—",
                             f"{sum(orig) / t['epoch']:.0f}x" if orig and mb == 100 else "—",
                             f"{t['vs base']:.3f}" if "vs base" in t else "—"])
                raw.append(dict(threads=threads, minibatch=mb, case=name, **t))
    if spinner is not None:
        spinner.kill()
    return rows, raw


# -- width ------------------------------------------------------------------------------------
def mode_width(args):
    """Epoch time against HiddenSize, dense against meProp and PyTorch (and the figure)."""
    widths = [int(w) for w in args.widths.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    if args.replot:
        entries = json.loads(Path(args.replot).read_text())
        med = {(e["width"], e["case"]): e for e in entries}
        return plot_width(widths, list(dict.fromkeys(e["case"] for e in entries)), med, args)
    names = ["mlp"]
    for k in ks:
        names += [f"mlptop k={k}", f"mlptop k={k} lazy", f"unified k={k}", f"unified k={k} lazy"]
    if HAVE_TORCH:
        names.append("PyTorch dense")
    scale = EPOCH / args.examples if args.examples else 1.0
    before = extra_header()
    med = {}
    for w in widths:
        samples = harness.alternate(names, args.repeats, lambda name: measure_epoch(
            epoch_spec(name, args.threads, args.minibatch, w, args.examples, clock=args.clock)))
        for name, m in harness.medians(samples).items():
            med[(w, name)] = with_total({part: scale * m[part] for part in ("fp", "bp", "update")})
    print_header(before)
    print(f"medians of {args.repeats}, each scaled by {scale:.2f} to a {EPOCH}-example epoch\n")
    rows = []
    for w in widths:
        dense_bp = med[(w, "mlp")]["bp"]
        torch_total = med.get((w, "PyTorch dense"), {}).get("epoch")
        for name in names:
            m = med[(w, name)]
            rows.append([w, name, f"{m['fp']:.2f}", f"{m['bp']:.2f}", f"{m['update']:.2f}",
                         f"{m['epoch']:.2f}",
                         f"{dense_bp / m['bp']:.1f}x" if not name.startswith("PyTorch") else "—",
                         f"{m['epoch'] / torch_total:.2f}x" if torch_total else "—"])
    print(harness.table(["HiddenSize", "case", "fp s", "bp s", "update s", "epoch s",
                         "mlp bp / bp", "epoch / PyTorch dense"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(
            [dict(width=w, case=n, **med[(w, n)]) for w in widths for n in names], indent=1))
    if args.figure:
        plot_width(widths, names, med, args)


def plot_width(widths, names, med, args):
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    colours = {"mlp": "black", "PyTorch dense": "tab:gray", "mlptop": "tab:blue",
               "mlptop lazy": "tab:cyan", "unified": "tab:red", "unified lazy": "tab:orange"}
    k_max = f"k={max(int(s) for s in args.ks.split(','))}"
    for ax, part, title in ((axes[0], "bp", "backprop per epoch"),
                            (axes[1], "epoch", "fp + bp + update per epoch")):
        for name in names:
            words = name.split()
            kind = " ".join(w for w in words if not w.startswith("k="))
            k = next((w for w in words if w.startswith("k=")), None)
            style = "-" if k is None else ("--" if k == k_max else ":")
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
    path = Path(args.figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nfigure: {path}", file=sys.stderr)


# -- step: a per-op profile of one training step ----------------------------------------------
def step_profile(trainer, steps, clock="wall"):
    """Microseconds a step: fp, bp, update and the rest of the loop, and each op's forward and
    backward (ops wrapped with timers; the wrapping adds its own small cost to each op). With
    clock "cpu" every timer reads this thread's CPU time instead of the wall clock: other jobs
    on the machine then inflate the figures less."""
    import types
    from nnmnist.nn import ops, tensor
    from nnmnist.run import training
    from nnmnist.run.training import Timer
    now = time.thread_time if clock == "cpu" else time.perf_counter
    training_time = training.time
    training.time = types.SimpleNamespace(perf_counter=now)
    totals = defaultdict(float)
    originals = {}
    for name in ("matmul", "meprop_matmul", "meprop_relu_unit", "add_bias", "relu", "mask",
                 "dropout", "softmax_cross_entropy"):
        fn = originals[name] = getattr(ops, name)

        def timed(*a, _fn=fn, _name=name, **kw):
            t0 = now()
            out = _fn(*a, **kw)
            totals[f"forward {_name}"] += now() - t0
            return out
        setattr(ops, name, timed)
    plain_backward = tensor.Flow.backward

    def backward(flow):
        for fn in reversed(flow._tape):
            t0 = now()
            fn()
            totals[f"backward {fn.__qualname__.split('.')[0]}"] += now() - t0
        flow._tape.clear()
    tensor.Flow.backward = backward
    rows = trainer.order[:steps * trainer.cfg.MinibatchSize]
    # The ops are what this profiles: the fused step (`nnmnist.backends.fused_step`) has none
    # to wrap, so the step takes the tape path here.
    trainer.fused = None
    try:
        timer = Timer()
        start = now()
        trainer.train_part(rows, timer, "profile")
        wall = now() - start
    finally:
        training.time = training_time
        tensor.Flow.backward = plain_backward
        for name, fn in originals.items():
            setattr(ops, name, fn)
    us = 1e6 / steps
    out = {"fp": timer.fp * us, "bp": timer.bp * us, "update": timer.update * us,
           "rest of the loop": (wall - timer.fp - timer.bp - timer.update) * us}
    out.update({name: s * us for name, s in totals.items()})
    return out


def mode_step(args):
    """Where one training step's microseconds go: each op's forward and backward, the update."""
    cases = args.cases.split(",")
    for name in cases:
        case_fields(name)  # one line and exit 2 for a malformed name, before any measuring
    before = extra_header()
    samples = harness.alternate(cases, args.repeats, lambda name: harness.measure(SCRIPT, dict(
        kind="step", case=name, threads=args.threads, minibatch=args.minibatch,
        hidden=args.hidden, examples=args.examples, clock=args.clock)))
    med = harness.medians(samples)
    print_header(before)
    print(f"{args.examples // args.minibatch} steps of minibatch {args.minibatch} per "
          f"measurement; microseconds a step ({args.clock} clock), medians of {args.repeats}\n")
    keys = list(dict.fromkeys(k for m in med.values() for k in m))
    order = ["fp"] + sorted(k for k in keys if k.startswith("forward")) + ["bp"] + \
        sorted(k for k in keys if k.startswith("backward")) + ["update", "rest of the loop"]
    rows = [[k] + [f"{med[c][k]:.1f}" if k in med[c] else "—" for c in cases] for k in order]
    print(harness.table(["us a step"] + cases, rows))


# -- ab: whole runs against a git revision ----------------------------------------------------
TIME = re.compile(r"^Time: fp: ([\d.]+)s, bp: ([\d.]+)s, update: ([\d.]+)s")


def one_run(checkout, run_args, log_dir):
    """fp, bp, update seconds summed over a run's epochs, and its log without times."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, str(checkout / "run.py"), *run_args, "--set", "Threads=1",
                    "--set", f"DataDir={harness.mnist_dir()}", "--quiet", "--log-dir", str(log_dir)], cwd=checkout, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    [log] = log_dir.glob("*-log-*.txt")
    lines = log.read_text().splitlines()
    for extra in log_dir.iterdir():  # the log, the run's metrics and model files
        extra.unlink()
    times = [tuple(map(float, m.groups())) for m in map(TIME.match, lines) if m]
    kept = [re.sub(r"\d+\.\d+s|\d{8}-\d{6}", "T", line) for line in lines
            if not line.startswith(("Time:", "AvgTime:"))]
    fp, bp, update = (sum(t[i] for t in times) for i in range(3))
    return dict(fp=fp, bp=bp, update=update, total=fp + bp + update), kept


def mode_ab(args):
    """Whole run.py runs of this checkout against a git revision, alternating."""
    # the two sides' logs can only agree from the same seed (a config's RandomSeed -1 draws one)
    configs = [c.split() + ([] if "RandomSeed=" in c else ["--set", "RandomSeed=1"])
               for c in args.runs]
    before = [f"- {harness.load_average()} (before)",
              "- runs that set no RandomSeed get --set RandomSeed=1 (the logs are compared)"]
    results = []
    with harness.checkout(args.base) as base, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sides = {f"base {args.base}": base, "this checkout": harness.REPO}
        for i, run_args in enumerate(configs):
            logs = {}
            dirs = {name: tmp / f"{i}-{n}" for n, name in enumerate(sides)}
            for name, checkout in sides.items():  # untimed: compile and cache the kernels
                dirs[name].mkdir()
                one_run(checkout, run_args, dirs[name])

            def run(name, run_args=run_args):
                sample, logs[name] = one_run(sides[name], run_args, dirs[name])
                return sample
            med = harness.medians(harness.alternate(list(sides), args.repeats, run))
            same = len(set(map(tuple, logs.values()))) == 1
            results.append((" ".join(run_args), med, same))
    print_header(before)
    print(f"one thread (Threads=1); medians of {args.repeats}\n")
    rows = []
    for run_args, med, same in results:
        names = list(med)
        for name in names:
            m = med[name]
            rows.append([run_args, name, f"{m['fp']:.2f}", f"{m['bp']:.2f}", f"{m['update']:.2f}",
                         f"{m['total']:.2f}", f"{m['total'] / med[names[0]]['total']:.3f}",
                         "identical" if same else "DIFFERENT"])
    print(harness.table(["run.py arguments", "code", "fp s", "bp s", "update s", "total s",
                         "/ base", "logs without times"], rows))


# -- late: several epochs of one run ----------------------------------------------------------
def mode_late(args):
    """Backprop time over several epochs of one run: does it stay flat as training goes on?"""
    case_fields(args.case)
    before = extra_header()
    out = harness.measure(SCRIPT, dict(kind="late", case=args.case, threads=args.threads,
                                       minibatch=args.minibatch, epochs=args.epochs))
    print_header(before)
    print(harness.table(["epoch", "fp s", "bp s", "update s"],
                        [[e, f"{out[f'fp{e}']:.2f}", f"{out[f'bp{e}']:.2f}",
                          f"{out[f'update{e}']:.2f}"] for e in range(args.epochs)]))


# -- cold-start -------------------------------------------------------------------------------
def cold_start_one(spec):
    """One run.py in a fresh process with empty Numba and user caches: seconds to its first
    line of output and to its exit."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("numba", "xdg", "logs"):
            (tmp / name).mkdir()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(NUMBA_CACHE_DIR=str(tmp / "numba"), XDG_CACHE_HOME=str(tmp / "xdg"),
                   PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "run.py", spec["config"], "--set", "MaxEpoch=1", "--set",
               "IterPerEpoch=1", "--set", f"DataDir={spec['data']}", "--log-dir", str(tmp / "logs")]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=spec["repo"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        first = proc.stdout.readline()
        first_s = time.perf_counter() - start
        rest = proc.stdout.read()
        rc = proc.wait()
        exit_s = time.perf_counter() - start
        if rc != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {rc}:\n{first}{rest[-2000:]}")
        return dict(first_line=first_s, exit=exit_s)


def mode_cold_start(args):
    """run.py CONFIG for one part of one epoch with empty caches: to first output, to exit."""
    repo = str(harness.REPO if args.repo is None else Path(args.repo).resolve())
    data = str(harness.mnist_dir())
    before = [f"- {harness.load_average()} (before)",
              f"- checkout: {repo}; NUMBA_CACHE_DIR and XDG_CACHE_HOME fresh and empty in every "
              "run (Python's own bytecode caches stay as they are)"]
    samples = harness.alternate(args.configs, args.repeats, lambda config: harness.measure(
        SCRIPT, dict(kind="cold", config=config, repo=repo, data=data)))
    med = harness.medians(samples)
    print_header(before)
    print(f"`python run.py CONFIG --set MaxEpoch=1 --set IterPerEpoch=1`; medians of "
          f"{args.repeats}\n")
    print(harness.table(["config", "to first output line s", "to exit s", "runs (first, exit)"],
                        [[c, f"{med[c]['first_line']:.1f}", f"{med[c]['exit']:.1f}",
                          "; ".join(f"{s['first_line']:.1f}, {s['exit']:.1f}" for s in samples[c])]
                         for c in args.configs]))


# -- sweep: the local pool against Dask -------------------------------------------------------
FIGURES = ("seed", "best_dev", "test_at_best", "epochs", "dims")


def one_sweep(spec, out, jobs, dask):
    cmd = [sys.executable, "-m", "nnmnist", "sweep", str(spec), "--out", str(out),
           "--jobs", str(jobs), "--offline"]
    if dask:
        cmd += ["--executor", "dask"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=harness.REPO, env=harness.worker_env(), capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    rows = json.loads((out / "results.json").read_text())["runs"]
    return seconds, {r["run_id"]: tuple(json.dumps(r[k]) for k in FIGURES) for r in rows}


def mode_sweep(args):
    """Wall time of one sweep on the local pool against the same sweep on a local Dask cluster."""
    work = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    try:
        base = json.loads((harness.REPO / "configs" / "default.json").read_text(encoding="utf-8-sig"))
        base.update(DataDir=str(Path(args.data_dir or harness.mnist_dir()).resolve()),
                    MaxEpoch=args.epochs)
        (work / "base.json").write_text(json.dumps(base))
        spec = work / "spec.json"
        spec.write_text(json.dumps({"base": "base.json",
                                    "grid": {"RandomSeed": list(range(1, args.runs + 1))}}))
        warm = work / "warm.json"
        warm.write_text(json.dumps({"base": "base.json", "grid": {"RandomSeed": [1]}}))
        before = [f"- {harness.load_average()} (before)"]
        one_sweep(warm, work / "warm", 1, False)  # Numba compiles and caches the kernels here
        figures = {}
        counter = iter(range(10 ** 6))

        def run(name):
            out = work / f"{name}-{next(counter)}"
            seconds, figs = one_sweep(spec, out, args.jobs, name == "dask")
            figures.setdefault(name, figs)
            shutil.rmtree(out)
            return seconds
        times = harness.alternate(["local", "dask"], args.repeats, run)
        same = figures["local"] == figures["dask"]
        med = harness.medians(times)
        pairs = statistics.median(d / loc for d, loc in zip(times["dask"], times["local"]))
        print_header(before)
        print(f"{args.runs} runs of {args.epochs} epoch(s) of configs/default.json, "
              f"--jobs {args.jobs}; medians of {args.repeats}\n")
        print(f"median local pool {med['local']:.1f} s, Dask LocalCluster {med['dask']:.1f} s; "
              f"Dask / local = {med['dask'] / med['local']:.3f} (median of the per-repeat ratios "
              f"{pairs:.3f}); same accuracies: {same}")
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- tagger-bp and tagger-torch: the part-of-speech tagger -------------------------------------
TAGGER_NETS = ("lstm", "lstmtop", "lstmrand")
TAGGER_FILES = dict(TrainFile="en_ewt-ud-train.conllu", DevFile="en_ewt-ud-dev.conllu",
                    TestFile="en_ewt-ud-test.conllu")
TAGGER_WARM_STEPS = 5
TORCH_TAGGER = "PyTorch tagger"


def tagger_case_fields(name):
    """Config fields of a tagger case name: 'lstm', or 'lstmtop k=N' / 'lstmrand k=N', then
    'whole' for TopKScope whole (k of the whole 4H-wide gate vector, not k of each gate)."""
    words = name.split()
    if not words or words[0] not in TAGGER_NETS:
        harness.fail(f"{name!r} does not start with one of {', '.join(TAGGER_NETS)}")
    fields = dict(NetType=words[0])
    for w in words[1:]:
        if w.startswith("k=") and w[2:].isdigit() and int(w[2:]) > 0 and words[0] != "lstm":
            fields["TrainTop"] = int(w[2:])
        elif w == "whole" and words[0] != "lstm":
            fields["TopKScope"] = "whole"
        else:
            harness.fail(f"{w!r} in {name!r}: expected k=N (N > 0) or 'whole' after lstmtop "
                         "or lstmrand")
    if words[0] != "lstm" and "TrainTop" not in fields:
        harness.fail(f"{name!r}: {words[0]} needs k=N")
    return fields


def tagger_data_dir(given=None):
    """The folder of en_ewt-ud-{train,dev,test}.conllu(.gz): `given`, else ud-en-ewt/ beside
    the MNIST folder the tests find, else in nnmnist's default data folder."""
    if given:
        return str(Path(given).expanduser().resolve())
    beside = harness.mnist_dir().parent / "ud-en-ewt"
    if beside.is_dir():
        return str(beside)
    from nnmnist.data.mnist import default_data_dir
    return str(default_data_dir() / "ud-en-ewt")


def tagger_config(spec, **fields):
    """The tagger's Config for a worker's spec: one bidirectional layer, the 17 UPOS tags,
    the mean token loss (LossGrad mean) and the spec's sizes, seed and thread count."""
    from nnmnist.run.config import Config, validate
    from nnmnist.errors import UserError
    cfg = Config(Layers=2, LabelCount=17, LossGrad="mean", DataDir=spec["data"],
                 EmbedSize=spec["embed"], HiddenSize=spec["hidden"],
                 MinibatchSize=spec["minibatch"], MinCount=spec["min_count"],
                 LearningRate=spec["lr"], RandomSeed=spec["seed"], Threads=spec["threads"],
                 **TAGGER_FILES, **fields)
    try:
        validate(cfg, "tagger case")
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    return cfg


def tagger_trainer(cfg, sentences=0):
    """Our Trainer of `cfg` on the treebank, and its first epoch's order as it cuts it (its
    data generator's shuffle, then minibatches of about the same length), of the first
    `sentences` (0: all) of the shuffled epoch: see `next_tagger_order`."""
    from nnmnist.data.conllu import load_tagger
    from nnmnist.run.training import Trainer
    data, missing = load_tagger(cfg, cfg.DataDir)
    if data is None:
        raise SystemExit(f"error: {next(iter(missing.values()))} not found in {cfg.DataDir} "
                         "(give --data-dir)")
    trainer = Trainer(cfg, data)
    return trainer, next_tagger_order(trainer, sentences)


def next_tagger_order(trainer, sentences=0):
    """The next epoch's order, exactly as `Trainer._run` makes it (the same generator, then
    `batch_by_length`). With `sentences`, only the first ones of the shuffled epoch, cut the
    same way: a random sample whose minibatches are as long as an epoch's are (the first
    sentences of the cut epoch would be the shortest of its first length-sorted window)."""
    from nnmnist.data.conllu import batch_by_length
    trainer.data_rng.shuffle(trainer.order)
    mb = trainer.cfg.MinibatchSize
    if sentences:
        return batch_by_length(trainer.order[:sentences], trainer.lengths, mb)
    trainer.order[...] = batch_by_length(trainer.order, trainer.lengths, mb)
    return trainer.order.copy()


def tagger_worker(spec):
    now = time.thread_time if spec.get("clock") == "cpu" else time.perf_counter
    if spec["case"] == TORCH_TAGGER:
        import torch
        torch.set_num_threads(spec["threads"])
        if spec["kind"] == "tagger-acc":
            return torch_tagger_accuracy(spec)
        return torch_tagger_epoch(spec, now)
    from nnmnist.kernels import set_num_threads
    from nnmnist.run import training
    from nnmnist.run.training import Timer
    from nnmnist.run.warm import compile_for
    set_num_threads(spec["threads"])
    cfg = tagger_config(spec, **tagger_case_fields(spec["case"]))
    trainer, timed = tagger_trainer(cfg, spec["sentences"])
    compile_for(cfg, trainer.compute)  # from the on-disk cache: compile time is kept out
    training.time = types.SimpleNamespace(perf_counter=now)  # the clock of the log's Timer
    mb = cfg.MinibatchSize
    trainer.train_part(timed[:mb * TAGGER_WARM_STEPS], Timer(), "warm-up")
    timer = Timer()
    cpu = time.process_time()
    trainer.train_part(timed, timer, "epoch")
    return dict(fp=timer.fp, bp=timer.bp, update=timer.update, cpu=time.process_time() - cpu,
                sentences=len(timed), epoch_sentences=len(trainer.order),
                tokens=int((trainer.trn_y[timed] >= 0).sum()),
                epoch_tokens=int((trainer.trn_y >= 0).sum()))


def torch_tagger_model(ours):
    """Our Tagger as a PyTorch user writes it, holding a copy of its weights: nn.Embedding, a
    bidirectional nn.LSTM over packed sequences (the backward direction starts at each
    sentence's last word, as ours does) and nn.Linear on the words' outputs. PyTorch's gates
    are i, f, g, o as ours; of its two biases, bias_ih is ours and bias_hh is zero."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class TorchTagger(nn.Module):
        def __init__(self, vocab, embed, hidden, tags):
            super().__init__()
            self.embed = nn.Embedding(vocab, embed)
            self.lstm = nn.LSTM(embed, hidden, batch_first=True, bidirectional=True)
            self.out = nn.Linear(2 * hidden, tags)

        def forward(self, x, lengths):
            """Logits of the words of x (B, L), padding 0 at the end, in row-major order."""
            packed = pack_padded_sequence(self.embed(x), lengths, batch_first=True,
                                          enforce_sorted=False)
            h, _ = self.lstm(packed)
            h, _ = pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])
            return self.out(h[x != 0])

    cfg = ours.cfg
    model = TorchTagger(len(ours.vocab), cfg.EmbedSize, cfg.HiddenSize, cfg.LabelCount)
    copy = lambda dst, src: dst.copy_(torch.from_numpy(np.asarray(src.value)))  # noqa: E731
    with torch.no_grad():
        copy(model.embed.weight, ours.embedding)
        for suffix, lstm in (("", ours.fwd), ("_reverse", ours.bwd)):
            copy(getattr(model.lstm, f"weight_ih_l0{suffix}"), lstm.Wx)
            copy(getattr(model.lstm, f"weight_hh_l0{suffix}"), lstm.Wh)
            copy(getattr(model.lstm, f"bias_ih_l0{suffix}"), lstm.b)
            getattr(model.lstm, f"bias_hh_l0{suffix}").zero_()
        copy(model.out.weight, ours.out.W)
        copy(model.out.bias, ours.out.b)
    return model


def torch_batches(x, y, rows_list):
    """(x, lengths, tags of the words) tensors of each minibatch, cut to its longest sentence
    as our Tagger's `prepare_batch` cuts it."""
    import torch
    out = []
    for rows in rows_list:
        xb = x[rows]
        lengths = (xb != 0).sum(axis=1)
        longest = max(int(lengths.max()), 1)
        xb, yb = xb[:, :longest], y[rows][:, :longest]
        out.append((torch.from_numpy(np.ascontiguousarray(xb)).long(),
                    torch.from_numpy(lengths.astype(np.int64)),
                    torch.from_numpy(yb[xb != 0].astype(np.int64))))
    return out


def minibatches(order, mb):
    return [order[i:i + mb] for i in range(0, len(order), mb)]


def torch_tagger_setup(spec, sentences=0):
    """Our Tagger built from the spec's seed (plain NumPy kernels: nothing of Numba runs in a
    PyTorch worker), the PyTorch copy of it and Adam over the copy's parameters, with the
    first epoch's order (of its first `sentences`) as `tagger_trainer` gives it."""
    import torch
    cfg = tagger_config(spec, NetType="lstm", Kernels="numpy")
    trainer, order = tagger_trainer(cfg, sentences)
    model = torch_tagger_model(trainer.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.LearningRate, betas=(0.9, 0.999), eps=1e-8)
    return cfg, trainer, order, model, opt


def initial_losses(trainer, model, batch):
    """Our Tagger's and the PyTorch copy's mean token loss on one minibatch before any step:
    equal to float32 rounding when the weights were copied right."""
    import torch
    from nnmnist.nn.tensor import Flow
    x, lengths, tags = batch
    xb = x.numpy().astype(np.int32)
    yb = np.full(xb.shape, -1, np.int32)
    yb[xb != 0] = tags.numpy()
    losses, _ = trainer.model.forward(Flow(training=False), xb, yb)
    with torch.no_grad():
        theirs = torch.nn.functional.cross_entropy(model(x, lengths), tags)
    return float(np.mean(losses, dtype=np.float64)), float(theirs)


def torch_tagger_step(model, opt, batch, now):
    """One training step; (fp, bp, update) seconds, the mean loss, the correct words."""
    import torch
    from torch import nn
    x, lengths, tags = batch
    t0 = now()
    logits = model(x, lengths)
    loss = nn.functional.cross_entropy(logits, tags)
    t1 = now()
    loss.backward()
    t2 = now()
    nn.utils.clip_grad_value_(model.parameters(), 5.0)  # ClipBound 5: each gradient element
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = now()
    with torch.no_grad():
        correct = int((logits.argmax(dim=1) == tags).sum())
    return (t1 - t0, t2 - t1, t3 - t2), loss.item(), correct


def torch_tagger_epoch(spec, now):
    cfg, trainer, timed, model, opt = torch_tagger_setup(spec, spec["sentences"])
    mb = cfg.MinibatchSize
    warm = torch_batches(trainer.trn_x, trainer.trn_y,
                         minibatches(timed[:mb * TAGGER_WARM_STEPS], mb))
    batches = torch_batches(trainer.trn_x, trainer.trn_y, minibatches(timed, mb))
    ours_loss, torch_loss = initial_losses(trainer, model, batches[0])
    for batch in warm:
        torch_tagger_step(model, opt, batch, now)
    fp = bp = update = 0.0
    cpu = time.process_time()
    for batch in batches:
        (f, b, u), _, _ = torch_tagger_step(model, opt, batch, now)
        fp, bp, update = fp + f, bp + b, update + u
    return dict(fp=fp, bp=bp, update=update, cpu=time.process_time() - cpu,
                sentences=len(timed), epoch_sentences=len(trainer.order),
                tokens=int((trainer.trn_y[timed] >= 0).sum()),
                epoch_tokens=int((trainer.trn_y >= 0).sum()),
                initial_loss_ours=ours_loss, initial_loss_torch=torch_loss)


def torch_tagger_evaluate(model, x, y, mb):
    """(mean of the minibatches' mean losses, correct words, words, seconds) over a split in
    file order, in minibatches of `mb`, as our `evaluate` does."""
    import torch
    start = time.perf_counter()
    loss = correct = total = 0
    batches = torch_batches(x, y, minibatches(np.arange(len(y)), mb))
    with torch.no_grad():
        for xb, lengths, tags in batches:
            logits = model(xb, lengths)
            loss += float(torch.nn.functional.cross_entropy(logits, tags))
            correct += int((logits.argmax(dim=1) == tags).sum())
            total += len(tags)
    return loss / max(len(batches), 1), correct, total, time.perf_counter() - start


def score_line(loss, correct, total, seconds):
    return (f"loss: {loss:.4f}, acc: {100.0 * correct / max(total, 1):.2f}({correct}/{total}), "
            f"time = {seconds:.1f}s")


def torch_tagger_accuracy(spec):
    """`epochs` whole epochs in PyTorch, one part each, in our Trainer's order (the same
    generator, shuffle and `batch_by_length`): dev after every epoch, test at each new best
    dev; the log's lines (on stderr as they come) and the test accuracy at best dev."""
    cfg, trainer, order, model, opt = torch_tagger_setup(spec)
    mb = cfg.MinibatchSize
    lines, best_dev, test_at_best = [], 0.0, 0.0

    def say(line):
        lines.append(line)
        print(line, file=sys.stderr, flush=True)
    for epoch in range(spec["epochs"]):
        if epoch:
            order = next_tagger_order(trainer)
        batches = torch_batches(trainer.trn_x, trainer.trn_y, minibatches(order, mb))
        start = time.perf_counter()
        fp = bp = update = loss = 0.0
        correct = total = 0
        for batch in batches:
            (f, b, u), batch_loss, batch_correct = torch_tagger_step(model, opt, batch,
                                                                    time.perf_counter)
            fp, bp, update = fp + f, bp + b, update + u
            loss, correct, total = loss + batch_loss, correct + batch_correct, total + len(batch[2])
        seconds = time.perf_counter() - start
        dev = torch_tagger_evaluate(model, trainer.dev_x, trainer.dev_y, mb)
        say(f"{epoch:02d}:00: {score_line(loss / len(batches), correct, total, seconds)}")
        say(f"\t dev: {score_line(*dev)}")
        dev_acc = 100.0 * dev[1] / max(dev[2], 1)
        if dev_acc > best_dev:
            tst = torch_tagger_evaluate(model, trainer.tst_x, trainer.tst_y, mb)
            best_dev, test_at_best = dev_acc, 100.0 * tst[1] / max(tst[2], 1)
            say(f"\t tst: {score_line(*tst)}")
            say(f"$ {best_dev:.2f} | {test_at_best:.2f}")
        say(f"Time: fp: {fp:.2f}s, bp: {bp:.2f}s, update: {update:.2f}s")
    return dict(lines=lines, best_dev=best_dev, test_at_best=test_at_best)


def tagger_spec(case, args, kind="tagger", **extra):
    return dict(kind=kind, case=case, threads=args.threads, minibatch=args.minibatch,
                hidden=args.hidden, embed=args.embed, min_count=args.min_count, lr=args.lr,
                seed=args.seed, sentences=getattr(args, "sentences", 0),
                data=tagger_data_dir(args.data_dir), clock=getattr(args, "clock", "wall"), **extra)


def tagger_medians(samples):
    """Per case, the medians scaled from the timed sentences to the whole epoch."""
    med = {}
    for name, m in harness.medians(samples).items():
        scale = m["epoch_sentences"] / m["sentences"]
        med[name] = with_total({part: scale * m[part] for part in ("fp", "bp", "update", "cpu")})
        med[name].update(sentences=m["sentences"], epoch_sentences=m["epoch_sentences"],
                         tokens=m["tokens"], epoch_tokens=m["epoch_tokens"])
    return med


def tagger_scale_note(med, args):
    m = next(iter(med.values()))
    if m["sentences"] == m["epoch_sentences"]:
        return f"whole epochs of {m['epoch_sentences']:,} sentences"
    return (f"the first {m['sentences']:,} sentences ({m['tokens']:,} words) of the shuffled "
            "epoch, cut into length-sorted minibatches as the Trainer cuts an epoch, scaled by "
            f"sentences to the {m['epoch_sentences']:,}-sentence epoch "
            f"({m['epoch_tokens']:,} words)")


def tagger_settings(args):
    return (f"EmbedSize {args.embed}, HiddenSize {args.hidden} per direction, MinibatchSize "
            f"{args.minibatch}, MinCount {args.min_count}, {args.threads} thread(s), "
            f"RandomSeed {args.seed}; {TAGGER_WARM_STEPS} minibatches of warm-up before the clock")


def mode_tagger_bp(args):
    """The tagger's backprop per epoch: dense (lstm) against meProp (lstmtop, lstmrand)."""
    ks = args.k.split(",")
    if not all(k.isdigit() and int(k) > 0 for k in ks):
        harness.fail(f"--k {args.k!r}: expected comma-separated whole numbers > 0")
    cases = ["lstm"] + [f"lstmtop k={k}" for k in ks] + ["lstmrand k=10", "lstmtop k=10 whole"]
    for name in cases:
        tagger_case_fields(name)
    before = extra_header()
    samples = harness.alternate(cases, args.repeats, lambda name: measure_epoch(
        tagger_spec(name, args)))
    med = tagger_medians(samples)
    print_header(before)
    print(f"medians of {args.repeats}, each measured on {tagger_scale_note(med, args)}; "
          f"{tagger_settings(args)}; fp, bp and update by the {args.clock} clock; CPU s: the "
          "process's CPU seconds over the timed part; 'whole': k of the 4H gate vector, the "
          "others k of each gate's H\n")
    dense_bp = med["lstm"]["bp"]
    rows, raw = [], []
    for name in cases:
        m = med[name]
        fields = tagger_case_fields(name)
        rows.append([name, f"{m['fp']:.2f}", f"{m['bp']:.2f}", f"{m['update']:.2f}",
                     f"{m['epoch']:.2f}", f"{m['cpu']:.2f}", f"{dense_bp / m['bp']:.2f}x"])
        raw.append(dict(case=name, NetType=fields["NetType"], TrainTop=fields.get("TrainTop"),
                        TopKScope=fields.get("TopKScope", "gate"), bp_gain=dense_bp / m["bp"], **m))
    print(harness.table(["case", "fp s", "bp s", "update s", "epoch s", "CPU s",
                         "dense bp / bp"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            settings=dict(embed=args.embed, hidden=args.hidden, minibatch=args.minibatch,
                          threads=args.threads, repeats=args.repeats, clock=args.clock),
            rows=raw), indent=1))


def measure_live(spec):
    """`harness.measure` of a PyTorch worker whose stderr lines (a long run's log) are
    printed here as they come."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--worker", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=harness.worker_env(torch=True))
    for line in proc.stderr:  # the worker's stdout is one JSON line at its end
        print(line, end="", flush=True)
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"worker {spec} failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def mode_tagger_torch(args):
    """The tagger in PyTorch from our initial weights: epoch time against ours, accuracy run."""
    if not HAVE_TORCH:
        harness.fail("PyTorch is not installed (it is never a dependency of nnmnist)")
    before = extra_header()
    med = None
    if args.repeats > 0:
        cases = ["lstm", TORCH_TAGGER]
        samples = harness.alternate(cases, args.repeats, lambda name: measure_epoch(
            tagger_spec(name, args)))
        med = tagger_medians(samples)
        first = samples[TORCH_TAGGER][0]
    print_header(before)
    if med is not None:
        print(f"epoch time, medians of {args.repeats}, each measured on "
              f"{tagger_scale_note(med, args)}; {tagger_settings(args)}; {args.clock} clock. "
              f"Mean token loss of the first timed minibatch before any step: ours "
              f"{first['initial_loss_ours']:.6f}, PyTorch {first['initial_loss_torch']:.6f} "
              "(the same initial weights)\n")
        print(harness.table(["case", "fp s", "bp s", "update s", "epoch s", "CPU s"],
                            [[name, f"{m['fp']:.2f}", f"{m['bp']:.2f}", f"{m['update']:.2f}",
                              f"{m['epoch']:.2f}", f"{m['cpu']:.2f}"] for name, m in med.items()]))
        ours, theirs = med["lstm"], med[TORCH_TAGGER]
        print(f"\nours / PyTorch: epoch {ours['epoch'] / theirs['epoch']:.2f}x, fp "
              f"{ours['fp'] / theirs['fp']:.2f}x, bp {ours['bp'] / theirs['bp']:.2f}x, update "
              f"{ours['update'] / theirs['update']:.2f}x")
    if args.epochs > 0:
        spec = tagger_spec(TORCH_TAGGER, args, kind="tagger-acc", epochs=args.epochs)
        spec["threads"] = args.accuracy_threads
        print(f"\naccuracy run: PyTorch, {args.epochs} whole epoch(s); EmbedSize {args.embed}, "
              f"HiddenSize {args.hidden}, MinibatchSize {args.minibatch}, MinCount "
              f"{args.min_count}, LearningRate {args.lr}, RandomSeed {args.seed}, "
              f"{args.accuracy_threads} thread(s); our Trainer's data order, one part per epoch "
              "(compare with run.py's log at IterPerEpoch 1)\n", flush=True)
        out = measure_live(spec)
        print(f"\nPyTorch: best dev {out['best_dev']:.2f}, test at best dev "
              f"{out['test_at_best']:.2f}")


MODES = {"table": mode_table, "width": mode_width, "step": mode_step, "ab": mode_ab,
         "late": mode_late, "cold-start": mode_cold_start, "sweep": mode_sweep,
         "tagger-bp": mode_tagger_bp, "tagger-torch": mode_tagger_torch}


def add_arguments(mode, p):
    if mode in ("table", "width", "step", "late"):
        p.add_argument("--repeats", type=int, default=3)
    if mode in ("table", "width"):
        p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                       help="the clock of fp, bp and update; cpu: the thread's CPU time, "
                            "which other jobs on a shared machine inflate less")
    if mode == "table":
        p.add_argument("--threads", default="1", help="comma-separated thread counts")
        p.add_argument("--minibatch", default="100,10", help="comma-separated minibatch sizes")
        p.add_argument("--cases", default="", help="comma-separated case names (default: all): "
                       "mlp, mlptop/mlprand/mlpvar/unified k=N [lazy], PyTorch dense, "
                       "PyTorch meProp k=N")
        p.add_argument("--json", help="also write the medians to this file")
        p.add_argument("--examples", type=int, default=0,
                       help="time the first N examples of the epoch and scale to 55,000 (0: all)")
        p.add_argument("--busy", action="store_true",
                       help="keep one core busy with a spinning process while measuring")
        p.add_argument("--base", help="also measure each nnmnist case with the package as of "
                                      "this git revision (an A/B in the same alternation)")
    elif mode == "width":
        p.add_argument("--widths", default="500,1000,2000,4000")
        p.add_argument("--ks", default="20,80")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--minibatch", type=int, default=100)
        p.add_argument("--examples", type=int, default=11000,
                       help="training examples per measurement (0: the whole epoch)")
        p.add_argument("--json", help="also write the medians (scaled to an epoch) here")
        p.add_argument("--figure", default=str(harness.REPO / "docs" / "figures" / "width_scaling.png"))
        p.add_argument("--replot", help="only draw the figure from a --json file of an earlier "
                                        "run (give the same --widths and --ks)")
    elif mode == "step":
        p.add_argument("--cases", default="mlp,mlptop k=20,mlptop k=20 lazy")
        p.add_argument("--minibatch", type=int, default=10)
        p.add_argument("--examples", type=int, default=20000, help="training examples timed")
        p.add_argument("--hidden", type=int, default=500, help="HiddenSize")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                       help="cpu: this thread's CPU time (less inflated by other jobs)")
    elif mode == "ab":
        p.add_argument("--base", default="HEAD~1", help="git revision of the A side")
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--run", dest="runs", action="append", required=True,
                       help="run.py's arguments, as one string (repeatable: several runs, "
                            "each its own A/B), e.g. 'configs/default.json --set MaxEpoch=1'")
    elif mode == "late":
        p.add_argument("--case", default="mlptop k=20")
        p.add_argument("--minibatch", type=int, default=10)
        p.add_argument("--epochs", type=int, default=4)
        p.add_argument("--threads", type=int, default=1)
    elif mode == "cold-start":
        p.add_argument("--configs", nargs="+", default=["configs/default.json", "configs/mlptop.json"])
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--repo", help="the checkout whose run.py runs (default: this one)")
    elif mode in ("tagger-bp", "tagger-torch"):
        p.add_argument("--sentences", type=int, default=2000,
                       help="time the first N sentences of the epoch and scale to the whole "
                            "12,544 (0: all)")
        p.add_argument("--hidden", type=int, default=500, help="HiddenSize (each direction)")
        p.add_argument("--embed", type=int, default=100, help="EmbedSize")
        p.add_argument("--minibatch", type=int, default=32, help="MinibatchSize")
        p.add_argument("--min-count", type=int, default=2, help="MinCount")
        p.add_argument("--lr", type=float, default=0.001, help="LearningRate (Adam)")
        p.add_argument("--seed", type=int, default=1, help="RandomSeed (weights and data order)")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                       help="the clock of fp, bp and update; cpu: the thread's CPU time, "
                            "which other jobs on a shared machine inflate less")
        p.add_argument("--data-dir", help="the folder of en_ewt-ud-{train,dev,test}.conllu(.gz) "
                                          "(default: ud-en-ewt beside the MNIST folder)")
        if mode == "tagger-bp":
            p.add_argument("--repeats", type=int, default=3)
            p.add_argument("--k", default="5,10,20,50",
                           help="comma-separated k of lstmtop (per gate); lstmrand and lstmtop "
                                "with TopKScope whole are measured at k=10")
            p.add_argument("--json", help="also write the medians (scaled to an epoch) here, "
                                          "for `nnmnist plot tagger-k`")
        else:
            p.add_argument("--repeats", type=int, default=3,
                           help="epoch-time repeats, ours dense and PyTorch alternating "
                                "(0: no timing)")
            p.add_argument("--epochs", type=int, default=0,
                           help="also an accuracy run of N whole epochs in PyTorch (0: none)")
            p.add_argument("--accuracy-threads", type=int, default=1,
                           help="PyTorch's threads in the accuracy run")
    elif mode == "sweep":
        p.add_argument("--data-dir", help="folder with the MNIST files (default: as the tests find it)")
        p.add_argument("--runs", type=int, default=8)
        p.add_argument("--epochs", type=int, default=1)
        p.add_argument("--jobs", type=int, default=2)
        p.add_argument("--repeats", type=int, default=3)


if __name__ == "__main__":
    sys.exit(harness.main_of(__doc__, MODES, add_arguments, worker))
