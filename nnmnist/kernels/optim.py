"""What the optimizer rules' Numba loops share.

Each rule's loops live in its own module (`nnmnist.optim.adam`, ...), beside its NumPy and CUDA
bodies: one pass over w, g and the state, g zeroed after. Every constant and scalar is float32
and the operations are in the order of the rule's NumPy float32 body, e.g.
    v = 0.999 * v + 0.001 * g * g   # ((0.999*v) + ((0.001*g)*g))
so the result matches it to float32 rounding. Checked, named entry points to the loops are in
`nnmnist.optim.checked`; `NumbaCompute` calls the loops directly.
"""
import numpy as np

from ._jit import kernel

F0 = np.float32(0.0)


@kernel
def clip_elem(g, clip):
    """g clipped to [-clip, clip] when clip > 0; clip <= 0 means no clipping."""
    if clip > F0:
        if g > clip:
            return clip
        if g < -clip:
            return -clip
    return g
