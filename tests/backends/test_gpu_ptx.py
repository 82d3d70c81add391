"""Every kernel of the GPU backend compiles to PTX for compute capabilities 8.0 and 9.0 with the
real compiler (libNVVM), no device needed; the optimizer kernels contain no fused multiply-add.

The compiling runs in a process of its own (tests/backends/ptx_compile.py): this process runs
numba.cuda as the simulator (tests/conftest.py), which cannot compile.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nnmnist.backends.device import numba_cuda_error
from nnmnist.optim import RULES

SCRIPT = Path(__file__).with_name("ptx_compile.py")
CCS = ("80", "90")


@pytest.fixture(scope="module")
def compiled():
    if numba_cuda_error() is not None:
        pytest.skip(f"numba.cuda is missing ({numba_cuda_error()}): pip install .[gpu-sim]")
    # one process per architecture, side by side
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), cc], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for cc in CCS]
    records = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        records += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if records and "unavailable" in records[0]:
        pytest.skip(f"libNVVM is not installed ({records[0]['unavailable']}): pip install .[gpu-sim]")
    return {(r["kernel"], "".join(map(str, r["cc"]))): r for r in records}


def expected_kernels():
    names = ["record_hits"]
    for f in ("float32", "float64"):
        names += [f"topk_rows[{f}]", f"keep_chosen[{f}]"]
        names += [f"{rule}.{form}[{f}]" for rule in RULES for form in ("dense", "masked", "listed")]
    return names


def test_every_kernel_compiles_for_both_architectures(compiled):
    for cc in CCS:
        for name in expected_kernels():
            record = compiled.get((name, cc))
            assert record is not None, f"{name} was not compiled for sm_{cc}"
            assert record["target"] == f"sm_{cc}" and record["entries"] == 1, record
    assert len(compiled) == len(CCS) * (len(expected_kernels()) + 1)  # + the control


def test_the_kernels_use_block_barriers_and_atomics_where_expected(compiled):
    for cc in CCS:
        for f in ("float32", "float64"):
            topk = compiled[(f"topk_rows[{f}]", cc)]
            assert topk["bar_sync"] > 0 and topk["atom"] > 0, topk  # histogram, scan
        assert compiled[("record_hits", cc)]["atom"] > 0


def test_optimizer_kernels_have_no_fused_multiply_add(compiled):
    """NumPy rounds every product before adding; a fused multiply-add would not. The control
    (x * y + z written plainly) shows the compiler does fuse when nothing stops it."""
    for cc in CCS:
        assert compiled[("control.contracted", cc)]["fma"] > 0
        for (name, c), record in compiled.items():
            if c == cc and name.split(".")[0] in RULES:
                assert record["fma"] == 0, f"{name} for sm_{cc} fuses a multiply-add"
