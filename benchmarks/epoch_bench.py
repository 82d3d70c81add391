"""One training epoch on MNIST (fp, bp and update summed separately), nnmnist against PyTorch.

    python benchmarks/epoch_bench.py [--repeats 3] [--threads 1,2] [--minibatch 100,10]

Every case is run `--repeats` times, the contenders alternating within each repeat, and the
table quotes medians. Each measurement runs in a fresh worker process of this script: two
OpenMP runtimes (Numba's and PyTorch's) in one process spin against each other and against
BLAS on a 2-core machine, which would make whichever runs second look several times slower.
Compile time is kept out (kernels are warmed up and a few minibatches run before timing).
PyTorch is optional: without it the PyTorch rows are left out. Evaluation is not timed; an
epoch here is the 55,000 training examples only.
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The worker's first import decides how the thread runtimes start: PyTorch with its own
# defaults, nnmnist with its own (set in nnmnist/__init__.py, before NumPy loads).
if "--worker" in sys.argv and sys.argv[sys.argv.index("--worker") + 1].startswith("PyTorch"):
    import torch  # noqa: F401
else:
    import nnmnist  # noqa: F401

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import importlib.util  # noqa: E402
import subprocess  # noqa: E402

HAVE_TORCH = importlib.util.find_spec("torch") is not None

from nnmnist.config import Config  # noqa: E402
from nnmnist.data import find_mnist_dir, load_mnist  # noqa: E402
from nnmnist.train import Timer, Trainer  # noqa: E402

# The original C# program, one core, per epoch (fp, bp, update seconds), as measured by its
# authors' setup and quoted in the project's issue tracker.
ORIGINAL = {"mlp": (200.0, 270.0, 8.0), "mlptop k=80": (200.0, 63.0, 8.0)}

CASES = [
    ("mlp", dict(NetType="mlp")),
    ("mlptop k=20", dict(NetType="mlptop", TrainTop=20)),
    ("mlptop k=80", dict(NetType="mlptop", TrainTop=80)),
    ("mlptop k=160", dict(NetType="mlptop", TrainTop=160)),
    ("mlprand k=80", dict(NetType="mlprand", TrainTop=80)),
    ("mlpvar k=160", dict(NetType="mlpvar", TrainTop=160)),
    ("unified k=80", dict(NetType="mlptop", TrainTop=80, Unified=True)),
    ("unified k=80 lazy", dict(NetType="mlptop", TrainTop=80, Unified=True, LazyUpdate=True)),
]


def find_mnist():
    data_dir = find_mnist_dir() or REPO / "data"
    return load_mnist(Config(DataDir=str(data_dir)), allow_fetch=True, log=lambda *a: None)


def worker(case, threads, minibatch):
    """Run one measurement in this (fresh) process and print its Timer as JSON."""
    splits = find_mnist()
    if case.startswith("PyTorch"):
        import torch
        torch.set_num_threads(threads)
        timer = torch_epoch(splits, minibatch, k=80 if "meProp" in case else None)
    else:
        from nnmnist.kernels import set_num_threads
        set_num_threads(threads)
        timer = ours_epoch(dict(CASES)[case], splits, minibatch)
    print(json.dumps(dict(fp=timer.fp, bp=timer.bp, update=timer.update)))


def measure(case, threads, minibatch):
    out = subprocess.run([sys.executable, __file__, "--worker", case, "--threads", str(threads),
                          "--minibatch", str(minibatch)], capture_output=True, text=True, check=True)
    return Timer(**json.loads(out.stdout.strip().splitlines()[-1]))


def ours_epoch(fields, splits, minibatch):
    """fp/bp/update seconds of one epoch of nnmnist with the given config fields."""
    cfg = Config(MinibatchSize=minibatch, RandomSeed=1, **fields)
    trainer = Trainer(cfg, splits)
    trainer.compute.warmup()
    trainer.data_rng.shuffle(trainer.order)
    trainer.train_part(trainer.order[:minibatch * 5], Timer(), "warm-up")
    timer = Timer()
    trainer.train_part(trainer.order, timer, "epoch")
    return timer


def torch_epoch(splits, minibatch, k=None):
    """The same MLP in PyTorch: Adam, summed cross-entropy, clipping at 5; with k, meProp
    written the way a PyTorch user would: top-k of |dy|, scatter into zeros, dense matmuls."""
    import torch
    class MePropLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b):
            ctx.save_for_backward(x, w)
            return x @ w + b

        @staticmethod
        def backward(ctx, dy):
            x, w = ctx.saved_tensors
            _, idx = dy.abs().topk(k, dim=1, sorted=False)
            dys = torch.zeros_like(dy).scatter_(1, idx, dy.gather(1, idx))
            return dys @ w.t(), x.t() @ dys, dy.sum(0)

    torch.manual_seed(1)
    sizes = [784, 500, 500, 10]
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        w = (torch.randn(a, b) * (6.0 / (a + b)) ** 0.5).requires_grad_()
        params += [w, torch.zeros(b, requires_grad=True)]
    opt = torch.optim.Adam(params, lr=0.001, betas=(0.9, 0.999), eps=1e-8)
    x_all = torch.from_numpy(splits.trn_x)
    y_all = torch.from_numpy(splits.trn_y)
    order = torch.from_numpy(np.random.default_rng(1).permutation(len(y_all)))

    def forward(xb):
        h = xb
        for i in range(0, len(params) - 2, 2):
            lin = MePropLinear.apply(h, params[i], params[i + 1]) if k else h @ params[i] + params[i + 1]
            h = torch.relu(lin)
        return h @ params[-2] + params[-1]

    timer = Timer()
    for step, i in enumerate(range(0, len(order), minibatch)):
        rows = order[i:i + minibatch]
        xb, yb = x_all[rows], y_all[rows]
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(forward(xb), yb, reduction="sum")
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        for p in params:
            p.grad.clamp_(-5.0, 5.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        t3 = time.perf_counter()
        if step >= 5:  # the first few steps warm PyTorch's allocator and kernels up
            timer.fp += t1 - t0
            timer.bp += t2 - t1
            timer.update += t3 - t2
    return timer


def median_timer(timers):
    return Timer(statistics.median(t.fp for t in timers), statistics.median(t.bp for t in timers),
                 statistics.median(t.update for t in timers))


def machine_info():
    import numba
    from threadpoolctl import threadpool_info
    blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
                     for i in threadpool_info() if i["user_api"] == "blas")
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [f"- CPU: {cpu}, {os.cpu_count()} logical cores; {platform.system()} {platform.release()}",
             f"- Python {platform.python_version()}, NumPy {np.__version__}, Numba {numba.__version__}; BLAS: {blas}"]
    if HAVE_TORCH:
        import torch
        lines.append(f"- PyTorch {torch.__version__}, {torch.get_num_threads()} threads by default")
    else:
        lines.append("- PyTorch: not installed (its rows are left out)")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts to measure")
    ap.add_argument("--minibatch", default="100,10")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--json", help="also write the raw medians to this file")
    ap.add_argument("--busy", action="store_true",
                    help="keep one core busy with a spinning process while measuring (a second "
                         "job on the machine), to see how the thread settings cope")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, int(args.threads), int(args.minibatch))
    have_torch = HAVE_TORCH
    cases = [c for c in CASES if not args.cases or c[0] in args.cases.split(",")]
    spinner = None
    if args.busy:
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    rows, raw = [], []
    for threads in [int(t) for t in args.threads.split(",")]:
        for mb in [int(m) for m in args.minibatch.split(",")]:
            names = [name for name, _ in cases]
            if have_torch:
                names += ["PyTorch dense", "PyTorch meProp k=80"]
            samples = {name: [] for name in names}
            for _ in range(args.repeats):  # alternate the contenders within each repeat
                for name in names:
                    samples[name].append(measure(name, threads, mb))
                    print(f"  threads={threads} mb={mb} {name}: {samples[name][-1]}", file=sys.stderr)
            med = {name: median_timer(ts) for name, ts in samples.items()}
            torch_total = None
            if have_torch:
                t = med["PyTorch dense"]
                torch_total = t.fp + t.bp + t.update
            dense_bp = med["mlp"].bp if "mlp" in med else None
            for name, t in med.items():
                total = t.fp + t.bp + t.update
                vs_torch = f"{total / torch_total:.2f}x" if torch_total else "—"
                bp_gain = f"{dense_bp / t.bp:.1f}x" if dense_bp and not name.startswith("PyTorch") else "—"
                orig = ORIGINAL.get(name)
                vs_orig = f"{sum(orig) / total:.0f}x" if orig and mb == 100 else "—"
                rows.append(f"| {threads} | {mb} | {name} | {t.fp:.2f} | {t.bp:.2f} | {t.update:.2f} | "
                            f"{total:.2f} | {vs_torch} | {bp_gain} | {vs_orig} |")
                raw.append(dict(threads=threads, minibatch=mb, case=name, fp=t.fp, bp=t.bp,
                                update=t.update))
    if spinner is not None:
        spinner.kill()
    print("\n".join(machine_info()))
    print(f"- command: python benchmarks/epoch_bench.py --repeats {args.repeats} "
          f"--threads {args.threads} --minibatch {args.minibatch}"
          f"{' --cases ' + repr(args.cases) if args.cases else ''}{' --busy' if args.busy else ''}; "
          f"medians of {args.repeats}\n")
    print("| threads | minibatch | case | fp s | bp s | update s | epoch s | / PyTorch dense | bp gain vs mlp | faster than C# |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
