"""The CuPy backend: the hot operations of `nnmnist.backends.cpu` on an NVIDIA GPU.

`nnmnist.backends.get_compute` is the only importer, so machines without CuPy never get here. Layers, ops and optimizers are the same `xp.*` code for both backends; what differs is
the methods below, each with the signature of its `NumpyCompute` reference:

- per-row top-k: one thread block per row does a radix select on the bit patterns of |dy|
  (4 passes of 8 bits for float32), then writes the chosen columns in column order. Same
  order as the reference: larger |dy| first, the lower column on ties, NaN last; the result
  is int32 and ascending in every row. No sort, and no width limit.
- meProp backward: the kept entries are scattered into a zeroed dy, then cuBLAS (dW is
  accumulated by one GEMM with beta = 1, no temporary).
- optimizers: one fused ElementwiseKernel per rule (clip, L2, moments, step, zeroing g), written
  with round-to-nearest intrinsics in the reference's order, so that no multiply-add is fused
  and a float32 step is the NumPy reference's step bit for bit.
- meSimp hits and lazily updated rows: atomics and scatters, never a size that would have to
  be read back to the host. So nothing in a minibatch waits for the device except `sync`.
"""
import numpy as np

from .device import check_gpu_available, cublas
from .device import cupy as cp  # None without CuPy: the constructor then raises the clear error
from .cpu import NumpyCompute
from ..optim import RULES, optimizer_class

# ---------------------------------------------------------------------------------------------
# Per-row top-k of |a|: one block per row.
# Key of an entry: the bit pattern of |a| plus one (0 for NaN); the bits of a non-negative float
# order like the float. A radix select, 8 bits a pass from the top, finds the k-th largest key
# T and how many entries equal to T are still wanted (rem). Then the block walks the row in
# tiles of blockDim columns, in column order, and keeps every key > T and the first rem keys
# == T; block-wide prefix counts give each kept column its output slot.
TOPK_SOURCE = r"""
#define FULL_MASK 0xffffffffu

__device__ __forceinline__ unsigned int mag_key(float v) {
    unsigned int m = __float_as_uint(v) & 0x7fffffffu;
    return m > 0x7f800000u ? 0u : m + 1u;
}

__device__ __forceinline__ unsigned long long mag_key(double v) {
    unsigned long long m = (unsigned long long)__double_as_longlong(v) & 0x7fffffffffffffffull;
    return m > 0x7ff0000000000000ull ? 0ull : m + 1ull;
}

// Exclusive prefix count of `flag` over the block, in thread order; *total = the block's count.
// Every thread of the block must call it (it holds barriers).
__device__ __forceinline__ int block_prefix_count(bool flag, int* warp_sums, int* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    const unsigned int ballot = __ballot_sync(FULL_MASK, flag);
    const int before = __popc(ballot & ((1u << lane) - 1u));
    if (lane == 0) warp_sums[warp] = __popc(ballot);
    __syncthreads();
    if (warp == 0) {
        int v = lane < n_warps ? warp_sums[lane] : 0;
        for (int o = 1; o < 32; o <<= 1) {
            const int t = __shfl_up_sync(FULL_MASK, v, o);
            if (lane >= o) v += t;
        }
        if (lane < n_warps) warp_sums[lane] = v;  // inclusive
    }
    __syncthreads();
    const int base = warp ? warp_sums[warp - 1] : 0;
    *total = warp_sums[n_warps - 1];
    __syncthreads();  // warp_sums is reused by the next call
    return base + before;
}

template <typename T, typename K>
__device__ void topk_row(const T* __restrict__ a, const int n, const int k, int* __restrict__ out,
                         int* hist, int* warp_sums, K* s_prefix, int* s_rem) {
    const int tid = threadIdx.x, n_threads = blockDim.x, lane = tid & 31;
    K prefix = 0, known = 0;
    int rem = k;  // how many of the entries whose key starts with `prefix` are still wanted
    for (int shift = 8 * (int)sizeof(K) - 8; shift >= 0; shift -= 8) {
        for (int b = tid; b < 256; b += n_threads) hist[b] = 0;
        __syncthreads();
        for (int j = tid; j < n; j += n_threads) {
            const K u = mag_key(a[j]);
            if ((u & known) == prefix) atomicAdd(&hist[(int)((u >> shift) & 255)], 1);
        }
        __syncthreads();
        if (tid < 32) {  // warp 0: the digit, from the top, at which the count reaches rem
            int c[8], s = 0;
#pragma unroll
            for (int q = 0; q < 8; ++q) {
                c[q] = hist[255 - 8 * lane - q];
                s += c[q];
            }
            int upto = s;  // entries in the digits of lanes 0..lane
            for (int o = 1; o < 32; o <<= 1) {
                const int t = __shfl_up_sync(FULL_MASK, upto, o);
                if (lane >= o) upto += t;
            }
            const unsigned int reached = __ballot_sync(FULL_MASK, upto >= rem);
            if (lane == __ffs(reached) - 1) {
                int above = upto - s;
                for (int q = 0; q < 8; ++q) {
                    if (above + c[q] >= rem) {
                        *s_prefix = prefix | ((K)(255 - 8 * lane - q) << shift);
                        *s_rem = rem - above;
                        break;
                    }
                    above += c[q];
                }
            }
        }
        __syncthreads();
        prefix = *s_prefix;
        rem = *s_rem;
        known |= (K)255 << shift;
    }
    // prefix is now the k-th largest key; keep every key above it and its first rem copies.
    int written = 0, equal_before = 0, total;
    for (int base = 0; base < n && written < k; base += n_threads) {
        const int j = base + tid;
        const bool valid = j < n;
        const K u = valid ? mag_key(a[j]) : (K)0;
        const bool equal = valid && u == prefix;
        const int equal_rank = equal_before + block_prefix_count(equal, warp_sums, &total);
        equal_before += total;
        const bool keep = (valid && u > prefix) || (equal && equal_rank < rem);
        const int slot = written + block_prefix_count(keep, warp_sums, &total);
        if (keep) out[slot] = j;
        written += total;
    }
}

extern "C" __global__ void nnmnist_topk_f32(const float* a, int n, int k, int* out) {
    __shared__ int hist[256];
    __shared__ int warp_sums[32];
    __shared__ unsigned int s_prefix;
    __shared__ int s_rem;
    topk_row<float, unsigned int>(a + (long long)blockIdx.x * n, n, k, out + (long long)blockIdx.x * k,
                                  hist, warp_sums, &s_prefix, &s_rem);
}

extern "C" __global__ void nnmnist_topk_f64(const double* a, int n, int k, int* out) {
    __shared__ int hist[256];
    __shared__ int warp_sums[32];
    __shared__ unsigned long long s_prefix;
    __shared__ int s_rem;
    topk_row<double, unsigned long long>(a + (long long)blockIdx.x * n, n, k,
                                         out + (long long)blockIdx.x * k,
                                         hist, warp_sums, &s_prefix, &s_rem);
}

// meSimp hit count: every chosen (example, neuron) adds one hit (int64 counters).
extern "C" __global__ void nnmnist_record_hits(const int* idx, long long count,
                                               unsigned long long* hits) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < count) atomicAdd(hits + idx[t], 1ull);
}
"""

TOPK_MAX_THREADS = 1024
HITS_THREADS = 256

# ---------------------------------------------------------------------------------------------
# Optimizer updates. Each rule's CUDA body sits in its module (`nnmnist.optim.adam`, ...), over
# references w, g and its state, in the order of its NumPy body's float32 operations; the *_rn
# helpers round every operation (no fused multiply-add), so the result matches NumPy's.
ROUNDING_PREAMBLE = r"""
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double sqrt_rn(double a) { return __dsqrt_rn(a); }
"""


def _update_kernels(rule):
    """Three launches of one optimizer rule: every element, rows flagged in a mask, rows in a
    list. Scalars are float32 except clip, which has the arrays' type."""
    name, state, body = rule.name, rule.state, rule.cuda
    scalars = ", ".join(f"T {n}" if n == "clip" else f"float32 {n}" for n in rule.scalars)
    arrays = ("w", "g") + state
    outs = ", ".join(f"T {a}" for a in arrays)
    full = cp.ElementwiseKernel(scalars, outs, body, f"nnmnist_{name}",
                                preamble=ROUNDING_PREAMBLE)
    masked = cp.ElementwiseKernel(
        f"raw bool row_mask, int64 ncols, {scalars}", outs,
        f"if (row_mask[i / ncols]) {{ {body} }}", f"nnmnist_{name}_mask",
        preamble=ROUNDING_PREAMBLE)
    bind = " ".join(f"T &{a} = p{a}[e];" for a in arrays)
    listed = cp.ElementwiseKernel(
        f"raw int32 rows, int64 ncols, {scalars}", ", ".join(f"raw T p{a}" for a in arrays),
        f"const ptrdiff_t e = (ptrdiff_t)rows[i / ncols] * ncols + i % ncols; {bind} {body}",
        f"nnmnist_{name}_rows", preamble=ROUNDING_PREAMBLE)
    return full, masked, listed


class _Kernels:
    """Every kernel of this backend, built once per process (compiled on first use)."""

    def __init__(self):
        module = cp.RawModule(code=TOPK_SOURCE)
        self.topk = {np.dtype(np.float32): module.get_function("nnmnist_topk_f32"),
                     np.dtype(np.float64): module.get_function("nnmnist_topk_f64")}
        self.record_hits = module.get_function("nnmnist_record_hits")
        self._update = {}  # rule name -> its three kernels, built on first use
        # meProp rows: copy the chosen entries of dy into a zeroed array (idx drives the loop).
        self.keep_chosen = cp.ElementwiseKernel(
            "int32 j, raw T dy, int64 k, int64 width", "raw T kept",
            "const ptrdiff_t e = (i / k) * width + j; kept[e] = dy[e];", "nnmnist_keep_chosen")
        # Unified top-k's column scores: sum of |dy| over the minibatch in double, rounded once.
        self.abs_colsum = cp.ReductionKernel(
            "T x", "T y", "fabs((double)x)", "a + b", "y = (T)a", "0", "nnmnist_abs_colsum",
            reduce_type="double")
        self.mark_rows = cp.ElementwiseKernel(
            "int32 j", "raw bool row_mask", "row_mask[j] = true;", "nnmnist_mark_rows")
        self.gemm = cublas.gemm if cublas is not None else None


    def update(self, rule):
        kernels = self._update.get(rule.name)
        if kernels is None:
            kernels = self._update[rule.name] = _update_kernels(rule)
        return kernels


_KERNELS = None


def _kernels():
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _Kernels()
    return _KERNELS


class CupyCompute(NumpyCompute):
    """The hot operations on the GPU; arrays are CuPy arrays, scalars stay Python numbers."""

    name = "cupy"
    xp = cp

    def __init__(self):
        check_gpu_available()
        self.xp = cp
        self.kernels = _kernels()
        self._generators = {}  # id(numpy rng) -> (that rng, its CuPy RandomState)

    # -- forward -------------------------------------------------------------------------------
    def matmul_xwt(self, x, W):
        """x @ W.T: cuBLAS reads the transposed operand in place (no reordering copy, unlike
        the CPU path), and the product comes out C-contiguous."""
        return x @ W.T

    # -- randomness --------------------------------------------------------------------------
    def uniform(self, rng, shape, dtype=np.float32):
        """Uniform [0, 1) draws on the device, from a CuPy generator seeded once from `rng`.

        The first call with a NumPy generator draws one seed from it, so a seeded run is
        reproducible on the GPU; the numbers differ from the CPU's (another generator).
        """
        entry = self._generators.get(id(rng))
        if entry is None or entry[0] is not rng:
            seed = int(rng.integers(0, 2 ** 63 - 1))
            entry = (rng, cp.random.RandomState(seed))
            self._generators[id(rng)] = entry
        return entry[1].random_sample(size=tuple(shape), dtype=dtype)

    # -- meProp selection -------------------------------------------------------------------
    def select_topk_rows(self, dy, k):
        return self._topk_rows(dy, k)

    def select_topk_unified(self, dy, k):
        """Column scores sum |dy| over the minibatch in float64, rounded once (as the Numba kernel)."""
        return self._topk_rows(self.kernels.abs_colsum(dy, axis=0)[None, :], k)[0]

    def _topk_rows(self, a, k):
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float32)
        a = cp.ascontiguousarray(a)
        batch, n = a.shape
        k = max(0, min(int(k), n))  # as argsort(...)[:, :k] would give
        out = cp.empty((batch, k), dtype=np.int32)
        if batch == 0 or k == 0:
            return out
        if k == n:
            out[...] = cp.arange(n, dtype=np.int32)
            return out
        threads = min(TOPK_MAX_THREADS, max(64, -(-n // 32) * 32))
        self.kernels.topk[a.dtype]((batch,), (threads,), (a, np.int32(n), np.int32(k), out))
        return out

    # -- meProp backward --------------------------------------------------------------------
    def meprop_backward_rows(self, x, W, dy, idx, dW, need_dx):
        dy = cp.ascontiguousarray(dy)
        kept = cp.zeros_like(dy)
        if idx.size:
            self.kernels.keep_chosen(cp.ascontiguousarray(idx, dtype=np.int32), dy.reshape(-1),
                               idx.shape[1], dy.shape[1], kept.reshape(-1))
        self._add_at_b(kept, x, dW)
        return kept @ W if need_dx else None

    def _add_at_b(self, a, b, out):
        """out += a.T @ b, in place by one GEMM where cuBLAS can take the arrays as they are."""
        usable = (self.kernels.gemm is not None and a.dtype == b.dtype == out.dtype
                  and a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous)
        if usable:
            self.kernels.gemm("T", "N", a, b, out=out, alpha=1.0, beta=1.0)
        else:
            out += a.T @ b

    def rows_touched(self, idx, n_out):
        """Per-example choices give a boolean mask over the rows (a list would need its length
        read back from the device); unified choices are already a list of distinct rows."""
        mask = cp.zeros(n_out, dtype=np.bool_)
        if idx.size:
            self.kernels.mark_rows(cp.ascontiguousarray(idx, dtype=np.int32), mask)
        return mask

    def record_hits(self, idx, hits):
        if idx.size == 0:
            return
        if hits.dtype != np.int64 or not hits.flags.c_contiguous:
            hits += cp.bincount(idx.ravel(), minlength=hits.shape[0]).astype(hits.dtype)
            return
        idx = cp.ascontiguousarray(idx, dtype=np.int32)
        blocks = -(-idx.size // HITS_THREADS)
        self.kernels.record_hits((blocks,), (HITS_THREADS,), (idx, np.int64(idx.size), hits))

    # -- optimizer updates ------------------------------------------------------------------
    def update(self, rule, w, g, states, scalars):
        self.kernels.update(rule)[0](*self._scalars(rule, w, scalars), w, g, *states)

    def update_rows(self, rule, W, G, states, rows, scalars):
        """The rule on the rows given as a boolean mask or as a list of distinct indices."""
        _, masked, listed = self.kernels.update(rule)
        scalars = self._scalars(rule, W, scalars)
        arrays = (W, G, *states)
        ncols = W.size // max(W.shape[0], 1)
        if rows.dtype == np.bool_:
            masked(rows, ncols, *scalars, *arrays)
        elif rows.size:
            rows = cp.ascontiguousarray(rows, dtype=np.int32)
            listed(rows, ncols, *scalars, *(a.reshape(-1) for a in arrays),
                   size=rows.size * ncols)

    @staticmethod
    def _scalars(rule, w, values):
        return [w.dtype.type(v) if n == "clip" else np.float32(v)
                for n, v in zip(rule.scalars, values)]

    # -- device ------------------------------------------------------------------------------
    def sync(self):
        """Wait for the work queued on the current stream (so a timer read means what it says)."""
        cp.cuda.get_current_stream().synchronize()

    def warmup(self):
        """Compile (or load from CuPy's cache) every kernel of this backend on tiny inputs."""
        rng = np.random.default_rng(0)
        for dtype in (np.float32, np.float64):
            a = cp.asarray(rng.standard_normal((3, 40)).astype(dtype))
            x = cp.asarray(rng.standard_normal((3, 5)).astype(dtype))
            W = cp.asarray(rng.standard_normal((40, 5)).astype(dtype))
            self.matmul_xwt(x, W)
            idx = self.select_topk_rows(a, 4)
            cols = self.select_topk_unified(a, 4)
            self.meprop_backward_rows(x, W, a, idx, cp.zeros_like(W), True)
            self.meprop_backward_cols(x, W, a, cols, cp.zeros_like(W), True)
            mask = self.rows_touched(idx, 40)
            for name in RULES:  # every registered optimizer rule, dense and both row forms
                rule = optimizer_class(name).rule
                scalars = [0.1] * (len(rule.scalars) - 1) + [1.0]
                z = [cp.zeros_like(W) for _ in range(2 + len(rule.state))]
                self.update(rule, z[0], z[1], z[2:], scalars)
                for rows in (mask, cols):
                    self.update_rows(rule, z[0], z[1], z[2:], rows, scalars)
            self.uniform(rng, (2, 3), dtype)
        self.record_hits(idx, cp.zeros(40, dtype=np.int64))
        self.sync()
