"""Timings of the kernels against their NumPy equivalents: `python benchmarks/kernel_bench.py`.

Prints median wall-clock microseconds per call (after warm-up) for the auto choice and for
the serial and parallel compilations separately. Every call gets different data from a pool
of inputs: repeating one input lets the branch predictor learn it and flatters selection.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nnmnist  # noqa: E402,F401  (its thread-runtime defaults, before NumPy loads)

import numba  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

from nnmnist.optim.checked import adam_update, adam_update_rows  # noqa: E402
from nnmnist.kernels import (BackwardWorkspace,  # noqa: E402
                             forced_mode, layer_backward, rows_touched, set_num_threads,
                             sparse_backward, topk_rows, warmup)


POOL = 16  # distinct inputs cycled through


def median_us(fn, repeats):
    """Median microseconds of fn(i), i = 0, 1, ... (fn picks input i % POOL)."""
    fn(0)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return 1e6 * float(np.median(times))


def modes(fn, repeats):
    out = {}
    for mode in ("auto", "serial", "parallel"):
        with forced_mode(mode):
            out[mode] = median_us(fn, repeats)
    return out


def fmt(d):
    return "  ".join(f"{k}={v:8.1f}" for k, v in d.items())


def bench_topk(rng, repeats):
    print("topk_rows (us): kernel [auto serial parallel] vs np.argpartition and the "
          "argsort reference")
    for B, n in ((100, 500), (10, 500)):
        pool = []
        for _ in range(POOL):
            a = rng.standard_normal((B, n)).astype(np.float32)
            a[rng.random((B, n)) < 0.5] = 0.0  # ReLU-like zeros
            pool.append(a)
        for k in (10, 20, 40, 80, 160):
            out = np.empty((B, k), np.int32)
            t = modes(lambda i: topk_rows(pool[i % POOL], k, out=out), repeats)
            part = median_us(lambda i: np.sort(np.argpartition(
                -np.abs(pool[i % POOL]), k - 1, axis=1)[:, :k], axis=1), repeats)
            ref = median_us(lambda i: np.sort(np.argsort(
                -np.abs(pool[i % POOL]), axis=1, kind="stable")[:, :k], axis=1), repeats)
            print(f"  B={B:3d} n={n} k={k:3d}: {fmt(t)}  argpartition={part:8.1f}"
                  f"  argsort={ref:8.1f}")


def bench_backward(rng, repeats):
    print("sparse_backward (us, dx and dW) vs dense equivalent "
          "(scatter dy, dys @ W, dW += dys.T @ x)")
    n_out = 500
    for B, n_in in ((100, 784), (100, 500), (10, 784), (10, 500)):
        xs = [rng.random((B, n_in)).astype(np.float32) for _ in range(POOL)]
        dys = [rng.standard_normal((B, n_out)).astype(np.float32) for _ in range(POOL)]
        W = rng.standard_normal((n_out, n_in)).astype(np.float32)
        dW = np.zeros((n_out, n_in), np.float32)
        dx = np.empty((B, n_in), np.float32)
        ws = BackwardWorkspace(B, 160, n_out)

        def full(i):
            np.matmul(dys[i % POOL], W, out=dx)
            dW.__iadd__(dys[i % POOL].T @ xs[i % POOL])

        t_full = median_us(full, repeats)
        for k in (20, 80, 160):
            idxs = [topk_rows(dy, k) for dy in dys]

            def dense(i):
                dy, idx = dys[i % POOL], idxs[i % POOL]
                kept = np.zeros_like(dy)
                np.put_along_axis(kept, idx, np.take_along_axis(dy, idx, axis=1), axis=1)
                np.matmul(kept, W, out=dx)
                dW.__iadd__(kept.T @ xs[i % POOL])

            t = modes(lambda i: sparse_backward(xs[i % POOL], W, dys[i % POOL], idxs[i % POOL],
                                                dx=dx, dW=dW, workspace=ws), repeats)
            t_dense = median_us(dense, repeats)
            print(f"  B={B:3d} in={n_in} out={n_out} k={k:3d}: {fmt(t)}  dense={t_dense:8.1f}"
                  f"  (plain full backward {t_full:8.1f})")


def bench_layer(rng, repeats):
    print("layer_backward (us): a hidden unit's whole meProp backward in one call vs the same "
          "steps as separate calls (ReLU mask and bias sum in NumPy, topk_rows, sparse_backward)")
    n_out = 500
    for B, n_in, need_dx in ((100, 784, False), (100, 500, True), (10, 784, False), (10, 500, True)):
        xs = [rng.random((B, n_in)).astype(np.float32) for _ in range(POOL)]
        gs = [rng.standard_normal((B, n_out)).astype(np.float32) for _ in range(POOL)]
        outs = [np.maximum(rng.standard_normal((B, n_out)), 0).astype(np.float32)
                for _ in range(POOL)]
        W = rng.standard_normal((n_out, n_in)).astype(np.float32)
        db, dW = np.zeros(n_out, np.float32), np.zeros((n_out, n_in), np.float32)
        g = np.empty((B, n_out), np.float32)
        for k in (20, 80):
            ws = BackwardWorkspace(B, k, n_out)

            def fused(i):
                np.copyto(g, gs[i % POOL])  # the call overwrites g (also copied in `separate`)
                layer_backward(g, outs[i % POOL], xs[i % POOL], W, k, db, dW, need_dx=need_dx,
                               workspace=ws)

            def separate(i):
                np.copyto(g, gs[i % POOL])
                dy = g * (outs[i % POOL] > 0)
                db.__iadd__(dy.sum(axis=0))
                sparse_backward(xs[i % POOL], W, dy, topk_rows(dy, k), dW=dW, need_dx=need_dx,
                                workspace=ws)

            t = modes(fused, repeats)
            print(f"  B={B:3d} in={n_in} k={k:3d} dx={'yes' if need_dx else 'no ':3s}: {fmt(t)}"
                  f"  separate={median_us(separate, repeats):8.1f}")


def bench_adam(rng, repeats):
    print("adam_update (us) over a 500x784 weight vs a NumPy float32 implementation; rows variant")
    W = rng.standard_normal((500, 784)).astype(np.float32)
    G, M, V = (np.zeros_like(W) for _ in range(3))
    w, g, m, v = (a.ravel() for a in (W, G, M, V))
    t = modes(lambda i: adam_update(w, g, m, v, 1e-3, 0.0, 5.0), repeats)

    def numpy_adam(i):
        gg = np.clip(G, -5, 5)
        M[:] = 0.9 * M + 0.1 * gg
        V[:] = 0.999 * V + 0.001 * gg * gg
        W[:] -= np.float32(1e-3) * M / (np.sqrt(V) + 1e-8)
        G[:] = 0

    print(f"  dense: {fmt(t)}  numpy={median_us(numpy_adam, repeats):8.1f}")
    for k in (20, 160):
        idx = topk_rows(rng.standard_normal((100, 500)).astype(np.float32), k)
        rows = rows_touched(idx, 500)
        t = modes(lambda i: adam_update_rows(W, G, M, V, rows, 1e-3, 0.0, 5.0), repeats)
        print(f"  rows ({rows.size} of 500, from B=100 k={k}): {fmt(t)}")
        rows = rows[::25]
        t = modes(lambda i: adam_update_rows(W, G, M, V, rows, 1e-3, 0.0, 5.0), repeats)
        print(f"  rows ({rows.size} of 500): {fmt(t)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=0, help="kernel threads (0: default)")
    p.add_argument("--blas", type=int, default=None, help="BLAS threads (default: --threads)")
    args = p.parse_args(argv)
    numba_threads = set_num_threads(args.threads, blas=args.blas)
    warmup()  # also starts the threading layer
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    print(f"threads: numba={numba_threads} blas={blas} layer={numba.threading_layer()}")
    rng = np.random.default_rng(0)
    bench_topk(rng, args.repeats)
    bench_backward(rng, args.repeats)
    bench_layer(rng, args.repeats)
    bench_adam(rng, args.repeats)


if __name__ == "__main__":
    main()
