"""The LSTM tagger's element-wise loops: one pass over a time step's cell, forward and
backward, and the scatter-add of an embedding table's gradient.

Each kernel is the loop form of the NumPy reference in `nnmnist.nn.lstm` (cell_forward,
cell_backward) and `NumpyCompute.add_rows`, on float32 C-contiguous arrays. A step of the
reference makes about twenty passes over (B, H) arrays; these make one.
"""
import numpy as np

from ._jit import kernel


@kernel
def cell_forward(z, c_prev, c_out, tc_out, h_out):
    B, H = c_out.shape
    one = np.float32(1)
    for b in range(B):
        for j in range(H):
            i = one / (one + np.exp(-z[b, j]))
            f = one / (one + np.exp(-z[b, H + j]))
            g = np.tanh(z[b, 2 * H + j])
            o = one / (one + np.exp(-z[b, 3 * H + j]))
            z[b, j] = i
            z[b, H + j] = f
            z[b, 2 * H + j] = g
            z[b, 3 * H + j] = o
            c = f * c_prev[b, j] + i * g
            tc = np.tanh(c)
            c_out[b, j] = c
            tc_out[b, j] = tc
            h_out[b, j] = o * tc


@kernel
def cell_backward(dh, dc, acts, c_prev, tc, dz_out, dc_prev):
    B, H = tc.shape
    one = np.float32(1)
    for b in range(B):
        for j in range(H):
            i = acts[b, j]
            f = acts[b, H + j]
            g = acts[b, 2 * H + j]
            o = acts[b, 3 * H + j]
            t = tc[b, j]
            d = dh[b, j]
            dct = dc[b, j] + d * o * (one - t * t)
            dz_out[b, j] = dct * g * i * (one - i)
            dz_out[b, H + j] = dct * c_prev[b, j] * f * (one - f)
            dz_out[b, 2 * H + j] = dct * i * (one - g * g)
            dz_out[b, 3 * H + j] = d * t * o * (one - o)
            dc_prev[b, j] = dct * f


@kernel
def add_rows(G, ids, d):
    n, E = d.shape
    for r in range(n):
        row = ids[r]
        for e in range(E):
            G[row, e] += d[r, e]

