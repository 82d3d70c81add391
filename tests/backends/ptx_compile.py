"""Compile every kernel of the GPU backend to PTX with libNVVM, for the compute capabilities
given on the command line (e.g. `80 90`), and print one JSON line per kernel.

Run by tests/backends/test_gpu_ptx.py in a process of its own: the tests' own process runs
numba.cuda as the simulator, which cannot compile. No device or driver is needed.
"""
import json
import os
import re
import sys
from pathlib import Path

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's nnmnist


def contracted(x, y, z, out):
    """A control: x * y + z written plainly, which the compiler fuses into one fma."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = x[i] * y[i] + z[i]


def calls_inlined(x, out):
    """A probe: a kernel calling an inlined device function, as the backend's kernels do (this
    compiles without a driver with numba-cuda; Numba's own older numba.cuda asks for one)."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = _twice(x[i])


def main(ccs):
    global cuda, _twice
    from numba import cuda, types
    control = ("control.contracted", contracted, (types.float32[::1],) * 4)
    try:  # the compiler works here: numba-cuda and libNVVM (from the CUDA compiler wheels)
        _twice = cuda.jit(device=True, inline="always")(lambda v: v + v)
        cuda.compile_ptx(calls_inlined, (types.float32[::1],) * 2, cc=ccs[0])
    except Exception as exc:
        print(json.dumps({"unavailable": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}))
        return
    from nnmnist.backends import cuda_kernels
    from nnmnist.optim import RULES, optimizer_class
    rules = [optimizer_class(name).rule for name in RULES]
    for cc in ccs:
        for name, fn, signature in [control, *cuda_kernels.ptx_targets(rules)]:
            ptx, _ = cuda.compile_ptx(fn, signature, cc=cc)
            print(json.dumps({
                "kernel": name, "cc": list(cc), "bytes": len(ptx),
                "target": re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1),
                "entries": len(re.findall(r"^\.(?:visible\s+)?\.entry\s", ptx, re.M)),
                "fma": len(re.findall(r"\bfma\.", ptx)),
                "bar_sync": len(re.findall(r"\bbar\.sync\b|\bbarrier\.sync\b", ptx)),
                "atom": len(re.findall(r"\batom\.", ptx)),
            }), flush=True)


if __name__ == "__main__":
    main([(int(c[:-1]), int(c[-1])) for c in sys.argv[1:]])
