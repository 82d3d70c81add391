"""Top-k's tie rule and mlptop: nnmnist keeps the lower column of equal |dy|, the original's heap
whichever its layout gives. Only a tie at the k-th place between non-zero entries can change
mlptop's gradients; `experiments/topk_ties.py` counts those in real training."""
import importlib.util

import numpy as np
import pytest

from nnmnist.api import meprop_backward
from nnmnist.backends.cpu import NumpyCompute
from nnmnist.nn.select import TopK

from conftest import REPO
from naive import heap_topk_row, topk_rows


def census_rule():
    spec = importlib.util.spec_from_file_location("topk_ties", REPO / "experiments" / "topk_ties.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.CensusTopK


def grads(x, W, dy, cols):
    """float64 dx and dW of y = x @ W.T keeping only the entries `cols[b]` of each row of dy."""
    kept = np.zeros_like(dy)
    for b, c in enumerate(cols):
        kept[b, list(c)] = dy[b, list(c)]
    return kept @ W, kept.T @ x


def test_heap_keeps_the_k_largest_when_there_are_no_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.permutation(40).astype(float) + rng.random()
        k = int(rng.integers(1, 40))
        assert sorted(heap_topk_row(a, k)) == topk_rows(a[None], k)[0].tolist()


def test_ties_at_zero_choose_other_columns_but_the_same_gradients():
    """ReLU-zeroed entries: the heap keeps later zero columns than nnmnist, and mlptop's
    gradients are the same to the last bit of float64."""
    rng = np.random.default_rng(1)
    x, W = rng.normal(size=(8, 6)), rng.normal(size=(30, 6))
    dy = rng.normal(size=(8, 30)) * (rng.random((8, 30)) < 0.2)  # ~6 non-zeros a row
    k = 12
    ours = topk_rows(dy, k)
    heap = [heap_topk_row(np.abs(dy[b]), k) for b in range(8)]
    assert any(set(h) != set(o) for h, o in zip(heap, ours.tolist()))
    for got, want in zip(grads(x, W, dy, heap), grads(x, W, dy, ours)):
        np.testing.assert_array_equal(got, want)
    dx, dW = meprop_backward(x, W, dy, k)  # and the framework's own backward agrees
    np.testing.assert_allclose(dx, grads(x, W, dy, ours)[0], rtol=1e-12)


def test_a_nonzero_tie_at_the_kth_place_can_change_the_gradient():
    """k = 2 of |dy| = 0.3, 0.3, 0.5, 0.1: the heap holds columns 0 and 1, 0.5 evicts its root,
    column 0, and the heap ends with columns 1 and 2; nnmnist keeps 0 and 2."""
    x, W = np.array([[1.0, 2.0, 3.0]]), np.arange(12.0).reshape(4, 3)
    dy = np.array([[0.3, 0.3, 0.5, 0.1]])
    heap, ours = heap_topk_row(np.abs(dy[0]), 2), topk_rows(dy, 2)[0].tolist()
    assert sorted(heap) == [1, 2] and ours == [0, 2]
    got, want = grads(x, W, dy, [heap]), grads(x, W, dy, [ours])
    assert not np.array_equal(got[0], want[0]) and not np.array_equal(got[1], want[1])


def test_the_census_counts_each_kind_of_row():
    CensusTopK = census_rule()
    dy = np.array([[0.0, 0.0, 0.7, 0.0],     # k=2: tied at 0 (zero fill)
                   [0.3, 0.3, 0.5, 0.1],     # tied at 0.3; the heap keeps column 1, we column 0
                   [0.3, 0.1, 0.5, 0.3],     # tied at 0.3; both keep columns 0 and 2
                   [0.9, 0.2, 0.5, 0.1]],    # no tie
                  np.float32)
    rule = CensusTopK(2)
    selection = rule(dy, NumpyCompute(), None)
    assert selection.chosen.tolist() == TopK(2)(dy, NumpyCompute(), None).chosen.tolist()
    assert (rule.rows, rule.zero_fill, rule.nonzero_tie, rule.heap_differs) == (4, 1, 2, 1)
