"""CPU hot loops (Numba): meProp top-k, sparse backward, meSimp records, fused optimizers.

Each public function validates its arguments and allocates outputs, then calls a private
compiled kernel. JIT flags and the serial/parallel choice live in `_jit`.
"""
import numpy as np

from ._jit import forced_mode, get_mode, set_mode
from .fused import layer_backward, unified_backward
from .sparse import BackwardWorkspace, record_hits, rows_touched, sparse_backward
from .threads import set_num_threads
from .topk import topk_cols_unified, topk_rows

__all__ = [
    "topk_rows", "topk_cols_unified", "sparse_backward", "layer_backward", "unified_backward",
    "BackwardWorkspace",
    "rows_touched", "record_hits", "set_num_threads",
    "warmup", "get_mode", "set_mode", "forced_mode",
]


def warmup():
    """Compile (or load from cache) every kernel here, serial and parallel, on tiny inputs (the
    optimizer rules' loops: `nnmnist.optim.checked.warmup`)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5)).astype(np.float32)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    W = rng.standard_normal((5, 4)).astype(np.float32)
    for mode in ("serial", "parallel"):
        with forced_mode(mode):
            idx = topk_rows(a, 2)
            topk_cols_unified(a, 2)
            sparse_backward(x, W, a, idx, dW=np.zeros_like(W))
            layer_backward(a.copy(), a, x, W, 2, np.zeros(5, np.float32), np.zeros_like(W),
                           hits=np.zeros(5, np.int64))
            layer_backward(a.copy(), a, x, W, 2, np.zeros(5, np.float32), np.zeros_like(W),
                           need_dx=False, idx=idx)
            unified_backward(a.copy(), a, x, W, 2, np.zeros(5, np.float32), np.zeros_like(W),
                             hits=np.zeros(5, np.int64))
            unified_backward(a.copy(), a, x, W, 2, np.zeros(5, np.float32), np.zeros_like(W),
                             need_dx=False, cols=idx[0])
            rows_touched(idx, 5)
            record_hits(idx, np.zeros(5, np.int64))
