"""One training epoch on MNIST (fp, bp and update summed separately), nnmnist against PyTorch.

    python benchmarks/epoch_bench.py [--repeats 3] [--threads 1,2] [--minibatch 100,10]

Every case is run `--repeats` times, the contenders alternating within each repeat, and the
table quotes medians. Each measurement runs in a fresh worker process of this script: two
OpenMP runtimes (Numba's and PyTorch's) in one process spin against each other and against
BLAS on a 2-core machine, which would make whichever runs second look several times slower.
Compile time is kept out (kernels are warmed up and a few minibatches run before timing).
PyTorch is optional: without it the PyTorch rows are left out. Evaluation is not timed; an
epoch here is the 55,000 training examples only.

PyTorch runs as its users run it: its workers start without the thread-runtime settings that
importing nnmnist puts into this process's environment (`OMP_WAIT_POLICY=PASSIVE`,
`OPENBLAS_THREAD_TIMEOUT`), unless you set them yourself, and the model is `nn.Linear`
layers with `clip_grad_value_`, `Adam` and `zero_grad(set_to_none=True)`.

Measure with the BLAS kernels OpenBLAS picks for this CPU: if `OPENBLAS_CORETYPE` is set
(it forces older kernels), unset it for the command,
`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/epoch_bench.py`; the header
prints the kernel architecture threadpoolctl reports and warns when it is forced.
"""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# What the user's environment says before nnmnist's import adds its thread-runtime defaults;
# PyTorch's workers get exactly this (see `worker_env`).
THREAD_VARS = ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")
USER_THREAD_ENV = {name: os.environ.get(name) for name in THREAD_VARS}

# The worker's first import decides how the thread runtimes start: PyTorch with its own
# defaults, nnmnist with its own (set in nnmnist/__init__.py, before NumPy loads).
if "--worker" in sys.argv and sys.argv[sys.argv.index("--worker") + 1].startswith("PyTorch"):
    import torch  # noqa: F401
else:
    import nnmnist  # noqa: F401

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import importlib.util  # noqa: E402
import subprocess  # noqa: E402

HAVE_TORCH = importlib.util.find_spec("torch") is not None

from nnmnist.run.config import Config  # noqa: E402
from nnmnist.data.mnist import find_mnist_dir, load_mnist  # noqa: E402
from nnmnist.run.training import Timer, Trainer  # noqa: E402

# The original C# program, one core, per epoch (fp, bp, update seconds): docs/ORIGINAL.md §10.
ORIGINAL = {"mlp": (200.0, 270.0, 8.0), "mlptop k=80": (200.0, 63.0, 8.0)}

CASES = ["mlp", "mlptop k=20", "mlptop k=80", "mlptop k=160", "mlprand k=80", "mlpvar k=160",
         "unified k=80", "unified k=80 lazy"]
TORCH_CASES = ["PyTorch dense", "PyTorch meProp k=80"]


def case_fields(name):
    """Config fields of a case name: a network type ('mlp', 'mlptop', 'mlprand', 'mlpvar' or
    'unified', which is mlptop with Unified), then 'k=N' and 'lazy' (LazyUpdate) as needed."""
    words = name.split()
    net = words[0]
    fields = dict(NetType="mlptop", Unified=True) if net == "unified" else dict(NetType=net)
    for w in words[1:]:
        if w.startswith("k="):
            fields["TrainTop"] = int(w[2:])
        elif w == "lazy":
            fields["LazyUpdate"] = True
        else:
            raise ValueError(f"unknown word {w!r} in case {name!r}")
    return fields


def find_mnist():
    data_dir = find_mnist_dir() or REPO / "data"
    return load_mnist(Config(DataDir=str(data_dir)), allow_fetch=True, log=lambda *a: None)


def worker(case, threads, minibatch, hidden=500, examples=0):
    """Run one measurement in this (fresh) process and print its Timer as JSON."""
    splits = find_mnist()
    if case.startswith("PyTorch"):
        import torch
        torch.set_num_threads(threads)
        k = int(case.split("k=")[1]) if "meProp" in case else None
        timer = torch_epoch(splits, minibatch, hidden, examples, k)
    else:
        from nnmnist.kernels import set_num_threads
        set_num_threads(threads)
        timer = ours_epoch(case_fields(case), splits, minibatch, hidden, examples)
    print(json.dumps(dict(fp=timer.fp, bp=timer.bp, update=timer.update)))


def worker_env(case):
    """The environment of a worker: PyTorch's without nnmnist's thread-runtime defaults."""
    env = dict(os.environ)
    if case.startswith("PyTorch"):
        for name, value in USER_THREAD_ENV.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
    return env


def measure(case, threads, minibatch, hidden=500, examples=0):
    """One fresh worker process; its Timer."""
    out = subprocess.run([sys.executable, __file__, "--worker", case, "--threads", str(threads),
                          "--minibatch", str(minibatch), "--hidden", str(hidden),
                          "--examples", str(examples)],
                         capture_output=True, text=True, check=True, env=worker_env(case))
    return Timer(**json.loads(out.stdout.strip().splitlines()[-1]))


def ours_epoch(fields, splits, minibatch, hidden=500, examples=0):
    """fp/bp/update seconds of one epoch (or its first `examples` examples) of nnmnist."""
    cfg = Config(MinibatchSize=minibatch, RandomSeed=1, HiddenSize=hidden, **fields)
    trainer = Trainer(cfg, splits)
    trainer.compute.warmup()
    trainer.data_rng.shuffle(trainer.order)
    trainer.train_part(trainer.order[:minibatch * 5], Timer(), "warm-up")
    timer = Timer()
    trainer.train_part(trainer.order[:examples or None], timer, "epoch")
    return timer


def torch_epoch(splits, minibatch, hidden=500, examples=0, k=None):
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
    # as ours: 5 untimed warm-up minibatches, then the timed epoch (or its first `examples`)
    warm = [order[i:i + minibatch] for i in range(0, 5 * minibatch, minibatch)]
    timed_order = order[:examples] if examples else order
    timed = [timed_order[i:i + minibatch] for i in range(0, len(timed_order), minibatch)]

    timer = Timer()
    for step, rows in enumerate(warm + timed):
        xb, yb = x_all[rows], y_all[rows]
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(xb), yb, reduction="sum")
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        nn.utils.clip_grad_value_(model.parameters(), 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if step >= len(warm):
            timer.fp += t1 - t0
            timer.bp += t2 - t1
            timer.update += t3 - t2
    return timer


def median_timer(timers):
    return Timer(statistics.median(t.fp for t in timers), statistics.median(t.bp for t in timers),
                 statistics.median(t.update for t in timers))


def blas_info():
    """(description, architectures) of the BLAS libraries threadpoolctl sees in this process."""
    from threadpoolctl import threadpool_info
    libs = [i for i in threadpool_info() if i["user_api"] == "blas"]
    text = ", ".join(f"{i['internal_api']} {i.get('version')}, kernels {i.get('architecture')} "
                     f"({i['num_threads']} threads)" for i in libs)
    return text, [i.get("architecture") for i in libs]


def native_blas_arch():
    """The BLAS kernel architecture a fresh process picks without OPENBLAS_CORETYPE/L2_SIZE."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    code = ("import numpy, threadpoolctl; print(','.join(str(i.get('architecture')) for i in "
            "threadpoolctl.threadpool_info() if i['user_api'] == 'blas'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return out.stdout.strip().split(",") if out.returncode == 0 else []


def machine_info():
    """Header lines: CPU, library versions, BLAS kernels (and a warning when they are forced)."""
    import numba
    blas, archs = blas_info()
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [f"- CPU: {cpu}, {os.cpu_count()} logical cores; {platform.system()} {platform.release()}",
             f"- Python {platform.python_version()}, NumPy {np.__version__}, Numba {numba.__version__}",
             f"- BLAS (threadpoolctl): {blas}"]
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced:
        native = native_blas_arch()
        lines.append(f"- WARNING: OPENBLAS_CORETYPE={forced} forces OpenBLAS's {archs} kernels; "
                     f"this CPU's own choice is {native}. Rerun with "
                     "`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` to measure what users get.")
    if HAVE_TORCH:
        import torch
        lines.append(f"- PyTorch {torch.__version__} (its workers: PyTorch's own thread settings; "
                     f"OMP_WAIT_POLICY {USER_THREAD_ENV['OMP_WAIT_POLICY'] or 'unset'})")
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
    ap.add_argument("--hidden", type=int, default=500, help=argparse.SUPPRESS)
    ap.add_argument("--examples", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, int(args.threads), int(args.minibatch), args.hidden,
                      args.examples)
    have_torch = HAVE_TORCH
    cases = [c for c in CASES + TORCH_CASES if not args.cases or c in args.cases.split(",")]
    if not have_torch:
        cases = [c for c in cases if not c.startswith("PyTorch")]
    spinner = None
    if args.busy:
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    rows, raw = [], []
    for threads in [int(t) for t in args.threads.split(",")]:
        for mb in [int(m) for m in args.minibatch.split(",")]:
            names = list(cases)
            samples = {name: [] for name in names}
            for _ in range(args.repeats):  # alternate the contenders within each repeat
                for name in names:
                    samples[name].append(measure(name, threads, mb))
                    print(f"  threads={threads} mb={mb} {name}: {samples[name][-1]}", file=sys.stderr)
            med = {name: median_timer(ts) for name, ts in samples.items()}
            torch_total = None
            if "PyTorch dense" in med:
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
