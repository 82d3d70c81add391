"""A/B of the kernels: this checkout's `nnmnist/kernels` against the same package at a git revision.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/kernel_ab.py --base HEAD~1 \
        [--only topk,sparse,layer,unified] [--rounds 15] [--threads 1]

The base revision's kernel files are copied into a temporary package and imported beside the
working tree's, so both run in one process on the same inputs. Each round times A then B
(or B then A, alternating) on every case; a case's figure is the median over rounds of the
mean time of one call over a pool of distinct inputs (repeating one input lets the branch
predictor learn it). The ratio base / new above 1 means the new kernels are faster.
"""
import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import nnmnist  # noqa: E402,F401  (its thread-runtime defaults, before NumPy loads)

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

POOL = 8


def load_base(rev, tmp):
    """Import nnmnist/kernels as of `rev` under the name `base_kernels`."""
    pkg = Path(tmp) / "base_kernels"
    pkg.mkdir()
    files = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", rev,
                            "nnmnist/kernels/"], capture_output=True, text=True, check=True)
    for name in files.stdout.split():
        if name.endswith(".py"):
            text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{name}"],
                                  capture_output=True, text=True, check=True).stdout
            (pkg / Path(name).name).write_text(text)
    sys.path.insert(0, str(tmp))
    return importlib.import_module("base_kernels")


def unit_inputs(rng, B, n_in, n_out):
    """A hidden unit's backward inputs: x, W, POOL output gradients and ReLU outputs, the
    db and dW accumulators, and a scratch gradient the kernels may overwrite."""
    x = np.maximum(rng.standard_normal((B, n_in)), 0).astype(np.float32)
    W = rng.standard_normal((n_out, n_in)).astype(np.float32)
    gs = [rng.standard_normal((B, n_out)).astype(np.float32) for _ in range(POOL)]
    outs = [np.maximum(rng.standard_normal((B, n_out)), 0).astype(np.float32)
            for _ in range(POOL)]
    db, dW = np.zeros(n_out, np.float32), np.zeros((n_out, n_in), np.float32)
    return x, W, gs, outs, db, dW, np.empty((B, n_out), np.float32)


def relu_rows(rng, B, n):
    a = rng.standard_normal((B, n)).astype(np.float32)
    a[rng.random((B, n)) < 0.5] = 0.0  # ReLU-like zeros
    return a


def cases(rng, only):
    """(name, make(K) -> fn(i)) pairs; K is a kernels package (base or new)."""
    out = []
    if "topk" in only:
        for B, n, k in ((100, 500, 20), (100, 500, 80), (10, 500, 20), (100, 2000, 20)):
            pool = [relu_rows(rng, B, n) for _ in range(POOL)]

            def make(K, pool=pool, k=k):
                return lambda i: K.topk_rows(pool[i % POOL], k)
            out.append((f"topk_rows B={B} n={n} k={k}", make))
    if "sparse" in only:
        for B, n_in, n_out, k, dx in ((100, 784, 500, 80, False), (100, 500, 500, 80, True),
                                      (100, 500, 500, 20, True), (10, 500, 500, 20, True),
                                      (100, 2000, 2000, 20, True), (100, 784, 2000, 20, False)):
            x = np.maximum(rng.standard_normal((B, n_in)), 0).astype(np.float32)
            W = rng.standard_normal((n_out, n_in)).astype(np.float32)
            dys = [relu_rows(rng, B, n_out) for _ in range(POOL)]
            dW = np.zeros((n_out, n_in), np.float32)

            def make(K, x=x, W=W, dys=dys, dW=dW, k=k, dx=dx):
                idxs = [K.topk_rows(dy, k) for dy in dys]
                ws = K.BackwardWorkspace(x.shape[0], k, W.shape[0])
                return lambda i: K.sparse_backward(x, W, dys[i % POOL], idxs[i % POOL], dW=dW,
                                                   need_dx=dx, workspace=ws)
            out.append((f"sparse_backward B={B} {n_in}->{n_out} k={k} dx={dx}", make))
    if "layer" in only or "unified" in only:
        for B, n_in, n_out, k, dx in ((100, 784, 500, 80, False), (100, 500, 500, 80, True),
                                      (100, 500, 500, 20, True), (10, 500, 500, 20, True),
                                      (100, 2000, 2000, 20, True)):
            x, W, gs, outs, db, dW, g = unit_inputs(rng, B, n_in, n_out)
            for kind in ("layer", "unified"):
                if kind not in only:
                    continue

                def make(K, x=x, W=W, gs=gs, outs=outs, db=db, dW=dW, g=g, k=k, dx=dx,
                         kind=kind):
                    fn = K.layer_backward if kind == "layer" else K.unified_backward

                    def call(i):
                        np.copyto(g, gs[i % POOL])  # the call overwrites g with dy
                        fn(g, outs[i % POOL], x, W, k, db, dW, need_dx=dx)
                    return call
                out.append((f"{kind}_backward B={B} {n_in}->{n_out} k={k} dx={dx}", make))
    return out


def time_once(fn, calls):
    t0 = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - t0) / calls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD", help="git revision of the A side")
    ap.add_argument("--only", default="topk,sparse,layer,unified")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=2 * POOL, help="calls timed per round")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    from nnmnist import kernels as new
    with tempfile.TemporaryDirectory() as tmp:
        base = load_base(args.base, tmp)
        for K in (new, base):  # each case's first, untimed call compiles what it times
            K.set_num_threads(args.threads)
        blas = [(i.get("architecture"), i["num_threads"]) for i in threadpool_info()
                if i["user_api"] == "blas"]
        print(f"base {args.base} against the working tree; threads {args.threads}; "
              f"BLAS kernels (threadpoolctl) {blas}; medians of {args.rounds} rounds")
        print("| case | base us | new us | base / new |")
        print("|---|---|---|---|")
        rng = np.random.default_rng(0)
        for name, make in cases(rng, set(args.only.split(","))):
            fns = {"base": make(base), "new": make(new)}
            for fn in fns.values():
                fn(0)
            samples = {"base": [], "new": []}
            for r in range(args.rounds):
                order = ("base", "new") if r % 2 == 0 else ("new", "base")
                for side in order:
                    samples[side].append(time_once(fns[side], args.calls))
            a, b = (1e6 * statistics.median(samples[s]) for s in ("base", "new"))
            print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
