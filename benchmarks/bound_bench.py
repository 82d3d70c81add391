"""What this machine allows: the bounds that meProp's backward kernels run against.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bound_bench.py [--rounds 9]

One thread throughout. Each figure is a median over rounds (the machine is shared):

1. FMA rate: BLAS single-precision GEMM on the backward's dense shapes, in multiply-adds a
   second. A dense backward runs at this rate.
2. Gather bound: the per-example products read, for every chosen (example, neuron) pair, one
   whole row (of W for dx, of x for dW) and do one multiply-add per element read. A loop that
   only reads and adds the same rows in the same order (no multiplies, no stores but one
   row-sized accumulator) gives the fastest such a kernel could be; the real kernel
   (`sparse_backward`) is timed beside it.
3. Memory bandwidth: reading arrays of 1, 4, 16 and 64 MB once (NumPy's sum), GB/s. Wide
   layers' weight and gradient rows come from wherever this puts them.
4. Top-k floor: a row of 500 needs at least one vectorised pass (|a| as keys, the largest)
   and one compaction pass that writes out the surviving column numbers; those two passes
   alone are timed against `topk_rows`.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nnmnist  # noqa: E402,F401  (its thread-runtime defaults, before NumPy loads)

import numba  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

from nnmnist import kernels as K  # noqa: E402
from nnmnist.kernels.sparse import _by_neuron  # noqa: E402


@numba.njit(cache=True, error_model="numpy")
def gather_read(src, groups_ptr, groups, acc):
    # For each group (an example's chosen neurons, or a neuron's examples), add the listed
    # rows of src into acc: the same rows, in the same order and eight at a time, as the
    # sparse products read them, with adds in place of their fused multiply-adds.
    n = src.shape[1]
    for gi in range(groups_ptr.shape[0] - 1):
        p = groups_ptr[gi]
        end = groups_ptr[gi + 1]
        while p + 8 <= end:
            r0, r1, r2, r3 = src[groups[p]], src[groups[p + 1]], src[groups[p + 2]], src[groups[p + 3]]
            r4, r5, r6, r7 = src[groups[p + 4]], src[groups[p + 5]], src[groups[p + 6]], src[groups[p + 7]]
            for i in range(n):
                acc[i] += ((r0[i] + r1[i]) + (r2[i] + r3[i])) + ((r4[i] + r5[i]) + (r6[i] + r7[i]))
            p += 8
        for q in range(p, end):
            r = src[groups[q]]
            for i in range(n):
                acc[i] += r[i]


@numba.njit(cache=True, error_model="numpy")
def two_passes(bits, floor, cols):
    # the least an exact top-k of one row must do here: keys and the largest, then compaction
    rows, n = bits.shape
    total = 0
    for r in range(rows):
        top = np.uint32(0)
        for j in range(n):
            top = max(top, bits[r, j] & np.uint32(0x7FFFFFFF))
        c = 0
        for j in range(n):
            cols[c] = j
            c += (bits[r, j] & np.uint32(0x7FFFFFFF)) >= floor
        total += c + top
    return total


def median_time(fn, rounds, inner=1):
    fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        out.append((time.perf_counter() - t0) / inner)
    return statistics.median(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    K.set_num_threads(1)
    K.warmup()
    blas = [(i.get("architecture"), i["num_threads"]) for i in threadpool_info()
            if i["user_api"] == "blas"]
    print(f"one thread; BLAS kernels (threadpoolctl) {blas}; medians of {args.rounds}")
    rng = np.random.default_rng(0)
    R = args.rounds

    print("\n1. BLAS GEMM (float32), GMAC/s")
    for m, k, n, what in ((100, 500, 784, "dx of 784->500 (dy @ W)"),
                          (500, 100, 784, "dW of 784->500 (dy.T @ x)"),
                          (100, 2000, 2000, "dx of 2000->2000"),
                          (2000, 100, 2000, "dW of 2000->2000"),
                          (1024, 1024, 1024, "square 1024")):
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        t = median_time(lambda: a @ b, R, 5)
        print(f"  {what}: {m}x{k} @ {k}x{n}: {t * 1e6:.0f} us, {m * k * n / t / 1e9:.1f} GMAC/s")

    print("\n2. per-example products against reading the same rows (B=100), GMAC/s")
    for n_in, n_out, k, need_dx in ((784, 500, 80, False), (500, 500, 80, True),
                                    (784, 2000, 20, False), (2000, 2000, 20, True)):
        B = 100
        x = np.maximum(rng.standard_normal((B, n_in)), 0).astype(np.float32)
        W = rng.standard_normal((n_out, n_in)).astype(np.float32)
        dy = rng.standard_normal((B, n_out)).astype(np.float32)
        idx = K.topk_rows(dy, k)
        dW = np.zeros((n_out, n_in), np.float32)
        ptr = np.empty(n_out + 1, np.int32)
        rows = np.empty(B * k, np.int32)
        _by_neuron(idx, ptr, rows)
        by_example = np.arange(0, B * k + 1, k, dtype=np.int32)
        acc = np.zeros(n_in, np.float32)
        ws = K.BackwardWorkspace(B, k, n_out)
        macs = B * k * n_in * (2 if need_dx else 1)

        def bound():
            gather_read(x, ptr, rows, acc)                       # dW: x rows per neuron
            if need_dx:
                gather_read(W, by_example, idx.ravel(), acc)     # dx: W rows per example

        def real():
            K.sparse_backward(x, W, dy, idx, dW=dW, need_dx=need_dx, workspace=ws)
        tb = median_time(bound, R, 3)
        tr = median_time(real, R, 3)
        print(f"  {n_in}->{n_out} k={k} {'dx+dW' if need_dx else 'dW'}: read-only bound "
              f"{tb * 1e6:.0f} us ({macs / tb / 1e9:.1f} GMAC/s), sparse_backward "
              f"{tr * 1e6:.0f} us ({macs / tr / 1e9:.1f} GMAC/s), {tr / tb:.2f}x the bound")

    print("\n3. reading an array once, GB/s")
    for mb in (1, 4, 16, 64):
        a = rng.standard_normal(mb * (1 << 18)).astype(np.float32)
        t = median_time(lambda: a.sum(), R, 3)
        print(f"  {mb} MB: {a.nbytes / t / 1e9:.1f} GB/s")

    print("\n4. top-k of rows of 500 (B=100, ReLU-like rows), us a row")
    a = rng.standard_normal((100, 500)).astype(np.float32)
    a[rng.random((100, 500)) < 0.5] = 0
    cols = np.empty(500, np.int32)
    floor = np.uint32(np.float32(0.8).view(np.uint32))
    t2 = median_time(lambda: two_passes(a.view(np.uint32), floor, cols), R, 5)
    print(f"  two passes (keys and largest; compaction): {t2 * 1e6 / 100:.2f}")
    for k in (20, 80):
        out = np.empty((100, k), np.int32)
        t = median_time(lambda: K.topk_rows(a, k, out=out), R, 5)
        print(f"  topk_rows k={k}: {t * 1e6 / 100:.2f}")


if __name__ == "__main__":
    main()
