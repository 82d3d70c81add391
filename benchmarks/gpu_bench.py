"""The GPU benchmark: `python benchmarks/gpu_bench.py [--out FILE] [--budget SECONDS]`.

Runs on a machine with CuPy and an NVIDIA GPU and writes a markdown report (plus the same numbers
as JSON beside it). It installs nothing and imports the project from this checkout. Sections:

1. top-k selection: the per-row numba.cuda kernel against a CuPy sort of the same rows;
2. one training epoch per network (HiddenSize 500, Adam) at minibatch 100 and 10: fp, bp and
   update summed separately, after a warm-up so that compilation is not timed;
3. a wide network (HiddenSize 8192): dense mlp against unified top-k with k = 8 and 64;
4. the dense 784-500-500-10 MLP against the same MLP in PyTorch on the same GPU, alternating
   runs, medians quoted;
5. CPU (the NumPy reference) against GPU: one epoch from the same seed for each network type.

Timing is what the trainer logs: the device is synchronised before every timer read, so fp, bp
and update mean on the GPU what they mean on the CPU. Sections that would overrun the time
budget are skipped, and the report says so.
"""
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nnmnist.backends import gpu_available  # noqa: E402
from nnmnist.backends.cpu import NumpyCompute  # noqa: E402
from nnmnist.run.config import Config  # noqa: E402
from nnmnist.run.log import RunLog  # noqa: E402
from nnmnist.run.training import Timer, Trainer, train_and_evaluate  # noqa: E402

from nnmnist.data.mnist import mnist_dirs  # noqa: E402

MNIST_DIRS = mnist_dirs()

from epoch import CASES as NETS  # noqa: E402  (the rows of the CPU benchmark)

WIDE = [
    ("mlp (dense)", dict(NetType="mlp")),
    ("unified k=8", dict(NetType="mlptop", TrainTop=8, Unified=True)),
    ("unified k=64", dict(NetType="mlptop", TrainTop=64, Unified=True)),
    ("unified k=8, LazyUpdate", dict(NetType="mlptop", TrainTop=8, Unified=True, LazyUpdate=True)),
]
PARITY = [
    ("mlp", dict(NetType="mlp")),
    ("mlptop k=80", dict(NetType="mlptop", TrainTop=80)),
    ("mlprand k=80", dict(NetType="mlprand", TrainTop=80)),
    ("mlpvar k=80, TrainCycle=1", dict(NetType="mlpvar", TrainTop=80, TrainCycle=1)),
    ("unified k=80", dict(NetType="mlptop", TrainTop=80, Unified=True)),
]


class Report:
    """Markdown lines and JSON numbers, both rewritten to disk after every section."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lines, self.data = [], {}

    def __call__(self, line=""):
        print(line, flush=True)
        self.lines.append(line)

    def table(self, header, rows):
        self("| " + " | ".join(header) + " |")
        self("|" + "---|" * len(header))
        for row in rows:
            self("| " + " | ".join(str(c) for c in row) + " |")
        self()

    def save(self):
        self.path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")
        self.path.with_suffix(".json").write_text(json.dumps(self.data, indent=1, default=str),
                                                  encoding="utf-8")


# -- data ------------------------------------------------------------------------------------

def synthetic(n_trn, n_dev, n_tst, seed=0):
    """MNIST-shaped stand-in: each class lights its own block of pixels over noise."""
    from nnmnist.data.mnist import Splits
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n)
        x = (rng.random((n, 784)) * 0.3).astype(np.float32)
        for c in range(10):
            x[y == c, c * 78:(c + 1) * 78] += 0.5
        return x, y.astype(np.int64)
    return Splits(*make(n_trn), *make(n_dev), *make(n_tst), n_in=784)


def load_data(smoke):
    if smoke:
        return synthetic(2000, 500, 500), "synthetic (smoke run: 2000 training examples)"
    from nnmnist.data.mnist import load_mnist
    for d in MNIST_DIRS:
        try:
            splits = load_mnist(Config(DataDir=str(d)), allow_fetch=False, log=lambda *a, **k: None)
            return splits, f"real MNIST from {d}"
        except Exception:  # noqa: BLE001 - try the next place
            continue
    return synthetic(55000, 5000, 10000), ("SYNTHETIC data of MNIST's sizes (real MNIST not found "
                                           f"in {', '.join(map(str, MNIST_DIRS))}): accuracies "
                                           "below are not MNIST's")


# -- timing ----------------------------------------------------------------------------------

def new_trainer(fields, splits, compute, mb, seed=1):
    cfg = Config(MinibatchSize=mb, RandomSeed=seed, Kernels="numpy", **fields)
    return Trainer(cfg, splits, compute)


def time_batches(trainer, n_batches, warm_batches):
    """fp, bp, update (s) over n_batches minibatches of a fresh shuffle, after a warm-up."""
    mb = trainer.cfg.MinibatchSize
    order = trainer.order
    if warm_batches:
        trainer.data_rng.shuffle(order)
        trainer.train_part(order[:warm_batches * mb], Timer(), "warm-up")
    trainer.data_rng.shuffle(order)
    timer = Timer()
    trainer.train_part(order[:n_batches * mb], timer, "timed")
    return timer


def fmt_s(x):
    return f"{x:.3f}"


def fmt_ms(x):
    return f"{1e3 * x:.3f}"


# -- sections ----------------------------------------------------------------------------------

def section_topk(rep, cp, compute, smoke):
    rep("## Top-k selection: the per-row kernel against sorting")
    rep()
    rep("Median microseconds per call (host clock, device synchronised after each call), on "
        "standard-normal rows; `sort` is `sort(argsort(-|a|)[:, :k])` in CuPy. `same` says "
        "whether the two chose the same columns.")
    rep()
    rng = np.random.default_rng(0)
    cases = [("rows", 100, 500, 20), ("rows", 100, 500, 80), ("rows", 100, 500, 160),
             ("rows", 10, 500, 80), ("rows", 100, 8192, 8), ("rows", 100, 8192, 64),
             ("unified", 100, 500, 80), ("unified", 100, 8192, 8), ("unified", 100, 8192, 64)]
    reps = 5 if smoke else 50
    rows, out = [], []
    for kind, B, n, k in cases:
        a = cp.asarray(rng.standard_normal((B, n)).astype(np.float32))
        if kind == "rows":
            mine = lambda: compute.select_topk_rows(a, k)  # noqa: E731
            by_sort = lambda: cp.sort(cp.argsort(-cp.abs(a), axis=1)[:, :k], axis=1)  # noqa: E731
        else:
            mine = lambda: compute.select_topk_unified(a, k)  # noqa: E731
            by_sort = lambda: cp.sort(cp.argsort(-cp.abs(a).sum(axis=0))[:k])  # noqa: E731
        same = bool((cp.asnumpy(mine()) == cp.asnumpy(by_sort())).all())
        t_mine, t_sort = median_call(mine, compute, reps), median_call(by_sort, compute, reps)
        rows.append((kind, f"{B}x{n}", k, f"{t_mine:.1f}", f"{t_sort:.1f}",
                     f"{t_sort / t_mine:.1f}x", same))
        out.append(dict(kind=kind, B=B, n=n, k=k, kernel_us=t_mine, sort_us=t_sort, same=same))
    rep.table(["top-k", "dy", "k", "kernel (us)", "sort (us)", "sort / kernel", "same"], rows)
    rep.data["topk"] = out


def median_call(fn, compute, reps):
    fn()
    compute.sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        compute.sync()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def section_epochs(rep, splits, compute, mb, smoke, deadline):
    n_epoch = -(-len(splits.trn_y) // mb)
    n_timed = n_epoch if mb >= 100 or smoke else min(n_epoch, 1500)
    warm = 5 if smoke else 20
    rep(f"### Minibatch {mb}")
    rep()
    if n_timed < n_epoch:
        rep(f"Timed on {n_timed} of the epoch's {n_epoch} minibatches (after {warm} warm-up "
            f"minibatches); the epoch columns scale that by {n_epoch}/{n_timed}.")
    else:
        rep(f"A whole epoch of {n_epoch} minibatches, after {warm} warm-up minibatches.")
    rep()
    rows, out, bp_mlp = [], [], None
    scale = n_epoch / n_timed
    for name, fields in NETS:
        if time.perf_counter() > deadline:
            rows.append((name, "skipped (time budget)", "", "", "", ""))
            continue
        trainer = new_trainer(dict(fields, HiddenSize=500), splits, compute, mb)
        t = time_batches(trainer, n_timed, warm)
        fp, bp, up = t.fp * scale, t.bp * scale, t.update * scale
        bp_mlp = bp if name == "mlp" else bp_mlp
        ratio = f"{bp_mlp / bp:.2f}x" if bp_mlp else ""
        rows.append((name, fmt_s(fp), fmt_s(bp), fmt_s(up), fmt_s(fp + bp + up), ratio))
        out.append(dict(net=name, mb=mb, timed_batches=n_timed, epoch_batches=n_epoch,
                        fp=fp, bp=bp, update=up))
        del trainer
    rep.table(["net", "fp (s/epoch)", "bp (s/epoch)", "update (s/epoch)", "total (s/epoch)",
               "bp: mlp / this"], rows)
    rep.data.setdefault("epochs", []).extend(out)


def section_wide(rep, splits, compute, smoke, deadline):
    hidden = 512 if smoke else 8192
    n_timed, warm = (5, 2) if smoke else (100, 10)
    rep(f"## Wide network: HiddenSize {hidden}, minibatch 100, Adam")
    rep()
    rep(f"Milliseconds per minibatch, averaged over {n_timed} minibatches after {warm} warm-up "
        "minibatches (not a whole epoch). Target: unified top-k with k = 8 spends at least 5x "
        "less time in backprop than dense (the paper saw 11.8x on a GTX 1080).")
    rep()
    rows, out, bp_dense = [], [], None
    for name, fields in WIDE:
        if time.perf_counter() > deadline:
            rows.append((name, "skipped (time budget)", "", "", ""))
            continue
        trainer = new_trainer(dict(fields, HiddenSize=hidden), splits, compute, 100)
        t = time_batches(trainer, n_timed, warm)
        fp, bp, up = t.fp / n_timed, t.bp / n_timed, t.update / n_timed
        bp_dense = bp if name.startswith("mlp") else bp_dense
        speed = f"{bp_dense / bp:.1f}x" if bp_dense else ""
        rows.append((name, fmt_ms(fp), fmt_ms(bp), fmt_ms(up), speed))
        out.append(dict(net=name, hidden=hidden, fp=fp, bp=bp, update=up,
                        bp_speedup=(bp_dense / bp) if bp_dense else None))
        del trainer
        compute.xp.get_default_memory_pool().free_all_blocks()
    rep.table(["net", "fp (ms)", "bp (ms)", "update (ms)", "bp: dense / this"], rows)
    rep.data["wide"] = out
    k8 = [r for r in out if r["net"] == "unified k=8"]
    if k8 and k8[0]["bp_speedup"]:
        s = k8[0]["bp_speedup"]
        rep(f"**Target (bp, unified k=8 vs dense, >= 5x): {s:.1f}x -> "
            f"{'met' if s >= 5 else 'NOT met'}.**")
        rep()


def torch_setup(splits, seed):
    import torch
    dev = torch.device("cuda")
    torch.manual_seed(seed)
    sizes = [784, 500, 500, 10]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        lin = torch.nn.Linear(a, b)
        with torch.no_grad():  # the same initialisation as nnmnist: N(0, sqrt(6 / (in + out)))
            lin.weight.normal_(0.0, (6.0 / (a + b)) ** 0.5)
            lin.bias.zero_()
        layers += [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).to(dev)
    x = torch.from_numpy(splits.trn_x).to(dev)
    y = torch.from_numpy(splits.trn_y).to(dev)
    return torch, model, x, y


def torch_epoch(torch, model, opt, x, y, order, mb, n_batches):
    """fp, bp, update (s) with the trainer's timing: synchronise before every clock read."""
    fp = bp = up = 0.0
    sync, clock = torch.cuda.synchronize, time.perf_counter
    order = torch.from_numpy(order).to(x.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    params = list(model.parameters())
    for i in range(0, n_batches * mb, mb):
        rows = order[i:i + mb]
        xb, yb = x[rows], y[rows]
        t0 = clock()
        logits = model(xb)
        loss = torch.nn.functional.cross_entropy(logits, yb, reduction="sum")  # summed, as ours
        sync()
        t1 = clock()
        loss.backward()
        sync()
        t2 = clock()
        torch.nn.utils.clip_grad_value_(params, 5.0)  # ClipBound 5, element-wise, as ours
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t3 = clock()
        fp, bp, up = fp + t1 - t0, bp + t2 - t1, up + t3 - t2
        loss_sum += loss.detach().double()
        correct += (logits.argmax(1) == yb).sum()
    float(loss_sum), int(correct)
    return fp, bp, up


def section_torch(rep, splits, compute, smoke, deadline):
    rep("## Dense MLP 784-500-500-10, Adam: nnmnist on CuPy against PyTorch on the same GPU")
    rep()
    try:
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
    except Exception as exc:  # noqa: BLE001
        rep(f"Skipped: PyTorch with CUDA is not available here ({exc!r}).")
        rep()
        return
    repeats = 1 if smoke else 3
    rep(f"Seconds per epoch; medians of {repeats} runs, the implementations alternating. PyTorch "
        f"{torch.__version__}: `nn.Sequential` of Linear/ReLU, summed cross-entropy, "
        "`clip_grad_value_(5)`, `torch.optim.Adam` (default foreach, and fused=True), "
        "`zero_grad(set_to_none=True)`; TF32 off in both (the libraries' default for float32). "
        "Target: nnmnist's dense epoch <= PyTorch's at the same minibatch.")
    rep()
    out = []
    for mb in (100, 10):
        n_epoch = -(-len(splits.trn_y) // mb)
        n_timed = n_epoch if mb >= 100 or smoke else min(n_epoch, 1500)
        torch_mod, model_f, x, y = torch_setup(splits, 1)
        _, model_u, _, _ = torch_setup(splits, 1)
        impls = {
            "nnmnist (CuPy)": new_trainer(dict(NetType="mlp", HiddenSize=500), splits, compute, mb),
            "PyTorch Adam (foreach)": (model_f, torch.optim.Adam(model_f.parameters(), lr=1e-3)),
            "PyTorch Adam (fused)": (model_u, torch.optim.Adam(model_u.parameters(), lr=1e-3,
                                                               fused=True)),
        }
        results = {name: [] for name in impls}
        order = np.arange(len(splits.trn_y))
        rng = np.random.default_rng(0)
        for rep_i in range(repeats + 1):  # the first round warms up and is dropped
            if time.perf_counter() > deadline:
                break
            rng.shuffle(order)
            for name, impl in impls.items():
                if name.startswith("nnmnist"):
                    t = time_batches(impl, n_timed if rep_i else min(n_timed, 50), 0)
                    times = (t.fp, t.bp, t.update)
                else:
                    model, opt = impl
                    times = torch_epoch(torch_mod, model, opt, x, y, order, mb,
                                        n_timed if rep_i else min(n_timed, 50))
                if rep_i:
                    results[name].append(times)
        scale = n_epoch / n_timed
        rows = []
        for name, runs in results.items():
            if not runs:
                rows.append((name, "skipped (time budget)", "", "", ""))
                continue
            med = [statistics.median(r[i] for r in runs) * scale for i in range(3)]
            total = statistics.median(sum(r) for r in runs) * scale
            rows.append((name, fmt_s(med[0]), fmt_s(med[1]), fmt_s(med[2]), fmt_s(total)))
            out.append(dict(impl=name, mb=mb, fp=med[0], bp=med[1], update=med[2], total=total,
                            runs=len(runs), timed_batches=n_timed, epoch_batches=n_epoch))
        rep(f"### Minibatch {mb}" + (f" ({n_timed} of {n_epoch} minibatches timed, scaled to "
                                      "the epoch)" if n_timed < n_epoch else ""))
        rep()
        rep.table(["implementation", "fp (s)", "bp (s)", "update (s)", "epoch total (s)"], rows)
        ours = [r for r in out if r["mb"] == mb and r["impl"].startswith("nnmnist")]
        theirs = [r for r in out if r["mb"] == mb and r["impl"].startswith("PyTorch")]
        if ours and theirs:
            best = min(theirs, key=lambda r: r["total"])
            ok = ours[0]["total"] <= best["total"]
            rep(f"**Target (dense epoch <= PyTorch's, minibatch {mb}): nnmnist "
                f"{ours[0]['total']:.3f}s vs {best['impl']} {best['total']:.3f}s -> "
                f"{'met' if ok else 'NOT met'}.**")
            rep()
        del impls, model_f, model_u, x, y
        torch_mod.cuda.empty_cache()
    rep.data["torch"] = out


def section_parity(rep, splits, compute, smoke, deadline):
    rep("## CPU against GPU: one epoch from the same seed")
    rep()
    rep("MaxEpoch 1, IterPerEpoch 8, minibatch 100, Adam, RandomSeed 1; the CPU side is the "
        "plain NumPy reference (`Kernels: numpy`). Target: the same accuracies within float32 "
        "noise (a few hundredths of a point). `mlprand` draws its random columns from another "
        "generator on the GPU (CuPy's, seeded from the network's), so only its learning is "
        "comparable, not its digits.")
    rep()
    rows, out = [], []
    for name, fields in PARITY:
        if time.perf_counter() > deadline:
            rows.append((name, "skipped (time budget)", "", "", "", "", ""))
            continue
        cfg = Config(MaxEpoch=1, RandomSeed=1, Kernels="numpy", **fields)
        res = {}
        for side, comp in (("cpu", NumpyCompute()), ("gpu", compute)):
            t0 = time.perf_counter()
            with RunLog(console=False) as log:
                r = train_and_evaluate(cfg, splits, log, compute=comp)
            res[side] = dict(best_dev=r.best_dev, test=r.test_at_best,
                             dev_last=r.parts[-1]["dev_acc"], loss_last=r.parts[-1]["train_loss"],
                             dims=r.parts[-1]["dims"], wall=time.perf_counter() - t0,
                             fp=r.total.fp, bp=r.total.bp, update=r.total.update)
        c, g = res["cpu"], res["gpu"]
        d_dev, d_tst = g["dev_last"] - c["dev_last"], g["test"] - c["test"]
        dims = "" if c["dims"] == g["dims"] else f"{c['dims']} vs {g['dims']}"
        if fields["NetType"] == "mlpvar":
            dims = f"{c['dims']} / {g['dims']}"
        rows.append((name, f"{c['dev_last']:.2f} / {c['test']:.2f}",
                     f"{g['dev_last']:.2f} / {g['test']:.2f}", f"{d_dev:+.2f} / {d_tst:+.2f}",
                     f"{c['fp'] + c['bp'] + c['update']:.2f} (bp {c['bp']:.2f})",
                     f"{g['fp'] + g['bp'] + g['update']:.2f} (bp {g['bp']:.2f})", dims))
        out.append(dict(net=name, cpu=c, gpu=g))
    rep.table(["net", "CPU dev / test", "GPU dev / test", "GPU - CPU", "CPU fp+bp+update s",
               "GPU fp+bp+update s", "dims (CPU / GPU)"], rows)
    rep.data["parity"] = out


# -- main ------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "gpu_bench.md"),
                   help="markdown report (the JSON goes beside it)")
    p.add_argument("--budget", type=float, default=170.0,
                   help="seconds; sections that would start after it are skipped")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check that it runs")
    args = p.parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.budget
    rep = Report(args.out)
    rep("# GPU benchmark")
    rep()
    if not gpu_available():
        rep("No GPU: CuPy is missing or sees no CUDA device. Nothing was measured.")
        rep.save()
        return 1
    import cupy as cp
    from nnmnist.backends.cuda import CupyCompute
    compute = CupyCompute()
    compute.warmup()
    try:
        props = cp.cuda.runtime.getDeviceProperties(0)
        device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception as exc:  # noqa: BLE001
        device = f"unknown ({exc!r})"
    splits, source = load_data(args.smoke)
    rep(f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}; device: {device}; CuPy {cp.__version__}; "
        f"NumPy {np.__version__}; Python {platform.python_version()}")
    rep(f"- data: {source}")
    rep("- timing: the trainer's own fp / bp / update sums, with the device synchronised before "
        "every timer read; warm-up minibatches run first so that compilation is not timed.")
    rep()
    rep.data["meta"] = dict(device=device, cupy=cp.__version__, numpy=np.__version__, data=source)
    rep.save()

    sections = [
        ("top-k", lambda: section_topk(rep, cp, compute, args.smoke)),
        ("wide", lambda: section_wide(rep, splits, compute, args.smoke, deadline)),
        ("torch", lambda: section_torch(rep, splits, compute, args.smoke, deadline)),
        ("epochs-100", lambda: (rep("## One training epoch per network (HiddenSize 500, Adam)"),
                                rep(), section_epochs(rep, splits, compute, 100, args.smoke,
                                                      deadline))),
        ("parity", lambda: section_parity(rep, splits, compute, args.smoke, deadline)),
        ("epochs-10", lambda: section_epochs(rep, splits, compute, 10, args.smoke, deadline)),
    ]
    failed = 0
    for name, run in sections:
        if time.perf_counter() > deadline:
            rep(f"## {name}: skipped (time budget of {args.budget:.0f}s spent)")
            rep()
            continue
        t0 = time.perf_counter()
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - report it and go on with the next section
            import traceback
            failed += 1
            rep(f"**Section {name} failed:** `{exc!r}`")
            rep()
            rep("```")
            for line in traceback.format_exc().splitlines()[-12:]:
                rep(line)
            rep("```")
            rep()
        print(f"[{name}: {time.perf_counter() - t0:.1f}s]", file=sys.stderr, flush=True)
        rep.save()
    rep(f"_Total {time.perf_counter() - start:.0f}s._")
    rep.save()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
