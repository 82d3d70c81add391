"""The GPU backend's hand-written kernels, in `numba.cuda`: one source for a device and for
Numba's CUDA simulator.

On a device the kernels take CuPy arrays (through `__cuda_array_interface__`); with
NUMBA_ENABLE_CUDASIM=1 `numba.cuda` is the simulator, which runs every thread of a block as a
Python thread over NumPy arrays, with its shared memory, barriers and atomics. Everything here
is written for both: no warp votes or shuffles (the simulator has none), only block-wide
barriers, `cuda.atomic.add` and shared-memory scans; every loop is grid-stride or block-stride,
so a launch may use a small grid and few threads under the simulator and a full one on a device.

The kernels:
- `topk_rows`: per row, the k columns of largest |a| (ties: the lower column; NaN last), in
  column order. One block per row does a radix select, 8 bits a pass from the top, on the
  bit patterns of |a| (which order as the floats do), then writes the chosen columns.
- `keep_chosen`: meProp's sparse dy, the chosen entries copied into a zeroed array.
- `record_hits`: meSimp's hit counts, one atomic add per chosen (example, neuron).
- `update_kernels(rule, dtype)`: an optimizer `Rule`'s CUDA body (in its module under
  `nnmnist.optim`) as three kernels: every element, the rows flagged in a mask, the rows in a
  list. The body is given rounding helpers (`RN`) that round every operation as NumPy does
  (`__fadd_rn` and friends on a device: no fused multiply-add), so a float32 step is the
  NumPy reference's step bit for bit.

`ptx_targets()` lists every kernel with the signatures the backend launches it with, for the
tests that compile them to PTX with libNVVM (no device needed).
"""
import sys
import threading
import traceback
import types

import numpy as np
from numba import cuda

# NUMBA_ENABLE_CUDASIM is read when numba.cuda is first imported: it is then the simulator.
SIMULATED = cuda.jit.__module__.startswith("numba.cuda.simulator")

if SIMULATED:
    def device(fn):
        """A device function. Under the simulator, the plain Python function: the simulator's
        wrapper would only swap its `cuda` global for every call, and these make no such call."""
        return fn
else:
    def device(fn):
        """A device function, inlined into its callers at Numba's IR level (a device function
        compiled on its own would need a device to learn the compute capability, and the
        tests compile to PTX without one)."""
        return cuda.jit(device=True, inline="always")(fn)


def _lock_simulated_shared_arrays():
    """Make the simulator's `cuda.shared.array` safe for threads that start together.

    The simulator gives each call site (file and line) of a launch one array: a thread's call
    looks the site up and, if it is missing, creates and stores the array. Without a lock two
    threads of a block can both miss and each keep its own array, which then is not shared: the
    top-k kernel then indexes out of its histogram or its output. Six simulated one-epoch runs
    at once on 2 cores failed so in 4 of 12 tries without the lock, in none of 12 with it. This
    is the simulator's method with the lookup and the store under a lock.
    """
    from numba.cuda.simulator import kernelapi
    shared = kernelapi.FakeCUDAShared
    if getattr(shared, "_nnmnist_locked", False):
        return
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None:
            raise RuntimeError("Array alignment is not supported in cudasim")
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        if shape == 0:  # dynamic shared memory: one buffer for all
            count = self._dynshared_size // np.dtype(dtype).itemsize
            return np.frombuffer(self._dynshared.data, dtype=dtype, count=count)
        caller = tuple(traceback.extract_stack(sys._getframe(1), limit=1)[-1][0:2])
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    shared.array = array
    shared._nnmnist_locked = True


if SIMULATED:
    _lock_simulated_shared_arrays()


# -- launch sizes -----------------------------------------------------------------------------
# Under the simulator every thread is a Python thread and each barrier costs a few ms, so the
# launches there are small: the grid-stride loops give the same results with any size.
if SIMULATED:
    ELEMENT_THREADS, ELEMENT_MAX_BLOCKS = 16, 2
    TOPK_MIN_THREADS, TOPK_MAX_THREADS, TOPK_MAX_BLOCKS = 4, 4, 1
else:
    ELEMENT_THREADS, ELEMENT_MAX_BLOCKS = 256, 4096
    TOPK_MIN_THREADS, TOPK_MAX_THREADS, TOPK_MAX_BLOCKS = 32, 1024, 65535
TOPK_SCAN_SIZE = 1024  # the shared scan arrays hold one entry per thread (TOPK_MAX_THREADS at most)


def element_launch(n):
    """(blocks, threads) for a grid-stride loop over n items."""
    return max(1, min(ELEMENT_MAX_BLOCKS, -(-n // ELEMENT_THREADS))), ELEMENT_THREADS


def topk_launch(batch, n, threads=None):
    """(blocks, threads) for `topk_rows` on a (batch, n) array: about a thread per column."""
    if threads is None:
        threads = min(TOPK_MAX_THREADS, max(TOPK_MIN_THREADS, -(-n // 32) * 32))
    return max(1, min(TOPK_MAX_BLOCKS, batch)), threads


# -- per-row top-k ------------------------------------------------------------------------------
def _make_topk(key_type):
    """The top-k kernel over the bit patterns of float32 (uint32 keys) or float64 (uint64)."""
    K = key_type
    bits = np.dtype(K).itemsize * 8
    passes = bits // 8
    magnitude = K((1 << (bits - 1)) - 1)                          # clears the sign bit
    infinity = K(0x7F800000 if bits == 32 else 0x7FF0000000000000)
    zero, one, digit_mask = K(0), K(1), K(255)

    @device
    def key(u):
        """|a| as an unsigned key: its bits plus one, 0 for NaN (below every number)."""
        m = u & magnitude
        return zero if m > infinity else m + one

    def topk_rows(bits_in, k, out):
        """out[r] = the k columns of row r with the largest keys, in column order.

        bits_in: (batch, n) the float array viewed as unsigned integers; 1 <= k < n.
        Pass by pass, a 256-bin histogram of the next digit over the entries that still match
        the known prefix finds the digit at which the count from the top reaches the number
        still wanted; after the last pass, `prefix` is the k-th largest key and `rem` how many
        entries equal to it are kept (the first ones in column order). Each thread then owns a
        contiguous chunk of columns; an inclusive scan of the per-thread counts in shared memory
        gives each chunk its first output slot.

        Barriers per row: 2 a pass, then 1 + log2(threads) for the scan. The histograms are
        double-buffered (each pass zeroes the next one's; with an even number of passes the
        last pass zeroes the first one of the next row), so no barrier is spent on zeroing.
        """
        batch, n = bits_in.shape
        tid, n_threads = cuda.threadIdx.x, cuda.blockDim.x
        hist = cuda.shared.array((2, 256), np.int32)
        # per thread: entries above / equal to the threshold in its chunk; two buffers, so that
        # each scan step needs one barrier
        scan = cuda.shared.array((2, 2, TOPK_SCAN_SIZE), np.int32)
        found_prefix = cuda.shared.array(1, K)
        found_rem = cuda.shared.array(1, np.int32)
        chunk = (n + n_threads - 1) // n_threads
        lo = min(tid * chunk, n)
        hi = min(lo + chunk, n)
        for b in range(tid, 256, n_threads):
            hist[0, b] = 0
        cuda.syncthreads()
        for r in range(cuda.blockIdx.x, batch, cuda.gridDim.x):
            row = bits_in[r]
            prefix = zero
            known = zero
            rem = k
            for p in range(passes):
                cur = p % 2
                shift = K(bits - 8 * (p + 1))
                for j in range(tid, n, n_threads):
                    u = key(row[j])
                    if (u & known) == prefix:
                        cuda.atomic.add(hist, (cur, np.int32((u >> shift) & digit_mask)), 1)
                for b in range(tid, 256, n_threads):
                    hist[1 - cur, b] = 0                      # the next pass's histogram
                cuda.syncthreads()
                if tid == 0:  # from the top digit down, until the count reaches rem
                    above = 0
                    d = 255
                    while above + hist[cur, d] < rem:
                        above += hist[cur, d]
                        d -= 1
                    found_prefix[0] = prefix | (K(d) << shift)
                    found_rem[0] = rem - above
                cuda.syncthreads()
                prefix = found_prefix[0]
                rem = found_rem[0]
                known = known | (digit_mask << shift)
            # Keep every key above `prefix` and the first `rem` equal to it, in column order.
            above = 0
            equal = 0
            for j in range(lo, hi):
                u = key(row[j])
                if u > prefix:
                    above += 1
                elif u == prefix:
                    equal += 1
            src = 0
            scan[src, 0, tid] = above
            scan[src, 1, tid] = equal
            cuda.syncthreads()
            offset = 1
            while offset < n_threads:  # Hillis-Steele inclusive scan over the threads
                a = scan[src, 0, tid]
                e = scan[src, 1, tid]
                if tid >= offset:
                    a += scan[src, 0, tid - offset]
                    e += scan[src, 1, tid - offset]
                scan[1 - src, 0, tid] = a
                scan[1 - src, 1, tid] = e
                src = 1 - src
                cuda.syncthreads()
                offset *= 2
            equal_before = scan[src, 1, tid] - equal
            slot = scan[src, 0, tid] - above + min(equal_before, rem)
            for j in range(lo, hi):
                u = key(row[j])
                if u > prefix or (u == prefix and equal_before < rem):
                    out[r, slot] = j
                    slot += 1
                if u == prefix:
                    equal_before += 1
            # No barrier before the next row: its first writes to `scan` and `found_*` come
            # after barriers that every thread reaches only once done with these.

    return topk_rows


_topk_rows = {np.dtype(np.float32): _make_topk(np.uint32),
              np.dtype(np.float64): _make_topk(np.uint64)}
_KEY_DTYPE = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def _keep_chosen(idx, dy, kept):
    """kept[r, idx[r, j]] = dy[r, idx[r, j]] for every chosen (r, j); kept starts zeroed."""
    batch, k = idx.shape
    for t in range(cuda.grid(1), batch * k, cuda.gridsize(1)):
        r = t // k
        c = idx[r, t % k]
        kept[r, c] = dy[r, c]


def _record_hits(idx, hits):
    """hits[i] += 1 for every entry i of idx (flat): meSimp's hit count."""
    for t in range(cuda.grid(1), idx.shape[0], cuda.gridsize(1)):
        cuda.atomic.add(hits, idx[t], 1)


# -- rounding helpers for the optimizer bodies ----------------------------------------------
def _rounding(T):
    """The operations a rule's CUDA body uses, each rounded once to T (no contraction into a
    fused multiply-add, which a device compiler does by default and NumPy never does)."""
    if SIMULATED:  # NumPy scalars of type T round every operation to T already
        add, sub, mul, div = (lambda a, b: a + b), (lambda a, b: a - b), \
            (lambda a, b: a * b), (lambda a, b: a / b)
        sqrt = np.sqrt
    else:
        from numba.cuda import libdevice as ld
        if T == np.float32:
            add, sub, mul, div, sqrt = ld.fadd_rn, ld.fsub_rn, ld.fmul_rn, ld.fdiv_rn, ld.fsqrt_rn
        else:  # libdevice has no dsub_rn; a - b is a + (-b) exactly
            add, mul, div, sqrt = ld.dadd_rn, ld.dmul_rn, ld.ddiv_rn, ld.dsqrt_rn
            sub = device(lambda a, b: add(a, -b))
    zero = T(0)

    @device
    def l2_clip(w, g, l2, clip):
        """g + l2 w (when l2 != 0), clipped to [-clip, clip] when clip > 0 (NaN stays NaN)."""
        if l2 != zero:
            g = add(g, mul(l2, w))
        if clip > zero:
            if g > clip:
                g = clip
            elif g < -clip:
                g = -clip
        return g

    return types.SimpleNamespace(T=T, add=add, sub=sub, mul=mul, div=div, sqrt=sqrt,
                                 l2_clip=l2_clip)


RN = {}


def rounding(dtype):
    """The rounding helpers for arrays of `dtype` (float32 or float64), built once."""
    dtype = np.dtype(dtype)
    if dtype not in RN:
        RN[dtype] = _rounding(dtype.type)
    return RN[dtype]


# -- optimizer update kernels ---------------------------------------------------------------
_UPDATE_SOURCE = '''
def dense({arrays}, {scalars}):
    for i in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        {targets} = elem({values}, {scalars})
        g[i] = zero

def masked(row_mask, ncols, {arrays}, {scalars}):
    for i in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        if row_mask[i // ncols]:
            {targets} = elem({values}, {scalars})
            g[i] = zero

def listed(rows, ncols, {arrays}, {scalars}):
    for t in range(cuda.grid(1), rows.shape[0] * ncols, cuda.gridsize(1)):
        i = rows[t // ncols] * ncols + t % ncols
        {targets} = elem({values}, {scalars})
        g[i] = zero
'''


def update_functions(rule, dtype):
    """(dense, masked, listed): the rule's element body in three grid-stride loops over flat
    arrays, as Python functions for `cuda.jit`. dense(w, g, *state, *scalars) updates every
    element; masked(row_mask, ncols, ...) the rows whose flag is set; listed(rows, ncols, ...)
    the listed rows (distinct). g is zeroed where the rule ran. The body returns the new w,
    or the new (w, *state) when the rule has state."""
    names = ("w", "g") + tuple(rule.state)
    source = _UPDATE_SOURCE.format(
        arrays=", ".join(names), scalars=", ".join(rule.scalars),
        targets=", ".join(f"{a}[i]" for a in ("w",) + tuple(rule.state)),
        values=", ".join(f"{a}[i]" for a in names))
    namespace = {"cuda": cuda, "elem": device(rule.cuda(rounding(dtype))),
                 "zero": np.dtype(dtype).type(0)}
    exec(compile(source, f"<{rule.name} update kernels>", "exec"), namespace)
    return namespace["dense"], namespace["masked"], namespace["listed"]


# -- compiled kernels, built once per process ----------------------------------------------
_jitted = {}


def _jit(key, fn):
    kernel = _jitted.get(key)
    if kernel is None:
        kernel = _jitted[key] = cuda.jit(fn)
    return kernel


def topk_kernel(dtype):
    """`topk_rows` for float32 or float64 data (launched on `key_view` of the array)."""
    return _jit(("topk", np.dtype(dtype)), _topk_rows[np.dtype(dtype)])


def keep_chosen_kernel():
    return _jit("keep_chosen", _keep_chosen)


def record_hits_kernel():
    return _jit("record_hits", _record_hits)


def update_kernels(rule, dtype):
    """The rule's (dense, masked, listed) kernels for arrays of `dtype`."""
    key = ("update", rule.name, np.dtype(dtype))
    if key not in _jitted:
        _jitted[key] = tuple(cuda.jit(f) for f in update_functions(rule, dtype))
    return _jitted[key]


def key_view(a):
    """The float array `a` viewed as the unsigned keys `topk_rows` reads (no copy)."""
    return a.view(_KEY_DTYPE[a.dtype])


# -- what the tests compile to PTX -----------------------------------------------------------
def ptx_targets(rules):
    """(name, Python function, signature) for every kernel in every signature the backend
    launches it with; `rules` are the optimizer Rules to include."""
    from numba import types as nt
    out = []
    for dtype, key_t, f in ((np.float32, nt.uint32, nt.float32),
                            (np.float64, nt.uint64, nt.float64)):
        out.append((f"topk_rows[{f}]", _topk_rows[np.dtype(dtype)],
                    (key_t[:, ::1], nt.int32, nt.int32[:, ::1])))
        out.append((f"keep_chosen[{f}]", _keep_chosen,
                    (nt.int32[:, ::1], f[:, ::1], f[:, ::1])))
        for rule in rules:
            arrays = (f[::1],) * (2 + len(rule.state))
            scalars = (f,) * len(rule.scalars)
            dense, masked, listed = update_functions(rule, dtype)
            out.append((f"{rule.name}.dense[{f}]", dense, arrays + scalars))
            out.append((f"{rule.name}.masked[{f}]", masked,
                        (nt.boolean[::1], nt.int64) + arrays + scalars))
            out.append((f"{rule.name}.listed[{f}]", listed,
                        (nt.int32[::1], nt.int64) + arrays + scalars))
    out.append(("record_hits", _record_hits, (nt.int32[::1], nt.int64[::1])))
    return out
