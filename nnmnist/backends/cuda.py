"""The GPU backend: the hot operations of `nnmnist.backends.cpu` on an NVIDIA GPU, with CuPy
arrays, cuBLAS products and cuRAND draws, and the hand-written kernels of
`nnmnist.backends.cuda_kernels` (numba.cuda).

`nnmnist.backends.get_compute` is the only importer. Layers, ops and optimizers are the same
`xp.*` code for every backend; what differs is the methods below, each with the signature of
its `NumpyCompute` reference:

- per-row top-k: one block per row runs a radix select on the bit patterns of |dy|, then
  writes the chosen columns in column order (larger |dy| first, the lower column on ties, NaN
  last; int32, ascending in every row). No sort, and no width limit. Unified top-k ranks the
  column sums of |dy| (in float64, rounded once) with the same kernel.
- meProp backward: the kept entries are scattered into a zeroed dy, then cuBLAS (dW is
  accumulated by one GEMM with beta = 1, no temporary).
- optimizers: one kernel per rule and form (every element, masked rows, listed rows), from the
  rule's CUDA body, each operation rounded as NumPy rounds it (no fused multiply-add).
- meSimp hits and lazily updated rows: atomics and scatters, never a size that would have to
  be read back to the host, so nothing in a minibatch waits for the device except `sync`.

- the tagger's LSTM cell: one CuPy element-wise kernel per time step and direction, forward
  and backward (the NumPy reference makes about twenty passes over (B, H) arrays), and the
  embedding gradient by `cupyx.scatter_add`.

Kernel launches per minibatch of a 3-layer mlptop: 2 top-k, 2 sparse-dy scatters and one
optimizer update (the parameters are one flat buffer); mlpvar adds 2 hit counts, LazyUpdate
makes the update one launch per parameter.

With NUMBA_ENABLE_CUDASIM=1 the same code runs on the CPU: the kernels in Numba's simulator
(small grids, see `cuda_kernels`), NumPy for CuPy (`xp`), NumPy's matmul for cuBLAS and a NumPy
generator for cuRAND; the LSTM cell and the embedding gradient are then the NumPy reference's
(CuPy's element-wise kernels have no simulator). The tests run it so; "auto" never picks it.
"""
import contextlib
import functools
import sys

import numpy as np

from . import cuda_kernels as K
from .device import check_gpu_available, cublas, cupyx
from .device import cupy as cp  # None without CuPy: the constructor then raises the clear error
from .cpu import NumpyCompute
from ..optim import RULES, optimizer_class

SIMULATED = K.SIMULATED
# The simulator's block manager polls its threads at every barrier; with Python's default 5 ms
# switch interval a barrier costs about 10 ms, with this one well under 1 ms.
SIMULATOR_SWITCH_INTERVAL = 5e-5


class CupyCompute(NumpyCompute):
    """The hot operations on the GPU; arrays are CuPy arrays (NumPy arrays under the simulator),
    scalars stay Python numbers."""

    name = "cupy"
    simulated = SIMULATED

    def __init__(self):
        check_gpu_available()
        self.xp = np if SIMULATED else cp
        self.note = ("the GPU backend runs simulated (NUMBA_ENABLE_CUDASIM=1): its kernels in "
                     "Numba's CUDA simulator on the CPU, NumPy arrays for CuPy's, NumPy draws "
                     "for cuRAND's" if SIMULATED else None)
        self.gemm = cublas.gemm if cublas is not None and not SIMULATED else None
        self._generators = {}  # id(numpy rng) -> (that rng, its device generator)
        self._streams = {}     # CuPy stream pointer -> the same stream for numba.cuda

    # -- launching ---------------------------------------------------------------------------
    def _launch(self, kernel, config, *args):
        """kernel[blocks, threads](*args) on CuPy's current stream.

        numba.cuda takes CuPy arrays through __cuda_array_interface__; wrapping them with
        sync=False keeps it from waiting on their stream (the launch is on that stream anyway).
        """
        if SIMULATED:
            with _simulator_pace():
                kernel[config](*args)
            return
        from numba import cuda
        ptr = cp.cuda.get_current_stream().ptr
        stream = self._streams.get(ptr)
        if stream is None:
            stream = self._streams[ptr] = cuda.external_stream(ptr)
        args = [cuda.as_cuda_array(a, sync=False) if isinstance(a, cp.ndarray) else a
                for a in args]
        kernel[config[0], config[1], stream](*args)

    # -- forward -------------------------------------------------------------------------------
    def matmul_xwt(self, x, W):
        """x @ W.T: cuBLAS reads the transposed operand in place (no reordering copy, unlike
        the CPU path), and the product comes out C-contiguous."""
        return x @ W.T

    # -- randomness --------------------------------------------------------------------------
    def uniform(self, rng, shape, dtype=np.float32):
        """Uniform [0, 1) draws on the device, from a generator seeded once from `rng`.

        The first call with a NumPy generator draws one seed from it, so a seeded run is
        reproducible on the GPU; the numbers differ from the CPU's (another generator: cuRAND's
        on a device, a NumPy generator of that seed under the simulator).
        """
        entry = self._generators.get(id(rng))
        if entry is None or entry[0] is not rng:
            seed = int(rng.integers(0, 2 ** 63 - 1))
            draw = (np.random.default_rng(seed).random if SIMULATED
                    else cp.random.RandomState(seed).random_sample)
            entry = (rng, draw)
            self._generators[id(rng)] = entry
        if SIMULATED:
            return entry[1](tuple(shape), dtype=dtype)
        return entry[1](size=tuple(shape), dtype=dtype)

    # -- meProp selection -------------------------------------------------------------------
    def select_topk_rows(self, dy, k):
        return self._topk_rows(dy, k)

    def select_topk_unified(self, dy, k):
        """Column scores sum |dy| over the minibatch in float64, rounded once (as the Numba
        kernel does)."""
        xp = self.xp
        score = xp.abs(dy).sum(axis=0, dtype=np.float64).astype(dy.dtype)
        return self._topk_rows(score[None, :], k)[0]

    def _topk_rows(self, a, k):
        xp = self.xp
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float32)
        a = xp.ascontiguousarray(a)
        batch, n = a.shape
        k = max(0, min(int(k), n))  # as argsort(...)[:, :k] would give
        out = xp.empty((batch, k), dtype=np.int32)
        if batch == 0 or k == 0:
            return out
        if k == n:
            out[...] = xp.arange(n, dtype=np.int32)
            return out
        self._launch(K.topk_kernel(a.dtype), K.topk_launch(batch, n),
                     K.key_view(a), np.int32(k), out)
        return out

    # -- meProp backward --------------------------------------------------------------------
    def meprop_backward_rows(self, x, W, dy, idx, dW, need_dx):
        xp = self.xp
        dy = xp.ascontiguousarray(dy)
        kept = xp.zeros_like(dy)
        if idx.size:
            self._launch(K.keep_chosen_kernel(), K.element_launch(idx.size),
                         xp.ascontiguousarray(idx, dtype=np.int32), dy, kept)
        self._add_at_b(kept, x, dW)
        return kept @ W if need_dx else None

    def _add_at_b(self, a, b, out):
        """out += a.T @ b, in place by one GEMM where cuBLAS can take the arrays as they are."""
        usable = (self.gemm is not None and a.dtype == b.dtype == out.dtype
                  and a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous)
        if usable:
            self.gemm("T", "N", a, b, out=out, alpha=1.0, beta=1.0)
        else:
            out += a.T @ b

    def rows_touched(self, idx, n_out):
        """Per-example choices give a boolean mask over the rows (a list would need its length
        read back from the device); unified choices are already a list of distinct rows."""
        mask = self.xp.zeros(n_out, dtype=np.bool_)
        if idx.size:
            mask[idx.ravel()] = True
        return mask

    def record_hits(self, idx, hits):
        xp = self.xp
        if idx.size == 0:
            return
        if hits.dtype != np.int64 or not hits.flags.c_contiguous:
            hits += xp.bincount(idx.ravel(), minlength=hits.shape[0]).astype(hits.dtype)
            return
        idx = xp.ascontiguousarray(idx, dtype=np.int32).reshape(-1)
        self._launch(K.record_hits_kernel(), K.element_launch(idx.size), idx, hits)

    # -- the LSTM tagger ---------------------------------------------------------------------
    def lstm_cell_forward(self, z, c_prev, c_out, tc_out, h_out):
        """The reference's arithmetic (`nnmnist.nn.lstm.cell_forward`) in one element-wise
        kernel over (B, H): each thread reads its four gate pre-activations, writes their
        activations back into z and writes c, tanh(c) and h. Under the simulator, or for mixed
        dtypes (which the kernel's one type T cannot take), the NumPy reference."""
        if SIMULATED or not _same_float_type(z, c_prev, c_out, tc_out, h_out):
            return super().lstm_cell_forward(z, c_prev, c_out, tc_out, h_out)
        _lstm_kernels()[0](c_prev, c_out.shape[1], z, c_out, tc_out, h_out)

    def lstm_cell_backward(self, dh, dc, acts, c_prev, tc, dz_out):
        """The reference's backward (`nnmnist.nn.lstm.cell_backward`) in one element-wise
        kernel over (B, H): dz's four gate blocks into dz_out, the gradient reaching c_prev
        returned. dh and dc may be strided views (the kernel indexes them by their strides)."""
        arrays = (dh, dc, acts, c_prev, tc, dz_out)
        if SIMULATED or not _same_float_type(*arrays):
            return super().lstm_cell_backward(dh, dc, acts, c_prev, tc, dz_out)
        dc_prev = self.xp.empty_like(tc)
        _lstm_kernels()[1](dh, dc, acts, c_prev, tc, tc.shape[1], dz_out, dc_prev)
        return dc_prev

    def add_rows(self, G, ids, d):
        """G[ids[i]] += d[i] with repeated ids summed: `cupyx.scatter_add` (atomic adds) on a
        device; NumPy's `add.at` under the simulator (the reference)."""
        if SIMULATED:
            return super().add_rows(G, ids, d)
        cupyx.scatter_add(G, ids, d)

    # -- optimizer updates ------------------------------------------------------------------
    def update(self, rule, w, g, states, scalars):
        dense, _, _ = K.update_kernels(rule, w.dtype)
        self._launch(dense, K.element_launch(w.size), *_flat(w, g, *states),
                     *self._scalars(rule, w, scalars))

    def update_rows(self, rule, W, G, states, rows, scalars):
        """The rule on the rows given as a boolean mask or as a list of distinct indices."""
        _, masked, listed = K.update_kernels(rule, W.dtype)
        arrays, scalars = _flat(W, G, *states), self._scalars(rule, W, scalars)
        ncols = np.int64(W.size // max(W.shape[0], 1))
        if rows.dtype == np.bool_:
            self._launch(masked, K.element_launch(W.size), rows, ncols, *arrays, *scalars)
        elif rows.size:
            rows = self.xp.ascontiguousarray(rows, dtype=np.int32)
            self._launch(listed, K.element_launch(rows.size * int(ncols)), rows, ncols,
                         *arrays, *scalars)

    @staticmethod
    def _scalars(rule, w, values):
        """The step's scalars in the arrays' type: float32 values (as NumPy's float32 bodies
        take them), except clip, which NumPy compares in the arrays' type."""
        T = w.dtype.type
        return [T(v) if n == "clip" else T(np.float32(v)) for n, v in zip(rule.scalars, values)]

    # -- device ------------------------------------------------------------------------------
    def sync(self):
        """Wait for the work queued on the current stream (so a timer read means what it says)."""
        if not SIMULATED:
            cp.cuda.get_current_stream().synchronize()

    def warmup(self):
        """Compile every kernel of this backend (numba.cuda compiles on first launch)."""
        xp, rng = self.xp, np.random.default_rng(0)
        for dtype in (np.float32, np.float64):
            a = xp.asarray(rng.standard_normal((3, 40)).astype(dtype))
            x = xp.asarray(rng.standard_normal((3, 5)).astype(dtype))
            W = xp.asarray(rng.standard_normal((40, 5)).astype(dtype))
            self.matmul_xwt(x, W)
            idx = self.select_topk_rows(a, 4)
            cols = self.select_topk_unified(a, 4)
            self.meprop_backward_rows(x, W, a, idx, xp.zeros_like(W), True)
            self.meprop_backward_cols(x, W, a, cols, xp.zeros_like(W), True)
            mask = self.rows_touched(idx, 40)
            for name in RULES:  # every registered optimizer rule, dense and both row forms
                rule = optimizer_class(name).rule
                scalars = [0.1] * (len(rule.scalars) - 1) + [1.0]
                z = [xp.zeros_like(W) for _ in range(2 + len(rule.state))]
                self.update(rule, z[0], z[1], z[2:], scalars)
                for rows in (mask, cols):
                    self.update_rows(rule, z[0], z[1], z[2:], rows, scalars)
            self.uniform(rng, (2, 3), dtype)
            z, c = xp.zeros((3, 4 * 5), dtype), xp.zeros((3, 5), dtype)  # the tagger's cell
            self.lstm_cell_forward(z, c, xp.empty_like(c), xp.empty_like(c), xp.empty_like(c))
            self.lstm_cell_backward(c, c, z, c, c, xp.empty_like(z))
            self.add_rows(xp.zeros_like(c), xp.zeros(3, dtype=np.int64), c)
        self.record_hits(idx, xp.zeros(40, dtype=np.int64))
        self.sync()


def _same_float_type(*arrays):
    """True when the arrays share one float dtype (the LSTM kernels' type T)."""
    return arrays[0].dtype in (np.float32, np.float64) and all(
        a.dtype == arrays[0].dtype for a in arrays)


# The LSTM cell's kernels, loop over (B, H) in C order: i is the flat index of (b, j), and the
# gate arrays z, acts and dz (B, 4H) are `raw`, indexed by hand at b * 4H + j + gate * H (CuPy
# unravels a raw array's flat index through its strides, so a view is read correctly too).
# Each line is the NumPy reference's expression in its order, in the arrays' type T.
_CELL_FORWARD = """
    const ptrdiff_t at = (i / H) * 4 * H + i % H;
    const T one = 1;
    const T ig = one / (one + exp(-z[at]));
    const T fg = one / (one + exp(-z[at + H]));
    const T gg = tanh(z[at + 2 * H]);
    const T og = one / (one + exp(-z[at + 3 * H]));
    z[at] = ig;
    z[at + H] = fg;
    z[at + 2 * H] = gg;
    z[at + 3 * H] = og;
    const T cc = fg * c_prev + ig * gg;
    const T tcc = tanh(cc);
    c = cc;
    tc = tcc;
    h = og * tcc;
"""
_CELL_BACKWARD = """
    const ptrdiff_t at = (i / H) * 4 * H + i % H;
    const T one = 1;
    const T ig = acts[at];
    const T fg = acts[at + H];
    const T gg = acts[at + 2 * H];
    const T og = acts[at + 3 * H];
    const T dct = dc + dh * og * (one - tc * tc);
    dz[at] = dct * gg * ig * (one - ig);
    dz[at + H] = dct * c_prev * fg * (one - fg);
    dz[at + 2 * H] = dct * ig * (one - gg * gg);
    dz[at + 3 * H] = dh * tc * og * (one - og);
    dc_prev = dct * fg;
"""


@functools.lru_cache(maxsize=None)
def _lstm_kernels():
    """(forward, backward) CuPy element-wise kernels, built on first use (only on a device:
    they need CuPy, and CuPy compiles each on its first call per dtype)."""
    forward = cp.ElementwiseKernel("T c_prev, int64 H", "raw T z, T c, T tc, T h",
                                   _CELL_FORWARD, "nnmnist_lstm_cell_forward")
    backward = cp.ElementwiseKernel("T dh, T dc, raw T acts, T c_prev, T tc, int64 H",
                                    "raw T dz, T dc_prev", _CELL_BACKWARD,
                                    "nnmnist_lstm_cell_backward")
    return forward, backward


def _flat(*arrays):
    """Flat views of C-contiguous arrays (the kernels index them as 1-D)."""
    return [a.reshape(-1) for a in arrays]


@contextlib.contextmanager
def _simulator_pace():
    """A short thread switch interval while a simulated kernel runs (see above)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(SIMULATOR_SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
