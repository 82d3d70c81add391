"""The hot kernels without argument checks, for a caller that guarantees what the checked
wrappers would enforce: float32 C-contiguous arrays of matching shapes, int32 indices in range,
writeable outputs. `NumbaCompute` is that caller; at minibatch 10 the checks cost more than
the kernels. Everything else should use the checked functions of `nnmnist.kernels`."""
import numpy as np

from . import sparse, topk
from .fused import layer_backward_raw as layer_backward  # noqa: F401
from .fused import unified_backward_raw as unified_backward  # noqa: F401
from ._jit import num_threads


def topk_rows(a, k):
    rows, n = a.shape
    out = np.empty((rows, k), np.int32)
    if rows:
        topk._topk_rows.pick(topk.TOPK_WORK * rows * n)(a.view(np.uint32), k, min(rows, 4 * num_threads()), out)
    return out


def sparse_backward(x, W, dy, idx, dW, need_dx, workspace):
    rows, k = idx.shape
    work = rows * k * W.shape[1]
    dx = None
    if need_dx:
        dx = np.empty((rows, W.shape[1]), np.float32)
        sparse._sparse_dx.pick(work)(W, dy, idx, dx)
    sparse._by_neuron(idx, workspace.ptr, workspace.rows)
    sparse._sparse_dw.pick(work)(x, dy, workspace.ptr, workspace.rows, dW)
    return dx
