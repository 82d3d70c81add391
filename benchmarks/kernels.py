"""The kernels one by one: against NumPy, against a git revision, against the machine.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/kernels.py MODE [options]

Modes (`python benchmarks/kernels.py MODE --help` for each one's options):

- each: every kernel against its NumPy equivalent, with its serial and parallel compilations
  (median microseconds a call; every call gets other inputs from a pool, since repeating one
  input lets the branch predictor learn it and flatters selection).
- ab: this checkout's `nnmnist/kernels` against the same package at a git revision, both
  imported into one process and timed on the same inputs, alternating by rounds; base / new
  above 1 means the new kernels are faster.
- bounds: what this machine allows: BLAS GEMM rate on the backward's shapes, the per-example
  products against a loop that only reads the same rows, read bandwidth, the top-k floor, and
  the fixed costs of one minibatch-10 step (an empty compiled call, one BLAS call of that
  size, one pass over the rows a step touches).
- dispatch: where meProp's products should run as BLAS on the sparsified gradient (the
  crossover of `nnmnist.kernels.fused.DENSE_FROM`).
- denormal: what float32 denormals in Adam's moments cost one update step.

A kernel comparison needs its contenders in one process, on the same inputs in the same
caches: each mode runs in this script's own fresh process, the contenders alternating by
rounds, and quotes medians. One thread unless the mode's --threads says otherwise.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

sys.path.insert(0, str(harness.REPO))
import nnmnist  # noqa: E402,F401  (its thread-runtime defaults, before NumPy loads)

import importlib  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from nnmnist import kernels as K  # noqa: E402
from nnmnist.kernels import (BackwardWorkspace, forced_mode, fused, layer_backward,  # noqa: E402
                             rows_touched, set_num_threads, sparse_backward, topk_rows, warmup)
from nnmnist.kernels.sparse import _by_neuron  # noqa: E402
from nnmnist.optim.checked import adam_update, adam_update_rows  # noqa: E402

REPO = harness.REPO


def print_header(lines):
    print("\n".join(harness.header(" ".join(["python", *sys.argv]),
                                   [f"- {harness.load_average()}", *lines])) + "\n")


# == each ==
EACH_POOL = 16  # distinct inputs cycled through


def median_us(fn, repeats):
    """Median microseconds of fn(i), i = 0, 1, ... (fn picks input i % EACH_POOL)."""
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
        for _ in range(EACH_POOL):
            a = rng.standard_normal((B, n)).astype(np.float32)
            a[rng.random((B, n)) < 0.5] = 0.0  # ReLU-like zeros
            pool.append(a)
        for k in (10, 20, 40, 80, 160):
            out = np.empty((B, k), np.int32)
            t = modes(lambda i: topk_rows(pool[i % EACH_POOL], k, out=out), repeats)
            part = median_us(lambda i: np.sort(np.argpartition(
                -np.abs(pool[i % EACH_POOL]), k - 1, axis=1)[:, :k], axis=1), repeats)
            ref = median_us(lambda i: np.sort(np.argsort(
                -np.abs(pool[i % EACH_POOL]), axis=1, kind="stable")[:, :k], axis=1), repeats)
            print(f"  B={B:3d} n={n} k={k:3d}: {fmt(t)}  argpartition={part:8.1f}"
                  f"  argsort={ref:8.1f}")


def bench_backward(rng, repeats):
    print("sparse_backward (us, dx and dW) vs dense equivalent "
          "(scatter dy, dys @ W, dW += dys.T @ x)")
    n_out = 500
    for B, n_in in ((100, 784), (100, 500), (10, 784), (10, 500)):
        xs = [rng.random((B, n_in)).astype(np.float32) for _ in range(EACH_POOL)]
        dys = [rng.standard_normal((B, n_out)).astype(np.float32) for _ in range(EACH_POOL)]
        W = rng.standard_normal((n_out, n_in)).astype(np.float32)
        dW = np.zeros((n_out, n_in), np.float32)
        dx = np.empty((B, n_in), np.float32)
        ws = BackwardWorkspace(B, 160, n_out)

        def full(i):
            np.matmul(dys[i % EACH_POOL], W, out=dx)
            dW.__iadd__(dys[i % EACH_POOL].T @ xs[i % EACH_POOL])

        t_full = median_us(full, repeats)
        for k in (20, 80, 160):
            idxs = [topk_rows(dy, k) for dy in dys]

            def dense(i):
                dy, idx = dys[i % EACH_POOL], idxs[i % EACH_POOL]
                kept = np.zeros_like(dy)
                np.put_along_axis(kept, idx, np.take_along_axis(dy, idx, axis=1), axis=1)
                np.matmul(kept, W, out=dx)
                dW.__iadd__(kept.T @ xs[i % EACH_POOL])

            t = modes(lambda i: sparse_backward(xs[i % EACH_POOL], W, dys[i % EACH_POOL], idxs[i % EACH_POOL],
                                                dx=dx, dW=dW, workspace=ws), repeats)
            t_dense = median_us(dense, repeats)
            print(f"  B={B:3d} in={n_in} out={n_out} k={k:3d}: {fmt(t)}  dense={t_dense:8.1f}"
                  f"  (plain full backward {t_full:8.1f})")


def bench_layer(rng, repeats):
    print("layer_backward (us): a hidden unit's whole meProp backward in one call vs the same "
          "steps as separate calls (ReLU mask and bias sum in NumPy, topk_rows, sparse_backward)")
    n_out = 500
    for B, n_in, need_dx in ((100, 784, False), (100, 500, True), (10, 784, False), (10, 500, True)):
        xs = [rng.random((B, n_in)).astype(np.float32) for _ in range(EACH_POOL)]
        gs = [rng.standard_normal((B, n_out)).astype(np.float32) for _ in range(EACH_POOL)]
        outs = [np.maximum(rng.standard_normal((B, n_out)), 0).astype(np.float32)
                for _ in range(EACH_POOL)]
        W = rng.standard_normal((n_out, n_in)).astype(np.float32)
        db, dW = np.zeros(n_out, np.float32), np.zeros((n_out, n_in), np.float32)
        g = np.empty((B, n_out), np.float32)
        for k in (20, 80):
            ws = BackwardWorkspace(B, k, n_out)

            def fused_call(i):
                np.copyto(g, gs[i % EACH_POOL])  # the call overwrites g (also copied in `separate`)
                layer_backward(g, outs[i % EACH_POOL], xs[i % EACH_POOL], W, k, db, dW, need_dx=need_dx,
                               workspace=ws)

            def separate(i):
                np.copyto(g, gs[i % EACH_POOL])
                dy = g * (outs[i % EACH_POOL] > 0)
                db.__iadd__(dy.sum(axis=0))
                sparse_backward(xs[i % EACH_POOL], W, dy, topk_rows(dy, k), dW=dW, need_dx=need_dx,
                                workspace=ws)

            t = modes(fused_call, repeats)
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


def mode_each(args):
    """Every kernel against its NumPy equivalent, serial and parallel compilations."""
    numba_threads = set_num_threads(args.threads, blas=args.blas)
    warmup()  # also starts the threading layer
    print_header([f"- threads: numba={numba_threads}, layer {numba.threading_layer()}"])
    rng = np.random.default_rng(0)
    bench_topk(rng, args.repeats)
    bench_backward(rng, args.repeats)
    bench_layer(rng, args.repeats)
    bench_adam(rng, args.repeats)


# == ab ==
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


def mode_ab(args):
    """This checkout's kernels against a git revision's, on the same inputs, alternating."""
    from nnmnist import kernels as new
    with tempfile.TemporaryDirectory() as tmp:
        base = load_base(args.base, tmp)
        for K in (new, base):  # each case's first, untimed call compiles what it times
            K.set_num_threads(args.threads)
        print_header([f"- base {args.base} against the working tree; threads {args.threads}; "
                      f"medians of {args.rounds} rounds"])
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


# == bounds ==
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


CLOCK = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = CLOCK["wall"]


def median_time(fn, rounds, inner=1):
    fn()
    out = []
    for _ in range(rounds):
        t0 = clock()
        for _ in range(inner):
            fn()
        out.append((clock() - t0) / inner)
    return statistics.median(out)


def mode_bounds(args):
    """What this machine allows: GEMM rate, row-read bound, bandwidth, top-k floor, step floors."""
    global clock
    clock = CLOCK[args.clock]
    K.set_num_threads(1)
    K.warmup()
    print_header([f"- one thread; medians of {args.rounds}; {args.clock} clock"])
    rng = np.random.default_rng(0)
    R = args.rounds
    if args.only == "step":
        return step_floors(rng, R)

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
    step_floors(rng, R)


@numba.njit(cache=True)
def _empty(*args):
    return 0


def step_floors(rng, R):
    """The fixed costs of one minibatch-10 step of the default 784-500-500-10 network, each
    timed alone: what no arrangement of the step's Python can go below."""
    print("\n5. floors of one minibatch-10 step (784-500-500-10), us")
    x = rng.random((10, 784)).astype(np.float32)
    W1 = rng.standard_normal((500, 784)).astype(np.float32)
    W2 = rng.standard_normal((500, 500)).astype(np.float32)
    W3 = rng.standard_normal((10, 500)).astype(np.float32)
    h = rng.random((10, 500)).astype(np.float32)
    dy = rng.standard_normal((10, 500)).astype(np.float32)
    dW1 = np.zeros_like(W1)
    arrays = (x, W1, W2, W3, h, dy, dW1, x, W1, W2, W3, h, dy, dW1, x)
    _empty()
    _empty(*arrays)
    print(f"  an empty compiled call: no arguments {median_time(_empty, R, 200) * 1e6:.2f}, "
          f"15 array arguments {median_time(lambda: _empty(*arrays), R, 200) * 1e6:.2f}")
    print(f"  an empty NumPy call (np.add of two 10x500): "
          f"{median_time(lambda: np.add(h, dy, out=h), R, 200) * 1e6:.2f}")
    fwd = [median_time(lambda W=W, a=a: W @ a.T, R, 20) for W, a in ((W1, x), (W2, h), (W3, h))]
    print(f"  forward products (W @ x.T): 784->500 {fwd[0] * 1e6:.0f}, 500->500 "
          f"{fwd[1] * 1e6:.0f}, 500->10 {fwd[2] * 1e6:.0f}; all three {sum(fwd) * 1e6:.0f}")
    bwd = [median_time(lambda: dy @ W2, R, 20), median_time(lambda: dy.T @ h, R, 20),
           median_time(lambda: np.matmul(dy.T, x, out=dW1), R, 20)]
    print(f"  dense backward products: dx 500->500 {bwd[0] * 1e6:.0f}, dW 500->500 "
          f"{bwd[1] * 1e6:.0f}, dW 784->500 into its buffer {bwd[2] * 1e6:.0f}")
    n = 648010
    w, g, m, v = (rng.standard_normal(n).astype(np.float32) * 1e-3 for _ in range(4))
    v = np.abs(v)
    t_adam = median_time(lambda: adam_update(w, g, m, v, 1e-3, 0.0, 5.0), R, 5)
    big = [np.empty(n, np.float32) for _ in range(4)]
    t_copy = median_time(lambda: [np.copyto(b, a) for a, b in zip((w, g, m, v), big)], R, 5)
    nbytes = 8 * 4 * n
    print(f"  Adam's exact update over {n:,} parameters (4 arrays read and written): "
          f"{t_adam * 1e6:.0f} ({nbytes / t_adam / 1e9:.1f} GB/s); copying the same 4 arrays "
          f"{t_copy * 1e6:.0f} ({nbytes / t_copy / 1e9:.1f} GB/s)")
    W1, G1, M1, V1 = (a[:500 * 784].reshape(500, 784) for a in (w, g, m, v))
    rows = np.sort(rng.choice(500, 180, replace=False)).astype(np.int32)
    t_rows = median_time(lambda: adam_update_rows(W1, G1, M1, V1, rows, 1e-3, 0.0, 5.0), R, 5)
    print(f"  Adam on 180 rows of 784 (the rows one step of k=20 touches in the first layer): "
          f"{t_rows * 1e6:.0f}")
    ws = BackwardWorkspace(10, 20, 500)
    g10 = np.empty((10, 500), np.float32)
    db = np.zeros(500, np.float32)
    dW2 = np.zeros_like(W2)
    for n_in, xx, WW, dW, dx in ((784, x, W1, dW1, False), (500, h, W2, dW2, True)):
        def unit():
            np.copyto(g10, dy)
            K.layer_backward(g10, h, xx, WW, 20, db, dW, need_dx=dx, workspace=ws)
        print(f"  a meProp unit's backward, k=20, {n_in}->500, dx={dx}: "
              f"{median_time(unit, R, 20) * 1e6:.0f} with its rows in cache")


# == dispatch ==
def mode_dispatch(args):
    """Sparse kernels against BLAS on the sparsified gradient: the dispatch crossover."""
    K.set_num_threads(args.threads)
    K.warmup()
    print_header([f"- threads {args.threads}; minibatch "
          f"{args.minibatch}; medians of {args.rounds}; current DENSE_FROM = {fused.DENSE_FROM}, "
          f"DENSE_FROM_WIDE_DX = {fused.DENSE_FROM_WIDE_DX}"])
    print("| n_in -> n_out | dx | k | k / n_out | sparse us | dense us | sparse / dense |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    B = args.minibatch
    saved = fused.DENSE_FROM, fused.DENSE_FROM_WIDE_DX
    try:
        for n_out in [int(w) for w in args.widths.split(",")]:
            for n_in, need_dx in ((784, False), (n_out, True)):
                x, W, gs, outs, db, dW, g = unit_inputs(rng, B, n_in, n_out)
                for share in (0.04, 0.08, 0.16, 0.24, 0.32, 0.5):
                    k = max(1, int(share * n_out))
                    ws = K.BackwardWorkspace(B, k, n_out)

                    def run(dense_from):
                        fused.DENSE_FROM = fused.DENSE_FROM_WIDE_DX = dense_from
                        t0 = time.perf_counter()
                        for i in range(POOL):
                            np.copyto(g, gs[i])
                            K.layer_backward(g, outs[i], x, W, k, db, dW, need_dx=need_dx,
                                             workspace=ws)
                        return (time.perf_counter() - t0) / POOL
                    run(2.0), run(0.0)  # warm both ways
                    t = {"sparse": [], "dense": []}
                    for r in range(args.rounds):
                        for side in (("sparse", "dense") if r % 2 == 0 else ("dense", "sparse")):
                            t[side].append(run(2.0 if side == "sparse" else 0.0))
                    s, d = (1e6 * statistics.median(t[side]) for side in ("sparse", "dense"))
                    print(f"| {n_in} -> {n_out} | {'yes' if need_dx else 'no'} | {k} | "
                          f"{k / n_out:.2f} | {s:.0f} | {d:.0f} | {s / d:.2f} |", flush=True)
    finally:
        fused.DENSE_FROM, fused.DENSE_FROM_WIDE_DX = saved


# == denormal ==
N = 648010  # 784-500-500-10


def step_us(fill, rounds, rng, v_fill=1e-6):
    """Median microseconds of one fused Adam step with every m entry set to `fill` and every
    v entry to `v_fill` before each step."""
    w = rng.standard_normal(N).astype(np.float32)
    m = np.empty(N, np.float32)
    v = np.empty(N, np.float32)
    g = np.zeros(N, np.float32)
    times = []
    for _ in range(rounds):
        m.fill(fill)
        v.fill(v_fill)
        t0 = time.perf_counter()
        adam_update(w, g, m, v, 1e-3, 0.0, 5.0)
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def mode_denormal(args):
    """One Adam step with ordinary, tiny and denormal moments."""
    print_header([f"- one thread; medians of {args.rounds}"])
    rng = np.random.default_rng(0)
    step_us(1e-3, 3, rng)  # compile
    print("| m | us per Adam step | / ordinary |")
    print("|---|---|---|")
    base = None
    for fill in (1e-3, 1e-30, 1e-36, 1e-39):
        t = step_us(fill, args.rounds, rng)
        base = base or t
        print(f"| {fill:g} | {t:.0f} | {t / base:.1f}x |", flush=True)
    # The second moment, m = 0 (as for rows long without gradient): an ordinary v; a denormal
    # one, on which the code before v's limit stepped every time; 0, what it stores now.
    print()
    print("| v (m = 0) | us per Adam step | / ordinary |")
    print("|---|---|---|")
    base = None
    for v_fill in (1e-6, 1e-40, 0.0):
        t = step_us(0.0, args.rounds, rng, v_fill)
        base = base or t
        print(f"| {v_fill:g} | {t:.0f} | {t / base:.1f}x |", flush=True)


MODES = {"each": mode_each, "ab": mode_ab, "bounds": mode_bounds, "dispatch": mode_dispatch,
         "denormal": mode_denormal}


def add_arguments(mode, p):
    if mode == "each":
        p.add_argument("--repeats", type=int, default=50)
        p.add_argument("--threads", type=int, default=1, help="kernel threads (0: every core)")
        p.add_argument("--blas", type=int, default=None, help="BLAS threads (default: --threads)")
    elif mode == "ab":
        p.add_argument("--base", default="HEAD", help="git revision of the A side")
        p.add_argument("--only", default="topk,sparse,layer,unified")
        p.add_argument("--rounds", type=int, default=15)
        p.add_argument("--calls", type=int, default=2 * POOL, help="calls timed per round")
        p.add_argument("--threads", type=int, default=1)
    elif mode == "bounds":
        p.add_argument("--rounds", type=int, default=9)
        p.add_argument("--only", choices=("all", "step"), default="all",
                       help="step: only the floors of one minibatch-10 step")
        p.add_argument("--clock", choices=tuple(CLOCK), default="wall",
                       help="cpu: this thread's CPU time (less inflated by other jobs)")
    elif mode == "dispatch":
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--widths", default="500,1000,2000")
        p.add_argument("--minibatch", type=int, default=100)
        p.add_argument("--rounds", type=int, default=11)
    elif mode == "denormal":
        p.add_argument("--rounds", type=int, default=30)


if __name__ == "__main__":
    sys.exit(harness.main_of(__doc__, MODES, add_arguments))
