"""Each numba.cuda kernel of the GPU backend, launched directly with chosen grids and blocks,
against the naive NumPy references of tests/naive.py: ties, NaN, signed zeros and infinities,
k = 1, k = n - 1 and k = n, rows wider and narrower than a block, one and several blocks,
empty row sets.

They run in Numba's CUDA simulator (tests/conftest.py turns it on), where every thread of a
block is a Python thread with real barriers and atomics, or on a device with
NUMBA_ENABLE_CUDASIM=0. Shapes stay small: the simulator runs a few thousand threads a second.
"""
import numpy as np
import pytest

from nnmnist.backends.cpu import NumpyCompute
from nnmnist.optim import RULES, optimizer_class

try:
    from . import naive
    from .conftest import GPU_REASON, gpu_backend_runs
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    import naive
    from conftest import GPU_REASON, gpu_backend_runs

pytestmark = pytest.mark.skipif(not gpu_backend_runs(), reason=GPU_REASON)


@pytest.fixture(scope="module")
def K():
    from nnmnist.backends import cuda_kernels
    return cuda_kernels


@pytest.fixture(scope="module")
def gpu():
    from nnmnist.backends.cuda import CupyCompute
    return CupyCompute()


def host(a):
    from nnmnist.backends import to_numpy
    return to_numpy(a)


def hard_rows(rng, n, dtype):
    """Rows that stress the ordering: all equal, heavy ties of both signs, zeros of both signs,
    NaN, infinities, plain random values, and a long run of ties before the largest values
    (the chunks that hold those must skip the tied entries that are not kept)."""
    a = rng.standard_normal((8, n)).astype(dtype)
    a[0] = 0.0                                        # all tied
    a[1] = rng.integers(-2, 3, n)                     # heavy ties, both signs
    a[2, ::2] = -0.0                                  # -0 and +0 tie
    a[2, 1::2] = 0.0
    a[3, ::3] = np.nan                                # NaN ranks below every number
    a[4, ::5] = np.inf                                # infinities rank above
    a[4, 1::5] = -np.inf
    a[5, :] = np.nan                                  # nothing but NaN
    a[7, :] = -1.0                                    # ties first, then the largest values
    a[7, -2:] = [7.0, 9.0]
    return a


# -- top-k ---------------------------------------------------------------------------------

SHAPES = [(37, 1), (37, 5), (37, 36), (3, 2), (200, 17)]
TOPK_CASES = ([(np.float32, n, k, 1, 4) for n, k in SHAPES]
              + [(np.float32, n, k, 3, 32) for n, k in SHAPES]
              + [(np.float64, n, k, 2, 3) for n, k in SHAPES if n > 3])


@pytest.mark.parametrize("dtype,n,k,blocks,threads", TOPK_CASES)
def test_topk_rows_kernel(K, dtype, n, k, blocks, threads):
    """Block sizes above and below the row width (n = 3 with 32 threads leaves most threads
    without a column; n = 200 with 3 threads gives each thread a long chunk), and more rows
    than blocks (grid-stride)."""
    a = hard_rows(np.random.default_rng([n, k, threads]), n, dtype)
    out = np.full((a.shape[0], k), -1, np.int32)
    K.topk_kernel(dtype)[blocks, threads](K.key_view(a), np.int32(k), out)
    np.testing.assert_array_equal(out, naive.topk_rows(a, k))


@pytest.mark.parametrize("k", [0, 1, 6, 7])
def test_select_topk_rows_every_k(gpu, k):
    """Through the backend: k = 0 and k = n never launch; k = n - 1 does."""
    a = hard_rows(np.random.default_rng(k), 7, np.float32)
    idx = gpu.select_topk_rows(gpu.xp.asarray(a), k)
    assert idx.shape == (len(a), k) and idx.dtype == np.int32
    np.testing.assert_array_equal(host(idx), naive.topk_rows(a, k))


def test_select_topk_unified_with_ties_and_nan(gpu):
    rng = np.random.default_rng(5)
    a = rng.integers(-2, 3, (9, 40)).astype(np.float32)  # integer sums: exact, many ties
    a[:, 7] = np.nan                                     # a NaN column sum ranks last
    for k in (1, 8, 39, 40):
        cols = gpu.select_topk_unified(gpu.xp.asarray(a), k)
        assert cols.shape == (k,) and cols.dtype == np.int32
        np.testing.assert_array_equal(host(cols), naive.topk_cols_unified(a, k))


# -- meProp's sparse dy, meSimp's hits -------------------------------------------------------

@pytest.mark.parametrize("blocks,threads", [(1, 1), (2, 16)])
def test_keep_chosen_kernel(K, blocks, threads):
    rng = np.random.default_rng(7)
    dy = rng.standard_normal((6, 30)).astype(np.float32)
    idx = naive.topk_rows(dy, 4).astype(np.int32)
    kept = np.zeros_like(dy)
    K.keep_chosen_kernel()[blocks, threads](idx, dy, kept)
    expected = np.zeros_like(dy)
    for r in range(6):
        for c in idx[r]:
            expected[r, c] = dy[r, c]
    np.testing.assert_array_equal(kept, expected)


@pytest.mark.parametrize("blocks,threads", [(1, 1), (2, 16)])
def test_record_hits_kernel_counts_repeats(K, blocks, threads):
    rng = np.random.default_rng(8)
    idx = rng.integers(0, 5, 300).astype(np.int32)  # every counter hit ~60 times, concurrently
    hits0 = rng.integers(0, 9, 12).astype(np.int64)
    hits = hits0.copy()
    K.record_hits_kernel()[blocks, threads](idx, hits)
    np.testing.assert_array_equal(hits, naive.record_hits(idx, hits0))


def test_empty_choices_touch_nothing(gpu):
    xp = gpu.xp
    empty = xp.zeros((0, 3), dtype=np.int32)
    hits = xp.arange(6, dtype=np.int64)
    gpu.record_hits(empty, hits)
    np.testing.assert_array_equal(host(hits), np.arange(6))
    assert not host(gpu.rows_touched(empty, 6)).any()


# -- optimizer kernels: every rule, every form, both dtypes, bit for bit ----------------------

# clip 2.5: most of g ~ N(0, 2) passes unclipped (clipped values make many products exact)
SCALARS = {"sgd": (0.05, 2.5), "adagrad": (0.1, 1e-6, 0.01, 2.5),
           "adam": (naive.adam_lr_t(0.01, 3), 0.01, 2.5), "rmsprop": (0.01, 0.9, 1e-6, 0.01, 2.5)}


def state_for(rng, rule, shape, dtype):
    return [np.abs(rng.standard_normal(shape)).astype(dtype) * 1e-3 for _ in rule.state]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(RULES))
def test_update_kernels_match_the_numpy_body_bit_for_bit(gpu, name, dtype):
    """Dense, masked rows (some, none) and listed rows (some, none): the same bits as the
    NumPy body, g zeroed exactly where the rule ran, nothing else touched. g holds values
    beyond the clip bound, a NaN and an infinity."""
    rule = optimizer_class(name).rule
    rng = np.random.default_rng(list(RULES).index(name))
    shape = (9, 31)
    W0 = rng.standard_normal(shape).astype(dtype)
    G0 = (rng.standard_normal(shape) * 2).astype(dtype)
    G0[0, 0], G0[8, 30] = np.nan, np.inf
    S0 = state_for(rng, rule, shape, dtype)
    scalars = SCALARS[name]
    xp = gpu.xp

    def on_gpu(call):
        W, G, S = xp.asarray(W0.copy()), xp.asarray(G0.copy()), [xp.asarray(s.copy()) for s in S0]
        call(W, G, S)
        return [host(a) for a in (W, G, *S)]

    def on_cpu(rows):
        W, G, S = W0.copy(), G0.copy(), [s.copy() for s in S0]
        c = NumpyCompute()
        if rows is None:
            c.update(rule, W, G, S, scalars)
        elif len(rows):
            c.update_rows(rule, W, G, S, np.asarray(rows), scalars)
        return [W, G, *S]

    with np.errstate(invalid="ignore"):
        cases = {"dense": (lambda W, G, S: gpu.update(rule, W, G, S, scalars), None)}
        for label, rows in (("some", [1, 4, 8]), ("none", [])):
            mask = np.zeros(shape[0], np.bool_)
            mask[rows] = True
            cases[f"masked-{label}"] = (lambda W, G, S, m=mask: gpu.update_rows(
                rule, W, G, S, xp.asarray(m), scalars), rows)
            cases[f"listed-{label}"] = (lambda W, G, S, r=rows: gpu.update_rows(
                rule, W, G, S, xp.asarray(np.array(r, np.int32)), scalars), rows)
        for label, (call, rows) in cases.items():
            got, want = on_gpu(call), on_cpu(rows)
            for g_arr, w_arr, what in zip(got, want, ("W", "G", *rule.state)):
                assert g_arr.dtype == dtype
                np.testing.assert_array_equal(g_arr, w_arr, err_msg=f"{name} {label}: {what}")


def test_rounding_is_per_operation(K):
    """The helpers round each operation to the array type: in float32, (a * b) + c differs from
    the fused a * b + c for these values, and the helpers give the rounded one."""
    rn = K.rounding(np.float32)
    a = b = np.float32(1 + 2 ** -12)  # a * b = 1 + 2^-11 + 2^-24: not a float32
    c = np.float32(-1)
    assert rn.add(rn.mul(a, b), c) == np.float32(np.float32(a * b) + c)
    assert rn.add(rn.mul(a, b), c) != np.float32(np.float64(a) * np.float64(b) + np.float64(c))
