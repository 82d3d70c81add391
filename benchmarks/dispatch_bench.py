"""Where meProp's per-example products should run as BLAS on the sparsified gradient.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/dispatch_bench.py \
        [--threads 1] [--widths 500,1000,2000] [--rounds 11]

For a hidden unit's whole meProp backward (`kernels.layer_backward`, minibatch 100) it times
the two ways of running the products on the same inputs, alternating, medians over rounds:
the per-example sparse kernels, and BLAS on dy with the unkept entries zeroed. The ratio
sparse / dense above 1 means BLAS is faster; `nnmnist.kernels.fused.DENSE_FROM` and
`DENSE_FROM_WIDE_DX` (the shares k / n_out from which the dense way is taken) should sit
where the ratio crosses 1.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nnmnist  # noqa: E402,F401  (its thread-runtime defaults, before NumPy loads)

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

from nnmnist import kernels as K  # noqa: E402
from nnmnist.kernels import fused  # noqa: E402
from kernel_ab import POOL, unit_inputs  # noqa: E402  (benchmarks/ is on sys.path)



def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--widths", default="500,1000,2000")
    ap.add_argument("--minibatch", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=11)
    args = ap.parse_args(argv)
    K.set_num_threads(args.threads)
    K.warmup()
    blas = [(i.get("architecture"), i["num_threads"]) for i in threadpool_info()
            if i["user_api"] == "blas"]
    print(f"threads {args.threads}; BLAS kernels (threadpoolctl) {blas}; minibatch "
          f"{args.minibatch}; medians of {args.rounds}; current DENSE_FROM = {fused.DENSE_FROM}, "
          f"DENSE_FROM_WIDE_DX = {fused.DENSE_FROM_WIDE_DX}")
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


if __name__ == "__main__":
    main()
