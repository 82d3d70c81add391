"""What float32 denormals cost Adam's update: one step over the default MLP's 648,010
parameters, with the first moment m at ordinary and at tiny values.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/denormal_bench.py [--rounds 30]

Under meProp most weight rows get no gradient in a step, and Adam then shrinks their m by 0.9
a step: after a few hundred such steps m is near or below float32's smallest normal number
(1.2e-38), and lr_t * m is a denormal even earlier. The CPU computes with denormals far more
slowly. The gradient is zero here, as it is for those rows; v is an ordinary 1e-6. A second
table does the same for v (decaying by 0.999 a step, it gets there after some 60,000 steps).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nnmnist  # noqa: E402,F401  (its thread-runtime defaults, before NumPy loads)

import numpy as np  # noqa: E402

from nnmnist.optim.checked import adam_update  # noqa: E402

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
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


if __name__ == "__main__":
    main()
